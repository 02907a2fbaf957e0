//! Request routing, by the listener a connection came in on ([`Plane`]), never by anything the
//! client says (Host header, path tricks):
//! - the SERVICE listener (`port=`): `/<name>/...` goes to the Wasm component `name`, which sees
//!   the path below its prefix (`/<name>` alone is `/`); of the kernel's endpoints only the
//!   read-only `GET /_tuk/health`, `/_tuk/components` and `/_tuk/attestation/identity`; any
//!   other `/_tuk/*` is a 403 naming the admin listener;
//! - the ADMIN listener (`admin.port=`): every `/_tuk/*` endpoint (status, event log, quotes,
//!   credential activation, publishing); component paths are 404 there.
//!
//! Quotes and credential activation (TPM work) share a token bucket ([`RateLimit`]): beyond it
//! they answer 429 with `Retry-After`, so no client can keep the event loop in the TPM.
//! Anything else is a 404 with a JSON reason.

use alloc::format;
use alloc::string::String;
use core::fmt::Write;

use tuk_http::{Request, Response};

use crate::arch::{hypervisor, interrupt_count, random_source, tsc_khz, Hypervisor, WxAudit};
use crate::attestation::Identity;
use crate::deploy::{Deployer, Reset};
use crate::integrity::Monitor;
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

/// The health document's `platform` object (docs/contracts.md): the hypervisor found at boot
/// and, on Xen, what its CPUID leaves say.
fn platform_json(h: Hypervisor) -> String {
    match h {
        Hypervisor::Xen(x) => {
            let domid = x.domid.map_or(String::from("null"), |d| format!("{d}"));
            let (tsc_khz, emulated) = x.time.map_or((0, false), |t| (t.tsc_khz, t.tsc_emulated));
            format!(
                "{{\"hypervisor\":\"xen\",\"xen_version\":\"{}.{}\",\"xen_domid\":{domid},\
                 \"xen_tsc_khz\":{tsc_khz},\"xen_tsc_emulated\":{emulated}}}",
                x.major, x.minor
            )
        }
        other => format!("{{\"hypervisor\":\"{}\"}}", other.name()),
    }
}

/// The listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    /// `port=`: components and the read-only public endpoints.
    Service,
    /// `admin.port=`: every kernel endpoint.
    Admin,
}

/// The kernel endpoints the service listener serves too (read-only, no TPM work).
const SERVICE_ENDPOINTS: [&str; 3] = ["health", "components", "attestation/identity"];

/// A token bucket: `per_s` tokens a second, at most `burst` saved up.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub per_s: u32,
    pub burst: u32,
    /// Tokens in thousandths, so slow rates refill smoothly.
    milli_tokens: u64,
    last_ms: u64,
}

impl RateLimit {
    pub fn new(per_s: u32, burst: u32) -> Self {
        let burst = burst.max(1);
        RateLimit {
            per_s,
            burst,
            milli_tokens: u64::from(burst) * 1000,
            last_ms: 0,
        }
    }

    /// Takes a token, or says in how many seconds (rounded up, at least 1) one will be there.
    pub fn take(&mut self, now_ms: u64) -> Result<(), u64> {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let cap = u64::from(self.burst) * 1000;
        self.milli_tokens = (self.milli_tokens + elapsed * u64::from(self.per_s)).min(cap);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            return Ok(());
        }
        if self.per_s == 0 {
            return Err(60);
        }
        let missing = 1000 - self.milli_tokens;
        Err((missing.div_ceil(u64::from(self.per_s)).div_ceil(1000)).max(1))
    }
}

pub struct Router {
    facts: BootFacts,
    deployer: Deployer,
    monitor: Monitor,
    /// The attestation identity, or why there is none.
    identity: Result<Identity, String>,
    /// Quotes and credential activations (TPM work) together.
    tpm_limit: RateLimit,
    /// Requests refused by `tpm_limit` (health: `http.rate_limited`).
    rate_limited: u64,
    /// The admin listener's guest port (named in the service listener's 403s).
    admin_port: u16,
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

impl Router {
    pub fn new(
        facts: BootFacts,
        deployer: Deployer,
        monitor: Monitor,
        identity: Result<Identity, String>,
        tpm_limit: RateLimit,
        admin_port: u16,
    ) -> Self {
        Router {
            facts,
            deployer,
            monitor,
            identity,
            tpm_limit,
            rate_limited: 0,
            admin_port,
        }
    }

