//! The components in `components/`, end to end on the host:
//! 1. build them all with [`tuk_compose::build`] (needs a wasm32 toolchain: rustup's target or
//!    Debian's `rustc-web cargo-web rust-web-src lld`),
//! 2. compile each for the host-kernel with [`tuk_compose::compile`] (what `tuk compile` does):
//!    it succeeds, is deterministic, and refuses the core module it came from,
//! 3. run each on a host wasmtime (native code, same component bytes) with real
//!    implementations of the world's imports, and check their HTTP behaviour: routes, status
//!    codes, JSON errors, traps, deadlines and memory limits.
//!
//! The kernel's compiled code targets `x86_64-unknown-none` and cannot run here; step 3
//! compiles the same components natively instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tuk_compose::{BuildOptions, Built, CompileError, WasmKind};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};

wasmtime::component::bindgen!({ path: "../../wit", world: "service" });

use exports::tuk::service::handler::{Request, Response};
use tuk::service::log::Level;

const ALL: [&str; 6] = ["hello", "kv", "notes", "trap", "spin", "membomb"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Every component, built once for all tests in this file.
fn built() -> &'static BTreeMap<String, Built> {
    static BUILT: OnceLock<BTreeMap<String, Built>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let opts = BuildOptions {
            out_dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("components"),
            locked: true,
            ..BuildOptions::default()
        };
        let (_, built) = tuk_compose::build(&repo_root().join("components"), &opts)
            .unwrap_or_else(|e| panic!("building components/ failed: {e}"));
        built.into_iter().map(|b| (b.name.clone(), b)).collect()
    })
}

fn component_bytes(name: &str) -> Vec<u8> {
    std::fs::read(&built()[name].artifact.path).unwrap()
}

#[test]
fn builds_every_component() {
    let names: Vec<&str> = built().keys().map(String::as_str).collect();
    let mut expected = ALL.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);
    for b in built().values() {
        let bytes = component_bytes(&b.name);
        assert_eq!(
            tuk_compose::detect(&bytes),
            WasmKind::Component,
            "{}",
            b.name
        );
        assert_eq!(b.artifact.sha256, tuk_compose::sha256_hex(&bytes));
        assert_eq!(b.artifact.size, bytes.len() as u64);
        // Componentizing is deterministic too.
        let core = std::fs::read(&b.core_module).unwrap();
        assert_eq!(
            tuk_compose::componentize(&core).unwrap(),
            bytes,
            "{}",
            b.name
        );
    }
}

#[test]
fn compiles_every_component_for_the_kernel_deterministically() {
    for name in ALL {
        let component = component_bytes(name);
        let first = tuk_compose::compile(&component).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!first.is_empty());
        assert_eq!(tuk_compose::detect(&first), WasmKind::Precompiled, "{name}");
        let second = tuk_compose::compile(&component).unwrap();
        assert!(first == second, "{name}: two compilations differ");
    }
}

#[test]
fn compile_refuses_core_modules_and_garbage() {
    let core = std::fs::read(&built()["hello"].core_module).unwrap();
    let err = tuk_compose::compile(&core).unwrap_err();
    assert!(matches!(err, CompileError::CoreModule));
    assert!(err.to_string().contains("tuk component build"), "{err}");
    assert!(matches!(
        tuk_compose::compile(&[0xde, 0xad, 0xbe, 0xef]),
        Err(CompileError::NotWasm)
    ));
    let mut cut = component_bytes("hello");
    cut.truncate(cut.len() / 2);
    assert!(matches!(
        tuk_compose::compile(&cut),
        Err(CompileError::Invalid(_))
    ));
}

#[test]
fn compile_file_writes_the_artifact() {
    let input = &built()["trap"].artifact.path;
    let output = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compile-file/trap.cwasm");
    let artifact = tuk_compose::compile_file(input, &output).unwrap();
    let written = std::fs::read(&output).unwrap();
    assert_eq!(artifact.size, written.len() as u64);
    assert_eq!(artifact.sha256, tuk_compose::sha256_hex(&written));
}

// ---- running the components on the host --------------------------------------------------

/// The host side of the world, as the kernel implements it (simplified: fixed clock,
/// counting "random" bytes, a kv store with a key quota).
struct Host {
    kv: BTreeMap<String, Vec<u8>>,
    kv_max_keys: usize,
    config: BTreeMap<String, String>,
    logs: Vec<(Level, String)>,
    counter: u8,
    limits: StoreLimits,
}

