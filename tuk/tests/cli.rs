//! `tuk run` as a user runs it: the ready line, a live URL, SIGTERM → clean stop; and the
//! errors a user meets first.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tuk_e2e::process::{lines_of, sigterm, stderr_of, wait_exit, Reap};
use tuk_e2e::{free_listen, kernel_image, Conn};

const TUK: &str = env!("CARGO_BIN_EXE_tuk");

#[test]
fn run_serves_and_stops_cleanly_on_sigterm() {
    let kernel = kernel_image();
    let listen = free_listen();
    let started = Instant::now();
    let mut child = Reap(
        Command::new(TUK)
            .args(["run", "--accel", "tcg", "--listen", &listen.to_string()])
            .arg("--kernel")
            .arg(&kernel)
            .args(["--kernel-arg", "http.idle_timeout_ms=3000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tuk"),
    );
    let stdout = lines_of(&mut child.0);
    let stderr = stderr_of(&mut child.0);

    let ready = stdout
        .recv_timeout(Duration::from_secs(90))
        .expect("no ready line from `tuk run`");
    eprintln!(
        "  ready after {} ms: {ready}",
        started.elapsed().as_millis()
    );
    let ready: serde_json::Value = serde_json::from_str(&ready).expect("ready line is JSON");
    assert_eq!(ready["event"], "ready");
    assert_eq!(ready["url"], format!("http://{listen}"));
    assert_eq!(ready["accel"], "tcg");
    assert!(
        ready["boot_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{ready}"
    );
    assert!(ready["guest_boot_us"].as_u64().is_some(), "{ready}");
    let log = ready["console_log"].as_str().expect("console_log");
    assert!(std::path::Path::new(log).is_file(), "{log} missing");

    let mut c = Conn::open(listen);
    let r = c.get("/_tuk/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    // The admin listener: on loopback with a port of its own by default; kernel endpoints
    // beyond the public ones answer there, not on --listen.
    let admin = ready["admin"]
        .as_str()
        .expect("the ready line names the admin listener");
    let admin: std::net::SocketAddr = admin
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("admin is http://IP:PORT: {ready}"));
    assert!(admin.ip().is_loopback(), "{ready}");
    assert_ne!(admin, listen);
    assert_eq!(c.get("/_tuk/status").status, 403);
    assert_eq!(Conn::open(admin).get("/_tuk/status").status, 200);
    drop(c);

    let t = Instant::now();
    sigterm(&child.0);
    let stopped = stdout
        .recv_timeout(Duration::from_secs(20))
        .expect("no stopped line after SIGTERM");
    let status = wait_exit(&mut child.0, Duration::from_secs(20));
    let err = stderr.join().unwrap();
    eprintln!("  stopped after {} ms: {stopped}", t.elapsed().as_millis());
    let stopped: serde_json::Value = serde_json::from_str(&stopped).unwrap();
    assert_eq!(stopped["event"], "stopped");
    assert_eq!(stopped["clean"], true, "{stopped}");
    assert_eq!(stopped["exit_status"], 33);
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert!(
        stdout.recv_timeout(Duration::from_millis(100)).is_err(),
        "exactly two lines on stdout"
    );
    assert!(err.contains(log), "stderr names the console log: {err}");
    // QEMU is gone with it: the port is free again.
    TcpListener::bind(listen).expect("the listen port is released");
}

/// The direct children of `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may contain spaces, so split after the last ')'.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        if after.split_whitespace().nth(1) == Some(&pid.to_string()) {
            out.push(child);
        }
    }
    out
}

