//! The per-connection state machine: framing, keep-alive, timeouts, backpressure.

use alloc::vec::Vec;
use core::mem;

use crate::chunked::{Chunked, MAX_CHUNK_LINE};
use crate::message::{write_response, Header, Request, Response, Version};
use crate::{Handler, Limits, Processed};

/// A request the engine refuses itself: the status and the message for the JSON error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reject {
    pub(crate) status: u16,
    pub(crate) message: &'static str,
}

impl Reject {
    pub(crate) const fn new(status: u16, message: &'static str) -> Self {
        Self { status, message }
    }
}

const BAD_REQUEST: Reject = Reject::new(400, "malformed request");
const HEAD_TOO_LARGE: Reject = Reject::new(431, "request header fields too large");

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Growing a buffer would pass the connection's memory limit (`set_memory_limit`).
const OVERLOADED: Reject = Reject::new(
    503,
    "the server's buffer budget is exhausted (too much request data in flight); retry later",
);

/// Idle input and output buffers larger than this are released rather than kept for reuse,
/// so a connection's memory falls back once a large request or response is done.
const SHRINK_ABOVE: usize = 16 * 1024;

#[derive(Debug)]
enum Phase {
    /// Reading a request head; `scanned` bytes of it were already searched for its end.
    Head { scanned: usize },
    /// Head parsed, reading the body into `req.body`.
    Body {
        req: Request,
        framing: Framing,
        keep_alive: bool,
    },
}

#[derive(Debug)]
enum Framing {
    Length(usize),
    Chunked(Chunked),
}

/// A parsed head: the request (body still empty) and what the engine needs to read the rest.
struct Head {
    req: Request,
    framing: Framing,
    keep_alive: bool,
    /// `Expect: 100-continue` from an HTTP/1.1 client.
    expect_continue: bool,
}

enum Step {
    NeedMore,
    Ready(Request, bool),
    Reject(Reject),
}

/// One HTTP/1.1 server connection. See the crate docs for the contract.
#[derive(Debug)]
pub struct Connection {
    limits: Limits,
    /// Received bytes; `input[..pos]` is already consumed (dropped at the end of `process`).
    input: Vec<u8>,
    pos: usize,
    phase: Phase,
    /// Bytes to send; `output[..sent]` was already sent.
    output: Vec<u8>,
    sent: usize,
    /// When the request now being received started (first byte, or when the engine got to it).
    request_started: Option<u64>,
    last_activity: u64,
    /// `consume_output` made progress since the last `process` (it has no clock to stamp it).
    output_progress: bool,
    /// No more input: the peer half-closed, or it sent more than `input_room` allowed.
    eof: bool,
    /// No more requests: finish sending the output, then close.
    closing: bool,
    /// Close now, dropping any unsent output.
    aborted: bool,
    /// Most heap bytes the buffers may hold ([`Connection::set_memory_limit`]).
    memory_limit: usize,
    /// Input was refused because buffering it would pass `memory_limit`: answer 503, close.
    overloaded: bool,
}

impl Connection {
    pub fn new(limits: Limits, now_ms: u64) -> Self {
        Self {
            limits,
            input: Vec::new(),
            pos: 0,
            phase: Phase::Head { scanned: 0 },
            output: Vec::new(),
            sent: 0,
            request_started: None,
            last_activity: now_ms,
            output_progress: false,
            eof: false,
            closing: false,
            aborted: false,
            memory_limit: usize::MAX,
            overloaded: false,
        }
    }

    /// Heap bytes the connection's buffers hold now: received input, the body of the request
    /// being read and unsent output (allocated capacity, not just what is in use). A server
    /// sums this over its connections for a global budget.
    pub fn memory_bytes(&self) -> usize {
        let body = match &self.phase {
            Phase::Body { req, .. } => req.body.capacity(),
            Phase::Head { .. } => 0,
        };
        self.input
            .capacity()
            .saturating_add(self.output.capacity())
            .saturating_add(body)
    }

    /// Caps [`memory_bytes`](Self::memory_bytes) for input from now on (default: no cap). A
    /// server with a global budget sets it before feeding each connection, to what this one
    /// holds plus what is left of the budget. Input (received bytes, a request body) that
    /// would need more is refused with `503 Service Unavailable`, `Retry-After: 1` and
    /// `Connection: close`, its buffers released at once; a lowered limit never takes memory
    /// already held. Output is never refused (a handler's response is always sent), but while
    /// the limit is passed and output is pending, pipelined requests wait as for
    /// `max_output_bytes`.
    pub fn set_memory_limit(&mut self, bytes: usize) {
        self.memory_limit = bytes;
    }

    /// Buffers received bytes. At most [`input_room`](Self::input_room) bytes are kept; more
    /// than that is treated as the end of the stream (requests that arrived complete are still
    /// answered, then the connection closes). Input after an error, a close decision or EOF is
    /// discarded.
    pub fn receive(&mut self, data: &[u8], now_ms: u64) {
        if data.is_empty() || self.closing || self.aborted || self.eof {
            return;
        }
        self.last_activity = now_ms;
        if self.request_started.is_none() && !self.backpressured() {
            self.request_started = Some(now_ms);
        }
        let take = data.len().min(self.input_room());
        let others = self.memory_bytes() - self.input.capacity();
        let most = self.pos.saturating_add(self.input_cap());
        let need = self.input.len() + take;
        if !grow_within(&mut self.input, need, most, others, self.memory_limit) {
            self.overloaded = true;
            return;
        }
        self.input.extend_from_slice(&data[..take]);
        if take < data.len() {
            self.eof = true;
        }
    }

    /// How many more bytes `receive` will buffer: about `max_head_bytes + max_body_bytes`
    /// in total. A kernel that reads only this much leaves the rest to TCP flow control.
    pub fn input_room(&self) -> usize {
        self.input_cap().saturating_sub(self.input.len() - self.pos)
    }

