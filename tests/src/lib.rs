//! Shared helpers for the end-to-end tests: boot the real host-kernel image under QEMU TCG
//! through `tuk-launcher`, and speak raw HTTP/1.1 to it over TCP.
//!
//! The image is `$TUK_KERNEL` or the checkout's release build; when it is missing the tests
//! fail (never skip) and say to run `tuk kernel build`. Each VM gets its own free port and
//! shortened HTTP timeouts ([`REQUEST_TIMEOUT`], [`IDLE_TIMEOUT`]) so timeout paths are quick.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use tuk_launcher::{Accel, ExitKind, Instance, LaunchError, RunConfig};

pub mod attestation;
pub mod poll;
pub mod postgres;
pub mod process;
pub mod signing;
pub mod tls;
pub mod verifier;

/// `http.request_timeout_ms` given to every test VM.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// `http.idle_timeout_ms` given to every test VM.
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(3000);
/// Generous limit for anything that should be quick (TCG on 2 cores, tests in parallel).
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// The kernel image under test; panics (fails the test) if it does not exist.
pub fn kernel_image() -> PathBuf {
    let path = tuk_launcher::kernel::default_image().unwrap_or_else(|e| {
        panic!("cannot locate the kernel image ({e}); run `tuk kernel build` first")
    });
    assert!(
        path.is_file(),
        "kernel image {} does not exist: run `tuk kernel build` first (or set TUK_KERNEL)",
        path.display()
    );
    path
}

/// A loopback address whose port was free a moment ago.
pub fn free_listen() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind an ephemeral loopback port")
}

/// The vTPM CA directory every test VM's EK certificate is issued from: one for the test run,
/// not the user's (what a verifier in the tests trusts).
pub fn vtpm_ca_dir() -> PathBuf {
    std::env::temp_dir().join("tuk-e2e").join("vtpm-ca")
}

/// Boots the real kernel under TCG with the test timeouts and `extra` kernel arguments (an
/// `extra` key replaces the test default of the same name).
/// Retries on a fresh port if another process grabbed the chosen one in between.
pub fn boot_with(name: &str, extra: &[(&str, &str)]) -> Instance {
    boot_full(name, extra, None, RunConfig::DEFAULT_MEMORY_MIB)
}

/// Like [`boot_with`], with a boot pack (components) and a guest memory size.
pub fn boot_full(
    name: &str,
    extra: &[(&str, &str)],
    boot_pack: Option<&std::path::Path>,
    memory_mib: u32,
) -> Instance {
    let kernel = kernel_image();
    let mut last = None;
    for _ in 0..3 {
        let listen = free_listen();
        let mut cfg = RunConfig::new(kernel.clone(), listen);
        let defaults = [
            (
                "http.request_timeout_ms",
                REQUEST_TIMEOUT.as_millis().to_string(),
            ),
            ("http.idle_timeout_ms", IDLE_TIMEOUT.as_millis().to_string()),
        ];
        for (k, v) in defaults {
            if !extra.iter().any(|(key, _)| *key == k) {
                cfg = cfg.kernel_arg(k, v);
            }
        }
        for (k, v) in extra {
            cfg = cfg.kernel_arg(k, v);
        }
        cfg.accel = Accel::Tcg;
        cfg.memory_mib = memory_mib;
        cfg.boot_pack = boot_pack.map(std::path::Path::to_path_buf);
        cfg.vtpm_ca_dir = vtpm_ca_dir();
        cfg.state_dir = std::env::temp_dir().join("tuk-e2e").join(format!(
            "{name}-{}-{}",
            std::process::id(),
            listen.port()
        ));
        match Instance::start(cfg) {
            Ok(vm) => {
                eprintln!(
                    "[{name}] booted at {} in {} ms (guest {:?} us), console {}",
                    vm.url(),
                    vm.boot_ms(),
                    vm.guest_boot_us(),
                    vm.console_log_path().display()
                );
                return vm;
            }
            Err(e @ LaunchError::PortInUse { .. }) => last = Some(e),
            Err(e @ LaunchError::DiedDuringBoot { .. })
                if e.to_string().contains("host forwarding rule") =>
            {
                last = Some(e)
            }
            Err(e) => panic!("[{name}] boot failed: {e}"),
        }
    }
    panic!("[{name}] no free port after 3 tries: {}", last.unwrap());
}

