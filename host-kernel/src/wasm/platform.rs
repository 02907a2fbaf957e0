//! wasmtime's custom-platform interface (`crates/wasmtime/src/runtime/vm/sys/custom/capi.rs`
//! upstream), implemented on the kernel's heap and page tables.
//!
//! - "Mappings" are page-aligned, zeroed heap allocations (RAM is identity-mapped);
//!   `mprotect` changes their page-table entries for real through `arch::protect`, so compiled
//!   code is read+execute and never writable, data is never executable. A request for
//!   write+execute is refused (W^X holds for component code too).
//! - Before an allocation returns to the heap its pages are made read+write again.
//! - Copy-on-write memory images are not offered (`memory_init_cow(false)` in tuk-engine).
//! - Thread-local storage: one CPU, one thread: two plain slots.

use core::alloc::Layout;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::arch::{protect, Protection};

const PAGE: usize = 4096;
const PROT_READ: u32 = 1 << 0;
const PROT_WRITE: u32 = 1 << 1;
const PROT_EXEC: u32 = 1 << 2;

/// Error codes returned to wasmtime (any non-zero value is a failure).
const OK: i32 = 0;
const ERR_NOMEM: i32 = 12;
const ERR_INVAL: i32 = 22;

fn protection(flags: u32) -> Option<Protection> {
    let r = flags & PROT_READ != 0;
    let w = flags & PROT_WRITE != 0;
    let x = flags & PROT_EXEC != 0;
    Some(match (r, w, x) {
        (false, false, false) => Protection::None,
        (_, false, false) => Protection::ReadOnly,
        (_, true, false) => Protection::ReadWrite,
        (_, false, true) => Protection::ReadExecute,
        (_, true, true) => return None, // W^X
    })
}

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_next_multiple_of(PAGE)?, PAGE).ok()
}

fn set(ptr: *mut u8, size: usize, flags: u32) -> i32 {
    let Some(prot) = protection(flags) else {
        log::error!("wasm platform: refused a writable+executable mapping at {ptr:p}");
        return ERR_INVAL;
    };
    match protect(ptr as u64, size.next_multiple_of(PAGE) as u64, prot) {
        Ok(()) => OK,
        Err(e) => {
            log::error!("wasm platform: mprotect {ptr:p}+{size:#x}: {e:?}");
            ERR_INVAL
        }
    }
}

#[no_mangle]
extern "C" fn wasmtime_mmap_new(size: usize, prot_flags: u32, ret: &mut *mut u8) -> i32 {
    let Some(layout) = layout(size.max(1)) else {
        return ERR_INVAL;
    };
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return ERR_NOMEM;
    }
    let rc = set(ptr, layout.size(), prot_flags);
    if rc != OK {
        // SAFETY: allocated just above with this layout; its pages are still read+write.
        unsafe { alloc::alloc::dealloc(ptr, layout) };
        return rc;
    }
    *ret = ptr;
    OK
}

#[no_mangle]
extern "C" fn wasmtime_mmap_remap(addr: *mut u8, size: usize, prot_flags: u32) -> i32 {
    let rc = set(addr, size, PROT_READ | PROT_WRITE);
    if rc != OK {
        return rc;
    }
    // SAFETY: wasmtime passes a page-aligned sub-range of a mapping it owns (made writable
    // just above); remapping means fresh zeroed pages.
    unsafe { core::ptr::write_bytes(addr, 0, size) };
    set(addr, size, prot_flags)
}

#[no_mangle]
extern "C" fn wasmtime_munmap(ptr: *mut u8, size: usize) -> i32 {
    let Some(layout) = layout(size.max(1)) else {
        return ERR_INVAL;
    };
    let rc = set(ptr, layout.size(), PROT_READ | PROT_WRITE);
    if rc != OK {
        return rc;
    }
    // SAFETY: wasmtime unmaps whole mappings it got from `wasmtime_mmap_new` with the same
    // size; the pages are read+write again, as the heap expects.
    unsafe { alloc::alloc::dealloc(ptr, layout) };
    OK
}

