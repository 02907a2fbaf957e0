//! The verifier service, the gateway and the signed kernel reference as a user runs them
//! (issue 6): `tuk kernel build --sign`, `tuk verifier serve` (SQLite, then PostgreSQL started
//! by the test from Debian's postgresql), `tuk gateway`, against a real instance (QEMU TCG,
//! swtpm, signed components) and a real webhook receiver.
//!
//! The life of one instance: registered (and bad registrations refused), affirming with
//! results signed by the verifier's key, traffic through the gateway; the verifier restarted
//! with its history, key and schedule intact; the same on PostgreSQL; then the kernel's
//! read-only data tampered: contraindicated within one interval of detection, the webhook
//! told, and the gateway cutting traffic with the reason. Interop: each signed result (the
//! affirming and the contraindicated one) parses and validates with Veraison's `ear` crate
//! (`interop/ear-check`, built by this test outside the workspace).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tuk_e2e::postgres::Postgres;
use tuk_e2e::process::Service;
use tuk_e2e::signing::signed_pack;
use tuk_e2e::{boot_full, free_listen, kernel_image, poll, tamper, verifier, vtpm_ca_dir};
use tuk_measure::sign::SigningKey;

const TUK: &str = env!("CARGO_BIN_EXE_tuk");
/// The verifier's attestation interval in this test.
const INTERVAL_MS: u64 = 1000;

/// Parses one signed EAR with Veraison's `ear` crate through `interop/ear-check` (built here,
/// into the workspace's target directory, on first use) and returns what the crate read:
/// `{"profile", "status", "submods": {NAME: STATUS}}`. Panics if the crate refuses it.
fn ear_crate_reads(jwt: &str) -> Value {
    let mut child = Command::new(ear_check())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tuk-ear-check");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), jwt.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the ear crate refused tuk's result: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("tuk-ear-check prints JSON")
}

/// `interop/ear-check`, built on first use. Built before the results it checks are made: they
/// expire two intervals after they are made (`exp`), and the crate checks that.
fn ear_check() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let target = root.join("target/interop");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--locked",
                "--quiet",
                "--manifest-path",
            ])
            .arg(root.join("interop/ear-check/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("run cargo to build interop/ear-check");
        assert!(status.success(), "building interop/ear-check failed");
        target.join("release/tuk-ear-check")
    })
}

