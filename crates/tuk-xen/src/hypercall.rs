//! Hypercall numbers, sub-operations and argument blocks (`xen.h`, `memory.h`, `sched.h`,
//! `event_channel.h`, `grant_table.h`, `hvm/hvm_op.h`, `hvm/params.h`, `version.h`).
//!
//! The kernel issues `vmcall` (Intel) or `vmmcall` (AMD) with RAX = the number and RDI, RSI,
//! RDX, R10, R8 = the arguments; an argument block is passed by the guest-physical address of
//! the bytes [`encode`](AddToPhysmap::encode) produced, and outputs are decoded from the same
//! bytes afterwards. The result in RAX is decoded by [`result`].
//!
//! The numbers are those of interface version `__XEN_LATEST_INTERFACE_VERSION__`; the C headers
//! give the pre-3.0.2 "compat" numbers for `sched_op` (6) and `event_channel_op` (16) unless
//! the includer defines `__XEN_TOOLS__` or `__XEN_INTERFACE_VERSION__`.

use crate::bytes::{put_u16, put_u32, put_u64, u32_at};

pub const MEMORY_OP: u64 = 12;
pub const SET_TIMER_OP: u64 = 15;
pub const XEN_VERSION: u64 = 17;
pub const CONSOLE_IO: u64 = 18;
pub const GRANT_TABLE_OP: u64 = 20;
pub const VCPU_OP: u64 = 24;
pub const SCHED_OP: u64 = 29;
pub const EVENT_CHANNEL_OP: u64 = 32;
pub const HVM_OP: u64 = 34;

/// `xen_version` commands.
pub mod xenver {
    /// Returns `major << 16 | minor` in RAX.
    pub const VERSION: u64 = 0;
    /// Fills a 16-byte `xen_extraversion_t`.
    pub const EXTRAVERSION: u64 = 1;
    pub const EXTRAVERSION_LEN: usize = 16;
}

/// `memory_op` commands and map spaces.
pub mod xenmem {
    pub const ADD_TO_PHYSMAP: u64 = 7;
    pub const MEMORY_MAP: u64 = 9;
    pub const MAPSPACE_SHARED_INFO: u32 = 0;
    pub const MAPSPACE_GRANT_TABLE: u32 = 1;
}

/// `sched_op` commands and shutdown reasons.
pub mod schedop {
    pub const YIELD: u64 = 0;
    pub const BLOCK: u64 = 1;
    pub const SHUTDOWN: u64 = 2;
    pub const POLL: u64 = 3;
    pub const SHUTDOWN_POWEROFF: u32 = 0;
    pub const SHUTDOWN_REBOOT: u32 = 1;
    pub const SHUTDOWN_SUSPEND: u32 = 2;
    pub const SHUTDOWN_CRASH: u32 = 3;
    pub const SHUTDOWN_WATCHDOG: u32 = 4;
}

/// `event_channel_op` commands.
pub mod evtchnop {
    pub const BIND_INTERDOMAIN: u64 = 0;
    pub const BIND_VIRQ: u64 = 1;
    pub const CLOSE: u64 = 3;
    pub const SEND: u64 = 4;
    pub const ALLOC_UNBOUND: u64 = 6;
    pub const UNMASK: u64 = 9;
}

/// `grant_table_op` commands.
pub mod gnttabop {
    pub const SETUP_TABLE: u64 = 2;
    pub const QUERY_SIZE: u64 = 6;
    pub const SET_VERSION: u64 = 8;
    /// `GNTST_okay`.
    pub const GNTST_OKAY: i16 = 0;
}

/// `hvm_op` commands.
pub mod hvmop {
    pub const SET_PARAM: u64 = 0;
    pub const GET_PARAM: u64 = 1;
    pub const SET_EVTCHN_UPCALL_VECTOR: u64 = 23;
}

/// HVM parameters (`hvm/params.h`).
pub mod hvm_param {
    pub const CALLBACK_IRQ: u32 = 0;
    pub const STORE_PFN: u32 = 1;
    pub const STORE_EVTCHN: u32 = 2;
    pub const CONSOLE_PFN: u32 = 17;
    pub const CONSOLE_EVTCHN: u32 = 18;
}

/// A hypercall's negative result (`-errno`, Xen's `errno.h` numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i64);

impl Errno {
    pub fn name(self) -> &'static str {
        match -self.0 {
            1 => "EPERM",
            2 => "ENOENT",
            3 => "ESRCH",
            11 => "EAGAIN",
            12 => "ENOMEM",
            13 => "EACCES",
            14 => "EFAULT",
            16 => "EBUSY",
            17 => "EEXIST",
            22 => "EINVAL",
            28 => "ENOSPC",
            38 => "ENOSYS",
            95 => "EOPNOTSUPP",
            _ => "an unknown error",
        }
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Xen refused the hypercall: {} ({})", self.name(), self.0)
    }
}

/// Decodes RAX after a hypercall: negative values in `-4095..0` are errors.
pub fn result(rax: u64) -> Result<u64, Errno> {
    let v = rax as i64;
    if (-4095..0).contains(&v) {
        Err(Errno(v))
    } else {
        Ok(rax)
    }
}

/// `struct xen_add_to_physmap` (24 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddToPhysmap {
    pub domid: u16,
    pub size: u16,
    pub space: u32,
    pub idx: u64,
    pub gpfn: u64,
}

impl AddToPhysmap {
    pub const SIZE: usize = 24;

