//! The verifier's API from an attacker's side (issue 12, review findings 3, 7 and 8), against
//! a real `tuk verifier serve` and a real instance (QEMU TCG, swtpm):
//! - without a token nothing changes: anonymous POST and DELETE answer 401 with
//!   `WWW-Authenticate: Bearer`, and so does a wrong token; a read token (`tuk verifier
//!   token --scope read`) reads but cannot register (403);
//! - an id cannot be re-pointed at another URL without `"replace": true` (409); with it the
//!   change is made and recorded in the audit log (old and new URL and AK), as is a deletion;
//! - one instance (one AK) cannot be registered under a second id (409 naming the first);
//! - `--max-instances` bounds the registrations;
//! - webhooks to loopback, private and link-local addresses are refused (400) unless
//!   `--webhook-allow-private`; ten black-hole hooks (they accept and never answer) do not
//!   delay a real hook's notification;
//! - the signed claims name the URL, the service URL and the AK they are about, and expire
//!   two intervals after they were made.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tuk_e2e::process::Service;
use tuk_e2e::verifier::{self, admin_token};
use tuk_e2e::{boot, poll, tls};

const TUK: &str = env!("CARGO_BIN_EXE_tuk");
const INTERVAL_MS: u64 = 1000;

/// `tuk verifier serve` on the test's interval, with `extra` arguments; killed on drop.
fn serve(state: &Path, extra: &[&str]) -> Service {
    verifier::serve(TUK, state, INTERVAL_MS, extra)
}

/// (status, WWW-Authenticate, body) of a request, with `token` as the bearer token if given.
fn call(
    token: Option<&str>,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> (u16, Option<String>, String) {
    let a: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
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
        _ => unreachable!(),
    };
    let mut r = r.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let challenge = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = r.status().as_u16();
    (
        status,
        challenge,
        r.body_mut().read_to_string().unwrap_or_default(),
    )
}

fn json_of(token: Option<&str>, method: &str, url: &str, body: Option<&Value>, want: u16) -> Value {
    let (status, _, text) = call(token, method, url, body);
    assert_eq!(status, want, "{method} {url} → {status} {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {url}: {e}: {text}"))
}

/// Waits until `id`'s latest result satisfies `done`; returns the instance document.
fn wait_result(base: &str, token: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    poll::until(
        &format!("a result about {id}"),
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            let doc = json_of(
                Some(token),
                "GET",
                &format!("{base}/v1/instances/{id}"),
                None,
                200,
            );
            if !doc["latest"].is_null() && done(&doc) {
                Ok(doc)
            } else {
                Err(doc.to_string())
            }
        },
    )
    .0
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A webhook receiver: (unix ms when received, body) of every POST.
type Received = Arc<Mutex<Vec<(i64, Value)>>>;
fn webhook_receiver() -> (tuk_httpd::Running, Received) {
    let got: Received = Arc::default();
    let sink = Arc::clone(&got);
    let running = tuk_httpd::Server::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .spawn(Arc::new(move |req: &tuk_httpd::Request| {
            if let Ok(v) = serde_json::from_slice::<Value>(&req.body) {
                sink.lock().unwrap().push((now_ms(), v));
            }
            tuk_httpd::Response::new(204)
        }))
        .unwrap();
    (running, got)
}

/// A black hole: accepts connections and never answers (keeps them open).
fn black_hole() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    addr
}

/// A TCP relay to `target`: another address for the same instance.
fn relay(target: std::net::SocketAddr) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for client in l.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(target) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c1, mut s1) = (client, server);
            thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut s1);
                let _ = s1.shutdown(std::net::Shutdown::Write);
            });
            thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// An HTTP server that answers every request with a 500 whose body is `secret`.
fn leaky_server(secret: &'static str) -> tuk_httpd::Running {
    tuk_httpd::Server::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .spawn(Arc::new(move |_: &tuk_httpd::Request| {
            tuk_httpd::Response::error(500, secret)
        }))
        .unwrap()
}

