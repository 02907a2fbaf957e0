//! Deployment: the one path by which code becomes a running component, at boot and when
//! published at runtime (`PUT /_tuk/components/<name>`):
//!
//! 1. with a trust policy: parse the signed bundle and verify it (signature by a policy key,
//!    subjects = the exact .wasm and code bytes, name allowed, version not below the policy's
//!    minimum nor below what runs, engine fingerprint = this kernel's); without one (unsigned
//!    development mode, reported as such): the bytes are compiled code;
//! 2. measure: the event content names the code digest (computed over the very bytes
//!    deserialized next: boot modules are write-protected, request bodies are owned buffers),
//!    the version, signer, limits and configuration; PCR 9 is extended with the SHA-256 of that
//!    content's canonical JSON, and the record appended;
//! 3. only then load and instantiate; a failure leaves whatever ran before untouched, and
//!    (the code having been measured already) PCR 9 is extended with a `tuk.component-failed`
//!    record naming it, which cancels the `tuk.component` record for an appraiser
//!    (docs/measurement.md).
//!
//! A runtime publish of a new version keeps the running version's kv data and configuration
//! (the boot-time `config.*`) unless the publisher asks for a reset ([`Reset`]); the PCR 9
//! record carries the configuration actually applied.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};

use serde_json::{json, Value};
use tuk_measure::bundle::Bundle;
use tuk_measure::policy::TrustPolicy;
use tuk_measure::{hex, sha256, verify_bundle};

use crate::measured::{Measurements, PCR_COMPONENTS, PCR_POLICY};
use crate::wasm::{KvStore, Limits, Runtime};

/// Why a deployment was refused; `status` is the HTTP status for runtime publishing.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

/// What a runtime publish discards of the version it replaces (default: nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reset {
    /// Start the new version with empty kv data.
    pub kv: bool,
    /// Start it with no configuration (instead of the running version's).
    pub config: bool,
}

impl Reset {
    /// From a publish request's query: `reset=kv`, `reset=config`, `reset=kv,config` or
    /// `reset=all` (several `reset=` add up). Anything else is refused with the reason.
    pub fn from_query(query: Option<&str>) -> Result<Reset, String> {
        let mut reset = Reset::default();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let Some(values) = pair.strip_prefix("reset=") else {
                if pair.is_empty() {
                    continue;
                }
                return Err(format!(
                    "unknown publish parameter `{pair}`; the only one is reset=kv|config|all"
                ));
            };
            for v in values.split([',', '+']).flat_map(|v| v.split("%2C")) {
                match v {
                    "kv" => reset.kv = true,
                    "config" => reset.config = true,
                    "all" => (reset.kv, reset.config) = (true, true),
                    other => {
                        return Err(format!(
                            "reset={other} is unknown; use reset=kv, reset=config or reset=all"
                        ))
                    }
                }
            }
        }
        Ok(reset)
    }
}

/// What the kernel enforces.
pub enum Mode {
    /// Every component must be a bundle signed under this policy.
    Signed(TrustPolicy),
    /// No policy was given: code is measured but unsigned (never attestable as trusted).
    Unsigned,
    /// A policy was given but is invalid: nothing is deployed (fail closed).
    Broken(String),
}

pub struct Deployer {
    pub runtime: Runtime,
    pub measurements: Measurements,
    pub mode: Mode,
    /// Deployed version per component (signed mode), for runtime rollback protection.
    versions: BTreeMap<String, tuk_measure::version::Version>,
}