    /// The run-time report a quote is bound to (docs/attestation.md).
    fn report(&self, now_ms: u64) -> serde_json::Value {
        use serde_json::json;
        let m = &self.monitor;
        let instances: alloc::vec::Vec<_> = self
            .deployer
            .runtime
            .components()
            .map(|d| d.integrity.to_json(Some(&d.instance.name)))
            .collect();
        json!({
            "uptime_ms": now_ms,
            "interval_ms": m.settings.interval_ms,
            "policy": m.settings.policy.name(),
            "kernel": m.kernel.to_json(None),
            "instances": instances,
        })
    }

    /// `/_tuk/attestation[/identity|/activate]`.
    fn attestation(&mut self, req: &Request, which: &str, now_ms: u64) -> Response {
        let identity = match &self.identity {
            Ok(i) => i,
            Err(e) => return Response::error(503, e),
        };
        if matches!(
            (which, req.method.as_str()),
            ("activate", "POST") | ("", "GET")
        ) {
            if let Err(retry_s) = self.tpm_limit.take(now_ms) {
                self.rate_limited += 1;
                return Response::error(
                    429,
                    &format!(
                        "too many quotes/credential activations (at most {}/s, burst {}); retry in {retry_s} s",
                        self.tpm_limit.per_s, self.tpm_limit.burst
                    ),
                )
                .with_header("Retry-After", &format!("{retry_s}"));
            }
        }
        let result = match (which, req.method.as_str()) {
            ("identity", "GET") => Ok(identity.identity_json()),
            ("activate", "POST") => identity.activate(&mut self.deployer.measurements, &req.body),
            ("", "GET") => {
                let report = self.report(now_ms);
                identity.quote(
                    &mut self.deployer.measurements,
                    req.query.as_deref(),
                    report,
                )
            }
            ("identity" | "", _) => {
                return Response::error(405, "use GET").with_header("Allow", "GET");
            }
            ("activate", _) => {
                return Response::error(405, "use POST").with_header("Allow", "POST");
            }
            _ => return Response::error(404, "unknown attestation endpoint"),
        };
        match result {
            Ok(v) => Response::json(
                200,
                serde_json::to_string(&v).unwrap_or_else(|_| String::from("{}")),
            ),
            Err((status, reason)) => Response::error(status, &reason),
        }
    }

    /// Runs an integrity round if one is due (called from the event loop).
    pub fn integrity_tick(&mut self, now_us: u64) {
        self.monitor.tick(&mut self.deployer, now_us);
    }

    /// When the next integrity round is due, in microseconds of uptime.
    pub fn next_integrity_due_us(&self) -> Option<u64> {
        self.monitor.next_due_us()
    }

    /// `GET /_tuk/status`: the integrity monitor's view of the kernel and every instance
    /// (docs/contracts.md). Addresses are the guest's (identity-mapped: physical = virtual).
    fn status(&self) -> Response {
        use serde_json::json;
        use tuk_measure::hex;
        let m = &self.monitor;
        let text = crate::arch::kernel_text();
        let rodata = crate::arch::kernel_rodata();
        let instances: alloc::vec::Vec<_> = self
            .deployer
            .runtime
            .components()
            .map(|d| {
                let r = &d.integrity;
                let inv = &d.invariants;
                let mut v = r.to_json(Some(&d.instance.name));
                let extra = json!({
                    "reason": r.untrusted_reason(),
                    "last_violation": r.last_violation,
                    "code": {
                        "addr": d.image.addr,
                        "len": d.image.len,
                        "sha256": hex(&d.image.sha256),
                        "matches_artifact": d.image.matches_artifact,
                    },
                    "memory": d.memory().map(|(base, bytes)| json!({
                        "base": base,
                        "bytes": bytes,
                        "limit_bytes": d.instance.limits.memory_bytes as u64,
                        "declared_min_bytes": inv.memory.as_ref().map(|m| m.min_bytes),
                        "declared_max_bytes": inv.memory.as_ref().and_then(|m| m.max_bytes),
                    })),
                    "tables": inv.tables.iter().map(|t| json!({"module": t.module, "index": t.index, "min": t.min, "max": t.max})).collect::<alloc::vec::Vec<_>>(),
                    "immutable": inv.immutable.iter().map(|r| json!({"name": r.name, "offset": r.offset, "len": r.len, "sha256": hex(&r.sha256)})).collect::<alloc::vec::Vec<_>>(),
                    "stack": inv.stack.as_ref().map(|s| json!({"global": s.global, "initial": s.initial, "low": s.low})),
                    "notes": inv.notes,
                });
                if let (serde_json::Value::Object(map), serde_json::Value::Object(more)) =
                    (&mut v, extra)
                {
                    map.extend(more);
                }
                v
            })
            .collect();
        let mut kernel = m.kernel.to_json(None);
        if let serde_json::Value::Object(map) = &mut kernel {
            map.insert("reason".into(), json!(m.kernel.untrusted_reason()));
            map.insert("text".into(), json!({"addr": text.as_ptr() as u64, "len": text.len(), "sha256": hex(m.kernel_text_sha256())}));
            map.insert("rodata".into(), json!({"addr": rodata.as_ptr() as u64, "len": rodata.len(), "sha256": hex(m.kernel_rodata_sha256())}));
            map.insert(
                "page_tables".into(),
                json!({"root": crate::arch::page_table_root()}),
            );
            if let serde_json::Value::Object(more) = m.kernel_status() {
                map.extend(more);
            }
        }
        let body = json!({
            "interval_ms": m.settings.interval_ms,
            "policy": m.settings.policy.name(),
            "rounds": m.stats.rounds,
            "last_round_us": m.stats.last_us,
            "max_round_us": m.stats.max_us,
            "total_round_us": m.stats.total_us,
            "last_round_bytes": m.stats.last_bytes,
            "last_round_parts_us": {
                "kernel": m.stats.last_kernel_us,
                "wx_audit": m.stats.last_wx_us,
                "components": m.stats.last_components_us,
            },
            "hash_rates": {
                "sha256_mb_s": m.hash_rates.sha256_mb_s,
                "fingerprint_mb_s": m.hash_rates.fingerprint_mb_s,
            },
            "kernel": kernel,
            "instances": instances,
        });
        Response::json(
            200,
            serde_json::to_string(&body).unwrap_or_else(|_| String::from("{}")),
        )
    }

