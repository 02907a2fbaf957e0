//! The host side of the `tuk:service` world (`wit/service.wit`), as on the tuk kernel
//! (`host-kernel/src/wasm/host.rs`, mirrored line for line where the platform allows): the
//! imports a component may call (log, kv, config, clock, random) and the conversion of HTTP
//! requests and responses. Same quotas, same sanitising of log lines, same caps.
//!
//! What differs is only where the platform's services come from: the clocks are Linux's
//! (CLOCK_REALTIME, CLOCK_BOOTTIME) instead of the TSC, random bytes come from getrandom(2)
//! instead of RDRAND.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::component::{HasSelf, Linker};

use crate::runtime::Limiter;
use crate::sys;

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "service",
});

use self::tuk::service::log::Level;
use self::tuk::service::types::{Request as WitRequest, Response as WitResponse};

/// Quotas on a component's key-value data (the kernel's values).
const KV_MAX_KEYS: usize = 4096;
const KV_MAX_KEY_BYTES: usize = 256;
const KV_MAX_TOTAL_BYTES: usize = 4 << 20;
const LOG_MAX_BYTES: usize = 2048;
const RANDOM_MAX_BYTES: u32 = 64 * 1024;

/// A component's private key-value data (outlives its instances).
#[derive(Default)]
pub struct KvStore {
    map: BTreeMap<String, Vec<u8>>,
    bytes: usize,
}

impl KvStore {
    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        if key.is_empty() || key.len() > KV_MAX_KEY_BYTES {
            return Err(format!("keys are 1 to {KV_MAX_KEY_BYTES} bytes"));
        }
        let old = self.map.get(&key).map_or(0, |v| key.len() + v.len());
        let new_total = self.bytes - old + key.len() + value.len();
        if new_total > KV_MAX_TOTAL_BYTES {
            return Err(format!(
                "quota exceeded: at most {KV_MAX_TOTAL_BYTES} bytes of keys and values"
            ));
        }
        if old == 0 && self.map.len() >= KV_MAX_KEYS {
            return Err(format!("quota exceeded: at most {KV_MAX_KEYS} keys"));
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
}

impl HostState {
    pub fn new(
        name: String,
        kv: KvStore,
        config: BTreeMap<String, String>,
        limits: Limiter,
    ) -> Self {
        HostState {
            name,
            kv,
            config,
            limits,
        }
    }
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Service::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

impl tuk::service::types::Host for HostState {}

impl tuk::service::log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
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
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (t.as_secs(), t.subsec_nanos())
    }
    fn monotonic_ns(&mut self) -> u64 {
        sys::since_boot().as_nanos() as u64
    }
}

impl tuk::service::random::Host for HostState {
    fn get_random_bytes(&mut self, len: u32) -> Vec<u8> {
        let mut out = vec![0; len.min(RANDOM_MAX_BYTES) as usize];
        sys::random_bytes(&mut out);
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
/// dropped here; tuk-http drops names or values that could break framing.
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