    fn input_cap(&self) -> usize {
        (self.limits.max_head_bytes)
            .saturating_add(self.limits.max_body_bytes)
            .saturating_add(MAX_CHUNK_LINE)
    }

    /// Whether the kernel should read from the socket now.
    pub fn wants_input(&self) -> bool {
        !(self.closing || self.aborted || self.eof || self.overloaded || self.backpressured())
            && self.input_room() > 0
    }

    /// The peer shut down its sending side. Call [`process`](Self::process) afterwards.
    pub fn peer_closed(&mut self, _now_ms: u64) {
        self.eof = true;
        if matches!(self.phase, Phase::Head { .. }) && self.pos == self.input.len() {
            self.close_gracefully();
        }
    }

    /// Answers every complete buffered request (in order), then applies timeouts.
    pub fn process(&mut self, handler: &mut dyn Handler, now_ms: u64) -> Processed {
        let mut stats = Processed::default();
        if self.should_close() {
            return stats;
        }
        if mem::take(&mut self.output_progress) {
            self.last_activity = self.last_activity.max(now_ms);
        }
        self.output.drain(..self.sent);
        self.sent = 0;

        if self.overloaded && !self.closing {
            stats.overloaded += 1;
            self.send_error(OVERLOADED, now_ms, &mut stats);
        }
        while !self.closing {
            let at_boundary = matches!(self.phase, Phase::Head { .. });
            if at_boundary && self.backpressured() {
                // Not reading the next request, so its clock is not running.
                self.request_started = None;
                break;
            }
            if at_boundary && self.pos < self.input.len() {
                self.request_started.get_or_insert(now_ms);
            }
            match self.step() {
                Step::NeedMore => {
                    if self.eof {
                        self.close_gracefully();
                    }
                    break;
                }
                Step::Ready(req, keep_alive) => {
                    stats.requests += 1;
                    self.request_started = None;
                    let resp = handler.handle(&req, now_ms);
                    self.respond(&req, resp, keep_alive, now_ms, &mut stats);
                }
                Step::Reject(reject) if reject == OVERLOADED => {
                    stats.overloaded += 1;
                    self.send_error(reject, now_ms, &mut stats);
                }
                Step::Reject(reject) => {
                    stats.protocol_errors += 1;
                    self.send_error(reject, now_ms, &mut stats);
                }
            }
        }
        self.input.drain(..self.pos);
        self.pos = 0;
        if self.input.is_empty() && self.input.capacity() > SHRINK_ABOVE {
            self.input = Vec::new();
        }
        self.apply_timeouts(now_ms, &mut stats);
        stats
    }

    /// Bytes waiting to be sent.
    pub fn output(&self) -> &[u8] {
        &self.output[self.sent..]
    }

    /// Marks the first `n` bytes of [`output`](Self::output) as sent.
    pub fn consume_output(&mut self, n: usize) {
        let n = n.min(self.output.len() - self.sent);
        self.sent += n;
        self.output_progress |= n > 0;
        if self.sent == self.output.len() {
            self.output.clear();
            self.sent = 0;
            if self.output.capacity() > SHRINK_ABOVE {
                self.output = Vec::new();
            }
        }
    }

    /// The kernel must close the socket now.
    pub fn should_close(&self) -> bool {
        self.aborted || (self.closing && self.output().is_empty())
    }