impl Deployer {
    /// Sets up the trust mode from the boot pack's policy bytes and measures it into PCR 8.
    pub fn new(runtime: Runtime, mut measurements: Measurements, policy: Option<&[u8]>) -> Self {
        let mode = match policy.map(TrustPolicy::from_json) {
            None => Mode::Unsigned,
            Some(Ok(p)) => Mode::Signed(p),
            Some(Err(e)) => Mode::Broken(format!("the trust policy is invalid: {e}")),
        };
        let (digest, content) = match &mode {
            Mode::Signed(p) => (
                p.digest(),
                json!({
                    "mode": "signed",
                    "keys": p.keys.iter().map(|k| k.keyid.clone()).collect::<alloc::vec::Vec<_>>(),
                    "allowed_names": p.allowed_names,
                    "min_versions": p.min_versions,
                }),
            ),
            Mode::Unsigned => (sha256(b"tuk:no-policy"), json!({"mode": "unsigned"})),
            Mode::Broken(e) => (
                sha256(policy.unwrap_or_default()),
                json!({"mode": "invalid", "error": e}),
            ),
        };
        if let Err(e) = measurements.extend(PCR_POLICY, &digest, "tuk.policy", content) {
            log::error!("cannot measure the trust policy: {e}");
        }
        match &mode {
            Mode::Signed(p) => log::info!(
                "trust policy: {} key(s), signed components only",
                p.keys.len()
            ),
            Mode::Unsigned => log::warn!(
                "no trust policy: components are measured but unsigned (development mode; \
                 runtime publishing is disabled)"
            ),
            Mode::Broken(e) => log::error!("{e}: no component will be deployed"),
        }
        Deployer {
            runtime,
            measurements,
            mode,
            versions: BTreeMap::new(),
        }
    }

    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Signed(_) => "signed",
            Mode::Unsigned => "unsigned",
            Mode::Broken(_) => "invalid-policy",
        }
    }

    /// Verifies, measures and deploys `data` as component `name`, with operator `meta`.
    pub fn deploy(
        &mut self,
        name: &str,
        data: &[u8],
        meta: &[(&str, &str)],
        runtime_publish: bool,
        reset: Reset,
    ) -> Result<String, Refusal> {
        let (mut limits, mut config) = tuk_service_host::deployment_from_meta(meta.iter().copied())
            .map_err(|e| refuse(400, e))?;
        // A new version takes over the running one's kv data and configuration unless asked
        // not to; the configuration applied is the one measured below.
        let mut kv = KvStore::default();
        let mut kv_kept = false;
        if runtime_publish {
            if let Some((old_kv, old_config)) = self.runtime.state(name) {
                if !reset.kv {
                    kv_kept = !old_kv.is_empty();
                    kv = old_kv;
                }
                if !reset.config && config.is_empty() {
                    config = old_config;
                }
            }
        }
        let t0 = crate::arch::now_us();
        let mut invariants = tuk_invariants::Invariants::default();
        let (code, mut content) = match &self.mode {
            Mode::Broken(e) => return Err(refuse(503, e.clone())),
            Mode::Unsigned if runtime_publish => {
                return Err(refuse(
                    403,
                    "runtime publishing needs a trust policy: start the host with `tuk run --trust KEY.pub`",
                ))
            }
            Mode::Unsigned => (data, json!({"signed": false})),
            Mode::Signed(policy) => {
                let bundle = Bundle::parse(data).map_err(|e| refuse(400, format!("{e}")))?;
                let v = verify_bundle(&bundle, policy, &tuk_engine::fingerprint())
                    .map_err(|e| refuse(403, format!("{e} [{}]", e.code())))?;
                if v.name != name {
                    return Err(refuse(
                        403,
                        format!("the bundle is signed for component {:?}, not {name:?}", v.name),
                    ));
                }
                if let Some(running) = self.versions.get(name) {
                    if v.version <= *running {
                        return Err(refuse(
                            409,
                            format!("{name} {running} runs already; publish a newer version than {}", v.version),
                        ));
                    }
                }
                limits = Limits {
                    memory_bytes: usize::try_from(v.limits.memory_bytes).unwrap_or(usize::MAX),
                    deadline_ms: v.limits.deadline_ms,
                };
                // The run-time invariants come from the signed .wasm, before anything runs.
                invariants = tuk_invariants::derive(bundle.wasm).map_err(|e| {
                    refuse(422, format!("cannot derive the component's invariants: {e}"))
                })?;
                let content = json!({
                    "signed": true,
                    "version": v.version.to_string(),
                    "keyid": v.keyid,
                    "wasm_sha256": hex(&v.wasm_sha256),
                });
                (bundle.code, content)
            }
        };
        let code_digest = sha256(code);
        if let Value::Object(map) = &mut content {
            map.insert("name".into(), Value::from(name));
            map.insert("code_sha256".into(), Value::from(hex(&code_digest)));
            map.insert(
                "memory_bytes".into(),
                Value::from(limits.memory_bytes as u64),
            );
            map.insert("deadline_ms".into(), Value::from(limits.deadline_ms));
            map.insert("config".into(), json!(config));
            map.insert(
                "published".into(),
                Value::from(if runtime_publish { "runtime" } else { "boot" }),
            );
        }
        let t_verified = crate::arch::now_us();
        let canonical = serde_json::to_vec(&content).map_err(|e| refuse(500, format!("{e}")))?;
        let event_digest = sha256(&canonical);
        self.measurements
            .extend(
                PCR_COMPONENTS,
                &event_digest,
                "tuk.component",
                content.clone(),
            )
            .map_err(|e| refuse(503, format!("cannot measure the component: {e}")))?;
        let t_measured = crate::arch::now_us();
        let d = match self
            .runtime
            .deploy(name, code, invariants, limits, config, kv)
        {
            Ok(d) => d,
            Err(e) => {
                let error = format!("{e}");
                // The code was measured as deployed: record that it is not running (D3), so
                // an appraiser does not take the tuk.component record above for what runs.
                let failed = json!({
                    "name": name,
                    "code_sha256": hex(&code_digest),
                    "error": error,
                });
                let recorded = serde_json::to_vec(&failed)
                    .map_err(|e| format!("{e}"))
                    .and_then(|canonical| {
                        self.measurements.extend(
                            PCR_COMPONENTS,
                            &sha256(&canonical),
                            "tuk.component-failed",
                            failed,
                        )
                    });
                if let Err(m) = recorded {
                    log::error!("cannot measure the failed deployment of {name}: {m}");
                }
                return Err(refuse(
                    422,
                    format!(
                        "{error} (recorded in PCR 9 as tuk.component-failed; what ran before \
                         keeps running)"
                    ),
                ));
            }
        };
        if kv_kept {
            log::info!("component {name}: the new version keeps the kv data of the old one");
        }
        let t_loaded = crate::arch::now_us();
        let summary = format!(
            "{} ({} bytes of code, sha256 {})",
            d.instance.name,
            d.instance.code_bytes,
            hex(&code_digest)
        );
        // One line per deployment with the cost of each step (scripts/bench reads it).
        log::info!(
            "deploy-timing name={name} bytes={} verify_hash_us={} extend_us={} load_us={}",
            data.len(),
            t_verified - t0,
            t_measured - t_verified,
            t_loaded - t_measured
        );
        if let Some(v) = content
            .get("version")
            .and_then(Value::as_str)
            .and_then(|v| v.parse().ok())
        {
            self.versions.insert(name.to_string(), v);
        }
        Ok(summary)
    }
}
