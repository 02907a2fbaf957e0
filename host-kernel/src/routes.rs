//! Request routing: `/_tuk/...` goes to the kernel's own endpoints; `/<name>/...` will go to the
//! Wasm component `name` (components issue). Everything else is a 404 with a JSON reason.

use alloc::string::String;
use core::fmt::Write;

use tuk_http::{Handler, Request, Response};

use crate::arch::{interrupt_count, tsc_khz, WxAudit};
use crate::mem::heap_stats;
use crate::net::stats::{self, get};

/// Facts fixed at boot that the health report repeats.
pub struct BootFacts {
    /// Guest-only boot time: PVH entry to listening, microseconds.
    pub boot_us: u64,
    pub memory_total_bytes: u64,
    /// The page-table audit taken at boot (re-audits belong to the measurement loop).
    pub wx: WxAudit,
}

pub struct Router {
    facts: BootFacts,
}

impl Router {
    pub fn new(facts: BootFacts) -> Self {
        Router { facts }
    }

    fn health(&self, now_ms: u64) -> Response {
        let heap = heap_stats();
        let wx = &self.facts.wx;
        let mut body = String::with_capacity(640);
        // Writing into a String cannot fail.
        let _ = write!(
            body,
            concat!(
                "{{\"status\":\"ok\",\"kernel\":\"tuk-kernel\",\"version\":\"{}\",",
                "\"uptime_ms\":{},\"boot_us\":{},\"clock\":\"tsc\",\"tsc_khz\":{},",
                "\"interrupts\":{},",
                "\"memory\":{{\"total_bytes\":{},\"heap_bytes\":{},\"heap_used_bytes\":{}}},",
                "\"paging\":{{\"mapped_pages\":{},\"executable_pages\":{},\"writable_executable_pages\":{}}},",
                "\"http\":{{\"connections_accepted\":{},\"connections_active\":{},",
                "\"connections_refused_full\":{},\"requests\":{},\"responses_2xx\":{},",
                "\"responses_4xx\":{},\"responses_5xx\":{},\"protocol_errors\":{},\"timeouts\":{}}}}}"
            ),
            env!("CARGO_PKG_VERSION"),
            now_ms,
            self.facts.boot_us,
            tsc_khz(),
            interrupt_count(),
            self.facts.memory_total_bytes,
            heap.claimed_bytes,
            heap.allocated_bytes,
            wx.mapped_pages,
            wx.executable_pages,
            wx.writable_executable_pages,
            get(&stats::CONNECTIONS_ACCEPTED),
            get(&stats::CONNECTIONS_ACTIVE),
            get(&stats::CONNECTIONS_REFUSED_FULL),
            get(&stats::REQUESTS),
            get(&stats::RESPONSES_2XX),
            get(&stats::RESPONSES_4XX),
            get(&stats::RESPONSES_5XX),
            get(&stats::PROTOCOL_ERRORS),
            get(&stats::TIMEOUTS),
        );
        Response::json(200, body)
    }

    fn admin(&self, req: &Request, endpoint: &str, now_ms: u64) -> Response {
        match endpoint {
            "health" => match req.method.as_str() {
                "GET" | "HEAD" => self.health(now_ms),
                _ => Response::error(405, "use GET for /_tuk/health")
                    .with_header("Allow", "GET, HEAD"),
            },
            _ => Response::error(404, "unknown kernel endpoint; try GET /_tuk/health"),
        }
    }
}

impl Handler for Router {
    fn handle(&mut self, req: &Request, now_ms: u64) -> Response {
        if let Some(endpoint) = req.path.strip_prefix("/_tuk/") {
            return self.admin(req, endpoint, now_ms);
        }
        Response::error(
            404,
            "no component serves this path; the kernel's endpoints are under /_tuk/",
        )
    }
}
