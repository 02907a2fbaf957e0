//! The Wasm component host: std wasmtime with the component model, configured by
//! `tuk_engine::configure` exactly as the tuk kernel's engine. The `tuk:service` world's imports
//! and the request dispatch into a component are `tuk_service_host`'s, the very code the kernel
//! runs: each component has one live instance in its own `Store` with its own limits (linear
//! memory, tables, instances) and a per-request deadline enforced by epoch interruption; a trap
//! answers 500, running past the deadline 503, and the instance is rebuilt from the loaded
//! code; the component's kv data survives the rebuild.
//!
//! What this file supplies is the platform: Linux's clocks (CLOCK_REALTIME, CLOCK_BOOTTIME)
//! instead of the TSC, getrandom(2) instead of RDRAND, and a ticker thread that advances the
//! engine's epoch every `tuk_engine::EPOCH_TICK_MS` while Wasm runs (the kernel uses its LAPIC
//! timer for that, also only while Wasm runs).
//!
//! Not here, because the baseline has no equivalent: verification of signed bundles, the vTPM
//! and its event log, run-time re-measurement (tuk's integrity monitor) and W^X page audits.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tuk_http::{Request, Response};
use tuk_service_host::{EpochTimer, HostState, Platform};
pub use tuk_service_host::{Instance, Limits, LoadError};
use wasmtime::component::{Component, Linker};
use wasmtime::Engine;

use crate::sys;

/// What Linux supplies to components (`tuk_service_host`).
struct Linux;

impl Platform for Linux {
    fn wall_clock(&self) -> (u64, u32) {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (t.as_secs(), t.subsec_nanos())
    }

    fn monotonic_ns(&self) -> u64 {
        sys::since_boot().as_nanos() as u64
    }

    fn random_bytes(&self, out: &mut [u8]) {
        sys::random_bytes(out);
    }
}

/// Advances the engine's epoch every `EPOCH_TICK_MS` while Wasm runs, and sleeps otherwise
/// (an idle guest gets no timer wake-ups from it, as on tuk).
struct Ticker {
    running: Mutex<bool>,
    wake: Condvar,
}

impl Ticker {
    fn spawn(engine: Engine) -> std::io::Result<Arc<Ticker>> {
        let ticker = Arc::new(Ticker {
            running: Mutex::new(false),
            wake: Condvar::new(),
        });
        let t = ticker.clone();
        thread::Builder::new()
            .name("epoch".into())
            .spawn(move || loop {
                let mut running = t.running.lock().unwrap_or_else(|e| e.into_inner());
                while !*running {
                    running = t.wake.wait(running).unwrap_or_else(|e| e.into_inner());
                }
                drop(running);
                thread::sleep(Duration::from_millis(tuk_engine::EPOCH_TICK_MS));
                if *t.running.lock().unwrap_or_else(|e| e.into_inner()) {
                    engine.increment_epoch();
                }
            })?;
        Ok(ticker)
    }

    fn set(&self, on: bool) {
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = on;
        if on {
            self.wake.notify_one();
        }
    }
}

impl EpochTimer for Ticker {
    fn start(&self) {
        self.set(true);
    }

    fn stop(&self) {
        self.set(false);
    }
}

/// How to make code this host loads (completes "recompile it with …").
const RECOMPILE: &str = "`tuk-linux-build compile` (scripts/build-baseline)";

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, code: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires the bytes to be compiled code it produced (it checks the
    // format, version and engine settings, but not the machine code itself). They come from
    // the initramfs, which `tuk-linux-build compile` filled on the operator's host — the same
    // trust the tuk kernel places in its boot pack.
    unsafe { Component::deserialize(engine, code) }
}

/// The runtime: the engine, the import linker and the deployed components by name.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    ticker: Arc<Ticker>,
    components: BTreeMap<String, Instance>,
}

impl Runtime {
    pub fn new() -> Result<Runtime, String> {
        let engine = Engine::new(&tuk_engine::config()).map_err(|e| format!("wasm engine: {e}"))?;
        let ticker =
            Ticker::spawn(engine.clone()).map_err(|e| format!("epoch ticker thread: {e}"))?;
        let linker = tuk_service_host::new_linker(&engine)?;
        Ok(Runtime {
            engine,
            linker,
            ticker,
            components: BTreeMap::new(),
        })
    }

    /// Loads compiled component code and instantiates it under `name`.
    pub fn deploy(
        &mut self,
        name: &str,
        code: &[u8],
        limits: Limits,
        config: BTreeMap<String, String>,
    ) -> Result<&Instance, LoadError> {
        let component = deserialize(&self.engine, code).map_err(|e| LoadError::Deserialize {
            error: format!("{e:#}"),
            recompile: RECOMPILE,
        })?;
        let pre = tuk_service_host::link(&self.linker, &component)?;
        let mut deployed = Instance::new(name, pre, code.len(), limits, config, &Linux);
        deployed.instantiate().map_err(LoadError::Instantiate)?;
        self.components.insert(name.into(), deployed);
        Ok(&self.components[name])
    }

    pub fn components(&self) -> impl Iterator<Item = &Instance> {
        self.components.values()
    }

    /// Routes a request to component `name`; `None` if no such component is deployed.
    pub fn dispatch(&mut self, name: &str, path: &str, req: &Request) -> Option<Response> {
        let deployed = self.components.get_mut(name)?;
        Some(deployed.handle(path, req, &*self.ticker))
    }
}
