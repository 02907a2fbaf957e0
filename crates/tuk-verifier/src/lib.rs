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
//!   The signed claims name what was attested (`tuk_url`, `tuk_service_url`, `tuk_ak_name`)
//!   and until when the result may be relied on (`exp`: `iat` + 2 intervals).
//! - **Binding**: one AK is registered under one id only; re-pointing an id needs
//!   `"replace": true` and is recorded in the audit log, as are registrations and deletions.
//! - **TPM counters**: the last quote's reset count, restart count and clock are kept per AK;
//!   a quote that goes back (a lower reset count, or the same reset count with a lower restart
//!   count or a lower clock) is a rollback and the result contraindicated.
//! - **Notifications**: when an instance's status changes, every webhook gets a POST
//!   ([`webhook`]: public targets only by default; the notification is stored in the outbox
//!   with the result and delivered at least once by any process, with an idempotency key;
//!   one delivery thread per hook, so a slow hook delays no attestation and no other hook).
//! - **Access**: bearer tokens with a scope ([`auth`]); the API checks them ([`api`]).
//! - **State** lives in the [`store::Store`] (SQLite file or PostgreSQL): a restarted
//!   verifier reloads its instances (re-checking their stored identities), history and
//!   webhooks, and goes on.
//! - **Scale-out** (PostgreSQL only; docs/verifier.md "Scaling out"): several processes on
//!   one database share the fleet through per-instance leases ([`lease_ttl`]), claimed with
//!   `FOR UPDATE SKIP LOCKED` and renewed while attesting; each result is stored (gap-free
//!   `seq`) and its status change decided, and its notification queued, in one transaction,
//!   so one notification exists per change and survives the process;
//!   registrations reach every process through a change counter. SQLite is one process.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod ear;
pub mod metrics;
pub mod store;
pub mod webhook;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};
use tuk_attest::appraise::VerifiedIdentity;
use tuk_attest::evidence::Identity;
use tuk_attest::monitor_report;
use tuk_attest::result::{value, AttestationResult, Claim};
use tuk_attest::{Attester, HttpAttester, References};

use crate::ear::EarSigner;
use crate::metrics::Metrics;
use crate::store::{AuditRow, InstanceRow, ResultRow, Store, StoreError, Stored};
use crate::webhook::Delivery;

/// What an appraisal gives: (status, signed EAR, error, the event log it replayed).
type Appraisal = (
    String,
    String,
    Option<String>,
    Option<Vec<tuk_measure::eventlog::Record>>,
);

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
    /// Instances registered at most.
    pub max_instances: usize,
    /// Allow webhooks to loopback, private, link-local and multicast addresses.
    pub webhook_allow_private: bool,
    /// Keys an out-of-guest monitor report must be signed by (the launcher hosts'
    /// monitor.pub; `--monitor-key`). Registering a `monitor_url` needs at least one.
    pub monitor_keys: Vec<tuk_measure::policy::TrustedKey>,
    /// Every instance must have a verified, fresh, clean monitor report to be affirming
    /// (`--require-monitor`); without it, only instances registered with a `monitor_url` are
    /// checked.
    pub require_monitor: bool,
}

/// `POST /v1/instances`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The URL attestation talks to (the instance's admin URL).
    pub url: String,
    #[serde(default)]
    pub id: Option<String>,
    /// The instance's service URL (what a gateway forwards to).
    #[serde(default)]
    pub service_url: Option<String>,
    /// Where the out-of-guest monitor's signed report is served (`tuk run
    /// --monitor-report-listen`'s `monitor_report`); fetched with every attestation.
    #[serde(default)]
    pub monitor_url: Option<String>,
    /// Re-point an existing id (recorded in the audit log).
    #[serde(default)]
    pub replace: bool,
}

/// The TPM's counters in a quote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TpmClock {
    reset_count: u64,
    restart_count: u64,
    clock: u64,
}

/// An instance as the service tracks it.
#[derive(Clone)]
struct Live {
    row: InstanceRow,
    /// None when the stored identity no longer verifies (e.g. the CA changed).
    identity: Result<VerifiedIdentity, String>,
    latest: Option<ResultRow>,
    due: Instant,
    /// Set while an attestation runs: the generation it began for. A replacement keeps it,
    /// so no second attestation of the same TPM starts before that one ends.
    busy: Option<u64>,
    /// Changes on every replacement: an attestation that began before does not update it.
    generation: u64,
}

