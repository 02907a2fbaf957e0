//! The HTTP/1.1 server: a pool of smoltcp TCP sockets, each driving one `tuk_http::Connection`.
//!
//! smoltcp has no accept backlog: a SYN is accepted only by a socket already in LISTEN. The
//! server keeps `listeners` sockets listening at all times and replaces each one as soon as it
//! is taken by a connection, up to `max_connections` served at once (further SYNs get a RST,
//! which a client sees as a refused connection, never as a hang).
//!
//! The kernel runs one server per listener (service and admin, main.rs), each with its own
//! pool: connections on one never count against the other's `max_connections`.
//!
//! All connections of a listener share one budget of buffered bytes (`http.buffer_budget`,
//! `admin.buffer_budget`): before a connection's buffers grow (head, body, pipelined input),
//! the engine checks that the listener's total stays within the budget, and refuses the
//! request with `503`, `Retry-After: 1` and `Connection: close` otherwise, releasing its
//! buffers at once (`tuk_http::Connection::set_memory_limit`). Every connection may still
//! hold [`FLOOR`] bytes whatever the others hold, so a small request (a health probe, a GET)
//! is served while the budget is taken by bodies. The listener's buffers thus hold at most
//! `budget + max_connections x FLOOR` bytes (plus one handler response per connection), a
//! bound independent of what peers send. Refusing, rather than leaving the data in TCP
//! (backpressure), frees the memory at once instead of after `request_timeout`, and tells the
//! client to retry.
//!
//! Every connection is bounded in time: the protocol engine enforces request and idle timeouts
//! (idle includes a peer that stops reading our output); the server adds a linger limit after
//! close and smoltcp a retransmission timeout. Nothing a peer does can keep a socket forever.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Duration;
use tuk_http::{Connection, Handler, Limits};

use super::stats;

const RX_BUFFER: usize = 8 * 1024;
const TX_BUFFER: usize = 16 * 1024;
/// After we close, a socket that has not finished the FIN handshake in this time is aborted.
const CLOSE_LINGER_MS: u64 = 5_000;
/// TCP-level timeout: unacknowledged data for this long aborts the connection.
const TCP_TIMEOUT_MS: u64 = 30_000;
/// What a connection may buffer regardless of the budget: a maximal head read in socket-sized
/// pieces (the default `max_head_bytes` is 8 KiB), and a small response.
pub const FLOOR: usize = 16 * 1024;

struct Slot {
    handle: SocketHandle,
    conn: Option<Connection>,
    peer_eof: bool,
    /// Set when the server closed its side (or began to).
    closing_since: Option<u64>,
}

pub struct HttpServer {
    port: u16,
    limits: Limits,
    listeners: usize,
    max_connections: usize,
    slots: Vec<Slot>,
    accepting: bool,
    /// The budget for all connections' buffers together, and where the counts go.
    budget: usize,
    buffers: &'static stats::Buffers,
}

impl HttpServer {
    /// A server without a buffer budget until [`with_buffer_budget`](Self::with_buffer_budget).
    pub fn new(port: u16, limits: Limits, listeners: usize, max_connections: usize) -> Self {
        HttpServer {
            port,
            limits,
            listeners,
            max_connections,
            slots: Vec::new(),
            accepting: true,
            budget: usize::MAX,
            buffers: &stats::SERVICE_BUFFERS,
        }
    }

    /// Shares `budget` bytes of HTTP buffers among all connections (module docs); the bytes
    /// held, the budget and the refusals are published in `buffers` (health).
    pub fn with_buffer_budget(mut self, budget: usize, buffers: &'static stats::Buffers) -> Self {
        self.budget = budget;
        self.buffers = buffers;
        buffers
            .budget
            .store(budget as u64, core::sync::atomic::Ordering::Relaxed);
        self
    }

