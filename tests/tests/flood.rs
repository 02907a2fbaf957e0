//! Review finding 12 (issue 12), from the attacker's side: many connections that each send a
//! `PUT` with `Content-Length: 1048576` and 1,048,575 body bytes, then hold the connection
//! open. Without a limit the kernel would buffer ~1 MiB per connection (256 connections, a
//! 64 MiB guest) until the heap runs out and the VM exits. With the per-listener buffer budget
//! (host-kernel/src/net/server.rs) the flood gets 503s, the VM keeps running at its default
//! memory, a component answers a fresh connection, and health counts the refusals.
//!
//! `without_a_budget_the_flood_kills_the_vm` (shows the attack is real) runs
//! the same flood with a budget larger than the guest and expects the VM to die.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use tuk_compose::{BuildOptions, Deployment};
use tuk_e2e::{admin_addr, boot_full, health, num, Conn, Instance, IO_TIMEOUT};
use tuk_launcher::RunConfig;

/// Attacking connections on the service listener (the review's number).
const SERVICE_FLOOD: usize = 100;
/// On the admin listener: as many as it serves at once by default.
const ADMIN_FLOOD: usize = 16;
const DECLARED: usize = 1 << 20;
const SENT: usize = DECLARED - 1;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// Boots the default-memory VM with the `hello` component and `extra` kernel arguments. The
/// request timeout is long (as by default, 10 s, or longer) so flooding connections stay.
fn boot_hello(name: &str, extra: &[(&str, &str)]) -> Instance {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-flood");
    let opts = BuildOptions {
        out_dir: out.clone(),
        locked: true,
        ..BuildOptions::default()
    };
    let (_, built) = tuk_compose::build(&repo_root().join("components"), &opts)
        .unwrap_or_else(|e| panic!("building components/ failed: {e}"));
    let hello = built
        .iter()
        .find(|b| b.name == "hello")
        .expect("hello built")
        .artifact
        .path
        .clone();
    let deployments = vec![Deployment {
        name: "hello".into(),
        source: hello,
        meta: vec![],
    }];
    let (pack, _) = tuk_compose::boot_pack(&deployments, None).expect("boot pack");
    let pack_path = out.join("flood.pack");
    std::fs::write(&pack_path, pack).unwrap();
    let mut args = vec![
        ("http.request_timeout_ms", "30000"),
        ("http.idle_timeout_ms", "30000"),
    ];
    args.extend_from_slice(extra);
    boot_full(name, &args, Some(&pack_path), RunConfig::DEFAULT_MEMORY_MIB)
}

/// What one attacking connection saw.
#[derive(Debug, Default, Clone)]
struct Outcome {
    /// Body bytes the kernel took before refusing (or all of them).
    sent: usize,
    /// The status of a response that arrived, if any.
    status: Option<u16>,
    /// The connection is still open (the kernel buffers its request) when the flood ends.
    held: bool,
}

/// Opens `n` connections to `addr`, each sending the oversized-but-legal `PUT` and holding
/// it; returns when all have sent what the kernel took, with the streams still open.
fn flood(addr: SocketAddr, path: &str, n: usize) -> Vec<(Option<TcpStream>, Outcome)> {
    // The connections are opened one after another, each taken off QEMU's accept queue before
    // the next (slirp listens with a backlog of 1: a burst of connects would mostly be dropped
    // by the host, and how many got through would depend on the host's load, not on tuk). The
    // bodies are then sent all at once.
    let streams: Vec<Option<TcpStream>> = (0..n)
        .map(|_| Conn::try_open(addr, Duration::from_secs(20)).ok())
        .map(|c| c.and_then(|c| c.stream().try_clone().ok()))
        .collect();
    let start = Arc::new(Barrier::new(n));
    let workers: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let start = Arc::clone(&start);
            let head =
                format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {DECLARED}\r\n\r\n");
            thread::spawn(move || {
                let mut out = Outcome::default();
                start.wait();
                let Some(mut s) = stream else {
                    return (None, out);
                };
                s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
                if s.write_all(head.as_bytes()).is_err() {
                    return (None, out);
                }
                let chunk = [b'x'; 16 * 1024];
                while out.sent < SENT {
                    let n = chunk.len().min(SENT - out.sent);
                    match s.write(&chunk[..n]) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => out.sent += k,
                    }
                }
                // A refused connection has its 503 waiting; a held one has nothing.
                s.set_read_timeout(Some(Duration::from_millis(1500)))
                    .unwrap();
                let mut buf = [0u8; 512];
                match s.read(&mut buf) {
                    Ok(k) if k >= 12 && buf.starts_with(b"HTTP/1.1 ") => {
                        out.status = std::str::from_utf8(&buf[9..12])
                            .ok()
                            .and_then(|s| s.parse().ok());
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        out.held = true;
                    }
                    Err(_) => {}
                }
                (Some(s), out)
            })
        })
        .collect();
    workers.into_iter().map(|w| w.join().unwrap()).collect()
}

fn summary(outcomes: &[(Option<TcpStream>, Outcome)]) -> (usize, usize, usize) {
    let refused = outcomes
        .iter()
        .filter(|(_, o)| o.status == Some(503))
        .count();
    let held = outcomes.iter().filter(|(_, o)| o.held).count();
    let bytes = outcomes.iter().map(|(_, o)| o.sent).sum();
    (refused, held, bytes)
}

