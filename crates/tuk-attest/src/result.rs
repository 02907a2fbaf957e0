//! Attestation results in the vocabulary of IETF RATS: AR4SI trustworthiness claims and trust
//! tiers, carried as an EAR (EAT Attestation Result) claims set.
//!
//! [`AttestationResult::to_ear`] writes the JSON claims set exactly as the `ear` crate (0.6,
//! profile [`EAR_PROFILE`]) serializes one, unsigned: `eat_profile`, `iat`,
//! `ear_verifier_id`, `ear_status` (the overall tier), `eat_nonce` (base64url), and `submods`,
//! one appraisal per submodule (`kernel`, `component:NAME`) with `ear_status`,
//! `ear_trustworthiness_vector`, `ear_appraisal_policy_ids`, `ear_verifier_claims` (what the
//! verifier found: reasons, digests, versions) and `ear_attester_claims` (the instance's own
//! run-time record of the submodule, from the quoted report). Signing the EAR is not done yet.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// The EAR profile the claims set follows (the `ear` crate 0.6's `EAR_PROFILE`).
pub const EAR_PROFILE: &str = "tag:ietf.org,2026:rats/ear#04";
/// The appraisal policy every submodule is appraised under (docs/attestation.md).
pub const APPRAISAL_POLICY: &str = "tuk:attest/1";

/// An AR4SI trust tier, least to most severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing was claimed.
    None,
    Affirming,
    Warning,
    Contraindicated,
}

impl Status {
    /// The tier of an AR4SI claim value: -1..=1 none, -32..=31 affirming, -96..=95 warning,
    /// the rest contraindicated.
    pub fn of_claim(value: i8) -> Status {
        match value {
            -1..=1 => Status::None,
            -32..=31 => Status::Affirming,
            -96..=95 => Status::Warning,
            _ => Status::Contraindicated,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::None => "none",
            Status::Affirming => "affirming",
            Status::Warning => "warning",
            Status::Contraindicated => "contraindicated",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The AR4SI trustworthiness claims tuk sets, and the values it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Claim {
    /// The attester is the instance the verifier believes: EK certificate, credential
    /// activation of the AK, the quote's signature and freshness.
    InstanceIdentity,
    /// The trust policy (PCR 8) and the run-time measurement settings.
    Configuration,
    /// The kernel image (PCR 4) and the component code (PCR 9), and their run-time
    /// integrity (PCR 10, the report).
    Executables,
    /// The TPM the EK belongs to (its certificate's chain).
    Hardware,
}

impl Claim {
    /// The claim's name in `ear_trustworthiness_vector`.
    pub fn name(self) -> &'static str {
        match self {
            Claim::InstanceIdentity => "instance-identity",
            Claim::Configuration => "configuration",
            Claim::Executables => "executables",
            Claim::Hardware => "hardware",
        }
    }
}

/// AR4SI claim values (draft-ietf-rats-ar4si).
pub mod value {
    pub const CRYPTO_VALIDATION_FAILED: i8 = 99;
    pub const TRUSTWORTHY_INSTANCE: i8 = 2;
    pub const UNRECOGNIZED_INSTANCE: i8 = 97;
    pub const APPROVED_CONFIG: i8 = 2;
    pub const UNSAFE_CONFIG: i8 = 32;
    pub const UNAVAIL_CONFIG_ELEMS: i8 = 36;
    pub const UNSUPPORTABLE_CONFIG: i8 = 96;
    pub const APPROVED_RUNTIME: i8 = 2;
    pub const UNSAFE_RUNTIME: i8 = 32;
    pub const UNRECOGNIZED_RUNTIME: i8 = 33;
    pub const CONTRAINDICATED_RUNTIME: i8 = 96;
    pub const GENUINE_HARDWARE: i8 = 2;
    pub const UNRECOGNIZED_HARDWARE: i8 = 97;
}

/// One submodule's appraisal: the kernel, or one component.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Submodule {
    /// Set claims; the most severe value given for a claim wins.
    pub vector: BTreeMap<Claim, i8>,
    /// Why the status is what it is, one sentence each (every claim that is not affirming
    /// has one; affirming facts may have one too).
    pub reasons: Vec<String>,
    /// What the verifier established (digests, versions, keys), for the verifier claims.
    pub facts: Map<String, Value>,
    /// The instance's own record of the submodule, from the quoted report.
    pub attester: Option<Value>,
}

impl Submodule {
    /// Sets `claim` to `value` unless a more severe value is set already (higher tier, or the
    /// same tier and a larger value); adds `reason` if given.
    pub fn claim(&mut self, claim: Claim, value: i8, reason: Option<String>) {
        let slot = self.vector.entry(claim).or_insert(value);
        let worse = (Status::of_claim(value), value) > (Status::of_claim(*slot), *slot);
        if worse {
            *slot = value;
        }
        if let Some(r) = reason {
            if !self.reasons.contains(&r) {
                self.reasons.push(r);
            }
        }
    }

    /// The most severe tier of the claims ([`Status::None`] without claims).
    pub fn status(&self) -> Status {
        self.vector
            .values()
            .map(|v| Status::of_claim(*v))
            .max()
            .unwrap_or(Status::None)
    }

