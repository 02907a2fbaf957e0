//! The launcher's failure paths against real QEMU and tiny hand-made PVH kernels (no HTTP):
//! a file that is not a kernel, a kernel that "panics" (exit status 3), one that prints the
//! ready line but never answers HTTP (boot timeout), plus the pre-spawn checks.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tuk_launcher::{Accel, Instance, LaunchError, RunConfig};

const BASE: u32 = 0x10_0000;
const CODE_AT: usize = 0xd0;
const MSG_AT: usize = 0x100;

/// 32-bit code (GNU as, see below): print the NUL-terminated string at BASE+0x100 on COM1,
/// then wait for an `s` on COM1 and exit QEMU through isa-debug-exit with 0x10 (status 33).
///
///     mov $0x3f8,%dx; mov $0x100100,%esi
///  1: lodsb; test %al,%al; jz 2f; out %al,%dx; jmp 1b
///  2: mov $0x3fd,%dx
///  3: in %dx,%al; test $1,%al; jz 3b
///     mov $0x3f8,%dx; in %dx,%al; cmp $'s',%al; jne 2b
///     mov $0x10,%al; out %al,$0xf4
///  4: hlt; jmp 4b
const PRINT_THEN_WAIT: [u8; 42] = [
    0x66, 0xba, 0xf8, 0x03, 0xbe, 0x00, 0x01, 0x10, 0x00, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb,
    0xf8, 0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x01, 0x74, 0xfb, 0x66, 0xba, 0xf8, 0x03, 0xec, 0x3c,
    0x73, 0x75, 0xee, 0xb0, 0x10, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd,
];
/// Replaces everything after the print loop: `mov $1,%al; out %al,$0xf4; hlt; jmp .-1`
/// (QEMU exit status 3, the contract's fault status).
const EXIT_FAULT_TAIL: [u8; 7] = [0xb0, 0x01, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd];

/// An ELF64 with one PT_LOAD at 1 MiB and a PT_NOTE carrying XEN_ELFNOTE_PHYS32_ENTRY.
fn pvh_elf(code: &[u8], message: &str) -> Vec<u8> {
    let mut img = vec![0u8; MSG_AT + message.len() + 1];
    img[CODE_AT..CODE_AT + code.len()].copy_from_slice(code);
    img[MSG_AT..MSG_AT + message.len()].copy_from_slice(message.as_bytes());
    let size = img.len() as u64;
    let entry = u64::from(BASE) + CODE_AT as u64;
    let mut h = Vec::new();
    h.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0"); // ELF64, LE, v1
    h.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&entry.to_le_bytes());
    h.extend_from_slice(&64u64.to_le_bytes()); // phoff
    h.extend_from_slice(&0u64.to_le_bytes()); // shoff
    h.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 2, 64, 0, 0] {
        // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
        h.extend_from_slice(&v.to_le_bytes());
    }
    let note_off = 64 + 2 * 56;
    // PT_LOAD, RWX, whole file at BASE.
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&7u32.to_le_bytes());
    for v in [0, u64::from(BASE), u64::from(BASE), size, size, 0x1000] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    // PT_NOTE.
    h.extend_from_slice(&4u32.to_le_bytes());
    h.extend_from_slice(&4u32.to_le_bytes());
    for v in [note_off as u64, 0, 0, 20, 20, 4] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    // namesz 4, descsz 4, type 18, "Xen\0", entry.
    for v in [4u32, 4, 18] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(b"Xen\0");
    h.extend_from_slice(&(entry as u32).to_le_bytes());
    assert!(h.len() <= CODE_AT);
    img[..h.len()].copy_from_slice(&h);
    img
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tuk-fake-kernel-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn config(name: &str, image: Vec<u8>) -> RunConfig {
    let dir = scratch(name);
    let kernel = dir.join("kernel");
    std::fs::write(&kernel, image).unwrap();
    let mut cfg = RunConfig::new(kernel, free_port());
    cfg.accel = Accel::Tcg;
    cfg.state_dir = dir.join("state");
    cfg.boot_timeout = Duration::from_secs(20);
    cfg
}

#[test]
fn not_a_kernel_dies_during_boot_with_qemus_reason() {
    let cfg = config("bogus", b"this is not an ELF".repeat(100));
    let err = Instance::start(cfg).unwrap_err();
    eprintln!("{err}");
    let LaunchError::DiedDuringBoot {
        status,
        stderr_tail,
        ..
    } = &err
    else {
        panic!("expected DiedDuringBoot, got {err}");
    };
    assert_ne!(status.code(), Some(33));
    assert!(
        !stderr_tail.is_empty(),
        "QEMU's complaint should be captured: {err}"
    );
    assert!(err.to_string().contains("QEMU stderr"), "{err}");
}

