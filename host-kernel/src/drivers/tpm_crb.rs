//! TPM 2.0 over the Command Response Buffer interface (TCG PC Client Platform TPM Profile,
//! CRB), locality 0 at 0xFED40000: QEMU's `tpm-crb` device backed by swtpm. Implements
//! `tuk_tpm::Transport`; the commands themselves are built and parsed by `tuk-tpm`.
//!
//! One command at a time, polled (the TPM is used at boot and on publish, never on the
//! request path), every wait bounded by a deadline.

use tuk_tpm::{Transport, TransportError};

use crate::arch::{map_mmio, now_us};

pub const CRB_BASE: u64 = 0xfed4_0000;
const CRB_SIZE: u64 = 0x1000;

const LOC_STATE: usize = 0x00;
const LOC_CTRL: usize = 0x08;
const LOC_STS: usize = 0x0c;
const INTF_ID: usize = 0x30;
const CTRL_REQ: usize = 0x40;
const CTRL_STS: usize = 0x44;
const CTRL_START: usize = 0x4c;
const CTRL_CMD_SIZE: usize = 0x58;
const CTRL_CMD_LADDR: usize = 0x5c;
const CTRL_CMD_HADDR: usize = 0x60;
const CTRL_RSP_SIZE: usize = 0x64;
const CTRL_RSP_ADDR: usize = 0x68;

const LOC_STATE_VALID: u32 = 1 << 7;
const LOC_CTRL_REQUEST: u32 = 1 << 0;
const LOC_STS_GRANTED: u32 = 1 << 0;
const REQ_CMD_READY: u32 = 1 << 0;
const STS_FATAL: u32 = 1 << 0;

/// Longest a single command may take (key generation on a software TPM is the slow case).
const COMMAND_TIMEOUT_US: u64 = 30_000_000;

pub struct Crb {
    base: usize,
}

fn read32(addr: usize) -> u32 {
    // SAFETY: `addr` lies in the CRB register page, mapped uncached by `Crb::probe`; CRB
    // registers are 32-bit aligned.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn write32(addr: usize, value: u32) {
    // SAFETY: as for `read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

fn wait(what: &'static str, mut done: impl FnMut() -> bool) -> Result<(), TransportError> {
    let deadline = now_us() + COMMAND_TIMEOUT_US;
    while !done() {
        if now_us() > deadline {
            return Err(TransportError::Timeout(what));
        }
        core::hint::spin_loop();
    }
    Ok(())
}

impl Crb {
    /// Finds a CRB TPM at the standard address; `None` if there is none (no `-device tpm-crb`).
    pub fn probe() -> Option<Crb> {
        map_mmio(CRB_BASE, CRB_SIZE);
        let crb = Crb {
            base: CRB_BASE as usize,
        };
        let intf = read32(crb.base + INTF_ID);
        let state = read32(crb.base + LOC_STATE);
        // Absent devices read as all ones (or zero); a CRB interface reports type 1 in
        // INTF_ID[3:0] and a valid locality state.
        if intf == u32::MAX || intf & 0xf != 1 || state & LOC_STATE_VALID == 0 {
            return None;
        }
        Some(crb)
    }

    fn reg(&self, offset: usize) -> usize {
        self.base + offset
    }

    fn request_locality(&mut self) -> Result<(), TransportError> {
        if read32(self.reg(LOC_STS)) & LOC_STS_GRANTED != 0 {
            return Ok(());
        }
        write32(self.reg(LOC_CTRL), LOC_CTRL_REQUEST);
        wait("locality 0 not granted", || {
            read32(self.reg(LOC_STS)) & LOC_STS_GRANTED != 0
        })
    }

    /// The buffer address the TPM announces, checked to lie in the register page.
    fn buffer(&self, addr: u64, size: u32, len: usize) -> Result<usize, TransportError> {
        let end = addr
            .checked_add(u64::from(size))
            .ok_or(TransportError::Device("buffer wraps"))?;
        if addr < CRB_BASE || end > CRB_BASE + CRB_SIZE || len > size as usize {
            return Err(TransportError::Device(
                "CRB buffer outside the register page or too small",
            ));
        }
        Ok(addr as usize)
    }
}

impl Transport for Crb {
    fn transact(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.request_locality()?;
        write32(self.reg(CTRL_REQ), REQ_CMD_READY);
        wait("TPM not ready for a command", || {
            read32(self.reg(CTRL_REQ)) & REQ_CMD_READY == 0
        })?;
        if read32(self.reg(CTRL_STS)) & STS_FATAL != 0 {
            return Err(TransportError::Device("TPM reports a fatal error"));
        }
        let cmd_addr = u64::from(read32(self.reg(CTRL_CMD_LADDR)))
            | (u64::from(read32(self.reg(CTRL_CMD_HADDR))) << 32);
        let cmd = self.buffer(cmd_addr, read32(self.reg(CTRL_CMD_SIZE)), command.len())?;
        for (i, &b) in command.iter().enumerate() {
            // SAFETY: `cmd..cmd + command.len()` was checked to lie inside the mapped page.
            unsafe { core::ptr::write_volatile((cmd + i) as *mut u8, b) };
        }
        write32(self.reg(CTRL_START), 1);
        wait("TPM command did not complete", || {
            read32(self.reg(CTRL_START)) & 1 == 0
        })?;
        if read32(self.reg(CTRL_STS)) & STS_FATAL != 0 {
            return Err(TransportError::Device("TPM reports a fatal error"));
        }
        let rsp_addr = u64::from(read32(self.reg(CTRL_RSP_ADDR)))
            | (u64::from(read32(self.reg(CTRL_RSP_ADDR + 4))) << 32);
        let rsp_size = read32(self.reg(CTRL_RSP_SIZE));
        let rsp = self.buffer(rsp_addr, rsp_size, 10)?;
        let mut header = [0u8; 10];
        for (i, b) in header.iter_mut().enumerate() {
            // SAFETY: the response buffer was checked to lie inside the mapped page.
            *b = unsafe { core::ptr::read_volatile((rsp + i) as *const u8) };
        }
        let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        if len < 10 || len > rsp_size as usize || len > response.len() {
            return Err(TransportError::Device("TPM response size out of range"));
        }
        for (i, b) in response[..len].iter_mut().enumerate() {
            // SAFETY: `len <= rsp_size`, checked above.
            *b = unsafe { core::ptr::read_volatile((rsp + i) as *const u8) };
        }
        Ok(len)
    }
}
