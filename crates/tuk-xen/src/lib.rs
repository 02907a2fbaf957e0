//! The Xen guest ABI tuk needs, as a `no_std`, sans-IO crate on byte slices.
//!
//! The kernel hands this crate the pages it shares with Xen and the backends (shared_info,
//! the grant table, the XenStore and console interfaces, the netif rings) as `&mut [u8]`, and
//! the argument blocks of hypercalls as byte arrays; nothing here holds a raw pointer or issues a
//! hypercall (`#![forbid(unsafe_code)]`). Every layout is written as byte offsets with
//! little-endian accessors, so the crate means the same on the host, where its tests compare
//! every size, offset and constant against Debian's `libxen-dev` C headers
//! (`tests/c_headers.rs`), as in the kernel.
//!
//! **The contract for untrusted input.** Anything a backend or Xen writes (XenStore replies and
//! watch events, ring indices, netif responses, `hvm_start_info`) goes through a checked
//! parser: a malformed value is a typed error, never a panic, an out-of-bounds access or an
//! unbounded loop. Accessors on a value that passed its checked constructor do not panic.
//! The parsers are property-tested in the unit tests and fuzzed (`fuzz/`).
//!
//! **Memory ordering.** Shared pages are written concurrently by the other end. The ring
//! functions read each index once per call and put the fences Xen's `ring.h` asks for
//! (`core::sync::atomic::fence`) between data and index updates; the kernel must build the
//! slice from the page for each operation and must not assume it stays unchanged between calls.
//! Bits that Xen sets concurrently (event-channel pending bits, grant `GTF_reading/writing`)
//! must be changed with atomic instructions by the kernel: this crate tells it where they are.
//!
//! Sources: Xen 4.17 public headers (`xen/xen.h`, `io/ring.h`, `io/xs_wire.h`, `io/console.h`,
//! `io/netif.h`, `grant_table.h`, `event_channel.h`, `sched.h`, `memory.h`, `hvm/hvm_op.h`,
//! `hvm/params.h`, `arch-x86/hvm/start_info.h`, `arch-x86/cpuid.h`). See docs/xen.md.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

mod bytes;
pub mod console;
pub mod cpuid;
#[doc(hidden)]
pub mod fuzz;
pub mod grant;
pub mod hypercall;
pub mod netif;
pub mod ring;
pub mod shared_info;
pub mod start_info;
pub mod xenstore;

/// Xen's page size on x86.
pub const PAGE_SIZE: usize = 4096;
/// `DOMID_SELF`: "the calling domain" in hypercall arguments.
pub const DOMID_SELF: u16 = 0x7ff0;

/// An index pair of a shared byte ring that no honest peer can produce: the producer is more
/// than the ring's size ahead of the consumer (or behind it, which wraps to the same thing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingIndexError {
    pub cons: u32,
    pub prod: u32,
    pub size: u32,
}

impl core::fmt::Display for RingIndexError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "impossible ring indices: producer {} is {} ahead of consumer {} on a {}-byte ring; \
             the peer corrupted the ring, disconnect it",
            self.prod,
            self.prod.wrapping_sub(self.cons),
            self.cons,
            self.size
        )
    }
}
