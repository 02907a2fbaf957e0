//! The out-of-guest monitor's signed report (docs/measurement.md, "The monitor's verdict and
//! attestation"): after every check the launcher signs a [`tuk_attest::monitor_report::Report`]
//! with the per-user monitor key, writes it to `<state>/monitor-report.json` and keeps the
//! latest for `tuk run --monitor-report-listen` to serve. A verifier trusts the host's
//! `monitor.pub` and checks the report next to the instance's quote.
//!
//! The key: ed25519 (`tuk-measure`'s signing code; the report is a DSSE envelope like a
//! bundle's), `monitor.key` (PKCS#8 PEM, 0600) in `$TUK_MONITOR_KEY_DIR`, else
//! `$XDG_DATA_HOME/tuk/monitor`, else `~/.local/share/tuk/monitor` (0700), created on first
//! use; `monitor.pub` next to it is what a verifier takes with `--monitor-key`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tuk_attest::monitor_report::{
    boot_digest, ComponentCheck, Finding, Report, Verdict, MAX_FINDINGS, PAYLOAD_TYPE,
};
use tuk_measure::eventlog::Record;
use tuk_measure::policy::TrustedKey;
use tuk_measure::sign::SigningKey;

use crate::monitor::{self, SegmentCheck};

/// The private key's file name in the key directory.
pub const KEY_FILE: &str = "monitor.key";
/// The public key's file name (a `tuk keygen`-style `.pub`: `{"keyid","ed25519"}`).
pub const PUB_FILE: &str = "monitor.pub";
/// The report's file name in the state directory.
pub const REPORT_FILE: &str = "monitor-report.json";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("monitor key directory {path}: {reason}; remove it (or set TUK_MONITOR_KEY_DIR to another) so tuk can create it privately (0700)")]
    UnsafeDir { path: PathBuf, reason: String },
    #[error("monitor key {path}: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("cannot make a monitor key: {0}")]
    Generate(String),
    #[error("cannot read the instance's AK from {url}: {reason}")]
    Identity { url: String, reason: String },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ReportError + 'a {
    move |cause| ReportError::Io {
        what,
        path: path.into(),
        cause,
    }
}

/// `$TUK_MONITOR_KEY_DIR`, else `$XDG_DATA_HOME/tuk/monitor`, else `~/.local/share/tuk/monitor`.
pub fn default_key_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TUK_MONITOR_KEY_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("tuk-user-data"))
        .join("tuk")
        .join("monitor")
}

/// The host's monitor signing key.
pub struct MonitorKey {
    key: SigningKey,
    /// The key directory.
    pub dir: PathBuf,
}

impl std::fmt::Debug for MonitorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorKey")
            .field("dir", &self.dir)
            .field("keyid", &self.key.keyid())
            .finish()
    }
}

