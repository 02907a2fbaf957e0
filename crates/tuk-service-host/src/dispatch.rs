//! The request dispatch into a component: one component's instance slot ([`Instance`]).
//!
//! Each component has one live instance in its own `Store`, with its own limits (linear
//! memory, tables, instances) and a per-request deadline enforced by epoch interruption: while
//! Wasm runs, the platform's [`EpochTimer`] advances the engine's epoch every
//! `tuk_engine::EPOCH_TICK_MS`. Whatever a component does, it fails alone:
//! - a trap answers 500 and the instance is rebuilt from the already-loaded code;
//! - running past the deadline answers 503 and the instance is rebuilt;
//! - growing memory past its limit makes `memory.grow` fail inside the component (which then
//!   usually traps: 500, rebuilt).
//!
//! The component's key-value data and configuration live outside the instance and survive the
//! rebuild. The engine must have epoch interruption on (`tuk_engine::configure` does).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;

use tuk_http::{Request, Response};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};

use crate::bindings::{Service, ServicePre};
use crate::host::{self, HostState, KvStore};
use crate::Platform;

/// Per-component limits, from the deployment metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Elements any one table may have (also the bound for tables declaring no maximum).
pub const TABLE_ELEMENTS: usize = 100_000;

/// The store's resource limiter: wasmtime's `StoreLimits`, plus the largest table size it
/// ever granted (the kernel's integrity monitor checks it against the declared maximum).
pub struct Limiter {
    inner: StoreLimits,
    pub table_peak: usize,
}

impl Limiter {
    /// The limits of one instance: `limits.memory_bytes` per linear memory, 32 instances,
    /// 32 tables of at most [`TABLE_ELEMENTS`], 8 memories; a refused `memory.grow` returns -1
    /// to the component instead of trapping.
    pub fn new(limits: &Limits) -> Limiter {
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

/// Why compiled code could not become a serving component.
#[derive(Debug)]
pub enum LoadError {
    /// wasmtime refused the compiled code; `recompile` names the tool that makes code this
    /// platform loads (it completes "recompile it with …").
    Deserialize {
        error: String,
        recompile: &'static str,
    },
    Link(String),
    Instantiate(String),
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Deserialize { error, recompile } => write!(
                f,
                "cannot load the compiled component ({error}); recompile it with {recompile}"
            ),
            Self::Link(e) => write!(f, "the component does not fit the tuk:service world: {e}"),
            Self::Instantiate(e) => write!(f, "instantiation failed: {e}"),
        }
    }
}

/// A linker with the world's imports, for `engine`.
pub fn new_linker(engine: &Engine) -> Result<Linker<HostState>, String> {
    let mut linker = Linker::new(engine);
    host::add_to_linker(&mut linker).map_err(|e| format!("wasm linker: {e}"))?;
    Ok(linker)
}

/// Links a loaded component against the world: its pre-instantiated form.
pub fn link(
    linker: &Linker<HostState>,
    component: &Component,
) -> Result<ServicePre<HostState>, LoadError> {
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|e| LoadError::Link(format!("{e:#}")))?;
    ServicePre::new(instance_pre).map_err(|e| LoadError::Link(format!("{e:#}")))
}

/// Starts and stops the engine's epoch ticks around a request (supplied by the platform).
pub trait EpochTimer {
    /// From now on, advance the engine's epoch every `tuk_engine::EPOCH_TICK_MS`.
    fn start(&self);
    /// Stop advancing it (an idle system gets no timer wake-ups from it).
    fn stop(&self);
}

/// What the platform records while an instance is built (the kernel: the linear memories it
/// creates, for its integrity monitor). `()` records nothing.
pub trait Probe: Sized {
    /// Runs `instantiate` once and returns its result with what was recorded meanwhile.
    fn record(
        instantiate: impl FnOnce() -> wasmtime::Result<Service>,
    ) -> (wasmtime::Result<Service>, Self);
}

impl Probe for () {
    fn record(
        instantiate: impl FnOnce() -> wasmtime::Result<Service>,
    ) -> (wasmtime::Result<Service>, Self) {
        (instantiate(), ())
    }
}