    /// When `process` must be called again even if nothing arrives (absolute ms).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.should_close() {
            return None;
        }
        let idle = self
            .last_activity
            .saturating_add(self.limits.idle_timeout_ms);
        Some(self.request_deadline().map_or(idle, |r| r.min(idle)))
    }

    fn request_deadline(&self) -> Option<u64> {
        if self.closing || self.backpressured() {
            return None;
        }
        let started = self.request_started?;
        Some(started.saturating_add(self.limits.request_timeout_ms))
    }

    fn backpressured(&self) -> bool {
        let output = self.output().len();
        output > self.limits.max_output_bytes
            || (output > 0 && self.memory_bytes() > self.memory_limit)
    }

    fn apply_timeouts(&mut self, now_ms: u64, stats: &mut Processed) {
        if self.request_deadline().is_some_and(|d| now_ms >= d) {
            stats.timeouts += 1;
            self.send_error(Reject::new(408, "request timeout"), now_ms, stats);
        } else if !self.should_close()
            && now_ms
                >= self
                    .last_activity
                    .saturating_add(self.limits.idle_timeout_ms)
        {
            stats.timeouts += 1;
            self.aborted = true;
            self.output.clear();
            self.sent = 0;
            self.close_gracefully();
        }
    }

    /// Stops taking requests: buffered input is dropped and further input discarded.
    fn close_gracefully(&mut self) {
        self.closing = true;
        self.input = Vec::new();
        self.pos = 0;
        self.phase = Phase::Head { scanned: 0 };
        self.request_started = None;
    }

    fn send_error(&mut self, reject: Reject, now_ms: u64, stats: &mut Processed) {
        let mut resp = Response::error(reject.status, reject.message);
        if reject == OVERLOADED {
            resp = resp.with_header("Retry-After", "1");
        }
        write_response(&mut self.output, &resp, false, Some("close"));
        stats.count_response(reject.status);
        self.last_activity = now_ms;
        self.close_gracefully();
    }

    fn respond(
        &mut self,
        req: &Request,
        resp: Response,
        keep_alive: bool,
        now_ms: u64,
        stats: &mut Processed,
    ) {
        let resp = if (200..=599).contains(&resp.status) {
            resp
        } else {
            Response::error(500, "handler returned an invalid status")
        };
        let handler_close = resp.headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("connection") && has_token(value.as_bytes(), "close")
        });
        let peer_done = self.eof && self.pos == self.input.len();
        let keep = keep_alive && !handler_close && !peer_done;
        let connection = match (keep, req.version) {
            (false, _) => Some("close"),
            (true, Version::Http10) => Some("keep-alive"),
            (true, Version::Http11) => None,
        };
        write_response(&mut self.output, &resp, req.method == "HEAD", connection);
        stats.count_response(resp.status);
        self.last_activity = now_ms;
        if !keep {
            self.close_gracefully();
        }
    }

    /// Advances the parser over buffered input as far as one request.
    fn step(&mut self) -> Step {
        loop {
            match mem::replace(&mut self.phase, Phase::Head { scanned: 0 }) {
                Phase::Head { scanned } => {
                    if scanned == 0 {
                        // RFC 9112 §2.2: ignore empty lines before a request-line.
                        let blank = self.input[self.pos..]
                            .iter()
                            .take_while(|&&b| b == b'\r' || b == b'\n')
                            .count();
                        self.pos += blank;
                    }
                    let buf = &self.input[self.pos..];
                    let max = self.limits.max_head_bytes;
                    let end = match find_head_end(buf, scanned) {
                        Ok(end) if end <= max => end,
                        Ok(_) => return Step::Reject(HEAD_TOO_LARGE),
                        Err(_) if !buf.is_empty() && buf.len() >= max => {
                            return Step::Reject(HEAD_TOO_LARGE)
                        }
                        Err(scanned) => {
                            self.phase = Phase::Head { scanned };
                            return Step::NeedMore;
                        }
                    };
                    let head = match parse_head(&buf[..end], &self.limits) {
                        Ok(head) => head,
                        Err(reject) => return Step::Reject(reject),
                    };
                    self.pos += end;
                    let has_body = !matches!(head.framing, Framing::Length(0));
                    if head.expect_continue && has_body && self.pos == self.input.len() {
                        self.output.extend_from_slice(CONTINUE);
                    }
                    self.phase = Phase::Body {
                        req: head.req,
                        framing: head.framing,
                        keep_alive: head.keep_alive,
                    };
                }
                Phase::Body {
                    mut req,
                    mut framing,
                    keep_alive,
                } => {
                    let others = self.input.capacity() + self.output.capacity();
                    let buf = &self.input[self.pos..];
                    let (need, most) = match &framing {
                        Framing::Length(remaining) => (
                            req.body.len() + (*remaining).min(buf.len()),
                            req.body.len() + *remaining,
                        ),
                        // Decoded data is never longer than its framing.
                        Framing::Chunked(_) => {
                            let room = self.limits.max_body_bytes.saturating_sub(req.body.len());
                            (
                                req.body.len() + buf.len().min(room),
                                self.limits.max_body_bytes,
                            )
                        }
                    };
                    if !grow_within(&mut req.body, need, most, others, self.memory_limit) {
                        return Step::Reject(OVERLOADED);
                    }
                    let done = match &mut framing {
                        Framing::Length(remaining) => {
                            let n = (*remaining).min(buf.len());
                            req.body.extend_from_slice(&buf[..n]);
                            self.pos += n;
                            *remaining -= n;
                            *remaining == 0
                        }
                        Framing::Chunked(decoder) => {
                            match decoder.decode(buf, &mut req.body, &self.limits) {
                                Ok((n, done)) => {
                                    self.pos += n;
                                    done
                                }
                                Err(reject) => return Step::Reject(reject),
                            }
                        }
                    };
                    if done {
                        return Step::Ready(req, keep_alive);
                    }
                    self.phase = Phase::Body {
                        req,
                        framing,
                        keep_alive,
                    };
                    return Step::NeedMore;
                }
            }
        }
    }
}

/// Makes room in `v` for `need` bytes if the connection then holds at most `limit` bytes
/// (`others`: its memory outside `v`). Grows by doubling (amortised copies) up to `most`, or
/// exactly to `need` when doubling would pass the limit. False: no room, `v` unchanged.
fn grow_within(v: &mut Vec<u8>, need: usize, most: usize, others: usize, limit: usize) -> bool {
    let cap = v.capacity();
    if need <= cap {
        return true;
    }
    let doubled = cap.saturating_mul(2).max(need).min(most.max(need));
    for want in [doubled, need] {
        if others.saturating_add(want) <= limit {
            v.reserve_exact(want - v.len());
            return true;
        }
    }
    false
}

/// Finds the end of a head (just past its empty line, CRLF or bare LF as httparse accepts).
/// `Err(n)`: not there yet, and the first `n` bytes need not be searched again.
fn find_head_end(buf: &[u8], from: usize) -> Result<usize, usize> {
    let mut i = from.min(buf.len());
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match (buf.get(nl + 1), buf.get(nl + 2)) {
            (Some(b'\n'), _) => return Ok(nl + 2),
            (Some(b'\r'), Some(b'\n')) => return Ok(nl + 3),
            (None, _) | (Some(b'\r'), None) => return Err(nl),
            _ => i = nl + 1,
        }
    }
    Err(buf.len())
}

