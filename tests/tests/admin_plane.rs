//! The admin plane and runtime publishing (issue 12, points 5 and 6), end to end on real VMs
//! under QEMU TCG, from the attacker's side:
//! - the service listener (what a gateway exposes) refuses every kernel endpoint that changes
//!   or reveals state (publish, credential activation, quotes, status, event log) with a 403
//!   naming the admin listener, and nothing is deployed; the same requests work on the admin
//!   listener; which listener a connection came in on decides, not the Host header;
//! - a flood of quote requests is rate-limited (429 + Retry-After) while the service listener
//!   keeps serving components within a bound; a flood of connections on the service listener
//!   cannot take the admin listener's sockets;
//! - a runtime publish of a new version keeps the component's kv data and configuration
//!   (unless `?reset=`), and the PCR 9 record carries the configuration applied;
//! - a publish that is measured but cannot be instantiated answers 422, leaves a
//!   `tuk.component-failed` record after its `tuk.component` record, and the old version
//!   keeps serving.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tuk_e2e::signing::{build, get, pack_with_meta, put, sign, sign_with_limits, signed_pack};
use tuk_e2e::{admin_addr, boot_full, Conn, Instance, Response, IO_TIMEOUT};
use tuk_measure::policy::TrustPolicy;
use tuk_measure::sign::SigningKey;

fn dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir()
        .join("tuk-e2e")
        .join(format!("{name}-{}", std::process::id()))
}

