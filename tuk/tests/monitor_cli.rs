//! `tuk run`'s out-of-guest monitor and `tuk tamper`, as a user (or an attacker) runs them:
//! `tuk tamper` flips a byte of the running kernel's text through the guest-RAM file; `tuk run`
//! prints an `integrity-violation` event naming the segment and offset, then acts on
//! `--monitor-policy`: `stop` shuts the VM down and exits 3, `restart` boots a fresh VM (new
//! RAM file, same state directory) and serves again. No RAM file or instance.json outlives its VM.
//! A component's code image overwritten while the guest's own monitor is off is found by the
//! launcher's monitor too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tuk_e2e::process::{lines_of, sigterm, stderr_of, wait_exit, Reap};
use tuk_e2e::{free_listen, kernel_image, tamper_cli, Conn};

const TUK: &str = env!("CARGO_BIN_EXE_tuk");
/// The monitor's interval in these tests.
const INTERVAL_MS: u64 = 200;
/// Detection within the interval plus this: one check (tens of ms in a debug build) and the
/// noise of a loaded 2-core machine running QEMU TCG.
const SLACK: Duration = Duration::from_millis(1500);
/// The offset flipped in kernel:text: the padding between the PVH note and .text, never
/// executed, so the changed VM still behaves (and shuts down cleanly).
const TEXT_OFFSET: u64 = 0x18;

struct Run {
    child: Reap,
    stdout: mpsc::Receiver<String>,
    stderr: thread::JoinHandle<String>,
    state_dir: PathBuf,
}

impl Run {
    fn start(name: &str, policy: &str) -> Run {
        Self::start_with(name, policy, &[])
    }

