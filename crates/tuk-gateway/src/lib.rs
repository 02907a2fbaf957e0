//! `tuk gateway`: a reverse proxy in front of one instance that forwards a request only while
//! the verifier's latest signed result for the instance is **affirming**, **unexpired** and
//! about **this** instance at **this** upstream, and otherwise answers `503` with the reason
//! (docs/verifier.md, "The gateway").
//!
//! The gateway polls the verifier (`GET /v1/instances/{id}`) every `interval / 4` (at least
//! every second; the unsigned `interval_ms` only paces the polling) and admits traffic only on
//! a result whose EAR (JWT) verifies with the verifier's **pinned** Ed25519 key (given, or
//! fetched once and checked against a pinned SHA-256 fingerprint; never trusted on first use)
//! and whose signed claims say (shared design D2):
//! - `ear_status` is `affirming`;
//! - `tuk_instance` is `--instance`;
//! - `exp` (unix seconds) is in the future: a replayed or stale answer stops admitting by
//!   itself, whatever the network says;
//! - `tuk_service_url` (else `tuk_url`) names the upstream (scheme and authority, normalised);
//! - `tuk_ak_name` is the AK the upstream itself reports at `GET /_tuk/attestation/identity`
//!   (read at start and again whenever the results' AK changes; the name is recomputed from the
//!   AK's public area, as the verifier does);
//! - it is not older than the newest result seen (`iat`; at an equal `iat` a result never turns
//!   a refusal into an admission).
//!
//! Forwarding builds the upstream URI from the configured upstream's scheme and authority and
//! the request's origin-form path and query only (tuk-http refuses every other request-target
//! form with 400). `/_tuk/*` is not forwarded (403) unless `forward_tuk`: the instance's admin
//! plane is on its own listener anyway (D1). `GET /_gateway/status` tells the gateway's current
//! decision.
#![forbid(unsafe_code)]

use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tuk_httpd::{Request, Response};
use ureq::http::uri::{Authority, PathAndQuery, Scheme};
use ureq::http::Uri;

/// How the verifier's result-signing key is pinned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPin {
    /// The Ed25519 public key itself (from the verifier's JWK).
    Key([u8; 32]),
    /// SHA-256 of the 32-byte public key (the verifier's `kid`, tuk keyid); the key is read
    /// from the verifier's `/v1/key` and used only if it has this fingerprint.
    Fingerprint([u8; 32]),
}

/// How the gateway runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The instance's SERVICE base URL, e.g. `http://127.0.0.1:8080` (scheme and authority
    /// only).
    pub upstream: String,
    /// The verifier's base URL.
    pub verifier: String,
    /// The instance's id at the verifier.
    pub instance: String,
    /// The verifier's result-signing key, pinned (required).
    pub verifier_key: KeyPin,
    /// PEM certificates the verifier's TLS certificate must chain to (else the public web
    /// roots).
    pub verifier_ca: Option<Vec<u8>>,
    /// Refuse an `http://` verifier.
    pub require_verifier_tls: bool,
    /// Forward `/_tuk/*` too (default: answer 403).
    pub forward_tuk: bool,
    /// A verifier API token with the `read` scope, sent as `Authorization: Bearer` (None: the
    /// verifier must allow anonymous reads).
    pub verifier_token: Option<String>,
    /// Bounds each request to the upstream and to the verifier.
    pub timeout: Duration,
}

/// What the gateway last concluded from the verifier.
#[derive(Clone, Debug)]
struct Verdict {
    /// `affirming` only when every check passed; else the signed status or why there is none.
    status: String,
    /// Unix ms after which the result no longer admits (signed `exp`).
    exp_ms: Option<i64>,
    /// The result's signed `iat` (unix s).
    iat: Option<i64>,
    reason: String,
}

/// What the gateway remembers across results.
#[derive(Debug, Default)]
struct Seen {
    /// The newest signed `iat` of a genuine result for this instance, and whether the result
    /// at that `iat` admitted.
    newest: Option<(i64, bool)>,
    /// The AK of the last genuine result (a change re-reads the upstream's identity).
    result_ak: Option<String>,
    /// The AK name the upstream reports (hex), or why it could not be read.
    upstream_ak: Option<Result<String, String>>,
}

/// The configured upstream, split once.
#[derive(Clone, Debug)]
struct Upstream {
    scheme: Scheme,
    authority: Authority,
}