/// One request on a fresh connection to `addr`.
fn request(addr: SocketAddr, method: &str, path: &str, host: &str, body: &[u8]) -> Response {
    let mut c = Conn::open(addr);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let _ = c.send(&req);
    c.read_response(IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

fn component_names(vm: &Instance) -> Vec<String> {
    let doc = Conn::open(vm.addr()).get("/_tuk/components").json();
    doc["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_names_admin(r: &Response, what: &str) {
    assert_eq!(r.status, 403, "{what}: {}", r.body_text());
    let error = r.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("admin listener"),
        "{what}: the refusal names the admin listener: {error}"
    );
}

#[test]
fn service_listener_refuses_admin_endpoints_and_admin_listener_serves_them() {
    let d = dir("admin-plane");
    let sp = signed_pack(&d, &["hello"]);
    let vm = boot_full("admin-plane", &[], Some(&sp.pack), 128);
    let service = vm.addr();
    let admin = admin_addr(&vm);
    assert_ne!(service, admin);
    let other = build(&["kv"]);
    let bundle = sign(&sp.key, "intruder", "1.0.0", &other["kv"]);

    // The attacker reaches only the service listener: every write and every TPM operation
    // is refused there, whatever the Host header says.
    for host in ["tuk", &admin.to_string(), "localhost:8081"] {
        let r = put_at_host(service, "intruder", &bundle, host);
        assert_names_admin(&r, &format!("PUT /_tuk/components/intruder (Host: {host})"));
    }
    let r = request(
        service,
        "POST",
        "/_tuk/attestation/activate",
        "tuk",
        br#"{"credential_blob":"AA==","encrypted_secret":"AA=="}"#,
    );
    assert_names_admin(&r, "POST /_tuk/attestation/activate");
    for path in [
        "/_tuk/attestation?nonce=00112233445566778899aabbccddeeff",
        "/_tuk/status",
        "/_tuk/eventlog",
        "/_tuk/nosuch",
        "/_tuk/%73tatus",
    ] {
        assert_names_admin(&request(service, "GET", path, "tuk", b""), path);
    }
    // Nothing was deployed, and the event log (read on the admin listener) measured nothing.
    assert_eq!(component_names(&vm), ["hello"]);
    assert_eq!(
        request(service, "GET", "/intruder/", "tuk", b"").status,
        404
    );
    let log = get(&vm, "/_tuk/eventlog").json();
    assert!(
        !log.to_string().contains("intruder"),
        "nothing about the refused publish was measured"
    );

    // What the service listener does serve.
    for path in [
        "/_tuk/health",
        "/_tuk/components",
        "/_tuk/attestation/identity",
        "/hello/",
    ] {
        let r = request(service, "GET", path, "tuk", b"");
        assert_eq!(r.status, 200, "GET {path} on the service listener");
    }
    // The admin listener serves every kernel endpoint but no components.
    for path in [
        "/_tuk/health",
        "/_tuk/status",
        "/_tuk/eventlog",
        "/_tuk/attestation/identity",
        "/_tuk/attestation?nonce=00112233445566778899aabbccddeeff",
    ] {
        let r = request(admin, "GET", path, "tuk", b"");
        assert_eq!(
            r.status,
            200,
            "GET {path} on the admin listener: {}",
            r.body_text()
        );
    }
    assert_eq!(request(admin, "GET", "/hello/", "tuk", b"").status, 404);
    // Activation reaches the TPM there (a bogus credential: the TPM's refusal, not ours).
    let r = request(
        admin,
        "POST",
        "/_tuk/attestation/activate",
        "tuk",
        br#"{"credential_blob":"AA==","encrypted_secret":"AA=="}"#,
    );
    assert!(
        r.status != 403 || r.body_text().contains("TPM"),
        "activate on the admin listener: {} {}",
        r.status,
        r.body_text()
    );
    assert!(!r.body_text().contains("admin listener"));
    // And publishing works there.
    let good = sign(&sp.key, "kv", "1.0.0", &other["kv"]);
    let r = put(&vm, "kv", &good);
    assert_eq!(
        r.status,
        201,
        "publish on the admin listener: {}",
        r.body_text()
    );
    assert_eq!(component_names(&vm), ["hello", "kv"]);
}

fn put_at_host(addr: SocketAddr, name: &str, body: &[u8], host: &str) -> Response {
    request(addr, "PUT", &format!("/_tuk/components/{name}"), host, body)
}

#[test]
fn quote_flood_is_rate_limited_and_components_keep_serving() {
    let d = dir("admin-flood");
    let sp = signed_pack(&d, &["hello"]);
    let (per_s, burst) = (2u64, 4u64);
    let vm = boot_full(
        "admin-flood",
        &[
            ("ratelimit.tpm_per_s", "2"),
            ("ratelimit.tpm_burst", "4"),
            ("http.max_connections", "8"),
            ("http.listeners", "2"),
        ],
        Some(&sp.pack),
        128,
    );
    let admin = admin_addr(&vm);
    let service = vm.addr();

    // The attacker: four threads asking for quotes back to back on the admin listener.
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::<(u16, Option<String>)>::new()));
    let started = Instant::now();
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, results) = (Arc::clone(&stop), Arc::clone(&results));
            thread::spawn(move || {
                let mut c = Conn::open(admin);
                while !stop.load(Ordering::Relaxed) {
                    let r = c
                        .try_get("/_tuk/attestation?nonce=00112233445566778899aabbccddeeff")
                        .expect("a quote request is answered");
                    let retry = r.header("retry-after").map(str::to_owned);
                    results.lock().unwrap().push((r.status, retry));
                }
            })
        })
        .collect();
    // Meanwhile a user of the service listener: every request answered within the bound.
    let bound = Duration::from_secs(5);
    let mut worst = Duration::ZERO;
    for _ in 0..15 {
        let t = Instant::now();
        let r = request(service, "GET", "/hello/", "tuk", b"");
        let took = t.elapsed();
        assert_eq!(r.status, 200);
        worst = worst.max(took);
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let results = results.lock().unwrap();
    let ok = results.iter().filter(|(s, _)| *s == 200).count() as u64;
    let limited: Vec<_> = results.iter().filter(|(s, _)| *s == 429).collect();
    eprintln!(
        "{} quote requests in {elapsed:.1} s: {ok} quoted, {} rate-limited; worst component latency {worst:?}",
        results.len(),
        limited.len()
    );
    assert!(ok >= 1, "honest quotes still get through");
    assert!(!limited.is_empty(), "the flood was rate-limited");
    assert!(
        limited.iter().all(|(_, retry)| retry
            .as_deref()
            .and_then(|r| r.parse::<u64>().ok())
            .is_some_and(|s| s >= 1)),
        "every 429 says when to retry"
    );
    assert!(
        ok <= burst + (elapsed.ceil() as u64 + 1) * per_s,
        "at most burst + rate x time quotes: {ok} in {elapsed:.1} s"
    );
    assert!(
        worst < bound,
        "components kept answering within {bound:?} during the flood (worst {worst:?})"
    );
    assert!(
        results.iter().all(|(s, _)| *s == 200 || *s == 429),
        "only quotes and 429s"
    );

    // A connection flood on the service listener cannot take the admin listener's sockets.
    let mut held = Vec::new();
    for _ in 0..24 {
        if let Ok(mut c) = Conn::try_open(service, Duration::from_secs(2)) {
            let _ = c.stream().set_nodelay(true);
            // Half a request head: the connection stays open until the request timeout.
            let _ = c.send(b"GET /hello/ HTTP/1.1\r\n");
            held.push(c);
        }
    }
    let t = Instant::now();
    let status = request(admin, "GET", "/_tuk/status", "tuk", b"");
    assert_eq!(
        status.status, 200,
        "the admin listener answers during the flood"
    );
    eprintln!(
        "admin answered in {:?} with the service pool flooded",
        t.elapsed()
    );
    let health = get(&vm, "/_tuk/health").json();
    assert!(
        health["http"]["rate_limited"].as_u64().unwrap() >= limited.len() as u64,
        "{health}"
    );
    assert!(
        health["http"]["connections_refused_full"].as_u64().unwrap() > 0,
        "the service pool was really full: {health}"
    );
    drop(held);
}