/// The admin listener's URL (every `/_tuk/*` endpoint: status, event log, attestation,
/// publishing); `vm.url()` is the service listener (components and the read-only
/// `/_tuk/health`, `/_tuk/components`, `/_tuk/attestation/identity`).
pub fn admin_url(vm: &Instance) -> String {
    vm.admin_url()
}

/// The admin listener's address, for [`Conn::open`].
pub fn admin_addr(vm: &Instance) -> SocketAddr {
    vm.admin_addr()
}

pub fn boot(name: &str) -> Instance {
    boot_with(name, &[])
}

/// Runs `f`, printing how long it took under `label`.
pub fn timed<T>(label: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    eprintln!("  {label}: {} ms", t.elapsed().as_millis());
    out
}

/// One parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub version: String,
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The server announced it closes the connection.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw client connection that keeps bytes read past one response for the next.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pub addr: SocketAddr,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        Self::try_open(addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// Connects, then waits until QEMU has taken the connection off the host's accept queue
    /// (see [`accept_queue_len`]), so that back-to-back opens do not overflow it.
    pub fn try_open(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        let until = Instant::now() + Duration::from_secs(2);
        while accept_queue_len(addr).is_some_and(|n| n > 0) && Instant::now() < until {
            std::thread::sleep(Duration::from_micros(200));
        }
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            addr,
        })
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// `GET path` with keep-alive.
    pub fn get(&mut self, path: &str) -> Response {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.addr))
    }

    pub fn try_get(&mut self, path: &str) -> io::Result<Response> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        self.send(req.as_bytes())?;
        self.read_response(IO_TIMEOUT)
    }

    fn fill(&mut self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed ({} unparsed bytes: {:?})",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf)
                ),
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads exactly one response: the head, then exactly Content-Length body bytes (or up to
    /// end of file when there is none).
    pub fn read_response(&mut self, timeout: Duration) -> io::Result<Response> {
        let deadline = Instant::now() + timeout;
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill(deadline)?;
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec())
            .map_err(|_| bad("response head is not UTF-8".into()))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        if !version.starts_with("HTTP/1.") {
            return Err(bad(format!("bad status line {status_line:?}")));
        }
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap_or((l, ""));
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        self.buf.drain(..head_end);
        let mut resp = Response {
            version,
            status,
            headers,
            body: Vec::new(),
        };
        if resp.header("transfer-encoding").is_some() {
            return Err(bad(
                "the kernel sent Transfer-Encoding; the contract uses Content-Length".into(),
            ));
        }
        match resp.header("content-length") {
            Some(v) => {
                let len: usize = v
                    .parse()
                    .map_err(|_| bad(format!("bad Content-Length {v:?}")))?;
                while self.buf.len() < len {
                    self.fill(deadline)?;
                }
                resp.body = self.buf.drain(..len).collect();
            }
            None if status == 204 || status == 304 || (100..200).contains(&status) => {}
            None => loop {
                match self.fill(deadline) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        resp.body = std::mem::take(&mut self.buf);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            },
        }
        Ok(resp)
    }

    /// Waits until the server closes the connection (EOF or reset) and returns how long that
    /// took. Fails if data arrives or nothing happens within `within`.
    pub fn wait_closed(&mut self, within: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let unexpected = |buf: &[u8]| {
            format!(
                "unexpected data instead of a close: {:?}",
                String::from_utf8_lossy(buf)
            )
        };
        if !self.buf.is_empty() {
            return Err(unexpected(&self.buf));
        }
        match self.fill(start + within) {
            Ok(()) => Err(unexpected(&self.buf)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                ) =>
            {
                Ok(start.elapsed())
            }
            Err(e) => Err(format!("not closed after {:?}: {e}", start.elapsed())),
        }
    }

    /// Closes with a TCP reset (SO_LINGER 0) instead of a FIN.
    pub fn reset(self) {
        let sock = socket2::SockRef::from(&self.stream);
        sock.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
        drop(self.stream);
    }
}

/// `GET /_tuk/health` on a fresh connection: 200 and the parsed JSON.
pub fn health(addr: SocketAddr) -> serde_json::Value {
    let mut c = Conn::open(addr);
    let r = c.get("/_tuk/health");
    assert_eq!(r.status, 200, "health: {}", r.body_text());
    r.json()
}