    /// Clean shutdown: the TPM saves its state (see `Measurements::shutdown`).
    pub fn shutdown(&mut self) {
        self.deployer.measurements.shutdown();
    }

    fn components(&self) -> Response {
        let mut body = String::from("{\"components\":[");
        for (i, d) in self.deployer.runtime.components().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str("{\"name\":");
            json_str(&mut body, &d.instance.name);
            let _ = write!(
                body,
                concat!(
                    ",\"state\":\"{}\",\"code_bytes\":{},\"memory_limit_bytes\":{},\"deadline_ms\":{},",
                    "\"requests\":{},\"traps\":{},\"deadline_exceeded\":{},\"instantiations\":{}"
                ),
                if d.instance.broken.is_some() {
                    "unavailable"
                } else if d.integrity.untrusted_reason().is_some() {
                    "untrusted"
                } else {
                    "serving"
                },
                d.instance.code_bytes,
                d.instance.limits.memory_bytes,
                d.instance.limits.deadline_ms,
                d.instance.stats.requests,
                d.instance.stats.traps,
                d.instance.stats.deadline_exceeded,
                d.instance.stats.instantiations,
            );
            if let Some(reason) = &d.instance.broken {
                body.push_str(",\"reason\":");
                json_str(&mut body, reason);
            }
            body.push('}');
        }
        body.push_str("]}");
        Response::json(200, body)
    }

    fn health(&self, now_ms: u64) -> Response {
        let heap = heap_stats();
        let wx = &self.facts.wx;
        let tpm = self.deployer.measurements.state_name();
        // "ok" only while every measured part works; a failed TPM means no further extends
        // and no quotes, so the instance is "degraded" (docs/contracts.md, the health document).
        let status = if tpm == "failed" { "degraded" } else { "ok" };
        let buffers = |b: &stats::Buffers| {
            format!(
                "{{\"bytes\":{},\"budget_bytes\":{},\"refused\":{}}}",
                get(&b.bytes),
                get(&b.budget),
                get(&b.refused)
            )
        };
        let mut body = String::with_capacity(768);
        // Writing into a String cannot fail.
        let _ = write!(
            body,
            concat!(
                "{{\"status\":\"{}\",\"kernel\":\"tuk-kernel\",\"version\":\"{}\",",
                "\"uptime_ms\":{},\"boot_us\":{},\"clock\":\"tsc\",\"tsc_khz\":{},",
                "\"interrupts\":{},\"random\":\"{}\",\"components\":{},",
                "\"tpm\":\"{}\",\"eventlog_records\":{},\"trust\":\"{}\",",
                "\"integrity\":{{\"kernel\":\"{}\",\"interval_ms\":{},\"policy\":\"{}\",\"rounds\":{}}},",
                "\"platform\":{},",
                "\"memory\":{{\"total_bytes\":{},\"heap_bytes\":{},\"heap_used_bytes\":{}}},",
                "\"paging\":{{\"mapped_pages\":{},\"executable_pages\":{},\"writable_executable_pages\":{}}},",
                "\"http\":{{\"connections_accepted\":{},\"connections_active\":{},",
                "\"connections_refused_full\":{},\"requests\":{},\"responses_2xx\":{},",
                "\"responses_4xx\":{},\"responses_5xx\":{},\"protocol_errors\":{},\"timeouts\":{},\"rate_limited\":{},",
                "\"buffers\":{{\"service\":{},\"admin\":{}}}}}}}"
            ),
            status,
            env!("CARGO_PKG_VERSION"),
            now_ms,
            self.facts.boot_us,
            tsc_khz(),
            interrupt_count(),
            random_source(),
            self.deployer.runtime.components().count(),
            tpm,
            self.deployer.measurements.record_count(),
            self.deployer.mode_name(),
            self.monitor.kernel.state(),
            self.monitor.settings.interval_ms,
            self.monitor.settings.policy.name(),
            self.monitor.stats.rounds,
            platform_json(hypervisor()),
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
            self.rate_limited,
            buffers(&stats::SERVICE_BUFFERS),
            buffers(&stats::ADMIN_BUFFERS),
        );
        Response::json(200, body)
    }