    /// Maps shared_info at `gpfn`.
    pub fn shared_info(gpfn: u64) -> Self {
        Self {
            domid: crate::DOMID_SELF,
            size: 0,
            space: xenmem::MAPSPACE_SHARED_INFO,
            idx: 0,
            gpfn,
        }
    }

    /// Maps grant-table frame `frame` at `gpfn`.
    pub fn grant_table(frame: u64, gpfn: u64) -> Self {
        Self {
            domid: crate::DOMID_SELF,
            size: 0,
            space: xenmem::MAPSPACE_GRANT_TABLE,
            idx: frame,
            gpfn,
        }
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u16(&mut b, 0, self.domid);
        put_u16(&mut b, 2, self.size);
        put_u32(&mut b, 4, self.space);
        put_u64(&mut b, 8, self.idx);
        put_u64(&mut b, 16, self.gpfn);
        b
    }
}

/// `struct evtchn_alloc_unbound` (12 bytes): `port` is the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvtchnAllocUnbound {
    pub dom: u16,
    pub remote_dom: u16,
}

impl EvtchnAllocUnbound {
    pub const SIZE: usize = 8;
    pub const PORT_OFFSET: usize = 4;

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u16(&mut b, 0, self.dom);
        put_u16(&mut b, 2, self.remote_dom);
        b
    }

    /// The port Xen allocated, read back from the block after the call.
    pub fn port(block: &[u8; Self::SIZE]) -> u32 {
        u32_at(block, Self::PORT_OFFSET)
    }
}

/// `struct evtchn_send`, `evtchn_unmask` and `evtchn_close`: one `evtchn_port_t`.
pub fn evtchn_port_block(port: u32) -> [u8; 4] {
    port.to_le_bytes()
}

/// `struct sched_shutdown { unsigned int reason; }`.
pub fn sched_shutdown(reason: u32) -> [u8; 4] {
    reason.to_le_bytes()
}

/// `struct sched_poll` (24 bytes): the guest address of an array of `nr_ports` ports and a
/// timeout in Xen system time (ns; 0 = none).
pub fn sched_poll(ports_addr: u64, nr_ports: u32, timeout_ns: u64) -> [u8; 24] {
    let mut b = [0u8; 24];
    put_u64(&mut b, 0, ports_addr);
    put_u32(&mut b, 8, nr_ports);
    put_u64(&mut b, 16, timeout_ns);
    b
}

/// `struct xen_hvm_param` (16 bytes), for `HVMOP_get_param`/`set_param`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HvmParam {
    pub domid: u16,
    pub index: u32,
    pub value: u64,
}

impl HvmParam {
    pub const SIZE: usize = 16;
    pub const VALUE_OFFSET: usize = 8;

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u16(&mut b, 0, self.domid);
        put_u32(&mut b, 4, self.index);
        put_u64(&mut b, 8, self.value);
        b
    }

    /// The value `HVMOP_get_param` wrote back.
    pub fn value(block: &[u8; Self::SIZE]) -> u64 {
        crate::bytes::u64_at(block, Self::VALUE_OFFSET)
    }
}

/// `struct xen_hvm_evtchn_upcall_vector` (8 bytes): the LAPIC vector (>= 0x10) Xen raises on
/// `vcpu` when an event is pending. It is edge-triggered through the vLAPIC: EOI it.
pub fn upcall_vector(vcpu: u32, vector: u8) -> [u8; 8] {
    let mut b = [0u8; 8];
    put_u32(&mut b, 0, vcpu);
    b[4] = vector;
    b
}

/// `struct gnttab_query_size` (16 bytes): `nr_frames`, `max_nr_frames` and `status` are
/// outputs.
pub struct GnttabQuerySize;

impl GnttabQuerySize {
    pub const SIZE: usize = 16;

    pub fn encode(dom: u16) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put_u16(&mut b, 0, dom);
        b
    }

    /// `(nr_frames, max_nr_frames)`, or the grant status Xen returned.
    pub fn decode(block: &[u8; Self::SIZE]) -> Result<(u32, u32), i16> {
        let status = i16::from_le_bytes([block[12], block[13]]);
        if status != gnttabop::GNTST_OKAY {
            return Err(status);
        }
        Ok((u32_at(block, 4), u32_at(block, 8)))
    }
}

/// `struct gnttab_set_version { uint32_t version; }`.
pub fn gnttab_set_version(version: u32) -> [u8; 4] {
    version.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_split_errors_from_values() {
        assert_eq!(result(0), Ok(0));
        assert_eq!(result(0x0004_0011), Ok(0x0004_0011));
        assert_eq!(result(-22i64 as u64), Err(Errno(-22)));
        assert_eq!(result(-22i64 as u64).unwrap_err().name(), "EINVAL");
        // An address-like large value is not an error.
        assert_eq!(result(0xffff_8000_0000_0000), Ok(0xffff_8000_0000_0000));
    }

    #[test]
    fn blocks_have_the_c_layout() {
        let b = AddToPhysmap::shared_info(0x1234).encode();
        assert_eq!(&b[0..2], &0x7ff0u16.to_le_bytes());
        assert_eq!(&b[16..24], &0x1234u64.to_le_bytes());
        let mut q = GnttabQuerySize::encode(crate::DOMID_SELF);
        q[4] = 4;
        q[8] = 64;
        assert_eq!(GnttabQuerySize::decode(&q), Ok((4, 64)));
        q[12] = 0xff;
        q[13] = 0xff;
        assert_eq!(GnttabQuerySize::decode(&q), Err(-1));
        assert_eq!(upcall_vector(0, 0xf3)[4], 0xf3);
    }
}