/// A live instance: its store, its exports and what the [`Probe`] recorded when it was built.
pub struct Live<P> {
    store: Store<HostState>,
    service: Service,
    probe: P,
}

impl<P> Live<P> {
    pub fn store(&self) -> &Store<HostState> {
        &self.store
    }

    pub fn probe(&self) -> &P {
        &self.probe
    }
}

/// One component: its linked code, its live instance (if it could be instantiated), its limits
/// and counters, and its kv data and configuration while no instance holds them.
pub struct Instance<P = ()> {
    pub name: String,
    pub limits: Limits,
    pub stats: ComponentStats,
    /// Bytes of compiled code (the artifact as loaded).
    pub code_bytes: usize,
    /// Why the component is not serving, if it is not.
    pub broken: Option<String>,
    pre: ServicePre<HostState>,
    live: Option<Live<P>>,
    /// State carried across rebuilds (kv data, configuration) while no instance exists.
    parked: Option<(KvStore, BTreeMap<String, String>)>,
    platform: &'static dyn Platform,
}

impl<P: Probe> Instance<P> {
    /// A component with empty kv data, not instantiated yet (see [`Instance::instantiate`]).
    pub fn new(
        name: &str,
        pre: ServicePre<HostState>,
        code_bytes: usize,
        limits: Limits,
        config: BTreeMap<String, String>,
        platform: &'static dyn Platform,
    ) -> Self {
        Instance {
            name: name.into(),
            limits,
            stats: ComponentStats::default(),
            code_bytes,
            broken: None,
            pre,
            live: None,
            parked: Some((KvStore::default(), config)),
            platform,
        }
    }

    /// Starts the component from `kv` instead of empty kv data (a new version taking over the
    /// data of the one it replaces). Call before the first [`Instance::instantiate`].
    pub fn with_kv(mut self, kv: KvStore) -> Self {
        if let Some((parked, _)) = self.parked.as_mut() {
            *parked = kv;
        }
        self
    }

    /// The component's kv data and configuration (the live instance's, or the parked ones).
    pub fn state(&self) -> Option<(&KvStore, &BTreeMap<String, String>)> {
        match (&self.live, &self.parked) {
            (Some(live), _) => {
                let data = live.store.data();
                Some((&data.kv, &data.config))
            }
            (None, Some((kv, config))) => Some((kv, config)),
            (None, None) => None,
        }
    }

