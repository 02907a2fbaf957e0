//! Configuration from the kernel command line (/proc/cmdline), with the tuk kernel's keys and
//! defaults (docs/contracts.md) so both are configured the same way:
//! `ip`, `gw`, `port`, `log`, `http.*`, `time.unix_ms`. Plus, for components (tuk's launcher
//! puts these into the boot pack), `component.<name>.<key>=<value>` with the boot pack's
//! metadata keys (`memory_limit_bytes`, `deadline_ms`, `config.<key>`).
//!
//! The command line also carries Linux's own parameters (`console=`, `quiet`, module
//! parameters such as `virtio_mmio.x=y`), so unknown keys are skipped silently; a known key
//! with a bad value keeps the default and produces a warning.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

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
    /// Connections served at once; beyond that new ones are closed at once.
    pub max_connections: usize,
    /// Unix time (ms) when the launcher started the VM: the wall clock's origin.
    pub unix_time_ms: Option<u64>,
    /// Deployment metadata per component name, from `component.<name>.<key>=<value>`.
    pub components: BTreeMap<String, Vec<(String, String)>>,
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
            max_connections: 256,
            unix_time_ms: None,
            components: BTreeMap::new(),
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
                "http.max_connections" => value
                    .parse()
                    .ok()
                    .filter(|n| (1..=4096).contains(n))
                    .map(|n| c.max_connections = n)
                    .is_some(),
                // Accepted for symmetry with tuk's command line; the Linux kernel has a real
                // accept backlog, so there is nothing to size.
                "http.listeners" => true,
                "time.unix_ms" => value.parse().map(|v| c.unix_time_ms = Some(v)).is_ok(),
                _ => match key.strip_prefix("component.") {
                    Some(rest) => match rest.split_once('.') {
                        Some((name, meta)) if !name.is_empty() && !meta.is_empty() => {
                            c.components
                                .entry(name.into())
                                .or_default()
                                .push((meta.into(), value.into()));
                            true
                        }
                        _ => false,
                    },
                    None => continue, // Linux's own parameters
                },
            };
            if !ok {
                warnings.push(format!(
                    "ignoring `{word}`: invalid value for `{key}`, using the default"
                ));
            }
        }
        (c, warnings)
    }

    /// Module parameters for `module` given on the command line as `module.key=value`
    /// (what modprobe would pass; the kernel does not apply them to loadable modules itself).
    pub fn module_params(cmdline: &str, module: &str) -> String {
        let module = module.replace('-', "_");
        cmdline
            .split_ascii_whitespace()
            .filter_map(|w| {
                let (m, param) = w.split_once('.')?;
                (m.replace('-', "_") == module && param.contains('=')).then_some(param)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuk_keys_and_linux_keys() {
        let (c, w) = Config::parse(
            "console=ttyS0 quiet ip=10.0.2.20/16 port=8080 log=debug http.max_body=10 \
             time.unix_ms=1700000000000 component.hello.config.greeting=hi \
             component.kv.memory_limit_bytes=1048576 virtio_mmio.device=512@0x1:5 port=0",
        );
        assert_eq!(c.ip, Ipv4Addr::new(10, 0, 2, 20));
        assert_eq!(c.prefix_len, 16);
        assert_eq!(c.port, 8080);
        assert_eq!(c.log_level, LevelFilter::Debug);
        assert_eq!(c.http.max_body_bytes, 10);
        assert_eq!(c.unix_time_ms, Some(1_700_000_000_000));
        assert_eq!(
            c.components["hello"],
            [("config.greeting".to_owned(), "hi".to_owned())]
        );
        assert_eq!(c.components["kv"][0].0, "memory_limit_bytes");
        assert_eq!(w.len(), 1, "{w:?}"); // port=0
    }

    #[test]
    fn module_parameters() {
        let cmdline = "console=ttyS0 virtio-mmio.device=512@0x1:5 virtio_mmio.x=1 virtio_net.y=2";
        assert_eq!(
            Config::module_params(cmdline, "virtio_mmio"),
            "device=512@0x1:5 x=1"
        );
        assert_eq!(Config::module_params(cmdline, "failover"), "");
    }
}
