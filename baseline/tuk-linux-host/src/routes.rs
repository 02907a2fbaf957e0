//! Request routing, as on tuk (host-kernel/src/routes.rs): `/_tuk/...` goes to the host's own
//! endpoints; `/<name>/...` goes to the Wasm component `name`, which sees the path below its
//! prefix (`/<name>` alone is `/`). Anything else is a 404 with a JSON reason.
//!
//! The baseline has `/_tuk/health` and `/_tuk/components`; tuk's measurement endpoints
//! (`/_tuk/eventlog`, `/_tuk/status`, publishing with `PUT /_tuk/components/<name>`) have no
//! counterpart here and answer 404 saying so.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use tuk_http::{Handler, Processed, Request, Response};

use crate::runtime::Runtime;

/// HTTP counters (the kernel's `net::stats`), shared by the connection threads.
#[derive(Default)]
pub struct HttpStats {
    pub connections_accepted: AtomicU64,
    pub connections_active: AtomicU64,
    pub connections_refused_full: AtomicU64,
    pub requests: AtomicU64,
    pub responses_2xx: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub responses_5xx: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub timeouts: AtomicU64,
}

impl HttpStats {
    pub fn add(&self, p: &Processed) {
        let add = |c: &AtomicU64, n: u32| {
            c.fetch_add(u64::from(n), Ordering::Relaxed);
        };
        add(&self.requests, p.requests);
        add(&self.protocol_errors, p.protocol_errors);
        add(&self.timeouts, p.timeouts);
        add(&self.responses_2xx, p.responses_2xx);
        add(&self.responses_4xx, p.responses_4xx);
        add(&self.responses_5xx, p.responses_5xx);
    }
}

/// Facts fixed at boot that the health report repeats.
pub struct BootFacts {
    /// Guest boot time: kernel clock (CLOCK_BOOTTIME) when the server listened, microseconds.
    pub boot_us: u64,
    /// The Linux kernel release (`uname -r`).
    pub kernel_release: String,
}

pub struct Router {
    facts: BootFacts,
    pub runtime: Runtime,
    stats: &'static HttpStats,
}

/// Appends `s` as a JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `MemTotal` and `MemAvailable` from /proc/meminfo, in bytes.
fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

impl Router {
    pub fn new(facts: BootFacts, runtime: Runtime, stats: &'static HttpStats) -> Self {
        Router {
            facts,
            runtime,
            stats,
        }
    }

    fn components(&self) -> Response {
        let mut body = String::from("{\"components\":[");
        for (i, d) in self.runtime.components().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str("{\"name\":");
            json_str(&mut body, &d.name);
            let _ = write!(
                body,
                concat!(
                    ",\"state\":\"{}\",\"code_bytes\":{},\"memory_limit_bytes\":{},\"deadline_ms\":{},",
                    "\"requests\":{},\"traps\":{},\"deadline_exceeded\":{},\"instantiations\":{}"
                ),
                if d.broken.is_some() {
                    "unavailable"
                } else {
                    "serving"
                },
                d.code_bytes,
                d.limits.memory_bytes,
                d.limits.deadline_ms,
                d.stats.requests,
                d.stats.traps,
                d.stats.deadline_exceeded,
                d.stats.instantiations,
            );
            if let Some(reason) = &d.broken {
                body.push_str(",\"reason\":");
                json_str(&mut body, reason);
            }
            body.push('}');
        }
        body.push_str("]}");
        Response::json(200, body)
    }

    fn health(&self, now_ms: u64) -> Response {
        let (total, available) = meminfo();
        let s = self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut body = String::with_capacity(512);
        body.push_str("{\"status\":\"ok\",\"kernel\":\"linux\",\"kernel_release\":");
        json_str(&mut body, &self.facts.kernel_release);
        let _ = write!(
            body,
            concat!(
                ",\"host\":\"tuk-linux-host\",\"version\":\"{}\",",
                "\"uptime_ms\":{},\"boot_us\":{},\"clock\":\"boottime\",\"components\":{},",
                "\"memory\":{{\"total_bytes\":{},\"available_bytes\":{}}},",
                "\"http\":{{\"connections_accepted\":{},\"connections_active\":{},",
                "\"connections_refused_full\":{},\"requests\":{},\"responses_2xx\":{},",
                "\"responses_4xx\":{},\"responses_5xx\":{},\"protocol_errors\":{},\"timeouts\":{}}}}}"
            ),
            env!("CARGO_PKG_VERSION"),
            now_ms,
            self.facts.boot_us,
            self.runtime.components().count(),
            total,
            available,
            get(&s.connections_accepted),
            get(&s.connections_active),
            get(&s.connections_refused_full),
            get(&s.requests),
            get(&s.responses_2xx),
            get(&s.responses_4xx),
            get(&s.responses_5xx),
            get(&s.protocol_errors),
            get(&s.timeouts),
        );
        Response::json(200, body)
    }

    fn admin(&mut self, req: &Request, endpoint: &str, now_ms: u64) -> Response {
        match endpoint {
            "health" => match req.method.as_str() {
                "GET" | "HEAD" => self.health(now_ms),
                _ => Response::error(405, "use GET for /_tuk/health")
                    .with_header("Allow", "GET, HEAD"),
            },
            "components" => match req.method.as_str() {
                "GET" | "HEAD" => self.components(),
                _ => Response::error(405, "GET lists components")
                    .with_header("Allow", "GET, HEAD"),
            },
            e if e == "eventlog" || e == "status" || e.starts_with("components/") => {
                Response::error(
                    404,
                    "not in the Linux baseline: it has no vTPM, no signed publishing and no integrity monitor",
                )
            }
            _ => Response::error(
                404,
                "unknown kernel endpoint; try GET /_tuk/health or /_tuk/components",
            ),
        }
    }
}

impl Handler for Router {
    fn handle(&mut self, req: &Request, now_ms: u64) -> Response {
        if let Some(endpoint) = req.path.strip_prefix("/_tuk/") {
            return self.admin(req, endpoint, now_ms);
        }
        let rest = req.path.strip_prefix('/').unwrap_or(&req.path);
        let (name, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        match self.runtime.dispatch(name, path, req) {
            Some(resp) => resp,
            None => Response::error(
                404,
                "no component serves this path; see GET /_tuk/components for what is deployed",
            ),
        }
    }
}