/// The service. Shared by the HTTP handlers and the attestation threads.
pub struct Verifier {
    cfg: Config,
    store: Arc<Store>,
    signer: EarSigner,
    metrics: Arc<Metrics>,
    instances: RwLock<BTreeMap<String, Live>>,
    /// The webhook delivery threads, draining the store's outbox.
    delivery: Delivery,
    started: Instant,
    /// The last quote's TPM counters per AK name (hex).
    clocks: Mutex<BTreeMap<String, TpmClock>>,
    /// Per instance (id and AK): the highest monitor report `seq` accepted.
    monitor_seqs: Mutex<BTreeMap<String, u64>>,
    generations: std::sync::atomic::AtomicU64,
    /// PostgreSQL: the fleet is shared with other processes through leases.
    shared: Option<Shared>,
}

/// A process's part in a fleet shared through PostgreSQL (docs/verifier.md, "Scaling out").
struct Shared {
    /// This process's lease holder id (random, with the host name and pid for operators).
    holder: String,
    /// How long a lease holds without renewal: [`lease_ttl`].
    ttl_ms: i64,
    /// The registration-change count last loaded.
    fleet_seen: std::sync::atomic::AtomicI64,
}

/// How long a lease holds without renewal: 3 intervals, at least 2 s. A process renews its
/// leases every third of it while it attests, so one that dies loses them within this time
/// and another process takes the instances over.
pub fn lease_ttl(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(2))
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
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Checks a URL a client registers: `http(s)://`, at most 2048 bytes.
fn check_url(what: &str, url: &str) -> Result<(), ServiceError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
        return Err(ServiceError::BadRequest(format!(
            "{what} {:?} is not an http:// or https:// URL of an instance (at most 2048 bytes)",
            url.chars().take(100).collect::<String>()
        )));
    }
    Ok(())
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
        let metrics = Arc::new(Metrics::default());
        let mut instances = BTreeMap::new();
        for mut row in store.instances()? {
            let identity = restore_identity(&row, &cfg.refs);
            if let Err(e) = &identity {
                eprintln!("tuk-verifier: instance {}: {e}", row.id);
            }
            if row.ak_name.is_empty() {
                // Registered by an older verifier: the AK's name from its stored identity.
                if let Ok(v) = &identity {
                    row.ak_name = tuk_measure::hex(&v.ak.name());
                }
            }
            let latest = store.results(&row.id, 1, None)?.into_iter().next();
            instances.insert(
                row.id.clone(),
                Live {
                    row,
                    identity,
                    latest,
                    due: Instant::now(),
                    busy: None,
                    generation: 0,
                },
            );
        }
        let clocks = store
            .tpm_clocks()?
            .into_iter()
            .map(|(ak, reset_count, restart_count, clock)| {
                (
                    ak,
                    TpmClock {
                        reset_count,
                        restart_count,
                        clock,
                    },
                )
            })
            .collect();
        let holder = format!(
            "{}-{}-{}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            std::process::id(),
            tuk_measure::hex(&tuk_attest::attester::random_bytes(4))
        );
        let delivery = Delivery::new(
            cfg.webhook_allow_private,
            cfg.timeout,
            Arc::clone(&metrics),
            holder.clone(),
        );
        let shared = (store.kind() == "postgresql").then(|| Shared {
            holder,
            ttl_ms: i64::try_from(lease_ttl(cfg.interval).as_millis()).unwrap_or(i64::MAX),
            fleet_seen: std::sync::atomic::AtomicI64::new(store.fleet_version().unwrap_or(-1)),
        });
        let v = Arc::new(Verifier {
            cfg,
            store: Arc::new(store),
            signer,
            metrics,
            instances: RwLock::new(instances),
            delivery,
            started: Instant::now(),
            clocks: Mutex::new(clocks),
            monitor_seqs: Mutex::default(),
            generations: std::sync::atomic::AtomicU64::new(1),
            shared,
        });
        spawn_notifier(Arc::clone(&v));
        spawn_scheduler(Arc::clone(&v));
        Ok(v)
    }

    pub fn interval(&self) -> Duration {
        self.cfg.interval
    }

    /// PostgreSQL: this process's lease holder id and the lease time (the fleet is shared
    /// with every process on the same database); None with SQLite (one process).
    pub fn lease(&self) -> Option<(&str, Duration)> {
        self.shared.as_ref().map(|sh| {
            (
                sh.holder.as_str(),
                Duration::from_millis(u64::try_from(sh.ttl_ms).unwrap_or(0)),
            )
        })
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

    /// Whether webhooks may target private addresses.
    pub fn webhook_allow_private(&self) -> bool {
        self.cfg.webhook_allow_private
    }

    fn audit(&self, instance: &str, action: &str, actor: &str, detail: Value) {
        let row = AuditRow {
            at: now_ms(),
            instance: instance.to_owned(),
            action: action.to_owned(),
            actor: actor.to_owned(),
            detail: detail.to_string(),
        };
        if let Err(e) = self.store.add_audit(&row) {
            self.metrics.store_error();
            eprintln!("tuk-verifier: cannot store the audit record {action} {instance}: {e}");
        }
    }

    /// The audit log, newest first (of one instance if given).
    pub fn audit_log(&self, instance: Option<&str>, limit: i64) -> Result<Value, ServiceError> {
        let rows = self.store.audit(instance, limit.clamp(1, 1000))?;
        let records: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "at": r.at,
                    "instance": r.instance,
                    "action": r.action,
                    "actor": r.actor,
                    "detail": serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::Null),
                })
            })
            .collect();
        Ok(json!({"audit": records}))
    }

    /// Registers the instance at `r.url` as `r.id` (a random id when None) on behalf of
    /// `actor` (a token id, for the audit log).
    pub fn register(&self, r: &Registration, actor: &str) -> Result<Value, ServiceError> {
        let id = match &r.id {
            Some(id) if !valid_id(id) => {
                return Err(ServiceError::BadRequest(format!(
                    "id {id:?} is not valid: use [a-z0-9-], 1 to 63 characters"
                )))
            }
            Some(id) => id.clone(),
            None => tuk_measure::hex(&tuk_attest::attester::random_bytes(8)),
        };
        let url = r.url.as_str();
        check_url("url", url)?;
        if let Some(s) = &r.service_url {
            check_url("service_url", s)?;
        }
        if let Some(m) = &r.monitor_url {
            check_url("monitor_url", m)?;
            if self.cfg.monitor_keys.is_empty() {
                return Err(ServiceError::BadRequest(
                    "monitor_url needs a monitor key to check its reports with: start the \
                     verifier with --monitor-key (the launcher host's monitor.pub)"
                        .into(),
                ));
            }
        }
        self.may_register(&id, r.replace)?;
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
        let ak_name = tuk_measure::hex(&verified.ak.name());
        let row = InstanceRow {
            id: id.clone(),
            url: url.to_owned(),
            registered_at: now_ms(),
            identity: identity.to_json().to_string(),
            service_url: r.service_url.clone(),
            ak_name: ak_name.clone(),
            monitor_url: r.monitor_url.clone(),
        };
        // Checked again under the lock: nothing may have changed since may_register.
        let mut map = self.write();
        self.may_register_locked(&map, &id, r.replace)?;
        if let Some((other, _)) = map
            .iter()
            .find(|(other, l)| **other != id && l.row.ak_name == ak_name)
        {
            return Err(ServiceError::Conflict(format!(
                "this instance (AK {ak_name}) is registered already as instance {other}: one \
                 instance is registered under one id only (DELETE /v1/instances/{other} first)"
            )));
        }
        self.store.put_instance(&row)?;
        self.metrics.registration(true);
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let busy = map.get(&id).and_then(|l| l.busy);
        let old = map.insert(
            id.clone(),
            Live {
                row: row.clone(),
                identity: Ok(verified),
                latest: None,
                due: Instant::now(),
                busy,
                generation,
            },
        );
        drop(map);
        let replaced = old.is_some();
        let new = json!({"url": row.url, "service_url": row.service_url,
                        "monitor_url": row.monitor_url, "ak_name": ak_name});
        match old {
            Some(old) => self.audit(
                &id,
                "replace",
                actor,
                json!({
                    "old": {
                        "url": old.row.url,
                        "service_url": old.row.service_url,
                        "ak_name": old.row.ak_name,
                        "registered_at": old.row.registered_at,
                    },
                    "new": new,
                }),
            ),
            None => self.audit(&id, "register", actor, json!({"new": new})),
        }
        Ok(json!({
            "id": id,
            "url": url,
            "service_url": row.service_url,
            "monitor_url": row.monitor_url,
            "ak_name": ak_name,
            "status": PENDING,
            "replaced": replaced,
        }))
    }

    /// Whether `id` may be (re-)registered now; before the instance is contacted.
    fn may_register(&self, id: &str, replace: bool) -> Result<(), ServiceError> {
        self.may_register_locked(&self.read(), id, replace)
    }

    fn may_register_locked(
        &self,
        map: &BTreeMap<String, Live>,
        id: &str,
        replace: bool,
    ) -> Result<(), ServiceError> {
        match map.get(id) {
            Some(l) if !replace => Err(ServiceError::Conflict(format!(
                "instance {id} is registered already (url {}): send \"replace\": true to \
                 re-point it (recorded in the audit log), or DELETE /v1/instances/{id} first",
                l.row.url
            ))),
            Some(_) => Ok(()),
            None if map.len() >= self.cfg.max_instances => Err(ServiceError::Conflict(format!(
                "the verifier has {} instances registered, its limit (--max-instances): \
                 delete one first or raise the limit",
                map.len()
            ))),
            None => Ok(()),
        }
    }

    /// Forgets an instance on behalf of `actor`. Its results stay in the store (they age out
    /// with the retention) and an audit record keeps what was registered and its last result.
    pub fn remove(&self, id: &str, actor: &str) -> Result<(), ServiceError> {
        let Some(old) = self.write().remove(id) else {
            return Err(not_found(id));
        };
        self.store.delete_instance(id)?;
        self.audit(
            id,
            "delete",
            actor,
            json!({
                "old": {
                    "url": old.row.url,
                    "service_url": old.row.service_url,
                    "ak_name": old.row.ak_name,
                    "registered_at": old.row.registered_at,
                },
                "last_result": old.latest.as_ref().map(|r| json!({
                    "seq": r.seq,
                    "at": r.at,
                    "status": r.status,
                })),
            }),
        );
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
        let latest = match &self.shared {
            // Another process may have attested it since this one last synced.
            Some(_) => self.store.results(id, 1, None)?.into_iter().next(),
            None => live.latest.clone(),
        };
        if let Some(r) = &latest {
            s["status"] = Value::from(r.status.as_str());
            s["at"] = Value::from(r.at);
        }
        s["latest"] = latest.as_ref().map_or(Value::Null, result_json);
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

    /// The event log of `id`'s latest attestation with evidence: every record with the value
    /// of its PCR after it was extended, and each PCR's replayed value (what the appraisal
    /// compared with the quote).
    pub fn eventlog(&self, id: &str) -> Result<Value, ServiceError> {
        if !self.read().contains_key(id) {
            return Err(not_found(id));
        }
        let Some((seq, at, log)) = self.store.eventlog(id)? else {
            // None yet: kept from the first attestation that got evidence.
            return Ok(
                json!({"instance": id, "seq": null, "at": null, "records": [],
                             "pcrs": {}, "replay_error": null}),
            );
        };
        let records: Vec<tuk_measure::eventlog::Record> = serde_json::from_str(&log)
            .map_err(|e| ServiceError::Unavailable(format!("the stored event log: {e}")))?;
        let mut pcrs: BTreeMap<u32, [u8; 32]> = BTreeMap::new();
        let mut rows = Vec::new();
        for r in &records {
            let digest = r.sha256().ok();
            let after = digest.map(|d| {
                let pcr = pcrs.entry(r.pcr).or_insert([0u8; 32]);
                *pcr = tuk_measure::eventlog::extend(pcr, &d);
                tuk_measure::hex(pcr)
            });
            rows.push(json!({
                "recnum": r.recnum,
                "pcr": r.pcr,
                "content_type": r.content_type,
                "digest": digest.map(|d| tuk_measure::hex(&d)),
                "content": r.content,
                "pcr_after": after,
            }));
        }
        let replay = tuk_measure::eventlog::replay(&records);
        Ok(json!({
            "instance": id,
            "seq": seq,
            "at": at,
            "records": rows,
            "pcrs": pcrs.iter().map(|(k, v)| (k.to_string(), Value::from(tuk_measure::hex(v))))
                .collect::<serde_json::Map<String, Value>>(),
            "replay_error": replay.err().map(|e| e.to_string()),
        }))
    }

    /// Attests `id` now (waits for it) and returns the stored result.
    pub fn attest_now(&self, id: &str) -> Result<Value, ServiceError> {
        {
            let mut map = self.write();
            let live = map.get_mut(id).ok_or_else(|| not_found(id))?;
            if live.busy.is_some() {
                return Err(ServiceError::Conflict(format!(
                    "instance {id} is being attested right now; retry"
                )));
            }
            if let Some(sh) = &self.shared {
                if !self.store.claim_one(&sh.holder, id, sh.ttl_ms)? {
                    return Err(ServiceError::Conflict(format!(
                        "instance {id} is being attested right now by another verifier process \
                         sharing this database; retry"
                    )));
                }
            }
            live.busy = Some(live.generation);
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
            "service_url": l.row.service_url,
            "monitor_url": l.row.monitor_url,
            "ak_name": l.row.ak_name,
            "registered_at": l.row.registered_at,
            "status": status,
            "at": at,
            "interval_ms": self.interval_ms(),
            "identity_error": l.identity.as_ref().err(),
        })
    }

    /// The attestation interval in ms.
    pub fn interval_ms(&self) -> u64 {
        u64::try_from(self.cfg.interval.as_millis()).unwrap_or(u64::MAX)
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
    /// notify. Never fails: an error, and a panic anywhere in the attestation, becomes an
    /// `unavailable` record.
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
        let mut eventlog = None;
        let outcome =
            catch_unwind(AssertUnwindSafe(|| self.appraise(id, &live))).unwrap_or_else(|panic| {
                self.metrics.panic();
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                eprintln!("tuk-verifier: the attestation of {id} panicked: {what}");
                Err(format!(
                    "the attestation failed inside the verifier (a panic: {what}); it is retried \
                     next interval"
                ))
            });
        let mut row = match outcome {
            Ok((status, ear, error, log)) => {
                eventlog = log;
                ResultRow {
                    seq: 0,
                    instance: id.into(),
                    at: now_ms(),
                    status,
                    ear: Some(ear),
                    error,
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
        let holder = self.shared.as_ref().map(|sh| sh.holder.as_str());
        let interval_ms = i64::try_from(self.interval_ms()).unwrap_or(i64::MAX);
        // Whether the status changed is decided in the storing transaction; None: not stored.
        // The webhook body of a status change; stored in the outbox with the result.
        let notify = |seq: i64, previous: &str| {
            json!({
                "event": "status-changed",
                "idempotency_key": format!("{id}:{seq}"),
                "instance": id,
                "url": live.row.url,
                "previous": previous,
                "status": row.status,
                "seq": seq,
                "at": row.at,
                "error": row.error,
                "ear": row.ear,
            })
            .to_string()
        };
        let stored = self.store.add_result_leased(
            &row,
            holder,
            live.row.registered_at,
            interval_ms,
            Some(&notify),
        );
        match stored {
            Ok(Stored::Added {
                seq, notifications, ..
            }) => {
                row.seq = seq;
                if let Some(log) = &eventlog {
                    let stored = serde_json::to_string(log)
                        .map_err(|e| e.to_string())
                        .and_then(|log| {
                            self.store
                                .put_eventlog(id, seq, row.at, &log)
                                .map_err(|e| e.to_string())
                        });
                    if let Err(e) = stored {
                        self.metrics.store_error();
                        eprintln!("tuk-verifier: cannot store the event log of {id}: {e}");
                    }
                }
                if notifications > 0 {
                    // A hook added a moment ago gets its thread now, not at the next sync.
                    if let Ok(hooks) = self.store.webhooks() {
                        self.delivery.sync(&hooks, &self.store);
                    }
                    self.delivery.wake();
                }
            }
            Ok(Stored::LeaseLost { holder }) => {
                // This process was too slow: another took the instance over (its result
                // counts); this one is dropped.
                eprintln!(
                    "tuk-verifier: the result for {id} is not stored: its lease passed to \
                     {holder} while this process attested"
                );
                if let Some(l) = self.write().get_mut(id) {
                    if l.busy == Some(live.generation) {
                        l.busy = None;
                    }
                }
                return row;
            }
            Err(e) => {
                // Not stored (nor its notification): keep serving the fresh result, say so,
                // and retry next interval.
                self.metrics.store_error();
                eprintln!("tuk-verifier: cannot store the result for {id}: {e}");
                if let Some(sh) = &self.shared {
                    let _ = self.store.release_lease(&sh.holder, id, interval_ms);
                }
            }
        }
        {
            let mut map = self.write();
            let Some(l) = map.get_mut(id) else {
                return row;
            };
            if l.generation != live.generation {
                // Re-pointed while this attestation ran: the result is about the old
                // registration (stored, with its URL and AK in the claims), not the new one,
                // which is attested next.
                if l.busy == Some(live.generation) {
                    l.busy = None;
                    l.due = Instant::now();
                }
                return row;
            }
            l.latest = Some(row.clone());
            l.busy = None;
            l.due = Instant::now() + self.cfg.interval;
        }
        row
    }

    /// Quote, appraisal, the TPM counters' check, signing: (status, signed EAR, error).
    fn appraise(&self, id: &str, live: &Live) -> Result<Appraisal, String> {
        let identity = live.identity.as_ref().map_err(Clone::clone)?;
        let mut attester = HttpAttester::new(&live.row.url, self.cfg.timeout);
        let mut tap = monitor_report::EvidenceTap::new(&mut attester);
        let mut result =
            tuk_attest::quote(&mut tap, identity, &self.cfg.refs).map_err(|e| e.to_string())?;
        let evidence = tap.evidence.take();
        let eventlog = evidence.as_ref().map(|e| e.eventlog.clone());
        self.check_monitor(id, live, evidence.as_ref(), &mut result);
        let rollback = self.check_tpm_clock(&live.row.ak_name, &mut result);
        let mut claims = result.to_ear();
        claims["ear_verifier_id"]["build"] =
            Value::from(concat!("tuk-verifier ", env!("CARGO_PKG_VERSION")));
        claims["tuk_instance"] = Value::from(id);
        claims["tuk_url"] = Value::from(live.row.url.as_str());
        if let Some(s) = &live.row.service_url {
            claims["tuk_service_url"] = Value::from(s.as_str());
        }
        claims["tuk_ak_name"] = Value::from(live.row.ak_name.as_str());
        // Valid for at least two intervals from its making: `iat` is truncated to whole
        // seconds, so one second more keeps a result made late in a second from expiring
        // before two intervals have passed (a gateway would otherwise flap under load).
        let window = self
            .interval_ms()
            .saturating_mul(2)
            .div_ceil(1000)
            .max(1)
            .saturating_add(1);
        claims["exp"] = Value::from(result.issued_at.saturating_add(window));
        let error = result.refusal.clone().or(rollback);
        Ok((
            result.status().as_str().to_owned(),
            self.signer.sign(&claims),
            error,
            eventlog,
        ))
    }

    /// The out-of-guest monitor's report (docs/verifier.md, "Monitor reports"): fetched after
    /// the quote from the registered `monitor_url` and appraised next to it; its `seq` may not
    /// go back per instance. Without a `monitor_url`, a verifier that requires a monitor
    /// gives a warning.
    fn check_monitor(
        &self,
        id: &str,
        live: &Live,
        evidence: Option<&tuk_attest::evidence::Evidence>,
        result: &mut AttestationResult,
    ) {
        let fetched = match &live.row.monitor_url {
            Some(url) => monitor_report::fetch(url, self.cfg.timeout),
            None if self.cfg.require_monitor => Err(monitor_report::ReportError::Missing(
                "the instance is registered without a monitor_url, and this verifier requires \
                 one (--require-monitor): register it again with \"monitor_url\""
                    .into(),
            )),
            None => return,
        };
        let mut seqs = self.monitor_seqs.lock().unwrap_or_else(|p| p.into_inner());
        let key = format!("{id} {}", live.row.ak_name);
        let last = seqs.get(&key).copied();
        if let Some(seq) =
            monitor_report::appraise_report(result, evidence, fetched, &self.cfg.monitor_keys, last)
        {
            seqs.insert(key, seq);
        }
    }

    /// Compares the quote's TPM counters with the last ones of the same AK, keeps the new ones
    /// (in memory and in the store), and contraindicates a rollback: a lower reset count, or
    /// the same reset count with a lower restart count or a lower clock. Returns the reason
    /// of a rollback.
    fn check_tpm_clock(&self, ak_name: &str, result: &mut AttestationResult) -> Option<String> {
        let kernel = result.submods.get_mut("kernel")?;
        let tpm = kernel.facts.get("tpm")?;
        let now = TpmClock {
            reset_count: tpm.get("reset_count")?.as_u64()?,
            restart_count: tpm.get("restart_count")?.as_u64()?,
            clock: tpm.get("clock_ms")?.as_u64()?,
        };
        if result.refusal.is_some() {
            // A refused quote proves nothing about the TPM's counters.
            return None;
        }
        let mut clocks = self.clocks.lock().unwrap_or_else(|p| p.into_inner());
        if self.shared.is_some() {
            // Other processes quote this AK too: compare with the latest counters any of them
            // kept.
            match self.store.tpm_clock(ak_name) {
                Ok(Some((reset_count, restart_count, clock))) => {
                    clocks.insert(
                        ak_name.to_owned(),
                        TpmClock {
                            reset_count,
                            restart_count,
                            clock,
                        },
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    self.metrics.store_error();
                    eprintln!("tuk-verifier: cannot read the TPM counters of AK {ak_name}: {e}");
                }
            }
        }
        let reason = clocks
            .get(ak_name)
            .filter(|last| is_rollback(last, &now))
            .map(|last| {
                format!(
                    "the TPM's counters went back (reset count {}, restart count {}, clock {} ms \
                     after reset count {}, restart count {}, clock {} ms in an earlier quote of \
                     this AK): a rolled-back or replayed TPM state",
                    now.reset_count,
                    now.restart_count,
                    now.clock,
                    last.reset_count,
                    last.restart_count,
                    last.clock
                )
            });
        match &reason {
            Some(r) => kernel.claim(
                Claim::InstanceIdentity,
                value::UNRECOGNIZED_INSTANCE,
                Some(r.clone()),
            ),
            None => {
                clocks.insert(ak_name.to_owned(), now);
                drop(clocks);
                let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                if let Err(e) = self.store.put_tpm_clock(
                    ak_name,
                    to_i64(now.reset_count),
                    to_i64(now.restart_count),
                    to_i64(now.clock),
                ) {
                    self.metrics.store_error();
                    eprintln!("tuk-verifier: cannot store the TPM counters of AK {ak_name}: {e}");
                }
            }
        }
        reason
    }

    /// Marks `id` not busy (after a worker lost its attestation to a panic).
    fn release(&self, id: &str) {
        if let Some(l) = self.write().get_mut(id) {
            l.busy = None;
            l.due = Instant::now() + self.cfg.interval;
        }
        if let Some(sh) = &self.shared {
            let next = i64::try_from(self.interval_ms()).unwrap_or(i64::MAX);
            if let Err(e) = self.store.release_lease(&sh.holder, id, next) {
                eprintln!("tuk-verifier: cannot release the lease of {id}: {e}");
            }
        }
    }

    /// Shared fleet: instances this process claims now (due, not leased by another process),
    /// marked busy; at most as many as it has idle workers.
    fn claim_due(&self, sh: &Shared) -> Vec<String> {
        let busy = self.read().values().filter(|l| l.busy.is_some()).count();
        let idle = self.cfg.workers.max(1).saturating_sub(busy);
        if idle == 0 {
            return Vec::new();
        }
        let claimed =
            match self
                .store
                .claim_due(&sh.holder, sh.ttl_ms, i64::try_from(idle).unwrap_or(1))
            {
                Ok(c) => c,
                Err(e) => {
                    self.metrics.store_error();
                    eprintln!("tuk-verifier: cannot claim due instances: {e}");
                    return Vec::new();
                }
            };
        if claimed.is_empty() {
            return claimed;
        }
        if claimed.iter().any(|id| !self.read().contains_key(id)) {
            // Registered through another process since the last reload.
            self.reload_instances(sh, true);
        }
        let mut out = Vec::new();
        let mut map = self.write();
        for id in claimed {
            match map.get_mut(&id) {
                Some(l) if l.busy.is_none() => {
                    l.busy = Some(l.generation);
                    out.push(id);
                }
                _ => {
                    let next = i64::try_from(self.interval_ms()).unwrap_or(i64::MAX);
                    let _ = self.store.release_lease(&sh.holder, &id, next);
                }
            }
        }
        out
    }

    /// Shared fleet: reloads the registered instances when another process changed them (a
    /// counter in the database; `force` reloads anyway). Instances attesting keep their
    /// in-flight state.
    fn reload_instances(&self, sh: &Shared, force: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let version = match self.store.fleet_version() {
            Ok(v) => v,
            Err(e) => {
                eprintln!("tuk-verifier: cannot read the registration counter: {e}");
                return;
            }
        };
        if !force && version == sh.fleet_seen.load(Relaxed) {
            return;
        }
        let rows = match self.store.instances() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("tuk-verifier: cannot reload the instances: {e}");
                return;
            }
        };
        let mut map = self.write();
        let ids: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        map.retain(|id, _| ids.contains(id.as_str()));
        for row in rows {
            if map.get(&row.id).is_some_and(|l| l.row == row) {
                continue;
            }
            let identity = restore_identity(&row, &self.cfg.refs);
            let generation = self
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let busy = map.get(&row.id).and_then(|l| l.busy);
            map.insert(
                row.id.clone(),
                Live {
                    row,
                    identity,
                    latest: None,
                    due: Instant::now(),
                    busy,
                    generation,
                },
            );
        }
        sh.fleet_seen.store(version, Relaxed);
    }

    /// Shared fleet: every instance's latest result from the database (other processes
    /// attest too), for the list, the status counts and the metrics.
    fn reload_latest(&self) {
        match self.store.latest_results() {
            Ok(rows) => {
                let mut map = self.write();
                for r in rows {
                    if let Some(l) = map.get_mut(&r.instance) {
                        if r.at >= l.row.registered_at
                            && l.latest.as_ref().is_none_or(|old| old.seq < r.seq)
                        {
                            l.latest = Some(r);
                        }
                    }
                }
            }
            Err(e) => eprintln!("tuk-verifier: cannot reload the latest results: {e}"),
        }
    }

    /// Instances due for attestation, marked busy.
    fn take_due(&self) -> Vec<String> {
        let now = Instant::now();
        let mut map = self.write();
        map.values_mut()
            .filter(|l| l.busy.is_none() && l.due <= now)
            .map(|l| {
                l.busy = Some(l.generation);
                l.row.id.clone()
            })
            .collect()
    }
}

/// Whether `now` goes back from `last`: a lower reset count, or the same reset count with a
/// lower restart count or a lower clock (the clock only advances while the TPM is reset-free).
fn is_rollback(last: &TpmClock, now: &TpmClock) -> bool {
    now.reset_count < last.reset_count
        || (now.reset_count == last.reset_count
            && (now.restart_count < last.restart_count || now.clock < last.clock))
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
                        // attest_one catches panics in the attestation; this catches any
                        // elsewhere, so the worker survives whatever happens.
                        if catch_unwind(AssertUnwindSafe(|| v.attest_one(&id))).is_err() {
                            v.metrics.panic();
                            v.release(&id);
                        }
                    }
                    Err(_) => return,
                }
            });
    }
    let mut last_prune = Instant::now();
    let mut last_renew = Instant::now();
    let mut last_sync = Instant::now();
    let _ = thread::Builder::new()
        .name("attest-scheduler".into())
        .spawn(move || loop {
            if let Some(keep) = v.cfg.retention {
                if last_prune.elapsed() >= Duration::from_secs(60) {
                    last_prune = Instant::now();
                    let keep = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
                    let before = now_ms().saturating_sub(keep);
                    if let Err(e) = v.store.prune(before) {
                        eprintln!("tuk-verifier: cannot prune old results: {e}");
                    }
                }
            }
            let due = match &v.shared {
                None => v.take_due(),
                Some(sh) => {
                    v.reload_instances(sh, false);
                    let ttl = Duration::from_millis(u64::try_from(sh.ttl_ms).unwrap_or(0));
                    if last_renew.elapsed() >= ttl / 3 {
                        last_renew = Instant::now();
                        if let Err(e) = v.store.renew_leases(&sh.holder, sh.ttl_ms) {
                            v.metrics.store_error();
                            eprintln!("tuk-verifier: cannot renew the leases: {e}");
                        }
                    }
                    if last_sync.elapsed() >= Duration::from_secs(1) {
                        last_sync = Instant::now();
                        v.reload_latest();
                    }
                    v.claim_due(sh)
                }
            };
            for id in due {
                if tx.send(id).is_err() {
                    return;
                }
            }
            let mut tick =
                (v.cfg.interval / 20).clamp(Duration::from_millis(10), Duration::from_millis(250));
            if v.shared.is_some() {
                // Jittered (0.5 to 1.5 ticks): processes with the same tick would otherwise
                // keep one phase, and the one ticking first after instances fall due would
                // claim them all while it has idle workers.
                let r = u32::from(tuk_attest::attester::random_bytes(1)[0]);
                tick = tick / 2 + tick * r / 255;
            }
            thread::sleep(tick);
        });
}

