//! `shutdown` on the console: exit status 33, promptly, and the process is gone.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use tuk_e2e::{boot, Conn};

#[test]
fn shutdown_of_an_idle_server_is_immediate() {
    let mut vm = boot("shutdown-idle");
    let started = Instant::now();
    let exit = vm.shutdown(Duration::from_secs(10)).expect("shutdown");
    let took = started.elapsed();
    eprintln!(
        "  shutdown without connections: {} ms -> {exit}",
        took.as_millis()
    );
    assert!(exit.is_clean(), "{exit}");
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");
}

#[test]
fn shutdown_is_clean_and_prompt() {
    let mut vm = boot("shutdown");
    let pid = vm.pid();
    let listen = vm.addr();
    // An idle keep-alive connection must not hold the shutdown up beyond the drain limit (2 s).
    let mut idle = Conn::open(vm.addr());
    assert_eq!(idle.get("/_tuk/health").status, 200);

    let started = Instant::now();
    let exit = vm.shutdown(Duration::from_secs(10)).expect("shutdown");
    let took = started.elapsed();
    eprintln!(
        "  shutdown with an idle keep-alive connection: {} ms -> {exit}",
        took.as_millis()
    );
    assert!(exit.is_clean(), "{exit}");
    assert_eq!(exit.code(), Some(33));
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    assert!(
        vm.console_tail()
            .iter()
            .any(|l| l.contains("tuk: shutdown clean")),
        "console: {:#?}",
        vm.console_tail()
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU (pid {pid}) is still there"
    );
    TcpListener::bind(listen).expect("the forwarded port is released");
    idle.wait_closed(Duration::from_secs(2))
        .expect("the idle connection is closed");
    let log = std::fs::read_to_string(vm.console_log_path()).unwrap();
    assert!(log.contains("tuk: ready") && log.contains("tuk: shutdown clean"));
}

#[test]
fn dropping_an_instance_kills_qemu() {
    let vm = boot("drop");
    let pid = vm.pid();
    let listen = vm.addr();
    let info = vm.info().clone();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(info.memory_file.is_file() && vm.state_dir().join("instance.json").is_file());
    drop(vm);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU (pid {pid}) outlived its Instance"
    );
    TcpListener::bind(listen).expect("the forwarded port is released");
    // Guest RAM's file and instance.json go with it.
    assert!(!info.memory_file.exists(), "{}", info.memory_file.display());
    assert!(!info.state_dir.join("instance.json").exists());
}