/// PCR 9 records of `name`, in order: (content_type, content).
fn pcr9_records(vm: &Instance, name: &str) -> Vec<(String, Value)> {
    let log = get(vm, "/_tuk/eventlog").json();
    log.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["pcr"] == 9 && r["content"]["name"] == name)
        .map(|r| {
            (
                r["content_type"].as_str().unwrap().to_owned(),
                r["content"].clone(),
            )
        })
        .collect()
}

fn kv_put(vm: &Instance, key: &str, value: &str) {
    let r = request(
        vm.addr(),
        "PUT",
        &format!("/kv/kv/{key}"),
        "tuk",
        value.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.body_text());
}

fn boot_with_config(
    name: &str,
) -> (
    Instance,
    SigningKey,
    std::collections::BTreeMap<String, tuk_e2e::signing::Built>,
) {
    let d = dir(name);
    let built = build(&["hello", "kv"]);
    let key = SigningKey::generate().unwrap();
    let policy = TrustPolicy {
        keys: vec![key.trusted_key()],
        allowed_names: None,
        min_versions: Default::default(),
    };
    let greeting = vec![("config.greeting".to_owned(), "bonjour".to_owned())];
    let pack = pack_with_meta(
        &d,
        &[
            (
                "hello",
                sign(&key, "hello", "1.0.0", &built["hello"]),
                greeting,
            ),
            ("kv", sign(&key, "kv", "1.0.0", &built["kv"]), Vec::new()),
        ],
        &policy,
    );
    let vm = boot_full(name, &[], Some(&pack), 128);
    (vm, key, built)
}

