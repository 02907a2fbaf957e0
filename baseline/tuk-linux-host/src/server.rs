//! The HTTP/1.1 server: Linux's TCP stack and one thread per connection, each driving a
//! `tuk_http::Connection` — the same sans-IO engine the tuk kernel drives over smoltcp, so
//! parsing, limits, timeouts, keep-alive and error responses are identical.
//!
//! Requests are handled one at a time (the router sits behind a mutex), as on tuk's
//! single-threaded event loop; with one vCPU there is no parallelism to lose. Every connection
//! is bounded in time by the engine's request and idle timeouts (read timeouts set to its next
//! deadline) plus a write timeout for peers that stop reading, and a linger limit after close.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use tuk_http::{Connection, Handler, Limits, Request, Response};

use crate::routes::{HttpStats, Router};
use crate::sys;

const READ_BUFFER: usize = 16 * 1024;
/// After we close, wait this long at most for the peer's FIN (so unread input does not turn
/// our close into a reset that could destroy the last response in flight).
const CLOSE_LINGER_MS: u64 = 5_000;
/// Stack of a connection thread: Wasm runs on it (`tuk_engine::MAX_WASM_STACK` plus host
/// frames; the tuk kernel's stack is 1 MiB).
const THREAD_STACK: usize = 2 << 20;

fn now_ms() -> u64 {
    sys::since_boot().as_millis() as u64
}

/// Shared by the accept loop, the connection threads and the shutdown path.
pub struct Shared {
    pub router: Mutex<Router>,
    pub stats: &'static HttpStats,
    pub limits: Limits,
    pub max_connections: u64,
    pub shutting_down: AtomicBool,
    /// Connections with a request received but not yet fully answered.
    pub in_flight: AtomicU64,
}

/// The handler the engine calls: the router, one request at a time.
struct Locked<'a>(&'a Mutex<Router>);

impl Handler for Locked<'_> {
    fn handle(&mut self, req: &Request, now_ms: u64) -> Response {
        let mut router = self.0.lock().unwrap_or_else(|e| e.into_inner());
        router.handle(req, now_ms)
    }
}

/// Accepts connections until the process ends.
pub fn accept_loop(listener: TcpListener, shared: &'static Shared) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept: {e}");
                continue;
            }
        };
        if shared.shutting_down.load(Ordering::Relaxed) {
            continue; // dropped: closed at once
        }
        let active = &shared.stats.connections_active;
        if active.load(Ordering::Relaxed) >= shared.max_connections {
            shared
                .stats
                .connections_refused_full
                .fetch_add(1, Ordering::Relaxed);
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        let spawned = thread::Builder::new()
            .name("http".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                serve(stream, shared);
                shared
                    .stats
                    .connections_active
                    .fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a connection thread: {e}");
            active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Marks a connection busy (request received, answer not yet sent) for the shutdown drain.
struct Busy<'a> {
    counter: &'a AtomicU64,
    on: bool,
}

impl Busy<'_> {
    fn set(&mut self, on: bool) {
        if on != self.on {
            self.on = on;
            if on {
                self.counter.fetch_add(1, Ordering::Relaxed);
            } else {
                self.counter.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// One connection, from accept to close.
fn serve(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(
        shared.limits.idle_timeout_ms.max(1),
    )));
    let mut conn = Connection::new(shared.limits, now_ms());
    let mut handler = Locked(&shared.router);
    let mut busy = Busy {
        counter: &shared.in_flight,
        on: false,
    };
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let done = conn.process(&mut handler, now_ms());
        shared.stats.add(&done);
        while !conn.output().is_empty() {
            match stream.write(conn.output()) {
                Ok(0) => return,
                Ok(n) => conn.consume_output(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return, // reset, or the peer stopped reading for the idle timeout
            }
        }
        if done.requests + done.protocol_errors + done.timeouts > 0 {
            busy.set(false);
        }
        if conn.should_close() {
            busy.set(false);
            linger(&mut stream, &mut buf);
            return;
        }
        let deadline = conn.next_deadline();
        if !conn.wants_input() {
            // Nothing to read (closing, or the peer finished sending): only a deadline can
            // move the connection on.
            match deadline {
                Some(d) => thread::sleep(Duration::from_millis(d.saturating_sub(now_ms()).max(1))),
                None => return,
            }
            continue;
        }
        let timeout = deadline.map(|d| Duration::from_millis(d.saturating_sub(now_ms()).max(1)));
        if stream.set_read_timeout(timeout).is_err() {
            return;
        }
        let room = conn.input_room().min(buf.len());
        match stream.read(&mut buf[..room]) {
            Ok(0) => conn.peer_closed(now_ms()),
            Ok(n) => {
                busy.set(true);
                conn.receive(&buf[..n], now_ms());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

/// Half-closes and waits (bounded) for the peer to close too, discarding what it still sends.
fn linger(stream: &mut TcpStream, buf: &mut [u8]) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let until = Instant::now() + Duration::from_millis(CLOSE_LINGER_MS);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::routes::BootFacts;
    use crate::runtime::Runtime;

    /// A server on a loopback port with no components (the router and the engine are real).
    fn start(limits: Limits) -> SocketAddr {
        let stats: &'static HttpStats = Box::leak(Box::default());
        let runtime = Runtime::new().expect("engine");
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            router: Mutex::new(Router::new(
                BootFacts {
                    boot_us: 1,
                    kernel_release: "test".into(),
                },
                runtime,
                stats,
            )),
            stats,
            limits,
            max_connections: 8,
            shutting_down: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
        }));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || accept_loop(listener, shared));
        addr
    }

    /// Sends `raw`, then reads until the server closes.
    fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read until close");
        out
    }

    #[test]
    fn keep_alive_pipelining_and_routing() {
        let addr = start(Limits::default());
        let out = exchange(
            addr,
            b"GET /_tuk/health HTTP/1.1\r\nHost: x\r\n\r\nGET /nope/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        let first = out.find("HTTP/1.1 200 OK").expect("health answered");
        let second = out
            .find("HTTP/1.1 404 Not Found")
            .expect("unknown component");
        assert!(first < second, "{out}");
        assert!(out.contains("\"status\":\"ok\""), "{out}");
        assert!(out.contains("no component serves this path"), "{out}");
        assert!(out.contains("Connection: close"), "{out}");
    }

    #[test]
    fn malformed_request_gets_the_engines_400_and_a_close() {
        let addr = start(Limits::default());
        let out = exchange(addr, b"NONSENSE\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    }

    #[test]
    fn request_timeout_is_enforced() {
        let limits = Limits {
            request_timeout_ms: 200,
            ..Limits::default()
        };
        let addr = start(limits);
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /_tuk/health HTTP/1.1\r\n").unwrap(); // never finished
        let started = Instant::now();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read until close");
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
