//! The boot command line: `key=value` words (docs/contracts.md lists them).
//!
//! Parsing never fails as a whole: a malformed or unknown value keeps the default and produces
//! a warning that is logged once logging is up, so a typo cannot stop a host from booting but
//! is never silent either.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use log::LevelFilter;
use tuk_http::Limits;

#[derive(Clone, Debug)]
pub struct Config {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub port: u16,
    /// The admin listener's port (`admin.port`): every `/_tuk/*` endpoint (routes.rs).
    pub admin_port: u16,
    /// The admin listener's own socket pool (`admin.listeners`, `admin.max_connections`),
    /// separate from the service listener's, so a flood there cannot take these.
    pub admin_listeners: usize,
    pub admin_max_connections: usize,
    /// Quotes and credential activations per second (`ratelimit.tpm_per_s`) and the burst
    /// saved up (`ratelimit.tpm_burst`).
    pub tpm_per_s: u32,
    pub tpm_burst: u32,
    pub log_level: LevelFilter,
    pub http: Limits,
    /// Sockets kept listening at all times (smoltcp has no accept backlog: each pending SYN
    /// needs a socket in LISTEN).
    pub listeners: usize,
    /// Connections served at once; beyond that new SYNs are refused.
    pub max_connections: usize,
    /// Bytes of HTTP buffers all service connections may hold together
    /// (`http.buffer_budget`; default [`Config::service_buffer_budget`]).
    pub buffer_budget: Option<usize>,
    /// The same for the admin listener (`admin.buffer_budget`; default
    /// [`Config::admin_buffer_budget`]).
    pub admin_buffer_budget: Option<usize>,
    /// Unix time (ms) when the launcher started the VM: the wall clock's origin.
    pub unix_time_ms: Option<u64>,
    /// Run-time re-measurement (`integrity.interval_ms`, `integrity.policy`).
    pub integrity: crate::integrity::Settings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ip: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            port: 80,
            admin_port: 8081,
            admin_listeners: 4,
            admin_max_connections: 16,
            tpm_per_s: 10,
            tpm_burst: 20,
            log_level: LevelFilter::Info,
            http: Limits::default(),
            listeners: 64,
            max_connections: 256,
            buffer_budget: None,
            admin_buffer_budget: None,
            unix_time_ms: None,
            integrity: crate::integrity::Settings::default(),
        }
    }
}

fn parse_cidr(v: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, prefix) = v.split_once('/').unwrap_or((v, "24"));
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((ip.parse().ok()?, prefix))
}

fn parse_level(v: &str) -> Option<LevelFilter> {
    Some(match v {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

/// The smallest budget accepted: one connection's floor plus room for a small body.
const MIN_BUFFER_BUDGET: usize = 64 * 1024;

impl Config {
    /// The service listener's buffer budget (net/server.rs): `http.buffer_budget`, else a
    /// quarter of guest memory, at most 16 MiB (16 MiB for the default 64 MiB guest).
    pub fn service_buffer_budget(&self, memory_total: u64) -> usize {
        self.buffer_budget
            .unwrap_or_else(|| (memory_total / 4).min(16 << 20) as usize)
    }

    /// The admin listener's: `admin.buffer_budget`, else a sixteenth of guest memory, at
    /// most 4 MiB (4 MiB for 64 MiB), and never less than one maximal request (a publish).
    pub fn admin_buffer_budget(&self, memory_total: u64) -> usize {
        self.admin_buffer_budget.unwrap_or_else(|| {
            let one_request = self.http.max_body_bytes + self.http.max_head_bytes + 64 * 1024;
            ((memory_total / 16).min(4 << 20) as usize).max(one_request)
        })
    }

    /// Parses a command line; returns the configuration and the warnings to log.
    pub fn parse(cmdline: &str) -> (Config, Vec<String>) {
        let mut c = Config::default();
        let mut warnings = Vec::new();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                warnings.push(format!(
                    "ignoring command-line word `{word}` (expected key=value)"
                ));
                continue;
            };
            let ok = match key {
                "ip" => parse_cidr(value)
                    .map(|(ip, p)| (c.ip, c.prefix_len) = (ip, p))
                    .is_some(),
                "gw" if value == "none" => {
                    c.gateway = None;
                    true
                }
                "gw" => value.parse().map(|g| c.gateway = Some(g)).is_ok(),
                "port" => value
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .map(|p| c.port = p)
                    .is_some(),
                "admin.port" => value
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .map(|p| c.admin_port = p)
                    .is_some(),
                "admin.listeners" => value
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .map(|n| c.admin_listeners = n)
                    .is_some(),
                "admin.max_connections" => value
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .map(|n| c.admin_max_connections = n)
                    .is_some(),
                "ratelimit.tpm_per_s" => value.parse().map(|v| c.tpm_per_s = v).is_ok(),
                "ratelimit.tpm_burst" => value
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .map(|n| c.tpm_burst = n)
                    .is_some(),
                "log" => parse_level(value).map(|l| c.log_level = l).is_some(),
                "http.idle_timeout_ms" => value.parse().map(|v| c.http.idle_timeout_ms = v).is_ok(),
                "http.request_timeout_ms" => {
                    value.parse().map(|v| c.http.request_timeout_ms = v).is_ok()
                }
                "http.max_body" => value.parse().map(|v| c.http.max_body_bytes = v).is_ok(),
                "http.max_head" => value.parse().map(|v| c.http.max_head_bytes = v).is_ok(),
                "http.listeners" => value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .map(|n| c.listeners = n)
                    .is_some(),
                "http.max_connections" => value
                    .parse()
                    .ok()
                    .filter(|n| (1..=4096).contains(n))
                    .map(|n| c.max_connections = n)
                    .is_some(),
                "http.buffer_budget" => value
                    .parse()
                    .ok()
                    .filter(|n| *n >= MIN_BUFFER_BUDGET)
                    .map(|n| c.buffer_budget = Some(n))
                    .is_some(),
                "admin.buffer_budget" => value
                    .parse()
                    .ok()
                    .filter(|n| *n >= MIN_BUFFER_BUDGET)
                    .map(|n| c.admin_buffer_budget = Some(n))
                    .is_some(),
                "integrity.interval_ms" => {
                    value.parse().map(|v| c.integrity.interval_ms = v).is_ok()
                }
                "integrity.policy" => crate::integrity::Policy::parse(value)
                    .map(|p| c.integrity.policy = p)
                    .is_some(),
                "time.unix_ms" => value.parse().map(|v| c.unix_time_ms = Some(v)).is_ok(),
                // Added by QEMU's microvm; consumed by the virtio driver.
                "virtio_mmio.device" => true,
                _ => {
                    warnings.push(format!("ignoring unknown command-line key `{key}`"));
                    continue;
                }
            };
            if ok && key.ends_with("port") && c.port == c.admin_port {
                warnings.push(format!(
                    "port and admin.port are both {}: the admin listener moves to {}",
                    c.port,
                    c.port.wrapping_add(1).max(1)
                ));
                c.admin_port = c.port.wrapping_add(1).max(1);
            }
            if !ok {
                warnings.push(format!(
                    "ignoring `{word}`: invalid value for `{key}`, using the default"
                ));
            }
        }
        (c, warnings)
    }
}