    fn to_ear(&self) -> Value {
        let vector: Map<String, Value> = self
            .vector
            .iter()
            .map(|(c, v)| (c.name().to_owned(), Value::from(*v)))
            .collect();
        let mut claims = self.facts.clone();
        claims.insert("reasons".into(), json!(self.reasons));
        let mut out = json!({
            "ear_status": self.status(),
            "ear_trustworthiness_vector": vector,
            "ear_appraisal_policy_ids": [APPRAISAL_POLICY],
            "ear_verifier_claims": claims,
        });
        if let (Some(a), Value::Object(map)) = (&self.attester, &mut out) {
            map.insert("ear_attester_claims".into(), a.clone());
        }
        out
    }
}

/// The result of one attestation.
#[derive(Clone, Debug, PartialEq)]
pub struct AttestationResult {
    /// Unix time (seconds) of the appraisal.
    pub issued_at: u64,
    /// The verifier's nonce for this attestation.
    pub nonce: Vec<u8>,
    /// `kernel` and `component:NAME`.
    pub submods: BTreeMap<String, Submodule>,
    /// Set when the evidence was refused outright (identity, quote or event log failed
    /// verification): why. The `kernel` submodule then carries the failed claim.
    pub refusal: Option<String>,
}

impl AttestationResult {
    /// The overall status: the most severe submodule's (contraindicated for a refusal).
    pub fn status(&self) -> Status {
        let worst = self
            .submods
            .values()
            .map(Submodule::status)
            .max()
            .unwrap_or(Status::None);
        if self.refusal.is_some() {
            Status::Contraindicated
        } else {
            worst
        }
    }

    /// The EAR claims set (module docs), unsigned.
    pub fn to_ear(&self) -> Value {
        let submods: Map<String, Value> = self
            .submods
            .iter()
            .map(|(name, s)| (name.clone(), s.to_ear()))
            .collect();
        let mut ear = json!({
            "eat_profile": EAR_PROFILE,
            "iat": self.issued_at,
            "ear_verifier_id": {
                "developer": "tuk",
                "build": concat!("tuk-attest ", env!("CARGO_PKG_VERSION")),
            },
            "ear_status": self.status(),
            "submods": submods,
        });
        if let Value::Object(map) = &mut ear {
            if (8..=64).contains(&self.nonce.len()) {
                map.insert("eat_nonce".into(), Value::from(B64URL.encode(&self.nonce)));
            }
            if let Some(r) = &self.refusal {
                map.insert("tuk_refusal".into(), Value::from(r.as_str()));
            }
        }
        ear
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_follow_ar4si() {
        assert_eq!(Status::of_claim(0), Status::None);
        assert_eq!(Status::of_claim(-1), Status::None);
        assert_eq!(Status::of_claim(2), Status::Affirming);
        assert_eq!(Status::of_claim(31), Status::Affirming);
        assert_eq!(Status::of_claim(32), Status::Warning);
        assert_eq!(Status::of_claim(95), Status::Warning);
        assert_eq!(Status::of_claim(96), Status::Contraindicated);
        assert_eq!(Status::of_claim(99), Status::Contraindicated);
        assert!(Status::Warning > Status::Affirming && Status::Contraindicated > Status::Warning);
    }

    #[test]
    fn the_most_severe_claim_wins() {
        let mut s = Submodule::default();
        assert_eq!(s.status(), Status::None);
        s.claim(Claim::Executables, value::APPROVED_RUNTIME, None);
        assert_eq!(s.status(), Status::Affirming);
        s.claim(
            Claim::Executables,
            value::UNSAFE_RUNTIME,
            Some("tampered".into()),
        );
        s.claim(Claim::Executables, value::APPROVED_RUNTIME, None);
        assert_eq!(s.vector[&Claim::Executables], value::UNSAFE_RUNTIME);
        assert_eq!(s.status(), Status::Warning);
        s.claim(
            Claim::Configuration,
            value::UNSUPPORTABLE_CONFIG,
            Some("x".into()),
        );
        s.claim(
            Claim::Configuration,
            value::UNSUPPORTABLE_CONFIG,
            Some("x".into()),
        );
        assert_eq!(s.status(), Status::Contraindicated);
        assert_eq!(s.reasons, ["tampered", "x"]);
    }

    #[test]
    fn ear_claims_set_shape() {
        let mut kernel = Submodule::default();
        kernel.claim(Claim::InstanceIdentity, value::TRUSTWORTHY_INSTANCE, None);
        kernel
            .facts
            .insert("kernel_sha256".into(), Value::from("00"));
        kernel.attester = Some(json!({"state": "trusted"}));
        let r = AttestationResult {
            issued_at: 1_700_000_000,
            nonce: vec![7; 16],
            submods: BTreeMap::from([("kernel".to_owned(), kernel)]),
            refusal: None,
        };
        assert_eq!(r.status(), Status::Affirming);
        let ear = r.to_ear();
        assert_eq!(ear["eat_profile"], EAR_PROFILE);
        assert_eq!(ear["ear_status"], "affirming");
        assert_eq!(ear["eat_nonce"], "BwcHBwcHBwcHBwcHBwcHBw");
        let k = &ear["submods"]["kernel"];
        assert_eq!(k["ear_status"], "affirming");
        assert_eq!(k["ear_trustworthiness_vector"]["instance-identity"], 2);
        assert_eq!(k["ear_appraisal_policy_ids"][0], APPRAISAL_POLICY);
        assert_eq!(k["ear_verifier_claims"]["kernel_sha256"], "00");
        assert_eq!(k["ear_attester_claims"]["state"], "trusted");
        let refused = AttestationResult {
            refusal: Some("bad".into()),
            ..r
        };
        assert_eq!(refused.status(), Status::Contraindicated);
        assert_eq!(refused.to_ear()["tuk_refusal"], "bad");
    }
}
