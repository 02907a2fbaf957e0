//! `log` backend: one line per record on the console (stdout: /dev/console for PID 1), stamped
//! with the kernel's boot clock, in the tuk kernel's format:
//! `[   secs.micros] LEVEL target: message`.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

use crate::sys;

struct ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let t = sys::since_boot().as_micros();
        let _ = writeln!(
            std::io::stdout().lock(),
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
    // Only fails if called twice; main calls it once.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Prints a line on the console regardless of the log level (protocol lines the launcher reads).
pub fn console_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}
