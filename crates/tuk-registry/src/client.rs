//! The few OCI distribution endpoints tuk uses, over a blocking HTTP/1.1 client (ureq), with
//! registry answers turned into [`RegistryError`]s that say what to do.
//!
//! - `GET  /v2/<name>/manifests/<ref>` and `PUT` (tag) ([`Client::get_manifest`],
//!   [`Client::put_manifest`])
//! - `HEAD /v2/<name>/blobs/<digest>`, `GET` it, verified while it streams
//!   ([`Client::blob_exists`], [`Client::get_blob`])
//! - `POST /v2/<name>/blobs/uploads/` then `PUT <location>?digest=` (monolithic upload,
//!   [`Client::upload_blob`])
//! - `GET  /v2/<name>/tags/list` ([`Client::tags`])
//!
//! Anonymous access only; a registry that asks for credentials gets a clear
//! [`RegistryError::Unauthorized`].

use std::io::Read;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use ureq::http::Response;
use ureq::Body;

use crate::oci::hex;
use crate::{Reference, RegistryError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per request, including a 64 MiB blob over a slow link.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Error bodies and tag lists are small; anything larger is not worth reading.
const SMALL_BODY: u64 = 1 << 20;

pub(crate) struct Client {
    agent: ureq::Agent,
    /// `http://host:port` or `https://host:port`.
    base: String,
    repository: String,
}

type Resp = Response<Body>;

impl Client {
    /// A client for `reference`'s registry and repository: http for a loopback host or when
    /// `insecure`, https otherwise.
    pub(crate) fn new(reference: &Reference, insecure: bool) -> Client {
        let scheme = if insecure || reference.is_loopback() {
            "http"
        } else {
            "https"
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .max_redirects(5)
            .user_agent(concat!("tuk/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            agent,
            base: format!("{scheme}://{}", reference.registry()),
            repository: reference.repository().to_owned(),
        }
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.repository)
    }

    /// `GET` a manifest; returns its bytes (at most `limit`) and the `Content-Type`.
    pub(crate) fn get_manifest(
        &self,
        reference: &str,
        accept: &str,
        limit: u64,
    ) -> Result<(Vec<u8>, String, Option<String>), RegistryError> {
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self
            .agent
            .get(&url)
            .header("Accept", accept)
            .call()
            .map_err(|e| transport(&url, e))?;
        let resp = expect(resp, "GET", &url, &[200])?;
        let content_type = header(&resp, "content-type").unwrap_or_default();
        let claimed = header(&resp, "docker-content-digest");
        let body = read_limited(resp, limit, &url, "the manifest")?;
        Ok((body, content_type, claimed))
    }

    /// `PUT` a manifest under `reference` (a tag); returns the registry's
    /// `Docker-Content-Digest`, if it sent one.
    pub(crate) fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        manifest: &[u8],
    ) -> Result<Option<String>, RegistryError> {
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self
            .agent
            .put(&url)
            .header("Content-Type", media_type)
            .send(manifest)
            .map_err(|e| transport(&url, e))?;
        let resp = expect(resp, "PUT", &url, &[200, 201])?;
        Ok(header(&resp, "docker-content-digest"))
    }

    /// Whether the repository already has the blob (`HEAD`).
    pub(crate) fn blob_exists(&self, digest: &str) -> Result<bool, RegistryError> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self
            .agent
            .head(&url)
            .call()
            .map_err(|e| transport(&url, e))?;
        if resp.status().as_u16() == 404 {
            return Ok(false);
        }
        expect(resp, "HEAD", &url, &[200])?;
        Ok(true)
    }

    /// Uploads one blob: `POST` to start an upload session, `PUT` the bytes with the digest.
    pub(crate) fn upload_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let url = self.url("blobs/uploads/");
        let resp = self
            .agent
            .post(&url)
            .send_empty()
            .map_err(|e| transport(&url, e))?;
        let resp = expect(resp, "POST", &url, &[202])?;
        let location = header(&resp, "location").ok_or_else(|| {
            RegistryError::Protocol(format!("POST {url}: 202 without a Location header"))
        })?;
        let mut put_url = if location.starts_with("http://") || location.starts_with("https://") {
            location
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            format!("{}/{location}", self.base)
        };
        put_url.push(if put_url.contains('?') { '&' } else { '?' });
        put_url.push_str("digest=");
        put_url.push_str(digest);
        let resp = self
            .agent
            .put(&put_url)
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .map_err(|e| transport(&put_url, e))?;
        let resp = expect(resp, "PUT", &put_url, &[201])?;
        if let Some(stored) = header(&resp, "docker-content-digest") {
            if stored != digest {
                return Err(RegistryError::DigestMismatch {
                    what: "uploaded blob".into(),
                    expected: digest.to_owned(),
                    actual: stored,
                });
            }
        }
        Ok(())
    }

    /// Downloads a blob whose descriptor says `digest` and `size`, hashing it as it arrives:
    /// more or fewer bytes than `size`, or another digest, is an error.
    pub(crate) fn get_blob(
        &self,
        what: &str,
        digest: &str,
        size: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| transport(&url, e))?;
        let resp = expect(resp, "GET", &url, &[200]).map_err(|e| match e {
            RegistryError::NotFound { .. } => RegistryError::NotFound {
                what: format!("{what} {digest}"),
                detail: "the manifest lists a blob the registry does not have".into(),
            },
            e => e,
        })?;
        let mut reader = resp
            .into_body()
            .into_with_config()
            .limit(size.saturating_add(1))
            .reader()
            .take(size.saturating_add(1));
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 26));
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(RegistryError::Transport {
                        url,
                        detail: format!("reading {what}: {e}"),
                    })
                }
            };
            hasher.update(&buf[..n]);
            bytes.extend_from_slice(&buf[..n]);
        }
        if bytes.len() as u64 != size {
            return Err(RegistryError::SizeMismatch {
                what: format!("{what} {digest}"),
                expected: size,
                actual: bytes.len() as u64,
            });
        }
        let actual = format!("sha256:{}", hex(&hasher.finalize()));
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                what: what.to_owned(),
                expected: digest.to_owned(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// The repository's tags (`GET /v2/<name>/tags/list`).
    pub(crate) fn tags(&self) -> Result<Vec<String>, RegistryError> {
        #[derive(Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let url = self.url("tags/list");
        let resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| transport(&url, e))?;
        let resp = expect(resp, "GET", &url, &[200])?;
        let body = read_limited(resp, SMALL_BODY, &url, "the tag list")?;
        let list: TagList = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Protocol(format!("GET {url}: bad tag list: {e}")))?;
        Ok(list.tags.unwrap_or_default())
    }
}