/// Parses a complete head and decides how its body is framed.
fn parse_head(buf: &[u8], limits: &Limits) -> Result<Head, Reject> {
    // A header line takes at least 3 bytes, so this many slots can never be too few.
    let slots = limits.max_headers.min(buf.len() / 3 + 1);
    let mut headers = alloc::vec![httparse::EMPTY_HEADER; slots];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(BAD_REQUEST),
        Err(httparse::Error::TooManyHeaders) => return Err(HEAD_TOO_LARGE),
        Err(httparse::Error::Version) if is_http_version(buf) => {
            return Err(Reject::new(505, "HTTP version not supported"))
        }
        Err(_) => return Err(BAD_REQUEST),
    }
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(BAD_REQUEST);
    };
    // RFC 9112 §3.2: a server that is not a proxy takes origin-form (`/path?query`) only, and
    // asterisk-form only for OPTIONS. Absolute-form (`http://host/x`), authority-form
    // (`host:port`) and anything else are refused, so that no handler (the kernel's router, a
    // reverse proxy building an upstream URL) ever sees a target that names another host.
    if !(target.starts_with('/') || (target == "*" && method == "OPTIONS")) {
        return Err(Reject::new(
            400,
            "the request-target must be a path starting with / (origin-form)",
        ));
    }
    let version = if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    };

    let mut content_length: Option<u64> = None;
    let (mut has_length, mut has_te, mut chunked, mut other_coding) = (false, false, 0, false);
    let (mut close, mut keep_alive_token, mut expect, mut hosts) = (false, false, false, 0);
    for h in parsed.headers.iter() {
        let (name, value) = (h.name, h.value);
        if name.eq_ignore_ascii_case("content-length") {
            has_length = true;
            for item in list(value) {
                let n = digits(item).ok_or(Reject::new(400, "invalid content-length"))?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(Reject::new(400, "conflicting content-length"));
                }
                content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            has_te = true;
            for coding in list(value) {
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked += 1;
                } else {
                    other_coding = true;
                }
            }
        } else if name.eq_ignore_ascii_case("connection") {
            close |= has_token(value, "close");
            keep_alive_token |= has_token(value, "keep-alive");
        } else if name.eq_ignore_ascii_case("expect") {
            expect = trim_ows(value).eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    // RFC 9112 §3.2: more than one Host is a 400 (a missing one is tolerated here).
    if hosts > 1 {
        return Err(Reject::new(400, "more than one host header"));
    }
    let framing = if has_te {
        // RFC 9112 §6.1, §6.3: TE with CL, or in HTTP/1.0, is faulty framing (smuggling).
        if has_length || version == Version::Http10 {
            return Err(Reject::new(400, "ambiguous message framing"));
        }
        if other_coding {
            return Err(Reject::new(501, "transfer coding not implemented"));
        }
        if chunked != 1 {
            return Err(Reject::new(400, "invalid transfer-encoding"));
        }
        Framing::Chunked(Chunked::new())
    } else if has_length {
        let n = content_length.ok_or(Reject::new(400, "invalid content-length"))?;
        match usize::try_from(n) {
            Ok(n) if n <= limits.max_body_bytes => Framing::Length(n),
            _ => return Err(Reject::new(413, "request body too large")),
        }
    } else {
        Framing::Length(0)
    };

    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.into(), Some(query.into())),
        None => (target.into(), None),
    };
    let headers = parsed
        .headers
        .iter()
        .map(|h| Header {
            name: h.name.into(),
            value: h.value.to_vec(),
        })
        .collect();
    let req = Request {
        method: method.into(),
        target: target.into(),
        path,
        query,
        version,
        headers,
        body: Vec::new(),
    };
    Ok(Head {
        req,
        framing,
        keep_alive: !close && (version == Version::Http11 || keep_alive_token),
        // RFC 9110 §10.1.1: no 100 (Continue) to an HTTP/1.0 client.
        expect_continue: expect && version == Version::Http11,
    })
}

/// Whether the request line ends in a well-formed `HTTP/d.d` (so a version error is a 505,
/// not a 400).
fn is_http_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    matches!(version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit())
}

/// The non-empty elements of a comma-separated list (RFC 9110 §5.6.1).
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|item| !item.is_empty())
}

