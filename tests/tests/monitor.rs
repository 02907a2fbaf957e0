//! Out-of-guest measurement, end to end (docs/measurement.md): the launcher maps the running
//! guest's RAM (QEMU's shared memory-backend file) and re-measures the kernel's text and
//! read-only data against the image QEMU loaded. A host attacker (`tuk tamper`'s code path)
//! changes a byte; the monitor must name the segment and the offset within the interval plus
//! [`SLACK`], report each change once, and the RAM file and `instance.json` must be gone once the
//! VM has stopped.
//!
//! The in-guest monitor is turned off (`integrity.interval_ms=0`): what is tested here needs no
//! cooperation from the guest.

use std::os::unix::fs::PermissionsExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tuk_e2e::{boot_with, kernel_image, kernel_rodata_offset_of, tamper, Conn};
use tuk_launcher::monitor::{Event, Report, Violation};
use tuk_launcher::InstanceInfo;

/// The monitor's interval in this test.
const INTERVAL: Duration = Duration::from_millis(200);
/// Allowed on top of the interval: the check itself (a few ms; tens in a debug build) and the
/// scheduling noise of a loaded 2-core CI machine running QEMU TCG.
const SLACK: Duration = Duration::from_millis(1000);

/// The monitor's next event (a failed check fails the test); fails after `within`.
fn next(rx: &mpsc::Receiver<(Instant, Event)>, within: Duration, what: &str) -> (Instant, Event) {
    match rx.recv_timeout(within) {
        Ok((at, Event::Error(e))) => panic!("{what}: the monitor failed at {at:?}: {e}"),
        Ok(ev) => ev,
        Err(e) => panic!("{what}: nothing within {within:?} ({e})"),
    }
}

fn report(ev: (Instant, Event), what: &str) -> Report {
    match ev.1 {
        Event::Checked(r) => r,
        other => panic!("{what}: expected a clean check, got {other:?}"),
    }
}

fn violation(ev: (Instant, Event), what: &str) -> (Instant, Violation) {
    match ev.1 {
        Event::Violation(v) => (ev.0, v),
        other => panic!("{what}: expected a violation, got {other:?}"),
    }
}

