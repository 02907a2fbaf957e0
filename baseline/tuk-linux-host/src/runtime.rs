//! The Wasm component host: std wasmtime with the component model, configured by
//! `tuk_engine::configure` exactly as the tuk kernel's engine (host-kernel/src/wasm/mod.rs is
//! the model; this file keeps its structure and behaviour).
//!
//! Each component has one live instance in its own `Store` with its own limits (linear memory,
//! tables, instances) and a per-request deadline enforced by epoch interruption: while Wasm
//! runs, a ticker thread advances the engine's epoch every `tuk_engine::EPOCH_TICK_MS` (the
//! kernel uses its LAPIC timer for that, also only while Wasm runs). A trap answers 500,
//! running past the deadline 503, and the instance is rebuilt from the loaded code; the
//! component's kv data survives the rebuild.
//!
//! Not here, because the baseline has no equivalent: verification of signed bundles, the vTPM
//! and its event log, run-time re-measurement (tuk's integrity monitor) and W^X page audits.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use tuk_http::{Request, Response};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};

use crate::host::{self, HostState, KvStore, Service, ServicePre};

/// Per-component limits, from the deployment metadata (the kernel's defaults).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub memory_bytes: usize,
    pub deadline_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 16 << 20,
            deadline_ms: tuk_engine::DEFAULT_DEADLINE_MS,
        }
    }
}

/// Counters for one component (reported by `/_tuk/components`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ComponentStats {
    pub requests: u64,
    pub traps: u64,
    pub deadline_exceeded: u64,
    pub instantiations: u64,
}

/// The store's resource limiter (the kernel also records the largest table it granted, for
/// its integrity monitor; the baseline has none).
pub struct Limiter {
    inner: StoreLimits,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.memory_growing(current, desired, maximum)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Elements any one table may have (also the bound for tables declaring no maximum).
pub const TABLE_ELEMENTS: usize = 100_000;

fn limits_for(limits: &Limits) -> Limiter {
    Limiter {
        inner: StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .instances(32)
            .tables(32)
            .memories(8)
            .table_elements(TABLE_ELEMENTS)
            .trap_on_grow_failure(false)
            .build(),
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

struct Live {
    store: Store<HostState>,
    service: Service,
}

/// A loaded component and its live instance (if it could be instantiated).
pub struct Deployed {
    pub name: String,
    pub limits: Limits,
    pub stats: ComponentStats,
    /// Bytes of compiled code (the artifact as loaded).
    pub code_bytes: usize,
    pre: ServicePre<HostState>,
    live: Option<Live>,
    /// State carried across rebuilds (kv data, configuration) while no instance exists.
    parked: Option<(KvStore, BTreeMap<String, String>)>,
    /// Why the component is not serving, if it is not.
    pub broken: Option<String>,
}

#[derive(Debug)]
pub enum LoadError {
    Deserialize(String),
    Link(String),
    Instantiate(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Deserialize(e) => write!(
                f,
                "cannot load the compiled component ({e}); recompile it with `tuk-linux-build compile` (scripts/build-baseline)"
            ),
            Self::Link(e) => write!(f, "the component does not fit the tuk:service world: {e}"),
            Self::Instantiate(e) => write!(f, "instantiation failed: {e}"),
        }
    }
}

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
    components: BTreeMap<String, Deployed>,
}

impl Runtime {
    pub fn new() -> Result<Runtime, String> {
        let engine = Engine::new(&tuk_engine::config()).map_err(|e| format!("wasm engine: {e}"))?;
        let ticker =
            Ticker::spawn(engine.clone()).map_err(|e| format!("epoch ticker thread: {e}"))?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| format!("wasm linker: {e}"))?;
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
    ) -> Result<&Deployed, LoadError> {
        let component = deserialize(&self.engine, code)
            .map_err(|e| LoadError::Deserialize(format!("{e:#}")))?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let pre = ServicePre::new(instance_pre).map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let mut deployed = Deployed {
            name: name.into(),
            limits,
            stats: ComponentStats::default(),
            code_bytes: code.len(),
            pre,
            live: None,
            parked: Some((KvStore::default(), config)),
            broken: None,
        };
        deployed.instantiate().map_err(LoadError::Instantiate)?;
        self.components.insert(name.into(), deployed);
        Ok(&self.components[name])
    }

    pub fn components(&self) -> impl Iterator<Item = &Deployed> {
        self.components.values()
    }

