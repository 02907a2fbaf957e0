//! Linear memories allocated by the kernel (wasmtime's `MemoryCreator`), so that the integrity
//! monitor knows where every instance's memory is and how large it is — wasmtime's public API
//! does not expose a component's core memories.
//!
//! Contract:
//! - a memory is one page-aligned, zeroed heap allocation holding its whole current size
//!   (tuk-engine sets `memory_reservation(0)` and no guard pages: compiled code bounds-checks
//!   every access, and the base pointer may move when the memory grows);
//! - every memory created while [`capture`] runs is reported to its caller as a [`MemoryCell`]
//!   whose base and size follow the memory (growth included) until the memory is dropped;
//! - [`MemoryCell::read`] gives the monitor a read-only view; it is only called from the event
//!   loop, never while Wasm runs (one CPU, no preemption of Wasm by the loop).

use alloc::alloc::{alloc_zeroed, dealloc, realloc, Layout};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use spin::Mutex;
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

const PAGE: usize = 4096;

/// Where one linear memory is, as seen by the monitor.
#[derive(Debug, Default)]
pub struct MemoryCell {
    base: AtomicUsize,
    bytes: AtomicUsize,
}

impl MemoryCell {
    pub fn base(&self) -> usize {
        self.base.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Applies `f` to `[offset, offset + len)` of the memory, or returns `None` if the range is
    /// not inside it (or the memory was freed).
    pub fn read<R>(&self, offset: u64, len: u64, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let base = self.base();
        let end = offset.checked_add(len)?;
        if base == 0 || end > self.bytes() as u64 {
            return None;
        }
        // SAFETY: `base..base + bytes` is the live allocation of a memory that has not been
        // dropped (its `Drop` zeroes `base` first); the range is inside it. The event loop is
        // the only caller and Wasm never runs concurrently with it, so nothing writes these
        // bytes while the slice exists.
        let bytes = unsafe {
            core::slice::from_raw_parts((base + offset as usize) as *const u8, len as usize)
        };
        Some(f(bytes))
    }
}

/// Memories created since the last [`capture`] began.
static CREATED: Mutex<Vec<Arc<MemoryCell>>> = Mutex::new(Vec::new());

/// Runs `f` (an instantiation) and returns the memories created during it, in order.
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<Arc<MemoryCell>>) {
    CREATED.lock().clear();
    let result = f();
    let cells = core::mem::take(&mut *CREATED.lock());
    (result, cells)
}

/// The `MemoryCreator` registered with the engine.
pub struct KernelMemories;

struct KernelMemory {
    cell: Arc<MemoryCell>,
    /// Bytes allocated (a multiple of PAGE, at least one page).
    capacity: usize,
    maximum: Option<usize>,
}

fn layout(bytes: usize) -> Option<Layout> {
    Layout::from_size_align(bytes.max(1).checked_next_multiple_of(PAGE)?, PAGE).ok()
}

// SAFETY: the memory is one heap allocation of `capacity` bytes (page-aligned, a multiple of
// the page size) that stays valid until drop; `as_ptr` returns its start, `byte_size` never
// exceeds `capacity`, bytes between the size and the capacity are zero, and growth either fits
// the allocation or moves it (allowed: reservation 0 means wasmtime reloads the base after
// every grow). No guard region is needed: tuk-engine configures a guard size of 0, so compiled
// code bounds-checks every access.
unsafe impl LinearMemory for KernelMemory {
    fn byte_size(&self) -> usize {
        self.cell.bytes()
    }

    fn byte_capacity(&self) -> usize {
        self.capacity
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if self.maximum.is_some_and(|max| new_size > max) {
            wasmtime::bail!("linear memory cannot grow past its maximum");
        }
        if new_size > self.capacity {
            let old = layout(self.capacity).expect("valid when allocated");
            let new = layout(new_size).ok_or_else(|| wasmtime::format_err!("size overflow"))?;
            // SAFETY: `base` was allocated with `old`; `new` has the same alignment and a
            // non-zero size.
            let ptr = unsafe { realloc(self.cell.base() as *mut u8, old, new.size()) };
            if ptr.is_null() {
                wasmtime::bail!("out of memory growing a linear memory to {new_size} bytes");
            }
            // SAFETY: the bytes past the old capacity are part of the new allocation and must
            // read as zero, as Wasm memory growth requires.
            unsafe {
                core::ptr::write_bytes(ptr.add(self.capacity), 0, new.size() - self.capacity)
            };
            self.cell.base.store(ptr as usize, Ordering::Relaxed);
            self.capacity = new.size();
        }
        self.cell.bytes.store(new_size, Ordering::Relaxed);
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.cell.base() as *mut u8
    }
}

impl Drop for KernelMemory {
    fn drop(&mut self) {
        let base = self.cell.base.swap(0, Ordering::Relaxed);
        self.cell.bytes.store(0, Ordering::Relaxed);
        if let (Some(layout), true) = (layout(self.capacity), base != 0) {
            // SAFETY: `base` was allocated with this layout and is released exactly once.
            unsafe { dealloc(base as *mut u8, layout) };
        }
    }
}

// SAFETY: memories are fresh zeroed allocations owned by wasmtime's instance until dropped
// (see `KernelMemory`); a reserved size or guard request other than 0 (which tuk-engine never
// makes) is refused rather than ignored.
unsafe impl MemoryCreator for KernelMemories {
    fn new_memory(
        &self,
        _ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, alloc::string::String> {
        if reserved_size_in_bytes.is_some_and(|r| r > 0) || guard_size_in_bytes > 0 {
            return Err("the kernel's memories need memory_reservation(0) and no guard".into());
        }
        let layout = layout(minimum).ok_or("linear memory size overflow")?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(alloc::format!(
                "out of memory for a {minimum}-byte linear memory"
            ));
        }
        let cell = Arc::new(MemoryCell {
            base: AtomicUsize::new(ptr as usize),
            bytes: AtomicUsize::new(minimum),
        });
        CREATED.lock().push(Arc::clone(&cell));
        Ok(Box::new(KernelMemory {
            cell,
            capacity: layout.size(),
            maximum,
        }))
    }
}