/// A `tuk` service process (verifier or gateway) started with `args`: its ready line read,
/// killed on drop unless stopped.
fn service(args: &[&std::ffi::OsStr]) -> Service {
    let mut cmd = Command::new(TUK);
    cmd.args(args);
    Service::start(cmd)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// (status, body) of a request without a token; `body` JSON when given.
fn call(method: &str, url: &str, body: Option<&Value>) -> (u16, String) {
    call_as(None, method, url, body)
}

/// (status, body) of a request with `token` as its bearer token.
fn call_as(token: Option<&str>, method: &str, url: &str, body: Option<&Value>) -> (u16, String) {
    let a = agent();
    let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
    let r = match (method, body) {
        ("GET", _) => a.get(url).header("Authorization", &auth).call(),
        ("DELETE", _) => a.delete(url).header("Authorization", &auth).call(),
        ("POST", Some(b)) => a
            .post(url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(b.to_string().as_bytes()),
        ("POST", None) => a.post(url).header("Authorization", &auth).send_empty(),
        ("PUT", Some(b)) => a.put(url).send(b.to_string().as_bytes()),
        _ => unreachable!(),
    };
    let mut r = r.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

fn json_of(method: &str, url: &str, body: Option<&Value>, expect: u16) -> Value {
    json_as(None, method, url, body, expect)
}

fn json_as(
    token: Option<&str>,
    method: &str,
    url: &str,
    body: Option<&Value>,
    expect: u16,
) -> Value {
    let (status, text) = call_as(token, method, url, body);
    assert_eq!(status, expect, "{method} {url} → {status} {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {url}: {e}: {text}"))
}

/// Polls the instance at the verifier until `done` holds; panics after `within`.
fn wait_instance(
    verifier: &str,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let (doc, took) = poll::until(
        &format!("instance {id}"),
        within,
        Duration::from_millis(50),
        || {
            let doc = json_of("GET", &format!("{verifier}/v1/instances/{id}"), None, 200);
            if done(&doc) {
                Ok(doc)
            } else {
                Err(doc.to_string())
            }
        },
    );
    eprintln!("instance {id}: {} after {took:?}", doc["status"]);
    doc
}

/// A webhook receiver: every POST body it got.
fn webhook_receiver() -> (tuk_httpd::Running, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    let running = tuk_httpd::Server::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .spawn(Arc::new(move |req: &tuk_httpd::Request| {
            if let Ok(v) = serde_json::from_slice::<Value>(&req.body) {
                sink.lock().unwrap().push(v);
            }
            tuk_httpd::Response::new(204)
        }))
        .unwrap();
    (running, got)
}

fn verifier_args(
    state: &Path,
    db: Option<&str>,
    refs: &[std::ffi::OsString],
) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec![
        "verifier".into(),
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--interval".into(),
        INTERVAL_MS.to_string().into(),
        "--state-dir".into(),
        state.into(),
        // The test's own reads go without a token (the gateway uses a read token, made with
        // `tuk verifier token --scope read`); every change below is made with the admin token.
        "--read-anonymous".into(),
        // The test's webhook receiver listens on loopback.
        "--webhook-allow-private".into(),
    ];
    if let Some(db) = db {
        a.push("--db".into());
        a.push(db.into());
    }
    a.extend(refs.iter().cloned());
    a
}

/// A read token for the verifier with state `state` (`tuk verifier token --scope read`),
/// written to `file` (0600) for `tuk gateway --verifier-token`.
fn read_token_file(state: &Path, file: &Path) -> PathBuf {
    let out = Command::new(TUK)
        .args(["verifier", "token", "--scope", "read", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tuk verifier token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("tuk verifier token: {e}: {:?}", out.stdout));
    assert_eq!(line["scope"], "read", "{line}");
    let token = line["token"].as_str().expect("a token").to_owned();
    std::fs::write(file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    file.to_owned()
}

/// The first admin token a verifier wrote into its state directory.
fn admin_token(state: &Path) -> String {
    let path = state.join("admin.token");
    let token = verifier::admin_token(state);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600,
        "{} must be readable by its owner only",
        path.display()
    );
    token
}

fn os(v: &[std::ffi::OsString]) -> Vec<&std::ffi::OsStr> {
    v.iter().map(|s| s.as_os_str()).collect()
}

#[test]
fn verifier_gateway_and_kernel_reference() {
    let dir = std::env::temp_dir()
        .join("tuk-e2e")
        .join(format!("verifier-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    ear_check();

    // Keys: one signs the components, one the kernel reference.
    // The components (signed hello and kv) are built and packed here, under the first key.
    let signed = signed_pack(&dir.join("pack"), &["hello", "kv"]);
    let key = &signed.key;
    let key_pub = dir.join("components.pub");
    std::fs::write(&key_pub, key.trusted_key().to_json()).unwrap();
    let kernel_key = SigningKey::generate().unwrap();
    let kernel_key_file = dir.join("kernel.key");
    std::fs::write(&kernel_key_file, kernel_key.to_pkcs8_pem().as_bytes()).unwrap();
    let kernel_pub = dir.join("kernel.pub");
    std::fs::write(&kernel_pub, kernel_key.trusted_key().to_json()).unwrap();

    // `tuk kernel build --sign`: the image is built already, so this only signs its reference.
    let root = tuk_e2e::signing::repo_root();
    let out = Command::new(TUK)
        .args(["kernel", "build", "--source"])
        .arg(&root)
        .arg("--sign")
        .arg(&kernel_key_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tuk kernel build --sign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reference = PathBuf::from(built["reference"].as_str().expect("a reference path"));
    let image = PathBuf::from(built["path"].as_str().unwrap());
    assert_eq!(
        std::fs::read(&image).unwrap(),
        std::fs::read(kernel_image()).unwrap(),
        "the tests boot the image `tuk kernel build` builds"
    );
    let r = tuk_measure::kernel_ref::verify(
        &std::fs::read(&reference).unwrap(),
        &[kernel_key.trusted_key()],
    )
    .unwrap();
    assert_eq!(
        tuk_measure::hex(&r.sha256),
        built["sha256"].as_str().unwrap()
    );
    // A reference signed by a key the verifier does not trust is refused at start.
    let out = verifier::serve_command(TUK, &dir.join("untrusted"), INTERVAL_MS)
        .arg("--kernel-ref")
        .arg(&reference)
        .arg("--kernel-ref-key")
        .arg(&key_pub)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no signature on the kernel reference verifies"),
        "{err}"
    );

    // The instance: signed hello and kv, in-guest re-measurement every 100 ms.
    let vm = boot_full(
        "verifier-cli",
        &[("integrity.interval_ms", "100")],
        Some(&signed.pack),
        96,
    );
    let ca = vtpm_ca_dir();
    let refs: Vec<std::ffi::OsString> = vec![
        "--ca".into(),
        ca.into(),
        "--kernel-ref".into(),
        reference.clone().into(),
        "--kernel-ref-key".into(),
        kernel_pub.clone().into(),
        "--trust".into(),
        key_pub.clone().into(),
    ];

    // The verifier on SQLite, a webhook.
    let state = dir.join("verifier");
    let args = verifier_args(&state, None, &refs);
    let v = service(&os(&args));
    assert_eq!(v.ready["store"], "sqlite");
    let base = v.url();
    let token = admin_token(&state);
    let admin = Some(token.as_str());
    let (hooks, got) = webhook_receiver();
    let hook = json_as(
        admin,
        "POST",
        &format!("{base}/v1/webhooks"),
        Some(&json!({"url": format!("http://{}/hook", hooks.addr())})),
        201,
    );
    assert!(hook["id"].is_string());

    // Bad registrations: not JSON, a bad id, nothing listening.
    let (status, text) = call_as(admin, "POST", &format!("{base}/v1/instances"), None);
    assert_eq!(status, 400, "{text}");
    let (status, text) = call_as(
        admin,
        "POST",
        &format!("{base}/v1/instances"),
        Some(&json!({"url": vm.url(), "id": "Bad Id"})),
    );
    assert_eq!(status, 400, "{text}");
    let (status, text) = call_as(
        admin,
        "POST",
        &format!("{base}/v1/instances"),
        Some(&json!({"url": format!("http://{}", free_listen())})),
    );
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("cannot reach"), "{text}");
    let (status, _) = call("GET", &format!("{base}/v1/instances/nobody"), None);
    assert_eq!(status, 404);

    // Registration: credential activation, then affirming within an interval or two.
    let reg = json_as(
        admin,
        "POST",
        &format!("{base}/v1/instances"),
        Some(&json!({"url": vm.admin_url(), "service_url": vm.url(), "id": "a"})),
        201,
    );
    assert_eq!(reg["status"], "pending");
    let (status, text) = call_as(
        admin,
        "POST",
        &format!("{base}/v1/instances"),
        Some(&json!({"url": vm.admin_url(), "service_url": vm.url(), "id": "a"})),
    );
    assert_eq!(status, 409, "{text}");
    let doc = wait_instance(&base, "a", Duration::from_secs(30), |d| {
        d["status"] != "pending"
    });
    assert_eq!(doc["status"], "affirming", "{doc}");
    let latest = &doc["latest"];
    let jwk = json_of("GET", &format!("{base}/v1/key"), None, 200);
    let key_bytes = tuk_verifier::ear::key_of_jwk(&jwk).unwrap();
    let claims = tuk_verifier::ear::verify(latest["ear"].as_str().unwrap(), &key_bytes).unwrap();
    assert_eq!(claims, latest["claims"]);
    assert_eq!(claims["ear_status"], "affirming");
    assert_eq!(claims["tuk_instance"], "a");
    for sub in ["kernel", "component:hello", "component:kv"] {
        assert_eq!(
            claims["submods"][sub]["ear_status"], "affirming",
            "{sub}: {claims}"
        );
    }
    assert_eq!(
        claims["submods"]["kernel"]["ear_verifier_claims"]["kernel_sha256"],
        tuk_measure::hex(&r.sha256)
    );
    let read = ear_crate_reads(latest["ear"].as_str().unwrap());
    assert_eq!(read["profile"], tuk_attest::result::EAR_PROFILE, "{read}");
    assert_eq!(read["status"], "affirming", "{read}");
    for sub in ["kernel", "component:hello", "component:kv"] {
        assert_eq!(read["submods"][sub], "affirming", "{read}");
    }

    // The gateway forwards while affirming (the verifier's key pinned). It polls the verifier
    // with a read token (`--verifier-token`), as against a verifier without anonymous reads.
    let jwk_file = dir.join("verifier.jwk.json");
    std::fs::write(&jwk_file, jwk.to_string()).unwrap();
    let read_token_file = read_token_file(&state, &dir.join("gateway-read.token"));
    let gw_args: Vec<std::ffi::OsString> = vec![
        "gateway".into(),
        "--verifier-key".into(),
        jwk_file.clone().into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--upstream".into(),
        vm.url().into(),
        "--verifier".into(),
        base.clone().into(),
        "--instance".into(),
        "a".into(),
        "--verifier-token".into(),
        read_token_file.into(),
    ];
    // The token is really sent: with a wrong one the verifier refuses the gateway's polls
    // (an unknown token is refused even where anonymous reads are open) and it admits nothing.
    let bad_token_file = dir.join("gateway-bad.token");
    std::fs::write(&bad_token_file, "not-a-token-of-this-verifier\n").unwrap();
    let mut bad_args = gw_args.clone();
    *bad_args.last_mut().unwrap() = bad_token_file.into();
    let bad = service(&os(&bad_args));
    let start = Instant::now();
    let bad_status = loop {
        let st = json_of("GET", &format!("{}/_gateway/status", bad.url()), None, 200);
        if st["reason"].as_str().is_some_and(|r| r.contains("401")) {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_millis(2 * INTERVAL_MS),
            "a gateway with a wrong verifier token: no 401 from the verifier: {st}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(bad_status["admit"], false, "{bad_status}");
    let (status, body) = call("GET", &format!("{}/hello/", bad.url()), None);
    assert_eq!(
        status, 503,
        "a gateway with a wrong verifier token forwarded: {body}"
    );
    drop(bad);
    let gw = service(&os(&gw_args));
    let gw_url = gw.url();
    let (status, body) = call("GET", &format!("{gw_url}/hello/"), None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello"), "{body}");
    let (status, body) = call("PUT", &format!("{gw_url}/kv/kv/k1"), Some(&json!({"v": 1})));
    assert!(status < 300, "{status} {body}");
    let (status, body) = call("GET", &format!("{gw_url}/kv/kv/k1"), None);
    assert_eq!((status, body.as_str()), (200, r#"{"v":1}"#));

    // Three results at least, then restart: history, key and schedule survive.
    wait_instance(&base, "a", Duration::from_secs(30), |d| {
        d["latest"]["seq"].as_i64() >= Some(3)
    });
    let before = json_of(
        "GET",
        &format!("{base}/v1/instances/a/results?limit=100"),
        None,
        200,
    );
    let before = before["results"].as_array().unwrap().clone();
    v.stop();
    let v = service(&os(&args));
    let base2 = v.url();
    assert_eq!(v.ready["instances"], 1);
    let after = json_of(
        "GET",
        &format!("{base2}/v1/instances/a/results?limit=1000"),
        None,
        200,
    );
    let after = after["results"].as_array().unwrap();
    for r in &before {
        assert!(
            after.contains(r),
            "result {} lost across the restart",
            r["seq"]
        );
    }
    let top = before[0]["seq"].as_i64().unwrap();
    wait_instance(&base2, "a", Duration::from_secs(30), |d| {
        d["latest"]["seq"].as_i64() > Some(top)
    });
    assert_eq!(
        json_of("GET", &format!("{base2}/v1/key"), None, 200),
        jwk,
        "the signing key changed"
    );
    let (status, text) = call(
        "GET",
        &format!("{base2}/v1/instances/a/results?limit=x"),
        None,
    );
    assert_eq!(status, 400, "{text}");
    // The gateway follows the new verifier only through its own restart; start one there.
    drop(gw);
    let gw_args2: Vec<std::ffi::OsString> = gw_args
        .iter()
        .map(|a| {
            if *a == *base {
                base2.clone().into()
            } else {
                a.clone()
            }
        })
        .collect();
    let gw = service(&os(&gw_args2));
    let gw_url = gw.url();

    // The same service on PostgreSQL, across a restart.
    let pg = Postgres::start("verifier");
    let pg_state = dir.join("verifier-pg");
    let pg_args = verifier_args(&pg_state, Some(&pg.url()), &refs);
    let p = service(&os(&pg_args));
    assert_eq!(p.ready["store"], "postgresql");
    let pbase = p.url();
    let pg_token = admin_token(&pg_state);
    json_as(
        Some(&pg_token),
        "POST",
        &format!("{pbase}/v1/instances"),
        Some(&json!({"url": vm.admin_url(), "service_url": vm.url(), "id": "a-pg"})),
        201,
    );
    wait_instance(&pbase, "a-pg", Duration::from_secs(30), |d| {
        d["latest"]["seq"].as_i64() >= Some(2)
    });
    let pg_before = json_of(
        "GET",
        &format!("{pbase}/v1/instances/a-pg/results"),
        None,
        200,
    )["results"]
        .clone();
    assert_eq!(pg_before[0]["status"], "affirming", "{pg_before}");
    p.stop();
    let p = service(&os(&pg_args));
    let pbase = p.url();
    let pg_after = json_of(
        "GET",
        &format!("{pbase}/v1/instances/a-pg/results?limit=1000"),
        None,
        200,
    )["results"]
        .clone();
    for r in pg_before.as_array().unwrap() {
        assert!(
            pg_after.as_array().unwrap().contains(r),
            "PostgreSQL lost result {}",
            r["seq"]
        );
    }
    p.stop();

    // Metrics.
    let (status, metrics) = call("GET", &format!("{base2}/metrics"), None);
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tuk_verifier_instances{status=\"affirming\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE tuk_verifier_attestation_duration_seconds histogram"),
        "{metrics}"
    );

    // The attack: a byte of the kernel's read-only data. The in-guest monitor records it in
    // PCR 10 within its 100 ms interval; the next attestation sees it.
    let (status, _) = call("GET", &format!("{gw_url}/hello/"), None);
    assert_eq!(status, 200);
    let offset = tuk_e2e::kernel_rodata_offset_of(b"no component serves this path");
    let tampered_at = Instant::now();
    tamper(&vm, "kernel:rodata", offset);
    let doc = wait_instance(
        &base2,
        "a",
        Duration::from_millis(2 * INTERVAL_MS + 3000),
        |d| d["status"] == "contraindicated",
    );
    eprintln!(
        "contraindicated {:?} after the tamper",
        tampered_at.elapsed()
    );
    let reasons =
        doc["latest"]["claims"]["submods"]["kernel"]["ear_verifier_claims"]["reasons"].to_string();
    assert!(reasons.contains("changed since boot"), "{reasons}");
    let read = ear_crate_reads(doc["latest"]["ear"].as_str().unwrap());
    assert_eq!(read["status"], "contraindicated", "{read}");
    assert_eq!(read["submods"]["kernel"], "contraindicated", "{read}");
    // The gateway cuts traffic within its poll (a quarter interval) and says why. Under load the
    // last affirming result may expire (its signed exp) before the gateway's next poll brings
    // the contraindicated one: traffic is cut either way, and the reason must turn to
    // "contraindicated" within an interval of the cut.
    let start = Instant::now();
    let mut cut_at = None;
    loop {
        let (status, body) = call("GET", &format!("{gw_url}/hello/"), None);
        if status == 503 {
            let cut = *cut_at.get_or_insert_with(Instant::now);
            if body.contains("contraindicated") {
                break;
            }
            assert!(body.contains("expired"), "503 for another reason: {body}");
            assert!(
                cut.elapsed() < Duration::from_millis(INTERVAL_MS),
                "the gateway never learnt the contraindicated result: {body}"
            );
        } else {
            assert!(
                cut_at.is_none(),
                "the gateway forwarded again after a cut: {body}"
            );
            assert_eq!(status, 200);
            assert!(
                start.elapsed() < Duration::from_millis(INTERVAL_MS),
                "the gateway still forwards: {body}"
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    let status = json_of("GET", &format!("{gw_url}/_gateway/status"), None, 200);
    assert_eq!(status["admit"], false, "{status}");
    // The webhook heard affirming → contraindicated (and pending → affirming before).
    let start = Instant::now();
    loop {
        let events = got.lock().unwrap().clone();
        let seen = |from: &str, to: &str| {
            events
                .iter()
                .any(|e| e["instance"] == "a" && e["previous"] == from && e["status"] == to)
        };
        if seen("pending", "affirming") && seen("affirming", "contraindicated") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "webhook events: {events:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    gw.stop();
    v.stop();
    hooks.stop();
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}