fn has_token(value: &[u8], token: &str) -> bool {
    list(value).any(|item| item.eq_ignore_ascii_case(token.as_bytes()))
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ows(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

/// `1*DIGIT`, saturating (anything that big is over every limit anyway).
fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::string::String;

    fn echo(req: &Request, _now: u64) -> Response {
        let body = format!(
            "{} {} {}",
            req.method,
            req.target,
            String::from_utf8_lossy(&req.body)
        );
        Response::text(200, body)
    }

    /// Takes all pending output as text.
    fn drain(conn: &mut Connection) -> String {
        let out = String::from_utf8_lossy(conn.output()).into_owned();
        conn.consume_output(out.len());
        out
    }

    /// Feeds each piece at time 0 with `process` after each; returns all output.
    fn serve(limits: Limits, pieces: &[&[u8]]) -> (String, Processed, Connection) {
        let mut conn = Connection::new(limits, 0);
        let (mut out, mut stats) = (String::new(), Processed::default());
        for piece in pieces {
            conn.receive(piece, 0);
            stats += conn.process(&mut echo, 0);
            out += &drain(&mut conn);
        }
        (out, stats, conn)
    }

    fn serve1(input: &[u8]) -> (String, Processed, Connection) {
        serve(Limits::default(), &[input])
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nServer: tuk\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// Asserts an engine error: one response with `status`, `Connection: close`, then closed.
    fn assert_refused(input: &[u8], status: u16) {
        let (out, stats, mut conn) = serve1(input);
        let what = String::from_utf8_lossy(input);
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what:?} -> {out}"
        );
        assert!(
            out.contains("\r\nConnection: close\r\n"),
            "{what:?} -> {out}"
        );
        assert!(out.contains("{\"error\":"), "{what:?} -> {out}");
        assert_eq!((stats.requests, stats.protocol_errors), (0, 1), "{what:?}");
        assert!(conn.should_close() && !conn.wants_input());
        conn.receive(b"GET / HTTP/1.1\r\n\r\n", 0);
        assert_eq!(conn.process(&mut echo, 0), Processed::default());
        assert!(conn.output().is_empty() && conn.input.is_empty());
    }

    #[test]
    fn simple_get_keeps_the_connection_open() {
        let mut seen = Vec::new();
        let mut handler = |req: &Request, _: u64| {
            seen.push(req.clone());
            Response::text(200, "hi")
        };
        let mut conn = Connection::new(Limits::default(), 0);
        conn.receive(b"GET /a/b?x=1&y HTTP/1.1\r\nHost: h\r\nX-Y:  z \r\n\r\n", 0);
        let stats = conn.process(&mut handler, 0);
        assert_eq!(drain(&mut conn), ok("hi"));
        assert_eq!((stats.requests, stats.responses_2xx), (1, 1));
        assert!(!conn.should_close() && conn.wants_input());
        let req = &seen[0];
        assert_eq!(
            (req.method.as_str(), req.target.as_str()),
            ("GET", "/a/b?x=1&y")
        );
        assert_eq!(
            (req.path.as_str(), req.query.as_deref()),
            ("/a/b", Some("x=1&y"))
        );
        assert_eq!(
            (req.version, req.header("x-y")),
            (Version::Http11, Some(&b"z"[..]))
        );
        assert!(req.body.is_empty());
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let input = b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
                      GET /3 HTTP/1.1\r\n\r\n";
        let expected = ok("GET /1 ") + &ok("POST /2 abc") + &ok("GET /3 ");
        let (out, stats, _) = serve1(input);
        assert_eq!((out.as_str(), stats.requests), (expected.as_str(), 3));
        // Byte by byte, too.
        let pieces: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(serve(Limits::default(), &pieces).0, expected);
    }

    #[test]
    fn empty_lines_before_a_request_are_ignored() {
        assert_eq!(serve1(b"\r\n\r\n\nGET / HTTP/1.1\r\n\r\n").0, ok("GET / "));
        assert_eq!(serve1(b"GET / HTTP/1.1\n\n").0, ok("GET / "));
    }

    #[test]
    fn missing_host_is_accepted_but_two_hosts_are_not() {
        assert_eq!(serve1(b"GET / HTTP/1.1\r\n\r\n").1.requests, 1);
        assert_refused(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400);
    }

    #[test]
    fn oversized_heads_get_431() {
        let limits = Limits {
            max_head_bytes: 64,
            max_headers: 2,
            ..Limits::default()
        };
        // Exactly at the limit is fine.
        let at = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(64 - 18));
        assert_eq!(at.len(), 64);
        assert_eq!(serve(limits, &[at.as_bytes()]).1.requests, 1);
        // One over, complete or not.
        let over = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(64 - 17));
        for piece in [over.as_bytes(), &over.as_bytes()[..64]] {
            let (out, stats, conn) = serve(limits, &[piece]);
            assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
            assert_eq!(stats.protocol_errors, 1);
            assert!(conn.should_close());
        }
        let many = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert!(serve(limits, &[many]).0.starts_with("HTTP/1.1 431 "));
        assert_refused(
            &[b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 9000]].concat(),
            431,
        );
    }

    #[test]
    fn malformed_heads_get_400() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nName : x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"G\x01T / HTTP/1.1\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET / FOO/1.1\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n",
        ];
        for input in bad {
            assert_refused(input, 400);
        }
    }

    #[test]
    fn only_origin_form_targets_are_served() {
        for target in [
            "http://127.0.0.1:9/x",
            "https://example.com/",
            "@127.0.0.1:9/x",
            "127.0.0.1:9",
            "example.com:443",
            "x",
            "*",
            "?a=1",
        ] {
            for method in ["GET", "DELETE", "CONNECT", "POST"] {
                assert_refused(
                    format!("{method} {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
                    400,
                );
            }
        }
        let (out, stats, _) = serve1(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(stats.protocol_errors, 0, "{out}");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let (out, _, _) = serve1(b"GET /a?b=http://c/ HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }

    #[test]
    fn unsupported_versions_get_505() {
        for v in ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3.0"] {
            assert_refused(format!("GET / {v}\r\n\r\n").as_bytes(), 505);
        }
    }

    #[test]
    fn content_length_must_be_digits_and_agree() {
        for cl in ["abc", "+5", "-1", "", "0x5", "5 5", "5;", "5, 6"] {
            let input = format!("POST / HTTP/1.1\r\nContent-Length: {cl}\r\n\r\nhello");
            assert_refused(input.as_bytes(), 400);
        }
        assert_refused(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400,
        );
        // Repeated identical values are one value (RFC 9110 §8.6).
        let (out, ..) = serve1(b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello");
        assert_eq!(out, ok("POST / hello"));
        let (out, ..) =
            serve1(b"POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 005\r\n\r\nhello");
        assert_eq!(out, ok("POST / hello"));
    }

    #[test]
    fn transfer_encoding_rules() {
        assert_refused(
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        );
        assert_refused(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            400,
        );
        assert_refused(
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        );
        assert_refused(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            400,
        );
        assert_refused(b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n", 400);
        for te in ["gzip", "gzip, chunked", "chunked, gzip", "identity"] {
            let input = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_refused(input.as_bytes(), 501);
        }
        let (out, stats, _) =
            serve1(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        assert_eq!((out, stats.protocol_errors), (ok("POST / "), 0));
    }

    #[test]
    fn chunked_body_is_decoded_at_every_split() {
        let input = b"POST /c HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n\
                      3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\nGET /n HTTP/1.1\r\n\r\n";
        let expected = ok("POST /c abcde") + &ok("GET /n ");
        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(
                serve(Limits::default(), &[a, b]).0,
                expected,
                "split {split}"
            );
        }
        assert_refused(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n",
            400,
        );
        assert_refused(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
            400,
        );
    }

    #[test]
    fn oversized_bodies_get_413_without_being_read() {
        let limits = Limits {
            max_body_bytes: 4,
            ..Limits::default()
        };
        let (out, stats, conn) = serve(limits, &[b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"]);
        assert!(out.starts_with("HTTP/1.1 413 ") && out.contains("Connection: close"));
        assert!(conn.should_close() && stats.protocol_errors == 1);
        let huge = b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert!(serve(limits, &[huge]).0.starts_with("HTTP/1.1 413 "));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\n";
        let (out, ..) = serve(limits, &[chunked]);
        assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
        let at = b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd";
        assert_eq!(serve(limits, &[at]).0, ok("POST / abcd"));
    }

    #[test]
    fn expect_100_continue() {
        let head = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\n";
        let (out, ..) = serve(Limits::default(), &[head, b"hello"]);
        assert_eq!(
            out,
            String::from("HTTP/1.1 100 Continue\r\n\r\n") + &ok("POST / hello")
        );
        // Body already here, HTTP/1.0, or no body: no 100.
        let (out, ..) = serve1(&[head.as_slice(), b"hello"].concat());
        assert_eq!(out, ok("POST / hello"));
        let (out, ..) =
            serve1(b"POST / HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n");
        assert!(out.is_empty());
        let (out, ..) = serve1(b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
        assert_eq!(out, ok("GET / "));
        // Refused before the body is sent.
        let limits = Limits {
            max_body_bytes: 4,
            ..Limits::default()
        };
        let (out, ..) = serve(limits, &[head]);
        assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
    }

    #[test]
    fn keep_alive_rules() {
        let cases: &[(&[u8], Option<&str>, bool)] = &[
            (b"GET / HTTP/1.1\r\n\r\n", None, true),
            (
                b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n",
                Some("close"),
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n",
                Some("close"),
                false,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", Some("close"), false),
            (
                b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
                Some("keep-alive"),
                true,
            ),
        ];
        for &(input, header, open) in cases {
            let (out, _, conn) = serve1(input);
            let conn_header = out
                .lines()
                .find_map(|l| l.strip_prefix("Connection: "))
                .map(String::from);
            assert_eq!(conn_header.as_deref(), header, "{out}");
            assert_eq!(conn.should_close(), !open, "{out}");
        }
        // Nothing after a `Connection: close` request is read.
        let (out, stats, _) =
            serve1(b"GET /1 HTTP/1.1\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
        assert_eq!(stats.requests, 1, "{out}");
    }

    #[test]
    fn head_gets_length_without_body() {
        let (out, ..) = serve1(b"HEAD /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n");
        let expected = ok("HEAD /x ");
        let expected = expected.strip_suffix("HEAD /x ").unwrap();
        assert_eq!(out, String::from(expected) + &ok("GET /y "));
    }

    #[test]
    fn handler_statuses_and_headers_are_sanitised() {
        for status in [0, 99, 100, 101, 199, 600, 1000] {
            let mut handler = |_: &Request, _: u64| Response::text(status, "x");
            let mut conn = Connection::new(Limits::default(), 0);
            conn.receive(b"GET / HTTP/1.1\r\n\r\n", 0);
            let stats = conn.process(&mut handler, 0);
            assert!(drain(&mut conn).starts_with("HTTP/1.1 500 "));
            assert_eq!(stats.responses_5xx, 1);
        }
        let mut handler = |_: &Request, _: u64| {
            Response::new(204)
                .with_header("Connection", "close")
                .with_header("Content-Length", "7")
        };
        let mut conn = Connection::new(Limits::default(), 0);
        conn.receive(b"GET / HTTP/1.1\r\n\r\n", 0);
        conn.process(&mut handler, 0);
        let out = drain(&mut conn);
        assert_eq!(
            out,
            "HTTP/1.1 204 No Content\r\nServer: tuk\r\nConnection: close\r\n\r\n"
        );
        assert!(conn.should_close());
    }

    #[test]
    fn idle_connections_close_silently() {
        let mut conn = Connection::new(Limits::default(), 1000);
        assert_eq!(conn.next_deadline(), Some(31_000));
        assert_eq!(conn.process(&mut echo, 30_999), Processed::default());
        assert!(!conn.should_close());
        let stats = conn.process(&mut echo, 31_000);
        assert_eq!(stats.timeouts, 1);
        assert!(conn.should_close() && conn.output().is_empty());
        assert_eq!(conn.next_deadline(), None);
        // A response restarts the idle clock.
        let mut conn = Connection::new(Limits::default(), 0);
        conn.receive(b"GET / HTTP/1.1\r\n\r\n", 500);
        conn.process(&mut echo, 700);
        assert_eq!(conn.next_deadline(), Some(30_700));
    }

    #[test]
    fn idle_clock_counts_output_progress_and_drops_unread_output() {
        let limits = Limits {
            idle_timeout_ms: 100,
            ..Limits::default()
        };
        let mut conn = Connection::new(limits, 0);
        conn.receive(b"GET / HTTP/1.1\r\n\r\n", 0);
        conn.process(&mut echo, 0);
        conn.consume_output(3);
        conn.process(&mut echo, 100); // progress seen: not idle
        assert!(!conn.should_close());
        assert_eq!(conn.next_deadline(), Some(200));
        let stats = conn.process(&mut echo, 200); // peer stopped reading
        assert_eq!(stats.timeouts, 1);
        assert!(conn.should_close() && conn.output().is_empty());
    }

    #[test]
    fn slow_requests_get_408_even_when_trickled() {
        let mut conn = Connection::new(Limits::default(), 0);
        let line = b"GET / HTTP/1.1\r\nX: ";
        let mut now = 5_000;
        conn.receive(&line[..1], now);
        assert_eq!(conn.process(&mut echo, now), Processed::default());
        assert_eq!(conn.next_deadline(), Some(15_000));
        let mut i = 1;
        let stats = loop {
            now += 900;
            conn.receive(&[*line.get(i).unwrap_or(&b'a')], now);
            i += 1;
            let stats = conn.process(&mut echo, now);
            if stats != Processed::default() {
                break stats;
            }
            assert_eq!(conn.next_deadline(), Some(15_000));
        };
        assert_eq!(now, 15_800);
        assert_eq!(
            (stats.timeouts, stats.responses_4xx, stats.protocol_errors),
            (1, 1, 0)
        );
        let out = drain(&mut conn);
        assert!(out.starts_with("HTTP/1.1 408 ") && out.contains("Connection: close"));
        assert!(conn.should_close());
    }

    #[test]
    fn request_clock_restarts_for_each_pipelined_request() {
        let mut conn = Connection::new(Limits::default(), 0);
        conn.receive(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HT", 0);
        conn.process(&mut echo, 9_000);
        assert_eq!(conn.next_deadline(), Some(19_000));
        conn.receive(b"TP/1.1\r\n\r\n", 18_000);
        assert_eq!(conn.process(&mut echo, 18_000).requests, 1);
        assert_eq!(conn.next_deadline(), Some(48_000));
    }

    #[test]
    fn peer_eof_answers_complete_requests_then_closes() {
        let mut conn = Connection::new(Limits::default(), 0);
        conn.receive(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n", 0);
        conn.peer_closed(0);
        assert_eq!(conn.process(&mut echo, 0).requests, 2);
        let out = drain(&mut conn);
        assert_eq!(out.matches("Connection: close").count(), 1);
        assert!(out.ends_with("Connection: close\r\n\r\nGET /2 "), "{out}");
        assert!(conn.should_close());

        let (_, _, mut conn) = serve1(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HT");
        conn.peer_closed(0);
        assert_eq!(conn.process(&mut echo, 0), Processed::default());
        assert!(conn.should_close() && conn.output().is_empty());

        let mut conn = Connection::new(Limits::default(), 0);
        conn.peer_closed(0);
        assert!(conn.should_close());
    }

    #[test]
    fn backpressure_pauses_pipelined_requests() {
        let limits = Limits {
            max_output_bytes: 10,
            ..Limits::default()
        };
        let mut conn = Connection::new(limits, 0);
        conn.receive(
            b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n",
            0,
        );
        assert_eq!(conn.process(&mut echo, 0).requests, 1);
        assert!(!conn.wants_input());
        assert_eq!(conn.process(&mut echo, 0).requests, 0);
        // No request clock while paused; the idle clock still runs.
        assert_eq!(conn.next_deadline(), Some(30_000));
        let mut out = drain(&mut conn);
        assert!(conn.wants_input());
        assert_eq!(conn.process(&mut echo, 1).requests, 1);
        out += &drain(&mut conn);
        assert_eq!(conn.process(&mut echo, 2).requests, 1);
        out += &drain(&mut conn);
        assert_eq!(out, ok("GET /1 ") + &ok("GET /2 ") + &ok("GET /3 "));
    }

    #[test]
    fn input_past_capacity_ends_the_stream() {
        let limits = Limits {
            max_head_bytes: 64,
            max_body_bytes: 16,
            ..Limits::default()
        };
        let mut conn = Connection::new(limits, 0);
        let room = conn.input_room();
        assert_eq!(room, 64 + 16 + MAX_CHUNK_LINE);
        let flood = b"GET / HTTP/1.1\r\n\r\n".repeat(room / 18 + 10);
        conn.receive(&flood, 0);
        assert_eq!((conn.input.len(), conn.input_room()), (room, 0));
        assert!(!conn.wants_input());
        assert_eq!(conn.process(&mut echo, 0).requests as usize, room / 18);
        drain(&mut conn);
        assert!(conn.should_close());
    }

    /// xorshift64*: deterministic randomness without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Checks that `out` is a sequence of well-framed responses (the last one may be cut short
    /// if the connection was aborted).
    fn assert_well_framed(mut out: &[u8], aborted: bool) {
        while !out.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            let n = match resp.parse(out) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) if aborted => return,
                other => panic!("{other:?}: {:?}", String::from_utf8_lossy(out)),
            };
            let length = resp
                .headers
                .iter()
                .find(|h| h.name == "Content-Length")
                .map_or(0, |h| {
                    core::str::from_utf8(h.value).unwrap().parse().unwrap()
                });
            assert!(aborted || n + length <= out.len());
            out = out.get(n + length..).unwrap_or_default();
        }
    }

    #[test]
    fn random_and_mutated_input_never_panics_and_stays_bounded() {
        let seeds: &[&[u8]] = &[
            b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /p HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;e\r\nabc\r\n0\r\nT: 1\r\n\r\n",
            b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        ];
        let alphabet = b"\r\n :;,0123456789abcdefHTP/.-\t\x00\xffGETchunkedContent-Length";
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut total = Processed::default();
        for case in 0..10_000 {
            let limits = if case % 2 == 0 {
                Limits::default()
            } else {
                Limits {
                    max_head_bytes: rng.below(128),
                    max_headers: rng.below(4),
                    max_body_bytes: rng.below(32),
                    idle_timeout_ms: rng.below(50) as u64,
                    request_timeout_ms: rng.below(50) as u64,
                    max_output_bytes: rng.below(512),
                }
            };
            // Several seeds back to back, then mutated; or plain noise.
            let mut input = Vec::new();
            if case % 5 == 4 {
                input.extend((0..rng.below(600)).map(|_| rng.next() as u8));
            } else {
                for _ in 0..1 + rng.below(4) {
                    input.extend_from_slice(seeds[rng.below(seeds.len())]);
                }
                for _ in 0..rng.below(6) {
                    let at = rng.below(input.len() + 1);
                    let byte = alphabet[rng.below(alphabet.len())];
                    match rng.below(4) {
                        0 => input.insert(at, byte),
                        1 if at < input.len() => drop(input.remove(at)),
                        2 if at < input.len() => input[at] = byte,
                        _ => input.truncate(at + rng.below(input.len() + 1 - at)),
                    }
                }
            }
            let max_body = limits.max_body_bytes;
            let mut handler = |req: &Request, _: u64| {
                assert!(req.body.len() <= max_body);
                if req.method == "HEAD" {
                    Response::new(200)
                } else {
                    Response::text(200, req.body.clone())
                }
            };
            let mut conn = Connection::new(limits, 0);
            let (mut now, mut rest, mut sent) = (0u64, &input[..], Vec::new());
            let cap = 64 + 16 + MAX_CHUNK_LINE + limits.max_head_bytes + limits.max_body_bytes;
            for _ in 0..10_000 {
                if conn.should_close() {
                    break;
                }
                let n = rng
                    .below(rest.len() + 1)
                    .min(conn.input_room() + rng.below(8));
                conn.receive(&rest[..n], now);
                rest = &rest[n..];
                if rest.is_empty() && rng.below(3) == 0 {
                    conn.peer_closed(now);
                }
                total += conn.process(&mut handler, now);
                assert!(conn.input.len() <= cap);
                let pending = conn.output().len();
                assert!(pending <= limits.max_output_bytes + 2 * (MAX_CHUNK_LINE + cap));
                let n = rng.below(pending + 1);
                sent.extend_from_slice(&conn.output()[..n]);
                conn.consume_output(n);
                now += rng.below(20) as u64;
                if let Some(deadline) = conn.next_deadline() {
                    assert!(deadline >= now.saturating_sub(20));
                }
            }
            sent.extend_from_slice(conn.output());
            assert_well_framed(&sent, conn.aborted);
        }
        // The generator must reach every outcome, or this test proves little.
        assert!(
            total.requests > 1000 && total.protocol_errors > 1000,
            "{total:?}"
        );
        assert!(
            total.timeouts > 100 && total.responses_5xx > 10,
            "{total:?}"
        );
    }

    #[test]
    fn random_splits_do_not_change_the_answers() {
        let input: &[u8] = b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            \r\nPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;e\r\nabc\r\n0\r\nT: 1\r\n\r\n\
            HEAD / HTTP/1.1\r\n\r\nGET /z HTTP/1.1\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n";
        let expected = serve1(input).0;
        assert_eq!(expected.matches("HTTP/1.1 200 OK").count(), 5);
        let mut rng = Rng(42);
        for _ in 0..2000 {
            let mut pieces = Vec::new();
            let mut rest = input;
            while !rest.is_empty() {
                let (piece, tail) = rest.split_at(1 + rng.below(rest.len().min(40)));
                pieces.push(piece);
                rest = tail;
            }
            assert_eq!(serve(Limits::default(), &pieces).0, expected);
        }
    }

    /// A body that would pass the memory limit is refused with 503 before it is buffered,
    /// its memory released; the same connection under the limit is served.
    #[test]
    fn memory_limit_refuses_a_body_with_503_and_releases_it() {
        let mut conn = Connection::new(Limits::default(), 0);
        conn.set_memory_limit(64 * 1024);
        conn.receive(b"PUT /x HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n", 0);
        let mut stats = conn.process(&mut echo, 0);
        let chunk = [b'a'; 8192];
        let mut fed = 0;
        while conn.wants_input() && fed < 1 << 20 {
            conn.receive(&chunk, 0);
            stats += conn.process(&mut echo, 0);
            assert!(
                conn.memory_bytes() <= 64 * 1024 + 1024,
                "{}",
                conn.memory_bytes()
            );
            fed += chunk.len();
        }
        assert!(fed < 128 * 1024, "stopped reading after {fed} bytes");
        let out = drain(&mut conn);
        assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
        assert!(out.contains("Retry-After: 1\r\n"), "{out}");
        assert!(out.contains("Connection: close\r\n"), "{out}");
        assert_eq!((stats.overloaded, stats.protocol_errors), (1, 0));
        assert_eq!(stats.responses_5xx, 1);
        assert!(conn.should_close());
        assert!(conn.memory_bytes() < 1024, "{}", conn.memory_bytes());

        // Under the limit the same request is served, and the memory falls back afterwards.
        let mut conn = Connection::new(Limits::default(), 0);
        conn.set_memory_limit(2 << 20);
        conn.receive(b"PUT /x HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n", 0);
        let mut stats = conn.process(&mut echo, 0);
        for _ in 0..128 {
            conn.receive(&chunk, 0);
            stats += conn.process(&mut echo, 0);
        }
        assert_eq!((stats.requests, stats.overloaded), (1, 0));
        assert!(drain(&mut conn).starts_with("HTTP/1.1 200 "));
        assert!(
            conn.memory_bytes() <= SHRINK_ABOVE,
            "{}",
            conn.memory_bytes()
        );
    }

    /// The limit applies to received bytes too (a head arriving into a full budget), and to
    /// chunked bodies as they are decoded.
    #[test]
    fn memory_limit_covers_input_and_chunked_bodies() {
        let mut conn = Connection::new(Limits::default(), 0);
        conn.set_memory_limit(16);
        conn.receive(b"GET /a-long-path HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        assert!(!conn.wants_input());
        let stats = conn.process(&mut echo, 0);
        assert_eq!((stats.requests, stats.overloaded), (0, 1));
        assert!(drain(&mut conn).starts_with("HTTP/1.1 503 "));

        let mut conn = Connection::new(Limits::default(), 0);
        conn.set_memory_limit(40 * 1024);
        conn.receive(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 0);
        let mut stats = conn.process(&mut echo, 0);
        let mut chunk = b"1000\r\n".to_vec();
        chunk.extend([b'z'; 4096]);
        chunk.extend_from_slice(b"\r\n");
        for _ in 0..32 {
            if !conn.wants_input() {
                break;
            }
            conn.receive(&chunk, 0);
            stats += conn.process(&mut echo, 0);
            assert!(conn.memory_bytes() <= 40 * 1024 + 1024);
        }
        assert_eq!((stats.requests, stats.overloaded), (0, 1));
        assert!(drain(&mut conn).starts_with("HTTP/1.1 503 "));
    }

    /// Without a limit (the default) nothing changes: a maximal body is served.
    #[test]
    fn no_memory_limit_by_default() {
        let mut body = b"PUT /x HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'q', 1 << 20));
        let (out, stats, _) = serve(Limits::default(), &[&body]);
        assert!(out.starts_with("HTTP/1.1 200 "), "{}", &out[..40]);
        assert_eq!((stats.requests, stats.overloaded), (1, 0));
    }
}
