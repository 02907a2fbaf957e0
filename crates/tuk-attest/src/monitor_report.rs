//! The out-of-guest monitor's signed report (docs/measurement.md, "The monitor's verdict and
//! attestation"), and its appraisal next to a quote.
//!
//! The launcher (`tuk run`) watches guest RAM from the host; after every check it signs a
//! [`Report`] with its per-user monitor key (ed25519) as a DSSE envelope of payload type
//! [`PAYLOAD_TYPE`] — the envelope and signature code of `tuk-measure`, as for bundles and
//! kernel references — and serves the latest. A verifier appraises it with [`check`]: the
//! signature must verify with a key it trusts, `ak_name` and `boot` must be the attested
//! quote's AK and PCR 4/5 records, `checked_ms` within 2 monitor intervals (+
//! [`FRESHNESS_SLACK_MS`]) of now, and `seq` not lower than the last one seen. [`apply`] turns
//! the outcome into claims: a verified clean report is an affirming contribution to the
//! kernel's `executables` claim; a flagged one makes the kernel (or the named component)
//! contraindicated with the findings as reasons; a missing, stale or unverifiable one is a
//! warning. The guest cannot forge a report (the key is on the host) nor suppress one (no
//! report is not affirming).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tuk_measure::dsse::Envelope;
use tuk_measure::eventlog::Record;
use tuk_measure::policy::TrustedKey;
use tuk_measure::Digest;

use crate::attester::{Activation, AttestError, Attester};
use crate::credential::Credential;
use crate::evidence::{Evidence, Identity};
use crate::result::{value, AttestationResult, Claim, Submodule};

/// The DSSE payload type of a monitor report.
pub const PAYLOAD_TYPE: &str = "application/vnd.tuk.monitor-report+json";
/// Largest report envelope accepted, in bytes.
pub const MAX_REPORT: usize = 64 * 1024;
/// Most findings one report carries (the first ones; `findings_dropped` counts the rest).
pub const MAX_FINDINGS: usize = 32;
/// Clock difference and fetch delay tolerated on top of 2 monitor intervals.
pub const FRESHNESS_SLACK_MS: u64 = 1000;

/// `clean` or `flagged`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Clean,
    Flagged,
}

/// One change the monitor found in guest RAM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// `kernel` or `component:NAME`.
    pub target: String,
    /// `text`, `rodata` (kernel) or `code` (a component's code image).
    pub region: String,
    /// Guest-physical address of the first changed byte (of the region if unknown).
    pub paddr: u64,
    /// Its offset in the region, if known.
    pub offset: Option<u64>,
    pub expected_sha256: String,
    pub observed_sha256: String,
    /// Unix time (ms) of the check that found it.
    pub detected_ms: u64,
}

impl Finding {
    /// The finding as one sentence.
    pub fn describe(&self) -> String {
        let at = match self.offset {
            Some(o) => format!("at paddr {:#x} (offset {o:#x})", self.paddr),
            None => format!("in the region at paddr {:#x}", self.paddr),
        };
        let what = match self.target.strip_prefix("component:") {
            Some(name) => format!("component {name}'s {} image", self.region),
            None => format!("the kernel's {} segment", self.region),
        };
        format!(
            "out-of-guest monitor: {what} changed in guest RAM {at}: sha256 {} instead of {} (detected at {} ms)",
            short(&self.observed_sha256),
            short(&self.expected_sha256),
            self.detected_ms
        )
    }
}

/// One component code image the monitor compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentCheck {
    pub name: String,
    /// The `code_sha256` of its PCR 9 `tuk.component` record.
    pub code_sha256: String,
    pub addr: u64,
    pub len: u64,
    pub ok: bool,
}

/// The signed payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The instance's admin URL (informational; the AK binds the report to the instance).
    pub instance: String,
    /// Hex of the instance's AK name (`/_tuk/attestation/identity`).
    pub ak_name: String,
    /// Hex of [`boot_digest`] of the launcher's PCR 4/5 records.
    pub boot: String,
    /// Increases with every report; starts at the launcher's start time in unix ms, so a later
    /// `tuk run` of the same instance continues above it.
    pub seq: u64,
    /// Unix time (ms) the check finished.
    pub checked_ms: u64,
    /// The monitor's interval.
    pub interval_ms: u64,
    /// `flagged` once any finding was made since this VM booted (it stays so).
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
    #[serde(default)]
    pub findings_dropped: u64,
    /// Component code images compared in this check.
    #[serde(default)]
    pub components: Vec<ComponentCheck>,
    /// Set when this check could not cover every component's code image (the guest's status
    /// or event log could not be read, an image was not comparable, a component with a
    /// standing PCR 9 record was not listed): why. Such a report is not affirming.
    #[serde(default)]
    pub incomplete: Option<String>,
}