    /// `PUT /_tuk/components/<name>` with a signed bundle: verified, measured, deployed; a
    /// newer version replaces the running one without touching other components.
    fn publish(&mut self, req: &Request, name: &str) -> Response {
        if req.method != "PUT" {
            return Response::error(405, "publish with PUT and a signed bundle as the body")
                .with_header("Allow", "PUT");
        }
        if !tuk_bootpack::valid_name(name) {
            return Response::error(
                400,
                "invalid component name: use 1-63 characters from [a-z0-9-]",
            );
        }
        let reset = match Reset::from_query(req.query.as_deref()) {
            Ok(r) => r,
            Err(e) => return Response::error(400, &e),
        };
        match self.deployer.deploy(name, &req.body, &[], true, reset) {
            Ok(summary) => {
                log::info!("published {summary}");
                let mut body = String::from("{\"published\":");
                json_str(&mut body, &summary);
                body.push('}');
                Response::json(201, body)
            }
            Err(r) => {
                log::warn!("publish of {name} refused: {}", r.reason);
                Response::error(r.status, &r.reason)
            }
        }
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
                _ => Response::error(
                    405,
                    "GET lists components; PUT /_tuk/components/<name> publishes one",
                )
                .with_header("Allow", "GET, HEAD"),
            },
            e if e.starts_with("components/") => {
                let name = &e["components/".len()..];
                self.publish(req, name)
            }
            "eventlog" => Response::json(200, self.deployer.measurements.log_json()),
            "attestation" => self.attestation(req, "", now_ms),
            e if e.starts_with("attestation/") => {
                self.attestation(req, &e["attestation/".len()..], now_ms)
            }
            "status" => match req.method.as_str() {
                "GET" | "HEAD" => self.status(),
                _ => Response::error(405, "use GET for /_tuk/status")
                    .with_header("Allow", "GET, HEAD"),
            },
            _ => Response::error(
                404,
                "unknown kernel endpoint; try GET /_tuk/health or /_tuk/components",
            ),
        }
    }
}

impl Router {
    /// Serves a request that came in on `plane`'s listener.
    pub fn handle_on(&mut self, plane: Plane, req: &Request, now_ms: u64) -> Response {
        if let Some(endpoint) = req.path.strip_prefix("/_tuk/") {
            if plane == Plane::Service && !SERVICE_ENDPOINTS.contains(&endpoint) {
                return Response::error(
                    403,
                    &format!(
                        "/_tuk/{endpoint} is served only on the admin listener (guest port {}; \
                         the host address `tuk run --admin-listen` forwards, \"admin\" in its \
                         ready line); this listener serves components and GET /_tuk/health, \
                         /_tuk/components, /_tuk/attestation/identity",
                        self.admin_port
                    ),
                );
            }
            return self.admin(req, endpoint, now_ms);
        }
        if plane == Plane::Admin {
            return Response::error(
                404,
                "the admin listener serves only /_tuk/*; components are on the service listener",
            );
        }
        let rest = req.path.strip_prefix('/').unwrap_or(&req.path);
        let (name, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        match self.deployer.runtime.dispatch(name, path, req) {
            Some(resp) => resp,
            None => Response::error(
                404,
                "no component serves this path; see GET /_tuk/components for what is deployed",
            ),
        }
    }
}
