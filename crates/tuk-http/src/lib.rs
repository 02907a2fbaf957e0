//! A sans-IO HTTP/1.1 server protocol engine (RFC 9110, RFC 9112) for the tuk unikernel.
//!
//! The crate does no I/O and reads no clock. The kernel owns the TCP socket and drives one
//! [`Connection`] per accepted socket:
//!
//! ```text
//! loop {
//!     while conn.wants_input() && socket.can_recv() {
//!         socket.recv(|buf| { let n = buf.len().min(conn.input_room());
//!                             conn.receive(&buf[..n], now); (n, ()) });
//!     }
//!     if socket got EOF { conn.peer_closed(now) }
//!     stats += conn.process(&mut handler, now);
//!     let n = socket.send_slice(conn.output()); conn.consume_output(n);
//!     if conn.should_close() { socket.close(); drop(conn); break }
//!     wake up at the next socket event or at conn.next_deadline(), whichever is first
//! }
//! ```
//!
//! # What the kernel must do
//! - Call [`Connection::process`] after feeding input, after `peer_closed`, after output
//!   drained, and no later than [`Connection::next_deadline`] (absolute ms, same clock as every
//!   `now_ms`). Timeouts only fire inside `process`.
//! - Send [`Connection::output`] and report what was sent with `consume_output`.
//! - Close the socket as soon as [`Connection::should_close`] is true: all output that should
//!   be sent has been handed out (or was dropped because the peer stopped reading). The engine
//!   never needs the socket again.
//! - Read only while [`Connection::wants_input`]; reading at most
//!   [`Connection::input_room`] bytes leaves the rest to TCP flow control. More than that is
//!   taken as the end of the stream.
//!
//! # Guarantees for untrusted input
//! - No input (bytes, splits, timing) makes any method panic; the crate has no `unsafe`.
//! - Buffered input is at most `max_head_bytes + max_body_bytes + 1 KiB`; a request body at
//!   most `max_body_bytes` (a `Content-Length` over it is refused before any of the body is
//!   read, a chunked body as soon as a chunk would pass it). Chunk framing is decoded as it
//!   arrives, so it does not accumulate. Pending output stops growing once it passes
//!   `max_output_bytes`: further pipelined requests wait until it drains (backpressure).
//! - A server can cap each connection's heap buffers ([`Connection::set_memory_limit`],
//!   read with [`Connection::memory_bytes`]) to enforce a budget shared by all its
//!   connections: input that would pass the cap gets `503` with `Retry-After: 1` and
//!   `Connection: close` (counted as `overloaded`) and its buffers are released at once.
//!   Idle buffers over 16 KiB are released, so memory falls back after a large request.
//! - Malformed or oversized requests get one final error response with a JSON body
//!   (`400`, `413`, `431`, `501`, `505`, counted as `protocol_errors`) and
//!   `Connection: close`; everything after them is discarded and the connection closes.
//!   Ambiguous framing (`Content-Length` with `Transfer-Encoding`, conflicting lengths,
//!   `Transfer-Encoding` in HTTP/1.0, bare LF inside chunked framing) is refused, never guessed.
//! - Only origin-form request-targets (`/path?query`, RFC 9112 §3.2.1) reach the handler, and
//!   `*` only with `OPTIONS`: absolute-form (`http://host/x`), authority-form (`host:port`) and
//!   anything else not starting with `/` get `400`. The engine serves, it never proxies.
//! - A request that has started (one byte, or pipelined bytes the engine reached) must be
//!   complete within `request_timeout_ms`, however slowly it trickles, or it gets `408` and
//!   the connection closes. A connection where nothing happens (no input, no response, no
//!   output sent) for `idle_timeout_ms` is closed silently, dropping unsent output.
//!
//! # What responses look like
//! Always `HTTP/1.1`, with `Content-Length` (except 204/304) and `Server: tuk` (unless the
//! handler set `Server`), never `Date` (no wall clock: RFC 9110 §6.6.1). The engine owns
//! framing: handler `Content-Length`, `Transfer-Encoding` and `Connection` headers are dropped
//! (a handler `Connection: close` still closes the connection), as are header lines with an
//! invalid name or control bytes in the value. A handler status outside 200..=599 becomes a 500.
//! `HEAD` responses carry the length of the body the handler returned, without the body.
//! HTTP/1.1 connections persist unless either side says `Connection: close`; HTTP/1.0 ones only
//! with `Connection: keep-alive`. When the engine decides to close, that response says
//! `Connection: close`. `Expect: 100-continue` is answered with `100 Continue` once the head
//! is accepted (so an oversized upload is refused before it is sent).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod chunked;
mod conn;
mod message;

pub use conn::Connection;
pub use message::{reason_phrase, Header, Request, Response, Version};

/// Per-connection limits. The defaults match the kernel's command-line defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus header section (and, separately, a chunked trailer section). 431 above.
    pub max_head_bytes: usize,
    /// Header field lines in one head. 431 above.
    pub max_headers: usize,
    /// Request body, after chunked decoding. 413 above.
    pub max_body_bytes: usize,
    /// Close a connection on which nothing happened for this long.
    pub idle_timeout_ms: u64,
    /// A started request must be complete within this (408 otherwise).
    pub request_timeout_ms: u64,
    /// Stop answering pipelined requests while more than this much output is unsent.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 8192,
            max_headers: 64,
            max_body_bytes: 1024 * 1024,
            idle_timeout_ms: 30_000,
            request_timeout_ms: 10_000,
            max_output_bytes: 256 * 1024,
        }
    }
}

/// The application side: turns a complete request into a response.
pub trait Handler {
    fn handle(&mut self, req: &Request, now_ms: u64) -> Response;
}

impl<F: FnMut(&Request, u64) -> Response> Handler for F {
    fn handle(&mut self, req: &Request, now_ms: u64) -> Response {
        self(req, now_ms)
    }
}

/// What one [`Connection::process`] call did, for the kernel's counters.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// Requests handed to the [`Handler`].
    pub requests: u32,
    /// 400/413/431/501/505 responses generated by the engine.
    pub protocol_errors: u32,
    /// 408 responses and idle closes.
    pub timeouts: u32,
    /// 503 responses because input would pass the connection's memory limit
    /// ([`Connection::set_memory_limit`]).
    pub overloaded: u32,
    /// Final responses by class (handler and engine responses alike).
    pub responses_2xx: u32,
    pub responses_4xx: u32,
    pub responses_5xx: u32,
}

impl Processed {
    fn count_response(&mut self, status: u16) {
        match status {
            200..=299 => self.responses_2xx += 1,
            400..=499 => self.responses_4xx += 1,
            500..=599 => self.responses_5xx += 1,
            _ => {}
        }
    }
}

impl core::ops::AddAssign for Processed {
    fn add_assign(&mut self, rhs: Self) {
        let add = |a: &mut u32, b: u32| *a = a.saturating_add(b);
        add(&mut self.requests, rhs.requests);
        add(&mut self.protocol_errors, rhs.protocol_errors);
        add(&mut self.timeouts, rhs.timeouts);
        add(&mut self.overloaded, rhs.overloaded);
        add(&mut self.responses_2xx, rhs.responses_2xx);
        add(&mut self.responses_4xx, rhs.responses_4xx);
        add(&mut self.responses_5xx, rhs.responses_5xx);
    }
}