/// A running gateway's shared state.
pub struct Gateway {
    cfg: Config,
    upstream: Upstream,
    key: RwLock<Option<[u8; 32]>>,
    verdict: RwLock<Verdict>,
    seen: Mutex<Seen>,
    interval_ms: RwLock<u64>,
    agent: ureq::Agent,
    verifier_agent: ureq::Agent,
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

fn agent(timeout: Duration, tls: Option<ureq::tls::TlsConfig>) -> ureq::Agent {
    let mut b = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0);
    if let Some(tls) = tls {
        b = b.tls_config(tls);
    }
    b.build().into()
}

fn get_json(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    limit: u64,
) -> Result<Value, String> {
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut r = req.call().map_err(|e| format!("{url}: {e}"))?;
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .with_config()
        .limit(limit)
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

/// Splits a base URL into its scheme and authority, normalised (lower case, the scheme's
/// default port dropped). A path other than `/`, a query or user info is an error.
fn parse_base(url: &str) -> Result<Upstream, String> {
    let uri = Uri::from_str(url.trim_end_matches('/')).map_err(|e| format!("{url}: {e}"))?;
    let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http") => Scheme::HTTP,
        Some("https") => Scheme::HTTPS,
        _ => {
            return Err(format!(
                "{url}: the URL must start with http:// or https://"
            ))
        }
    };
    let authority = uri.authority().ok_or_else(|| format!("{url}: no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{url}: user info is not allowed"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!(
            "{url}: only scheme://host:port, without a path or query"
        ));
    }
    let default = if scheme == Scheme::HTTPS { 443 } else { 80 };
    let host = authority.host().to_ascii_lowercase();
    let normal = match authority.port_u16() {
        Some(p) if p != default => format!("{host}:{p}"),
        _ => host,
    };
    let authority = Authority::from_str(&normal).map_err(|e| format!("{url}: {e}"))?;
    Ok(Upstream { scheme, authority })
}

impl Upstream {
    fn same(&self, other: &Upstream) -> bool {
        self.scheme == other.scheme && self.authority == other.authority
    }