    /// Builds an instance in a fresh `Store` from the parked kv data and configuration. On
    /// failure they stay parked and the reason is kept in `broken` (and returned).
    pub fn instantiate(&mut self) -> Result<(), String> {
        let (kv, config) = self.parked.take().unwrap_or_default();
        let state = HostState::new(
            self.name.clone(),
            kv,
            config,
            Limiter::new(&self.limits),
            self.platform,
        );
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(u64::MAX / 2);
        self.stats.instantiations += 1;
        let pre = &self.pre;
        let (result, probe) = P::record(|| pre.instantiate(&mut store));
        match result {
            Ok(service) => {
                self.live = Some(Live {
                    store,
                    service,
                    probe,
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

    /// Drops the live instance, if any, keeping its kv data and configuration.
    pub fn park(&mut self) {
        if let Some(live) = self.live.take() {
            let data = live.store.into_data();
            self.parked = Some((data.kv, data.config));
        }
    }

    /// Drops the current instance (keeping kv and config) and builds a fresh one.
    fn rebuild(&mut self) {
        self.park();
        if let Err(e) = self.instantiate() {
            log::error!("component {}: re-instantiation failed: {e}", self.name);
        }
    }

    /// Replaces the linked code (the old instance is dropped first, kv data and configuration
    /// carry over) and instantiates it.
    pub fn replace(&mut self, pre: ServicePre<HostState>) -> Result<(), String> {
        self.park();
        self.pre = pre;
        self.instantiate()
    }

    /// The live instance, if there is one.
    pub fn live(&self) -> Option<&Live<P>> {
        self.live.as_ref()
    }

    /// Serves one request; `path` is the part below the component's prefix. Runs the
    /// component's handler under its deadline (`timer` ticks meanwhile); a trap answers 500,
    /// the deadline 503, and both rebuild the instance.
    pub fn handle(&mut self, path: &str, req: &Request, timer: &dyn EpochTimer) -> Response {
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
        timer.start();
        let result = live
            .service
            .tuk_service_handler()
            .call_handle(&mut live.store, &wit_req);
        timer.stop();
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

/// Parses a deployment's `key=value` metadata into limits and configuration (the keys of
/// tuk's boot pack: `memory_limit_bytes`, `deadline_ms`, `config.<key>`). Unknown keys are
/// logged and ignored.
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

#[cfg(test)]
mod tests {
    use alloc::string::ToString;
    use alloc::vec::Vec;

    use super::*;

    type Parsed = (Limits, Vec<(String, String)>);

    fn meta(pairs: &[(&'static str, &'static str)]) -> Result<Parsed, String> {
        deployment_from_meta(pairs.iter().copied()).map(|(l, c)| (l, c.into_iter().collect()))
    }

    #[test]
    fn meta_defaults_and_keys() {
        assert_eq!(meta(&[]).unwrap(), (Limits::default(), Vec::new()));
        assert_eq!(Limits::default().memory_bytes, 16 << 20);
        assert_eq!(
            Limits::default().deadline_ms,
            tuk_engine::DEFAULT_DEADLINE_MS
        );
        let (limits, config) = meta(&[
            ("memory_limit_bytes", "1048576"),
            ("deadline_ms", "250"),
            ("config.greeting", "hi"),
            ("colour", "blue"),
        ])
        .unwrap();
        assert_eq!(
            limits,
            Limits {
                memory_bytes: 1 << 20,
                deadline_ms: 250
            }
        );
        assert_eq!(config, [("greeting".to_string(), "hi".to_string())]);
    }

    #[test]
    fn meta_errors() {
        assert_eq!(
            meta(&[("memory_limit_bytes", "lots")]).unwrap_err(),
            "memory_limit_bytes=lots is not a number of bytes"
        );
        for bad in ["0", "-1", "soon"] {
            let bad: &'static str = bad;
            assert_eq!(
                meta(&[("deadline_ms", bad)]).unwrap_err(),
                format!("deadline_ms={bad} is not a positive number of milliseconds")
            );
        }
    }

    #[test]
    fn load_error_messages() {
        let e = LoadError::Deserialize {
            error: "bad".into(),
            recompile: "`tuk compile`",
        };
        assert_eq!(
            e.to_string(),
            "cannot load the compiled component (bad); recompile it with `tuk compile`"
        );
        assert_eq!(
            LoadError::Link("x".into()).to_string(),
            "the component does not fit the tuk:service world: x"
        );
        assert_eq!(
            LoadError::Instantiate("y".into()).to_string(),
            "instantiation failed: y"
        );
    }

    #[test]
    fn limiter_bounds_and_table_peak() {
        let mut l = Limiter::new(&Limits {
            memory_bytes: 1 << 20,
            deadline_ms: 1,
        });
        assert!(l.memory_growing(0, 1 << 20, None).unwrap());
        assert!(!l.memory_growing(0, (1 << 20) + 1, None).unwrap());
        assert!(l.table_growing(0, 10, None).unwrap());
        assert!(l.table_growing(10, 5, None).unwrap());
        assert_eq!(l.table_peak, 10);
        assert!(!l.table_growing(10, TABLE_ELEMENTS + 1, None).unwrap());
        assert_eq!(l.table_peak, 10);
        assert_eq!((l.instances(), l.tables(), l.memories()), (32, 32, 8));
    }

    #[test]
    fn trap_summaries() {
        let trap = wasmtime::Error::new(Trap::UnreachableCodeReached);
        assert_eq!(
            trap_summary(&trap),
            "wasm trap: wasm `unreachable` instruction executed"
        );
        let other = wasmtime::Error::msg("root").context("outer");
        assert_eq!(trap_summary(&other), "root");
    }
}
