//! `tuk verifier serve`: the verifier service (docs/verifier.md; the REST contract is
//! docs/verifier.openapi.yaml).
//!
//! - **Registration** (`POST /v1/instances`): the instance's identity is verified (EK
//!   certificate chain to the vTPM CA, AK) and its AK bound to the EK by credential activation
//!   ([`tuk_attest::register`]); the identity document is stored.
//! - **Continuous attestation**: every `interval`, each instance is quoted for a fresh nonce
//!   with its registered AK and appraised against the reference values
//!   ([`tuk_attest::quote`]): the signed kernel reference, the trust policy of the signed
//!   component bundles. Each result is an EAR claims set signed as a JWT ([`ear`]) and stored
//!   with its status; an instance that cannot be reached gets an `unavailable` record.
//! - **Notifications**: when an instance's status changes, every webhook gets a POST
//!   (retried with backoff, on a thread of its own so a slow hook delays no attestation).
//! - **State** lives in the [`store::Store`] (SQLite file or PostgreSQL): a restarted
//!   verifier reloads its instances (re-checking their stored identities), history and
//!   webhooks, and goes on.
#![forbid(unsafe_code)]

pub mod api;
pub mod ear;
pub mod metrics;
pub mod store;

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tuk_attest::appraise::VerifiedIdentity;
use tuk_attest::evidence::Identity;
use tuk_attest::{Attester, HttpAttester, References};

use crate::ear::EarSigner;
use crate::metrics::Metrics;
use crate::store::{InstanceRow, ResultRow, Store, StoreError};

/// Status of an instance with no result yet.
pub const PENDING: &str = "pending";
/// Status of an attestation that could not be carried out (unreachable, malformed evidence).
pub const UNAVAILABLE: &str = "unavailable";

/// How the service runs.
pub struct Config {
    /// Attest every instance this often.
    pub interval: Duration,
    /// What evidence is appraised against.
    pub refs: References,
    /// Attestations in flight at once.
    pub workers: usize,
    /// Bounds each request to an instance or a webhook.
    pub timeout: Duration,
    /// Results older than this are deleted (each instance's latest is kept); None keeps all.
    pub retention: Option<Duration>,
}

/// An instance as the service tracks it.
#[derive(Clone)]
struct Live {
    row: InstanceRow,
    /// None when the stored identity no longer verifies (e.g. the CA changed).
    identity: Result<VerifiedIdentity, String>,
    latest: Option<ResultRow>,
    due: Instant,
    busy: bool,
}

/// A status change, for the webhooks.
struct Change {
    instance: String,
    url: String,
    previous: String,
    result: ResultRow,
}

/// The service. Shared by the HTTP handlers and the attestation threads.
pub struct Verifier {
    cfg: Config,
    store: Store,
    signer: EarSigner,
    metrics: Metrics,
    instances: RwLock<BTreeMap<String, Live>>,
    changes: Mutex<Sender<Change>>,
    started: Instant,
}

/// Errors a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("registration refused: {0}")]
    Refused(String),
    #[error("cannot attest: {0}")]
    Unavailable(String),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A valid instance id: what a client may choose (`[a-z0-9-]`, 1-63 characters).
pub fn valid_id(id: &str) -> bool {
    tuk_measure::valid_name(id)
}

impl Verifier {
    /// Opens the service on `store`, reloading every registered instance, and starts the
    /// scheduler, the attestation workers and the webhook notifier.
    pub fn start(
        cfg: Config,
        store: Store,
        signer: EarSigner,
    ) -> Result<Arc<Verifier>, StoreError> {
        let (tx, rx) = mpsc::channel();
        let metrics = Metrics::default();
        let mut instances = BTreeMap::new();
        for row in store.instances()? {
            let identity = restore_identity(&row, &cfg.refs);
            if let Err(e) = &identity {
                eprintln!("tuk-verifier: instance {}: {e}", row.id);
            }
            let latest = store.results(&row.id, 1, None)?.into_iter().next();
            instances.insert(
                row.id.clone(),
                Live {
                    row,
                    identity,
                    latest,
                    due: Instant::now(),
                    busy: false,
                },
            );
        }
        let v = Arc::new(Verifier {
            cfg,
            store,
            signer,
            metrics,
            instances: RwLock::new(instances),
            changes: Mutex::new(tx),
            started: Instant::now(),
        });
        spawn_notifier(Arc::clone(&v), rx);
        spawn_scheduler(Arc::clone(&v));
        Ok(v)
    }