#[test]
fn run_exits_1_with_the_console_tail_when_the_vm_dies() {
    let kernel = kernel_image();
    let listen = free_listen();
    let mut child = Reap(
        Command::new(TUK)
            .args(["run", "--accel", "tcg", "--listen", &listen.to_string()])
            .arg("--kernel")
            .arg(&kernel)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tuk"),
    );
    let stdout = lines_of(&mut child.0);
    let stderr = stderr_of(&mut child.0);
    let ready = stdout
        .recv_timeout(Duration::from_secs(90))
        .expect("no ready line from `tuk run`");
    assert!(ready.contains("\"ready\""), "{ready}");

    // tuk's children: QEMU and the swtpm behind its vTPM.
    let children = children_of(child.0.id());
    let comm = |pid: &u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let qemu: Vec<u32> = children
        .iter()
        .copied()
        .filter(|p| comm(p).starts_with("qemu-system"))
        .collect();
    assert_eq!(
        qemu.len(),
        1,
        "tuk should have exactly one QEMU child: {children:?}"
    );
    assert!(
        children.iter().any(|p| comm(p).trim() == "swtpm"),
        "and a swtpm for the vTPM: {children:?}"
    );
    let killed = Command::new("kill")
        .args(["-KILL", &qemu[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let stopped = stdout
        .recv_timeout(Duration::from_secs(20))
        .expect("no stopped line after QEMU died");
    let status = wait_exit(&mut child.0, Duration::from_secs(20));
    let err = stderr.join().unwrap();
    let stopped: serde_json::Value = serde_json::from_str(&stopped).unwrap();
    assert_eq!(stopped["event"], "stopped");
    assert_eq!(stopped["reason"], "vm-exited");
    assert_eq!(stopped["clean"], false);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("stopped by itself"), "{err}");
    assert!(
        err.contains("  | ") && err.contains("tuk: ready"),
        "console tail on stderr: {err}"
    );
}

#[test]
fn missing_kernel_says_to_build_it() {
    let out = Command::new(TUK)
        .args([
            "run",
            "--kernel",
            "/nonexistent/tuk-kernel",
            "--accel",
            "tcg",
        ])
        .args(["--listen", &free_listen().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("tuk kernel build"), "{err}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn busy_port_is_named() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    // Any existing file passes the image check; the port is checked before QEMU starts.
    let out = Command::new(TUK)
        .args(["run", "--kernel", TUK, "--accel", "tcg"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("port {port}")), "{err}");
    assert!(err.contains("pick another port"), "{err}");
    drop(held);
}

#[test]
fn bad_arguments_are_usage_errors() {
    let out = Command::new(TUK)
        .args(["run", "--listen", "127.0.0.1:1", "--kernel-arg", "novalue"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY=VALUE"));
}

/// `tuk publish --to`: the service URL is refused with a pointer to the admin URL (the
/// service listener publishes nothing); on the admin URL a new version keeps the kv data,
/// and `--reset-kv` drops it.
#[test]
fn publish_to_needs_the_admin_url_and_keeps_kv_unless_reset() {
    use tuk_e2e::signing::{sign, signed_pack};
    let dir = std::env::temp_dir()
        .join("tuk-e2e")
        .join(format!("publish-cli-{}", std::process::id()));
    let sp = signed_pack(&dir, &["kv"]);
    let vm = tuk_e2e::boot_full("publish-cli", &[], Some(&sp.pack), 96);
    let put_kv = |value: &str| {
        let mut c = Conn::open(vm.addr());
        let req = format!(
            "PUT /kv/kv/k HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{value}",
            value.len()
        );
        c.send(req.as_bytes()).unwrap();
        assert_eq!(c.read_response(tuk_e2e::IO_TIMEOUT).unwrap().status, 201);
    };
    let get_kv = || Conn::open(vm.addr()).get("/kv/kv/k");
    put_kv("kept");
    let publish = |version: &str, url: &str, extra: &[&str]| {
        let bundle = dir.join(format!("kv-{version}.bundle"));
        std::fs::write(&bundle, sign(&sp.key, "kv", version, &sp.built["kv"])).unwrap();
        Command::new(TUK)
            .arg("publish")
            .arg(&bundle)
            .args(["--to", url])
            .args(extra)
            .output()
            .unwrap()
    };

    let out = publish("1.0.1", &vm.url(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("admin URL"),
        "the refusal says what to do: {err}"
    );
    assert_eq!(get_kv().body_text(), "kept");

    let out = publish("1.0.1", &vm.admin_url(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get_kv().body_text(), "kept", "kv data survives the publish");

    let out = publish("1.0.2", &vm.admin_url(), &["--reset-kv"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get_kv().status, 404, "--reset-kv starts with empty kv data");
}
