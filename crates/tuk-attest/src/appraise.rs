//! The verification policy: what makes tuk evidence trustworthy, and how trustworthy
//! (docs/attestation.md, "Remote attestation: verification and results").
//!
//! Two kinds of outcome:
//! - a [`Refusal`]: the evidence itself does not verify (EK certificate, AK, credential
//!   activation, the quote's signature, nonce or PCR digest, a forged or reordered event-log
//!   record). Nothing in it can be believed; the result is contraindicated.
//! - an appraisal: the evidence is authentic, and each submodule (the kernel, every component)
//!   gets AR4SI claims from comparing the measurements with reference values and the run-time
//!   record: affirming, warning or contraindicated, each with its reasons.
//!
//! The steps are public so that a verifier service can run them separately (identity once per
//! instance, quotes on an interval); [`crate::attester::attest`] runs all of them once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{json, Value};
use tuk_measure::eventlog::{self, EventLogError, Record};
use tuk_measure::policy::TrustPolicy;
use tuk_measure::version::Version;
use tuk_measure::{sha256, Digest};

use crate::boot_reference::{appraise_boot_config, staleness, BootReference};
use crate::cert::{verify_ek_certificate, CertError, EkCertificate};
use crate::evidence::{Evidence, Identity};
use crate::hex;
use crate::public::{AkPublic, EkPublic, PublicError};
use crate::quote::{verify_quote, QuoteError, QuoteInfo};
use crate::result::{value, Claim, Submodule};

/// The PCRs every tuk quote covers (docs/measurement.md).
pub const QUOTED_PCRS: [u32; 5] = [4, 5, 8, 9, 10];
/// The size of the verifier's nonce.
pub const NONCE_LEN: usize = 16;
/// The size of the credential activation secret (the RSA EK's name digest size).
pub const SECRET_LEN: usize = 32;
/// The PCR 9 record that cancels the preceding `tuk.component` record of the same name: its
/// load or instantiation failed after it was measured (docs/measurement.md).
pub const COMPONENT_FAILED: &str = "tuk.component-failed";
/// What PCR 8 measures when the kernel runs without a trust policy.
pub const NO_POLICY: &[u8] = b"tuk:no-policy";

/// The `content_type` each quoted PCR's records must have.
fn content_type_of(pcr: u32) -> Option<&'static str> {
    match pcr {
        4 => Some("tuk.kernel"),
        5 => Some("tuk.boot-config"),
        8 => Some("tuk.policy"),
        9 => Some("tuk.component"),
        10 => Some("tuk.integrity"),
        _ => None,
    }
}

/// The trust anchors for EK certificates: swtpm_localca's root and the intermediates between
/// it and the EK certificates.
#[derive(Clone, Debug)]
pub struct Ca {
    pub root: Vec<u8>,
    pub intermediates: Vec<Vec<u8>>,
}

impl Ca {
    /// The root file's name in a CA directory (`tuk_vtpm::ca_root_cert`).
    pub const ROOT: &'static str = "swtpm-localca-rootca-cert.pem";
    /// The intermediate's file name in a CA directory (`tuk_vtpm::ca_issuer_cert`).
    pub const ISSUER: &'static str = "issuercert.pem";

    /// Reads a swtpm_localca CA directory (`tuk_vtpm::default_ca_dir`).
    pub fn load(dir: &Path) -> std::io::Result<Ca> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
            })
        };
        Ok(Ca {
            root: read(Self::ROOT)?,
            intermediates: vec![read(Self::ISSUER)?],
        })
    }
}

/// The verifier's reference values.
#[derive(Clone, Debug)]
pub struct References {
    pub ca: Ca,
    /// SHA-256 of the kernel image the instance must run (`tuk attest --kernel`).
    pub kernel_sha256: Option<Digest>,
    /// The trust policy the instance must enforce (`--trust`/`--policy`).
    pub policy: Option<TrustPolicy>,
    /// What PCR 5's boot configuration may say, and how fresh run-time measurement must be
    /// (`--boot-reference`; [`BootReference::default`] without one).
    pub boot: BootReference,
}

/// Why evidence was refused (see the module docs).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("the EK's public area is unusable: {0}")]
    EkPublic(PublicError),
    #[error("the EK certificate does not verify: {0}")]
    EkCertificate(CertError),
    #[error("the AK's public area is unusable: {0}")]
    AkPublic(PublicError),
    #[error("the instance names its AK {stated}, but its public area's name is {computed}")]
    AkName { stated: String, computed: String },
    #[error("cannot make a credential for the EK: {0}")]
    Credential(String),
    #[error(
        "credential activation was refused: {0} (the AK is not in the TPM of the certified EK)"
    )]
    Activation(String),
    #[error("credential activation returned another secret than the credential carried")]
    SecretMismatch,
    #[error(
        "the evidence answers nonce {found}, not this verifier's {expected} (replayed evidence)"
    )]
    Nonce { expected: String, found: String },
    #[error("the evidence quotes PCRs {0:?}, not 4, 5, 8, 9, 10")]
    PcrList(Vec<u32>),
    #[error("the event log does not replay: {0}")]
    EventLog(EventLogError),
    #[error("the quote does not verify: {0}")]
    Quote(QuoteError),
    #[error(
        "the evidence states qualifying data {stated}, but SHA-256(nonce || report) is {computed}"
    )]
    QualifyingData { stated: String, computed: String },
    #[error("event log record {recnum} (PCR {pcr}): {reason}")]
    Record {
        recnum: u64,
        pcr: u32,
        reason: String,
    },
    #[error("the run-time report is not the contract's: {0}")]
    Report(String),
}

impl Refusal {
    /// The AR4SI claim a refusal contradicts, and its value.
    pub fn claim(&self) -> (Claim, i8) {
        match self {
            Refusal::EkPublic(_) | Refusal::EkCertificate(_) | Refusal::Credential(_) => {
                (Claim::Hardware, value::UNRECOGNIZED_HARDWARE)
            }
            Refusal::AkPublic(_)
            | Refusal::AkName { .. }
            | Refusal::Activation(_)
            | Refusal::SecretMismatch => (Claim::InstanceIdentity, value::UNRECOGNIZED_INSTANCE),
            _ => (Claim::InstanceIdentity, value::CRYPTO_VALIDATION_FAILED),
        }
    }
}

/// An identity that passed [`verify_identity`]: the EK (certified) and the AK (its name
/// computed here). The AK is bound to the EK only after credential activation.
#[derive(Clone, Debug)]
pub struct VerifiedIdentity {
    pub ek: EkPublic,
    pub ak: AkPublic,
    pub ek_certificate: EkCertificate,
}

/// Checks an identity document: the EK's public area is an EK, its certificate chains to
/// `ca` at `now` and certifies exactly that key, the AK's public area is an AK, and the name
/// the instance states for it is the one its public area hashes to.
pub fn verify_identity(
    identity: &Identity,
    ca: &Ca,
    now: SystemTime,
) -> Result<VerifiedIdentity, Refusal> {
    let ek = EkPublic::parse(&identity.ek_public).map_err(Refusal::EkPublic)?;
    let intermediates: Vec<&[u8]> = ca.intermediates.iter().map(Vec::as_slice).collect();
    let ek_certificate =
        verify_ek_certificate(&identity.ek_certificate, &intermediates, &ca.root, &ek, now)
            .map_err(Refusal::EkCertificate)?;
    let ak = AkPublic::parse(&identity.ak_public).map_err(Refusal::AkPublic)?;
    let computed = ak.name();
    if computed != identity.ak_name {
        return Err(Refusal::AkName {
            stated: hex(&identity.ak_name),
            computed: hex(&computed),
        });
    }
    Ok(VerifiedIdentity {
        ek,
        ak,
        ek_certificate,
    })
}

/// The canonical JSON of a value: compact, object keys sorted by their bytes (what
/// serde_json's default map produces, and what the kernel hashes), independent of how this
/// build's serde_json orders maps.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    fn write(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                out.push(b'{');
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    // Serializing a string or number into memory cannot fail.
                    let _ = serde_json::to_writer(&mut *out, k);
                    out.push(b':');
                    write(v, out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(item, out);
                }
                out.push(b']');
            }
            scalar => {
                let _ = serde_json::to_writer(&mut *out, scalar);
            }
        }
    }
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

/// The qualifying data a quote must carry: SHA-256(nonce || canonical JSON of the report).
pub fn qualifying_data(nonce: &[u8], report: &Value) -> Digest {
    let mut bound = nonce.to_vec();
    bound.extend(canonical_json(report));
    sha256(&bound)
}

