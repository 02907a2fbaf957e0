//! The trust policy: which keys may sign components, which names may run, and the lowest
//! version of each that may (rollback protection).
//!
//! ```json
//! {"keys":[{"keyid":"<hex sha256 of the key>","ed25519":"<hex 32-byte public key>"}],
//!  "allowed_names":["hello","kv"],
//!  "min_versions":{"kv":"1.2.0"}}
//! ```
//!
//! `allowed_names` null (or absent) allows any name; `min_versions` absent is empty.
//! [`TrustPolicy::from_json`] is the checked constructor: at most [`MAX_POLICY`] bytes, unknown
//! fields refused (a misspelt `min_version` must not silently drop a restriction), at least one
//! key, keys lowercase hex and valid non-weak ed25519 points, each keyid equal to the SHA-256
//! of its key, no duplicate keys or names, names valid component names, versions
//! `MAJOR.MINOR.PATCH`.
//!
//! [`TrustPolicy::canonical_json`] is what PCR 8 measures: compact JSON with the fields in the
//! order above, keys in the order given, names in the order given, `min_versions` sorted by
//! name. Parsing canonical bytes and re-encoding gives the same bytes.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::version::Version;
use crate::{keyid, parse_hex32, sha256, Digest};

/// Largest policy document accepted.
pub const MAX_POLICY: usize = 64 * 1024;
/// Most keys one policy may trust.
pub const MAX_KEYS: usize = 64;
/// Most names in `allowed_names` or `min_versions`.
pub const MAX_NAMES: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustPolicy {
    pub keys: Vec<TrustedKey>,
    #[serde(default)]
    pub allowed_names: Option<Vec<String>>,
    #[serde(default)]
    pub min_versions: BTreeMap<String, String>,
}

/// A key trusted to sign components; also the content of a `tuk keygen` `.pub` file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    /// Lowercase hex SHA-256 of the raw public key.
    pub keyid: String,
    /// Lowercase hex of the raw 32-byte ed25519 public key.
    pub ed25519: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("trust policy is {len} bytes; at most {MAX_POLICY} are accepted")]
    TooLarge { len: usize },
    #[error(
        "trust policy is not valid JSON of the expected shape ({0}); write one with `tuk policy`"
    )]
    Json(String),
    #[error("trust policy trusts no keys: add at least one `tuk keygen` .pub key")]
    NoKeys,
    #[error("trust policy lists {0} keys or names; at most {MAX_KEYS} keys and {MAX_NAMES} names are accepted")]
    TooMany(usize),
    #[error("trusted key {keyid:?}: {reason}")]
    BadKey { keyid: String, reason: &'static str },
    #[error("trusted key {0:?} is listed twice")]
    DuplicateKey(String),
    #[error("{0:?} is not a valid component name ([a-z0-9-], 1-63 characters)")]
    BadName(String),
    #[error("component name {0:?} is listed twice in allowed_names")]
    DuplicateName(String),
    #[error("minimum version of {name:?}: {error}")]
    BadVersion {
        name: String,
        error: crate::version::VersionError,
    },
}

impl TrustedKey {
    /// The trusted-key entry for a raw public key.
    pub fn from_public_key(public_key: &[u8; 32]) -> Self {
        TrustedKey {
            keyid: keyid(public_key),
            ed25519: crate::hex(public_key),
        }
    }

    /// Checks the key and returns the verifying key.
    pub fn verifying_key(&self) -> Result<ed25519_dalek::VerifyingKey, PolicyError> {
        let bad = |reason| PolicyError::BadKey {
            keyid: self.keyid.chars().take(64).collect(),
            reason,
        };
        let raw = parse_hex32(&self.ed25519)
            .ok_or_else(|| bad("ed25519 is not 64 lowercase hex digits"))?;
        if keyid(&raw) != self.keyid {
            return Err(bad(
                "keyid is not the SHA-256 of the key; copy the key's .pub file unchanged",
            ));
        }
        let key = ed25519_dalek::VerifyingKey::from_bytes(&raw)
            .map_err(|_| bad("ed25519 is not a valid public key"))?;
        if key.is_weak() {
            return Err(bad("ed25519 is a weak (small-order) key"));
        }
        Ok(key)
    }

