//! `tuk gateway` from the attacker's side (issue 12): a real `tuk gateway` process between a
//! client and an upstream, polling a verifier. The test plays the verifier and the
//! man-in-the-middle on the verifier link: it signs results with a real Ed25519 key (the
//! verifier's `EarSigner`) and serves whatever answer an attacker on that link would, and it
//! runs the upstream (a real HTTP server that reports an AK at `/_tuk/attestation/identity`
//! and records every request it sees).
//!
//! The attacks: a request-target naming another host (absolute- and authority-like forms) must
//! get 400 and no connection anywhere; `/_tuk/*` however spelt gets 403; a result replayed past
//! its signed `exp`, a result for another instance, URL or AK, an older result after a newer
//! one, a key with the wrong fingerprint are refused; a gateway without a pinned key does not
//! start; TLS on both sides works and `--require-verifier-tls` refuses an http:// verifier.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tuk_e2e::process::Service;
use tuk_e2e::{poll, tls};
use tuk_httpd::{Request, Response};
use tuk_measure::sign::SigningKey;
use tuk_verifier::ear::EarSigner;

const TUK: &str = env!("CARGO_BIN_EXE_tuk");

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An AK's TPMT_PUBLIC: a restricted ECDSA-P256-SHA256 signing key whose point is the curve's
/// generator. `variant` changes an attribute bit (userWithAuth), which changes the AK's name.
fn ak_public(variant: bool) -> Vec<u8> {
    let gx = "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296";
    let gy = "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
    let unhex = |h: &str| -> Vec<u8> {
        (0..h.len() / 2)
            .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    };
    // fixedTPM | fixedParent | sensitiveDataOrigin | restricted | sign (+ userWithAuth).
    let attrs: u32 = 0x2 | 0x10 | 0x20 | 0x1_0000 | 0x4_0000 | if variant { 0x40 } else { 0 };
    let mut p = Vec::new();
    p.extend_from_slice(&0x0023u16.to_be_bytes()); // TPM_ALG_ECC
    p.extend_from_slice(&0x000bu16.to_be_bytes()); // nameAlg SHA-256
    p.extend_from_slice(&attrs.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes()); // authPolicy
    p.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric: NULL
    p.extend_from_slice(&0x0018u16.to_be_bytes()); // scheme: ECDSA
    p.extend_from_slice(&0x000bu16.to_be_bytes()); //   with SHA-256
    p.extend_from_slice(&0x0003u16.to_be_bytes()); // curve: NIST P-256
    p.extend_from_slice(&0x0010u16.to_be_bytes()); // kdf: NULL
    for c in [gx, gy] {
        p.extend_from_slice(&32u16.to_be_bytes());
        p.extend_from_slice(&unhex(c));
    }
    p
}

fn ak_name(public: &[u8]) -> String {
    tuk_measure::hex(&tuk_attest::AkPublic::parse(public).unwrap().name())
}

/// The upstream: reports an AK, answers everything else with what it saw, and records it.
struct Upstream {
    running: tuk_httpd::Running,
    seen: Arc<Mutex<Vec<String>>>,
    ak: String,
}

fn upstream() -> Upstream {
    let public = ak_public(false);
    let ak = ak_name(&public);
    let identity = tuk_attest::evidence::Identity {
        ek_handle: 0x8101_0001,
        ek_template: "rsa2048".into(),
        ek_public: vec![1, 2, 3],
        ek_certificate: vec![4, 5, 6],
        ak_name: tuk_attest::AkPublic::parse(&public).unwrap().name(),
        ak_public: public,
    }
    .to_json()
    .to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let running = tuk_httpd::Server::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .spawn(Arc::new(move |req: &Request| {
            if req.path == "/_tuk/attestation/identity" {
                return Response::json(200, identity.clone());
            }
            let line = format!("{} {}", req.method, req.target);
            log.lock().unwrap().push(line.clone());
            Response::text(200, format!("upstream saw {line}"))
        }))
        .unwrap();
    Upstream { running, seen, ak }
}