impl Report {
    /// The DSSE payload (compact JSON).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// SHA-256 over the PCR 4 and PCR 5 values that the log's PCR 4 and 5 records replay to
/// (`SHA-256(PCR4 || PCR5)`, each from zero): the launcher's measurements of this boot (the
/// kernel image and the boot configuration).
pub fn boot_digest(records: &[Record]) -> Result<Digest, String> {
    let mut pcr4 = [0u8; 32];
    let mut pcr5 = [0u8; 32];
    for r in records.iter().filter(|r| r.pcr == 4 || r.pcr == 5) {
        let d = r.sha256().map_err(|e| e.to_string())?;
        let pcr = if r.pcr == 4 { &mut pcr4 } else { &mut pcr5 };
        *pcr = tuk_measure::eventlog::extend(pcr, &d);
    }
    let mut h = Sha256::new();
    h.update(pcr4);
    h.update(pcr5);
    Ok(h.finalize().into())
}

/// Why a report does not count.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("no monitor report: {0}")]
    Missing(String),
    #[error("the monitor report is not a DSSE envelope: {0}")]
    Envelope(String),
    #[error("the monitor report's payload type is {0:?}, not {PAYLOAD_TYPE}")]
    PayloadType(String),
    #[error("the monitor report is not signed by a trusted monitor key (pass the launcher host's monitor.pub with --monitor-key)")]
    Untrusted,
    #[error("the monitor report's payload is not a report: {0}")]
    Payload(String),
    #[error("the monitor report is for AK {found}, but the attested instance's AK is {expected} (a report for another instance)")]
    AkName { expected: String, found: String },
    #[error("the monitor report is for boot {found}, but the quote's PCR 4/5 records give {expected} (a report for another boot)")]
    Boot { expected: String, found: String },
    #[error("the monitor report is stale: checked {age_ms} ms ago, more than 2 intervals of {interval_ms} ms + {FRESHNESS_SLACK_MS} ms (replayed, or the monitor stopped)")]
    Stale { age_ms: u64, interval_ms: u64 },
    #[error("the monitor report is dated {ahead_ms} ms in the future")]
    Future { ahead_ms: u64 },
    #[error("the monitor report's seq {found} is lower than {last}, seen before (an old report replayed)")]
    SeqBack { last: u64, found: u64 },
}

/// What the report must match.
#[derive(Clone, Debug)]
pub struct Expect<'a> {
    /// Hex of the attested AK's name.
    pub ak_name: &'a str,
    /// [`boot_digest`] of the quoted (verified) event log.
    pub boot: Digest,
    /// Now, unix ms.
    pub now_ms: u64,
    /// The highest `seq` accepted before for this instance, if tracked.
    pub last_seq: Option<u64>,
}

/// A report that passed [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub report: Report,
    /// Keyid of the trusted key that signed it.
    pub signer: String,
}