#[no_mangle]
extern "C" fn wasmtime_mprotect(ptr: *mut u8, size: usize, prot_flags: u32) -> i32 {
    set(ptr, size, prot_flags)
}

#[no_mangle]
extern "C" fn wasmtime_page_size() -> usize {
    PAGE
}

/// Opaque to wasmtime; never constructed (no copy-on-write images).
pub enum WasmtimeMemoryImage {}

#[no_mangle]
extern "C" fn wasmtime_memory_image_new(
    _ptr: *const u8,
    _len: usize,
    ret: &mut *mut WasmtimeMemoryImage,
) -> i32 {
    *ret = null_mut();
    OK
}

#[no_mangle]
extern "C" fn wasmtime_memory_image_map_at(
    _image: *mut WasmtimeMemoryImage,
    _addr: *mut u8,
    _len: usize,
) -> i32 {
    // Unreachable: `wasmtime_memory_image_new` never returns an image.
    ERR_INVAL
}

#[no_mangle]
extern "C" fn wasmtime_memory_image_free(_image: *mut WasmtimeMemoryImage) {}

static TLS: [AtomicPtr<u8>; 2] = [AtomicPtr::new(null_mut()), AtomicPtr::new(null_mut())];

#[no_mangle]
extern "C" fn wasmtime_tls_get(slot: usize) -> *mut u8 {
    TLS.get(slot)
        .map_or(null_mut(), |s| s.load(Ordering::Relaxed))
}

#[no_mangle]
extern "C" fn wasmtime_tls_set(slot: usize, ptr: *mut u8) {
    if let Some(s) = TLS.get(slot) {
        s.store(ptr, Ordering::Relaxed);
    }
}

/// Loads compiled component code (the output of `tuk compile`).
///
/// wasmtime checks that the artifact was produced by the same wasmtime version with a
/// compatible configuration (`tuk_engine`) and refuses it otherwise; it cannot check that the
/// code itself is benign, which is why this is `unsafe` in wasmtime: the caller must only pass
/// code from a trusted compiler. Here that is the operator's launcher today and the signed
/// bundle (verified before this call) once signing lands.
pub fn load_component(
    engine: &wasmtime::Engine,
    code: &[u8],
) -> wasmtime::Result<wasmtime::component::Component> {
    // SAFETY: see above: the bytes come from the boot pack the operator's launcher compiled.
    unsafe { wasmtime::component::Component::deserialize(engine, code) }
}

/// The bytes of a loaded component's code image (compiled code and its metadata, as wasmtime
/// keeps them in memory), for re-measurement.
pub fn image_bytes(component: &wasmtime::component::Component) -> &[u8] {
    let range = component.image_range();
    // SAFETY: wasmtime's image range is the component's code memory, which lives (read-only
    // or read+execute, never freed) as long as the `Component` borrowed here; its pages are
    // mapped readable by this platform's `mprotect`.
    unsafe { core::slice::from_raw_parts(range.start, range.end as usize - range.start as usize) }
}

/// The engine configuration: `tuk_engine`'s settings, plus CPU feature detection (no_std
/// wasmtime cannot probe the CPU itself and refuses compiled code it cannot vouch for).
pub fn engine_config() -> wasmtime::Config {
    let mut config = tuk_engine::config();
    // SAFETY: `arch::has_feature` reads CPUID, so it reports only features this CPU has, and
    // reports AVX as absent because the kernel does not enable its register state.
    // The kernel is soft-float while compiled Wasm passes floats in SSE registers; that only
    // matters for float libcalls, and tuk's engine settings avoid all of them: SSE4.1 makes
    // rounding native and relaxed SIMD (fused multiply-add) is disabled (`tuk_engine`).
    unsafe {
        config.detect_host_feature(crate::arch::has_feature);
        config.x86_float_abi_ok(true);
    }
    // Linear memories come from the kernel, so the integrity monitor can find them.
    config.with_host_memory(alloc::sync::Arc::new(super::memory::KernelMemories));
    config
}
