//! `tuk gateway`: a reverse proxy in front of one instance that forwards a request only while
//! the verifier's latest result for the instance is **affirming** and **fresh** (made at most
//! two attestation intervals ago), and otherwise answers `503` with the reason
//! (docs/verifier.md, "The gateway").
//!
//! The gateway polls the verifier (`GET /v1/instances/{id}`) every `interval / 4` (at least
//! every second) and believes a result only if its EAR verifies with the verifier's Ed25519
//! key (given, or fetched once at start from `/v1/key`), names this instance and says
//! `affirming`. Freshness is judged at each request, so a verifier that stops answering cuts
//! traffic two intervals after its last good result. `GET /_gateway/status` tells the
//! gateway's current decision.
#![forbid(unsafe_code)]

use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tuk_httpd::{Request, Response};

/// How the gateway runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The instance's base URL, e.g. `http://127.0.0.1:8080`.
    pub upstream: String,
    /// The verifier's base URL.
    pub verifier: String,
    /// The instance's id at the verifier.
    pub instance: String,
    /// The verifier's result-signing key; fetched from the verifier when None.
    pub verifier_key: Option<[u8; 32]>,
    /// Bounds each request to the upstream and to the verifier.
    pub timeout: Duration,
}

/// What the gateway last learned from the verifier.
#[derive(Clone, Debug)]
struct Verdict {
    /// The verified status (`affirming` …), or why there is none.
    status: String,
    /// Unix ms of the result, if one verified.
    at: Option<i64>,
    interval_ms: u64,
    reason: String,
}