/// One subject's record in the run-time report.
#[derive(Clone, Debug, Deserialize)]
struct SubjectReport {
    state: String,
    checks: u64,
    violations: u64,
    #[serde(default)]
    reinstantiations: u64,
    last_check_ms: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
struct InstanceReport {
    name: String,
    #[serde(flatten)]
    record: SubjectReport,
}

/// The run-time report a quote is bound to.
#[derive(Clone, Debug, Deserialize)]
struct Report {
    uptime_ms: u64,
    interval_ms: u64,
    policy: String,
    kernel: SubjectReport,
    instances: Vec<InstanceReport>,
}

/// What the quote and the event log established, for the result.
#[derive(Clone, Debug)]
pub struct Appraisal {
    /// `kernel` and `component:NAME`.
    pub submods: BTreeMap<String, Submodule>,
    /// The verified quote's contents (clock, reset and restart counts).
    pub quote: QuoteInfo,
}

fn record_refusal(r: &Record, reason: impl Into<String>) -> Refusal {
    Refusal::Record {
        recnum: r.recnum,
        pcr: r.pcr,
        reason: reason.into(),
    }
}

fn str_field<'a>(r: &'a Record, field: &str) -> Result<&'a str, Refusal> {
    r.content
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| record_refusal(r, format!("its content has no `{field}` string")))
}

/// Appraises `evidence` answering `nonce`, quoted with `ak` (registered and activated), against
/// `refs` (module docs). Refusal checks, in order: the nonce; the PCR list; the event log
/// replays and the quote verifies with `ak` over SHA-256(nonce || canonical report) and the
/// replayed PCRs 4, 5, 8, 9, 10; the stated qualifying data; every record belongs to its PCR
/// (content type, one record for PCRs 4, 5 and 8) and its digest is the SHA-256 of its
/// content's canonical JSON (PCRs 5, 9, 10; PCR 8: the policy digest); the report parses.
pub fn appraise(
    ak: &AkPublic,
    evidence: &Evidence,
    nonce: &[u8],
    refs: &References,
) -> Result<Appraisal, Refusal> {
    if evidence.nonce != nonce {
        return Err(Refusal::Nonce {
            expected: hex(nonce),
            found: hex(&evidence.nonce),
        });
    }
    if evidence.pcrs != QUOTED_PCRS {
        return Err(Refusal::PcrList(evidence.pcrs.clone()));
    }
    let expected_qd = qualifying_data(nonce, &evidence.report);
    let replayed = eventlog::replay(&evidence.eventlog).map_err(Refusal::EventLog)?;
    let pcrs: Vec<(u32, [u8; 32])> = QUOTED_PCRS
        .iter()
        .map(|&i| (i, replayed.get(&i).copied().unwrap_or([0; 32])))
        .collect();
    let quote = verify_quote(
        ak,
        &evidence.attest,
        &evidence.signature,
        &expected_qd,
        &pcrs,
    )
    .map_err(Refusal::Quote)?;
    if evidence.qualifying_data != expected_qd {
        return Err(Refusal::QualifyingData {
            stated: hex(&evidence.qualifying_data),
            computed: hex(&expected_qd),
        });
    }
    check_records(&evidence.eventlog)?;
    let report: Report = serde_json::from_value(evidence.report.clone())
        .map_err(|e| Refusal::Report(e.to_string()))?;
    let mut names = BTreeSet::new();
    for i in &report.instances {
        if !names.insert(i.name.as_str()) {
            return Err(Refusal::Report(format!(
                "instance {:?} is listed twice",
                i.name
            )));
        }
    }

    let log = &evidence.eventlog;
    let mut submods = BTreeMap::new();
    let mut kernel = appraise_kernel(log, &report, refs)?;
    kernel.facts.insert(
        "tpm".into(),
        json!({
            "clock_ms": quote.clock.clock,
            "reset_count": quote.clock.reset_count,
            "restart_count": quote.clock.restart_count,
            "safe": quote.clock.safe,
        }),
    );
    appraise_tpm_restarts(&mut kernel, quote.clock.restart_count);
    kernel
        .facts
        .insert("eventlog_records".into(), Value::from(log.len()));
    let policy_keys = policy_keys(log);
    for instance in &report.instances {
        let s = appraise_component(log, instance, &report, refs, policy_keys.as_deref())?;
        submods.insert(format!("component:{}", instance.name), s);
    }
    // Integrity records naming a component that does not run: the log and the report disagree.
    for r in log.iter().filter(|r| r.pcr == 10) {
        let subject = str_field(r, "subject")?;
        if let Some(name) = subject.strip_prefix("component:") {
            if !names.contains(name) {
                kernel.claim(
                    Claim::Executables,
                    value::CONTRAINDICATED_RUNTIME,
                    Some(format!(
                        "record {} names {subject}, which the run-time report does not list",
                        r.recnum
                    )),
                );
            }
        } else if subject != "kernel" {
            return Err(record_refusal(r, format!("unknown subject {subject:?}")));
        }
    }
    // Components PCR 9 says run (a tuk.component record no tuk.component-failed cancelled)
    // that the run-time report does not list: what runs is not what was measured, or is not
    // re-measured. Each gets a contraindicated submodule, not only a reason.
    let mut not_running = Vec::new();
    for name in measured_names(log)? {
        if names.contains(name) {
            continue;
        }
        let d = deployments(log, name)?;
        let Some(latest) = d.live.last() else {
            continue; // every deployment failed: measured and recorded as not deployed
        };
        let mut s = Submodule::default();
        for key in [
            "version",
            "keyid",
            "code_sha256",
            "wasm_sha256",
            "published",
        ] {
            if let Some(v) = latest.content.get(key) {
                s.facts.insert(key.into(), v.clone());
            }
        }
        s.claim(
            Claim::Executables,
            value::CONTRAINDICATED_RUNTIME,
            Some(format!(
                "PCR 9 measures it (record {}), but the run-time report does not list it: \
                 the instance does not run, or does not re-measure, what it measured",
                latest.recnum
            )),
        );
        submods.insert(format!("component:{name}"), s);
        not_running.push(name.to_owned());
    }
    if !not_running.is_empty() {
        kernel.reasons.push(format!(
            "measured but not running (not in the report): {}",
            not_running.join(", ")
        ));
        kernel
            .facts
            .insert("measured_not_running".into(), json!(not_running));
    }
    submods.insert("kernel".to_owned(), kernel);
    Ok(Appraisal { submods, quote })
}

/// Record-level checks that make a forged record a refusal (see [`appraise`]).
fn check_records(log: &[Record]) -> Result<(), Refusal> {
    let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
    for r in log {
        let Some(want) = content_type_of(r.pcr) else {
            return Err(record_refusal(r, "tuk extends only PCRs 4, 5, 8, 9 and 10"));
        };
        let failed = r.pcr == 9 && r.content_type == COMPONENT_FAILED;
        if r.content_type != want && !failed {
            return Err(record_refusal(
                r,
                format!("content type {:?}, expected {want:?}", r.content_type),
            ));
        }
        let n = seen.entry(r.pcr).or_default();
        *n += 1;
        if matches!(r.pcr, 4 | 5 | 8) && *n > 1 {
            return Err(record_refusal(
                r,
                "a second record for a PCR measured once per boot",
            ));
        }
        let digest = r.sha256().map_err(Refusal::EventLog)?;
        if matches!(r.pcr, 5 | 9 | 10) && digest != sha256(&canonical_json(&r.content)) {
            return Err(record_refusal(
                r,
                "its digest is not the SHA-256 of its content (a forged or altered record)",
            ));
        }
        if r.pcr == 8 {
            let mode = str_field(r, "mode")?;
            match mode {
                "unsigned" if digest != sha256(NO_POLICY) => {
                    return Err(record_refusal(
                        r,
                        "mode unsigned, but the digest is not SHA-256(\"tuk:no-policy\")",
                    ));
                }
                "unsigned" | "signed" | "invalid" => {}
                other => return Err(record_refusal(r, format!("unknown policy mode {other:?}"))),
            }
        }
    }
    for pcr in [4, 5, 8] {
        if !seen.contains_key(&pcr) {
            return Err(Refusal::Record {
                recnum: log.len() as u64,
                pcr,
                reason: "missing: every boot measures this PCR once".into(),
            });
        }
    }
    Ok(())
}

