//! Webhooks: which targets are allowed, and their delivery (docs/verifier.md, "Webhooks").
//!
//! - A target's host must resolve only to public addresses: loopback, private (RFC 1918,
//!   IPv6 ULA), link-local, unspecified, multicast, broadcast and `0.0.0.0/8` (and the IPv4
//!   forms of these inside IPv6) are refused unless the service runs with
//!   `--webhook-allow-private`. The check is made when the hook is added and again before
//!   each delivery (a name that later resolves to a private address is not posted to).
//! - Notifications wait in the store's outbox (inserted with the changing result, so they
//!   survive a crash); every hook has its own delivery thread in every process, claiming one
//!   notification at a time, so a hook that never answers delays only its own notifications.
//!   At least once, with the idempotency key `instance:seq` (header `Idempotency-Key` and
//!   the body's `idempotency_key`).
//! - Nothing a hook answers is read beyond its status code, and nothing of it is logged.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use crate::metrics::Metrics;

/// Webhooks a verifier keeps at most.
pub const MAX_WEBHOOKS: usize = 64;
/// Tries per notification.
const TRIES: u32 = 3;

/// Whether `ip` is an address a webhook may not target without `--webhook-allow-private`.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private_v4(v4);
            }
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg0 & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (seg0 & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1)
                // ::a.b.c.d (IPv4-compatible, deprecated)
                || (v6.segments()[..6] == [0; 6] && private_v4(Ipv4Addr::from(
                    (u32::from(v6.segments()[6]) << 16) | u32::from(v6.segments()[7]),
                )))
        }
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.octets()[0] == 0
}

/// Checks a webhook URL: `http(s)://host[:port]/...` without user info, whose host resolves
/// only to public addresses unless `allow_private`. The error says what to do.
pub fn check_target(url: &str, allow_private: bool) -> Result<(), String> {
    if url.len() > 2048 {
        return Err("a webhook url must be at most 2048 bytes".into());
    }
    let uri = ureq::http::Uri::from_str(url)
        .map_err(|_| "the webhook url does not parse as an http:// or https:// URL".to_string())?;
    let port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return Err("a webhook url must be http:// or https://".into()),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| "the webhook url has no host".to_string())?;
    if authority.as_str().contains('@') {
        return Err("a webhook url may not carry user info (user@host)".into());
    }
    let port = authority.port_u16().unwrap_or(port);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if allow_private {
        return Ok(());
    }
    let addrs: Vec<IpAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|_| format!("the webhook host {host:?} does not resolve"))?
        .map(|a| a.ip())
        .collect();
    if addrs.is_empty() {
        return Err(format!("the webhook host {host:?} does not resolve"));
    }
    if let Some(ip) = addrs.iter().find(|ip| is_private(**ip)) {
        return Err(format!(
            "the webhook host {host:?} resolves to {ip}, a loopback, private, link-local or \
             multicast address; start the verifier with --webhook-allow-private to allow such \
             targets"
        ));
    }
    Ok(())
}

/// One hook's delivery thread: its URL, a wake-up signal and its stop flag.
struct Hook {
    url: String,
    /// Bumped to wake the thread (a notification of this process entered the outbox).
    signal: Mutex<u64>,
    ready: Condvar,
    stop: AtomicBool,
}

/// How long a delivery thread waits for a wake-up before it looks at the outbox again (for
/// notifications other processes stored, and retries falling due).
const POLL: Duration = Duration::from_millis(500);

/// The delivery threads, one per hook, draining the outbox in the store (docs/verifier.md,
/// "Webhooks"): claim one notification, POST it, delete it when the hook answered 2xx (or after
/// [`TRIES`] failed tries), else give it back due again later. At least once: a process that
/// dies between the POST and the delete leaves the claim to expire (`--timeout` + 5 s), and
/// another process (or this one restarted) posts it again with the same idempotency key.
pub struct Delivery {
    allow_private: bool,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// This process's claim holder id.
    holder: String,
    hooks: Mutex<BTreeMap<String, Arc<Hook>>>,
}

impl Delivery {
    pub fn new(
        allow_private: bool,
        timeout: Duration,
        metrics: Arc<Metrics>,
        holder: String,
    ) -> Delivery {
        Delivery {
            allow_private,
            timeout,
            metrics,
            holder,
            hooks: Mutex::new(BTreeMap::new()),
        }
    }

    /// How long a claim holds: one try bounded by `--timeout`, and 5 s.
    pub fn claim_ttl(&self) -> Duration {
        self.timeout + Duration::from_secs(5)
    }

