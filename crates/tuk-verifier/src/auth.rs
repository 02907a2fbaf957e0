//! API authentication: bearer tokens with a scope (docs/verifier.md, "Authentication").
//!
//! - `read` tokens may use the GET routes; `admin` tokens may use every route (register,
//!   replace, delete, attest now, webhooks).
//! - The tokens file (`STATE_DIR/api-tokens.json`, mode 0600) holds only the SHA-256 of each
//!   token, never a token: a copy of the file lets nobody in. A token is 32 random bytes,
//!   base64url without padding (43 characters); it is shown once, when it is made
//!   ([`create_token`]: `tuk verifier token`). The first admin token, made on first start, is
//!   written to `STATE_DIR/admin.token` (mode 0600) for the operator to pick up.
//! - The service re-reads the file when it changes, so `tuk verifier token` takes effect
//!   without a restart (and removing a token's line from the file revokes it).
//! - A presented token is hashed and compared with every stored hash in constant time.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The tokens file's name in the state directory.
pub const TOKENS_FILE: &str = "api-tokens.json";
/// The first admin token's file in the state directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The GET routes.
    Read,
    /// Every route.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// One stored token: its hash, never the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// A public name for the token (what audit records name as the actor).
    pub id: String,
    pub scope: Scope,
    /// SHA-256 of the token's text (hex).
    pub sha256: String,
    /// Unix ms.
    pub created_at: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokensDoc {
    tokens: Vec<TokenEntry>,
}

/// Why the tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
}

fn file_err(path: &Path, detail: impl std::fmt::Display) -> AuthError {
    AuthError::File {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's id, or `anonymous`.
    pub id: String,
    pub scope: Option<Scope>,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller {
            id: "anonymous".into(),
            scope: None,
        }
    }
}

/// Why a request is not let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token, a malformed header or an unknown token: 401.
    Unauthenticated,
    /// A valid token of too small a scope: 403.
    Forbidden,
}

/// The service's view of the tokens file, re-read when the file changes.
pub struct Tokens {
    path: PathBuf,
    cache: RwLock<Cache>,
}

struct Cache {
    stamp: Option<Stamp>,
    entries: Vec<([u8; 32], TokenEntry)>,
}