impl MonitorKey {
    /// Loads the key from `dir`, creating the directory (0700) and the key (0600) on first use.
    /// Refuses a directory or key file that others can read.
    pub fn load_or_create(dir: &Path) -> Result<MonitorKey, ReportError> {
        tuk_vtpm::private_dir(dir).map_err(|e| ReportError::UnsafeDir {
            path: dir.into(),
            reason: e.to_string(),
        })?;
        let path = dir.join(KEY_FILE);
        let key = match fs::symlink_metadata(&path) {
            Ok(_) => Self::read(&path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key =
                    SigningKey::generate().map_err(|e| ReportError::Generate(e.to_string()))?;
                // Written to a private temporary name, then linked into place: two launchers
                // creating the key at once end up with one key.
                let tmp = dir.join(format!("{KEY_FILE}.{}.tmp", std::process::id()));
                let _ = fs::remove_file(&tmp);
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .and_then(|mut f| {
                        f.write_all(key.to_pkcs8_pem().as_bytes())?;
                        f.sync_all()
                    })
                    .map_err(io_err("cannot write", &tmp))?;
                let linked = fs::hard_link(&tmp, &path);
                let _ = fs::remove_file(&tmp);
                match linked {
                    Ok(()) => key,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::read(&path)?,
                    Err(e) => return Err(io_err("cannot create", &path)(e)),
                }
            }
            Err(e) => return Err(io_err("cannot inspect", &path)(e)),
        };
        let me = MonitorKey {
            key,
            dir: dir.into(),
        };
        let pub_path = me.pub_path();
        let public = me.trusted_key().to_json();
        if fs::read(&pub_path).ok().as_deref() != Some(&public[..]) {
            let tmp = dir.join(format!("{PUB_FILE}.{}.tmp", std::process::id()));
            fs::write(&tmp, &public)
                .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)))
                .and_then(|()| fs::rename(&tmp, &pub_path))
                .map_err(io_err("cannot write", &pub_path))?;
        }
        Ok(me)
    }

    fn read(path: &Path) -> Result<SigningKey, ReportError> {
        let meta = fs::symlink_metadata(path).map_err(io_err("cannot inspect", path))?;
        let bad = |reason: &str| ReportError::BadKey {
            path: path.into(),
            reason: reason.into(),
        };
        if !meta.file_type().is_file() {
            return Err(bad("not a regular file"));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(bad(
                "readable or writable by others; remove it (a new key is made) or chmod 600 it",
            ));
        }
        let text = fs::read_to_string(path).map_err(io_err("cannot read", path))?;
        SigningKey::from_pkcs8_pem(&text).map_err(|e| bad(&e.to_string()))
    }

    pub fn pub_path(&self) -> PathBuf {
        self.dir.join(PUB_FILE)
    }

    pub fn keyid(&self) -> String {
        self.key.keyid()
    }

    pub fn trusted_key(&self) -> TrustedKey {
        self.key.trusted_key()
    }

    /// The report as a signed DSSE envelope (JSON).
    pub fn sign(&self, report: &Report) -> Vec<u8> {
        self.key
            .sign_envelope(PAYLOAD_TYPE, report.to_json())
            .to_json()
    }
}

/// The hex AK name of the instance whose admin listener is `admin`, from
/// `GET /_tuk/attestation/identity` (computed from the AK's public area, not the stated name).
pub fn ak_name(admin: std::net::SocketAddr) -> Result<String, ReportError> {
    let url = format!("http://{admin}/_tuk/attestation/identity");
    let bad = |reason: String| ReportError::Identity {
        url: url.clone(),
        reason,
    };
    let reply = crate::health::get(
        admin,
        "/_tuk/attestation/identity",
        std::time::Duration::from_secs(30),
    )
    .map_err(|e| bad(e.to_string()))?;
    if reply.status != 200 {
        return Err(bad(format!("answered {}", reply.status)));
    }
    let identity =
        tuk_attest::evidence::Identity::from_json(&reply.body).map_err(|e| bad(e.to_string()))?;
    let public =
        tuk_attest::TpmPublic::parse(&identity.ak_public).map_err(|e| bad(e.to_string()))?;
    Ok(tuk_measure::hex(&public.name()))
}

/// The latest signed report, shared with the server that serves it.
pub type Latest = Arc<Mutex<Option<Vec<u8>>>>;

/// Builds, signs, writes and publishes a report after every check of one VM.
#[derive(Debug)]
pub struct Reporter {
    key: Arc<MonitorKey>,
    instance: String,
    ak_name: String,
    boot: String,
    interval_ms: u64,
    findings: Vec<Finding>,
    dropped: u64,
    path: PathBuf,
    latest: Latest,
}

impl Reporter {
    /// A reporter for the VM whose launcher measured `records` (PCR 4/5) and whose AK is
    /// `ak_name`; reports go to `<state_dir>/monitor-report.json` and `latest`.
    pub fn new(
        key: Arc<MonitorKey>,
        instance: String,
        ak_name: String,
        records: &[Record],
        interval_ms: u64,
        state_dir: &Path,
        latest: Latest,
    ) -> Result<Reporter, String> {
        let boot = boot_digest(records)?;
        Ok(Reporter {
            key,
            instance,
            ak_name,
            boot: tuk_measure::hex(&boot),
            interval_ms,
            findings: Vec::new(),
            dropped: 0,
            path: state_dir.join(REPORT_FILE),
            latest,
        })
    }