impl tuk::service::types::Host for Host {}
impl tuk::service::log::Host for Host {
    fn log(&mut self, level: Level, message: String) {
        self.logs.push((level, message));
    }
}
impl tuk::service::kv::Host for Host {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.kv.get(&key).cloned()
    }
    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        if !self.kv.contains_key(&key) && self.kv.len() >= self.kv_max_keys {
            return Err(format!("quota exceeded: at most {} keys", self.kv_max_keys));
        }
        self.kv.insert(key, value);
        Ok(())
    }
    fn delete(&mut self, key: String) -> bool {
        self.kv.remove(&key).is_some()
    }
    fn list_keys(&mut self, prefix: String) -> Vec<String> {
        self.kv
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect()
    }
}
impl tuk::service::config::Host for Host {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }
}
impl tuk::service::clock::Host for Host {
    fn now(&mut self) -> (u64, u32) {
        (1_795_000_000, 250_000_000) // 2026-11-18T11:06:40.250Z
    }
    fn monotonic_ns(&mut self) -> u64 {
        5_000_000_000
    }
}
impl tuk::service::random::Host for Host {
    fn get_random_bytes(&mut self, len: u32) -> Vec<u8> {
        (0..len)
            .map(|_| {
                self.counter = self.counter.wrapping_add(1);
                self.counter
            })
            .collect()
    }
}

struct Running {
    engine: Engine,
    component: Component,
    linker: Linker<Host>,
    store: Store<Host>,
    service: Service,
}

fn host_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .signals_based_traps(false);
        Engine::new(&config).unwrap()
    })
}

impl Running {
    fn new(name: &str, config: &[(&str, &str)]) -> Running {
        let engine = host_engine().clone();
        let component = Component::new(&engine, component_bytes(name)).unwrap();
        let mut linker = Linker::new(&engine);
        Service::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h).unwrap();
        let host = Host {
            kv: BTreeMap::new(),
            kv_max_keys: 8,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            logs: Vec::new(),
            counter: 0,
            limits: StoreLimitsBuilder::new().memory_size(16 << 20).build(),
        };
        let (store, service) = Self::instantiate(&engine, &component, &linker, host);
        Running {
            engine,
            component,
            linker,
            store,
            service,
        }
    }

    fn instantiate(
        engine: &Engine,
        component: &Component,
        linker: &Linker<Host>,
        host: Host,
    ) -> (Store<Host>, Service) {
        let mut store = Store::new(engine, host);
        store.limiter(|h| &mut h.limits);
        store.set_epoch_deadline(u64::MAX / 2);
        let service = Service::instantiate(&mut store, component, linker).unwrap();
        (store, service)
    }

    /// After a trap the instance is dead; the kernel makes a new one, keeping the kv store.
    fn reinstantiate(&mut self) {
        let host = self.store.data().fresh();
        let (store, service) = Self::instantiate(&self.engine, &self.component, &self.linker, host);
        self.store = store;
        self.service = service;
    }

    fn call(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> wasmtime::Result<Response> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (target, None),
        };
        let req = Request {
            method: method.into(),
            path: path.into(),
            query,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
        };
        self.service
            .tuk_service_handler()
            .call_handle(&mut self.store, &req)
    }

    fn get(&mut self, target: &str) -> Response {
        self.call("GET", target, &[], b"").unwrap()
    }

    fn send_json(&mut self, method: &str, target: &str, body: &str) -> Response {
        self.call(
            method,
            target,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .unwrap()
    }
}

impl Host {
    fn fresh(&self) -> Host {
        Host {
            kv: self.kv.clone(),
            kv_max_keys: self.kv_max_keys,
            config: self.config.clone(),
            logs: Vec::new(),
            counter: self.counter,
            limits: StoreLimitsBuilder::new().memory_size(16 << 20).build(),
        }
    }
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| std::str::from_utf8(v).unwrap())
}

fn json(r: &Response) -> Value {
    assert_eq!(
        header(r, "content-type"),
        Some("application/json"),
        "status {}",
        r.status
    );
    serde_json::from_slice(&r.body).unwrap()
}

/// Asserts a JSON error with `status` and `code` whose message contains `needle`.
fn assert_error(r: &Response, status: u16, code: &str, needle: &str) {
    let body = json(r);
    assert_eq!(
        (r.status, body["error"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(needle),
        "message {message:?} lacks {needle:?}"
    );
}

#[test]
fn hello_greets_and_reports_time_and_id() {
    let mut hello = Running::new("hello", &[]);
    let r = hello.get("/");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, b"hello from tuk\n".as_slice())
    );
    assert_eq!(
        header(&r, "content-type"),
        Some("text/plain; charset=utf-8")
    );

    let r = hello.get("/json");
    assert_eq!(r.status, 200);
    let body = json(&r);
    assert_eq!(body["time"], "2026-11-18T11:06:40.250Z");
    assert_eq!(body["unix_ms"], 1_795_000_000_250u64);
    assert_eq!(body["uptime_ms"], 5000);
    assert_eq!(body["id"], "0102030405060708090a0b0c0d0e0f10");

    assert_error(
        &hello.call("POST", "/", &[], b"").unwrap(),
        405,
        "method_not_allowed",
        "POST",
    );
    assert_eq!(
        header(&hello.call("DELETE", "/json", &[], b"").unwrap(), "allow"),
        Some("GET")
    );
    assert_error(&hello.get("/nope"), 404, "not_found", "/nope");
    let logs = &hello.store.data().logs;
    assert_eq!(logs.len(), 5);
    assert_eq!(logs[0], (Level::Info, "GET / -> 200".to_string()));

    let mut configured = Running::new("hello", &[("greeting", "moin")]);
    assert_eq!(configured.get("/").body, b"moin\n");
}

