//! virtio-net over virtio-mmio, through the `virtio-drivers` crate, as a smoltcp `phy::Device`.
//!
//! The transports are found from the `virtio_mmio.device=<size>@<addr>:<irq>` entries that
//! QEMU's microvm appends to the kernel command line (Linux's syntax). The device's interrupt
//! line only wakes the main loop; the loop acknowledges it ([`NetDevice::ack_interrupt`])
//! before polling, so a packet that arrives during a poll raises a fresh edge.

use alloc::vec::Vec;
use core::alloc::Layout;
use core::cell::RefCell;
use core::ptr::NonNull;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use virtio_drivers::device::net::{RxBuffer, VirtIONet};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use crate::arch::map_mmio;

/// Receive/transmit queue depth.
const QUEUE_SIZE: usize = 128;
/// Receive buffer size: one Ethernet frame plus the virtio-net header.
const RX_BUFFER_LEN: usize = 2048;
const MTU: usize = 1514;

/// DMA memory comes from the kernel heap: RAM is identity-mapped, so a heap pointer is the
/// physical address the device uses.
pub struct KernelHal;

fn dma_layout(pages: usize) -> Layout {
    Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("DMA layout")
}

// SAFETY: allocations are fresh, zeroed, page-aligned heap memory owned by the driver until
// `dma_dealloc`; identity mapping makes virtual and physical addresses equal; MMIO ranges are
// mapped uncached before use.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: the layout has a non-zero size (pages >= 1).
        let ptr = unsafe { alloc::alloc::alloc_zeroed(dma_layout(pages)) };
        let ptr = NonNull::new(ptr).expect("out of memory for virtio DMA buffers");
        (ptr.as_ptr() as PhysAddr, ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: the caller passes back what `dma_alloc` returned, with the same page count.
        unsafe { alloc::alloc::dealloc(vaddr.as_ptr(), dma_layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        map_mmio(paddr, size as u64);
        NonNull::new(paddr as *mut u8).expect("MMIO at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// A virtio-mmio transport announced on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    pub addr: u64,
    pub size: u64,
    pub gsi: u8,
}

/// Parses one `virtio_mmio.device=` value: `<size>@<addr>:<irq>`, size with an optional K/M
/// suffix, numbers decimal or 0x-hex. Returns `None` for anything malformed.
pub fn parse_mmio_slot(value: &str) -> Option<MmioSlot> {
    fn num(s: &str) -> Option<u64> {
        match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        }
    }
    let (size, rest) = value.split_once('@')?;
    let (addr, irq) = rest.split_once(':')?;
    let size = match size.as_bytes().last()? {
        b'K' | b'k' => num(&size[..size.len() - 1])?.checked_mul(1024)?,
        b'M' | b'm' => num(&size[..size.len() - 1])?.checked_mul(1024 * 1024)?,
        _ => num(size)?,
    };
    let addr = num(addr)?;
    let gsi = u8::try_from(num(irq)?).ok()?;
    (size >= 0x100 && addr % 0x200 == 0).then_some(MmioSlot { addr, size, gsi })
}

type Driver = VirtIONet<KernelHal, MmioTransport<'static>, QUEUE_SIZE>;

/// The NIC. Tokens borrow the driver through a `RefCell` because smoltcp hands out a receive
/// and a transmit token at once.
pub struct NetDevice {
    driver: RefCell<Driver>,
    /// The interrupt line (I/O APIC input).
    pub gsi: u8,
    pub slot: MmioSlot,
}

#[derive(Debug)]
pub enum NetProbeError {
    NoNetworkDevice(usize),
    Driver(virtio_drivers::Error),
}

impl core::fmt::Display for NetProbeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoNetworkDevice(n) => write!(
                f,
                "no virtio-net device among {n} virtio-mmio transport(s): start QEMU with \
                 `-device virtio-net-device,netdev=...` on -M microvm"
            ),
            Self::Driver(e) => write!(f, "virtio-net initialisation failed: {e}"),
        }
    }
}

impl NetDevice {
    /// Finds the first virtio-net device among `slots` and initialises it.
    pub fn probe(slots: &[MmioSlot]) -> Result<NetDevice, NetProbeError> {
        for slot in slots {
            map_mmio(slot.addr, slot.size);
            let header = NonNull::new(slot.addr as *mut VirtIOHeader).expect("slot at address 0");
            // SAFETY: the slot is a virtio-mmio register window announced by the platform,
            // mapped uncached just above, used by nothing else, and never unmapped.
            let transport = match unsafe { MmioTransport::new(header, slot.size as usize) } {
                Ok(t) => t,
                Err(e) => {
                    log::debug!("virtio-mmio {:#x}: {e}", slot.addr);
                    continue;
                }
            };
            if transport.device_type() != DeviceType::Network {
                continue;
            }
            let driver = Driver::new(transport, RX_BUFFER_LEN).map_err(NetProbeError::Driver)?;
            return Ok(NetDevice {
                driver: RefCell::new(driver),
                gsi: slot.gsi,
                slot: *slot,
            });
        }
        Err(NetProbeError::NoNetworkDevice(slots.len()))
    }

    pub fn mac(&self) -> [u8; 6] {
        self.driver.borrow().mac_address()
    }

    /// Acknowledges the device's interrupt (lowers the line). Call before polling.
    pub fn ack_interrupt(&mut self) {
        let _ = self.driver.get_mut().ack_interrupt();
    }
}

pub struct RxToken<'a> {
    driver: &'a RefCell<Driver>,
    buffer: RxBuffer,
}

pub struct TxToken<'a> {
    driver: &'a RefCell<Driver>,
}

impl phy::Device for NetDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let buffer = self.driver.get_mut().receive().ok()?;
        Some((
            RxToken {
                driver: &self.driver,
                buffer,
            },
            TxToken {
                driver: &self.driver,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        self.driver.get_mut().can_send().then_some(TxToken {
            driver: &self.driver,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(QUEUE_SIZE / 2);
        caps
    }
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let result = f(self.buffer.packet());
        if let Err(e) = self.driver.borrow_mut().recycle_rx_buffer(self.buffer) {
            log::error!("virtio-net: cannot recycle a receive buffer: {e}");
        }
        result
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut driver = self.driver.borrow_mut();
        let mut buffer = driver.new_tx_buffer(len);
        let result = f(buffer.packet_mut());
        if let Err(e) = driver.send(buffer) {
            log::warn!("virtio-net: transmit failed: {e}");
        }
        result
    }
}

/// All `virtio_mmio.device=` entries of a command line.
pub fn slots_from_cmdline(cmdline: &str) -> Vec<MmioSlot> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("virtio_mmio.device="))
        .filter_map(parse_mmio_slot)
        .collect()
}
