//! tuk-http's sans-IO engine driven over `std::net`: the HTTP server of tuk's host-side
//! services (the verifier, the gateway). One thread per connection, at most
//! [`Server::max_connections`] at once (a connection over the limit is answered `503` and
//! closed); every request gets the engine's guarantees for untrusted input (tuk-http's crate
//! docs: bounded heads and bodies, timeouts, refusal of ambiguous framing).
//!
//! The handler is shared by all connection threads, so it is `Fn + Send + Sync`; it must not
//! block for long (a slow handler holds one connection thread, not the server).
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub use tuk_http::{Limits, Request, Response};

/// A request handler shared by every connection.
pub type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A listening server. [`Server::spawn`] serves in the background until [`Running::stop`].
pub struct Server {
    listener: TcpListener,
    limits: Limits,
    max_connections: usize,
}

/// A server serving on a background thread.
pub struct Running {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port; [`Running::addr`] tells which).
    pub fn bind(addr: SocketAddr) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        Ok(Server {
            listener,
            limits: Limits::default(),
            max_connections: 256,
        })
    }

    /// Per-connection protocol limits (default: tuk-http's).
    pub fn limits(mut self, limits: Limits) -> Server {
        self.limits = limits;
        self
    }

    /// Connections served at once; more are answered `503` and closed.
    pub fn max_connections(mut self, n: usize) -> Server {
        self.max_connections = n.max(1);
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves on a background thread.
    pub fn spawn(self, handler: Arc<Handler>) -> io::Result<Running> {
        let addr = self.listener.local_addr()?;
        // Non-blocking accept with a short sleep, so that `stop` is noticed without a wake-up
        // connection.
        self.listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name(format!("httpd-{addr}"))
            .spawn(move || self.accept_loop(&handler, &flag))?;
        Ok(Running {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    fn accept_loop(self, handler: &Arc<Handler>, stop: &AtomicBool) {
        let active = Arc::new(AtomicUsize::new(0));
        while !stop.load(Ordering::Relaxed) {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(_) => {
                    // EMFILE and friends: back off instead of spinning.
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if active.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
                active.fetch_sub(1, Ordering::AcqRel);
                refuse(stream);
                continue;
            }
            let handler = Arc::clone(handler);
            let count = Arc::clone(&active);
            let limits = self.limits;
            let spawned = thread::Builder::new()
                .name("httpd-conn".into())
                .spawn(move || {
                    let _ = serve_connection(stream, limits, &*handler);
                    count.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting (connections in progress finish on their own threads) and waits for
    /// the accept thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

fn refuse(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 45\r\nConnection: close\r\n\r\n{\"error\":\"too many connections, retry later\"}",
    );
}

/// Drives one connection to its end.
fn serve_connection(mut stream: TcpStream, limits: Limits, handler: &Handler) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(Duration::from_millis(
        limits.idle_timeout_ms.max(1000),
    )))?;
    let epoch = Instant::now();
    let now = || epoch.elapsed().as_millis() as u64;
    let mut conn = tuk_http::Connection::new(limits, now());
    let mut handle = |req: &Request, _now: u64| handler(req);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        conn.process(&mut handle, now());
        while !conn.output().is_empty() {
            let n = stream.write(conn.output())?;
            if n == 0 {
                return Ok(());
            }
            conn.consume_output(n);
            conn.process(&mut handle, now());
        }
        if conn.should_close() {
            return Ok(());
        }
        let wait = conn
            .next_deadline()
            .map_or(1000, |d| d.saturating_sub(now()))
            .clamp(1, 1000);
        if !conn.wants_input() {
            thread::sleep(Duration::from_millis(wait.min(10)));
            continue;
        }
        stream.set_read_timeout(Some(Duration::from_millis(wait)))?;
        let room = conn.input_room().min(buf.len()).max(1);
        match stream.read(&mut buf[..room]) {
            Ok(0) => conn.peer_closed(now()),
            Ok(n) => conn.receive(&buf[..n], now()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> Running {
        let server = Server::bind("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .max_connections(2);
        server
            .spawn(Arc::new(|req: &Request| {
                Response::text(
                    200,
                    format!("{} {} {}", req.method, req.path, req.body.len()),
                )
            }))
            .unwrap()
    }

    #[test]
    fn serves_requests_with_keep_alive_and_bodies() {
        let running = start();
        let base = format!("http://{}", running.addr());
        let agent = ureq::Agent::new_with_defaults();
        for i in 0..3 {
            let mut r = agent
                .post(&format!("{base}/x/{i}"))
                .send(&b"hello"[..])
                .unwrap();
            assert_eq!(
                r.body_mut().read_to_string().unwrap(),
                format!("POST /x/{i} 5")
            );
        }
        running.stop();
    }

    #[test]
    fn malformed_request_gets_400_and_server_keeps_serving() {
        let running = start();
        let mut s = TcpStream::connect(running.addr()).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        let r = ureq::get(&format!("http://{}/ok", running.addr()))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        assert_eq!(r, "GET /ok 0");
    }

    #[test]
    fn connections_over_the_limit_get_503() {
        let running = start();
        // Two idle connections take both slots.
        let _a = TcpStream::connect(running.addr()).unwrap();
        let _b = TcpStream::connect(running.addr()).unwrap();
        thread::sleep(Duration::from_millis(100));
        let mut c = TcpStream::connect(running.addr()).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    }
}