/// The keyids PCR 8's record names (in signed mode). Bound to the digest only when the
/// verifier has the policy itself.
fn policy_keys(log: &[Record]) -> Option<Vec<String>> {
    let r = log.iter().find(|r| r.pcr == 8)?;
    let keys = r.content.get("keys")?.as_array()?;
    Some(
        keys.iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
    )
}

/// One component's PCR 9 story (D3, docs/measurement.md): the `tuk.component` records that
/// stand, in log order (the last one is what runs), and the ones a `tuk.component-failed`
/// record cancelled, each with that record.
struct Deployments<'a> {
    live: Vec<&'a Record>,
    cancelled: Vec<(&'a Record, &'a Record)>,
}

/// The names PCR 9 records name, in order of first appearance.
fn measured_names(log: &[Record]) -> Result<Vec<&str>, Refusal> {
    let mut names: Vec<&str> = Vec::new();
    for r in log.iter().filter(|r| r.pcr == 9) {
        let n = str_field(r, "name")?;
        if !names.contains(&n) {
            names.push(n);
        }
    }
    Ok(names)
}

/// Reads `name`'s PCR 9 records. A `tuk.component-failed` record cancels the `tuk.component`
/// record of the same name right before it (among that name's records), and must name the code
/// that record measured; anything else is a record the kernel never writes (a refusal).
fn deployments<'a>(log: &'a [Record], name: &str) -> Result<Deployments<'a>, Refusal> {
    let mut d = Deployments {
        live: Vec::new(),
        cancelled: Vec::new(),
    };
    // The last record of this name, if it is a tuk.component one that still stands.
    let mut open: Option<&Record> = None;
    for r in log
        .iter()
        .filter(|r| r.pcr == 9 && r.content.get("name").and_then(Value::as_str) == Some(name))
    {
        if r.content_type != COMPONENT_FAILED {
            d.live.push(r);
            open = Some(r);
            continue;
        }
        let code = str_field(r, "code_sha256")?;
        str_field(r, "error")?;
        let Some(prev) = open.take() else {
            return Err(record_refusal(
                r,
                format!(
                    "it records a failed deployment of {name:?}, but the record of {name:?} \
                     before it is not a tuk.component record"
                ),
            ));
        };
        if prev.content.get("code_sha256").and_then(Value::as_str) != Some(code) {
            return Err(record_refusal(
                r,
                format!(
                    "it records a failed deployment of code sha256:{code}, but record {} \
                     measured other code",
                    prev.recnum
                ),
            ));
        }
        d.live.pop();
        d.cancelled.push((prev, r));
    }
    Ok(d)
}

fn record_of(r: &SubjectReport, name: Option<&str>) -> Value {
    let mut v = json!({
        "state": r.state,
        "checks": r.checks,
        "violations": r.violations,
        "reinstantiations": r.reinstantiations,
        "last_check_ms": r.last_check_ms,
    });
    if let (Some(n), Value::Object(map)) = (name, &mut v) {
        map.insert("name".into(), Value::from(n));
    }
    v
}

/// PCR 10 records about `subject`, in log order.
fn integrity_records<'a>(log: &'a [Record], subject: &'a str) -> impl Iterator<Item = &'a Record> {
    log.iter().filter(move |r| {
        r.pcr == 10 && r.content.get("subject").and_then(Value::as_str) == Some(subject)
    })
}

fn kind(r: &Record) -> Result<&str, Refusal> {
    match str_field(r, "kind")? {
        k @ ("violation" | "reinstantiated") => Ok(k),
        other => Err(record_refusal(
            r,
            format!("unknown integrity record kind {other:?}"),
        )),
    }
}

fn violation_text(r: &Record) -> String {
    let get = |f: &str| r.content.get(f).and_then(Value::as_str).unwrap_or("?");
    let at = r
        .content
        .get("uptime_ms")
        .and_then(Value::as_u64)
        .map_or_else(String::new, |ms| format!(" at uptime {ms} ms"));
    format!(
        "{} check failed{at} (record {}): {}",
        get("check"),
        r.recnum,
        get("detail")
    )
}

/// Run-time checks common to the kernel and components: the report's state, its counts
/// against the log, and the freshness of its last round ([`staleness`]; `since_ms`: when the
/// subject began to need rounds).
#[allow(clippy::too_many_arguments)]
fn runtime_checks(
    s: &mut Submodule,
    who: &str,
    record: &SubjectReport,
    violations: u64,
    reinstantiations: u64,
    report: &Report,
    since_ms: u64,
    boot: &BootReference,
) {
    if record.state != "trusted" {
        s.claim(
            Claim::Executables,
            value::CONTRAINDICATED_RUNTIME,
            Some(format!(
                "the run-time report says {who} is {}",
                record.state
            )),
        );
    }
    if record.violations != violations || record.reinstantiations != reinstantiations {
        s.claim(
            Claim::Executables,
            value::CONTRAINDICATED_RUNTIME,
            Some(format!(
                "the run-time report counts {} violations and {} re-instantiations for {who}, \
                 the event log {violations} and {reinstantiations}",
                record.violations, record.reinstantiations
            )),
        );
    }
    // Not affirming unless re-measured: off, no round although one was due, or the last round
    // too old (docs/attestation.md, "Run-time measurement must be live").
    let last = if record.checks == 0 {
        None
    } else {
        record.last_check_ms
    };
    if let Some(why) = staleness(
        who,
        report.uptime_ms,
        report.interval_ms,
        last,
        since_ms,
        boot,
    ) {
        s.claim(Claim::Executables, value::UNSAFE_RUNTIME, Some(why));
    }
}

/// The quote's restartCount (docs/measurement.md, "Who starts the TPM"). The launcher sends the
/// only TPM2_Startup (CLEAR, a TPM Reset: restartCount 0) and hands QEMU the TPM already
/// started, so no TPM2_Startup can follow: a legitimate boot quotes restartCount 0 (measured
/// with swtpm 0.7.1: resetCount grows by one per launch, restartCount stays 0). A restartCount
/// above 0 means a TPM2_Startup after a TPM2_Shutdown(STATE) since the launcher's reset: a
/// guest that resumed, or restarted with TPM2_Startup(CLEAR), which zeroes PCR 4/5 for it to
/// re-extend with any values (both give restartCount 1, so PCR 4 cannot be believed).
fn appraise_tpm_restarts(kernel: &mut Submodule, restart_count: u32) {
    if restart_count != 0 {
        kernel.claim(
            Claim::Executables,
            value::CONTRAINDICATED_RUNTIME,
            Some(format!(
                "the quote's restartCount is {restart_count}, not 0: the TPM was started again \
                 after the launcher's measured launch (a guest TPM2_Startup), so PCR 4/5 may \
                 hold values the guest extended; relaunch the instance with a launcher that \
                 starts the TPM itself"
            )),
        );
    }
}

