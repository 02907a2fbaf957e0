//! Wasm components inside the host-kernel (issue: components as microservices), end to end:
//! the real components from `components/`, built and compiled with tuk's own tools, handed to
//! the real kernel under TCG in a boot pack, exercised over HTTP.
//!
//! One VM serves all six components; one test owns it (so it is shut down when the test ends)
//! and runs each check in turn, then all of them at once from several threads. Isolation
//! checks assert that the misbehaving component fails alone: the others and `/_tuk/health`
//! keep answering.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use tuk_compose::{BuildOptions, Deployment};
use tuk_e2e::{boot_full, Conn, Response, IO_TIMEOUT};
use tuk_launcher::Instance;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// Boots a VM with all components, small limits for the isolation checks.
fn boot_components() -> Instance {
    {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-components");
        let opts = BuildOptions {
            out_dir: out.clone(),
            locked: true,
            ..BuildOptions::default()
        };
        let (_, built) = tuk_compose::build(&repo_root().join("components"), &opts)
            .unwrap_or_else(|e| panic!("building components/ failed: {e}"));
        let source = |name: &str| {
            built
                .iter()
                .find(|b| b.name == name)
                .unwrap_or_else(|| panic!("{name} not built"))
                .artifact
                .path
                .clone()
        };
        let meta = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let deployments = vec![
            Deployment {
                name: "hello".into(),
                source: source("hello"),
                meta: meta(&[("config.greeting", "hello from the e2e test")]),
            },
            Deployment {
                name: "kv".into(),
                source: source("kv"),
                meta: vec![],
            },
            Deployment {
                name: "notes".into(),
                source: source("notes"),
                meta: vec![],
            },
            Deployment {
                name: "trap".into(),
                source: source("trap"),
                meta: vec![],
            },
            Deployment {
                name: "spin".into(),
                source: source("spin"),
                meta: meta(&[("deadline_ms", "400")]),
            },
            Deployment {
                name: "membomb".into(),
                source: source("membomb"),
                meta: meta(&[("memory_limit_bytes", "4194304")]),
            },
        ];
        let (pack, _) = tuk_compose::boot_pack(&deployments, None).expect("boot pack");
        let pack_path = out.join("boot.pack");
        std::fs::write(&pack_path, pack).unwrap();
        boot_full(
            "components",
            &[
                ("http.request_timeout_ms", "20000"),
                ("http.idle_timeout_ms", "30000"),
            ],
            Some(&pack_path),
            96,
        )
    }
}