fn header(resp: &Resp, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn read_limited(resp: Resp, limit: u64, url: &str, what: &str) -> Result<Vec<u8>, RegistryError> {
    resp.into_body()
        .into_with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => RegistryError::TooLarge {
                what: format!("{what} at {url}"),
                limit,
            },
            e => transport(url, e),
        })
}

/// Turns a status other than `ok` into the error that explains it.
fn expect(resp: Resp, method: &str, url: &str, ok: &[u16]) -> Result<Resp, RegistryError> {
    let status = resp.status().as_u16();
    if ok.contains(&status) {
        return Ok(resp);
    }
    let challenge = header(&resp, "www-authenticate");
    let detail = error_detail(resp);
    Err(match status {
        401 => RegistryError::Unauthorized {
            url: url.to_owned(),
            challenge: challenge.unwrap_or_else(|| "no WWW-Authenticate header".into()),
        },
        403 => RegistryError::Denied {
            url: url.to_owned(),
            detail,
        },
        404 => RegistryError::NotFound {
            what: url.to_owned(),
            detail,
        },
        _ => RegistryError::Http {
            method: method.to_owned(),
            url: url.to_owned(),
            status,
            detail,
        },
    })
}

/// The registry's error document (`{"errors":[{"code","message"}]}`) as one line, or the start
/// of whatever else it sent.
fn error_detail(resp: Resp) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<OneError>,
    }
    #[derive(Deserialize)]
    struct OneError {
        code: String,
        #[serde(default)]
        message: String,
    }
    let body = resp
        .into_body()
        .into_with_config()
        .limit(SMALL_BODY)
        .read_to_vec()
        .unwrap_or_default();
    if let Ok(doc) = serde_json::from_slice::<Errors>(&body) {
        if !doc.errors.is_empty() {
            return doc
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
        }
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() {
        "no details".into()
    } else {
        text.chars().take(200).collect()
    }
}

fn transport(url: &str, e: ureq::Error) -> RegistryError {
    use std::io::ErrorKind;
    let unreachable = match &e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        ureq::Error::Timeout(t) => {
            matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve)
        }
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionReset
                | ErrorKind::NotFound
                | ErrorKind::AddrNotAvailable
                | ErrorKind::TimedOut
        ),
        _ => false,
    };
    if unreachable {
        RegistryError::Unreachable {
            url: url.to_owned(),
            detail: e.to_string(),
        }
    } else {
        RegistryError::Transport {
            url: url.to_owned(),
            detail: e.to_string(),
        }
    }
}