fn appraise_kernel(
    log: &[Record],
    report: &Report,
    refs: &References,
) -> Result<Submodule, Refusal> {
    let mut s = Submodule::default();
    // check_records made sure PCRs 4, 5 and 8 have exactly one record each.
    let find = |pcr: u32| log.iter().find(|r| r.pcr == pcr).expect("checked");
    let image = find(4).sha256().map_err(Refusal::EventLog)?;
    s.facts
        .insert("kernel_sha256".into(), Value::from(hex(&image)));
    match refs.kernel_sha256 {
        Some(reference) if reference == image => {
            s.claim(Claim::Executables, value::APPROVED_RUNTIME, None);
        }
        Some(reference) => s.claim(
            Claim::Executables,
            value::CONTRAINDICATED_RUNTIME,
            Some(format!(
                "PCR 4 measures kernel image sha256:{}, the reference image is sha256:{}",
                hex(&image),
                hex(&reference)
            )),
        ),
        None => s.claim(
            Claim::Executables,
            value::UNRECOGNIZED_RUNTIME,
            Some(format!(
                "no reference kernel image (--kernel): PCR 4 measures sha256:{}",
                hex(&image)
            )),
        ),
    }
    let boot = find(5);
    if let Some(cmdline) = boot.content.get("cmdline") {
        s.facts.insert("cmdline".into(), cmdline.clone());
    }
    s.facts.insert("boot_config".into(), boot.content.clone());
    // PCR 5, field by field against the boot reference; then the report's settings (what the
    // kernel applies) against what the measured command line configures.
    let boot_findings = appraise_boot_config(&boot.content, &refs.boot);
    for f in &boot_findings.findings {
        s.claim(
            Claim::Configuration,
            value::UNSUPPORTABLE_CONFIG,
            Some(format!("boot configuration (PCR 5): {f}")),
        );
    }
    if let Some(ms) = boot_findings.interval_ms {
        if ms != report.interval_ms {
            s.claim(
                Claim::Configuration,
                value::UNSUPPORTABLE_CONFIG,
                Some(format!(
                    "the run-time report states interval_ms {}, but PCR 5's command line \
                     configures {ms}",
                    report.interval_ms
                )),
            );
        }
    }
    if let Some(p) = &boot_findings.policy {
        if *p != report.policy {
            s.claim(
                Claim::Configuration,
                value::UNSUPPORTABLE_CONFIG,
                Some(format!(
                    "the run-time report states integrity policy {:?}, but PCR 5's command \
                     line configures {p:?}",
                    report.policy
                )),
            );
        }
    }

    let policy = find(8);
    let digest = policy.sha256().map_err(Refusal::EventLog)?;
    s.facts
        .insert("policy_sha256".into(), Value::from(hex(&digest)));
    let mode = str_field(policy, "mode")?;
    match (mode, &refs.policy) {
        ("signed", Some(p)) if p.digest() == digest => {
            // The digest is the reference policy's: the record's content must say the same.
            let keys: Vec<&str> = p.keys.iter().map(|k| k.keyid.as_str()).collect();
            let stated = json!({
                "mode": "signed",
                "keys": keys,
                "allowed_names": p.allowed_names,
                "min_versions": p.min_versions,
            });
            if canonical_json(&policy.content) != canonical_json(&stated) {
                return Err(record_refusal(
                    policy,
                    "its content does not describe the policy its digest measures (a forged record)",
                ));
            }
            s.claim(Claim::Configuration, value::APPROVED_CONFIG, None);
        }
        ("signed", Some(p)) => s.claim(
            Claim::Configuration,
            value::UNSUPPORTABLE_CONFIG,
            Some(format!(
                "PCR 8 measures trust policy sha256:{}, the reference policy is sha256:{}",
                hex(&digest),
                hex(&p.digest())
            )),
        ),
        ("signed", None) => s.claim(
            Claim::Configuration,
            value::UNAVAIL_CONFIG_ELEMS,
            Some(format!(
                "no reference trust policy (--trust/--policy): PCR 8 measures sha256:{}",
                hex(&digest)
            )),
        ),
        ("unsigned", _) => s.claim(
            Claim::Configuration,
            if refs.policy.is_some() {
                value::UNSUPPORTABLE_CONFIG
            } else {
                value::UNSAFE_CONFIG
            },
            Some(
                "the kernel runs without a trust policy (development mode: unsigned components)"
                    .into(),
            ),
        ),
        _ => s.claim(
            Claim::Configuration,
            value::UNSUPPORTABLE_CONFIG,
            Some(format!(
                "the kernel's trust policy is invalid: {}",
                policy
                    .content
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            )),
        ),
    }
    if report.interval_ms == 0 {
        s.claim(
            Claim::Configuration,
            value::UNSAFE_CONFIG,
            Some("run-time measurement is off (integrity.interval_ms=0)".into()),
        );
    }
    s.facts.insert(
        "integrity".into(),
        json!({"interval_ms": report.interval_ms, "policy": report.policy}),
    );

    let mut violations = 0;
    for r in integrity_records(log, "kernel") {
        match kind(r)? {
            "violation" => {
                violations += 1;
                s.claim(
                    Claim::Executables,
                    value::CONTRAINDICATED_RUNTIME,
                    Some(format!(
                        "the kernel's {} (the kernel cannot be repaired in place)",
                        violation_text(r)
                    )),
                );
            }
            _ => {
                return Err(record_refusal(r, "the kernel is never re-instantiated"));
            }
        }
    }
    runtime_checks(
        &mut s,
        "the kernel",
        &report.kernel,
        violations,
        0,
        report,
        0,
        &refs.boot,
    );
    s.attester = Some(record_of(&report.kernel, None));
    Ok(s)
}