    /// Makes the delivery threads match `hooks` ((id, url), the store's current list):
    /// starts threads for new hooks, stops those of hooks no longer listed.
    pub fn sync(&self, hooks: &[(String, String)], store: &Arc<crate::store::Store>) {
        let mut map = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|id, h| {
            let keep = hooks.iter().any(|(i, url)| i == id && *url == h.url);
            if !keep {
                h.stop.store(true, Ordering::Relaxed);
                h.ready.notify_all();
            }
            keep
        });
        for (id, url) in hooks {
            if map.contains_key(id) {
                continue;
            }
            let h = Arc::new(Hook {
                url: url.clone(),
                signal: Mutex::new(0),
                ready: Condvar::new(),
                stop: AtomicBool::new(false),
            });
            if self.spawn(id, Arc::clone(&h), Arc::clone(store)).is_err() {
                eprintln!("tuk-verifier: cannot start the delivery thread of webhook {id}");
                continue;
            }
            map.insert(id.clone(), h);
        }
    }

    /// Wakes every delivery thread (new notifications are in the outbox).
    pub fn wake(&self) {
        for h in self
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            *h.signal.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            h.ready.notify_all();
        }
    }

    fn spawn(
        &self,
        id: &str,
        h: Arc<Hook>,
        store: Arc<crate::store::Store>,
    ) -> std::io::Result<()> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        let allow_private = self.allow_private;
        let metrics = Arc::clone(&self.metrics);
        let holder = self.holder.clone();
        let ttl = i64::try_from(self.claim_ttl().as_millis()).unwrap_or(i64::MAX);
        let id = id.to_owned();
        thread::Builder::new()
            .name(format!("webhook-{id}"))
            .spawn(move || {
                let mut seen = 0;
                loop {
                    if h.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let n = match store.claim_notification(&id, &holder, ttl) {
                        Ok(Some(n)) => n,
                        Ok(None) => {
                            let signal = h.signal.lock().unwrap_or_else(|p| p.into_inner());
                            let (signal, _) = h
                                .ready
                                .wait_timeout_while(signal, POLL, |s| {
                                    *s == seen && !h.stop.load(Ordering::Relaxed)
                                })
                                .unwrap_or_else(|p| p.into_inner());
                            seen = *signal;
                            continue;
                        }
                        Err(e) => {
                            metrics.store_error();
                            eprintln!("tuk-verifier: webhook {id}: cannot read the outbox: {e}");
                            thread::sleep(POLL);
                            continue;
                        }
                    };
                    let key = format!("{}:{}", n.instance, n.seq);
                    let ok = match check_target(&h.url, allow_private) {
                        Err(e) => {
                            eprintln!("tuk-verifier: webhook {id}: not delivered: {e}");
                            metrics.webhook(false);
                            let _ = store.notification_done(&n);
                            continue;
                        }
                        Ok(()) => agent
                            .post(&h.url)
                            .header("Content-Type", "application/json")
                            .header("Idempotency-Key", &key)
                            .send(n.body.as_bytes())
                            .is_ok_and(|r| r.status().is_success()),
                    };
                    let tries = u32::try_from(n.attempts).unwrap_or(TRIES) + 1;
                    let stored = if ok || tries >= TRIES {
                        metrics.webhook(ok);
                        if !ok {
                            eprintln!(
                                "tuk-verifier: webhook {id} failed {TRIES} times; dropped the \
                                 notification {key}"
                            );
                        }
                        store.notification_done(&n)
                    } else {
                        store.notification_failed(&n, 250 << (tries - 1))
                    };
                    if let Err(e) = stored {
                        metrics.store_error();
                        eprintln!("tuk-verifier: webhook {id}: cannot update the outbox: {e}");
                    }
                }
            })
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_targets_are_refused() {
        for bad in [
            "http://127.0.0.1/",
            "http://127.1.2.3:8080/x",
            "http://10.0.0.5:8500/v1/secret",
            "http://172.16.1.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://0.0.0.0/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:10.1.2.3]/",
            "http://[ff02::1]/",
            "http://localhost:9/",
        ] {
            let e = check_target(bad, false).unwrap_err();
            assert!(
                e.contains("--webhook-allow-private") || e.contains("does not resolve"),
                "{bad}: {e}"
            );
            assert!(check_target(bad, true).is_ok(), "{bad}");
        }
        for public in ["http://93.184.216.34/hook", "https://[2001:db8::1]:8443/"] {
            assert!(check_target(public, false).is_ok(), "{public}");
        }
        for malformed in [
            "ftp://93.184.216.34/",
            "http://user:pw@93.184.216.34/",
            "/relative",
        ] {
            assert!(check_target(malformed, true).is_err(), "{malformed}");
        }
    }
}
