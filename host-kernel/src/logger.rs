//! `log` backend: one line per record on the console, stamped with the monotonic clock:
//! `[   secs.micros] LEVEL target: message`.

use core::fmt::Write;

use log::{LevelFilter, Log, Metadata, Record};

use crate::arch::now_us;
use crate::drivers::serial;

struct ConsoleLogger;

struct ConsoleFmt;

impl Write for ConsoleFmt {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        serial::write_str(s);
        Ok(())
    }
}

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let t = now_us();
        let _ = writeln!(
            ConsoleFmt,
            "[{:>5}.{:06}] {:<5} {}: {}",
            t / 1_000_000,
            t % 1_000_000,
            record.level(),
            record.target(),
            record.args()
        );
    }

    fn flush(&self) {}
}

static LOGGER: ConsoleLogger = ConsoleLogger;

pub fn init(level: LevelFilter) {
    // Only fails if called twice; the kernel calls it once.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Prints a line on the console regardless of the log level (protocol lines the launcher reads).
pub fn console_line(args: core::fmt::Arguments<'_>) {
    let _ = ConsoleFmt.write_fmt(args);
    serial::write_str("\n");
}