    /// With `extra` arguments for `tuk run`, after the test's own (so they win).
    fn start_with(name: &str, policy: &str, extra: &[std::ffi::OsString]) -> Run {
        let listen = free_listen();
        let root = std::env::temp_dir().join("tuk-e2e");
        let state_dir = root.join(format!("{name}-{}-{}", std::process::id(), listen.port()));
        let mut child = Command::new(TUK)
            .args(["run", "--accel", "tcg", "--listen", &listen.to_string()])
            .arg("--kernel")
            .arg(kernel_image())
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--monitor-interval", &INTERVAL_MS.to_string()])
            .args(["--monitor-policy", policy])
            // Out-of-guest only: the in-guest monitor would also see a change to text.
            .args(["--kernel-arg", "integrity.interval_ms=0"])
            .args(extra)
            .env("TUK_VTPM_CA_DIR", root.join("vtpm-ca"))
            .env("TUK_MONITOR_KEY_DIR", root.join("monitor-key"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tuk");
        let stdout = lines_of(&mut child);
        let stderr = stderr_of(&mut child);
        Run {
            child: Reap(child),
            stdout,
            stderr,
            state_dir,
        }
    }

    /// The next JSON event on stdout, which must be `event`.
    fn event(&self, event: &str, within: Duration) -> Value {
        let line = self
            .stdout
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("no `{event}` event within {within:?} ({e})"));
        assert!(
            line.starts_with(&format!("{{\"event\":\"{event}\"")),
            "`event` comes first: {line}"
        );
        let v: Value = serde_json::from_str(&line).expect("stdout lines are JSON");
        assert_eq!(v["event"], event, "{v}");
        v
    }

    /// The ready event, and the instance it describes (instance.json).
    fn ready(&self) -> (Value, Value) {
        let ready = self.event("ready", Duration::from_secs(90));
        let path = ready["instance"]
            .as_str()
            .expect("ready names instance.json");
        assert_eq!(Path::new(path), self.state_dir.join("instance.json"));
        let info: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(info["url"], ready["url"]);
        assert_eq!(info["admin"], ready["admin"]);
        assert!(ready["admin"]
            .as_str()
            .is_some_and(|a| a.starts_with("http://127.0.0.1:")));
        assert_eq!(info["launcher_pid"], self.child.0.id());
        assert!(Path::new(info["memory_file"].as_str().unwrap()).is_file());
        (ready, info)
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        wait_exit(&mut self.child.0, within)
    }
}

/// `tuk tamper` on kernel:text; returns its `tampered` event.
fn tamper_text(state_dir: &Path) -> Value {
    let out = tamper_cli(TUK, state_dir, "kernel:text", &format!("{TEXT_OFFSET:#x}"));
    assert!(out.stdout.starts_with(br#"{"event":"tampered""#), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(v["event"], "tampered", "{v}");
    assert_eq!(v["target"], "kernel:text");
    assert_eq!(
        v["paddr"],
        0x10_0000 + TEXT_OFFSET,
        "the text segment is at 1 MiB"
    );
    assert_eq!(v["old"].as_str().unwrap().len(), 2, "{v}");
    v
}

/// Waits for the violation `tampered` caused and checks that it names it.
fn expect_violation(run: &Run, tampered: &Value, policy: &str, at: Instant) -> Value {
    let v = run.event(
        "integrity-violation",
        Duration::from_millis(INTERVAL_MS) + SLACK,
    );
    let took = at.elapsed();
    eprintln!(
        "  violation reported {} ms after tampering: {v}",
        took.as_millis()
    );
    assert_eq!(v["source"], "out-of-guest");
    assert_eq!(v["action"], policy);
    assert_eq!(v["segment"], "text");
    assert_eq!(v["offset"], TEXT_OFFSET);
    assert_eq!(v["paddr"], tampered["paddr"]);
    assert!(v["detected_ms"].as_u64().is_some(), "{v}");
    assert_ne!(v["expected_sha256"], v["observed_sha256"]);
    v
}

#[test]
fn stop_policy_shuts_the_vm_down_and_exits_3() {
    let mut run = Run::start("monitor-stop", "stop");
    let (_, info) = run.ready();
    let memory_file = PathBuf::from(info["memory_file"].as_str().unwrap());

    // Nothing to report while untouched (several intervals).
    assert!(
        run.stdout
            .recv_timeout(Duration::from_millis(INTERVAL_MS * 4))
            .is_err(),
        "no event before tampering"
    );
    let tampered = tamper_text(&run.state_dir);
    expect_violation(&run, &tampered, "stop", Instant::now());
    let stopped = run.event("stopped", Duration::from_secs(20));
    assert_eq!(stopped["reason"], "integrity-violation");
    assert_eq!(
        stopped["clean"], true,
        "the untouched kernel shuts down: {stopped}"
    );
    let status = run.wait_exit(Duration::from_secs(20));
    let err = run.stderr.join().unwrap();
    assert_eq!(status.code(), Some(3), "stderr: {err}");
    assert!(err.contains("INTEGRITY VIOLATION"), "{err}");
    assert!(
        !memory_file.exists(),
        "{} outlived the VM",
        memory_file.display()
    );
    assert!(!run.state_dir.join("instance.json").exists());

    // With no instance, tuk tamper says so (exit 2).
    let out = Command::new(TUK)
        .arg("tamper")
        .arg("--instance")
        .arg(&run.state_dir)
        .args(["--target", "kernel:text"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no running instance"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn restart_policy_boots_a_fresh_vm() {
    let mut run = Run::start("monitor-restart", "restart");
    let (_, first) = run.ready();
    let tampered = tamper_text(&run.state_dir);
    let at = Instant::now();
    expect_violation(&run, &tampered, "restart", at);
    let restarting = run.event("restarting", Duration::from_secs(20));
    assert_eq!(restarting["reason"], "integrity-violation");
    let (ready, second) = run.ready();
    eprintln!(
        "  serving again {} ms after tampering",
        at.elapsed().as_millis()
    );
    assert_ne!(second["memory_file"], first["memory_file"]);
    assert_ne!(second["pid"], first["pid"]);
    assert!(!Path::new(first["memory_file"].as_str().unwrap()).exists());
    assert_eq!(second["state_dir"], first["state_dir"]);
    // The restarted VM keeps the admin address (a verifier registered with it keeps working).
    assert_eq!(second["admin"], first["admin"]);

    // The fresh VM serves, and its text is the image's again: no further violation.
    let url = ready["url"].as_str().unwrap();
    let addr = url.strip_prefix("http://").unwrap().parse().unwrap();
    assert_eq!(Conn::open(addr).get("/_tuk/health").status, 200);
    assert!(
        run.stdout
            .recv_timeout(Duration::from_millis(INTERVAL_MS * 3))
            .is_err(),
        "no violation on the fresh VM"
    );

    sigterm(&run.child.0);
    let stopped = run.event("stopped", Duration::from_secs(20));
    assert_eq!(stopped["clean"], true, "{stopped}");
    let status = run.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    assert!(!Path::new(second["memory_file"].as_str().unwrap()).exists());
    assert!(!run.state_dir.join("instance.json").exists());
}

/// `tuk tamper --target component:hello:code` with the in-guest monitor OFF: the launcher's
/// monitor compares the code image in guest RAM with the component's PCR 9 `code_sha256` and
/// reports the change once, at the address and offset `tuk tamper` wrote.
#[test]
fn component_code_is_found_from_outside_with_the_guest_monitor_off() {
    let dir = std::env::temp_dir()
        .join("tuk-e2e")
        .join(format!("monitor-component-{}", std::process::id()));
    let signed = tuk_e2e::signing::signed_bundle(&dir, "hello");
    let (bundle, key_pub) = (signed.bundle, signed.key_pub);
    let extra: Vec<std::ffi::OsString> = vec![
        "--component".into(),
        format!("hello={}", bundle.display()).into(),
        "--trust".into(),
        key_pub.into_os_string(),
        "--integrity-interval".into(),
        "0".into(),
    ];
    let mut run = Run::start_with("monitor-component", "report", &extra);
    run.ready();
    assert!(
        run.stdout
            .recv_timeout(Duration::from_millis(INTERVAL_MS * 4))
            .is_err(),
        "no event before tampering"
    );
    let out = tamper_cli(TUK, &run.state_dir, "component:hello:code", "0x100");
    let tampered: Value = serde_json::from_slice(&out.stdout).unwrap();
    let at = Instant::now();
    let v = run.event(
        "integrity-violation",
        Duration::from_millis(INTERVAL_MS) + SLACK,
    );
    eprintln!(
        "  reported {} ms after tampering: {v}",
        at.elapsed().as_millis()
    );
    assert_eq!(v["source"], "out-of-guest");
    assert_eq!(v["segment"], "component:hello:code");
    assert_eq!(v["offset"], 0x100);
    assert_eq!(v["paddr"], tampered["paddr"], "{v} {tampered}");
    assert_ne!(v["expected_sha256"], v["observed_sha256"]);
    // Reported once: nothing more while it stays changed.
    assert!(
        run.stdout
            .recv_timeout(Duration::from_millis(INTERVAL_MS * 4))
            .is_err(),
        "one event per distinct change"
    );
    sigterm(&run.child.0);
    let stopped = run.event("stopped", Duration::from_secs(20));
    assert_eq!(stopped["reason"], "signal", "{stopped}");
    assert_eq!(run.wait_exit(Duration::from_secs(20)).code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