fn request(
    vm: &Instance,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Response {
    let mut c = Conn::open(vm.addr());
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: tuk\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    c.send(&bytes).unwrap();
    c.read_response(IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn get(vm: &Instance, path: &str) -> Response {
    request(vm, "GET", path, None, b"")
}

fn component_stats(vm: &Instance, name: &str) -> serde_json::Value {
    let doc = get(vm, "/_tuk/components").json();
    doc["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not deployed: {doc}"))
}

fn check_all_components_are_deployed_and_listed(vm: &Instance) {
    let doc = get(vm, "/_tuk/components").json();
    let names: Vec<&str> = doc["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello", "kv", "membomb", "notes", "spin", "trap"]);
    for c in doc["components"].as_array().unwrap() {
        assert_eq!(c["state"], "serving", "{c}");
        assert!(c["code_bytes"].as_u64().unwrap() > 10_000, "{c}");
    }
    assert_eq!(component_stats(vm, "spin")["deadline_ms"], 400);
    assert_eq!(
        component_stats(vm, "membomb")["memory_limit_bytes"],
        4_194_304
    );
    let health = get(vm, "/_tuk/health").json();
    assert_eq!(health["components"], 6);
    assert_eq!(health["paging"]["writable_executable_pages"], 0);
}

fn check_hello_uses_config_clock_and_random(vm: &Instance) {
    let r = get(vm, "/hello/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text().trim(), "hello from the e2e test");
    let j = get(vm, "/hello/json").json();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let unix_ms = j["unix_ms"].as_i64().unwrap();
    assert!(
        (unix_ms - now_ms).abs() < 60_000,
        "guest wall clock {unix_ms} vs host {now_ms}"
    );
    let id1 = j["id"].as_str().unwrap().to_string();
    let id2 = get(vm, "/hello/json").json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(id1.len(), 32);
    assert_ne!(id1, id2, "random ids repeat");
}

fn check_unknown_component_is_404(vm: &Instance) {
    let r = get(vm, "/nosuch/thing");
    assert_eq!(r.status, 404);
    assert!(
        r.body_text().contains("/_tuk/components"),
        "{}",
        r.body_text()
    );
}

fn check_kv_keeps_state_across_requests(vm: &Instance) {
    let r = request(
        vm,
        "PUT",
        "/kv/kv/e2e-key",
        Some("application/octet-stream"),
        b"first",
    );
    assert_eq!(r.status, 201, "{}", r.body_text());
    let r = request(
        vm,
        "PUT",
        "/kv/kv/e2e-key",
        Some("application/octet-stream"),
        b"second value",
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let r = get(vm, "/kv/kv/e2e-key");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"second value");
    let list = get(vm, "/kv/kv?prefix=e2e-").json();
    assert!(
        list.as_array().unwrap().iter().any(|k| k == "e2e-key"),
        "{list}"
    );
    assert_eq!(
        request(vm, "DELETE", "/kv/kv/e2e-key", None, b"").status,
        204
    );
    assert_eq!(get(vm, "/kv/kv/e2e-key").status, 404);
    assert_eq!(
        request(vm, "PUT", "/kv/kv/bad%2Fkey!", None, b"x").status,
        400
    );
}

fn check_notes_validates_and_stores(vm: &Instance) {
    let r = request(
        vm,
        "POST",
        "/notes/notes",
        Some("application/json"),
        br#"{"title":"e2e","body":"from the test","tags":["e2e"]}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body_text());
    let id = r.json()["id"].as_u64().unwrap();
    let got = get(vm, &format!("/notes/notes/{id}")).json();
    assert_eq!(got["title"], "e2e");
    let tagged = get(vm, "/notes/notes?tag=e2e").json();
    assert!(tagged.as_array().unwrap().iter().any(|n| n["id"] == id));
    assert_eq!(
        request(
            vm,
            "POST",
            "/notes/notes",
            Some("application/json"),
            br#"{"title":"#
        )
        .status,
        400
    );
    assert_eq!(
        request(vm, "POST", "/notes/notes", Some("text/plain"), b"hi").status,
        415
    );
    assert_eq!(
        request(
            vm,
            "POST",
            "/notes/notes",
            Some("application/json"),
            br#"{"title":""}"#
        )
        .status,
        400
    );
    assert_eq!(get(vm, "/notes/notes/999999").status, 404);
}

/// Health and another component still answer.
fn others_still_serve(vm: &Instance) {
    assert_eq!(get(vm, "/_tuk/health").status, 200);
    assert_eq!(get(vm, "/hello/").status, 200);
}

fn check_a_trapping_component_answers_500_and_recovers(vm: &Instance) {
    let before = component_stats(vm, "trap")["instantiations"]
        .as_u64()
        .unwrap();
    let r = get(vm, "/trap/");
    assert_eq!(r.status, 500, "{}", r.body_text());
    assert!(r.body_text().contains("unreachable"), "{}", r.body_text());
    others_still_serve(vm);
    assert_eq!(get(vm, "/trap/ok").status, 200);
    let after = component_stats(vm, "trap");
    assert!(after["traps"].as_u64().unwrap() >= 1);
    assert!(
        after["instantiations"].as_u64().unwrap() > before,
        "not re-instantiated: {after}"
    );
}

fn check_an_infinite_loop_is_stopped_at_its_deadline_with_503(vm: &Instance) {
    let started = Instant::now();
    let r = get(vm, "/spin/");
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert!(r.body_text().contains("deadline"), "{}", r.body_text());
    assert!(
        took >= Duration::from_millis(380),
        "stopped too early: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "stopped too late: {took:?}");
    others_still_serve(vm);
    assert_eq!(get(vm, "/spin/ok").status, 200);
    assert!(
        component_stats(vm, "spin")["deadline_exceeded"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

fn check_a_memory_bomb_fails_alone(vm: &Instance) {
    let r = get(vm, "/membomb/");
    assert!(
        r.status >= 500,
        "memory bomb answered {}: {}",
        r.status,
        r.body_text()
    );
    others_still_serve(vm);
    assert_eq!(get(vm, "/membomb/ok").status, 200);
    let health = get(vm, "/_tuk/health").json();
    // The kernel's heap is not exhausted: the limit held at 4 MiB.
    let used = health["memory"]["heap_used_bytes"].as_u64().unwrap();
    let total = health["memory"]["heap_bytes"].as_u64().unwrap();
    assert!(
        used < total / 2,
        "heap {used} of {total} used after the bomb"
    );
}

fn check_concurrent_requests_across_components(vm: &Instance) {
    let paths = [
        "/hello/",
        "/kv/kv",
        "/notes/notes",
        "/trap/ok",
        "/_tuk/health",
        "/membomb/ok",
    ];
    let addr = vm.addr();
    let workers: Vec<_> = (0..12)
        .map(|i| {
            thread::spawn(move || {
                let mut c = Conn::open(addr);
                for j in 0..10 {
                    let p = paths[(i + j) % paths.len()];
                    let r = c.get(p);
                    assert_eq!(r.status, 200, "{p}: {}", r.body_text());
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn components_end_to_end() {
    let mut vm = boot_components();
    check_all_components_are_deployed_and_listed(&vm);
    check_hello_uses_config_clock_and_random(&vm);
    check_unknown_component_is_404(&vm);
    check_kv_keeps_state_across_requests(&vm);
    check_notes_validates_and_stores(&vm);
    check_a_trapping_component_answers_500_and_recovers(&vm);
    check_an_infinite_loop_is_stopped_at_its_deadline_with_503(&vm);
    check_a_memory_bomb_fails_alone(&vm);
    check_concurrent_requests_across_components(&vm);
    // After all of it, the kernel is healthy and shuts down cleanly.
    assert_eq!(get(&vm, "/_tuk/health").status, 200);
    let exit = vm.shutdown(Duration::from_secs(10)).expect("shutdown");
    assert!(exit.is_clean(), "{exit:?}");
}