/// Verifies a report envelope (untrusted bytes) against `keys` and `expect`.
pub fn check(
    envelope: &[u8],
    keys: &[TrustedKey],
    expect: &Expect<'_>,
) -> Result<Verified, ReportError> {
    if envelope.len() > MAX_REPORT {
        return Err(ReportError::Envelope(format!(
            "{} bytes; at most {MAX_REPORT} are accepted",
            envelope.len()
        )));
    }
    let env = Envelope::from_json(envelope).map_err(|e| ReportError::Envelope(e.to_string()))?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(ReportError::PayloadType(
            env.payload_type.chars().take(128).collect(),
        ));
    }
    let signer = tuk_measure::trusted_signer_among(&env, keys).ok_or(ReportError::Untrusted)?;
    let report: Report =
        serde_json::from_slice(&env.payload).map_err(|e| ReportError::Payload(e.to_string()))?;
    if report.interval_ms == 0 {
        return Err(ReportError::Payload("interval_ms is 0".into()));
    }
    if report.verdict == Verdict::Clean && !report.findings.is_empty() {
        return Err(ReportError::Payload("a clean verdict with findings".into()));
    }
    if !report.ak_name.eq_ignore_ascii_case(expect.ak_name) {
        return Err(ReportError::AkName {
            expected: expect.ak_name.to_owned(),
            found: report.ak_name.chars().take(140).collect(),
        });
    }
    let boot = tuk_measure::hex(&expect.boot);
    if !report.boot.eq_ignore_ascii_case(&boot) {
        return Err(ReportError::Boot {
            expected: boot,
            found: report.boot.chars().take(64).collect(),
        });
    }
    let window = report
        .interval_ms
        .saturating_mul(2)
        .saturating_add(FRESHNESS_SLACK_MS);
    let age_ms = expect.now_ms.saturating_sub(report.checked_ms);
    if age_ms > window {
        return Err(ReportError::Stale {
            age_ms,
            interval_ms: report.interval_ms,
        });
    }
    let ahead_ms = report.checked_ms.saturating_sub(expect.now_ms);
    if ahead_ms > FRESHNESS_SLACK_MS {
        return Err(ReportError::Future { ahead_ms });
    }
    if let Some(last) = expect.last_seq {
        if report.seq < last {
            return Err(ReportError::SeqBack {
                last,
                found: report.seq,
            });
        }
    }
    Ok(Verified { report, signer })
}

/// Adds the report's outcome to `result` (see the module docs). A refused result is left
/// alone (it is contraindicated already).
pub fn apply(result: &mut AttestationResult, outcome: &Result<Verified, ReportError>) {
    if result.refusal.is_some() {
        return;
    }
    let kernel = result.submods.entry("kernel".to_owned()).or_default();
    match outcome {
        Err(e) => {
            kernel.facts.insert(
                "monitor_report".into(),
                json!({"status": "not-verified", "error": e.to_string()}),
            );
            kernel.claim(
                Claim::Executables,
                value::UNRECOGNIZED_RUNTIME,
                Some(format!(
                    "{e}; the out-of-guest monitor's verdict is unknown"
                )),
            );
        }
        Ok(v) => {
            let r = &v.report;
            kernel.facts.insert(
                "monitor_report".into(),
                json!({"status": "verified", "verdict": r.verdict, "seq": r.seq,
                       "checked_ms": r.checked_ms, "interval_ms": r.interval_ms,
                       "signer": v.signer, "findings": r.findings.len(),
                       "incomplete": r.incomplete,
                       "components": r.components.iter().map(|c| Value::from(c.name.clone())).collect::<Vec<_>>()}),
            );
            match r.verdict {
                Verdict::Clean if r.incomplete.is_some() => kernel.claim(
                    Claim::Executables,
                    value::UNRECOGNIZED_RUNTIME,
                    Some(format!(
                        "the out-of-guest monitor could not check every component's code image: {}",
                        r.incomplete.as_deref().unwrap_or_default()
                    )),
                ),
                Verdict::Clean => kernel.claim(Claim::Executables, value::APPROVED_RUNTIME, None),
                Verdict::Flagged => {
                    for f in &r.findings {
                        let submodule = match f.target.strip_prefix("component:") {
                            Some(_) => f.target.clone(),
                            None => "kernel".to_owned(),
                        };
                        let sub: &mut Submodule = result.submods.entry(submodule).or_default();
                        sub.claim(
                            Claim::Executables,
                            value::CONTRAINDICATED_RUNTIME,
                            Some(f.describe()),
                        );
                    }
                    if r.findings.is_empty() || r.findings_dropped > 0 {
                        result
                            .submods
                            .entry("kernel".to_owned())
                            .or_default()
                            .claim(
                                Claim::Executables,
                                value::CONTRAINDICATED_RUNTIME,
                                Some(format!(
                                    "out-of-guest monitor: flagged ({} findings not listed)",
                                    r.findings_dropped
                                )),
                            );
                    }
                }
            }
        }
    }
}

