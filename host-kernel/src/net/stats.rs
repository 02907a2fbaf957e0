//! HTTP counters, shared by the server loop (which updates them) and the health handler.
//! Single CPU, no interrupt-context access: relaxed atomics are only a safe global cell.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub static CONNECTIONS_ACCEPTED: AtomicU64 = AtomicU64::new(0);
pub static CONNECTIONS_ACTIVE: AtomicU64 = AtomicU64::new(0);
pub static CONNECTIONS_REFUSED_FULL: AtomicU64 = AtomicU64::new(0);
pub static REQUESTS: AtomicU64 = AtomicU64::new(0);
pub static RESPONSES_2XX: AtomicU64 = AtomicU64::new(0);
pub static RESPONSES_4XX: AtomicU64 = AtomicU64::new(0);
pub static RESPONSES_5XX: AtomicU64 = AtomicU64::new(0);
pub static PROTOCOL_ERRORS: AtomicU64 = AtomicU64::new(0);
pub static TIMEOUTS: AtomicU64 = AtomicU64::new(0);

pub fn add(counter: &AtomicU64, n: u32) {
    if n != 0 {
        counter.fetch_add(u64::from(n), Relaxed);
    }
}

pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Relaxed)
}

/// One listener's buffer budget (net/server.rs): the heap bytes its connections' HTTP buffers
/// hold now, the budget, and the requests refused with 503 because of it.
pub struct Buffers {
    pub bytes: AtomicU64,
    pub budget: AtomicU64,
    pub refused: AtomicU64,
}

impl Buffers {
    const fn new() -> Self {
        Buffers {
            bytes: AtomicU64::new(0),
            budget: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }
}

pub static SERVICE_BUFFERS: Buffers = Buffers::new();
pub static ADMIN_BUFFERS: Buffers = Buffers::new();
