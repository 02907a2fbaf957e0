//! A rolled-back TPM (review finding 13): the verifier keeps each AK's last quoted TPM
//! counters (resetCount, restartCount, clock) and contraindicates a quote that goes back.
//!
//! The attack, with real parts (QEMU TCG, swtpm, `tuk verifier serve`): an instance runs and is
//! attested; its vTPM state is copied; it runs again (the TPM's counters go forward: a reset or
//! a restart, and the clock goes on) and is attested; then the copy is put back and the instance
//! booted on it. The TPM is genuine and its EK, AK and PCRs are right, but its counters are those
//! of the past: no more resets or restarts than the second run, and a lower clock. The honest reboot in the middle is never taken for a
//! rollback; the replayed state is contraindicated (instance identity: unrecognized) with the
//! reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tuk_e2e::process::Service;
use tuk_e2e::{free_listen, kernel_image, poll, verifier, vtpm_ca_dir, Accel, Instance, RunConfig};

const TUK: &str = env!("CARGO_BIN_EXE_tuk");

/// `tuk verifier serve` (attesting every 500 ms) and its admin token.
struct Verifier {
    /// Killed on drop.
    _service: Service,
    url: String,
    token: String,
}

impl Verifier {
    fn start(state: &Path) -> Verifier {
        let service = verifier::serve(TUK, state, 500, &[] as &[&str]);
        Verifier {
            url: service.url(),
            token: verifier::admin_token(state),
            _service: service,
        }
    }

    /// GET, or POST when `body` is given.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let a: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {}", self.token);
        let r = match body {
            Some(b) => a
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b.to_string().as_bytes()),
            None => a.get(&url).header("Authorization", &auth).call(),
        };
        let mut r = r.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Registers (or re-points) `id` at `url` and waits for `results` results about that URL;
    /// returns them, newest first.
    fn attest(&self, id: &str, url: &str, results: usize) -> Vec<Value> {
        let (status, doc) = self.call(
            "POST",
            "/v1/instances",
            Some(&json!({"url": url, "id": id, "replace": true})),
        );
        assert!(status == 200 || status == 201, "{status} {doc}");
        poll::until(
            &format!("{results} results about {url}"),
            Duration::from_secs(60),
            Duration::from_millis(50),
            || {
                let (_, doc) = self.call(
                    "GET",
                    &format!("/v1/instances/{id}/results?limit=100"),
                    None,
                );
                let mine: Vec<Value> = doc["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["claims"]["tuk_url"] == url)
                    .cloned()
                    .collect();
                if mine.len() >= results {
                    Ok(mine)
                } else {
                    Err(doc.to_string())
                }
            },
        )
        .0
    }
}

fn boot_on(state: &Path) -> Instance {
    let mut cfg = RunConfig::new(kernel_image(), free_listen());
    cfg.accel = Accel::Tcg;
    cfg.vtpm_ca_dir = vtpm_ca_dir();
    cfg.state_dir = state.to_path_buf();
    Instance::start(cfg).unwrap_or_else(|e| panic!("boot on {}: {e}", state.display()))
}

fn stop(mut vm: Instance) {
    let _ = vm.shutdown(Duration::from_secs(20));
    drop(vm);
}

fn copy_dir(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    // The launcher wants the vTPM's directory private.
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The kernel submodule's reasons, as one string.
fn reasons(result: &Value) -> String {
    result["claims"]["submods"]["kernel"]["ear_verifier_claims"]["reasons"].to_string()
}

fn tpm(result: &Value) -> (u64, u64, u64) {
    let t = &result["claims"]["submods"]["kernel"]["ear_verifier_claims"]["tpm"];
    (
        t["reset_count"]
            .as_u64()
            .unwrap_or_else(|| panic!("{result}")),
        t["restart_count"].as_u64().unwrap(),
        t["clock_ms"].as_u64().unwrap(),
    )
}

#[test]
fn a_rolled_back_tpm_is_contraindicated() {
    let dir: PathBuf = std::env::temp_dir()
        .join("tuk-e2e")
        .join(format!("verifier-rollback-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let vm_state = dir.join("vm");
    let saved = dir.join("tpm-saved");
    let v = Verifier::start(&dir.join("verifier"));

    // Run 1, attested; then its TPM state is copied.
    let vm = boot_on(&vm_state);
    let run1 = v.attest("r", &vm.admin_url(), 1);
    stop(vm);
    copy_dir(&vm_state.join("tpm"), &saved);

    // Run 2: an honest reboot (one more reset). Attested for a while, so the clock goes on.
    let vm = boot_on(&vm_state);
    let run2 = v.attest("r", &vm.admin_url(), 4);
    stop(vm);
    for r in run2.iter().chain(&run1) {
        assert!(
            !reasons(r).contains("counters went back"),
            "an honest reboot taken for a rollback: {r}"
        );
    }
    let newest = tpm(&run2[0]);
    // The honest reboot went forward (a reset, or a restart, and the clock on).
    assert!(
        newest > tpm(&run1[0]),
        "{newest:?} after {:?}",
        tpm(&run1[0])
    );

    // The attack: run 1's TPM state put back.
    copy_dir(&saved, &vm_state.join("tpm"));
    let vm = boot_on(&vm_state);
    let run3 = v.attest("r", &vm.admin_url(), 1);
    let r = &run3[run3.len() - 1];
    eprintln!(
        "run 2 ended at {newest:?}; the restored TPM quotes {:?}",
        tpm(r)
    );
    assert_eq!(r["status"], "contraindicated", "{r}");
    assert!(reasons(r).contains("counters went back"), "{r}");
    assert_eq!(
        r["claims"]["submods"]["kernel"]["ear_trustworthiness_vector"]["instance-identity"], 97,
        "{r}"
    );
    stop(vm);
    drop(v);
    let _ = std::fs::remove_dir_all(&dir);
}