    /// Records a change the monitor found (kept for the VM's life: the verdict stays flagged).
    pub fn finding(&mut self, v: &monitor::Violation) {
        let (target, region) = match v.segment.strip_prefix("component:") {
            Some(rest) => {
                let name = rest.strip_suffix(":code").unwrap_or(rest);
                (format!("component:{name}"), "code".to_owned())
            }
            None => ("kernel".to_owned(), v.segment.clone()),
        };
        if self.findings.len() >= MAX_FINDINGS {
            self.dropped += 1;
            return;
        }
        self.findings.push(Finding {
            target,
            region,
            paddr: v.paddr,
            offset: Some(v.offset),
            expected_sha256: v.expected_sha256.clone(),
            observed_sha256: v.observed_sha256.clone(),
            detected_ms: v.detected_ms,
        });
    }

    /// Signs the report for a finished check (`seq` from the caller's counter), writes it and
    /// publishes it; returns the envelope.
    pub fn checked(&mut self, check: &monitor::Report, seq: u64) -> Result<Vec<u8>, ReportError> {
        let components = check
            .segments
            .iter()
            .filter_map(|s: &SegmentCheck| {
                let name = s.name.strip_prefix("component:")?.strip_suffix(":code")?;
                Some(ComponentCheck {
                    name: name.to_owned(),
                    code_sha256: s.expected_sha256.clone(),
                    addr: s.paddr,
                    len: s.len,
                    ok: s.ok,
                })
            })
            .collect();
        let report = Report {
            instance: self.instance.clone(),
            ak_name: self.ak_name.clone(),
            boot: self.boot.clone(),
            seq,
            checked_ms: check.unix_ms,
            interval_ms: self.interval_ms,
            verdict: if self.findings.is_empty() && self.dropped == 0 {
                Verdict::Clean
            } else {
                Verdict::Flagged
            },
            findings: self.findings.clone(),
            findings_dropped: self.dropped,
            components,
            incomplete: check.component_error.clone(),
        };
        let envelope = self.key.sign(&report);
        let tmp = self.path.with_extension("json.tmp");
        let _ = fs::remove_file(&tmp);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&envelope))
            .and_then(|()| fs::rename(&tmp, &self.path))
            .map_err(io_err("cannot write", &self.path))?;
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Some(envelope.clone());
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tuk_attest::monitor_report::{check, Expect};

    #[test]
    fn key_is_private_and_stable_and_reports_verify() {
        let dir = std::env::temp_dir()
            .join("tuk-launcher-unit")
            .join(format!("monitor-key-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let key = MonitorKey::load_or_create(&dir).unwrap();
        let meta = fs::metadata(dir.join(KEY_FILE)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let again = MonitorKey::load_or_create(&dir).unwrap();
        assert_eq!(again.keyid(), key.keyid());
        let public = TrustedKey::from_json(&fs::read(key.pub_path()).unwrap()).unwrap();
        assert_eq!(public, key.trusted_key());

        let records = [Record::new(
            0,
            4,
            &[1; 32],
            "tuk.kernel",
            serde_json::Value::Null,
        )];
        let latest: Latest = Arc::default();
        let mut r = Reporter::new(
            Arc::new(key),
            "http://x".into(),
            "000b01".into(),
            &records,
            100,
            &dir,
            Arc::clone(&latest),
        )
        .unwrap();
        let report = monitor::Report {
            segments: vec![],
            component_error: None,
            bytes: 0,
            took: std::time::Duration::ZERO,
            unix_ms: 5000,
        };
        let env = r.checked(&report, 7).unwrap();
        assert_eq!(latest.lock().unwrap().as_deref(), Some(&env[..]));
        assert_eq!(fs::read(dir.join(REPORT_FILE)).unwrap(), env);
        let expect = Expect {
            ak_name: "000b01",
            boot: boot_digest(&records).unwrap(),
            now_ms: 5100,
            last_seq: None,
        };
        let v = check(&env, &[public], &expect).unwrap();
        assert_eq!((v.report.seq, v.report.verdict), (7, Verdict::Clean));

        // A key others can read is refused.
        fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let e = MonitorKey::load_or_create(&dir).unwrap_err();
        assert!(e.to_string().contains("by others"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