/// Fetches nothing itself: appraises an already fetched report (`fetched`) next to `result`,
/// the attestation of the instance whose quoted `evidence` it was; the AK comes from the
/// result's `ak_name` fact, the boot digest from the evidence's (quote-verified) event log.
/// Returns the accepted report's `seq` (for the caller's per-instance tracking).
pub fn appraise_report(
    result: &mut AttestationResult,
    evidence: Option<&Evidence>,
    fetched: Result<Vec<u8>, ReportError>,
    keys: &[TrustedKey],
    last_seq: Option<u64>,
) -> Option<u64> {
    if result.refusal.is_some() {
        return None;
    }
    let ak_name = result
        .submods
        .get("kernel")
        .and_then(|k| k.facts.get("ak_name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let outcome = match (ak_name, evidence.map(|e| boot_digest(&e.eventlog))) {
        (Some(ak_name), Some(Ok(boot))) => fetched.and_then(|envelope| {
            check(
                &envelope,
                keys,
                &Expect {
                    ak_name: &ak_name,
                    boot,
                    now_ms: now_ms(),
                    last_seq,
                },
            )
        }),
        _ => Err(ReportError::Missing(
            "the attestation established no AK name or event log to compare it with".into(),
        )),
    };
    let seq = outcome.as_ref().ok().map(|v| v.report.seq);
    apply(result, &outcome);
    seq
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An [`Attester`] that keeps the evidence the wrapped one returned (the quote's event log is
/// what the report's `boot` is compared with).
pub struct EvidenceTap<'a> {
    pub inner: &'a mut dyn Attester,
    pub evidence: Option<Evidence>,
}

impl<'a> EvidenceTap<'a> {
    pub fn new(inner: &'a mut dyn Attester) -> Self {
        EvidenceTap {
            inner,
            evidence: None,
        }
    }
}

impl Attester for EvidenceTap<'_> {
    fn identity(&mut self) -> Result<Identity, AttestError> {
        self.inner.identity()
    }
    fn activate(&mut self, credential: &Credential) -> Result<Activation, AttestError> {
        self.inner.activate(credential)
    }
    fn evidence(&mut self, nonce: &[u8]) -> Result<Evidence, AttestError> {
        let e = self.inner.evidence(nonce)?;
        self.evidence = Some(e.clone());
        Ok(e)
    }
}

/// GETs a report envelope from `url` (at most [`MAX_REPORT`] bytes).
pub fn fetch(url: &str, timeout: Duration) -> Result<Vec<u8>, ReportError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .user_agent(concat!("tuk-attest/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let missing = |d: String| ReportError::Missing(format!("{url}: {d}"));
    let response = agent.get(url).call().map_err(|e| missing(e.to_string()))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(missing(format!("answered {status}")));
    }
    response
        .into_body()
        .into_with_config()
        .limit(MAX_REPORT as u64 + 1)
        .read_to_vec()
        .map_err(|e| missing(e.to_string()))
}

fn short(hex: &str) -> &str {
    hex.get(..16).unwrap_or(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> (TrustedKey, ed25519_signer::Key) {
        let k = ed25519_signer::Key(seed);
        (k.trusted(), k)
    }

    /// Signing lives in `tuk-measure`'s `sign` feature (the launcher's side); the tests build
    /// envelopes with the same PAE through it.
    mod ed25519_signer {
        use tuk_measure::policy::TrustedKey;
        pub struct Key(pub u8);
        impl Key {
            fn sk(&self) -> tuk_measure::sign::SigningKey {
                tuk_measure::sign::SigningKey::from_seed([self.0; 32])
            }
            pub fn trusted(&self) -> TrustedKey {
                self.sk().trusted_key()
            }
            pub fn sign(&self, payload: Vec<u8>) -> Vec<u8> {
                self.sk()
                    .sign_envelope(super::PAYLOAD_TYPE, payload)
                    .to_json()
            }
        }
    }

    fn report(verdict: Verdict, findings: Vec<Finding>) -> Report {
        Report {
            instance: "http://127.0.0.1:1".into(),
            ak_name: "000b11".into(),
            boot: tuk_measure::hex(&[7; 32]),
            seq: 10,
            checked_ms: 100_000,
            interval_ms: 200,
            verdict,
            findings,
            findings_dropped: 0,
            components: vec![],
            incomplete: None,
        }
    }

    fn expect() -> Expect<'static> {
        Expect {
            ak_name: "000b11",
            boot: [7; 32],
            now_ms: 100_300,
            last_seq: Some(9),
        }
    }

    #[test]
    fn verifies_and_refuses() {
        let (trusted, k) = key(1);
        let (other, _) = key(2);
        let env = k.sign(report(Verdict::Clean, vec![]).to_json());
        let v = check(&env, &[other.clone(), trusted.clone()], &expect()).unwrap();
        assert_eq!(v.signer, trusted.keyid);
        assert_eq!(
            check(&env, &[other], &expect()),
            Err(ReportError::Untrusted)
        );
        let mut e = expect();
        e.now_ms = 100_000 + 2 * 200 + FRESHNESS_SLACK_MS + 1;
        assert!(matches!(
            check(&env, std::slice::from_ref(&trusted), &e),
            Err(ReportError::Stale { .. })
        ));
        e.now_ms = 0;
        assert!(matches!(
            check(&env, std::slice::from_ref(&trusted), &e),
            Err(ReportError::Future { .. })
        ));
        let mut e = expect();
        e.last_seq = Some(11);
        assert!(matches!(
            check(&env, std::slice::from_ref(&trusted), &e),
            Err(ReportError::SeqBack { .. })
        ));
        let mut e = expect();
        e.ak_name = "000b12";
        assert!(matches!(
            check(&env, std::slice::from_ref(&trusted), &e),
            Err(ReportError::AkName { .. })
        ));
        let mut e = expect();
        e.boot = [8; 32];
        assert!(matches!(
            check(&env, std::slice::from_ref(&trusted), &e),
            Err(ReportError::Boot { .. })
        ));
        // A changed payload under the old signature.
        let mut env2 = Envelope::from_json(&env).unwrap();
        let mut r = report(Verdict::Clean, vec![]);
        r.seq = 99;
        env2.payload = r.to_json();
        assert_eq!(
            check(&env2.to_json(), std::slice::from_ref(&trusted), &expect()),
            Err(ReportError::Untrusted)
        );
        // Saturating: a huge interval does not overflow.
        let mut r = report(Verdict::Clean, vec![]);
        r.interval_ms = u64::MAX;
        assert!(check(&k.sign(r.to_json()), &[trusted], &expect()).is_ok());
    }

    #[test]
    fn flagged_contraindicates_the_named_submodule() {
        let finding = |target: &str| Finding {
            target: target.into(),
            region: "code".into(),
            paddr: 0x1234,
            offset: None,
            expected_sha256: "aa".repeat(32),
            observed_sha256: "bb".repeat(32),
            detected_ms: 5,
        };
        let mut result = AttestationResult {
            issued_at: 0,
            nonce: vec![],
            submods: [
                ("kernel".to_owned(), Submodule::default()),
                ("component:hello".to_owned(), Submodule::default()),
            ]
            .into(),
            refusal: None,
        };
        result.submods.get_mut("kernel").unwrap().claim(
            Claim::Executables,
            value::APPROVED_RUNTIME,
            None,
        );
        let v = Verified {
            report: report(Verdict::Flagged, vec![finding("component:hello")]),
            signer: "k".into(),
        };
        apply(&mut result, &Ok(v));
        use crate::result::Status;
        assert_eq!(result.submods["kernel"].status(), Status::Affirming);
        assert_eq!(
            result.submods["component:hello"].status(),
            Status::Contraindicated
        );
        assert!(result.submods["component:hello"].reasons[0].contains("component hello's code"));
        apply(&mut result, &Err(ReportError::Untrusted));
        assert_eq!(result.submods["kernel"].status(), Status::Warning);

        // A clean report that could not check every component is not affirming.
        let mut fresh = AttestationResult {
            submods: [("kernel".to_owned(), Submodule::default())].into(),
            ..result.clone()
        };
        let mut r = report(Verdict::Clean, vec![]);
        r.incomplete = Some("GET /_tuk/status answered 500".into());
        apply(
            &mut fresh,
            &Ok(Verified {
                report: r,
                signer: "k".into(),
            }),
        );
        assert_eq!(fresh.submods["kernel"].status(), Status::Warning);
        assert!(fresh.submods["kernel"].reasons[0].contains("answered 500"));
    }

    #[test]
    fn boot_digest_uses_only_pcr_4_and_5() {
        let r = |n, pcr, d: u8| Record::new(n, pcr, &[d; 32], "x", Value::Null);
        let a = boot_digest(&[r(0, 4, 1), r(1, 5, 2), r(2, 9, 3)]).unwrap();
        let b = boot_digest(&[r(0, 4, 1), r(1, 5, 2)]).unwrap();
        let c = boot_digest(&[r(0, 4, 1), r(1, 5, 3)]).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
