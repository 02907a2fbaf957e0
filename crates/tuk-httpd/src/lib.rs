//! tuk-http's sans-IO engine driven over `std::net`: the HTTP server of tuk's host-side
//! services (the verifier, the gateway). One thread per connection, at most
//! [`Server::max_connections`] at once (a connection over the limit is answered `503` and
//! closed); every request gets the engine's guarantees for untrusted input (tuk-http's crate
//! docs: bounded heads and bodies, timeouts, refusal of ambiguous framing).
//!
//! The handler is shared by all connection threads, so it is `Fn + Send + Sync`; it must not
//! block for long (a slow handler holds one connection thread, not the server).
//!
//! TLS: [`Tls::from_pem_files`] loads a certificate chain and its private key (PEM) into a
//! rustls server configuration (ring provider, TLS 1.2 and 1.3); [`Server::tls`] makes the
//! server speak only HTTPS on its port. The engine's limits and timeouts apply unchanged to the
//! decrypted stream; a TLS connection over the connection limit is closed without an answer.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use tuk_http::{Limits, Request, Response};

/// A TLS server configuration: a certificate chain and its key.
#[derive(Clone)]
pub struct Tls {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Loads `cert` (PEM: the server certificate first, then any intermediates) and `key`
    /// (PEM: PKCS#8, PKCS#1 or SEC1 private key). Errors name the file and what is wrong.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Tls, String> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        Tls::from_pem(&read(cert)?, &read(key)?).map_err(|e| {
            format!(
                "TLS certificate {} with key {}: {e}",
                cert.display(),
                key.display()
            )
        })
    }

    /// [`Tls::from_pem_files`] on PEM text.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Tls, String> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the certificate is not PEM ({e})"))?;
        if chain.is_empty() {
            return Err("no CERTIFICATE in the certificate file".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| format!("no private key in the key file ({e})"))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the key does not fit the certificate ({e})"))?;
        Ok(Tls {
            config: Arc::new(config),
        })
    }

    /// The rustls configuration (for callers that need to adjust it).
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.config)
    }
}

/// One accepted connection, plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => {
                let n = s.write(buf)?;
                s.flush()?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A request handler shared by every connection.
pub type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A listening server. [`Server::spawn`] serves in the background until [`Running::stop`].
pub struct Server {
    listener: TcpListener,
    limits: Limits,
    max_connections: usize,
    tls: Option<Tls>,
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
            tls: None,
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

    /// Serves HTTPS only (every connection starts with a TLS handshake).
    pub fn tls(mut self, tls: Tls) -> Server {
        self.tls = Some(tls);
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
                if self.tls.is_none() {
                    refuse(stream);
                }
                continue;
            }
            let handler = Arc::clone(handler);
            let count = Arc::clone(&active);
            let limits = self.limits;
            let tls = self.tls.as_ref().map(Tls::config);
            let spawned = thread::Builder::new()
                .name("httpd-conn".into())
                .spawn(move || {
                    let stream = match tls {
                        None => Some(Stream::Plain(stream)),
                        Some(config) => rustls::ServerConnection::new(config)
                            .ok()
                            .map(|c| Stream::Tls(Box::new(rustls::StreamOwned::new(c, stream)))),
                    };
                    if let Some(stream) = stream {
                        let _ = serve_connection(stream, limits, &*handler);
                    }
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
fn serve_connection(mut stream: Stream, limits: Limits, handler: &Handler) -> io::Result<()> {
    stream.tcp().set_nonblocking(false)?;
    stream.tcp().set_nodelay(true)?;
    stream.tcp().set_write_timeout(Some(Duration::from_millis(
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
        stream
            .tcp()
            .set_read_timeout(Some(Duration::from_millis(wait)))?;
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

    /// A self-signed certificate for 127.0.0.1 and localhost, made by the `openssl` CLI.
    fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the openssl CLI (apt-get install openssl)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (cert, key)
    }

    #[test]
    fn serves_https_with_the_given_certificate_only() {
        let dir = std::env::temp_dir().join(format!("tuk-httpd-tls-{}", std::process::id()));
        let (cert, key) = self_signed(&dir);
        let tls = Tls::from_pem_files(&cert, &key).unwrap();
        let running = Server::bind("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .tls(tls)
            .spawn(Arc::new(|req: &Request| {
                Response::text(200, format!("{} {}", req.method, req.path))
            }))
            .unwrap();
        let ca = ureq::tls::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
                    .build(),
            )
            .build()
            .into();
        let url = format!("https://{}/secure", running.addr());
        for _ in 0..2 {
            let body = agent
                .get(&url)
                .call()
                .unwrap()
                .into_body()
                .read_to_string()
                .unwrap();
            assert_eq!(body, "GET /secure");
        }
        // A client that does not trust the certificate (the public roots) refuses it.
        let err = ureq::get(&url).call().unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "{err}"
        );
        // Plain HTTP on the TLS port gets no HTTP answer.
        let plain = ureq::get(&format!("http://{}/secure", running.addr())).call();
        assert!(plain.is_err(), "{plain:?}");
        // Keys that do not fit, and files that are not PEM, are refused with the file named.
        let (other_cert, _) = self_signed(&dir.join("other"));
        let err = Tls::from_pem_files(&other_cert, &key).unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
        let err = Tls::from_pem_files(&key, &key).unwrap_err();
        assert!(
            err.contains("cert.pem") || err.contains("CERTIFICATE"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
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