fn test_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("tuk-e2e")
        .join(format!("verifier-auth-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn verifier_api_refuses_the_attacks() {
    let dir = test_dir("api");
    let vm = boot("verifier-auth");
    // Attestation talks to the admin URL; the service URL is what a gateway forwards to.
    let url = vm.admin_url();
    let service_url = vm.url();
    // The same instance at another URL: a TCP relay to it.
    let target: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let other_url = format!("http://{}", relay(target));

    let state = dir.join("v1");
    let v = serve(&state, &["--max-instances", "2"]);
    let base = v.url();
    let admin = admin_token(&state);
    let admin = Some(admin.as_str());
    assert_eq!(
        v.ready["admin_token_file"].as_str(),
        Some(state.join("admin.token").to_str().unwrap())
    );

    // Open routes stay open; everything else wants a token.
    for open in ["/healthz", "/metrics", "/v1/key", "/v1/openapi.yaml"] {
        let (status, _, text) = call(None, "GET", &format!("{base}{open}"), None);
        assert_eq!(status, 200, "{open}: {text}");
    }
    let (status, challenge, _) = call(None, "GET", &format!("{base}/v1/instances"), None);
    assert_eq!(status, 401);
    assert!(challenge.is_some_and(|c| c.starts_with("Bearer")));

    // The attacks without a token: register, delete, add a webhook. All 401, nothing changes.
    let (status, challenge, text) = call(
        None,
        "POST",
        &format!("{base}/v1/instances"),
        Some(&json!({"url": url, "id": "a"})),
    );
    assert_eq!(status, 401, "{text}");
    assert!(
        challenge.is_some_and(|c| c.starts_with("Bearer")),
        "no WWW-Authenticate: Bearer"
    );
    let wrong = "A".repeat(43);
    let (status, _, _) = call(
        Some(&wrong),
        "POST",
        &format!("{base}/v1/instances"),
        Some(&json!({"url": url, "id": "a"})),
    );
    assert_eq!(status, 401);
    let (status, _, _) = call(
        None,
        "POST",
        &format!("{base}/v1/webhooks"),
        Some(&json!({"url": "http://93.184.216.34/x"})),
    );
    assert_eq!(status, 401);
    let list = json_of(admin, "GET", &format!("{base}/v1/instances"), None, 200);
    assert_eq!(
        list["instances"],
        json!([]),
        "an anonymous request changed state"
    );
    let hooks = json_of(admin, "GET", &format!("{base}/v1/webhooks"), None, 200);
    assert_eq!(hooks["webhooks"], json!([]));

    // A read token reads, and cannot register.
    let out = Command::new(TUK)
        .args(["verifier", "token", "--scope", "read", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["scope"], "read");
    let read = made["token"].as_str().unwrap().to_owned();
    let tokens_file = std::fs::read_to_string(state.join("api-tokens.json")).unwrap();
    assert!(!tokens_file.contains(&read), "a token is stored in clear");
    json_of(
        Some(&read),
        "GET",
        &format!("{base}/v1/instances"),
        None,
        200,
    );
    let (status, _, text) = call(
        Some(&read),
        "POST",
        &format!("{base}/v1/instances"),
        Some(&json!({"url": url, "id": "a"})),
    );
    assert_eq!(status, 403, "{text}");
    let (status, _, _) = call(Some(&read), "GET", &format!("{base}/v1/webhooks"), None);
    assert_eq!(status, 403);
    let list = json_of(admin, "GET", &format!("{base}/v1/instances"), None, 200);
    assert_eq!(list["instances"], json!([]));

    // Webhooks into the verifier's own network are refused without --webhook-allow-private.
    for target in [
        "http://127.0.0.1:7070/v1/instances".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.5:8500/".to_owned(),
        "http://[::1]:9/".to_owned(),
        "http://localhost:9/".to_owned(),
    ] {
        let (status, _, text) = call(
            admin,
            "POST",
            &format!("{base}/v1/webhooks"),
            Some(&json!({ "url": target })),
        );
        assert_eq!(status, 400, "{target}: {text}");
        assert!(text.contains("--webhook-allow-private"), "{text}");
    }

    // Honest registration, with the service URL; the claims say what they are about.
    let reg = json_of(
        admin,
        "POST",
        &format!("{base}/v1/instances"),
        Some(&json!({"url": url, "id": "a", "service_url": service_url})),
        201,
    );
    let ak = reg["ak_name"].as_str().unwrap().to_owned();
    let doc = wait_result(&base, &read, "a", |_| true);
    let claims = &doc["latest"]["claims"];
    assert_eq!(claims["tuk_instance"], "a", "{claims}");
    assert_eq!(claims["tuk_url"], url.as_str(), "{claims}");
    assert_eq!(claims["tuk_service_url"], service_url.as_str(), "{claims}");
    assert_eq!(claims["tuk_ak_name"], ak.as_str(), "{claims}");
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(
        exp - iat,
        (2 * INTERVAL_MS).div_ceil(1000) as i64 + 1,
        "{claims}"
    );
    // The signed EAR carries the same claims.
    let jwk = json_of(None, "GET", &format!("{base}/v1/key"), None, 200);
    let key = tuk_verifier::ear::key_of_jwk(&jwk).unwrap();
    let signed = tuk_verifier::ear::verify(doc["latest"]["ear"].as_str().unwrap(), &key).unwrap();
    assert_eq!(&signed, claims);

    // Anonymous DELETE: 401, still registered.
    let (status, _, _) = call(None, "DELETE", &format!("{base}/v1/instances/a"), None);
    assert_eq!(status, 401);
    json_of(
        Some(&read),
        "GET",
        &format!("{base}/v1/instances/a"),
        None,
        200,
    );

    // The same instance (same AK) under a second id: 409 naming the id that holds it.
    let (status, _, text) = call(
        admin,
        "POST",
        &format!("{base}/v1/instances"),
        Some(&json!({"url": other_url, "id": "b"})),
    );
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("as instance a"), "{text}");

    // Re-pointing "a" without replace: 409, unchanged.
    let (status, _, text) = call(
        admin,
        "POST",
        &format!("{base}/v1/instances"),
        Some(&json!({"url": other_url, "id": "a"})),
    );
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("replace"), "{text}");
    let doc = json_of(
        Some(&read),
        "GET",
        &format!("{base}/v1/instances/a"),
        None,
        200,
    );
    assert_eq!(doc["url"], url.as_str());
    // With replace: 200, and recorded.
    let done = json_of(
        admin,
        "POST",
        &format!("{base}/v1/instances"),
        Some(&json!({"url": other_url, "id": "a", "replace": true})),
        200,
    );
    assert_eq!(done["replaced"], true);
    let audit = json_of(
        Some(&read),
        "GET",
        &format!("{base}/v1/audit?instance=a"),
        None,
        200,
    );
    let records = audit["audit"].as_array().unwrap();
    let replace = records
        .iter()
        .find(|r| r["action"] == "replace")
        .unwrap_or_else(|| panic!("no replace record: {audit}"));
    assert_eq!(replace["detail"]["old"]["url"], url.as_str(), "{replace}");
    assert_eq!(
        replace["detail"]["new"]["url"],
        other_url.as_str(),
        "{replace}"
    );
    assert_eq!(replace["detail"]["old"]["ak_name"], ak.as_str());
    assert_eq!(replace["detail"]["new"]["ak_name"], ak.as_str());
    assert!(replace["actor"].as_str().unwrap().starts_with("admin-"));
    assert!(records.iter().any(|r| r["action"] == "register"), "{audit}");
    // The next results are about the new URL (the replaced service URL is gone).
    let doc = wait_result(&base, &read, "a", |d| {
        d["latest"]["claims"]["tuk_url"] == other_url.as_str()
    });
    assert!(doc["latest"]["claims"].get("tuk_service_url").is_none());

    // Registration as a server-side request: what the target answers is not relayed.
    let leaky = leaky_server("SECRET-FROM-AN-INTERNAL-SERVICE");
    let (status, _, text) = call(
        admin,
        "POST",
        &format!("{base}/v1/instances"),
        Some(&json!({"url": format!("http://{}", leaky.addr()), "id": "c"})),
    );
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("answered 500"), "{text}");
    assert!(
        !text.contains("SECRET"),
        "the remote body was echoed: {text}"
    );
    leaky.stop();

    // Deletion is recorded with what was registered.
    let (status, _, text) = call(admin, "DELETE", &format!("{base}/v1/instances/a"), None);
    assert_eq!(status, 204, "{text}");
    let audit = json_of(
        Some(&read),
        "GET",
        &format!("{base}/v1/audit?instance=a"),
        None,
        200,
    );
    let delete = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "delete")
        .unwrap_or_else(|| panic!("no delete record: {audit}"))
        .clone();
    assert_eq!(
        delete["detail"]["old"]["url"],
        other_url.as_str(),
        "{delete}"
    );
    assert!(delete["detail"]["last_result"]["seq"].as_i64() >= Some(1));
    let (_, _, metrics) = call(None, "GET", &format!("{base}/metrics"), None);
    assert!(
        !metrics.contains("tuk_verifier_auth_refused_total 0"),
        "{metrics}"
    );
    drop(v);

    // --max-instances: with a limit of 1, a second id is refused before anything is fetched.
    let state_m = dir.join("v-max");
    let m = serve(&state_m, &["--max-instances", "1"]);
    let mtoken = admin_token(&state_m);
    json_of(
        Some(&mtoken),
        "POST",
        &format!("{}/v1/instances", m.url()),
        Some(&json!({"url": url, "id": "one"})),
        201,
    );
    let (status, _, text) = call(
        Some(&mtoken),
        "POST",
        &format!("{}/v1/instances", m.url()),
        Some(&json!({"url": other_url, "id": "two"})),
    );
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("--max-instances"), "{text}");
    drop(m);

    // Webhook delivery in parallel: ten black holes first, then a real hook. The real hook
    // hears the status change within a bound, however long the black holes hold on.
    let state2 = dir.join("v2");
    let v2 = serve(&state2, &["--webhook-allow-private", "--timeout", "5"]);
    let base2 = v2.url();
    let token2 = admin_token(&state2);
    let admin2 = Some(token2.as_str());
    for _ in 0..10 {
        json_of(
            admin2,
            "POST",
            &format!("{base2}/v1/webhooks"),
            Some(&json!({"url": format!("http://{}/hook", black_hole())})),
            201,
        );
    }
    let (hooks, got) = webhook_receiver();
    json_of(
        admin2,
        "POST",
        &format!("{base2}/v1/webhooks"),
        Some(&json!({"url": format!("http://{}/hook", hooks.addr())})),
        201,
    );
    json_of(
        admin2,
        "POST",
        &format!("{base2}/v1/instances"),
        Some(&json!({"url": url, "id": "w"})),
        201,
    );
    let ((received, event), _) = poll::until(
        "the real hook heard the change",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            got.lock()
                .unwrap()
                .iter()
                .find(|(_, e)| e["instance"] == "w" && e["previous"] == "pending")
                .cloned()
                .ok_or_else(|| "the real hook heard nothing".to_owned())
        },
    );
    let delay = received - event["at"].as_i64().unwrap();
    eprintln!("the real hook heard the change {delay} ms after the result was made");
    assert!(
        delay < 2000,
        "ten black-hole hooks delayed the real one by {delay} ms"
    );
    hooks.stop();
    drop(v2);
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--tls-cert/--tls-key`: the API (tokens included) over HTTPS only.
#[test]
fn verifier_serves_https() {
    let dir = test_dir("tls");
    let (cert, key) = tls::self_signed_cert(&dir);
    let state = dir.join("v");
    let v = serve(
        &state,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let url = v.ready["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("https://"), "{url}");
    let token = admin_token(&state);
    let tls = tls::https_agent(&cert);
    let status =
        |r: Result<ureq::http::Response<ureq::Body>, ureq::Error>| r.map(|r| r.status().as_u16());
    assert_eq!(
        status(tls.get(&format!("{url}/healthz")).call()).unwrap(),
        200
    );
    assert_eq!(
        status(tls.get(&format!("{url}/v1/instances")).call()).unwrap(),
        401
    );
    assert_eq!(
        status(
            tls.get(&format!("{url}/v1/instances"))
                .header("Authorization", &format!("Bearer {token}"))
                .call()
        )
        .unwrap(),
        200
    );
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = url.replacen("https://", "http://", 1);
    let a: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    assert!(a.get(&format!("{plain}/healthz")).call().is_err());
    drop(v);
    let _ = std::fs::remove_dir_all(&dir);
}
