//! Arbitrary bytes, cut at arbitrary points, with arbitrary timing and peer behaviour, through
//! a `Connection`. Nothing may panic, buffers stay within the limits, and everything the
//! engine sends is a sequence of well-framed responses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tuk_http::{Connection, Limits, Request, Response};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut data)) = data.split_first() else {
        return;
    };
    let limits = if mode & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            max_head_bytes: 64,
            max_headers: 4,
            max_body_bytes: 32,
            idle_timeout_ms: 50,
            request_timeout_ms: 20,
            max_output_bytes: 64,
        }
    };
    let mut handler = |req: &Request, _now: u64| {
        assert!(req.body.len() <= limits.max_body_bytes);
        match req.method.as_str() {
            "HEAD" => Response::new(200),
            "PUT" => Response::new(u16::from(mode) * 4),
            _ => Response::text(200, req.body.clone()).with_header("X-Path", &req.path),
        }
    };
    let mut conn = Connection::new(limits, 0);
    let (mut now, mut sent) = (0u64, Vec::new());
    // Each control byte: low 6 bits = how many stream bytes to deliver next; bit 6 = let
    // time pass; bit 7 = the peer reads everything (else half of the pending output).
    while let Some((&ctl, rest)) = data.split_first() {
        let n = usize::from(ctl & 0x3f).min(rest.len());
        conn.receive(&rest[..n], now);
        data = &rest[n..];
        if ctl & 0x40 != 0 {
            now += 7;
        }
        conn.process(&mut handler, now);
        let pending = conn.output().len();
        // One response (head, body up to the handler's size) may go past the threshold.
        assert!(pending <= limits.max_output_bytes + 2 * (limits.max_body_bytes + 8192) + 4096);
        let n = if ctl & 0x80 != 0 {
            pending
        } else {
            pending / 2
        };
        sent.extend_from_slice(&conn.output()[..n]);
        conn.consume_output(n);
        if conn.should_close() {
            check_framing(&sent);
            return;
        }
        assert!(conn.next_deadline().is_some());
    }
    conn.peer_closed(now);
    conn.process(&mut handler, now);
    sent.extend_from_slice(conn.output());
    check_framing(&sent);
});

/// Every response parses and its Content-Length frames it (the last may be cut short by an
/// idle abort).
fn check_framing(mut out: &[u8]) {
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return,
            Err(e) => panic!("engine sent an unparsable response: {e}"),
        };
        let length = resp
            .headers
            .iter()
            .find(|h| h.name == "Content-Length")
            .map_or(0, |h| {
                core::str::from_utf8(h.value).unwrap().parse().unwrap()
            });
        out = out.get(n + length..).unwrap_or_default();
    }
}