    fn base(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

/// Whether `path` addresses the instance's own `/_tuk` endpoints, however spelt
/// (percent-encoding, repeated slashes, dot segments, case).
fn is_tuk_path(path: &str) -> bool {
    let mut decoded = Vec::with_capacity(path.len());
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                decoded.push(v);
                i += 3;
                continue;
            }
        }
        decoded.push(b[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded).to_ascii_lowercase();
    let first = decoded
        .split(['/', '\\'])
        .find(|s| !s.is_empty() && *s != ".")
        .unwrap_or("");
    first == "_tuk" || first.starts_with("_tuk;") || first.starts_with("_tuk?")
}

/// The AK name (hex) an identity document states, recomputed from the AK's public area.
fn ak_name_of(identity: &[u8]) -> Result<String, String> {
    let id = tuk_attest::evidence::Identity::from_json(identity).map_err(|e| e.to_string())?;
    let ak = tuk_attest::AkPublic::parse(&id.ak_public).map_err(|e| e.to_string())?;
    let name = ak.name();
    if name != id.ak_name {
        return Err(format!(
            "the identity states AK name {} but its AK public area is named {}",
            tuk_measure::hex(&id.ak_name),
            tuk_measure::hex(&name)
        ));
    }
    Ok(tuk_measure::hex(&name))
}

fn refused(reason: String) -> Verdict {
    Verdict {
        status: "unverified".into(),
        exp_ms: None,
        iat: None,
        reason,
    }
}

impl Gateway {
    /// Checks the configuration, reads the upstream's AK and starts the poller.
    pub fn start(cfg: Config) -> Result<Arc<Gateway>, String> {
        let upstream = parse_base(&cfg.upstream).map_err(|e| format!("--upstream {e}"))?;
        let verifier = parse_base(&cfg.verifier).map_err(|e| format!("--verifier {e}"))?;
        if cfg.require_verifier_tls && verifier.scheme != Scheme::HTTPS {
            return Err(format!(
                "the verifier {} is not https:// and TLS to the verifier is required: give its \
                 https:// URL (with --verifier-ca for a private CA) or drop --require-verifier-tls",
                cfg.verifier
            ));
        }
        let tls = match &cfg.verifier_ca {
            None => None,
            Some(pem) => {
                let certs = ureq::tls::parse_pem(pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("--verifier-ca is not PEM: {e}"))?;
                if certs.is_empty() {
                    return Err("--verifier-ca holds no CERTIFICATE".into());
                }
                Some(
                    ureq::tls::TlsConfig::builder()
                        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                        .build(),
                )
            }
        };
        let key = match cfg.verifier_key {
            KeyPin::Key(k) => Some(k),
            KeyPin::Fingerprint(_) => None,
        };
        let timeout = cfg.timeout;
        let g = Arc::new(Gateway {
            cfg: Config {
                verifier: verifier.base(),
                ..cfg
            },
            upstream,
            key: RwLock::new(key),
            verdict: RwLock::new(Verdict {
                status: "pending".into(),
                exp_ms: None,
                iat: None,
                reason: "no result from the verifier yet".into(),
            }),
            seen: Mutex::new(Seen::default()),
            interval_ms: RwLock::new(1000),
            agent: agent(timeout, None),
            verifier_agent: agent(timeout, tls),
        });
        // The upstream's AK now, so that the first result can be checked against it (an
        // instance that is not up yet is asked again with the first result).
        let _ = g.read_upstream_ak();
        g.poll();
        let poller = Arc::clone(&g);
        thread::Builder::new()
            .name("gateway-poll".into())
            .spawn(move || loop {
                let interval = *poller.interval_ms.read().unwrap_or_else(|p| p.into_inner());
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

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `GET <upstream>/_tuk/attestation/identity` and remembers its AK name.
    fn read_upstream_ak(&self) -> Result<String, String> {
        let url = format!("{}/_tuk/attestation/identity", self.upstream.base());
        let got = (|| {
            let mut r = self
                .agent
                .get(&url)
                .call()
                .map_err(|e| format!("{url}: {e}"))?;
            let status = r.status().as_u16();
            let body = r
                .body_mut()
                .with_config()
                .limit(tuk_attest::evidence::MAX_IDENTITY as u64 + 1)
                .read_to_vec()
                .map_err(|e| format!("{url}: {e}"))?;
            if status != 200 {
                return Err(format!("{url} answered {status}"));
            }
            ak_name_of(&body).map_err(|e| format!("{url}: {e}"))
        })();
        self.seen().upstream_ak = Some(got.clone());
        got
    }

    /// The verifier's key: the pinned one, or the verifier's `/v1/key` if it has the pinned
    /// fingerprint.
    fn key(&self) -> Result<[u8; 32], String> {
        if let Some(k) = *self.key.read().unwrap_or_else(|p| p.into_inner()) {
            return Ok(k);
        }
        let KeyPin::Fingerprint(want) = self.cfg.verifier_key else {
            return Err("no verifier key".into());
        };
        let url = format!("{}/v1/key", self.cfg.verifier);
        let jwk = get_json(&self.verifier_agent, &url, None, 64 * 1024)?;
        let key = tuk_verifier::ear::key_of_jwk(&jwk)
            .ok_or_else(|| format!("{url} is not an Ed25519 JWK"))?;
        let got = tuk_measure::sha256(&key);
        if got != want {
            return Err(format!(
                "the verifier's key {url} has fingerprint {}, not the pinned {}: not using it",
                tuk_measure::hex(&got),
                tuk_measure::hex(&want)
            ));
        }
        *self.key.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
        Ok(key)
    }

    /// Asks the verifier for the instance's latest result and checks it.
    fn poll(&self) {
        let url = format!("{}/v1/instances/{}", self.cfg.verifier, self.cfg.instance);
        let verdict = match self.key().and_then(|key| {
            Ok((
                key,
                get_json(
                    &self.verifier_agent,
                    &url,
                    self.cfg.verifier_token.as_deref(),
                    4 * 1024 * 1024,
                )?,
            ))
        }) {
            Ok((key, doc)) => {
                if let Some(ms) = doc.get("interval_ms").and_then(Value::as_u64) {
                    *self.interval_ms.write().unwrap_or_else(|p| p.into_inner()) = ms;
                }
                self.check(&doc, &key, now_ms())
            }
            Err(e) => {
                // Keep the last verified result: its signed `exp` ends it on its own.
                let mut v = self.read();
                v.reason = format!("the verifier is not answering ({e})");
                if v.exp_ms.is_none() {
                    v.status = "unknown".into();
                }
                v
            }
        };
        *self.verdict.write().unwrap_or_else(|p| p.into_inner()) = verdict;
    }

    /// Checks one `GET /v1/instances/{id}` document (every D2 check but `exp`, which
    /// [`Gateway::admit`] checks at each request).
    fn check(&self, doc: &Value, key: &[u8; 32], now: i64) -> Verdict {
        let latest = doc.get("latest").filter(|l| !l.is_null());
        let Some(latest) = latest else {
            return Verdict {
                status: "pending".into(),
                exp_ms: None,
                iat: None,
                reason: "the verifier has no result for the instance yet".into(),
            };
        };
        let status = latest.get("status").and_then(Value::as_str).unwrap_or("");
        let Some(jwt) = latest.get("ear").and_then(Value::as_str) else {
            let error = latest.get("error").and_then(Value::as_str).unwrap_or("");
            return Verdict {
                status: status.into(),
                exp_ms: None,
                iat: None,
                reason: format!("the latest attestation is {status}: {error}"),
            };
        };
        let claims = match tuk_verifier::ear::verify(jwt, key) {
            Ok(c) => c,
            Err(e) => return refused(format!("the verifier's result does not verify: {e}")),
        };
        if claims.get("tuk_instance").and_then(Value::as_str) != Some(&self.cfg.instance) {
            return refused(format!(
                "the signed result is about instance {}, not {}",
                claims.get("tuk_instance").unwrap_or(&Value::Null),
                self.cfg.instance
            ));
        }
        let Some(iat) = claims.get("iat").and_then(Value::as_i64) else {
            return refused("the signed result has no iat".into());
        };
        let Some(exp) = claims.get("exp").and_then(Value::as_i64) else {
            return refused(
                "the signed result has no exp: the verifier predates signed expiry, update it"
                    .into(),
            );
        };
        let verdict = self.appraise(&claims, iat, exp, now);
        let admits = verdict.status == "affirming";
        let mut seen = self.seen();
        match seen.newest {
            Some((newest, _)) if iat < newest => {
                return refused(format!(
                    "an older result (iat {iat}) after a newer one (iat {newest}): replayed"
                ))
            }
            Some((newest, false)) if iat == newest && admits => {
                return refused(format!(
                    "a result of the same second (iat {iat}) as a refusing one cannot admit: \
                     waiting for a newer result"
                ))
            }
            _ => seen.newest = Some((iat, admits)),
        }
        verdict
    }

    /// The URL, AK and status checks of a genuine, current result.
    fn appraise(&self, claims: &Value, iat: i64, exp: i64, now: i64) -> Verdict {
        let url = claims
            .get("tuk_service_url")
            .and_then(Value::as_str)
            .or_else(|| claims.get("tuk_url").and_then(Value::as_str));
        let Some(url) = url else {
            return refused(
                "the signed result names no URL (tuk_service_url or tuk_url): the verifier \
                 predates it, update it"
                    .into(),
            );
        };
        match parse_base(url) {
            Ok(u) if u.same(&self.upstream) => {}
            _ => {
                return refused(format!(
                    "the signed result is about the instance at {url}, not the upstream {}",
                    self.upstream.base()
                ))
            }
        }
        let Some(ak) = claims.get("tuk_ak_name").and_then(Value::as_str) else {
            return refused("the signed result names no AK (tuk_ak_name)".into());
        };
        let ak = ak.to_ascii_lowercase();
        let (changed, known) = {
            let mut seen = self.seen();
            let changed = seen.result_ak.as_deref() != Some(ak.as_str());
            seen.result_ak = Some(ak.clone());
            (changed, seen.upstream_ak.clone())
        };
        let upstream_ak = match known {
            Some(Ok(k)) if !changed => Ok(k),
            Some(Ok(k)) if k == ak => Ok(k),
            _ => self.read_upstream_ak(),
        };
        match upstream_ak {
            Ok(k) if k == ak => {}
            Ok(k) => {
                return refused(format!(
                    "the signed result is about AK {ak}, but the upstream reports AK {k}"
                ))
            }
            Err(e) => {
                return refused(format!(
                    "cannot read the upstream's AK to compare with the result's: {e}"
                ))
            }
        }
        let exp_ms = exp.saturating_mul(1000);
        let signed_status = claims
            .get("ear_status")
            .and_then(Value::as_str)
            .unwrap_or("");
        let reason = if signed_status == "affirming" {
            if exp_ms <= now {
                format!("the latest affirming result expired at {exp} (unix s)")
            } else {
                "affirming".to_owned()
            }
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
            exp_ms: Some(exp_ms),
            iat: Some(iat),
            reason,
        }
    }

    /// Ok when traffic may pass; else why not.
    pub fn admit(&self) -> Result<(), String> {
        let v = self.read();
        if v.status != "affirming" {
            return Err(v.reason);
        }
        let exp = v.exp_ms.unwrap_or(0);
        if now_ms() >= exp {
            return Err(format!(
                "the latest affirming result expired at {} (unix s, signed exp) and no newer one \
                 arrived: {}",
                exp / 1000,
                if v.reason == "affirming" {
                    "the verifier has not attested the instance since"
                } else {
                    &v.reason
                }
            ));
        }
        Ok(())
    }

    fn status_json(&self) -> Value {
        let v = self.read();
        json!({
            "instance": self.cfg.instance,
            "upstream": self.upstream.base(),
            "verifier": self.cfg.verifier,
            "status": v.status,
            "iat": v.iat,
            "exp_ms": v.exp_ms,
            "admit": self.admit().is_ok(),
            "reason": self.admit().err(),
        })
    }

    /// Forwards `req` to the upstream and returns its answer (502 when it cannot). The URI
    /// is the configured upstream's scheme and authority with the request's path and query.
    fn forward(&self, req: &Request) -> Response {
        let target = match &req.query {
            Some(q) => format!("{}?{q}", req.path),
            None => req.path.clone(),
        };
        let uri = PathAndQuery::from_str(&target)
            .map_err(|e| e.to_string())
            .and_then(|pq| {
                Uri::builder()
                    .scheme(self.upstream.scheme.clone())
                    .authority(self.upstream.authority.clone())
                    .path_and_query(pq)
                    .build()
                    .map_err(|e| e.to_string())
            });
        let uri = match uri {
            Ok(u) if req.path.starts_with('/') => u,
            Ok(_) => return Response::error(400, "only origin-form request-targets (/path)"),
            Err(e) => return Response::error(400, &format!("cannot forward this target: {e}")),
        };
        let mut builder = ureq::http::Request::builder()
            .method(req.method.as_str())
            .uri(uri);
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
            if !req.path.starts_with('/') {
                return Response::error(400, "only origin-form request-targets (/path)");
            }
            if !g.cfg.forward_tuk && is_tuk_path(&req.path) {
                return Response::error(
                    403,
                    "the gateway does not forward /_tuk/*: the instance's admin endpoints are \
                     for the operator's network (its admin listener), not the gateway's clients \
                     (start the gateway with --forward-tuk to forward them)",
                );
            }
            match g.admit() {
                Ok(()) => g.forward(req),
                Err(reason) => Response::error(503, &format!("not forwarded: {reason}"))
                    .with_header("Retry-After", "1"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuk_paths_in_every_spelling() {
        for p in [
            "/_tuk",
            "/_tuk/",
            "/_tuk/status",
            "/%5Ftuk/status",
            "/%5ftuk/status",
            "//_tuk/status",
            "/./_tuk/status",
            "/_TUK/eventlog",
            "/%2F_tuk/x",
            "/_tuk;x/y",
            "/\\_tuk/x",
        ] {
            assert!(is_tuk_path(p), "{p}");
        }
        for p in ["/", "/_tukx", "/hello/_tuk", "/x/%5Ftuk", "/tuk", "/%5"] {
            assert!(!is_tuk_path(p), "{p}");
        }
    }

    #[test]
    fn base_urls_are_normalised_and_strict() {
        let a = parse_base("HTTP://LocalHost:80/").unwrap();
        assert_eq!(a.base(), "http://localhost");
        assert!(a.same(&parse_base("http://localhost").unwrap()));
        assert!(!a.same(&parse_base("https://localhost").unwrap()));
        assert!(!a.same(&parse_base("http://localhost:8080").unwrap()));
        let b = parse_base("https://127.0.0.1:443").unwrap();
        assert_eq!(b.base(), "https://127.0.0.1");
        for bad in [
            "127.0.0.1:8080",
            "ftp://x",
            "http://u:p@h:1",
            "http://h:1/prefix",
            "http://h:1/?q",
            "http://",
        ] {
            assert!(parse_base(bad).is_err(), "{bad}");
        }
    }
}
