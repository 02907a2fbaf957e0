//! The host side of the `tuk:service` world: the imports a component may call (log, kv, config,
//! clock, random) and the conversion of HTTP requests and responses.
//!
//! Contract: the quotas below are part of what a component can observe (the kv error strings
//! name them); both platforms serve components with exactly these.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::tuk;
use crate::bindings::tuk::service::log::Level;
use crate::bindings::tuk::service::types::{Request as WitRequest, Response as WitResponse};
use crate::bindings::Service;
use crate::dispatch::Limiter;
use crate::Platform;

/// Most keys a component may store.
pub const KV_MAX_KEYS: usize = 4096;
/// Longest key, in bytes (keys are 1 to this many bytes).
pub const KV_MAX_KEY_BYTES: usize = 256;
/// Most bytes of keys and values together a component may store.
pub const KV_MAX_TOTAL_BYTES: usize = 4 << 20;
/// Longest log line a component may write, in bytes; longer ones are cut and end in `…`.
pub const LOG_MAX_BYTES: usize = 2048;
/// Most random bytes one `get-random-bytes` call returns.
pub const RANDOM_MAX_BYTES: u32 = 64 * 1024;

/// A component's private key-value data (outlives its instances, and by default a runtime
/// publish of a new version: the new instance starts from a copy).
#[derive(Clone, Default)]
pub struct KvStore {
    map: BTreeMap<String, Vec<u8>>,
    bytes: usize,
}

impl KvStore {
    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        if key.is_empty() || key.len() > KV_MAX_KEY_BYTES {
            return Err(alloc::format!("keys are 1 to {KV_MAX_KEY_BYTES} bytes"));
        }
        let old = self.map.get(&key).map_or(0, |v| key.len() + v.len());
        let new_total = self.bytes - old + key.len() + value.len();
        if new_total > KV_MAX_TOTAL_BYTES {
            return Err(alloc::format!(
                "quota exceeded: at most {KV_MAX_TOTAL_BYTES} bytes of keys and values"
            ));
        }
        if old == 0 && self.map.len() >= KV_MAX_KEYS {
            return Err(alloc::format!("quota exceeded: at most {KV_MAX_KEYS} keys"));
        }
        self.bytes = new_total;
        self.map.insert(key, value);
        Ok(())
    }

    fn delete(&mut self, key: &str) -> bool {
        match self.map.remove(key) {
            Some(v) => {
                self.bytes -= key.len() + v.len();
                true
            }
            None => false,
        }
    }
}

/// The data of one instance's `Store`.
pub struct HostState {
    pub name: String,
    pub kv: KvStore,
    pub config: BTreeMap<String, String>,
    pub limits: Limiter,
    platform: &'static dyn Platform,
}

impl HostState {
    pub fn new(
        name: String,
        kv: KvStore,
        config: BTreeMap<String, String>,
        limits: Limiter,
        platform: &'static dyn Platform,
    ) -> Self {
        HostState {
            name,
            kv,
            config,
            limits,
            platform,
        }
    }
}

/// Adds the world's imports to `linker`.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Service::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

impl tuk::service::types::Host for HostState {}

/// A component's log line as it reaches the console: control characters become spaces, and
/// past [`LOG_MAX_BYTES`] it is cut at a character boundary and ends in `…`.
fn sanitize(message: String) -> String {
    let mut clean: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.len() > LOG_MAX_BYTES {
        let mut cut = LOG_MAX_BYTES;
        while !clean.is_char_boundary(cut) {
            cut -= 1;
        }
        clean.truncate(cut);
        clean.push('…');
    }
    clean
}

impl tuk::service::log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let clean = sanitize(message);
        let level = match level {
            Level::Trace => log::Level::Trace,
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        };
        log::log!(target: "component", level, "[{}] {clean}", self.name);
    }
}

impl tuk::service::kv::Host for HostState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.kv.map.get(&key).cloned()
    }
    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.kv.set(key, value)
    }
    fn delete(&mut self, key: String) -> bool {
        self.kv.delete(&key)
    }
    fn list_keys(&mut self, prefix: String) -> Vec<String> {
        self.kv
            .map
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl tuk::service::config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }
}

