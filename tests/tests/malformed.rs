//! Hostile and broken clients against one VM, one after another; afterwards the server still
//! answers and its counters show what happened.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tuk_e2e::{boot, health, num, Conn, IDLE_TIMEOUT, REQUEST_TIMEOUT};

/// Slack on top of a kernel timeout: TCG on two cores with timer granularity.
const SLACK: Duration = Duration::from_secs(3);
/// How soon a connection must close after an error response.
const CLOSE_SOON: Duration = Duration::from_secs(3);

/// Sends `bytes` on a fresh connection, expects `status`, then expects the server to close.
fn expect_error(addr: std::net::SocketAddr, what: &str, bytes: &[u8], status: u16) {
    let t = Instant::now();
    let mut c = Conn::open(addr);
    c.send(bytes)
        .unwrap_or_else(|e| panic!("{what}: send: {e}"));
    let r = c
        .read_response(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{what}: expected {status}, got no response: {e}"));
    assert_eq!(r.status, status, "{what}: body {}", r.body_text());
    c.wait_closed(CLOSE_SOON)
        .unwrap_or_else(|e| panic!("{what}: after {status} the connection must close: {e}"));
    eprintln!(
        "  {what}: {status} + close in {} ms",
        t.elapsed().as_millis()
    );
}

#[test]
fn malformed_and_hostile_clients() {
    let vm = boot("malformed");
    let addr = vm.addr();
    let before = health(addr);

    expect_error(
        addr,
        "garbage",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage\xff\xfe\r\n\r\n",
        400,
    );

    let mut big = b"GET /_tuk/health HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 9000));
    big.extend_from_slice(b"\r\n\r\n");
    expect_error(addr, "9 KB header section", &big, 431);

    expect_error(
        addr,
        "Content-Length: 10000000",
        b"POST /_tuk/health HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n",
        413,
    );

    expect_error(
        addr,
        "HTTP/9.9",
        b"GET /_tuk/health HTTP/9.9\r\nHost: x\r\n\r\n",
        505,
    );

    expect_error(
        addr,
        "Content-Length + Transfer-Encoding",
        b"POST /_tuk/health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    );

    truncated_body(addr);
    slow_client(addr);
    idle_keepalive_closes(addr);
    silent_connections(addr);
    resets_mid_request(addr);

    let t = Instant::now();
    let mut after = health(addr);
    eprintln!("  health afterwards: {} ms", t.elapsed().as_millis());
    // Reset connections are reaped by the server's timeouts at the latest.
    while num(&after, "http/connections_active") > 2 && t.elapsed() < REQUEST_TIMEOUT + SLACK {
        thread::sleep(Duration::from_millis(250));
        after = health(addr);
    }
    eprintln!("  counters: {}", after["http"]);
    let delta = |k: &str| num(&after, k) - num(&before, k);
    // 400 garbage, 431, 413, 400 CL+TE, 408 truncated, 408 slow.
    assert!(delta("http/responses_4xx") >= 6, "4xx: {}", after["http"]);
    assert!(delta("http/responses_5xx") >= 1, "505: {}", after["http"]);
    // At least garbage, the bad version and CL+TE are protocol errors whatever else counts.
    assert!(
        delta("http/protocol_errors") >= 3,
        "protocol_errors: {}",
        after["http"]
    );
    // Truncated body and slow client at least (idle and silent closes may count too).
    assert!(delta("http/timeouts") >= 2, "timeouts: {}", after["http"]);
    assert!(
        num(&after, "http/connections_active") <= 2,
        "connections leaked: {}",
        after["http"]
    );
}

/// Content-Length 100, 10 bytes sent, then silence: 408 after the request timeout.
fn truncated_body(addr: std::net::SocketAddr) {
    let mut c = Conn::open(addr);
    let t = Instant::now();
    c.send(b"POST /_tuk/health HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let r = c
        .read_response(REQUEST_TIMEOUT + SLACK)
        .unwrap_or_else(|e| {
            panic!(
                "truncated body: no 408 within {:?}: {e}",
                REQUEST_TIMEOUT + SLACK
            )
        });
    let took = t.elapsed();
    assert_eq!(r.status, 408, "truncated body: {}", r.body_text());
    assert!(
        took >= REQUEST_TIMEOUT - Duration::from_millis(300),
        "truncated body: 408 after only {took:?}, before the request timeout"
    );
    c.wait_closed(CLOSE_SOON)
        .expect("truncated body: close after 408");
    eprintln!("  truncated body: 408 after {} ms", took.as_millis());
}

/// One byte every 300 ms: the request never completes in time, 408.
fn slow_client(addr: std::net::SocketAddr) {
    let mut c = Conn::open(addr);
    let mut writer = c.stream().try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_w = Arc::clone(&stop);
    let dribble = thread::spawn(move || {
        let req = b"GET /_tuk/health HTTP/1.1\r\nHost: x\r\nUser-Agent: a-very-slow-client\r\n\r\n";
        for b in req {
            if stop_w.load(Ordering::Relaxed) || writer.write_all(&[*b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(300));
        }
    });
    let t = Instant::now();
    let r = c
        .read_response(REQUEST_TIMEOUT + SLACK)
        .unwrap_or_else(|e| panic!("slow client: no 408: {e}"));
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(r.status, 408, "slow client: {}", r.body_text());
    assert!(
        took >= REQUEST_TIMEOUT - Duration::from_millis(300),
        "slow client: 408 after only {took:?}"
    );
    c.wait_closed(CLOSE_SOON)
        .expect("slow client: close after 408");
    dribble.join().unwrap();
    eprintln!("  slow client: 408 after {} ms", took.as_millis());
}

/// After one request, an idle keep-alive connection is closed after the idle timeout.
fn idle_keepalive_closes(addr: std::net::SocketAddr) {
    let mut c = Conn::open(addr);
    assert_eq!(c.get("/_tuk/health").status, 200);
    let took = c
        .wait_closed(IDLE_TIMEOUT + SLACK)
        .unwrap_or_else(|e| panic!("idle keep-alive: {e}"));
    assert!(
        took >= IDLE_TIMEOUT - Duration::from_millis(500),
        "idle keep-alive closed after only {took:?}"
    );
    eprintln!("  idle keep-alive: closed after {} ms", took.as_millis());
}

/// 100 connections that never send anything: the server keeps answering others meanwhile,
/// and closes the silent ones by its own timeouts.
fn silent_connections(addr: std::net::SocketAddr) {
    let t = Instant::now();
    let mut silent: Vec<Conn> = (0..100).map(|_| Conn::open(addr)).collect();
    eprintln!(
        "  100 silent connections opened in {} ms",
        t.elapsed().as_millis()
    );
    let t = Instant::now();
    let h = health(addr);
    let took = t.elapsed();
    eprintln!(
        "  health while 100 silent connections are held: {} ms (active {})",
        took.as_millis(),
        h["http"]["connections_active"]
    );
    assert!(
        took < Duration::from_secs(2),
        "health took {took:?} while 100 idle connections were held"
    );
    let limit = IDLE_TIMEOUT.max(REQUEST_TIMEOUT) + SLACK;
    for (i, c) in silent.iter_mut().enumerate() {
        let left = limit
            .saturating_sub(t.elapsed())
            .max(Duration::from_millis(100));
        c.wait_closed(left)
            .unwrap_or_else(|e| panic!("silent connection {i} not closed by the server: {e}"));
    }
    eprintln!(
        "  100 silent connections closed by the server after {} ms",
        t.elapsed().as_millis()
    );
}

/// Clients that send half a request and reset the connection.
fn resets_mid_request(addr: std::net::SocketAddr) {
    let t = Instant::now();
    for _ in 0..10 {
        let mut c = Conn::open(addr);
        c.send(b"POST /_tuk/health HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nabc")
            .unwrap();
        thread::sleep(Duration::from_millis(20));
        c.reset();
    }
    let h = health(addr);
    assert_eq!(h["status"], "ok");
    eprintln!(
        "  10 resets mid-request, then health: {} ms",
        t.elapsed().as_millis()
    );
}