/// A running gateway's shared state.
pub struct Gateway {
    cfg: Config,
    key: [u8; 32],
    verdict: RwLock<Verdict>,
    agent: ureq::Agent,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Headers that belong to one connection (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

fn get_json(agent: &ureq::Agent, url: &str) -> Result<Value, String> {
    let mut r = agent.get(url).call().map_err(|e| format!("{url}: {e}"))?;
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .with_config()
        .limit(4 * 1024 * 1024)
        .read_to_vec()
        .map_err(|e| format!("{url}: {e}"))?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON ({e})"))?;
    if status != 200 {
        return Err(format!(
            "{url} answered {status}: {}",
            v.get("error").and_then(Value::as_str).unwrap_or("")
        ));
    }
    Ok(v)
}

/// When the result was made, in Unix ms: the record's `at` if it falls in the signed `iat`'s
/// second (so the unsigned field cannot stretch freshness by more than that second), else
/// the start of that second.
fn signed_time(claims: &Value, latest: &Value) -> Option<i64> {
    let iat_ms = claims.get("iat").and_then(Value::as_i64)? * 1000;
    let at = latest.get("at").and_then(Value::as_i64).unwrap_or(iat_ms);
    Some(if (iat_ms..iat_ms + 1000).contains(&at) {
        at
    } else {
        iat_ms
    })
}

impl Gateway {
    /// Starts the gateway's poller. Fetches the verifier's key when `cfg.verifier_key` is None
    /// (trust on first use: pass the key to pin it).
    pub fn start(cfg: Config) -> Result<Arc<Gateway>, String> {
        let agent = agent(cfg.timeout);
        let verifier = cfg.verifier.trim_end_matches('/').to_owned();
        let key = match cfg.verifier_key {
            Some(k) => k,
            None => {
                let jwk = get_json(&agent, &format!("{verifier}/v1/key"))?;
                tuk_verifier::ear::key_of_jwk(&jwk)
                    .ok_or("the verifier's /v1/key is not an Ed25519 JWK")?
            }
        };
        let g = Arc::new(Gateway {
            cfg: Config { verifier, ..cfg },
            key,
            verdict: RwLock::new(Verdict {
                status: "pending".into(),
                at: None,
                interval_ms: 1000,
                reason: "no result from the verifier yet".into(),
            }),
            agent,
        });
        g.poll();
        let poller = Arc::clone(&g);
        thread::Builder::new()
            .name("gateway-poll".into())
            .spawn(move || loop {
                let interval = poller.read().interval_ms;
                thread::sleep(Duration::from_millis((interval / 4).clamp(10, 1000)));
                poller.poll();
            })
            .map_err(|e| e.to_string())?;
        Ok(g)
    }

    fn read(&self) -> Verdict {
        self.verdict
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the verifier for the instance's latest result and checks it.
    fn poll(&self) {
        let url = format!("{}/v1/instances/{}", self.cfg.verifier, self.cfg.instance);
        let verdict = match get_json(&self.agent, &url) {
            Ok(doc) => self.check(&doc),
            Err(e) => {
                // Keep the last verified result: freshness expires it on its own.
                let mut v = self.read();
                v.reason = format!("the verifier is not answering ({e})");
                if v.at.is_none() {
                    v.status = "unknown".into();
                }
                v
            }
        };
        *self.verdict.write().unwrap_or_else(|p| p.into_inner()) = verdict;
    }

    fn check(&self, doc: &Value) -> Verdict {
        let interval_ms = doc
            .get("interval_ms")
            .and_then(Value::as_u64)
            .unwrap_or(1000);
        let latest = doc.get("latest").filter(|l| !l.is_null());
        let Some(latest) = latest else {
            return Verdict {
                status: "pending".into(),
                at: None,
                interval_ms,
                reason: "the verifier has no result for the instance yet".into(),
            };
        };
        let status = latest.get("status").and_then(Value::as_str).unwrap_or("");
        let Some(jwt) = latest.get("ear").and_then(Value::as_str) else {
            let error = latest.get("error").and_then(Value::as_str).unwrap_or("");
            return Verdict {
                status: status.into(),
                at: None,
                interval_ms,
                reason: format!("the latest attestation is {status}: {error}"),
            };
        };
        let claims = match tuk_verifier::ear::verify(jwt, &self.key) {
            Ok(c) => c,
            Err(e) => {
                return Verdict {
                    status: "unverified".into(),
                    at: None,
                    interval_ms,
                    reason: format!("the verifier's result does not verify: {e}"),
                }
            }
        };
        let signed_status = claims
            .get("ear_status")
            .and_then(Value::as_str)
            .unwrap_or("");
        if claims.get("tuk_instance").and_then(Value::as_str) != Some(&self.cfg.instance) {
            return Verdict {
                status: "unverified".into(),
                at: None,
                interval_ms,
                reason: "the signed result is about another instance".into(),
            };
        }
        let reason = if signed_status == "affirming" {
            "affirming".to_owned()
        } else {
            let mut reasons = Vec::new();
            if let Some(r) = claims.get("tuk_refusal").and_then(Value::as_str) {
                reasons.push(r.to_owned());
            }
            if let Some(subs) = claims.get("submods").and_then(Value::as_object) {
                for (name, s) in subs {
                    if s.get("ear_status").and_then(Value::as_str) == Some("affirming") {
                        continue;
                    }
                    for r in s["ear_verifier_claims"]["reasons"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                    {
                        reasons.push(format!("{name}: {r}"));
                    }
                }
            }
            format!("the instance is {signed_status}: {}", reasons.join("; "))
        };
        Verdict {
            status: signed_status.into(),
            at: signed_time(&claims, latest),
            interval_ms,
            reason,
        }
    }

    /// Ok when traffic may pass; else why not.
    pub fn admit(&self) -> Result<(), String> {
        let v = self.read();
        if v.status != "affirming" {
            return Err(v.reason);
        }
        let at = v.at.unwrap_or(0);
        let age = now_ms() - at;
        let limit = 2 * v.interval_ms as i64;
        if age > limit {
            return Err(format!(
                "the latest affirming result is {age} ms old, more than two intervals ({limit} ms): {}",
                if v.reason == "affirming" { "the verifier has not attested the instance since" } else { &v.reason }
            ));
        }
        Ok(())
    }

    fn status_json(&self) -> Value {
        let v = self.read();
        json!({
            "instance": self.cfg.instance,
            "upstream": self.cfg.upstream,
            "verifier": self.cfg.verifier,
            "status": v.status,
            "at": v.at,
            "interval_ms": v.interval_ms,
            "admit": self.admit().is_ok(),
            "reason": self.admit().err(),
        })
    }

    /// Forwards `req` to the upstream and returns its answer (502 when it cannot).
    fn forward(&self, req: &Request) -> Response {
        let url = format!("{}{}", self.cfg.upstream.trim_end_matches('/'), req.target);
        let mut builder = ureq::http::Request::builder()
            .method(req.method.as_str())
            .uri(&url);
        for h in &req.headers {
            if HOP_BY_HOP.contains(&h.name.to_ascii_lowercase().as_str())
                || h.name.eq_ignore_ascii_case("content-length")
            {
                continue;
            }
            builder = builder.header(h.name.as_str(), h.value.as_slice());
        }
        let request = match builder.body(req.body.clone()) {
            Ok(r) => r,
            Err(e) => return Response::error(400, &format!("cannot forward this request: {e}")),
        };
        let mut answer = match self.agent.run(request) {
            Ok(a) => a,
            Err(e) => return Response::error(502, &format!("the instance did not answer: {e}")),
        };
        let mut out = Response::new(answer.status().as_u16());
        for (name, value) in answer.headers() {
            let n = name.as_str();
            if HOP_BY_HOP.contains(&n) || n == "content-length" || n == "server" {
                continue;
            }
            if let Ok(v) = value.to_str() {
                out.headers.push((n.to_owned(), v.to_owned()));
            }
        }
        match answer
            .body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_vec()
        {
            Ok(body) => out.body = body,
            Err(e) => {
                return Response::error(502, &format!("the instance's answer broke off: {e}"))
            }
        }
        out
    }

    /// The request handler.
    pub fn handler(self: &Arc<Self>) -> Arc<tuk_httpd::Handler> {
        let g = Arc::clone(self);
        Arc::new(move |req: &Request| {
            if req.path == "/_gateway/status" {
                return Response::json(200, g.status_json().to_string());
            }
            match g.admit() {
                Ok(()) => g.forward(req),
                Err(reason) => Response::error(503, &format!("not forwarded: {reason}"))
                    .with_header("Retry-After", "1"),
            }
        })
    }
}
