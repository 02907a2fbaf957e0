//! `tuk verifier serve` for the tests: on an ephemeral loopback port, trusting the tests' vTPM
//! CA ([`crate::vtpm_ca_dir`]), and its first admin token.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use crate::process::Service;

/// `TUK verifier serve --listen 127.0.0.1:0 --interval INTERVAL_MS --state-dir STATE --ca
/// <the tests' vTPM CA>`, not started: add arguments, then [`Service::start`] it (or
/// `output()` it, to see it refuse to start).
pub fn serve_command(tuk: &str, state: &Path, interval_ms: u64) -> Command {
    let mut cmd = Command::new(tuk);
    cmd.args(["verifier", "serve", "--listen", "127.0.0.1:0", "--interval"])
        .arg(interval_ms.to_string())
        .arg("--state-dir")
        .arg(state)
        .arg("--ca")
        .arg(crate::vtpm_ca_dir());
    cmd
}

/// Starts [`serve_command`] with `extra` arguments after those; panics unless it prints its
/// ready line. The service is killed when the [`Service`] is dropped.
pub fn serve<S: AsRef<OsStr>>(tuk: &str, state: &Path, interval_ms: u64, extra: &[S]) -> Service {
    let mut cmd = serve_command(tuk, state, interval_ms);
    cmd.args(extra);
    Service::start(cmd)
}

/// The first admin token a verifier wrote into its state directory (`STATE/admin.token`),
/// trimmed; panics if there is none.
pub fn admin_token(state: &Path) -> String {
    let path = state.join("admin.token");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: the verifier writes its first admin token to STATE_DIR/admin.token",
                path.display()
            )
        })
        .trim()
        .to_owned()
}