#[test]
fn kv_stores_lists_and_deletes() {
    let mut kv = Running::new("kv", &[]);
    assert_error(&kv.get("/kv/apple"), 404, "not_found", "apple");
    let r = kv.call("PUT", "/kv/apple", &[], b"red").unwrap();
    assert_eq!((r.status, json(&r)["created"].as_bool()), (201, Some(true)));
    let r = kv.call("PUT", "/kv/apple", &[], b"green").unwrap();
    assert_eq!((r.status, json(&r)["size"].as_u64()), (200, Some(5)));
    kv.call("PUT", "/kv/apricot", &[], b"").unwrap();
    kv.call("PUT", "/kv/banana", &[], b"\xff\x00").unwrap();

    let r = kv.get("/kv/apple");
    assert_eq!((r.status, r.body.as_slice()), (200, b"green".as_slice()));
    assert_eq!(header(&r, "content-type"), Some("application/octet-stream"));
    assert_eq!(kv.get("/kv/banana").body, b"\xff\x00");
    assert_eq!(
        json(&kv.get("/kv")),
        serde_json::json!(["apple", "apricot", "banana"])
    );
    assert_eq!(
        json(&kv.get("/kv?prefix=ap")),
        serde_json::json!(["apple", "apricot"])
    );
    assert_error(&kv.get("/kv?prefix=a%2Fb"), 400, "bad_request", "prefix");

    assert_eq!(
        kv.call("DELETE", "/kv/apple", &[], b"").unwrap().status,
        204
    );
    assert_error(
        &kv.call("DELETE", "/kv/apple", &[], b"").unwrap(),
        404,
        "not_found",
        "apple",
    );

    assert_error(&kv.get("/kv/a%20b"), 400, "bad_request", "'%'");
    assert_error(&kv.get("/kv/a/b"), 400, "bad_request", "'/'");
    assert_error(
        &kv.get(&format!("/kv/{}", "k".repeat(129))),
        400,
        "bad_request",
        "1 to 128",
    );
    let r = kv.call("POST", "/kv/apple", &[], b"").unwrap();
    assert_error(&r, 405, "method_not_allowed", "POST");
    assert_eq!(header(&r, "allow"), Some("GET, PUT, DELETE"));
    assert_eq!(
        header(&kv.call("PUT", "/kv", &[], b"").unwrap(), "allow"),
        Some("GET")
    );
    assert_error(&kv.get("/other"), 404, "not_found", "/other");

    for i in 0..6 {
        kv.call("PUT", &format!("/kv/k{i}"), &[], b"v").unwrap();
    }
    assert_error(
        &kv.call("PUT", "/kv/one-too-many", &[], b"v").unwrap(),
        507,
        "insufficient_storage",
        "quota",
    );
}