/// What tells that the file changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        ino: m.ino(),
        len: m.len(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Equal in time independent of where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn read_doc(path: &Path) -> Result<TokensDoc, AuthError> {
    let meta = std::fs::metadata(path).map_err(|e| file_err(path, e))?;
    // Writable by others means anyone could add an admin token.
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(file_err(
            path,
            format!(
                "mode {:o} lets others write it (and add tokens): chmod 600 it",
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        file_err(
            path,
            format!("not a tokens file ({e}): {{\"tokens\": [{{\"id\", \"scope\", \"sha256\", \"created_at\"}}]}}"),
        )
    })
}

fn entries(doc: TokensDoc, path: &Path) -> Result<Vec<([u8; 32], TokenEntry)>, AuthError> {
    doc.tokens
        .into_iter()
        .map(|t| {
            let hash = unhex32(&t.sha256).ok_or_else(|| {
                file_err(path, format!("token {}: sha256 is not 64 hex digits", t.id))
            })?;
            Ok((hash, t))
        })
        .collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Writes `doc` to `path` atomically (a 0600 temporary file renamed over it).
fn write_doc(path: &Path, doc: &TokensDoc) -> Result<(), AuthError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| file_err(&tmp, e))?;
    let text = serde_json::to_string_pretty(doc).unwrap_or_default();
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| file_err(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

/// A new random token (base64url of 32 bytes) and its entry.
fn new_token(scope: Scope) -> (String, TokenEntry) {
    let token = B64URL.encode(tuk_attest::attester::random_bytes(32));
    let hash = tuk_measure::sha256(token.as_bytes());
    let id = format!(
        "{}-{}",
        scope.as_str(),
        tuk_measure::hex(&tuk_attest::attester::random_bytes(4))
    );
    (
        token,
        TokenEntry {
            id,
            scope,
            sha256: tuk_measure::hex(&hash),
            created_at: now_ms(),
        },
    )
}

/// Adds a new token of `scope` to the tokens file at `path` (which must exist: the verifier
/// made it on first start) and returns (token, its entry). The token is not stored anywhere:
/// this is the only time it is seen.
pub fn create_token(path: &Path, scope: Scope) -> Result<(String, TokenEntry), AuthError> {
    let mut doc = read_doc(path)?;
    let (token, entry) = new_token(scope);
    doc.tokens.push(entry.clone());
    write_doc(path, &doc)?;
    Ok((token, entry))
}

/// What [`Tokens::init`] did.
pub struct Init {
    pub tokens: Tokens,
    /// Where the first admin token was written, when the file was created now.
    pub created_admin_token: Option<PathBuf>,
}

impl Tokens {
    /// Opens `STATE_DIR/api-tokens.json`, creating it on first start with one admin token
    /// written to `STATE_DIR/admin.token` (both mode 0600).
    pub fn init(state_dir: &Path) -> Result<Init, AuthError> {
        let path = state_dir.join(TOKENS_FILE);
        let mut created = None;
        if !path.exists() {
            let (token, entry) = new_token(Scope::Admin);
            let token_path = state_dir.join(ADMIN_TOKEN_FILE);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&token_path)
                .map_err(|e| {
                    file_err(
                        &token_path,
                        format!("{e} (it is made with the tokens file; remove it to start anew)"),
                    )
                })?;
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| file_err(&token_path, e))?;
            write_doc(
                &path,
                &TokensDoc {
                    tokens: vec![entry],
                },
            )?;
            created = Some(token_path);
        }
        let tokens = Tokens {
            path,
            cache: RwLock::new(Cache {
                stamp: None,
                entries: Vec::new(),
            }),
        };
        tokens.reload()?;
        Ok(Init {
            tokens,
            created_admin_token: created,
        })
    }

    /// The tokens file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reload(&self) -> Result<(), AuthError> {
        let before = stamp(&self.path);
        let entries = entries(read_doc(&self.path)?, &self.path)?;
        let mut c = self.cache.write().unwrap_or_else(|p| p.into_inner());
        c.stamp = before;
        c.entries = entries;
        Ok(())
    }

    /// Re-reads the file if it changed. A file that became unreadable or invalid keeps the
    /// tokens last read (and says so), so a half-edited file locks nobody out.
    fn refresh(&self) {
        let now = stamp(&self.path);
        let cached = self.cache.read().unwrap_or_else(|p| p.into_inner()).stamp;
        if now != cached {
            if let Err(e) = self.reload() {
                eprintln!("tuk-verifier: keeping the tokens read before: {e}");
                self.cache.write().unwrap_or_else(|p| p.into_inner()).stamp = now;
            }
        }
    }

    /// The caller an `Authorization` header names, if its bearer token is known.
    pub fn caller(&self, authorization: Option<&[u8]>) -> Option<Caller> {
        let value = std::str::from_utf8(authorization?).ok()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let hash = tuk_measure::sha256(token.trim().as_bytes());
        self.refresh();
        let c = self.cache.read().unwrap_or_else(|p| p.into_inner());
        // Every entry is compared, whatever matched.
        let mut found: Option<&TokenEntry> = None;
        for (h, e) in &c.entries {
            if ct_eq(h, &hash) {
                found = Some(e);
            }
        }
        found.map(|e| Caller {
            id: e.id.clone(),
            scope: Some(e.scope),
        })
    }

    /// Lets the request in if its token has `need` (`None`: open to all). `read_anonymous`
    /// opens the `read` routes without a token.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        need: Option<Scope>,
        read_anonymous: bool,
    ) -> Result<Caller, Denied> {
        // An empty header is no header.
        let authorization = authorization.filter(|h| !h.trim_ascii().is_empty());
        let caller = self.caller(authorization);
        let Some(need) = need else {
            return Ok(caller.unwrap_or_else(Caller::anonymous));
        };
        match caller {
            Some(c) if c.scope.is_some_and(|s| s >= need) => Ok(c),
            Some(_) => Err(Denied::Forbidden),
            // A header with an unknown token is refused even where anonymous reads are open:
            // a client that meant to authenticate learns that its token is wrong.
            None if authorization.is_some() => Err(Denied::Unauthenticated),
            None if need == Scope::Read && read_anonymous => Ok(Caller::anonymous()),
            None => Err(Denied::Unauthenticated),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tuk-auth-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn first_start_makes_an_admin_token_and_stores_only_hashes() {
        let d = dir("init");
        let init = Tokens::init(&d).unwrap();
        let token_file = init.created_admin_token.clone().unwrap();
        let token = std::fs::read_to_string(&token_file).unwrap();
        let token = token.trim();
        assert_eq!(token.len(), 43);
        for f in [&token_file, &d.join(TOKENS_FILE)] {
            assert_eq!(
                std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let file = std::fs::read_to_string(d.join(TOKENS_FILE)).unwrap();
        assert!(!file.contains(token), "the token itself is stored");
        let t = init.tokens;
        let bearer = format!("Bearer {token}");
        let admin = t.check(Some(bearer.as_bytes()), Some(Scope::Admin), false);
        assert_eq!(admin.unwrap().scope, Some(Scope::Admin));
        // Wrong, missing, malformed.
        let wrong = format!("Bearer {}x", &token[..42]);
        assert_eq!(
            t.check(Some(wrong.as_bytes()), Some(Scope::Read), true),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            t.check(None, Some(Scope::Read), false),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            t.check(Some(token.as_bytes()), Some(Scope::Read), false),
            Err(Denied::Unauthenticated)
        );
        assert!(t.check(None, Some(Scope::Read), true).is_ok());
        assert_eq!(
            t.check(None, Some(Scope::Admin), true),
            Err(Denied::Unauthenticated)
        );
        // A second start keeps the file and makes no new token.
        let again = Tokens::init(&d).unwrap();
        assert!(again.created_admin_token.is_none());

        // A read token, added while the service runs, is picked up and cannot administer.
        let (read, entry) = create_token(&d.join(TOKENS_FILE), Scope::Read).unwrap();
        assert_eq!(entry.scope, Scope::Read);
        let bearer = format!("bearer {read}");
        assert!(t
            .check(Some(bearer.as_bytes()), Some(Scope::Read), false)
            .is_ok());
        assert_eq!(
            t.check(Some(bearer.as_bytes()), Some(Scope::Admin), false),
            Err(Denied::Forbidden)
        );
        // A group-writable file is refused.
        std::fs::set_permissions(d.join(TOKENS_FILE), std::fs::Permissions::from_mode(0o620))
            .unwrap();
        assert!(Tokens::init(&d).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn constant_time_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