#[test]
fn a_panicking_kernel_reports_status_3_and_its_console() {
    let mut code = PRINT_THEN_WAIT[..0x11].to_vec();
    code.extend_from_slice(&EXIT_FAULT_TAIL);
    let cfg = config(
        "fault",
        pvh_elf(&code, "booting\nPANIC: fake kernel gives up\n"),
    );
    let state = cfg.state_dir.clone();
    let err = Instance::start(cfg).unwrap_err();
    eprintln!("{err}");
    let LaunchError::DiedDuringBoot {
        status,
        console_tail,
        ..
    } = &err
    else {
        panic!("expected DiedDuringBoot, got {err}");
    };
    assert_eq!(status.code(), Some(3), "{err}");
    assert_eq!(console_tail, &["booting", "PANIC: fake kernel gives up"]);
    let msg = err.to_string();
    assert!(
        msg.contains("  | PANIC: fake kernel gives up") && msg.contains("fault or panic"),
        "{msg}"
    );
    let log = std::fs::read_to_string(state.join("console.log")).unwrap();
    assert_eq!(log, "booting\nPANIC: fake kernel gives up\n");
}

#[test]
fn a_kernel_that_never_answers_times_out_and_is_killed() {
    let mut cfg = config(
        "silent",
        pvh_elf(
            &PRINT_THEN_WAIT,
            "tuk: ready listen=10.0.2.15:80 guest_boot_us=42\n",
        ),
    );
    cfg.boot_timeout = Duration::from_secs(3);
    let listen = cfg.listen;
    let started = Instant::now();
    let err = Instance::start(cfg).unwrap_err();
    eprintln!("{err}");
    let took = started.elapsed();
    let LaunchError::BootTimeout { console_tail, .. } = &err else {
        panic!("expected BootTimeout, got {err}");
    };
    assert!(console_tail[0].starts_with("tuk: ready"), "{err}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    // QEMU is gone: its forwarded port is free again.
    TcpListener::bind(listen).expect("QEMU should have been killed");
}

#[test]
fn checks_before_spawning() {
    let mut cfg = config("checks", pvh_elf(&PRINT_THEN_WAIT, "x\n"));
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    cfg.listen = held.local_addr().unwrap();
    let err = Instance::start(cfg.clone()).unwrap_err();
    assert!(matches!(err, LaunchError::PortInUse { .. }), "{err}");
    assert!(err
        .to_string()
        .contains(&format!("port {}", cfg.listen.port())));

    cfg.kernel = "/nonexistent/tuk-kernel".into();
    let err = Instance::start(cfg.clone()).unwrap_err();
    assert!(err.to_string().contains("tuk kernel build"), "{err}");

    cfg.kernel_args.push(("log".into(), "two words".into()));
    let err = Instance::start(cfg).unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, LaunchError::BadKernelArg { .. }), "{err}");
}

#[test]
fn auto_falls_back_to_tcg_when_the_kvm_boot_dies() {
    let mut code = PRINT_THEN_WAIT[..0x11].to_vec();
    code.extend_from_slice(&EXIT_FAULT_TAIL);
    let mut cfg = config("auto", pvh_elf(&code, "PANIC: dies everywhere\n"));
    cfg.accel = Accel::Auto;
    let state = cfg.state_dir.clone();
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let err = Instance::start(cfg).unwrap_err();
    eprintln!("{err}");
    // The error is the last attempt's, and that is always TCG.
    let LaunchError::DiedDuringBoot { accel, .. } = &err else {
        panic!("expected DiedDuringBoot, got {err}");
    };
    assert_eq!(*accel, Accel::Tcg);
    if kvm_usable {
        // The KVM attempt's console was kept aside before TCG started. What it holds depends on
        // the host's KVM: the guest may print its panic line, die on its first SSE instruction,
        // or QEMU may abort before the guest runs at all (docs/platform.md, "KVM"). The promise
        // is that whatever it printed is kept, so the file exists and is a prefix of the
        // guest's output, and QEMU's own words about the KVM attempt are kept beside it.
        let kvm_log = std::fs::read_to_string(state.join("console-kvm.log"))
            .expect("the KVM attempt's console must be kept in console-kvm.log");
        assert!(
            "PANIC: dies everywhere\n".starts_with(&kvm_log),
            "console-kvm.log holds something the guest never printed: {kvm_log:?}"
        );
        assert!(
            state.join("qemu-stderr-kvm.log").is_file(),
            "the KVM attempt's QEMU stderr must be kept in qemu-stderr-kvm.log"
        );
    }
    let log = std::fs::read_to_string(state.join("console.log")).unwrap();
    assert_eq!(log, "PANIC: dies everywhere\n");
}