/// Keeps the webhook delivery threads matching the store's webhooks (added or deleted through
/// any process): every second.
fn spawn_notifier(v: Arc<Verifier>) {
    let _ = thread::Builder::new()
        .name("webhooks".into())
        .spawn(move || loop {
            match v.store.webhooks() {
                Ok(hooks) => v.delivery.sync(&hooks, &v.store),
                Err(e) => eprintln!("tuk-verifier: cannot read the webhooks: {e}"),
            }
            thread::sleep(Duration::from_secs(1));
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(reset_count: u64, restart_count: u64, clock: u64) -> TpmClock {
        TpmClock {
            reset_count,
            restart_count,
            clock,
        }
    }

    #[test]
    fn tpm_counters_may_only_go_forward() {
        let last = c(5, 2, 1000);
        // Forward: later clock, a restart, a reset (the clock may then be anything).
        for ok in [c(5, 2, 1000), c(5, 2, 1500), c(5, 3, 1200), c(6, 0, 10)] {
            assert!(!is_rollback(&last, &ok), "{ok:?}");
        }
        // Back: an older reset, an older restart, an older clock.
        for bad in [c(4, 9, 99_999), c(5, 1, 2000), c(5, 2, 999), c(5, 3, 10)] {
            assert!(is_rollback(&last, &bad), "{bad:?}");
        }
    }
}
