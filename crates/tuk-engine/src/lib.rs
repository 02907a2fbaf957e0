//! The wasmtime engine configuration, defined once for both of its users:
//! - the host-kernel builds its runtime `Engine` from [`config`] (no compiler: no_std wasmtime
//!   only loads code compiled ahead of time);
//! - `tuk compile` (feature `compiler`) builds the Cranelift `Engine` that produces that code.
//!
//! Because both call the same function, the settings that must agree (traps, memory layout,
//! epoch interruption, target, CPU features) cannot drift. wasmtime checks them again when
//! the kernel deserializes a component and refuses a mismatch with an error naming the
//! setting; `tuk` reports it, nothing crashes.
//!
//! The CPU features the compiled code may use ([`ISA_FLAGS`]) must exist on the guest CPU:
//! [`QEMU_CPU_MODEL`] is the model the launcher gives QEMU, kept here next to the flags.
#![no_std]

extern crate alloc;

/// The target the kernel is built for and components are compiled for.
pub const TARGET: &str = "x86_64-unknown-none";

/// Cranelift ISA flags enabled for compiled components. SSE up to 4.2 and POPCNT only: AVX
/// would need the kernel to enable XSAVE state (CR4.OSXSAVE, XCR0), which it does not.
pub const ISA_FLAGS: &[&str] = &[
    "has_sse3",
    "has_ssse3",
    "has_sse41",
    "has_sse42",
    "has_popcnt",
];

/// The QEMU CPU model that provides every flag in [`ISA_FLAGS`] (under TCG and KVM).
pub const QEMU_CPU_MODEL: &str = "max";

/// Largest Wasm stack a component may use. The kernel's stack must be larger (it is 1 MiB).
pub const MAX_WASM_STACK: usize = 512 * 1024;

/// The default time slice a request may run before it is interrupted (see `EPOCH_TICK_MS`).
pub const DEFAULT_DEADLINE_MS: u64 = 2_000;

/// The kernel increments the engine's epoch every `EPOCH_TICK_MS` while Wasm runs; a
/// component's deadline is a number of ticks.
pub const EPOCH_TICK_MS: u64 = 10;

/// Applies tuk's engine settings to `config`.
pub fn configure(config: &mut wasmtime::Config) {
    // Traps are explicit checks in compiled code, never hardware faults: the kernel treats
    // every CPU exception as fatal.
    config.signals_based_traps(false);
    // Linear memories are plain allocations with explicit bounds checks: no huge virtual
    // reservations or guard regions (the kernel identity-maps RAM).
    config.memory_reservation(0);
    config.memory_guard_size(0);
    config.memory_reservation_for_growth(0);
    config.memory_init_cow(false);
    config.epoch_interruption(true);
    // Relaxed SIMD's fused multiply-add would become a float libcall into the kernel without
    // FMA (which needs AVX state); the kernel is soft-float, so no float may cross that
    // boundary. With SSE4.1 enabled, rounding instructions are native too (no libcalls).
    config.wasm_relaxed_simd(false);
    config.wasm_component_model(true);
    config.max_wasm_stack(MAX_WASM_STACK);
    #[cfg(feature = "compiler")]
    compiler_settings(config);
}

#[cfg(feature = "compiler")]
fn compiler_settings(config: &mut wasmtime::Config) {
    config
        .target(TARGET)
        .expect("Cranelift supports x86_64-unknown-none");
    for flag in ISA_FLAGS {
        // SAFETY: the flags name CPU features that QEMU_CPU_MODEL provides to the guest; the
        // launcher starts every VM with that model.
        #[allow(unsafe_code)]
        unsafe {
            config.cranelift_flag_enable(flag);
        }
    }
}

/// A new configuration with tuk's settings.
pub fn config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    configure(&mut config);
    config
}

/// What defines compatibility of compiled code with the kernel's engine, as one string: the
/// exact wasmtime version and every setting [`configure`] makes. Keep it in step with
/// `configure` (a unit test below checks the values it names).
pub const DESCRIPTION: &str = concat!(
    "wasmtime=48.0.8;target=x86_64-unknown-none;",
    "isa=has_sse3,has_ssse3,has_sse41,has_sse42,has_popcnt;",
    "signals_based_traps=false;memory_reservation=0;memory_guard_size=0;",
    "memory_reservation_for_growth=0;memory_init_cow=false;epoch_interruption=true;",
    "relaxed_simd=false;component_model=true;max_wasm_stack=524288"
);

/// The engine fingerprint signed into every bundle (`predicate.engine`) and checked by the
/// kernel before it loads code: lowercase hex SHA-256 of [`DESCRIPTION`]. wasmtime checks the
/// real compatibility again when it deserializes; the fingerprint makes the publisher's
/// intent part of what is signed and measured.
pub fn fingerprint() -> alloc::string::String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(DESCRIPTION.as_bytes());
    let mut hex = alloc::string::String::with_capacity(64);
    for b in digest {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        hex.push(DIGITS[usize::from(b >> 4)] as char);
        hex.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_names_every_setting() {
        for flag in ISA_FLAGS {
            assert!(
                DESCRIPTION.contains(flag),
                "{flag} missing from DESCRIPTION"
            );
        }
        assert!(DESCRIPTION.contains(TARGET));
        assert!(DESCRIPTION.contains(&alloc::format!("max_wasm_stack={MAX_WASM_STACK}")));
        assert_eq!(fingerprint().len(), 64);
    }
}