/// A number from the health document, by `/`-separated path, e.g. `http/timeouts`.
pub fn num(doc: &serde_json::Value, path: &str) -> u64 {
    let pointer = format!("/{path}");
    doc.pointer(&pointer)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("health has no unsigned number at {path}: {doc}"))
}

/// Connections waiting in the host's accept queue of the listening socket at `addr` (from
/// /proc/net/tcp, IPv4 only; `None` if not found).
///
/// QEMU's user networking (libslirp) listens on a forwarded port with a backlog of 1. When a
/// client opens connections faster than QEMU accepts them, Linux drops SYNs (1 s client retry)
/// or, worse, the handshake's last ACK, leaving a client that believes it is connected waiting
/// tens of seconds. Waiting for this queue to drain between connects avoids both; the guest is
/// not involved at all.
pub fn accept_queue_len(addr: SocketAddr) -> Option<u64> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx_queue:rx_queue ...; st 0A = LISTEN, rx_queue = accept backlog.
        if f.len() > 4 && f[1] == local && f[3] == "0A" {
            let (_, rx) = f[4].split_once(':')?;
            u64::from_str_radix(rx, 16).ok()
        } else {
            None
        }
    })
}

/// `tuk tamper`'s code path ([`tuk_launcher::tamper::tamper`]): flips the byte at `offset` in
/// `target` (`kernel:text`, `kernel:rodata`, `component:NAME:code`, `component:NAME:data`) of
/// the running `vm`, through its guest-RAM file, as a host attacker would. Panics on failure.
pub fn tamper(vm: &Instance, target: &str, offset: u64) -> tuk_launcher::tamper::Tampered {
    let parsed: tuk_launcher::tamper::Target = target.parse().unwrap_or_else(|e| panic!("{e}"));
    let done = tuk_launcher::tamper::tamper(vm.state_dir(), &parsed, offset, None)
        .unwrap_or_else(|e| panic!("tamper {target}+{offset}: {e}"));
    eprintln!("  tampered {done}");
    done
}

/// `TUK tamper --instance STATE_DIR --target TARGET --offset OFFSET`: the CLI a host attacker
/// runs against a `tuk run` instance (the `tuk` binary under test is `tuk`). Panics with its
/// stderr unless it succeeds; returns its output (one JSON `tampered` line on stdout).
pub fn tamper_cli(
    tuk: &str,
    state_dir: &std::path::Path,
    target: &str,
    offset: &str,
) -> std::process::Output {
    let out = std::process::Command::new(tuk)
        .arg("tamper")
        .arg("--instance")
        .arg(state_dir)
        .args(["--target", target, "--offset", offset])
        .output()
        .expect("run tuk tamper");
    assert!(
        out.status.success(),
        "tuk tamper failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The offset of `needle` inside the kernel image's read-only data segment (for
/// `tamper(vm, "kernel:rodata", offset)` on a byte whose change cannot crash the kernel).
pub fn kernel_rodata_offset_of(needle: &[u8]) -> u64 {
    let image =
        tuk_launcher::monitor::KernelImage::load(&kernel_image()).unwrap_or_else(|e| panic!("{e}"));
    let rodata = image
        .segment("rodata")
        .expect("the kernel has a rodata segment");
    rodata
        .bytes()
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| {
            panic!(
                "{:?} is not in the kernel's rodata",
                String::from_utf8_lossy(needle)
            )
        }) as u64
}

/// After `vm` shut down cleanly (the kernel saved the TPM with Shutdown(STATE)): resumes its
/// swtpm state on TCP ports and reads `pcrs` (SHA-256 bank) with `tpm2_pcrread`, an
/// implementation independent of tuk's.
pub fn pcrs_after_shutdown(
    vm: &Instance,
    pcrs: &[u32],
) -> std::collections::BTreeMap<u32, [u8; 32]> {
    let tools = tuk_vtpm::Tools::find().expect("swtpm installed");
    let (mut swtpm, port) = tuk_vtpm::spawn_for_inspection(
        &tools,
        &vm.measured_boot().vtpm,
        tuk_vtpm::StartupType::State,
    )
    .expect("resume the state the kernel saved");
    let values = tuk_vtpm::tpm2_pcrread(port, pcrs);
    swtpm.kill();
    values.expect("tpm2_pcrread reads the PCRs")
}