fn get_hello(vm: &Instance) -> Result<u16, String> {
    let mut c = Conn::try_open(vm.addr(), IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    c.try_get("/hello/")
        .map(|r| r.status)
        .map_err(|e| e.to_string())
}

#[test]
fn a_body_flood_gets_503s_and_the_vm_keeps_serving() {
    let mut vm = boot_hello("flood", &[]);
    let before = health(vm.addr());
    eprintln!(
        "  before: memory {} http {}",
        before["memory"], before["http"]
    );
    let budget = num(&before, "http/buffers/service/budget_bytes") as usize;
    let admin_budget = num(&before, "http/buffers/admin/budget_bytes") as usize;
    assert!(
        (4 << 20..=16 << 20).contains(&budget),
        "default service budget {budget}: {}",
        before["http"]
    );
    assert!(admin_budget <= 4 << 20, "admin budget {admin_budget}");
    assert_eq!(
        get_hello(&vm),
        Ok(200),
        "the component answers before the flood"
    );

    let t = Instant::now();
    let admin = admin_addr(&vm);
    let addr = vm.addr();
    let admin_flood = thread::spawn(move || flood(admin, "/_tuk/components/x", ADMIN_FLOOD));
    let service = flood(addr, "/hello/upload", SERVICE_FLOOD);
    let admin_out = admin_flood.join().unwrap();
    let (refused, held, bytes) = summary(&service);
    let (a_refused, a_held, a_bytes) = summary(&admin_out);
    eprintln!(
        "  flood after {} ms: service {SERVICE_FLOOD} connections: {refused} got 503, {held} held, \
         {} MiB taken; admin {ADMIN_FLOOD}: {a_refused} got 503, {a_held} held, {} MiB taken",
        t.elapsed().as_millis(),
        bytes >> 20,
        a_bytes >> 20
    );

    // The VM is alive and serving while the holders still hold their connections.
    assert!(
        vm.try_wait().unwrap().is_none(),
        "the VM exited under the flood; console: {:?}",
        vm.console_tail()
    );
    let deadline = Instant::now() + IO_TIMEOUT;
    let status = loop {
        match get_hello(&vm) {
            Ok(s) => break Ok(s),
            Err(e) if Instant::now() > deadline => break Err(e),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    };
    assert_eq!(
        status,
        Ok(200),
        "a fresh GET to the component while the flood holds its connections"
    );
    let during = health(vm.addr());
    eprintln!(
        "  during: memory {} http {}",
        during["memory"], during["http"]
    );
    let svc_refused = num(&during, "http/buffers/service/refused");
    let adm_refused = num(&during, "http/buffers/admin/refused");
    assert!(
        svc_refused >= 1 && svc_refused as usize >= refused,
        "service refusals counted: {svc_refused} (clients saw {refused})"
    );
    assert!(
        adm_refused >= 1 && adm_refused as usize >= a_refused,
        "admin refusals counted: {adm_refused} (clients saw {a_refused})"
    );
    // Not every attacker is refused: the budget holds what it can.
    assert!(
        held >= 1,
        "some flooding connections are held within the budget"
    );
    // What the listeners hold stays within budget + 16 KiB a connection (server.rs FLOOR).
    let floor = 16 * 1024;
    let held_bytes = num(&during, "http/buffers/service/bytes") as usize;
    assert!(
        held_bytes <= budget + (SERVICE_FLOOD + 2) * floor,
        "service buffers {held_bytes} over budget {budget}"
    );
    let admin_bytes = num(&during, "http/buffers/admin/bytes") as usize;
    assert!(
        admin_bytes <= admin_budget + (ADMIN_FLOOD + 2) * floor,
        "admin buffers {admin_bytes} over budget {admin_budget}"
    );
    assert!(
        num(&during, "memory/heap_used_bytes") < num(&during, "memory/heap_bytes"),
        "{}",
        during["memory"]
    );

    // The attackers give up; the memory comes back and the VM still serves.
    drop(service);
    drop(admin_out);
    let t = Instant::now();
    let mut after = health(vm.addr());
    while num(&after, "http/buffers/service/bytes") > 64 * 1024 && t.elapsed() < IO_TIMEOUT {
        thread::sleep(Duration::from_millis(250));
        after = health(vm.addr());
    }
    eprintln!("  after: memory {} http {}", after["memory"], after["http"]);
    assert!(
        num(&after, "http/buffers/service/bytes") <= 64 * 1024,
        "buffers released after the flood: {}",
        after["http"]
    );
    assert_eq!(after["status"], "ok");
    assert_eq!(get_hello(&vm), Ok(200));
    assert!(vm.try_wait().unwrap().is_none());
    vm.shutdown(Duration::from_secs(20)).unwrap();
}

/// The finding itself: with a budget larger than the guest (as before the fix), the same flood
/// exhausts the heap and the VM dies. It shows the attack above is strong enough to matter.
#[test]
fn without_a_budget_the_flood_kills_the_vm() {
    let mut vm = boot_hello("flood-nobudget", &[("http.buffer_budget", "1073741824")]);
    let t = Instant::now();
    let out = flood(vm.addr(), "/hello/upload", SERVICE_FLOOD);
    let (refused, held, bytes) = summary(&out);
    eprintln!(
        "  flood after {} ms: {refused} got 503, {held} held, {} MiB taken",
        t.elapsed().as_millis(),
        bytes >> 20
    );
    let deadline = Instant::now() + IO_TIMEOUT;
    while vm.try_wait().unwrap().is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    let exit = vm.try_wait().unwrap();
    eprintln!("  exit: {exit:?}; console: {:?}", vm.console_tail());
    assert!(exit.is_some(), "the VM survived a flood without budget");
    assert_eq!(
        exit.and_then(|e| e.code()),
        Some(3),
        "exit status 3 (panic)"
    );
    assert!(
        vm.console_tail()
            .iter()
            .any(|l| l.contains("memory allocation of")),
        "the heap ran out"
    );
}