    /// Routes a request to component `name`; `None` if no such component is deployed.
    pub fn dispatch(&mut self, name: &str, path: &str, req: &Request) -> Option<Response> {
        let deployed = self.components.get_mut(name)?;
        Some(deployed.handle(path, req, &self.ticker))
    }
}

impl Deployed {
    fn instantiate(&mut self) -> Result<(), String> {
        let (kv, config) = self.parked.take().unwrap_or_default();
        let state = HostState::new(self.name.clone(), kv, config, limits_for(&self.limits));
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(u64::MAX / 2);
        self.stats.instantiations += 1;
        match self.pre.instantiate(&mut store) {
            Ok(service) => {
                self.live = Some(Live { store, service });
                self.broken = None;
                Ok(())
            }
            Err(e) => {
                let data = store.into_data();
                self.parked = Some((data.kv, data.config));
                let reason = format!("{e:#}");
                self.broken = Some(reason.clone());
                Err(reason)
            }
        }
    }

    /// Drops the current instance (keeping kv and config) and builds a fresh one.
    fn rebuild(&mut self) {
        if let Some(live) = self.live.take() {
            let data = live.store.into_data();
            self.parked = Some((data.kv, data.config));
        }
        if let Err(e) = self.instantiate() {
            log::error!("component {}: re-instantiation failed: {e}", self.name);
        }
    }

    fn handle(&mut self, path: &str, req: &Request, ticker: &Ticker) -> Response {
        self.stats.requests += 1;
        let Some(live) = self.live.as_mut() else {
            let reason = self.broken.as_deref().unwrap_or("not instantiated");
            return Response::error(
                503,
                &format!("component {} is unavailable: {reason}", self.name),
            );
        };
        let wit_req = host::to_wit_request(path, req);
        let ticks = self
            .limits
            .deadline_ms
            .div_ceil(tuk_engine::EPOCH_TICK_MS)
            .max(1);
        live.store.set_epoch_deadline(ticks);
        ticker.set(true);
        let result = live
            .service
            .tuk_service_handler()
            .call_handle(&mut live.store, &wit_req);
        ticker.set(false);
        live.store.set_epoch_deadline(u64::MAX / 2);
        match result {
            Ok(resp) => host::from_wit_response(resp),
            Err(e) => {
                let interrupted = e.downcast_ref::<Trap>() == Some(&Trap::Interrupt);
                let response = if interrupted {
                    self.stats.deadline_exceeded += 1;
                    log::warn!(
                        "component {}: request exceeded its {} ms deadline; rebuilding the instance",
                        self.name,
                        self.limits.deadline_ms
                    );
                    Response::error(
                        503,
                        &format!(
                            "component {} exceeded its {} ms deadline",
                            self.name, self.limits.deadline_ms
                        ),
                    )
                } else {
                    self.stats.traps += 1;
                    let summary = trap_summary(&e);
                    log::warn!(
                        "component {} trapped: {summary}; rebuilding the instance",
                        self.name
                    );
                    log::debug!("component {}: {e:?}", self.name);
                    Response::error(500, &format!("component {} trapped: {summary}", self.name))
                };
                self.rebuild();
                response
            }
        }
    }
}

/// What went wrong, without wasmtime's backtrace.
fn trap_summary(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<Trap>() {
        Some(trap) => format!("{trap}"),
        None => format!("{}", e.root_cause()),
    }
}

/// Parses a deployment's `key=value` metadata into limits and configuration (the keys of
/// tuk's boot pack: `memory_limit_bytes`, `deadline_ms`, `config.<key>`).
pub fn deployment_from_meta<'a>(
    meta: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<(Limits, BTreeMap<String, String>), String> {
    let mut limits = Limits::default();
    let mut config = BTreeMap::new();
    for (k, v) in meta {
        match k {
            "memory_limit_bytes" => {
                limits.memory_bytes = v
                    .parse()
                    .map_err(|_| format!("memory_limit_bytes={v} is not a number of bytes"))?
            }
            "deadline_ms" => {
                limits.deadline_ms = v.parse().ok().filter(|d| *d > 0).ok_or_else(|| {
                    format!("deadline_ms={v} is not a positive number of milliseconds")
                })?
            }
            _ => match k.strip_prefix("config.") {
                Some(key) => {
                    config.insert(key.into(), v.into());
                }
                None => log::warn!("ignoring unknown deployment key `{k}`"),
            },
        }
    }
    Ok((limits, config))
}