#[test]
fn runtime_publish_keeps_kv_and_config_unless_reset() {
    let (vm, key, built) = boot_with_config("admin-publish-state");
    assert_eq!(get(&vm, "/hello/").body_text(), "bonjour\n");
    kv_put(&vm, "kept", "before-publish");

    // New versions: kv data and configuration carry over.
    let r = put(&vm, "kv", &sign(&key, "kv", "1.0.1", &built["kv"]));
    assert_eq!(r.status, 201, "{}", r.body_text());
    let after = get(&vm, "/kv/kv/kept");
    assert_eq!(
        after.status,
        200,
        "kv data survives a publish: {}",
        after.body_text()
    );
    assert_eq!(after.body_text(), "before-publish");
    let r = put(&vm, "hello", &sign(&key, "hello", "1.0.1", &built["hello"]));
    assert_eq!(r.status, 201, "{}", r.body_text());
    assert_eq!(
        get(&vm, "/hello/").body_text(),
        "bonjour\n",
        "configuration survives"
    );
    // The measured record says so: the configuration applied is in PCR 9.
    let hello = pcr9_records(&vm, "hello");
    let last = &hello.last().unwrap().1;
    assert_eq!(last["version"], "1.0.1");
    assert_eq!(last["config"]["greeting"], "bonjour", "{last}");

    // Asked for: a reset.
    let r = request(
        admin_addr(&vm),
        "PUT",
        "/_tuk/components/kv?reset=kv",
        "tuk",
        &sign(&key, "kv", "1.0.2", &built["kv"]),
    );
    assert_eq!(r.status, 201, "{}", r.body_text());
    assert_eq!(
        get(&vm, "/kv/kv/kept").status,
        404,
        "reset=kv empties the kv data"
    );
    let r = request(
        admin_addr(&vm),
        "PUT",
        "/_tuk/components/hello?reset=config",
        "tuk",
        &sign(&key, "hello", "1.0.2", &built["hello"]),
    );
    assert_eq!(r.status, 201, "{}", r.body_text());
    assert_eq!(get(&vm, "/hello/").body_text(), "hello from tuk\n");
    let last = pcr9_records(&vm, "hello").last().unwrap().1.clone();
    assert_eq!(last["config"], serde_json::json!({}), "{last}");
    // An unknown reset is refused, nothing deployed.
    let r = request(
        admin_addr(&vm),
        "PUT",
        "/_tuk/components/hello?reset=everything",
        "tuk",
        &sign(&key, "hello", "1.0.3", &built["hello"]),
    );
    assert_eq!(r.status, 400, "{}", r.body_text());
    assert_eq!(pcr9_records(&vm, "hello").len(), 3);
}

#[test]
fn failed_deployment_is_recorded_and_the_old_version_keeps_serving() {
    let (vm, key, built) = boot_with_config("admin-publish-failed");
    kv_put(&vm, "kept", "v1");
    // Signed, verified, measured, but its signed memory limit (64 KiB) is below what the
    // component's memory needs: instantiation fails.
    let small = sign_with_limits(&key, "kv", "1.1.0", &built["kv"], 64 << 10);
    let r = put(&vm, "kv", &small);
    assert_eq!(r.status, 422, "{}", r.body_text());
    assert!(
        r.body_text().contains("tuk.component-failed"),
        "{}",
        r.body_text()
    );

    let records = pcr9_records(&vm, "kv");
    let types: Vec<&str> = records.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        ["tuk.component", "tuk.component", "tuk.component-failed"],
        "boot record, the failed version's record, then its failure"
    );
    let (measured, failed) = (&records[1].1, &records[2].1);
    assert_eq!(measured["version"], "1.1.0");
    assert_eq!(failed["code_sha256"], measured["code_sha256"]);
    assert!(failed["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(
        failed.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["code_sha256", "error", "name"]
    );
    // The record's digest is the SHA-256 of its canonical content, like tuk.component's, and
    // the log still replays.
    let log = get(&vm, "/_tuk/eventlog");
    let parsed = tuk_measure::eventlog::parse_log(&log.body).unwrap();
    tuk_measure::eventlog::replay(&parsed).expect("the event log replays");
    let rec = parsed
        .iter()
        .find(|r| r.content_type == "tuk.component-failed")
        .unwrap();
    let canonical = serde_json::to_vec(&rec.content).unwrap();
    assert_eq!(
        rec.digests[0].digest,
        tuk_measure::hex(&tuk_measure::sha256(&canonical))
    );

    // The old version keeps serving, with its data.
    assert_eq!(get(&vm, "/kv/kv/kept").body_text(), "v1");
    let comps = Conn::open(vm.addr()).get("/_tuk/components").json();
    let kv = comps["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kv")
        .unwrap()
        .clone();
    assert_eq!(kv["state"], "serving", "{kv}");
    // The same version, properly limited, can still be published (the failure took no slot).
    let r = put(&vm, "kv", &sign(&key, "kv", "1.1.0", &built["kv"]));
    assert_eq!(r.status, 201, "{}", r.body_text());
    assert_eq!(get(&vm, "/kv/kv/kept").body_text(), "v1");
}