    fn listen(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
        );
        socket.set_nagle_enabled(false);
        socket.set_timeout(Some(Duration::from_millis(TCP_TIMEOUT_MS)));
        if let Err(e) = socket.listen(self.port) {
            log::error!("cannot listen on port {}: {e}", self.port);
            return false;
        }
        let handle = sockets.add(socket);
        self.slots.push(Slot {
            handle,
            conn: None,
            peer_eof: false,
            closing_since: None,
        });
        true
    }

    /// Tops the pool of listening sockets up. Call once at start and after every poll.
    pub fn replenish(&mut self, sockets: &mut SocketSet<'static>) {
        if !self.accepting {
            return;
        }
        let listening = self
            .slots
            .iter()
            .filter(|s| is_listening(sockets, s.handle))
            .count();
        let serving = self.slots.len() - listening;
        let room = (self.max_connections + self.listeners).saturating_sub(self.slots.len());
        let want = self.listeners.saturating_sub(listening).min(room);
        if want == 0 && listening == 0 && serving >= self.max_connections {
            stats::add(&stats::CONNECTIONS_REFUSED_FULL, 1);
        }
        for _ in 0..want {
            if !self.listen(sockets) {
                break;
            }
        }
    }

    /// Moves data between sockets and connections, runs the handler for complete requests and
    /// retires finished sockets. Returns true if anything happened (the caller then polls the
    /// interface again to transmit without waiting).
    pub fn poll(
        &mut self,
        sockets: &mut SocketSet<'static>,
        handler: &mut dyn Handler,
        now_ms: u64,
    ) -> bool {
        let mut progress = false;
        let mut held: usize = self
            .slots
            .iter()
            .filter_map(|s| s.conn.as_ref())
            .map(Connection::memory_bytes)
            .sum();
        let mut i = 0;
        while i < self.slots.len() {
            let slot = &mut self.slots[i];
            let socket = sockets.get_mut::<tcp::Socket>(slot.handle);
            match socket.state() {
                State::Listen | State::SynReceived => {
                    i += 1;
                    continue;
                }
                State::Closed | State::TimeWait => {
                    held =
                        held.saturating_sub(slot.conn.as_ref().map_or(0, Connection::memory_bytes));
                    sockets.remove(slot.handle);
                    self.slots.swap_remove(i);
                    progress = true;
                    continue;
                }
                _ => {}
            }
            if slot.conn.is_none() && slot.closing_since.is_none() {
                slot.conn = Some(Connection::new(self.limits, now_ms));
                stats::add(&stats::CONNECTIONS_ACCEPTED, 1);
                progress = true;
            }
            let own = slot.conn.as_ref().map_or(0, Connection::memory_bytes);
            let others = held.saturating_sub(own);
            if let Some(conn) = slot.conn.as_mut() {
                conn.set_memory_limit(self.budget.saturating_sub(others).max(FLOOR));
            }
            progress |= serve(slot, socket, handler, self.buffers, now_ms);
            held = others + slot.conn.as_ref().map_or(0, Connection::memory_bytes);
            if let Some(since) = slot.closing_since {
                if now_ms.saturating_sub(since) > CLOSE_LINGER_MS {
                    socket.abort();
                }
            }
            i += 1;
        }
        self.buffers
            .bytes
            .store(held as u64, core::sync::atomic::Ordering::Relaxed);
        progress
    }

    /// Connections being served (for `stats::CONNECTIONS_ACTIVE`, summed over the listeners).
    pub fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.conn.is_some()).count()
    }

    /// The earliest time (ms) at which `poll` must run again for a timeout.
    pub fn next_deadline(&self) -> Option<u64> {
        self.slots
            .iter()
            .flat_map(|s| {
                let conn = s.conn.as_ref().and_then(Connection::next_deadline);
                let linger = s.closing_since.map(|t| t + CLOSE_LINGER_MS + 1);
                [conn, linger]
            })
            .flatten()
            .min()
    }

    /// Stops accepting: listening sockets close, idle connections get a FIN; requests in
    /// flight finish (see `is_drained`).
    pub fn begin_shutdown(&mut self, sockets: &mut SocketSet<'static>) {
        self.accepting = false;
        for slot in &mut self.slots {
            let socket = sockets.get_mut::<tcp::Socket>(slot.handle);
            match &slot.conn {
                None => socket.abort(),
                Some(conn) if conn.output().is_empty() => {
                    socket.close();
                    slot.conn = None;
                    slot.closing_since.get_or_insert(0);
                }
                Some(_) => {}
            }
        }
    }

    /// True when every response has been handed to TCP and fully acknowledged by the peers
    /// (idle keep-alive connections need not close for that).
    pub fn is_drained(&self, sockets: &SocketSet<'static>) -> bool {
        self.slots.iter().all(|s| {
            s.conn.as_ref().is_none_or(|c| c.output().is_empty())
                && sockets.get::<tcp::Socket>(s.handle).send_queue() == 0
        })
    }
}

fn is_listening(sockets: &SocketSet<'static>, handle: SocketHandle) -> bool {
    matches!(
        sockets.get::<tcp::Socket>(handle).state(),
        State::Listen | State::SynReceived
    )
}

/// One connection's turn: read, process, write, close. True if anything moved.
fn serve(
    slot: &mut Slot,
    socket: &mut tcp::Socket<'_>,
    handler: &mut dyn Handler,
    buffers: &stats::Buffers,
    now_ms: u64,
) -> bool {
    let Some(conn) = slot.conn.as_mut() else {
        return false;
    };
    let mut progress = false;
    while socket.can_recv() && conn.wants_input() {
        // Take only what the connection will buffer; the rest waits in the socket (TCP flow
        // control pushes back on the peer).
        let read = socket.recv(|buf| {
            let n = buf.len().min(conn.input_room());
            conn.receive(&buf[..n], now_ms);
            (n, n)
        });
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => progress = true,
        }
    }
    if !slot.peer_eof && !socket.may_recv() {
        slot.peer_eof = true;
        conn.peer_closed(now_ms);
        progress = true;
    }

    let done = conn.process(handler, now_ms);
    stats::add(&stats::REQUESTS, done.requests);
    stats::add(&stats::PROTOCOL_ERRORS, done.protocol_errors);
    stats::add(&stats::TIMEOUTS, done.timeouts);
    stats::add(&buffers.refused, done.overloaded);
    stats::add(&stats::RESPONSES_2XX, done.responses_2xx);
    stats::add(&stats::RESPONSES_4XX, done.responses_4xx);
    stats::add(&stats::RESPONSES_5XX, done.responses_5xx);
    progress |= done.requests + done.protocol_errors + done.timeouts + done.overloaded > 0;

    let mut sent_any = false;
    while !conn.output().is_empty() && socket.can_send() {
        match socket.send_slice(conn.output()) {
            Ok(n) if n > 0 => {
                conn.consume_output(n);
                sent_any = true;
            }
            _ => break,
        }
    }
    progress |= sent_any;
    if conn.should_close() {
        socket.close();
        slot.conn = None;
        slot.closing_since = Some(now_ms);
        progress = true;
    }
    progress
}