fn appraise_component(
    log: &[Record],
    instance: &InstanceReport,
    report: &Report,
    refs: &References,
    stated_keys: Option<&[String]>,
) -> Result<Submodule, Refusal> {
    let name = instance.name.as_str();
    let subject = format!("component:{name}");
    let mut s = Submodule::default();
    // What runs is the last tuk.component record no tuk.component-failed record cancelled;
    // a cancelled deployment never ran: it is neither what runs nor a repair (D3).
    let Deployments {
        live: measured,
        cancelled,
    } = deployments(log, name)?;
    if !cancelled.is_empty() {
        let failed: Vec<Value> = cancelled
            .iter()
            .map(|(m, f)| {
                json!({
                    "record": m.recnum,
                    "failed_record": f.recnum,
                    "version": m.content.get("version"),
                    "code_sha256": m.content.get("code_sha256"),
                    "error": f.content.get("error"),
                })
            })
            .collect();
        s.facts
            .insert("failed_deployments".into(), Value::from(failed));
    }
    let Some(latest) = measured.last() else {
        s.claim(
            Claim::Executables,
            value::CONTRAINDICATED_RUNTIME,
            Some(if cancelled.is_empty() {
                "it runs, but no PCR 9 record measures it".into()
            } else {
                "it runs, but every PCR 9 record of it is cancelled by a tuk.component-failed \
                 record (measured deployments that did not load)"
                    .into()
            }),
        );
        s.attester = Some(record_of(&instance.record, Some(name)));
        return Ok(s);
    };
    for key in [
        "version",
        "keyid",
        "code_sha256",
        "wasm_sha256",
        "published",
    ] {
        if let Some(v) = latest.content.get(key) {
            s.facts.insert(key.into(), v.clone());
        }
    }
    s.facts
        .insert("deployments".into(), Value::from(measured.len()));
    s.claim(Claim::Executables, value::APPROVED_RUNTIME, None);
    for r in &measured {
        let which = if std::ptr::eq(*r, *latest) {
            "it".to_owned()
        } else {
            format!("its earlier deployment (record {})", r.recnum)
        };
        if r.content.get("signed") != Some(&Value::Bool(true)) {
            s.claim(
                Claim::Executables,
                value::CONTRAINDICATED_RUNTIME,
                Some(format!("{which} is not signed (development mode)")),
            );
            continue;
        }
        let keyid = str_field(r, "keyid")?;
        match (&refs.policy, stated_keys) {
            (Some(p), _) => {
                if !p.keys.iter().any(|k| k.keyid == keyid) {
                    s.claim(
                        Claim::Executables,
                        value::CONTRAINDICATED_RUNTIME,
                        Some(format!(
                            "{which} is signed by key {keyid}, which the reference policy does not trust"
                        )),
                    );
                }
                if !p.allows(name) {
                    s.claim(
                        Claim::Executables,
                        value::CONTRAINDICATED_RUNTIME,
                        Some(format!(
                            "the reference policy does not allow the name {name:?}"
                        )),
                    );
                }
                let version: Option<Version> = r
                    .content
                    .get("version")
                    .and_then(Value::as_str)
                    .and_then(|v| v.parse().ok());
                match (p.min_version(name), version) {
                    (Ok(Some(min)), Some(v)) if v < min => s.claim(
                        Claim::Executables,
                        value::CONTRAINDICATED_RUNTIME,
                        Some(format!(
                            "{which} is version {v}, below the reference policy's minimum {min}"
                        )),
                    ),
                    (Ok(Some(_)), None) | (Err(_), _) => s.claim(
                        Claim::Executables,
                        value::CONTRAINDICATED_RUNTIME,
                        Some(format!(
                            "{which} has no version the reference policy can check"
                        )),
                    ),
                    _ => {}
                }
            }
            (None, keys) => {
                let stated = keys.is_some_and(|k| k.iter().any(|k| k == keyid));
                s.claim(
                    Claim::Executables,
                    value::UNRECOGNIZED_RUNTIME,
                    Some(if stated {
                        format!(
                            "no reference trust policy (--trust/--policy): signed by key {keyid}, \
                             which the kernel's policy names but this verifier cannot check"
                        )
                    } else {
                        format!(
                            "signed by key {keyid}, which the kernel's policy record does not name"
                        )
                    }),
                );
            }
        }
    }

    // PCR 10: violations, and whether each was repaired afterwards (a re-instantiation, or a
    // newer measured deployment).
    let records: Vec<&Record> = integrity_records(log, &subject).collect();
    let (mut violations, mut reinstantiations) = (0, 0);
    for r in &records {
        match kind(r)? {
            "violation" => {
                violations += 1;
                let repaired = records.iter().any(|later| {
                    later.recnum > r.recnum && kind(later).ok() == Some("reinstantiated")
                }) || measured.iter().any(|m| m.recnum > r.recnum);
                if repaired {
                    s.claim(
                        Claim::Executables,
                        value::UNSAFE_RUNTIME,
                        Some(format!(
                            "its {}; it was rebuilt from the verified code afterwards",
                            violation_text(r)
                        )),
                    );
                } else {
                    s.claim(
                        Claim::Executables,
                        value::CONTRAINDICATED_RUNTIME,
                        Some(format!("its {}; it was not repaired", violation_text(r))),
                    );
                }
            }
            _ => {
                reinstantiations += 1;
                // The rebuilt code must be the code last measured before it.
                let code = str_field(r, "code_sha256")?;
                let expected = measured
                    .iter()
                    .rev()
                    .find(|m| m.recnum < r.recnum)
                    .and_then(|m| m.content.get("code_sha256"))
                    .and_then(Value::as_str);
                if expected != Some(code) {
                    s.claim(
                        Claim::Executables,
                        value::CONTRAINDICATED_RUNTIME,
                        Some(format!(
                            "record {} re-instantiated code sha256:{code}, not the measured code",
                            r.recnum
                        )),
                    );
                }
            }
        }
    }
    // A component published at runtime may not have been checked yet: it had to exist before
    // the kernel's last round to be part of it.
    let since_ms = if latest.content.get("published").and_then(Value::as_str) == Some("runtime") {
        report.kernel.last_check_ms.unwrap_or(0)
    } else {
        0
    };
    runtime_checks(
        &mut s,
        &subject,
        &instance.record,
        violations,
        reinstantiations,
        report,
        since_ms,
        &refs.boot,
    );
    s.attester = Some(record_of(&instance.record, Some(name)));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::Status;
    use p256::ecdsa::signature::Signer;
    use tuk_measure::policy::TrustedKey;

    /// A software key with tuk's AK attributes: its AkPublic and the signer.
    fn software_ak() -> (AkPublic, p256::ecdsa::SigningKey) {
        let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let point = key.verifying_key().to_encoded_point(false);
        let mut p = vec![0x00, 0x23, 0x00, 0x0b, 0x00, 0x05, 0x00, 0x72, 0x00, 0x00];
        p.extend([0x00, 0x10, 0x00, 0x18, 0x00, 0x0b, 0x00, 0x03, 0x00, 0x10]);
        p.extend([0x00, 0x20]);
        p.extend(point.x().unwrap());
        p.extend([0x00, 0x20]);
        p.extend(point.y().unwrap());
        (AkPublic::parse(&p).unwrap(), key)
    }

    /// A TPM2_Quote's TPMS_ATTEST and TPMT_SIGNATURE over PCRs 4, 5, 8, 9, 10.
    fn quote(key: &p256::ecdsa::SigningKey, extra: &[u8], digest: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut a = Vec::new();
        a.extend(0xff54_4347u32.to_be_bytes());
        a.extend(0x8018u16.to_be_bytes());
        a.extend([0, 2, 0xab, 0xcd]);
        a.extend((extra.len() as u16).to_be_bytes());
        a.extend(extra);
        a.extend(1234u64.to_be_bytes());
        a.extend(7u32.to_be_bytes());
        a.extend(0u32.to_be_bytes()); // restartCount: a launch where the host sent the Startup
        a.push(1);
        a.extend(0x2019_1023u64.to_be_bytes());
        a.extend(1u32.to_be_bytes());
        a.extend([0x00, 0x0b, 3, 0x30, 0x07, 0x00]);
        a.extend((digest.len() as u16).to_be_bytes());
        a.extend(digest);
        let sig: p256::ecdsa::Signature = key.sign(&a);
        let (r, s) = sig.split_bytes();
        let mut t = vec![0x00, 0x18, 0x00, 0x0b, 0x00, 0x20];
        t.extend(r);
        t.extend([0x00, 0x20]);
        t.extend(s);
        (a, t)
    }

    const IMAGE: &[u8] = b"the kernel image";

    #[test]
    fn a_tpm_started_again_after_the_launch_is_contraindicated() {
        // restartCount 1: what a guest TPM2_Startup after the launcher's Shutdown(STATE) gives
        // (resume or CLEAR alike, swtpm 0.7.1), the latter with PCR 4/5 zeroed for re-extending.
        let mut s = Submodule::default();
        appraise_tpm_restarts(&mut s, 1);
        assert_eq!(s.status(), Status::Contraindicated, "{:?}", s.reasons);
        assert!(
            s.reasons[0].contains("restartCount is 1"),
            "{:?}",
            s.reasons
        );
        let mut honest = Submodule::default();
        appraise_tpm_restarts(&mut honest, 0);
        assert!(honest.reasons.is_empty() && honest.vector.is_empty());
    }

    fn policy() -> TrustPolicy {
        let key = ed25519_key();
        TrustPolicy {
            keys: vec![TrustedKey::from_public_key(&key)],
            allowed_names: None,
            min_versions: Default::default(),
        }
    }

    /// The RFC 8032 test 1 public key.
    fn ed25519_key() -> [u8; 32] {
        tuk_measure::parse_hex32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
            .unwrap()
    }

    fn refs(kernel: bool, policy_ref: bool) -> References {
        References {
            ca: Ca {
                root: vec![],
                intermediates: vec![],
            },
            kernel_sha256: kernel.then(|| sha256(IMAGE)),
            policy: policy_ref.then(policy),
            boot: BootReference::default(),
        }
    }

    /// A log as a tuk boot writes it: kernel, boot config, policy, `hello` signed.
    fn boot_log() -> Vec<Record> {
        boot_log_with("integrity.interval_ms=1000")
    }

    /// [`boot_log`] with another kernel command line.
    fn boot_log_with(cmdline: &str) -> Vec<Record> {
        let p = policy();
        let boot = boot_config(cmdline);
        let policy_content = json!({
            "mode": "signed",
            "keys": [p.keys[0].keyid],
            "allowed_names": null,
            "min_versions": {},
        });
        let mut log = vec![
            Record::new(
                0,
                4,
                &sha256(IMAGE),
                "tuk.kernel",
                json!({"file": "k", "size": 16}),
            ),
            Record::new(
                1,
                5,
                &sha256(&canonical_json(&boot)),
                "tuk.boot-config",
                boot,
            ),
            Record::new(2, 8, &p.digest(), "tuk.policy", policy_content),
        ];
        push(
            &mut log,
            9,
            "tuk.component",
            component("hello", "1.0.0", "c0de"),
        );
        log
    }

    /// The launcher's boot configuration document with `cmdline`.
    fn boot_config(cmdline: &str) -> Value {
        json!({
            "boot_pack_sha256": "ab".repeat(32),
            "cmdline": cmdline,
            "cpu": "max",
            "machine": crate::boot_reference::DEFAULT_MACHINE,
            "memory_backend": "memory-backend-file,id=ram,size=64M,share=on",
            "memory_mib": 64,
        })
    }

    fn component(name: &str, version: &str, code: &str) -> Value {
        json!({
            "signed": true, "version": version, "keyid": policy().keys[0].keyid,
            "wasm_sha256": "aa", "name": name, "code_sha256": code, "memory_bytes": 1,
            "deadline_ms": 2000, "config": {}, "published": "boot",
        })
    }

    fn push(log: &mut Vec<Record>, pcr: u32, content_type: &str, content: Value) {
        let digest = sha256(&canonical_json(&content));
        log.push(Record::new(
            log.len() as u64,
            pcr,
            &digest,
            content_type,
            content,
        ));
    }

    fn subject(state: &str, violations: u64, reinstantiations: u64) -> Value {
        json!({"state": state, "checks": 5, "violations": violations,
               "reinstantiations": reinstantiations, "last_check_ms": 4900})
    }

    fn report(kernel: Value, hello: Value) -> Value {
        let mut hello = hello;
        hello["name"] = json!("hello");
        json!({"uptime_ms": 5000, "interval_ms": 1000, "policy": "reinstantiate",
               "kernel": kernel, "instances": [hello]})
    }

    fn healthy_report() -> Value {
        report(subject("trusted", 0, 0), subject("trusted", 0, 0))
    }

    /// Evidence for `log` and `report`, quoted by `key` for `nonce`, as the kernel makes it.
    fn evidence(
        key: &p256::ecdsa::SigningKey,
        nonce: &[u8],
        log: Vec<Record>,
        report: Value,
    ) -> Evidence {
        let qd = qualifying_data(nonce, &report);
        let pcrs = eventlog::replay(&log).unwrap();
        let values: Vec<[u8; 32]> = QUOTED_PCRS
            .iter()
            .map(|i| pcrs.get(i).copied().unwrap_or([0; 32]))
            .collect();
        let (attest, signature) = quote(key, &qd, &crate::pcr_digest(&values));
        Evidence {
            nonce: nonce.to_vec(),
            report,
            qualifying_data: qd.to_vec(),
            attest,
            signature,
            pcrs: QUOTED_PCRS.to_vec(),
            eventlog: log,
        }
    }

    fn overall(a: &Appraisal) -> Status {
        a.submods.values().map(Submodule::status).max().unwrap()
    }

    const NONCE: &[u8] = b"0123456789abcdef";

    #[test]
    fn a_healthy_instance_with_references_is_affirming() {
        let (ak, key) = software_ak();
        let e = evidence(&key, NONCE, boot_log(), healthy_report());
        let a = appraise(&ak, &e, NONCE, &refs(true, true)).unwrap();
        assert_eq!(a.submods.len(), 2);
        for (name, s) in &a.submods {
            assert_eq!(s.status(), Status::Affirming, "{name}: {:?}", s.reasons);
        }
        let hello = &a.submods["component:hello"];
        assert_eq!(hello.facts["version"], "1.0.0");
        assert_eq!(hello.attester.as_ref().unwrap()["state"], "trusted");
        assert_eq!(a.quote.clock.reset_count, 7);
        assert_eq!(
            a.submods["kernel"].facts["kernel_sha256"],
            hex(&sha256(IMAGE))
        );
    }

    #[test]
    fn without_references_nothing_is_affirmed() {
        let (ak, key) = software_ak();
        let e = evidence(&key, NONCE, boot_log(), healthy_report());
        let a = appraise(&ak, &e, NONCE, &refs(false, false)).unwrap();
        let kernel = &a.submods["kernel"];
        assert_eq!(kernel.status(), Status::Warning);
        assert_eq!(
            kernel.vector[&Claim::Executables],
            value::UNRECOGNIZED_RUNTIME
        );
        assert_eq!(
            kernel.vector[&Claim::Configuration],
            value::UNAVAIL_CONFIG_ELEMS
        );
        let hello = &a.submods["component:hello"];
        assert_eq!(hello.status(), Status::Warning);
        assert!(
            hello.reasons[0].contains("kernel's policy names"),
            "{:?}",
            hello.reasons
        );
    }

    #[test]
    fn replayed_evidence_is_refused() {
        let (ak, key) = software_ak();
        let e = evidence(&key, NONCE, boot_log(), healthy_report());
        let other = b"fedcba9876543210";
        assert!(matches!(
            appraise(&ak, &e, other, &refs(true, true)),
            Err(Refusal::Nonce { .. })
        ));
        // Restating the nonce does not help: the quote carries the old one.
        let mut restated = e.clone();
        restated.nonce = other.to_vec();
        assert!(matches!(
            appraise(&ak, &restated, other, &refs(true, true)),
            Err(Refusal::Quote(QuoteError::QualifyingData { .. }))
        ));
        // Nor does a changed report: it is bound by the qualifying data.
        let mut changed = e.clone();
        changed.report["kernel"]["violations"] = json!(0);
        changed.report["instances"][0]["state"] = json!("trusted ");
        assert!(matches!(
            appraise(&ak, &changed, NONCE, &refs(true, true)),
            Err(Refusal::Quote(QuoteError::QualifyingData { .. }))
        ));
    }

    #[test]
    fn another_aks_quote_is_refused() {
        let (_, key) = software_ak();
        let (other_ak, _) = software_ak();
        let e = evidence(&key, NONCE, boot_log(), healthy_report());
        assert_eq!(
            appraise(&other_ak, &e, NONCE, &refs(true, true)).unwrap_err(),
            Refusal::Quote(QuoteError::BadSignature)
        );
    }

    #[test]
    fn forged_and_reordered_records_are_refused() {
        let (ak, key) = software_ak();
        let mut log = boot_log();
        push(
            &mut log,
            9,
            "tuk.component",
            component("kv", "1.0.0", "beef"),
        );
        let mut report = healthy_report();
        let mut kv = subject("trusted", 0, 0);
        kv["name"] = json!("kv");
        report["instances"].as_array_mut().unwrap().push(kv);
        let e = evidence(&key, NONCE, log, report);
        assert!(appraise(&ak, &e, NONCE, &refs(true, true)).is_ok());

        // Content changed, digest kept: the PCRs still match, the record does not.
        let mut forged = e.clone();
        forged.eventlog[3].content["version"] = json!("9.9.9");
        assert!(matches!(
            appraise(&ak, &forged, NONCE, &refs(true, true)),
            Err(Refusal::Record {
                recnum: 3,
                pcr: 9,
                ..
            })
        ));
        // Content changed and digest recomputed: the PCRs no longer match the quote.
        let mut recomputed = forged.clone();
        let d = sha256(&canonical_json(&recomputed.eventlog[3].content));
        recomputed.eventlog[3].digests[0].digest = hex(&d);
        assert!(matches!(
            appraise(&ak, &recomputed, NONCE, &refs(true, true)),
            Err(Refusal::Quote(QuoteError::PcrDigest { .. }))
        ));
        // Two records swapped: as they are (recnums out of order) and renumbered.
        let mut swapped = e.clone();
        swapped.eventlog.swap(3, 4);
        assert!(matches!(
            appraise(&ak, &swapped, NONCE, &refs(true, true)),
            Err(Refusal::EventLog(EventLogError::BadRecnum { .. }))
        ));
        swapped.eventlog[3].recnum = 3;
        swapped.eventlog[4].recnum = 4;
        assert!(matches!(
            appraise(&ak, &swapped, NONCE, &refs(true, true)),
            Err(Refusal::Quote(QuoteError::PcrDigest { .. }))
        ));
        // A record dropped.
        let mut dropped = e.clone();
        dropped.eventlog.pop();
        assert!(matches!(
            appraise(&ak, &dropped, NONCE, &refs(true, true)),
            Err(Refusal::Quote(QuoteError::PcrDigest { .. }))
        ));
        // The policy record's content does not describe the measured policy.
        let mut policy_forged = e.clone();
        policy_forged.eventlog[2].content["keys"] = json!(["00"]);
        assert!(matches!(
            appraise(&ak, &policy_forged, NONCE, &refs(true, true)),
            Err(Refusal::Record {
                recnum: 2,
                pcr: 8,
                ..
            })
        ));
        // A record under another PCR's content type.
        let mut wrong_type = e;
        wrong_type.eventlog[3].content_type = "tuk.integrity".into();
        assert!(matches!(
            appraise(&ak, &wrong_type, NONCE, &refs(true, true)),
            Err(Refusal::Record { recnum: 3, .. })
        ));
    }

    #[test]
    fn reference_values_decide_the_kernel() {
        let (ak, key) = software_ak();
        let e = evidence(&key, NONCE, boot_log(), healthy_report());
        let mut other_kernel = refs(true, true);
        other_kernel.kernel_sha256 = Some(sha256(b"another image"));
        let a = appraise(&ak, &e, NONCE, &other_kernel).unwrap();
        assert_eq!(a.submods["kernel"].status(), Status::Contraindicated);
        assert!(a.submods["kernel"].reasons[0].contains("reference image"));

        let mut other_policy = refs(true, true);
        let p = other_policy.policy.as_mut().unwrap();
        p.allowed_names = Some(vec!["kv".into()]);
        let a = appraise(&ak, &e, NONCE, &other_policy).unwrap();
        assert_eq!(
            a.submods["kernel"].vector[&Claim::Configuration],
            value::UNSUPPORTABLE_CONFIG
        );
        let hello = &a.submods["component:hello"];
        assert_eq!(hello.status(), Status::Contraindicated);
        assert!(hello.reasons.iter().any(|r| r.contains("does not allow")));

        let mut newer = refs(true, true);
        newer
            .policy
            .as_mut()
            .unwrap()
            .min_versions
            .insert("hello".into(), "1.0.1".into());
        let a = appraise(&ak, &e, NONCE, &newer).unwrap();
        assert!(a.submods["component:hello"]
            .reasons
            .iter()
            .any(|r| r.contains("below the reference policy's minimum 1.0.1")));
    }

    #[test]
    fn unsigned_components_are_contraindicated() {
        let (ak, key) = software_ak();
        let mut log = boot_log();
        log[2] = Record::new(
            2,
            8,
            &sha256(NO_POLICY),
            "tuk.policy",
            json!({"mode": "unsigned"}),
        );
        log.pop();
        push(
            &mut log,
            9,
            "tuk.component",
            json!({"signed": false, "name": "hello", "code_sha256": "c0de"}),
        );
        let e = evidence(&key, NONCE, log.clone(), healthy_report());
        let a = appraise(&ak, &e, NONCE, &refs(true, false)).unwrap();
        assert_eq!(a.submods["kernel"].status(), Status::Warning);
        assert_eq!(
            a.submods["component:hello"].status(),
            Status::Contraindicated
        );
        // "unsigned" with another digest is a forged record.
        log[2].digests[0].digest = hex(&sha256(b"x"));
        let e = evidence(&key, NONCE, log, healthy_report());
        assert!(matches!(
            appraise(&ak, &e, NONCE, &refs(true, false)),
            Err(Refusal::Record {
                recnum: 2,
                pcr: 8,
                ..
            })
        ));
    }

    fn violation(subject: &str, check: &str) -> Value {
        json!({"kind": "violation", "subject": subject, "check": check, "detail": "changed",
               "action": "reinstantiate", "uptime_ms": 3000})
    }

    #[test]
    fn a_repaired_component_is_a_warning_an_unrepaired_one_contraindicated() {
        let (ak, key) = software_ak();
        let mut log = boot_log();
        push(
            &mut log,
            10,
            "tuk.integrity",
            violation("component:hello", "code"),
        );
        let repaired = {
            let mut l = log.clone();
            push(
                &mut l,
                10,
                "tuk.integrity",
                json!({"kind": "reinstantiated", "subject": "component:hello",
                       "code_sha256": "c0de", "uptime_ms": 3001}),
            );
            l
        };
        let e = evidence(
            &key,
            NONCE,
            repaired.clone(),
            report(subject("trusted", 0, 0), subject("trusted", 1, 1)),
        );
        let a = appraise(&ak, &e, NONCE, &refs(true, true)).unwrap();
        assert_eq!(a.submods["kernel"].status(), Status::Affirming);
        let hello = &a.submods["component:hello"];
        assert_eq!(hello.status(), Status::Warning, "{:?}", hello.reasons);
        assert!(
            hello.reasons[0].contains("code check failed"),
            "{:?}",
            hello.reasons
        );
        assert_eq!(overall(&a), Status::Warning);

        // Quarantined: no repair, the report says untrusted.
        let e = evidence(
            &key,
            NONCE,
            log.clone(),
            report(subject("trusted", 0, 0), subject("untrusted", 1, 0)),
        );
        let a = appraise(&ak, &e, NONCE, &refs(true, true)).unwrap();
        let hello = &a.submods["component:hello"];
        assert_eq!(hello.status(), Status::Contraindicated);
        assert!(hello.reasons.iter().any(|r| r.contains("not repaired")));

        // A report that hides the violation disagrees with the log.
        let e = evidence(&key, NONCE, repaired.clone(), healthy_report());
        let a = appraise(&ak, &e, NONCE, &refs(true, true)).unwrap();
        assert_eq!(
            a.submods["component:hello"].status(),
            Status::Contraindicated
        );

        // Re-instantiated with other code than was measured.
        let mut wrong = repaired;
        wrong.pop();
        push(
            &mut wrong,
            10,
            "tuk.integrity",
            json!({"kind": "reinstantiated", "subject": "component:hello",
                   "code_sha256": "bad", "uptime_ms": 3001}),
        );
        let e = evidence(
            &key,
            NONCE,
            wrong,
            report(subject("trusted", 0, 0), subject("trusted", 1, 1)),
        );
        let a = appraise(&ak, &e, NONCE, &refs(true, true)).unwrap();
        assert_eq!(
            a.submods["component:hello"].status(),
            Status::Contraindicated
        );
    }

    #[test]
    fn a_kernel_violation_is_contraindicated() {
        let (ak, key) = software_ak();
        let mut log = boot_log();
        push(
            &mut log,
            10,
            "tuk.integrity",
            violation("kernel", "kernel-rodata"),
        );
        let e = evidence(
            &key,
            NONCE,
            log,
            report(subject("untrusted", 1, 0), subject("trusted", 0, 0)),
        );
        let a = appraise(&ak, &e, NONCE, &refs(true, true)).unwrap();
        let kernel = &a.submods["kernel"];
        assert_eq!(kernel.status(), Status::Contraindicated);
        assert!(kernel
            .reasons
            .iter()
            .any(|r| r.contains("kernel-rodata check failed")));
        assert_eq!(a.submods["component:hello"].status(), Status::Affirming);
    }

    /// Appraises `log` with `report` against the full references.
    fn appraised(log: Vec<Record>, report: Value) -> Appraisal {
        let (ak, key) = software_ak();
        let e = evidence(&key, NONCE, log, report);
        appraise(&ak, &e, NONCE, &refs(true, true)).unwrap()
    }

    fn has_reason(s: &Submodule, words: &[&str]) -> bool {
        s.reasons
            .iter()
            .any(|r| words.iter().all(|w| r.contains(w)))
    }

    /// A report of `uptime_ms` and `interval_ms` in which no round has run.
    fn roundless(uptime_ms: u64, interval_ms: u64) -> Value {
        let never = json!({"state": "trusted", "checks": 0, "violations": 0,
                           "reinstantiations": 0, "last_check_ms": null});
        let mut r = report(never.clone(), never);
        r["uptime_ms"] = json!(uptime_ms);
        r["interval_ms"] = json!(interval_ms);
        r
    }

    #[test]
    fn stale_or_missing_rounds_are_not_affirming() {
        // The last round three intervals and the slack ago.
        let mut r = healthy_report();
        r["uptime_ms"] = json!(60_000);
        let a = appraised(boot_log(), r);
        assert_eq!(a.submods["kernel"].status(), Status::Warning);
        assert!(has_reason(&a.submods["kernel"], &["last checked"]));
        // No round at all, although one was due (interval + slack).
        let a = appraised(boot_log(), roundless(2_500, 1000));
        assert_eq!(overall(&a), Status::Affirming, "{:?}", a.submods);
        let a = appraised(boot_log(), roundless(3_500, 1000));
        for s in a.submods.values() {
            assert_eq!(s.status(), Status::Warning, "{:?}", s.reasons);
            assert!(has_reason(s, &["no completed run-time measurement round"]));
        }
        // A round "after" the uptime: a report that cannot be true.
        let mut r = healthy_report();
        r["instances"][0]["last_check_ms"] = json!(9_000);
        let a = appraised(boot_log(), r);
        assert_eq!(a.submods["component:hello"].status(), Status::Warning);
    }

    #[test]
    fn measurement_configured_off_or_too_rare_is_contraindicated() {
        // integrity.interval_ms=0: off.
        let a = appraised(
            boot_log_with("integrity.interval_ms=0"),
            roundless(60_000, 0),
        );
        let k = &a.submods["kernel"];
        assert_eq!(k.status(), Status::Contraindicated);
        assert_eq!(k.vector[&Claim::Configuration], value::UNSUPPORTABLE_CONFIG);
        assert!(has_reason(
            k,
            &["PCR 5", "integrity.interval_ms = 0", "10..=10000"]
        ));
        // The review's attack: an interval no round ever reaches.
        let a = appraised(
            boot_log_with("integrity.interval_ms=1000000000000"),
            roundless(60_000, 1_000_000_000_000),
        );
        let k = &a.submods["kernel"];
        assert_eq!(k.status(), Status::Contraindicated);
        assert!(has_reason(
            k,
            &["integrity.interval_ms = 1000000000000", "10..=10000"]
        ));
        // ... and the missing round is found with the interval capped at the reference's max.
        assert!(has_reason(k, &["no completed run-time measurement round"]));
        assert_eq!(
            a.submods["component:hello"].status(),
            Status::Warning,
            "{:?}",
            a.submods["component:hello"].reasons
        );
        // A report that states another interval or policy than PCR 5 configures.
        let mut r = healthy_report();
        r["interval_ms"] = json!(0);
        let a = appraised(boot_log(), r);
        assert!(has_reason(
            &a.submods["kernel"],
            &["states interval_ms 0", "configures 1000"]
        ));
        assert_eq!(a.submods["kernel"].status(), Status::Contraindicated);
        let mut r = healthy_report();
        r["policy"] = json!("quarantine");
        let a = appraised(boot_log(), r);
        assert!(has_reason(
            &a.submods["kernel"],
            &["\"quarantine\"", "\"reinstantiate\""]
        ));
        // An unknown command-line key: named, contraindicated.
        let a = appraised(
            boot_log_with("integrity.interval_ms=1000 integrity.skip=kernel"),
            healthy_report(),
        );
        assert_eq!(a.submods["kernel"].status(), Status::Contraindicated);
        assert!(has_reason(
            &a.submods["kernel"],
            &["integrity.skip", "\"kernel\""]
        ));
        // Off, with a reference that allows it: still not affirming.
        let (ak, key) = software_ak();
        let mut lax = refs(true, true);
        lax.boot.interval_ms.min = 0;
        let e = evidence(
            &key,
            NONCE,
            boot_log_with("integrity.interval_ms=0"),
            roundless(60_000, 0),
        );
        let a = appraise(&ak, &e, NONCE, &lax).unwrap();
        assert_eq!(a.submods["kernel"].status(), Status::Warning);
        assert!(has_reason(
            &a.submods["kernel"],
            &["run-time measurement is off"]
        ));
    }

    #[test]
    fn u64_max_from_the_instance_does_not_panic_and_is_not_affirming() {
        let m = u64::MAX;
        let cmdline = format!("integrity.interval_ms={m}");
        for last in [None, Some(0), Some(m)] {
            let mut r = roundless(m, m);
            for path in ["/kernel", "/instances/0"] {
                let s = r.pointer_mut(path).unwrap();
                s["checks"] = json!(m);
                s["last_check_ms"] = json!(last);
            }
            let a = appraised(boot_log_with(&cmdline), r);
            let k = &a.submods["kernel"];
            assert_eq!(k.status(), Status::Contraindicated, "{last:?}");
            assert!(has_reason(k, &[&m.to_string(), "10..=10000"]));
        }
        // Huge counters and uptime with an honest configuration.
        let mut r = healthy_report();
        r["uptime_ms"] = json!(m);
        r["kernel"]["checks"] = json!(m);
        let a = appraised(boot_log(), r);
        assert_ne!(overall(&a), Status::Affirming);
    }

    /// A tuk.component-failed record for `name` and `code`, as the kernel writes it (D3).
    fn failed(log: &mut Vec<Record>, name: &str, code: &str) {
        push(
            log,
            9,
            COMPONENT_FAILED,
            json!({"name": name, "code_sha256": code, "error": "instantiation failed"}),
        );
    }

    #[test]
    fn a_failed_deployment_is_not_what_runs_nor_a_repair() {
        // hello 1.0.0 runs; 1.0.1 is measured, fails to load, and is recorded as failed.
        let mut log = boot_log();
        let mut v101 = component("hello", "1.0.1", "c0de2");
        v101["published"] = json!("runtime");
        push(&mut log, 9, "tuk.component", v101);
        failed(&mut log, "hello", "c0de2");
        let a = appraised(log.clone(), healthy_report());
        let hello = &a.submods["component:hello"];
        assert_eq!(hello.status(), Status::Affirming, "{:?}", hello.reasons);
        assert_eq!(hello.facts["version"], "1.0.0");
        assert_eq!(hello.facts["code_sha256"], "c0de");
        assert_eq!(hello.facts["deployments"], 1);
        assert_eq!(hello.facts["failed_deployments"][0]["version"], "1.0.1");

        // A violation, then a publish that fails: not a repair.
        let mut log = boot_log();
        push(
            &mut log,
            10,
            "tuk.integrity",
            violation("component:hello", "code"),
        );
        push(
            &mut log,
            9,
            "tuk.component",
            component("hello", "1.0.1", "c0de2"),
        );
        let repaired = log.clone();
        failed(&mut log, "hello", "c0de2");
        let r = report(subject("trusted", 0, 0), subject("untrusted", 1, 0));
        let a = appraised(log, r.clone());
        let hello = &a.submods["component:hello"];
        assert_eq!(hello.status(), Status::Contraindicated);
        assert!(has_reason(hello, &["not repaired"]));
        assert_eq!(hello.facts["version"], "1.0.0");
        // The same publish that loaded is a repair (a warning).
        let a = appraised(repaired, r);
        assert_eq!(a.submods["component:hello"].facts["version"], "1.0.1");
        assert!(has_reason(
            &a.submods["component:hello"],
            &["rebuilt from the verified code"]
        ));

        // Re-instantiation after a failed publish must rebuild the code that runs (1.0.0).
        let mut log = boot_log();
        push(
            &mut log,
            9,
            "tuk.component",
            component("hello", "1.0.1", "c0de2"),
        );
        failed(&mut log, "hello", "c0de2");
        push(
            &mut log,
            10,
            "tuk.integrity",
            violation("component:hello", "code"),
        );
        for (code, ok) in [("c0de", true), ("c0de2", false)] {
            let mut l = log.clone();
            push(
                &mut l,
                10,
                "tuk.integrity",
                json!({"kind": "reinstantiated", "subject": "component:hello",
                       "code_sha256": code, "uptime_ms": 3001}),
            );
            let a = appraised(
                l,
                report(subject("trusted", 0, 0), subject("trusted", 1, 1)),
            );
            let status = a.submods["component:hello"].status();
            assert_eq!(status == Status::Warning, ok, "{code}: {status}");
        }
    }

    #[test]
    fn a_component_whose_only_deployment_failed_does_not_run() {
        let mut log = boot_log();
        push(
            &mut log,
            9,
            "tuk.component",
            component("kv", "1.0.0", "beef"),
        );
        failed(&mut log, "kv", "beef");
        let a = appraised(log.clone(), healthy_report());
        assert!(!a.submods.contains_key("component:kv"));
        assert_eq!(overall(&a), Status::Affirming);
        // The report lists it anyway: it runs, but nothing measured stands for it.
        let mut r = healthy_report();
        let mut kv = subject("trusted", 0, 0);
        kv["name"] = json!("kv");
        r["instances"].as_array_mut().unwrap().push(kv);
        let a = appraised(log, r);
        let kv = &a.submods["component:kv"];
        assert_eq!(kv.status(), Status::Contraindicated);
        assert!(has_reason(kv, &["cancelled"]));
    }

    #[test]
    fn measured_but_not_running_is_contraindicated() {
        let mut log = boot_log();
        push(
            &mut log,
            9,
            "tuk.component",
            component("kv", "2.0.0", "beef"),
        );
        let a = appraised(log, healthy_report());
        let kv = &a.submods["component:kv"];
        assert_eq!(kv.status(), Status::Contraindicated);
        assert_eq!(kv.facts["version"], "2.0.0");
        assert!(has_reason(kv, &["does not list it"]));
        assert_eq!(
            a.submods["kernel"].facts["measured_not_running"],
            json!(["kv"])
        );
    }

    #[test]
    fn failed_records_the_kernel_never_writes_are_refused() {
        let (ak, key) = software_ak();
        let refuse = |log: Vec<Record>| {
            let e = evidence(&key, NONCE, log, healthy_report());
            appraise(&ak, &e, NONCE, &refs(true, true)).unwrap_err()
        };
        // No deployment before it.
        let mut log = boot_log();
        failed(&mut log, "kv", "beef");
        assert!(matches!(
            refuse(log),
            Refusal::Record {
                recnum: 4,
                pcr: 9,
                ..
            }
        ));
        // Twice for one deployment: it would cancel the one that runs.
        let mut log = boot_log();
        push(
            &mut log,
            9,
            "tuk.component",
            component("hello", "1.0.1", "c0de2"),
        );
        failed(&mut log, "hello", "c0de2");
        failed(&mut log, "hello", "c0de");
        assert!(matches!(refuse(log), Refusal::Record { recnum: 6, .. }));
        // Another code than the deployment it cancels.
        let mut log = boot_log();
        push(
            &mut log,
            9,
            "tuk.component",
            component("hello", "1.0.1", "c0de2"),
        );
        failed(&mut log, "hello", "c0de");
        let r = refuse(log);
        assert!(r.to_string().contains("other code"), "{r}");
        // Under another PCR.
        let mut log = boot_log();
        push(
            &mut log,
            10,
            COMPONENT_FAILED,
            json!({"name": "hello", "code_sha256": "c0de", "error": "x"}),
        );
        assert!(matches!(refuse(log), Refusal::Record { pcr: 10, .. }));
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[{"z":1,"y":"é"}],"c":null}}"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"a":{"c":null,"d":[{"y":"é","z":1}]},"b":1}"#
        );
        assert_eq!(canonical_json(&v), serde_json::to_vec(&v).unwrap());
    }
}