    pub fn interval(&self) -> Duration {
        self.cfg.interval
    }

    pub fn signer(&self) -> &EarSigner {
        &self.signer
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Registers the instance at `url` as `id` (a random id when None).
    pub fn register(&self, url: &str, id: Option<&str>) -> Result<Value, ServiceError> {
        let id = match id {
            Some(id) if !valid_id(id) => {
                return Err(ServiceError::BadRequest(format!(
                    "id {id:?} is not valid: use [a-z0-9-], 1 to 63 characters"
                )))
            }
            Some(id) => id.to_owned(),
            None => tuk_measure::hex(&tuk_attest::attester::random_bytes(8)),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
            return Err(ServiceError::BadRequest(format!(
                "url {:?} is not an http:// URL of an instance",
                url.chars().take(100).collect::<String>()
            )));
        }
        if self.read().contains_key(&id) {
            return Err(ServiceError::Conflict(format!(
                "instance {id} is registered already: DELETE /v1/instances/{id} first"
            )));
        }
        let mut attester = HttpAttester::new(url, self.cfg.timeout);
        let identity = attester
            .identity()
            .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        let verified =
            tuk_attest::attester::register_identity(&mut attester, &identity, &self.cfg.refs.ca)
                .map_err(|e| ServiceError::Unavailable(e.to_string()))?
                .map_err(|r| {
                    self.metrics.registration(false);
                    ServiceError::Refused(r.to_string())
                })?;
        self.metrics.registration(true);
        let row = InstanceRow {
            id: id.clone(),
            url: url.to_owned(),
            registered_at: now_ms(),
            identity: identity.to_json().to_string(),
        };
        self.store.put_instance(&row)?;
        let ak_name = tuk_measure::hex(&verified.ak.name());
        let mut map = self.write();
        if map.contains_key(&id) {
            return Err(ServiceError::Conflict(format!(
                "instance {id} was registered meanwhile"
            )));
        }
        map.insert(
            id.clone(),
            Live {
                row,
                identity: Ok(verified),
                latest: None,
                due: Instant::now(),
                busy: false,
            },
        );
        drop(map);
        Ok(json!({"id": id, "url": url, "ak_name": ak_name, "status": PENDING}))
    }

    /// Forgets an instance and its history.
    pub fn remove(&self, id: &str) -> Result<(), ServiceError> {
        if self.write().remove(id).is_none() {
            return Err(not_found(id));
        }
        self.store.delete_instance(id)?;
        Ok(())
    }

    /// Every instance's summary.
    pub fn list(&self) -> Vec<Value> {
        self.read().values().map(|l| self.summary(l)).collect()
    }

    /// One instance's summary with its latest result.
    pub fn get(&self, id: &str) -> Result<Value, ServiceError> {
        let map = self.read();
        let live = map.get(id).ok_or_else(|| not_found(id))?;
        let mut s = self.summary(live);
        s["latest"] = live.latest.as_ref().map_or(Value::Null, result_json);
        Ok(s)
    }

    /// An instance's history, newest first.
    pub fn history(
        &self,
        id: &str,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Value, ServiceError> {
        if !self.read().contains_key(id) {
            return Err(not_found(id));
        }
        let rows = self.store.results(id, limit.clamp(1, 1000), before)?;
        Ok(json!({"instance": id, "results": rows.iter().map(result_json).collect::<Vec<_>>()}))
    }

    /// Attests `id` now (waits for it) and returns the stored result.
    pub fn attest_now(&self, id: &str) -> Result<Value, ServiceError> {
        {
            let mut map = self.write();
            let live = map.get_mut(id).ok_or_else(|| not_found(id))?;
            if live.busy {
                return Err(ServiceError::Conflict(format!(
                    "instance {id} is being attested right now; retry"
                )));
            }
            live.busy = true;
        }
        let row = self.attest_one(id);
        Ok(result_json(&row))
    }

    fn summary(&self, l: &Live) -> Value {
        let (status, at) = l
            .latest
            .as_ref()
            .map_or((PENDING.to_owned(), Value::Null), |r| {
                (r.status.clone(), Value::from(r.at))
            });
        json!({
            "id": l.row.id,
            "url": l.row.url,
            "registered_at": l.row.registered_at,
            "status": status,
            "at": at,
            "interval_ms": self.cfg.interval.as_millis() as u64,
            "identity_error": l.identity.as_ref().err(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Live>> {
        self.instances.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Live>> {
        self.instances.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts of instances per status, for the metrics.
    pub fn status_counts(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for l in self.read().values() {
            let s = l.latest.as_ref().map_or(PENDING, |r| r.status.as_str());
            *out.entry(s.to_owned()).or_insert(0) += 1;
        }
        out
    }

    /// One attestation of `id` (which the caller marked busy): quote, appraise, sign, store,
    /// notify. Never fails: an error becomes an `unavailable` record.
    fn attest_one(&self, id: &str) -> ResultRow {
        let Some(live) = self.read().get(id).cloned() else {
            return ResultRow {
                seq: 0,
                instance: id.into(),
                at: now_ms(),
                status: UNAVAILABLE.into(),
                ear: None,
                error: Some("the instance was removed".into()),
            };
        };
        let started = Instant::now();
        let outcome = match &live.identity {
            Err(e) => Err(e.clone()),
            Ok(identity) => {
                let mut attester = HttpAttester::new(&live.row.url, self.cfg.timeout);
                tuk_attest::quote(&mut attester, identity, &self.cfg.refs)
                    .map_err(|e| e.to_string())
            }
        };
        let mut row = match outcome {
            Ok(result) => {
                let mut claims = result.to_ear();
                claims["ear_verifier_id"]["build"] =
                    Value::from(concat!("tuk-verifier ", env!("CARGO_PKG_VERSION")));
                claims["tuk_instance"] = Value::from(id);
                ResultRow {
                    seq: 0,
                    instance: id.into(),
                    at: now_ms(),
                    status: result.status().as_str().to_owned(),
                    ear: Some(self.signer.sign(&claims)),
                    error: result.refusal.clone(),
                }
            }
            Err(e) => ResultRow {
                seq: 0,
                instance: id.into(),
                at: now_ms(),
                status: UNAVAILABLE.into(),
                ear: None,
                error: Some(e),
            },
        };
        self.metrics.attestation(&row.status, started.elapsed());
        match self.store.add_result(&row) {
            Ok(seq) => row.seq = seq,
            Err(e) => {
                // Not stored: keep serving the fresh result, say so, and retry next interval.
                self.metrics.store_error();
                eprintln!("tuk-verifier: cannot store the result for {id}: {e}");
            }
        }
        let previous = {
            let mut map = self.write();
            let Some(l) = map.get_mut(id) else {
                return row;
            };
            let previous = l
                .latest
                .as_ref()
                .map_or(PENDING.to_owned(), |r| r.status.clone());
            l.latest = Some(row.clone());
            l.busy = false;
            l.due = Instant::now() + self.cfg.interval;
            previous
        };
        if previous != row.status {
            let change = Change {
                instance: id.into(),
                url: live.row.url.clone(),
                previous,
                result: row.clone(),
            };
            let _ = self
                .changes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send(change);
        }
        row
    }

    /// Instances due for attestation, marked busy.
    fn take_due(&self) -> Vec<String> {
        let now = Instant::now();
        let mut map = self.write();
        map.values_mut()
            .filter(|l| !l.busy && l.due <= now)
            .map(|l| {
                l.busy = true;
                l.row.id.clone()
            })
            .collect()
    }
}

fn not_found(id: &str) -> ServiceError {
    ServiceError::NotFound(format!("no instance {id:?} is registered"))
}

/// Re-checks a stored identity (the certificate chain, the AK); credential activation was
/// done at registration and binds the AK for as long as the instance keeps its TPM.
fn restore_identity(row: &InstanceRow, refs: &References) -> Result<VerifiedIdentity, String> {
    let identity = Identity::from_json(row.identity.as_bytes())
        .map_err(|e| format!("stored identity does not parse: {e}; register it again"))?;
    tuk_attest::verify_identity(&identity, &refs.ca, SystemTime::now())
        .map_err(|e| format!("stored identity no longer verifies: {e}; register it again"))
}

/// A result as the API shows it: the record, and the EAR claims decoded from the signed JWT.
pub fn result_json(r: &ResultRow) -> Value {
    json!({
        "seq": r.seq,
        "at": r.at,
        "status": r.status,
        "error": r.error,
        "ear": r.ear,
        "claims": r.ear.as_deref().and_then(ear::claims_of),
    })
}

fn spawn_scheduler(v: Arc<Verifier>) {
    let (tx, rx) = mpsc::channel::<String>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..v.cfg.workers.max(1) {
        let v = Arc::clone(&v);
        let rx = Arc::clone(&rx);
        let _ = thread::Builder::new()
            .name(format!("attest-{i}"))
            .spawn(move || loop {
                let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                match next {
                    Ok(id) => {
                        v.attest_one(&id);
                    }
                    Err(_) => return,
                }
            });
    }
    let mut last_prune = Instant::now();
    let _ = thread::Builder::new()
        .name("attest-scheduler".into())
        .spawn(move || loop {
            if let Some(keep) = v.cfg.retention {
                if last_prune.elapsed() >= Duration::from_secs(60) {
                    last_prune = Instant::now();
                    let before = now_ms() - keep.as_millis() as i64;
                    if let Err(e) = v.store.prune(before) {
                        eprintln!("tuk-verifier: cannot prune old results: {e}");
                    }
                }
            }
            for id in v.take_due() {
                if tx.send(id).is_err() {
                    return;
                }
            }
            let tick =
                (v.cfg.interval / 20).clamp(Duration::from_millis(10), Duration::from_millis(250));
            thread::sleep(tick);
        });
}

fn spawn_notifier(v: Arc<Verifier>, rx: Receiver<Change>) {
    let _ = thread::Builder::new()
        .name("webhooks".into())
        .spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(v.cfg.timeout))
                .http_status_as_error(false)
                .max_redirects(0)
                .build()
                .into();
            for change in rx {
                let hooks = match v.store.webhooks() {
                    Ok(h) => h,
                    Err(e) => {
                        eprintln!("tuk-verifier: cannot read the webhooks: {e}");
                        continue;
                    }
                };
                let body = json!({
                    "event": "status-changed",
                    "instance": change.instance,
                    "url": change.url,
                    "previous": change.previous,
                    "status": change.result.status,
                    "seq": change.result.seq,
                    "at": change.result.at,
                    "error": change.result.error,
                    "ear": change.result.ear,
                })
                .to_string();
                for (_, url) in hooks {
                    let mut delivered = false;
                    for attempt in 0..3u32 {
                        let ok = agent
                            .post(&url)
                            .header("Content-Type", "application/json")
                            .send(body.as_bytes())
                            .is_ok_and(|r| r.status().is_success());
                        if ok {
                            delivered = true;
                            break;
                        }
                        thread::sleep(Duration::from_millis(250 << attempt));
                    }
                    v.metrics.webhook(delivered);
                    if !delivered {
                        eprintln!(
                            "tuk-verifier: webhook {url} failed 3 times; dropped this notification"
                        );
                    }
                }
            }
        });
}
