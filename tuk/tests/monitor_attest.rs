//! The out-of-guest monitor's verdict reaches attestation (docs/measurement.md, "The monitor's
//! verdict and attestation"), from the attacker's side, with real parts: `tuk run` (QEMU TCG,
//! swtpm, a signed component) with the IN-GUEST monitor off, `tuk tamper` writing guest RAM,
//! `tuk attest --monitor-report URL --monitor-key monitor.pub`.
//!
//! - honest: the signed report verifies, names the quoted AK and boot: affirming;
//! - a report signed by another key (the attacker's own "clean" report with the right AK and
//!   boot) is refused: not affirming;
//! - an old clean report replayed after the instance was tampered with: stale, not affirming;
//! - the component's code image overwritten: the launcher's monitor finds it (the guest's own
//!   monitor is off) and the attestation is contraindicated for that component.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tuk_e2e::process::{json_lines_of, sigterm, Reap, Service};
use tuk_e2e::{free_listen, kernel_image, signing, tamper_cli, verifier, vtpm_ca_dir};
use tuk_measure::dsse::Envelope;
use tuk_measure::sign::SigningKey;

const TUK: &str = env!("CARGO_BIN_EXE_tuk");
const INTERVAL_MS: u64 = 300;

/// The attacker's HTTP server: answers every request with `body`.
fn serve(body: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let body = body.lock().unwrap().clone();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    addr
}

fn get(url: &str) -> Vec<u8> {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let at = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    reply[at + 4..].to_vec()
}

