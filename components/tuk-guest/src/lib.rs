//! What every tuk component shares, so that a component's own crate holds only its routes:
//!
//! - [`bindings`]: the `tuk:service/service` world (`wit/service.wit`), generated once here.
//!   A component implements [`Guest`] and names its type with [`export!`](crate::export).
//! - the global allocator (talc, growing linear memory with `memory.grow`) and the panic
//!   handler (a trap: the host-kernel answers 500 and re-instantiates the component).
//! - [`http`]: response builders with JSON errors, header, content-type and query helpers.
//! - [`log`]: the host's log import at each level.
//!
//! The crate is `no_std` + `alloc`. On the host (`cargo test`) it links `std` so the helpers
//! are unit-tested there; imports called on the host panic.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod http;
pub mod log;
pub mod time;

/// The generated bindings of the `service` world.
#[allow(unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "service",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "tuk_guest::bindings",
    });
}

pub use bindings::export;
pub use bindings::exports::tuk::service::handler::Guest;
pub use bindings::tuk::service::types::{Headers, Request, Response};
pub use bindings::tuk::service::{clock, config, kv, random};

// One allocator for the whole component, growing linear memory with `memory.grow` as needed.
// When the host's memory limit refuses to grow, the allocation fails, the `alloc` crate
// panics, and the panic handler traps.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
#[allow(unsafe_code)]
// SAFETY: a component instance is single-threaded wasm, and talc tolerates other callers of
// `memory.grow` (it only ever extends the heap into pages it grew itself).
static ALLOCATOR: talc::TalckWasm = unsafe { talc::TalckWasm::new_global() };

#[cfg(all(target_arch = "wasm32", not(test)))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // Say why on the host's console, formatted on the stack: the panic may be an allocation
    // failure, so nothing here allocates. Then trap (no unwinding in a component): the host
    // answers 500 and re-instantiates the component.
    let mut line = log::StackLine::<512>::new();
    let _ = core::fmt::Write::write_fmt(&mut line, format_args!("panic: {info}"));
    log::error(line.as_str());
    core::arch::wasm32::unreachable()
}