#[test]
fn out_of_guest_monitor_catches_kernel_tampering_once_each() {
    let mut vm = boot_with("monitor", &[("integrity.interval_ms", "0")]);

    // instance.json says where the VM is and what it runs.
    let info = vm.info().clone();
    assert_eq!(InstanceInfo::read(vm.state_dir()).unwrap(), info);
    assert_eq!(info.pid, vm.pid());
    assert_eq!(info.launcher_pid, std::process::id());
    assert_eq!(info.url, vm.url());
    assert_eq!(info.admin, vm.admin_url());
    let image = std::fs::read(kernel_image()).unwrap();
    assert_eq!(
        info.kernel_sha256,
        tuk_measure::hex(&tuk_measure::sha256(&image))
    );
    assert_eq!(info.memory_bytes, 64 << 20);
    assert!(info.memory_file.starts_with("/dev/shm"), "{info:?}");
    let meta = std::fs::metadata(&info.memory_file).unwrap();
    assert_eq!(meta.len(), info.memory_bytes, "QEMU sized the file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // The cost of one check (what `tuk run --monitor-interval` pays per interval).
    let mut monitor = vm.monitor().unwrap();
    let segments: Vec<(String, u64, u64)> = monitor
        .image()
        .segments
        .iter()
        .map(|s| (s.name.clone(), s.paddr, s.len))
        .collect();
    eprintln!("  read-only segments: {segments:x?}");
    assert_eq!(segments[0].0, "text");
    assert_eq!(segments[1].0, "rodata");
    let mut took = Vec::new();
    for _ in 0..10 {
        let r = monitor.check().unwrap();
        assert!(
            r.ok(),
            "the booted kernel's read-only segments are the image's: {r:?}"
        );
        took.push(r.took);
    }
    took.sort();
    let bytes = monitor.check().unwrap().bytes;
    eprintln!(
        "  one check of {bytes} bytes: median {:?}, max {:?} ({} build)",
        took[5],
        took[9],
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );

    let (tx, rx) = mpsc::channel();
    let thread = monitor
        .spawn(INTERVAL, move |e| {
            let _ = tx.send((Instant::now(), e));
        })
        .unwrap();

    // Untouched: several checks, all clean.
    let started = Instant::now();
    for i in 0..3 {
        let r = report(next(&rx, INTERVAL + SLACK, "a clean check"), "untouched");
        assert!(r.ok(), "check {i}: {r:?}");
    }
    assert!(
        started.elapsed() >= INTERVAL * 2,
        "checks come every interval"
    );

    // 1. A byte of the text segment: offset 0x18 is the padding between the PVH note and
    // .text, never executed, so the VM keeps running normally.
    let t = tamper(&vm, "kernel:text", 0x18);
    let tampered_at = Instant::now();
    assert_eq!(t.paddr, segments[0].1 + 0x18);
    assert_eq!(t.new, [t.old[0] ^ 0xFF]);
    let (at, v) = loop {
        let ev = next(&rx, INTERVAL + SLACK, "text tamper detected");
        if let Event::Violation(_) = ev.1 {
            break violation(ev, "text");
        }
        assert!(
            tampered_at.elapsed() <= INTERVAL + SLACK,
            "text tamper not detected"
        );
    };
    let latency = at.duration_since(tampered_at);
    eprintln!("  text tamper detected in {latency:?}: {v:?}");
    assert!(latency <= INTERVAL + SLACK, "{latency:?}");
    assert_eq!(
        (v.segment.as_str(), v.perm, v.offset, v.paddr),
        ("text", "r-x", 0x18, t.paddr)
    );
    assert_ne!(v.expected_sha256, v.observed_sha256);

    // Reported once: the next checks see it but raise nothing new.
    for _ in 0..3 {
        let r = report(next(&rx, INTERVAL + SLACK, "a check"), "no repeat");
        let bad: Vec<_> = r.violations().map(|s| s.name.as_str()).collect();
        assert_eq!(bad, ["text"]);
    }

    // 2. A byte inside a message string in rodata: a second, distinct violation.
    let offset = kernel_rodata_offset_of(b"no component serves this path");
    let t = tamper(&vm, "kernel:rodata", offset + 3);
    let tampered_at = Instant::now();
    let (at, v) = loop {
        let ev = next(&rx, INTERVAL + SLACK, "rodata tamper detected");
        if let Event::Violation(_) = ev.1 {
            break violation(ev, "rodata");
        }
        assert!(
            tampered_at.elapsed() <= INTERVAL + SLACK,
            "rodata tamper not detected"
        );
    };
    eprintln!(
        "  rodata tamper detected in {:?}",
        at.duration_since(tampered_at)
    );
    assert_eq!(
        (v.segment.as_str(), v.perm, v.offset, v.paddr),
        ("rodata", "r--", offset + 3, t.paddr)
    );
    let r = report(next(&rx, INTERVAL + SLACK, "a check"), "both");
    assert_eq!(r.violations().count(), 2);
    thread.stop();

    // The VM was never disturbed.
    assert_eq!(Conn::open(vm.addr()).get("/_tuk/health").status, 200);
    let exit = vm.shutdown(Duration::from_secs(10)).unwrap();
    assert!(exit.is_clean(), "{exit}");
    assert!(
        !info.memory_file.exists(),
        "{} outlived the VM",
        info.memory_file.display()
    );
    assert!(
        !InstanceInfo::path(&info.state_dir).exists(),
        "instance.json outlived the VM"
    );
    assert!(
        tuk_launcher::tamper::tamper(&info.state_dir, &"kernel:text".parse().unwrap(), 0, None)
            .is_err(),
        "nothing to tamper with once the VM is gone"
    );
}

/// The monitor against a synthetic guest RAM built from the real kernel image (each PT_LOAD
/// at its p_paddr, as the PVH loader puts it), without QEMU: clean, then each read-only
/// segment's first, middle and last byte flipped in turn is found at its offset, while
/// writable data is ignored.
#[test]
fn monitor_on_synthetic_ram_from_the_kernel_image() {
    use std::os::unix::fs::FileExt;
    let kernel = kernel_image();
    let image = tuk_launcher::monitor::KernelImage::load(&kernel).unwrap();
    let mut ram = vec![0u8; 8 << 20];
    for s in &image.segments {
        ram[s.paddr as usize..][..s.bytes().len()].copy_from_slice(s.bytes());
    }
    let dir = std::env::temp_dir().join("tuk-e2e");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("synthetic-{}.ram", std::process::id()));
    std::fs::write(&path, &ram).unwrap();
    let mut monitor = tuk_launcher::monitor::Monitor::new(&kernel, &path).unwrap();
    let r = monitor.check().unwrap();
    assert!(r.ok(), "{r:?}");
    eprintln!(
        "  synthetic: one check of {} bytes in {:?}",
        r.bytes, r.took
    );

    let ram_file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for s in &image.segments {
        for offset in [0, s.len / 2, s.len - 1] {
            let at = s.paddr + offset;
            let original = s.bytes()[offset as usize];
            ram_file.write_all_at(&[original ^ 0x01], at).unwrap();
            let r = monitor.check().unwrap();
            let bad: Vec<(&str, Option<u64>)> = r
                .violations()
                .map(|c| (c.name.as_str(), c.first_diff))
                .collect();
            assert_eq!(bad, [(s.name.as_str(), Some(offset))]);
            ram_file.write_all_at(&[original], at).unwrap();
        }
    }
    // Beyond the read-only segments (data, bss, heap) anything may change.
    let top = image
        .segments
        .iter()
        .map(|s| s.paddr + s.len)
        .max()
        .unwrap();
    ram_file.write_all_at(&[0xAB; 4096], top + 4096).unwrap();
    assert!(monitor.check().unwrap().ok());
    std::fs::remove_file(&path).unwrap();
}