impl tuk::service::clock::Host for HostState {
    fn now(&mut self) -> (u64, u32) {
        self.platform.wall_clock()
    }
    fn monotonic_ns(&mut self) -> u64 {
        self.platform.monotonic_ns()
    }
}

impl tuk::service::random::Host for HostState {
    fn get_random_bytes(&mut self, len: u32) -> Vec<u8> {
        let mut out = vec![0; len.min(RANDOM_MAX_BYTES) as usize];
        self.platform.random_bytes(&mut out);
        out
    }
}

/// Builds the component's view of a request: `path` is the part below its prefix.
pub fn to_wit_request(path: &str, req: &tuk_http::Request) -> WitRequest {
    WitRequest {
        method: req.method.clone(),
        path: path.into(),
        query: req.query.clone(),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        body: req.body.clone(),
    }
}

/// Turns the component's answer into an HTTP response. Header values that are not text are
/// dropped here (logged at debug level); tuk-http drops names or values that could break
/// framing.
pub fn from_wit_response(resp: WitResponse) -> tuk_http::Response {
    let mut out = tuk_http::Response::new(resp.status);
    out.body = resp.body;
    for (name, value) in resp.headers {
        match String::from_utf8(value) {
            Ok(v) => out.headers.push((name, v)),
            Err(_) => log::debug!("dropping a non-UTF-8 value of response header {name}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;

    use super::*;
    use crate::bindings::tuk::service::clock::Host as _;
    use crate::bindings::tuk::service::kv::Host as KvHost;
    use crate::bindings::tuk::service::random::Host as _;
    use crate::dispatch::Limits;

    struct Fake;

    impl Platform for Fake {
        fn wall_clock(&self) -> (u64, u32) {
            (1_700_000_000, 5)
        }
        fn monotonic_ns(&self) -> u64 {
            42
        }
        fn random_bytes(&self, out: &mut [u8]) {
            out.fill(0xa5);
        }
    }

    fn state() -> HostState {
        let mut config = BTreeMap::new();
        config.insert("greeting".to_string(), "hi".to_string());
        HostState::new(
            "t".into(),
            KvStore::default(),
            config,
            Limiter::new(&Limits::default()),
            &Fake,
        )
    }

    #[test]
    fn kv_set_get_delete_list() {
        let mut s = state();
        KvHost::set(&mut s, "a/1".into(), b"x".to_vec()).unwrap();
        KvHost::set(&mut s, "a/2".into(), b"yy".to_vec()).unwrap();
        KvHost::set(&mut s, "b".into(), b"z".to_vec()).unwrap();
        assert_eq!(KvHost::get(&mut s, "a/2".into()), Some(b"yy".to_vec()));
        assert_eq!(KvHost::list_keys(&mut s, "a/".into()), ["a/1", "a/2"]);
        assert_eq!(KvHost::list_keys(&mut s, "".into()).len(), 3);
        assert_eq!(s.kv.bytes, 3 + 1 + 3 + 2 + 1 + 1);
        assert!(KvHost::delete(&mut s, "a/1".into()));
        assert!(!KvHost::delete(&mut s, "a/1".into()));
        assert_eq!(s.kv.bytes, 3 + 2 + 1 + 1);
        // Overwriting counts the new value only.
        KvHost::set(&mut s, "b".into(), b"zzzz".to_vec()).unwrap();
        assert_eq!(s.kv.bytes, 3 + 2 + 1 + 4);
    }

    #[test]
    fn kv_key_length() {
        let mut kv = KvStore::default();
        assert_eq!(
            kv.set(String::new(), vec![]).unwrap_err(),
            "keys are 1 to 256 bytes"
        );
        assert_eq!(
            kv.set("k".repeat(257), vec![]).unwrap_err(),
            "keys are 1 to 256 bytes"
        );
        kv.set("k".repeat(256), vec![]).unwrap();
    }

    #[test]
    fn kv_byte_quota() {
        let mut kv = KvStore::default();
        kv.set("a".into(), vec![0; KV_MAX_TOTAL_BYTES - 1]).unwrap();
        assert_eq!(
            kv.set("b".into(), vec![0]).unwrap_err(),
            "quota exceeded: at most 4194304 bytes of keys and values"
        );
        // Replacing a value frees the old one's bytes first.
        kv.set("a".into(), vec![0; KV_MAX_TOTAL_BYTES - 2]).unwrap();
        kv.set("b".into(), vec![]).unwrap();
        assert_eq!(kv.bytes, KV_MAX_TOTAL_BYTES);
    }

    #[test]
    fn kv_key_quota() {
        let mut kv = KvStore::default();
        for i in 0..KV_MAX_KEYS {
            kv.set(alloc::format!("{i}"), vec![]).unwrap();
        }
        assert_eq!(
            kv.set("new".into(), vec![]).unwrap_err(),
            "quota exceeded: at most 4096 keys"
        );
        // An existing key may still be overwritten.
        kv.set("7".into(), vec![1]).unwrap();
    }

    #[test]
    fn log_lines_are_sanitised_and_capped() {
        assert_eq!(sanitize("a\nb\tc\u{7f}".into()), "a b c ");
        let long = sanitize("x".repeat(LOG_MAX_BYTES + 10));
        assert_eq!(long.len(), LOG_MAX_BYTES + '…'.len_utf8());
        assert!(long.ends_with('…'));
        // Cut at a character boundary: 'é' is two bytes and straddles the limit.
        let s = sanitize(alloc::format!("{}é", "x".repeat(LOG_MAX_BYTES - 1)));
        assert_eq!(s, alloc::format!("{}…", "x".repeat(LOG_MAX_BYTES - 1)));
        assert_eq!(sanitize("short".into()), "short");
    }

    #[test]
    fn clock_config_random_come_from_the_platform() {
        let mut s = state();
        assert_eq!(s.now(), (1_700_000_000, 5));
        assert_eq!(tuk::service::clock::Host::monotonic_ns(&mut s), 42);
        assert_eq!(
            tuk::service::config::Host::get(&mut s, "greeting".into()),
            Some("hi".into())
        );
        assert_eq!(tuk::service::config::Host::get(&mut s, "x".into()), None);
        assert_eq!(s.get_random_bytes(3), [0xa5; 3]);
        assert_eq!(s.get_random_bytes(0), [0u8; 0]);
        assert_eq!(
            s.get_random_bytes(u32::MAX).len(),
            RANDOM_MAX_BYTES as usize
        );
    }

    #[test]
    fn request_conversion() {
        let req = tuk_http::Request {
            method: "PUT".into(),
            target: "/kv/items/a?x=1".into(),
            path: "/kv/items/a".into(),
            query: Some("x=1".into()),
            version: tuk_http::Version::Http11,
            headers: vec![tuk_http::Header {
                name: "X-Thing".into(),
                value: b"V".to_vec(),
            }],
            body: b"body".to_vec(),
        };
        let wit = to_wit_request("/items/a", &req);
        assert_eq!(wit.method, "PUT");
        assert_eq!(wit.path, "/items/a");
        assert_eq!(wit.query.as_deref(), Some("x=1"));
        assert_eq!(wit.headers, [("x-thing".to_string(), b"V".to_vec())]);
        assert_eq!(wit.body, b"body");
    }

    #[test]
    fn response_conversion_drops_non_utf8_values() {
        let resp = WitResponse {
            status: 201,
            headers: vec![
                ("content-type".into(), b"text/plain".to_vec()),
                ("x-bin".into(), vec![0xff, 0xfe]),
            ],
            body: b"ok".to_vec(),
        };
        let out = from_wit_response(resp);
        assert_eq!(out.status, 201);
        assert_eq!(out.body, b"ok");
        assert_eq!(
            out.headers,
            [("content-type".to_string(), "text/plain".to_string())]
        );
    }
}
