//! The Wasm component host: wasmtime's no_std runtime with the component model.
//!
//! The `tuk:service` world's imports and the request dispatch into a component are
//! `tuk_service_host`'s, shared with the Linux baseline: each deployed component has one live
//! instance in its own `Store` with its own limits and a per-request deadline enforced by epoch
//! interruption; a trap answers 500, running past the deadline 503, and the instance is rebuilt
//! from the already-loaded code while its kv data survives. This module supplies the kernel's
//! side of it: the engine on the kernel's wasmtime platform (`platform.rs`), the clocks (TSC)
//! and random bytes (RDRAND) components see, and the LAPIC timer that ticks every
//! `tuk_engine::EPOCH_TICK_MS` while Wasm runs (its interrupt advances the engine's epoch).
//!
//! Integrity: each deployment keeps the verified code bytes it was loaded from, the address
//! and SHA-256 of its loaded code image (taken right after loading), the invariants derived
//! from its signed `.wasm` (`tuk-invariants`), and the linear memories its instance uses
//! (`memory::capture`, as the instance's `Probe`). [`Deployed::check`] re-measures all of that;
//! [`Deployed::reload`] rebuilds the whole deployment from the verified bytes
//! (`crate::integrity` decides when).

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
use tuk_service_host::{
    EpochTimer, HostState, Instance, Platform, Probe, Service, ServicePre, TABLE_ELEMENTS,
};
pub use tuk_service_host::{KvStore, Limits, LoadError};
use wasmtime::component::{Component, Linker};
use wasmtime::Engine;

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

/// What the kernel supplies to components (`tuk_service_host`): the TSC clocks, RDRAND.
struct Kernel;

impl Platform for Kernel {
    fn wall_clock(&self) -> (u64, u32) {
        let ns = arch::wall_clock_ns();
        ((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32)
    }

    fn monotonic_ns(&self) -> u64 {
        arch::now_us().saturating_mul(1000)
    }

    fn random_bytes(&self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&arch::random_u64().to_le_bytes()[..chunk.len()]);
        }
    }
}

/// The epoch ticks while a request runs: the LAPIC timer, whose interrupt calls `epoch_tick`.
struct LapicTimer;

impl EpochTimer for LapicTimer {
    fn start(&self) {
        arch::start_periodic_timer(tuk_engine::EPOCH_TICK_MS * 1000);
    }

    fn stop(&self) {
        arch::stop_timer();
    }
}

/// An instance's linear memories, in creation order (recorded while it is built).
pub struct Memories(Vec<Arc<MemoryCell>>);

impl Probe for Memories {
    fn record(
        instantiate: impl FnOnce() -> wasmtime::Result<Service>,
    ) -> (wasmtime::Result<Service>, Self) {
        let (result, cells) = memory::capture(instantiate);
        (result, Memories(cells))
    }
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

/// A deployed component: its instance slot (`tuk_service_host::Instance`: limits, counters,
/// the live instance and its kv data) and what the integrity monitor needs.
pub struct Deployed {
    pub instance: Instance<Memories>,
    /// The verified compiled code: re-instantiation after a violation starts from these bytes.
    code: Vec<u8>,
    /// What the signed `.wasm` declares (empty in unsigned mode: no `.wasm` travels).
    pub invariants: Invariants,
    pub image: CodeImage,
    component: Component,
    /// The integrity monitor's record for this component.
    pub integrity: Record,
    /// Per immutable range (`invariants.immutable`, same order): the keyed fingerprint of its
    /// bytes, taken by the first check that found them equal to the signed SHA-256 (from the
    /// same slice, at the same moment). Later checks compare fingerprints, as for the code
    /// image: a SHA-256 per range per round cost more than the rest of a component's check.
    /// The bytes a fresh instance holds are the same, so these survive rebuilds.
    immutable_fingerprints: Vec<Option<u128>>,
}

/// How to make code this kernel loads (completes "recompile it with …").
const RECOMPILE: &str = "this tuk version's `tuk compile`";

/// Loads compiled code and links it: the component and its pre-instantiated form.
fn load(
    engine: &Engine,
    linker: &Linker<HostState>,
    code: &[u8],
) -> Result<(Component, ServicePre<HostState>, CodeImage), LoadError> {
    let component = platform::load_component(engine, code).map_err(|e| LoadError::Deserialize {
        error: format!("{e:#}"),
        recompile: RECOMPILE,
    })?;
    let pre = tuk_service_host::link(linker, &component)?;
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
        let linker = tuk_service_host::new_linker(&engine)?;
        Ok(Runtime {
            engine,
            linker,
            components: BTreeMap::new(),
        })
    }