impl Upstream {
    fn url(&self) -> String {
        format!("http://{}", self.running.addr())
    }
}

/// The verifier link as the attacker sees it: `GET /v1/instances/a` answers whatever `doc`
/// holds; `GET /v1/key` the signer's JWK.
struct Verifier {
    running: tuk_httpd::Running,
    signer: Arc<EarSigner>,
    doc: Arc<Mutex<Value>>,
}

fn verifier(tls: Option<tuk_httpd::Tls>) -> Verifier {
    let signer = Arc::new(EarSigner::new(SigningKey::generate().unwrap()));
    let doc = Arc::new(Mutex::new(
        json!({"id": "a", "interval_ms": 100, "latest": null}),
    ));
    let (d, s) = (Arc::clone(&doc), Arc::clone(&signer));
    let mut server = tuk_httpd::Server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    if let Some(tls) = tls {
        server = server.tls(tls);
    }
    let running = server
        .spawn(Arc::new(move |req: &Request| match req.path.as_str() {
            "/v1/instances/a" => Response::json(200, d.lock().unwrap().to_string()),
            "/v1/key" => Response::json(200, s.jwk().to_string()),
            _ => Response::error(404, "no"),
        }))
        .unwrap();
    Verifier {
        running,
        signer,
        doc,
    }
}

impl Verifier {
    fn url(&self) -> String {
        format!("http://{}", self.running.addr())
    }

    /// Publishes a signed result with these claims (D2 names) as the latest.
    fn publish(&self, claims: Value) {
        let status = claims["ear_status"].as_str().unwrap_or("").to_owned();
        let ear = self.signer.sign(&claims);
        *self.doc.lock().unwrap() = json!({
            "id": "a",
            "interval_ms": 100,
            "status": status,
            "latest": {"seq": 1, "status": status, "at": 0, "ear": ear, "claims": claims},
        });
    }

    fn jwk_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("verifier.jwk.json");
        std::fs::write(&path, self.signer.jwk().to_string()).unwrap();
        path
    }
}

/// An honest affirming result about instance `a` at `url` with `ak`, issued `iat`.
fn affirming(url: &str, ak: &str, iat: i64, exp: i64) -> Value {
    json!({
        "eat_profile": "tag:github.com,2023:veraison/ear",
        "ear_status": "affirming",
        "iat": iat,
        "exp": exp,
        "tuk_instance": "a",
        "tuk_url": "http://127.0.0.1:1",
        "tuk_service_url": url,
        "tuk_ak_name": ak,
        "submods": {},
    })
}

/// `tuk gateway --listen 127.0.0.1:0 --instance a` with `args`: its ready line read, killed on
/// drop.
fn gateway(args: &[&std::ffi::OsStr]) -> Service {
    let mut cmd = Command::new(TUK);
    cmd.arg("gateway")
        .args(["--listen", "127.0.0.1:0", "--instance", "a"])
        .args(args);
    Service::start(cmd)
}

