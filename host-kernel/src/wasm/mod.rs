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
//!
//! Integrity: each deployment keeps the verified code bytes it was loaded from, the address
//! and SHA-256 of its loaded code image (taken right after loading), the invariants derived
//! from its signed `.wasm` (`tuk-invariants`), and the linear memories its instance uses
//! (`memory::capture`). [`Deployed::check`] re-measures all of that; [`Deployed::reload`]
//! rebuilds the whole deployment from the verified bytes (`crate::integrity` decides when).

mod host;
#[allow(unsafe_code)]
mod memory;
#[allow(unsafe_code)]
mod platform;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use spin::Once;
use tuk_http::{Request, Response};
use tuk_invariants::Invariants;
use tuk_measure::{hex, sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};

use self::host::{HostState, KvStore, Service, ServicePre};
pub use self::memory::MemoryCell;
use crate::arch;
use crate::integrity::{Record, Violation};

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

/// The store's resource limiter: wasmtime's `StoreLimits`, plus the largest table size it
/// ever granted (the monitor checks it against the declared maximum).
pub struct Limiter {
    inner: StoreLimits,
    pub table_peak: usize,
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
        let granted = self.inner.table_growing(current, desired, maximum)?;
        if granted {
            self.table_peak = self.table_peak.max(desired);
        }
        Ok(granted)
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

struct Live {
    store: Store<HostState>,
    service: Service,
    /// The instance's linear memories, in creation order.
    memories: Vec<Arc<MemoryCell>>,
}

/// Where a loaded code image is and what it hashed to right after loading.
#[derive(Clone, Debug)]
pub struct CodeImage {
    pub addr: u64,
    pub len: u64,
    pub sha256: [u8; 32],
    /// `integrity::fingerprint` of the image, taken with the SHA-256.
    pub fingerprint: u128,
    /// Whether the image is byte-for-byte the verified (signed) code: wasmtime loads the
    /// artifact as is when it needs no relocations.
    pub matches_artifact: bool,
}

/// A loaded component and its live instance (if it could be instantiated).
pub struct Deployed {
    pub name: String,
    pub limits: Limits,
    pub stats: ComponentStats,
    /// Bytes of compiled code (the artifact as loaded).
    pub code_bytes: usize,
    /// The verified compiled code: re-instantiation after a violation starts from these bytes.
    code: Vec<u8>,
    /// What the signed `.wasm` declares (empty in unsigned mode: no `.wasm` travels).
    pub invariants: Invariants,
    pub image: CodeImage,
    component: Component,
    pre: ServicePre<HostState>,
    live: Option<Live>,
    /// State carried across rebuilds (kv data, configuration) while no instance exists.
    parked: Option<(KvStore, BTreeMap<String, String>)>,
    /// Why the component is not serving, if it is not.
    pub broken: Option<String>,
    /// The integrity monitor's record for this component.
    pub integrity: Record,
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
        table_peak: 0,
    }
}