#[test]
fn notes_validate_create_list_update_delete() {
    let mut notes = Running::new("notes", &[]);
    assert_eq!(json(&notes.get("/notes")), serde_json::json!([]));

    let plain = notes
        .call("POST", "/notes", &[("content-type", "text/plain")], b"{}")
        .unwrap();
    assert_error(&plain, 415, "unsupported_media_type", "application/json");
    assert_error(
        &notes.send_json("POST", "/notes", "{\"title\": "),
        400,
        "bad_request",
        "malformed JSON",
    );
    assert_error(
        &notes.send_json("POST", "/notes", r#"{"body":"b"}"#),
        400,
        "bad_request",
        "missing field `title`",
    );
    assert_error(
        &notes.send_json("POST", "/notes", r#"{"title":"t","body":"b","x":1}"#),
        400,
        "bad_request",
        "unknown field `x`",
    );
    assert_error(
        &notes.send_json("POST", "/notes", r#"{"title":"","body":"b"}"#),
        400,
        "bad_request",
        "title must be 1 to 200",
    );
    let long_body = format!(r#"{{"title":"t","body":"{}"}}"#, "x".repeat(10_001));
    assert_error(
        &notes.send_json("POST", "/notes", &long_body),
        400,
        "bad_request",
        "at most 10000",
    );
    assert_error(
        &notes.send_json("POST", "/notes", r#"{"title":"t","body":"","tags":["A"]}"#),
        400,
        "bad_request",
        "tags[0]",
    );
    assert_error(
        &notes.send_json("POST", "/notes", &format!("\"{}\"", "x".repeat(70_000))),
        413,
        "payload_too_large",
        "65536",
    );

    let r = notes.send_json(
        "POST",
        "/notes",
        r#"{"title":"milk","body":"2 litres","tags":["shopping"]}"#,
    );
    assert_eq!(r.status, 201);
    assert_eq!(header(&r, "location"), Some("/notes/1"));
    let first = json(&r);
    assert_eq!(
        (first["id"].as_u64(), first["created"].as_str()),
        (Some(1), Some("2026-11-18T11:06:40.250Z"))
    );
    let r = notes.send_json("POST", "/notes", r#"{"title":"call bob","body":""}"#);
    assert_eq!(
        (r.status, json(&r)["id"].as_u64(), json(&r)["tags"].clone()),
        (201, Some(2), serde_json::json!([]))
    );

    assert_eq!(json(&notes.get("/notes")).as_array().unwrap().len(), 2);
    let tagged = json(&notes.get("/notes?tag=shopping"));
    assert_eq!(
        tagged
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1]
    );
    assert_eq!(json(&notes.get("/notes/1")), first);

    let r = notes.send_json("PATCH", "/notes/1", r#"{"title":"oat milk"}"#);
    assert_eq!(r.status, 200);
    assert_eq!(
        (json(&r)["title"].as_str(), json(&r)["body"].as_str()),
        (Some("oat milk"), Some("2 litres"))
    );
    assert_error(
        &notes.send_json("PATCH", "/notes/1", r#"{"tags":"x"}"#),
        400,
        "bad_request",
        "invalid type",
    );
    assert_error(
        &notes.send_json("PATCH", "/notes/9", r#"{"title":"x"}"#),
        404,
        "not_found",
        "9",
    );
    assert_error(&notes.get("/notes/abc"), 404, "not_found", "abc");
    assert_error(&notes.get("/notes/01"), 404, "not_found", "01");
    assert_eq!(
        header(&notes.call("PUT", "/notes/1", &[], b"").unwrap(), "allow"),
        Some("GET, PATCH, DELETE")
    );
    assert_eq!(
        header(&notes.call("DELETE", "/notes", &[], b"").unwrap(), "allow"),
        Some("GET, POST")
    );

    assert_eq!(
        notes.call("DELETE", "/notes/1", &[], b"").unwrap().status,
        204
    );
    assert_error(&notes.get("/notes/1"), 404, "not_found", "1");
    // Ids are never reused.
    assert_eq!(
        json(&notes.send_json("POST", "/notes", r#"{"title":"t","body":""}"#))["id"],
        3
    );
}

#[test]
fn trap_traps_then_a_new_instance_serves() {
    let mut trap = Running::new("trap", &[]);
    assert_eq!(trap.get("/ok").body, b"ok\n");
    let err = trap.call("GET", "/", &[], b"").unwrap_err();
    assert_eq!(
        err.downcast_ref::<Trap>(),
        Some(&Trap::UnreachableCodeReached),
        "{err:?}"
    );
    trap.reinstantiate();
    assert_eq!(trap.get("/ok").status, 200);
}

#[test]
fn spin_is_interrupted_at_its_deadline() {
    let mut spin = Running::new("spin", &[]);
    spin.store.set_epoch_deadline(1);
    let engine = spin.engine.clone();
    let ticker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        engine.increment_epoch();
    });
    let err = spin.call("GET", "/", &[], b"").unwrap_err();
    ticker.join().unwrap();
    assert_eq!(
        err.downcast_ref::<Trap>(),
        Some(&Trap::Interrupt),
        "{err:?}"
    );
    spin.reinstantiate();
    assert_eq!(spin.get("/ok").status, 200);
}

#[test]
fn membomb_hits_the_memory_limit_without_harm() {
    let mut bomb = Running::new("membomb", &[]);
    let err = bomb.call("GET", "/", &[], b"").unwrap_err();
    assert_eq!(
        err.downcast_ref::<Trap>(),
        Some(&Trap::UnreachableCodeReached),
        "{err:?}"
    );
    let logs = &bomb.store.data().logs;
    assert!(
        logs.iter()
            .any(|(l, m)| *l == Level::Error && m.contains("memory allocation")),
        "{logs:?}"
    );

    bomb.reinstantiate();
    let r = bomb.get("/grow");
    assert_eq!(r.status, 507);
    let memory = json(&r)["memory_bytes"].as_u64().unwrap();
    assert!(memory <= 16 << 20 && memory > 15 << 20, "{memory}");
    bomb.reinstantiate();
    assert_eq!(bomb.get("/ok").status, 200);
}
