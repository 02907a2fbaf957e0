//! The tuk launcher: builds the host-kernel and boots it under QEMU.
//!
//! Everything the `tuk` CLI and the end-to-end tests do with a VM goes through this crate, so
//! the contract with the kernel (docs/contracts.md: QEMU command line, kernel command line,
//! console protocol, exit codes, health JSON) is implemented in exactly one place:
//!
//! - [`kernel`]: find the source tree, pick a toolchain with library source, build the image,
//!   hash it.
//! - [`qemu`]: the QEMU command line ([`qemu::qemu_args`]) and the kernel command line.
//! - [`console`]: the serial console: copy to `console.log`, keep a tail, spot the ready line.
//! - [`health`]: a tiny blocking HTTP client for `GET /_tuk/health` and the health document.
//! - [`measured`]: the launcher's measurements (PCR 4 kernel, PCR 5 boot configuration) and
//!   their CEL-JSON event-log records (docs/measurement.md); `tuk-vtpm` runs the swtpm.
//! - [`instance`]: [`Instance::start`] manufactures the VM's vTPM on first use, measures the
//!   launch into it, boots and waits for readiness, writes `instance.json`;
//!   [`Instance::shutdown`] stops cleanly; dropping an [`Instance`] kills QEMU (and its swtpm),
//!   so no process outlives its owner.
//! - [`memory_file`]: guest RAM as a shared file on tmpfs (0600, removed when QEMU exits).
//! - [`monitor`]: out-of-guest measurement: the kernel image's read-only segments against
//!   guest RAM, on an interval; [`monitor_report`]: its signed report for verifiers.
//! - [`tamper`]: the attack tool behind `tuk tamper` (writes guest RAM), for testing detection.
//!
//! Errors are one enum, [`LaunchError`], whose messages say what to do next.

pub mod console;
mod error;
pub mod health;
pub mod instance;
pub mod kernel;
pub mod measured;
pub mod memory_file;
pub mod monitor;
pub mod monitor_report;
pub mod qemu;
pub mod tamper;

pub use error::LaunchError;
pub use health::Health;
pub use instance::{ExitKind, Instance, InstanceInfo, RunConfig};
pub use kernel::{KernelImage, KernelSource, Toolchain};
pub use qemu::Accel;
