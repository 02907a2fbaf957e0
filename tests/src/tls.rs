//! TLS for the tests: a certificate made by Debian's `openssl` CLI, and an HTTPS client that
//! trusts only it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Writes a self-signed end-entity certificate for 127.0.0.1 (EC P-256, IP SAN 127.0.0.1,
/// `CA:FALSE`, valid 2 days) and its unencrypted key into `dir` as `cert.pem` and `key.pem`;
/// returns (certificate, key). Panics if `openssl` is missing or fails.
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl CLI (Debian's openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// An HTTP(S) client whose only trusted root is the PEM certificate `cert` (e.g. from
/// [`self_signed_cert`]): 10 s per request, and every status is an answer (no error for 4xx
/// or 5xx).
pub fn https_agent(cert: &Path) -> ureq::Agent {
    let pem = std::fs::read(cert).unwrap_or_else(|e| panic!("{}: {e}", cert.display()));
    let ca = ureq::tls::Certificate::from_pem(&pem).unwrap();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
                .build(),
        )
        .build()
        .into()
}
