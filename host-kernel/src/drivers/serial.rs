//! The 16550 UART at COM1 (I/O port 0x3f8, IRQ 4): the console.
//!
//! Output is polled (the emulated UART never makes us wait); input raises IRQ 4, which only
//! wakes the main loop, which then drains the receive register. [`EmergencyWriter`] writes
//! without taking the console lock, for exception handlers and panics that may interrupt a
//! holder of that lock.

use spin::Mutex;

use crate::arch::port::{inb, outb};

const COM1: u16 = 0x3f8;
const LSR_DATA_READY: u8 = 0x01;
const LSR_THR_EMPTY: u8 = 0x20;
/// The ISA interrupt line of COM1 (GSI 4 on the I/O APIC).
pub const COM1_GSI: u8 = 4;

/// A byte console: the serial port here, the Xen console ring later.
pub trait Console {
    fn write_bytes(&mut self, bytes: &[u8]);
    fn read_byte(&mut self) -> Option<u8>;
}

pub struct Uart16550 {
    base: u16,
}

impl Uart16550 {
    const fn new(base: u16) -> Self {
        Self { base }
    }

    fn init(&self) {
        outb(self.base + 1, 0x00); // no interrupts while configuring
        outb(self.base + 3, 0x80); // DLAB
        outb(self.base, 0x01); // 115200 baud
        outb(self.base + 1, 0x00);
        outb(self.base + 3, 0x03); // 8N1
        outb(self.base + 2, 0xc7); // FIFO on, cleared, 14-byte threshold
        outb(self.base + 4, 0x0b); // DTR | RTS | OUT2 (OUT2 gates the IRQ line)
        outb(self.base + 1, 0x01); // interrupt on received data
    }

    fn put(&self, b: u8) {
        while inb(self.base + 5) & LSR_THR_EMPTY == 0 {}
        outb(self.base, b);
    }
}

impl Console for Uart16550 {
    fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
    }

    fn read_byte(&mut self) -> Option<u8> {
        (inb(self.base + 5) & LSR_DATA_READY != 0).then(|| inb(self.base))
    }
}

static CONSOLE: Mutex<Uart16550> = Mutex::new(Uart16550::new(COM1));

/// Sets up the UART; on Xen (detected before this) the console is Xen's debug port instead.
pub fn init() {
    if crate::arch::on_xen() {
        crate::arch::xen_debug_write(b"tuk: on Xen: console on the debug port 0xe9\n");
    } else {
        CONSOLE.lock().init();
    }
}

/// Writes to the console (takes its lock).
pub fn write_str(s: &str) {
    let mut console = CONSOLE.lock();
    if crate::arch::on_xen() {
        // The Xen console ring once it is up (drivers::xen), the debug port before.
        if !super::xen::console_write(s.as_bytes()) {
            crate::arch::xen_debug_write(s.as_bytes());
        }
    } else {
        console.write_bytes(s.as_bytes());
    }
}

/// Reads one pending input byte, if any (on Xen from the console ring's input).
pub fn read_byte() -> Option<u8> {
    if crate::arch::on_xen() {
        return super::xen::console_read_byte();
    }
    CONSOLE.lock().read_byte()
}

/// Lock-free console writer for fatal paths only.
pub struct EmergencyWriter;

impl core::fmt::Write for EmergencyWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        if crate::arch::on_xen() {
            crate::arch::xen_debug_write(s.as_bytes());
            super::xen::console_write_emergency(s.as_bytes());
        } else {
            Uart16550::new(COM1).write_bytes(s.as_bytes());
        }
        Ok(())
    }
}