fn os<'a>(v: &'a [&'a str]) -> Vec<&'a std::ffi::OsStr> {
    v.iter().map(std::ffi::OsStr::new).collect()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn get(agent: &ureq::Agent, url: &str) -> (u16, String) {
    let mut r = agent.get(url).call().unwrap();
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}

/// Waits until `GET url` answers `status`, returning the body; panics after 5 s with the last
/// answer.
fn wait_status(agent: &ureq::Agent, url: &str, status: u16) -> String {
    wait_for(agent, url, status, "")
}

/// Waits until `GET url` answers `status` with a body containing `needle`.
fn wait_for(agent: &ureq::Agent, url: &str, status: u16, needle: &str) -> String {
    poll::until(
        url,
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            let (s, body) = get(agent, url);
            if s == status && body.contains(needle) {
                Ok(body)
            } else {
                Err(format!("still answers {s} (want {status}): {body}"))
            }
        },
    )
    .0
}

/// One raw request line over TCP; returns the whole answer.
fn raw(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("tuk-e2e")
        .join(format!("gateway-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn gateway_forwards_only_origin_form_paths_and_never_tuk() {
    let dir = temp_dir("targets");
    let up = upstream();
    let v = verifier(None);
    let now = now_s();
    v.publish(affirming(&up.url(), &up.ak, now - 10, now + 600));
    let key = v.jwk_file(&dir);
    let (upstream_url, verifier_url) = (up.url(), v.url());
    let gw = gateway(&os(&[
        "--upstream",
        &upstream_url,
        "--verifier",
        &verifier_url,
        "--verifier-key",
        key.to_str().unwrap(),
    ]));
    let agent = agent();
    // The honest path: forwarded with the path and query as sent.
    let body = wait_status(&agent, &format!("{}/hello/x?q=1", gw.url()), 200);
    assert_eq!(body, "upstream saw GET /hello/x?q=1");

    // A request-target that names another host: 400, and nothing ever connects to it.
    let bait = TcpListener::bind("127.0.0.1:0").unwrap();
    bait.set_nonblocking(true).unwrap();
    let port = bait.local_addr().unwrap().port();
    for request in [
        format!("GET @127.0.0.1:{port}/x HTTP/1.1\r\nHost: a\r\n\r\n"),
        format!("DELETE @127.0.0.1:{port}/x HTTP/1.1\r\nHost: a\r\n\r\n"),
        format!("GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: a\r\n\r\n"),
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: a\r\n\r\n"),
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(),
    ] {
        let out = raw(&gw.listen(), &request);
        let line = request.lines().next().unwrap();
        if line.starts_with("OPTIONS *") {
            // Valid HTTP, but not a path to forward.
            assert!(out.starts_with("HTTP/1.1 400 "), "{line} -> {out}");
        } else {
            assert!(out.starts_with("HTTP/1.1 400 "), "{line} -> {out}");
            assert!(out.contains("origin-form"), "{line} -> {out}");
        }
    }
    thread::sleep(Duration::from_millis(200));
    match bait.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the gateway connected to the target's host: {other:?}"),
    }
    assert_eq!(
        up.seen.lock().unwrap().len(),
        1,
        "{:?}",
        up.seen.lock().unwrap()
    );

    // The instance's /_tuk endpoints, however spelt: 403, never forwarded.
    for path in [
        "/_tuk/status",
        "/_tuk/attestation/activate",
        "/%5Ftuk/status",
        "/%5ftuk/status",
        "//_tuk/status",
        "/./_tuk/status",
        "/_TUK/status",
        "/_tuk",
    ] {
        let (s, body) = get(&agent, &format!("{}{path}", gw.url()));
        assert_eq!(s, 403, "{path}: {body}");
        assert!(body.contains("--forward-tuk"), "{path}: {body}");
    }
    let (s, _) = get(&agent, &format!("{}/_tukx/y", gw.url()));
    assert_eq!(s, 200, "/_tukx is a component path, not /_tuk");
    assert_eq!(
        *up.seen.lock().unwrap(),
        ["GET /hello/x?q=1", "GET /_tukx/y"]
    );
    drop(gw);

    // With --forward-tuk the operator opts in.
    let gw = gateway(&os(&[
        "--upstream",
        &upstream_url,
        "--verifier",
        &verifier_url,
        "--verifier-key",
        key.to_str().unwrap(),
        "--forward-tuk",
    ]));
    let body = wait_status(&agent, &format!("{}/_tuk/status", gw.url()), 200);
    assert_eq!(body, "upstream saw GET /_tuk/status");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gateway_refuses_results_that_are_stale_replayed_or_about_something_else() {
    let dir = temp_dir("results");
    let up = upstream();
    let v = verifier(None);
    let key = v.jwk_file(&dir);
    let (upstream_url, verifier_url) = (up.url(), v.url());
    let gw = gateway(&os(&[
        "--upstream",
        &upstream_url,
        "--verifier",
        &verifier_url,
        "--verifier-key",
        key.to_str().unwrap(),
    ]));
    let agent = agent();
    let hello = format!("{}/hello", gw.url());
    let now = now_s();
    // Each result is newer than the one before (iat counts up from the past).
    let mut iat = now - 1000;
    let mut next = || {
        iat += 1;
        iat
    };

    // Honest.
    v.publish(affirming(&up.url(), &up.ak, next(), now + 600));
    wait_status(&agent, &hello, 200);

    // A result for another instance.
    let mut c = affirming(&up.url(), &up.ak, next(), now + 600);
    c["tuk_instance"] = json!("b");
    v.publish(c);
    wait_for(&agent, &hello, 503, "is about instance");
    v.publish(affirming(&up.url(), &up.ak, next(), now + 600));
    wait_status(&agent, &hello, 200);

    // A result for another URL (the attacker's instance, attested affirming).
    v.publish(affirming("http://127.0.0.1:9", &up.ak, next(), now + 600));
    wait_for(&agent, &hello, 503, "not the upstream");
    v.publish(affirming(&up.url(), &up.ak, next(), now + 600));
    wait_status(&agent, &hello, 200);

    // A result for another AK (another TPM answered the verifier).
    let other_ak = ak_name(&ak_public(true));
    assert_ne!(other_ak, up.ak);
    v.publish(affirming(&up.url(), &other_ak, next(), now + 600));
    wait_for(&agent, &hello, 503, "upstream reports AK");
    v.publish(affirming(&up.url(), &up.ak, next(), now + 600));
    wait_status(&agent, &hello, 200);

    // An older affirming result after a newer contraindicated one: replayed.
    let old = affirming(&up.url(), &up.ak, next(), now + 600);
    let mut bad = affirming(&up.url(), &up.ak, next(), now + 600);
    bad["ear_status"] = json!("contraindicated");
    v.publish(bad);
    wait_for(&agent, &hello, 503, "contraindicated");
    v.publish(old);
    wait_for(&agent, &hello, 503, "older result");
    thread::sleep(Duration::from_millis(300));
    let (s, body) = get(&agent, &hello);
    assert_eq!(s, 503, "the replayed older result admitted: {body}");

    // A result not signed by the pinned key.
    let forger = EarSigner::new(SigningKey::generate().unwrap());
    let claims = affirming(&up.url(), &up.ak, next(), now + 600);
    *v.doc.lock().unwrap() = json!({"id": "a", "interval_ms": 100, "latest":
        {"status": "affirming", "ear": forger.sign(&claims), "claims": claims}});
    wait_for(&agent, &hello, 503, "does not verify");

    // The man in the middle replays the last affirming answer forever: traffic stops at its
    // signed exp, whatever the unsigned fields say.
    let exp = now_s() + 3;
    v.publish(affirming(&up.url(), &up.ak, next(), exp));
    wait_status(&agent, &hello, 200);
    let replayed = v.doc.lock().unwrap().clone();
    let start = Instant::now();
    loop {
        let mut doc = replayed.clone();
        doc["latest"]["at"] = json!(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64);
        doc["interval_ms"] = json!(1_000_000);
        *v.doc.lock().unwrap() = doc;
        let (s, body) = get(&agent, &hello);
        if s == 503 {
            assert!(body.contains("expired"), "{body}");
            assert!(now_s() >= exp, "refused before exp: {body}");
            break;
        }
        assert_eq!(s, 200, "{body}");
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "the replayed result still admits after its exp"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let status: Value =
        serde_json::from_str(&get(&agent, &format!("{}/_gateway/status", gw.url())).1).unwrap();
    assert_eq!(status["admit"], false, "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gateway_key_must_be_pinned() {
    let up = upstream();
    let v = verifier(None);
    let (upstream_url, verifier_url) = (up.url(), v.url());
    // Without a pinned key: no start, and the error says what to give.
    let out = Command::new(TUK)
        .args(["gateway", "--listen", "127.0.0.1:0", "--instance", "a"])
        .args(["--upstream", &upstream_url, "--verifier", &verifier_url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--verifier-key") && err.contains("--verifier-key-fingerprint"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "it printed a ready line");

    // A fingerprint that is not the verifier's key's: the key is not used, nothing admits.
    let now = now_s();
    v.publish(affirming(&up.url(), &up.ak, now - 10, now + 600));
    let agent = agent();
    let wrong = tuk_measure::hex(&tuk_measure::sha256(b"another key"));
    let gw = gateway(&os(&[
        "--upstream",
        &upstream_url,
        "--verifier",
        &verifier_url,
        "--verifier-key-fingerprint",
        &wrong,
    ]));
    thread::sleep(Duration::from_millis(300));
    let (s, body) = get(&agent, &format!("{}/hello", gw.url()));
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("fingerprint"), "{body}");
    drop(gw);
    // The right fingerprint (the verifier's keyid): admitted.
    let right = v.signer.keyid();
    let gw = gateway(&os(&[
        "--upstream",
        &upstream_url,
        "--verifier",
        &verifier_url,
        "--verifier-key-fingerprint",
        &right,
    ]));
    wait_status(&agent, &format!("{}/hello", gw.url()), 200);
}

#[test]
fn gateway_tls_on_both_sides() {
    let dir = temp_dir("tls");
    let (cert, key) = tls::self_signed_cert(&dir);
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let up = upstream();
    let upstream_url = up.url();

    // --require-verifier-tls refuses an http:// verifier at start.
    let plain = verifier(None);
    let jwk = plain.jwk_file(&dir);
    let out = Command::new(TUK)
        .args(["gateway", "--listen", "127.0.0.1:0", "--instance", "a"])
        .args(["--upstream", &upstream_url, "--verifier", &plain.url()])
        .arg("--verifier-key")
        .arg(&jwk)
        .arg("--require-verifier-tls")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not https://"), "{err}");

    // An https verifier whose certificate chains to --verifier-ca, a gateway serving HTTPS.
    let v = verifier(Some(tuk_httpd::Tls::from_pem_files(&cert, &key).unwrap()));
    let now = now_s();
    v.publish(affirming(&up.url(), &up.ak, now - 10, now + 600));
    let jwk = v.jwk_file(&dir);
    let verifier_https = format!("https://{}", v.running.addr());
    let gw = gateway(&os(&[
        "--upstream",
        &upstream_url,
        "--verifier",
        &verifier_https,
        "--verifier-key",
        jwk.to_str().unwrap(),
        "--verifier-ca",
        cert_s,
        "--require-verifier-tls",
        "--tls-cert",
        cert_s,
        "--tls-key",
        key_s,
    ]));
    assert_eq!(gw.ready["tls"], true);
    let tls_agent = tls::https_agent(&cert);
    let body = wait_status(&tls_agent, &format!("https://{}/hello", gw.listen()), 200);
    assert_eq!(body, "upstream saw GET /hello");
    // Plain HTTP to the TLS gateway gets no HTTP answer.
    assert!(agent().get(&format!("{}/hello", gw.url())).call().is_err());
    drop(gw);

    // Without --verifier-ca the verifier's certificate is not trusted: nothing admits.
    let gw = gateway(&os(&[
        "--upstream",
        &upstream_url,
        "--verifier",
        &verifier_https,
        "--verifier-key",
        jwk.to_str().unwrap(),
    ]));
    thread::sleep(Duration::from_millis(300));
    let (s, body) = get(&agent(), &format!("{}/hello", gw.url()));
    assert_eq!(s, 503, "{body}");
    assert!(body.to_lowercase().contains("certificate"), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}