fn attest(admin: &str, refs: &[&std::ffi::OsStr], report: &str, key: &Path) -> (Output, Value) {
    let out = Command::new(TUK)
        .args(["attest", admin, "--json", "--ca"])
        .arg(vtpm_ca_dir())
        .args(refs)
        .args(["--monitor-report", report, "--monitor-key"])
        .arg(key)
        .output()
        .expect("run tuk attest");
    eprintln!(
        "tuk attest {admin} --monitor-report {report} → {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ear: Value = serde_json::from_slice(&out.stdout).expect("the EAR claims set");
    (out, ear)
}

fn reasons(ear: &Value, submod: &str) -> String {
    ear["submods"][submod]["ear_verifier_claims"]["reasons"].to_string()
}

/// One `tuk run` with a signed `hello`, the monitor every [`INTERVAL_MS`] and its report served.
struct Run {
    run: Reap,
    events: mpsc::Receiver<Value>,
    admin: String,
    report_url: String,
    state_dir: PathBuf,
    monitor_pub: PathBuf,
    key_pub: PathBuf,
    dir: PathBuf,
}

impl Run {
    fn start(name: &str, integrity_interval_ms: u64) -> Run {
        let dir = std::env::temp_dir()
            .join("tuk-e2e")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let signing::SignedBundle {
            key_pub, bundle, ..
        } = signing::signed_bundle(&dir, "hello");
        let monitor_keys = dir.join("monitor-key");
        let listen = free_listen();
        let state_dir = dir.join("state");
        let mut child = Command::new(TUK)
            .args(["run", "--accel", "tcg", "--listen", &listen.to_string()])
            .arg("--kernel")
            .arg(kernel_image())
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--component")
            .arg(format!("hello={}", bundle.display()))
            .arg("--trust")
            .arg(&key_pub)
            .args(["--monitor-interval", &INTERVAL_MS.to_string()])
            .args(["--monitor-report-listen", "127.0.0.1:0"])
            .args(["--integrity-interval", &integrity_interval_ms.to_string()])
            .env("TUK_VTPM_CA_DIR", vtpm_ca_dir())
            .env("TUK_MONITOR_KEY_DIR", &monitor_keys)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tuk run");
        let events = json_lines_of(&mut child);
        let run = Reap(child);
        let ready = events
            .recv_timeout(Duration::from_secs(120))
            .expect("a ready event");
        assert_eq!(ready["event"], "ready", "{ready}");
        let report_url = ready["monitor_report"]
            .as_str()
            .expect("the ready event names the monitor report")
            .to_owned();
        assert!(report_url.ends_with("/report"), "{report_url}");
        let monitor_pub = monitor_keys.join("monitor.pub");
        assert!(monitor_pub.is_file(), "monitor.pub is created on first use");
        thread::sleep(Duration::from_millis(3 * INTERVAL_MS));
        Run {
            run,
            events,
            admin: ready["admin"].as_str().unwrap().to_owned(),
            report_url,
            state_dir,
            monitor_pub,
            key_pub,
            dir,
        }
    }

    fn attest(&self, report: &str) -> (Output, Value) {
        let refs: Vec<std::ffi::OsString> = vec![
            "--kernel".into(),
            kernel_image().into_os_string(),
            "--trust".into(),
            self.key_pub.clone().into_os_string(),
        ];
        let refs: Vec<&std::ffi::OsStr> = refs.iter().map(|s| s.as_os_str()).collect();
        attest(&self.admin, &refs, report, &self.monitor_pub)
    }

    fn stop(mut self) {
        sigterm(&self.run.0);
        let until = Instant::now() + Duration::from_secs(30);
        while self.run.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < until, "tuk run did not stop");
            thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Honest: affirming with the verified report. Then the attacker's own "clean" report (right
/// AK and boot, its own key) and an old report of the real monitor replayed: neither affirms.
#[test]
fn honest_report_affirms_forged_and_replayed_ones_do_not() {
    let run = Run::start("monitor-attest-honest", 1000);

    let (out, ear) = run.attest(&run.report_url);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(ear["ear_status"], "affirming");
    let facts = &ear["submods"]["kernel"]["ear_verifier_claims"]["monitor_report"];
    assert_eq!(facts["status"], "verified", "{facts}");
    assert_eq!(facts["verdict"], "clean", "{facts}");
    assert_eq!(facts["components"], serde_json::json!(["hello"]), "{facts}");
    assert_eq!(facts["incomplete"], Value::Null, "{facts}");
    // The report is on disk too.
    let on_disk = std::fs::read(run.state_dir.join("monitor-report.json")).unwrap();
    assert!(Envelope::from_json(&on_disk).is_ok());

    // A report kept now, for the replay below.
    let kept = get(&run.report_url);
    let kept_at = Instant::now();
    let payload = Envelope::from_json(&kept).unwrap().payload;

    // Attack 1: a fresh "clean" report with the right AK and boot, signed by another key.
    let attacker = SigningKey::generate().unwrap();
    let mut forged: Value = serde_json::from_slice(&payload).unwrap();
    forged["checked_ms"] = Value::from(now_ms());
    forged["seq"] = Value::from(forged["seq"].as_u64().unwrap() + 1_000_000);
    let forged = attacker
        .sign_envelope(
            tuk_attest::monitor_report::PAYLOAD_TYPE,
            serde_json::to_vec(&forged).unwrap(),
        )
        .to_json();
    let fake_body = Arc::new(Mutex::new(forged));
    let fake = format!("http://{}/report", serve(Arc::clone(&fake_body)));
    let (out, ear) = run.attest(&fake);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(ear["ear_status"], "warning");
    assert!(
        reasons(&ear, "kernel").contains("not signed by a trusted monitor key"),
        "{ear}"
    );

    // Attack 2: the real monitor's report, replayed once it is old: stale, not affirming.
    let window = 2 * INTERVAL_MS + tuk_attest::monitor_report::FRESHNESS_SLACK_MS;
    thread::sleep(Duration::from_millis(window + 500).saturating_sub(kept_at.elapsed()));
    *fake_body.lock().unwrap() = kept;
    let (out, ear) = run.attest(&fake);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(ear["ear_status"], "warning");
    assert!(reasons(&ear, "kernel").contains("stale"), "{ear}");

    // And the real report is still affirming.
    let (out, _) = run.attest(&run.report_url);
    assert_eq!(out.status.code(), Some(0));
    run.stop();
}

/// The component's code image overwritten in guest RAM while the guest's own monitor is OFF:
/// the launcher's monitor finds it, and its signed report makes the attestation
/// contraindicated for that component.
#[test]
fn tampered_component_code_is_contraindicated_although_the_guest_monitor_is_off() {
    let run = Run::start("monitor-attest-tamper", 0);
    let (_, before) = run.attest(&run.report_url);
    assert_ne!(
        before["submods"]["component:hello"]["ear_status"], "contraindicated",
        "{before}"
    );
    assert_eq!(
        before["submods"]["kernel"]["ear_verifier_claims"]["monitor_report"]["verdict"], "clean",
        "{before}"
    );

    tamper_cli(TUK, &run.state_dir, "component:hello:code", "0x40");
    let at = Instant::now();
    let violation = loop {
        let e = run
            .events
            .recv_timeout(Duration::from_secs(10))
            .expect("an integrity-violation event from the out-of-guest monitor");
        if e["event"] == "integrity-violation" {
            break e;
        }
        eprintln!("  (event {e})");
    };
    eprintln!(
        "  found {} ms after tampering: {violation}",
        at.elapsed().as_millis()
    );
    assert_eq!(violation["source"], "out-of-guest");
    assert_eq!(violation["segment"], "component:hello:code");
    assert_eq!(violation["offset"], 0x40, "{violation}");
    assert_ne!(violation["expected_sha256"], violation["observed_sha256"]);
    thread::sleep(Duration::from_millis(2 * INTERVAL_MS));

    let (out, ear) = run.attest(&run.report_url);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(ear["ear_status"], "contraindicated");
    let hello = &ear["submods"]["component:hello"];
    assert_eq!(hello["ear_status"], "contraindicated", "{ear}");
    assert_eq!(
        hello["ear_trustworthiness_vector"]["executables"], 96,
        "{ear}"
    );
    assert!(
        reasons(&ear, "component:hello").contains(
            "out-of-guest monitor: component hello's code image changed in guest RAM at paddr"
        ),
        "{ear}"
    );
    // The guest itself saw nothing (its monitor is off).
    assert_eq!(hello["ear_attester_claims"]["violations"], 0, "{ear}");
    let facts = &ear["submods"]["kernel"]["ear_verifier_claims"]["monitor_report"];
    assert_eq!(facts["verdict"], "flagged", "{facts}");
    run.stop();
}

/// (status, JSON body) of a request to the verifier.
fn call(token: &str, method: &str, url: &str, body: Option<&Value>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let auth = format!("Bearer {token}");
    let r = match body {
        Some(b) => agent
            .post(url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(b.to_string().as_bytes()),
        None if method == "POST" => agent.post(url).header("Authorization", &auth).send_empty(),
        None => agent.get(url).header("Authorization", &auth).call(),
    };
    let mut r = r.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    eprintln!("{method} {url} → {status} {text}");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The real verifier service with `--monitor-key --require-monitor`: an instance registered
/// without its monitor's report is only a warning; with it, the report counts, and once the
/// component's code is overwritten (the guest's own monitor off) the signed result is
/// contraindicated for that component.
#[test]
fn verifier_requires_and_checks_the_monitor_report() {
    let run = Run::start("monitor-attest-verifier", 0);
    let state = run.dir.join("verifier");
    let mut cmd = verifier::serve_command(TUK, &state, 60000);
    cmd.arg("--kernel")
        .arg(kernel_image())
        .arg("--trust")
        .arg(&run.key_pub)
        .arg("--monitor-key")
        .arg(&run.monitor_pub)
        .arg("--require-monitor");
    let verifier = Service::start(cmd);
    let base = verifier.ready["url"].as_str().unwrap().to_owned();
    let token = verifier::admin_token(&state);
    let attest_now = |id: &str| {
        let (status, r) = call(
            &token,
            "POST",
            &format!("{base}/v1/instances/{id}/attest"),
            None,
        );
        assert_eq!(status, 200, "{r}");
        r
    };

    // Registered without monitor_url: the verifier requires one, so not affirming.
    let (status, _) = call(
        &token,
        "POST",
        &format!("{base}/v1/instances"),
        Some(&serde_json::json!({"id": "m", "url": run.admin})),
    );
    assert_eq!(status, 201);
    let r = attest_now("m");
    let kernel_reasons =
        r["claims"]["submods"]["kernel"]["ear_verifier_claims"]["reasons"].to_string();
    assert!(kernel_reasons.contains("without a monitor_url"), "{r}");
    assert_ne!(r["status"], "affirming", "{r}");

    // Registered again with the monitor's report URL.
    let (status, _) = call(
        &token,
        "POST",
        &format!("{base}/v1/instances"),
        Some(&serde_json::json!({"id": "m", "url": run.admin,
            "monitor_url": run.report_url, "replace": true})),
    );
    assert_eq!(status, 200, "replaced");
    let r = attest_now("m");
    let facts = &r["claims"]["submods"]["kernel"]["ear_verifier_claims"]["monitor_report"];
    assert_eq!(facts["status"], "verified", "{r}");
    assert_eq!(facts["verdict"], "clean", "{r}");
    assert_ne!(
        r["claims"]["submods"]["component:hello"]["ear_status"],
        "contraindicated"
    );

    tamper_cli(TUK, &run.state_dir, "component:hello:code", "0x80");
    loop {
        let e = run
            .events
            .recv_timeout(Duration::from_secs(10))
            .expect("an integrity-violation event");
        if e["event"] == "integrity-violation" {
            break;
        }
    }
    thread::sleep(Duration::from_millis(2 * INTERVAL_MS));
    let r = attest_now("m");
    assert_eq!(r["status"], "contraindicated", "{r}");
    let hello = &r["claims"]["submods"]["component:hello"];
    assert_eq!(hello["ear_status"], "contraindicated", "{r}");
    assert!(
        hello["ear_verifier_claims"]["reasons"]
            .to_string()
            .contains("out-of-guest monitor: component hello's code image changed"),
        "{r}"
    );
    drop(verifier);
    run.stop();
}
