//! `GET /_tuk/health`: a tiny blocking HTTP/1.1 client (one request per connection) and the
//! health document of docs/contracts.md.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The path the kernel answers health on.
pub const HEALTH_PATH: &str = "/_tuk/health";
/// Largest response head the client accepts.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body the client accepts.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The kernel's health document. Unknown fields are ignored so the kernel can add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub kernel: String,
    pub version: String,
    pub uptime_ms: u64,
    pub boot_us: u64,
    pub clock: String,
    pub tsc_khz: u64,
    pub memory: MemoryStats,
    pub http: HttpStats,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    pub total_bytes: u64,
    pub heap_bytes: u64,
    pub heap_used_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpStats {
    pub connections_accepted: u64,
    pub connections_active: u64,
    pub requests: u64,
    pub responses_2xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    pub protocol_errors: u64,
    pub timeouts: u64,
}

impl Health {
    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on a fresh connection with `Connection: close`; `timeout` bounds the whole
/// exchange.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Reply> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(timeout))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes())?;
    read_reply(&mut stream, deadline)
}

/// Fetches and parses the health document.
pub fn fetch(addr: SocketAddr, timeout: Duration) -> io::Result<Health> {
    let reply = get(addr, HEALTH_PATH, timeout)?;
    if reply.status != 200 {
        return Err(io::Error::other(format!(
            "GET {HEALTH_PATH} answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        )));
    }
    Health::parse(&reply.body).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{HEALTH_PATH} is not the contract's document: {e}"),
        )
    })
}

fn read_deadline(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    stream.read(buf)
}

fn read_reply(stream: &mut TcpStream, deadline: Instant) -> io::Result<Reply> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("response head too large"));
        }
        let n = read_deadline(stream, &mut chunk, deadline)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next(), parts.next());
    if !version.is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(bad("not an HTTP/1.x response"));
    }
    let status = code
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status code"))?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[head_end..].to_vec();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse::<usize>().map_err(|_| bad("bad content-length")))
        .transpose()?;
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && !v.eq_ignore_ascii_case("identity"))
    {
        return Err(bad("chunked responses are not supported by this client"));
    }
    match length {
        Some(len) if len > MAX_BODY => return Err(bad("response body too large")),
        Some(len) => {
            while body.len() < len {
                let n = read_deadline(stream, &mut chunk, deadline)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None => loop {
            let n = read_deadline(stream, &mut chunk, deadline)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
            if body.len() > MAX_BODY {
                return Err(bad("response body too large"));
            }
        },
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    const SAMPLE: &str = r#"{"status":"ok","kernel":"tuk-kernel","version":"0.1.0","uptime_ms":12,"boot_us":3456,
        "clock":"tsc","tsc_khz":2000000,"memory":{"total_bytes":67108864,"heap_bytes":1048576,"heap_used_bytes":4096},
        "http":{"connections_accepted":1,"connections_active":1,"requests":1,"responses_2xx":0,"responses_4xx":0,
        "responses_5xx":0,"protocol_errors":0,"timeouts":0},"extra":true}"#;

    #[test]
    fn parses_the_contract_document() {
        let h = Health::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(h.status, "ok");
        assert_eq!(h.memory.total_bytes, 64 << 20);
        assert_eq!(h.http.connections_accepted, 1);
        let missing = SAMPLE.replace("\"timeouts\":0", "\"x\":0");
        assert!(Health::parse(missing.as_bytes()).is_err());
    }

    /// Serves one canned response per connection, `n` times.
    fn serve(responses: Vec<&'static [u8]>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for r in responses {
                let (mut s, _) = l.accept().unwrap();
                let mut req = [0u8; 1024];
                let _ = s.read(&mut req);
                s.write_all(r).unwrap();
            }
        });
        addr
    }

    #[test]
    fn client_reads_exactly_content_length_and_eof_bodies() {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}trailing",
            b"HTTP/1.1 404 Not Found\r\n\r\nuntil eof",
            b"garbage\r\n\r\n",
        ]);
        let t = Duration::from_secs(5);
        let r = get(addr, "/", t).unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"{}"[..]));
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        let r = get(addr, "/", t).unwrap();
        assert_eq!((r.status, &r.body[..]), (404, &b"until eof"[..]));
        assert!(get(addr, "/", t).is_err());
    }

    #[test]
    fn client_times_out_on_a_silent_server() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let start = Instant::now();
        let e = get(addr, "/", Duration::from_millis(200)).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            "{e:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(l);
    }

    #[test]
    fn fetch_reports_non_200_and_bad_json() {
        let addr = serve(vec![
            b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        ]);
        let t = Duration::from_secs(5);
        assert!(fetch(addr, t).unwrap_err().to_string().contains("503"));
        assert!(fetch(addr, t)
            .unwrap_err()
            .to_string()
            .contains("not the contract"));
    }
}
