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
    pub log_level: LevelFilter,
    pub http: Limits,
    /// Sockets kept listening at all times (smoltcp has no accept backlog: each pending SYN
    /// needs a socket in LISTEN).
    pub listeners: usize,
    /// Connections served at once; beyond that new SYNs are refused.
    pub max_connections: usize,
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
            log_level: LevelFilter::Info,
            http: Limits::default(),
            listeners: 64,
            max_connections: 256,
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

impl Config {
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
            if !ok {
                warnings.push(format!(
                    "ignoring `{word}`: invalid value for `{key}`, using the default"
                ));
            }
        }
        (c, warnings)
    }
}
