//! The host side of the `tuk:service` world (`wit/service.wit`) and the request dispatch into a
//! component: one implementation for both of its users, the tuk kernel (`host-kernel/src/wasm/`)
//! and the Linux baseline's `/init` (`baseline/tuk-linux-host/src/runtime.rs`), so the two serve
//! components with the same quotas, the same log sanitising, the same HTTP conversion, the same
//! limits and the same answers to traps and deadlines by construction.
//!
//! What this crate owns:
//! - [`host`]: the imports a component may call (log, kv, config, clock, random) on
//!   [`HostState`], the data of one instance's `Store`; the per-component kv store and its
//!   quotas; the conversion of `tuk-http` requests and responses to and from the WIT records.
//! - [`dispatch`]: one component's instance slot ([`Instance`]): its `Store` and limits,
//!   instantiation, a request with a deadline (epoch interruption), trap → 500,
//!   deadline → 503, the rebuild that keeps kv data and configuration; linking compiled code
//!   against the world ([`link`]); the deployment metadata keys ([`deployment_from_meta`]).
//!
//! What the platform supplies:
//! - a [`Platform`]: the wall clock, the monotonic clock and random bytes (this crate's log
//!   records go through the `log` facade to the platform's logger);
//! - an [`EpochTimer`] that advances the engine's epoch every `tuk_engine::EPOCH_TICK_MS` while
//!   a request runs (the kernel's LAPIC timer, the baseline's ticker thread);
//! - optionally a [`Probe`] that records what an instantiation created (the kernel: its linear
//!   memories, for the integrity monitor); `()` records nothing;
//! - the `Engine` and its wasmtime platform (memory, code loading: `Component::deserialize`
//!   is `unsafe` and stays with the platform), and the components' compiled code.
//!
//! Everything a component passes in is untrusted: log lines are truncated and stripped of
//! control characters, kv keys and values are bounded by a per-component quota, requested
//! random lengths are capped.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod dispatch;
pub mod host;

pub use dispatch::{
    deployment_from_meta, link, new_linker, ComponentStats, EpochTimer, Instance, Limiter, Limits,
    Live, LoadError, Probe, TABLE_ELEMENTS,
};
pub use host::{add_to_linker, from_wit_response, to_wit_request, HostState, KvStore};

/// The bindings `wasmtime::component::bindgen!` generates for the `service` world.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "service",
    });
}

pub use bindings::{Service, ServicePre};

/// What the platform supplies to a component's imports. One value for the whole system
/// (`&'static`): it is shared by every instance's [`HostState`].
pub trait Platform: Send + Sync {
    /// Wall-clock time: seconds and nanoseconds since the Unix epoch.
    fn wall_clock(&self) -> (u64, u32);
    /// Monotonic nanoseconds since the system booted.
    fn monotonic_ns(&self) -> u64;
    /// Fills `out` with cryptographically secure random bytes (at most
    /// [`host::RANDOM_MAX_BYTES`] at a time).
    fn random_bytes(&self, out: &mut [u8]);
}