    /// Loads compiled component code and instantiates it under `name`, replacing what ran
    /// under that name only once the new one is instantiated. `invariants` come from the
    /// signed `.wasm` (empty for unsigned code). The integrity record carries over; the new
    /// instance starts with `kv` (see [`Runtime::state`]: a publish keeps the data by default).
    pub fn deploy(
        &mut self,
        name: &str,
        code: &[u8],
        invariants: Invariants,
        limits: Limits,
        config: BTreeMap<String, String>,
        kv: KvStore,
    ) -> Result<&Deployed, LoadError> {
        let (component, pre, image) = load(&self.engine, &self.linker, code)?;
        let integrity = self
            .components
            .get(name)
            .map(|d| d.integrity.redeployed())
            .unwrap_or_default();
        let mut deployed = Deployed {
            instance: Instance::new(name, pre, code.len(), limits, config, &Kernel).with_kv(kv),
            code: code.to_vec(),
            invariants,
            image,
            component,
            integrity,
            immutable_fingerprints: Vec::new(),
        };
        deployed
            .instance
            .instantiate()
            .map_err(LoadError::Instantiate)?;
        self.components.insert(name.into(), deployed);
        Ok(&self.components[name])
    }

    /// A copy of component `name`'s kv data and its configuration, if it is deployed.
    pub fn state(&self, name: &str) -> Option<(KvStore, BTreeMap<String, String>)> {
        let (kv, config) = self.components.get(name)?.instance.state()?;
        Some((kv.clone(), config.clone()))
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
    /// Rebuilds the deployment from its verified code bytes: a fresh code image and a fresh
    /// instance (kv data and configuration carry over). The old image is freed.
    fn reload(&mut self, engine: &Engine, linker: &Linker<HostState>) -> Result<(), String> {
        let (component, pre, image) =
            load(engine, linker, &self.code).map_err(|e| format!("{e}"))?;
        self.instance.park();
        self.component = component;
        self.image = image;
        self.instance.replace(pre)
    }

    /// Re-measures the code image and checks the instance's invariants. `Ok` if all hold.
    pub fn check(&mut self) -> Result<(), Violation> {
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
        let Some(live) = self.instance.live() else {
            return Ok(()); // nothing runs: nothing else to check
        };
        let peak = live.store().data().limits.table_peak;
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
        let memories = &live.probe().0;
        let [mem] = memories.as_slice() else {
            return Err(Violation::simple(
                "memory-count",
                format!(
                    "the component declares one linear memory but its instance has {}",
                    memories.len()
                ),
            ));
        };
        self.invariants
            .check_memory_size(mem.bytes() as u64, self.instance.limits.memory_bytes as u64)
            .map_err(|e| Violation::simple("memory-size", e))?;
        self.immutable_fingerprints
            .resize(self.invariants.immutable.len(), None);
        for (range, reference) in self
            .invariants
            .immutable
            .iter()
            .zip(self.immutable_fingerprints.iter_mut())
        {
            let fingerprinted = mem.read(range.offset, range.len, |bytes| match reference {
                Some(fp) if crate::integrity::fingerprint(bytes) == *fp => None,
                // First check, or changed: the SHA-256 decides (and names what is there).
                _ => Some((sha256(bytes), crate::integrity::fingerprint(bytes))),
            });
            let observed = fingerprinted.ok_or_else(|| {
                Violation::simple(
                    "immutable-data",
                    format!(
                        "{} [{}, +{}) is outside the memory",
                        range.name, range.offset, range.len
                    ),
                )
            })?;
            let Some((observed, fp)) = observed else {
                continue; // unchanged since its SHA-256 was checked
            };
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
            *reference = Some(fp);
        }
        Ok(())
    }

    /// The live instance's (only) linear memory: base address and size in bytes.
    pub fn memory(&self) -> Option<(u64, u64)> {
        let live = self.instance.live()?;
        let [mem] = live.probe().0.as_slice() else {
            return None;
        };
        Some((mem.base() as u64, mem.bytes() as u64))
    }

    fn handle(&mut self, path: &str, req: &Request) -> Response {
        if let Some(reason) = self.integrity.untrusted_reason() {
            self.instance.stats.requests += 1;
            return Response::error(
                503,
                &format!("component {} is untrusted: {reason}", self.instance.name),
            );
        }
        self.instance.handle(path, req, &LapicTimer)
    }
}
