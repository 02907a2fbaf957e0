//! The Wasm component host: wasmtime's no_std runtime with the component model.
//!
//! Each deployed component has one live instance in its own `Store`, with its own limits
//! (linear memory, tables, instances) and a per-request deadline enforced by epoch
//! interruption: while Wasm runs, the LAPIC timer ticks every `tuk_engine::EPOCH_TICK_MS` and
//! its interrupt advances the engine's epoch. Whatever a component does, it fails alone:
//! - a trap answers 500 and the instance is rebuilt from the already-loaded code;
//! - running past the deadline answers 503 and the instance is rebuilt;
//! - growing memory past its limit makes `memory.grow` fail inside the component (which then
//!   usually traps: 500, rebuilt).
//!
//! The component's key-value data lives outside the instance and survives the rebuild.

mod host;
#[allow(unsafe_code)]
mod platform;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;

use spin::Once;
use tuk_http::{Request, Response};
use wasmtime::component::Linker;
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};

use self::host::{HostState, KvStore, Service, ServicePre};
use crate::arch;

static ENGINE: Once<Engine> = Once::new();

/// Called by the timer interrupt: advances the epoch (an atomic add; no locks, no allocation).
fn epoch_tick() {
    if let Some(engine) = ENGINE.get() {
        engine.increment_epoch();
    }
}

/// Per-component limits, from the deployment metadata.
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

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Deserialize(e) => write!(
                f,
                "cannot load the compiled component ({e}); recompile it with this tuk version's `tuk compile`"
            ),
            Self::Link(e) => write!(f, "the component does not fit the tuk:service world: {e}"),
            Self::Instantiate(e) => write!(f, "instantiation failed: {e}"),
        }
    }
}

fn limits_for(limits: &Limits) -> StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size(limits.memory_bytes)
        .instances(32)
        .tables(32)
        .memories(8)
        .table_elements(100_000)
        .trap_on_grow_failure(false)
        .build()
}

/// The runtime: the engine, the import linker and the deployed components by name.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    components: BTreeMap<String, Deployed>,
}

impl Runtime {
    pub fn new() -> Result<Runtime, String> {
        let engine =
            Engine::new(&platform::engine_config()).map_err(|e| format!("wasm engine: {e}"))?;
        let engine = ENGINE.call_once(|| engine).clone();
        arch::set_timer_hook(epoch_tick);
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| format!("wasm linker: {e}"))?;
        Ok(Runtime {
            engine,
            linker,
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
        let component = platform::load_component(&self.engine, code)
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
        Some(deployed.handle(path, req))
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

    fn handle(&mut self, path: &str, req: &Request) -> Response {
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
        arch::start_periodic_timer(tuk_engine::EPOCH_TICK_MS * 1000);
        let result = live
            .service
            .tuk_service_handler()
            .call_handle(&mut live.store, &wit_req);
        arch::stop_timer();
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

/// What went wrong, without wasmtime's backtrace: the trap ("wasm `unreachable` instruction
/// executed") or the root cause of another error.
fn trap_summary(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<Trap>() {
        Some(trap) => format!("{trap}"),
        None => format!("{}", e.root_cause()),
    }
}

/// Parses a deployment's `key=value` metadata into limits and configuration.
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