/// Loads compiled code and links it: the component and its pre-instantiated form.
fn load(
    engine: &Engine,
    linker: &Linker<HostState>,
    code: &[u8],
) -> Result<(Component, ServicePre<HostState>, CodeImage), LoadError> {
    let component = platform::load_component(engine, code)
        .map_err(|e| LoadError::Deserialize(format!("{e:#}")))?;
    let instance_pre = linker
        .instantiate_pre(&component)
        .map_err(|e| LoadError::Link(format!("{e:#}")))?;
    let pre = ServicePre::new(instance_pre).map_err(|e| LoadError::Link(format!("{e:#}")))?;
    let range = component.image_range();
    let image = platform::image_bytes(&component);
    let digest = sha256(image);
    let image = CodeImage {
        addr: range.start as u64,
        len: image.len() as u64,
        sha256: digest,
        fingerprint: crate::integrity::fingerprint(image),
        matches_artifact: image == code,
    };
    Ok((component, pre, image))
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

    /// Loads compiled component code and instantiates it under `name`, replacing what ran
    /// under that name only once the new one is instantiated. `invariants` come from the
    /// signed `.wasm` (empty for unsigned code). The integrity record carries over.
    pub fn deploy(
        &mut self,
        name: &str,
        code: &[u8],
        invariants: Invariants,
        limits: Limits,
        config: BTreeMap<String, String>,
    ) -> Result<&Deployed, LoadError> {
        let (component, pre, image) = load(&self.engine, &self.linker, code)?;
        let integrity = self
            .components
            .get(name)
            .map(|d| d.integrity.redeployed())
            .unwrap_or_default();
        let mut deployed = Deployed {
            name: name.into(),
            limits,
            stats: ComponentStats::default(),
            code_bytes: code.len(),
            code: code.to_vec(),
            invariants,
            image,
            component,
            pre,
            live: None,
            parked: Some((KvStore::default(), config)),
            broken: None,
            integrity,
        };
        deployed.instantiate().map_err(LoadError::Instantiate)?;
        self.components.insert(name.into(), deployed);
        Ok(&self.components[name])
    }

    pub fn components(&self) -> impl Iterator<Item = &Deployed> {
        self.components.values()
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Deployed> {
        self.components.get_mut(name)
    }

    /// Rebuilds component `name` from its verified bytes (see [`Deployed::reload`]).
    pub fn reload(&mut self, name: &str) -> Result<(), String> {
        let deployed = self
            .components
            .get_mut(name)
            .ok_or_else(|| format!("no component {name}"))?;
        deployed.reload(&self.engine, &self.linker)
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
        let (result, memories) = memory::capture(|| self.pre.instantiate(&mut store));
        match result {
            Ok(service) => {
                self.live = Some(Live {
                    store,
                    service,
                    memories,
                });
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

    /// Rebuilds the deployment from its verified code bytes: a fresh code image and a fresh
    /// instance (kv data and configuration carry over). The old image is freed.
    fn reload(&mut self, engine: &Engine, linker: &Linker<HostState>) -> Result<(), String> {
        let (component, pre, image) =
            load(engine, linker, &self.code).map_err(|e| format!("{e}"))?;
        if let Some(live) = self.live.take() {
            let data = live.store.into_data();
            self.parked = Some((data.kv, data.config));
        }
        self.component = component;
        self.pre = pre;
        self.image = image;
        self.instantiate()
    }

    /// Re-measures the code image and checks the instance's invariants. `Ok` if all hold.
    pub fn check(&self) -> Result<(), Violation> {
        let bytes = platform::image_bytes(&self.component);
        if crate::integrity::fingerprint(bytes) != self.image.fingerprint {
            let observed = sha256(bytes);
            return Err(Violation {
                check: "code",
                detail: format!(
                    "the code image at {:#x} ({} bytes) changed after loading",
                    self.image.addr, self.image.len
                ),
                expected: Some(hex(&self.image.sha256)),
                observed: Some(hex(&observed)),
            });
        }
        let Some(live) = &self.live else {
            return Ok(()); // nothing runs: nothing else to check
        };
        let peak = live.store.data().limits.table_peak;
        let table_max = self
            .invariants
            .tables
            .iter()
            .map(|t| t.max.map_or(TABLE_ELEMENTS, |m| m as usize))
            .max()
            .unwrap_or(TABLE_ELEMENTS);
        if peak > table_max {
            return Err(Violation::simple(
                "table-size",
                format!(
                    "a table reached {peak} elements; the largest declared maximum is {table_max}"
                ),
            ));
        }
        if self.invariants.memory.is_none() {
            return Ok(());
        }
        let [mem] = live.memories.as_slice() else {
            return Err(Violation::simple(
                "memory-count",
                format!(
                    "the component declares one linear memory but its instance has {}",
                    live.memories.len()
                ),
            ));
        };
        self.invariants
            .check_memory_size(mem.bytes() as u64, self.limits.memory_bytes as u64)
            .map_err(|e| Violation::simple("memory-size", e))?;
        for range in &self.invariants.immutable {
            let observed = mem.read(range.offset, range.len, sha256).ok_or_else(|| {
                Violation::simple(
                    "immutable-data",
                    format!(
                        "{} [{}, +{}) is outside the memory",
                        range.name, range.offset, range.len
                    ),
                )
            })?;
            if observed != range.sha256 {
                return Err(Violation {
                    check: "immutable-data",
                    detail: format!(
                        "{} at linear-memory offset {} ({} bytes) changed",
                        range.name, range.offset, range.len
                    ),
                    expected: Some(hex(&range.sha256)),
                    observed: Some(hex(&observed)),
                });
            }
        }
        Ok(())
    }

    /// The live instance's (only) linear memory: base address and size in bytes.
    pub fn memory(&self) -> Option<(u64, u64)> {
        let live = self.live.as_ref()?;
        let [mem] = live.memories.as_slice() else {
            return None;
        };
        Some((mem.base() as u64, mem.bytes() as u64))
    }

    fn handle(&mut self, path: &str, req: &Request) -> Response {
        self.stats.requests += 1;
        if let Some(reason) = self.integrity.untrusted_reason() {
            return Response::error(
                503,
                &format!("component {} is untrusted: {reason}", self.name),
            );
        }
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