    /// Parses one key on its own (a `.pub` file), with the checks a policy applies.
    pub fn from_json(json: &[u8]) -> Result<Self, PolicyError> {
        if json.len() > MAX_POLICY {
            return Err(PolicyError::TooLarge { len: json.len() });
        }
        let key: TrustedKey =
            serde_json::from_slice(json).map_err(|e| PolicyError::Json(e.to_string()))?;
        key.verifying_key()?;
        Ok(key)
    }

    /// Compact JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl TrustPolicy {
    /// Parses and validates a policy (see the module docs for what is checked).
    pub fn from_json(json: &[u8]) -> Result<Self, PolicyError> {
        if json.len() > MAX_POLICY {
            return Err(PolicyError::TooLarge { len: json.len() });
        }
        let policy: TrustPolicy =
            serde_json::from_slice(json).map_err(|e| PolicyError::Json(e.to_string()))?;
        policy.validate()?;
        Ok(policy)
    }

    /// The checks [`TrustPolicy::from_json`] applies, for a policy built in code.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.keys.is_empty() {
            return Err(PolicyError::NoKeys);
        }
        if self.keys.len() > MAX_KEYS {
            return Err(PolicyError::TooMany(self.keys.len()));
        }
        for (i, key) in self.keys.iter().enumerate() {
            key.verifying_key()?;
            if self.keys[..i].iter().any(|k| k.keyid == key.keyid) {
                return Err(PolicyError::DuplicateKey(key.keyid.clone()));
            }
        }
        if let Some(names) = &self.allowed_names {
            if names.len() > MAX_NAMES {
                return Err(PolicyError::TooMany(names.len()));
            }
            for (i, name) in names.iter().enumerate() {
                if !tuk_bootpack::valid_name(name) {
                    return Err(PolicyError::BadName(name.chars().take(64).collect()));
                }
                if names[..i].contains(name) {
                    return Err(PolicyError::DuplicateName(name.clone()));
                }
            }
        }
        if self.min_versions.len() > MAX_NAMES {
            return Err(PolicyError::TooMany(self.min_versions.len()));
        }
        for (name, version) in &self.min_versions {
            if !tuk_bootpack::valid_name(name) {
                return Err(PolicyError::BadName(name.chars().take(64).collect()));
            }
            version
                .parse::<Version>()
                .map_err(|error| PolicyError::BadVersion {
                    name: name.clone(),
                    error,
                })?;
        }
        Ok(())
    }

    /// The canonical bytes (what PCR 8 measures; see the module docs).
    pub fn canonical_json(&self) -> Vec<u8> {
        // Serializing strings, vectors and maps into memory cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// SHA-256 of [`TrustPolicy::canonical_json`].
    pub fn digest(&self) -> Digest {
        sha256(&self.canonical_json())
    }

    /// Whether `name` may run.
    pub fn allows(&self, name: &str) -> bool {
        self.allowed_names
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }

    /// The lowest version of `name` that may run, if the policy sets one. An unparseable
    /// minimum (possible only in a policy built in code and never validated) is an error, not
    /// "no minimum": rollback protection fails closed.
    pub fn min_version(&self, name: &str) -> Result<Option<Version>, PolicyError> {
        self.min_versions
            .get(name)
            .map(|v| {
                v.parse().map_err(|error| PolicyError::BadVersion {
                    name: name.into(),
                    error,
                })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    /// The RFC 8032 test 1 public key.
    const PK1: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn key() -> TrustedKey {
        TrustedKey::from_public_key(&parse_hex32(PK1).unwrap())
    }

    fn sample() -> TrustPolicy {
        TrustPolicy {
            keys: alloc::vec![key()],
            allowed_names: Some(alloc::vec!["kv".into(), "hello".into()]),
            min_versions: [("kv".to_string(), "1.2.0".to_string())]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn canonical_bytes() {
        let p = sample();
        let json = String::from_utf8(p.canonical_json()).unwrap();
        assert_eq!(
            json,
            alloc::format!(
                r#"{{"keys":[{{"keyid":"{}","ed25519":"{PK1}"}}],"allowed_names":["kv","hello"],"min_versions":{{"kv":"1.2.0"}}}}"#,
                key().keyid
            )
        );
        assert_eq!(TrustPolicy::from_json(json.as_bytes()).unwrap(), p);
        assert_eq!(p.digest(), sha256(json.as_bytes()));
        // Whitespace and field order in the input do not change the canonical bytes.
        let spaced = alloc::format!(
            "{{ \"min_versions\": {{\"kv\": \"1.2.0\"}},\n \"allowed_names\": [\"kv\", \"hello\"], \"keys\": [{{\"ed25519\": \"{PK1}\", \"keyid\": \"{}\"}}] }}",
            key().keyid
        );
        assert_eq!(
            TrustPolicy::from_json(spaced.as_bytes())
                .unwrap()
                .canonical_json(),
            json.as_bytes()
        );
    }

    #[test]
    fn null_or_absent_names_allow_any() {
        let json = alloc::format!(
            r#"{{"keys":[{}],"allowed_names":null}}"#,
            String::from_utf8(key().to_json()).unwrap()
        );
        let p = TrustPolicy::from_json(json.as_bytes()).unwrap();
        assert!(p.allows("anything"));
        assert!(p.min_versions.is_empty());
        let absent = alloc::format!(
            r#"{{"keys":[{}]}}"#,
            String::from_utf8(key().to_json()).unwrap()
        );
        assert_eq!(TrustPolicy::from_json(absent.as_bytes()).unwrap(), p);
        assert!(String::from_utf8(p.canonical_json())
            .unwrap()
            .ends_with(r#""allowed_names":null,"min_versions":{}}"#));
        assert!(sample().allows("hello"));
        assert!(!sample().allows("notes"));
        assert_eq!(sample().min_version("kv"), Ok(Some(Version::new(1, 2, 0))));
        assert_eq!(sample().min_version("hello"), Ok(None));
        let mut unvalidated = sample();
        unvalidated.min_versions.insert("kv".into(), "1.2".into());
        assert!(unvalidated.min_version("kv").is_err());
    }

    #[test]
    fn rejects_bad_policies() {
        let check = |p: TrustPolicy| {
            let json = serde_json::to_vec(&p).unwrap();
            TrustPolicy::from_json(&json).unwrap_err()
        };
        let mut p = sample();
        p.keys.clear();
        assert_eq!(check(p), PolicyError::NoKeys);
        let mut p = sample();
        p.keys.push(key());
        assert!(matches!(check(p), PolicyError::DuplicateKey(_)));
        let mut p = sample();
        p.keys[0].keyid = crate::hex(&[0; 32]);
        assert!(matches!(check(p), PolicyError::BadKey { .. }));
        let mut p = sample();
        p.keys[0].ed25519 = p.keys[0].ed25519.to_uppercase();
        assert!(matches!(check(p), PolicyError::BadKey { .. }));
        // A small-order point (the identity) is refused even with a matching keyid.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut p = sample();
        p.keys[0] = TrustedKey::from_public_key(&identity);
        assert!(matches!(check(p), PolicyError::BadKey { .. }));
        let mut p = sample();
        p.allowed_names = Some(alloc::vec!["Hello".into()]);
        assert!(matches!(check(p), PolicyError::BadName(_)));
        let mut p = sample();
        p.allowed_names = Some(alloc::vec!["kv".into(), "kv".into()]);
        assert!(matches!(check(p), PolicyError::DuplicateName(_)));
        let mut p = sample();
        p.min_versions.insert("kv".into(), "1.2".into());
        assert!(matches!(check(p), PolicyError::BadVersion { .. }));
        let mut p = sample();
        p.min_versions.insert("../x".into(), "1.2.0".into());
        assert!(matches!(check(p), PolicyError::BadName(_)));

        let json = String::from_utf8(sample().canonical_json()).unwrap();
        let typo = json.replace("min_versions", "min_version");
        assert!(matches!(
            TrustPolicy::from_json(typo.as_bytes()),
            Err(PolicyError::Json(_))
        ));
        let big = alloc::vec![b' '; MAX_POLICY + 1];
        assert_eq!(
            TrustPolicy::from_json(&big),
            Err(PolicyError::TooLarge {
                len: MAX_POLICY + 1
            })
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let base = sample().canonical_json();
        let mut rng = Rng(0x853c_49e6_748f_ea9b);
        for _ in 0..20_000 {
            let bytes = rng.mutate(&base);
            if let Ok(p) = TrustPolicy::from_json(&bytes) {
                // Whatever parses is valid and re-encodes to bytes that parse to itself.
                assert_eq!(TrustPolicy::from_json(&p.canonical_json()).unwrap(), p);
            }
        }
    }
}
