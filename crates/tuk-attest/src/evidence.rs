//! The instance's attestation documents as the kernel serves them (docs/attestation.md,
//! "Remote attestation: the protocol"): its identity (`GET /_tuk/attestation/identity`) and a
//! quote with the event log and the run-time report (`GET /_tuk/attestation?nonce=`).
//!
//! These are the checked constructors for untrusted bytes: size-bounded, base64 and hex
//! decoded, the event log parsed with `tuk_measure::eventlog`. Nothing here is *verified*; that
//! is [`crate::appraise`]'s job. A document that does not parse is malformed evidence (the
//! verifier's error, exit status 2 in `tuk attest`), not a refusal.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tuk_measure::eventlog::{self, Record};

use crate::hex;

/// Largest identity document accepted (an RSA EK certificate is about 1 KB).
pub const MAX_IDENTITY: usize = 64 * 1024;
/// Largest evidence document accepted: the event log's own bound plus the rest.
pub const MAX_EVIDENCE: usize = eventlog::MAX_LOG + 1024 * 1024;

/// Why a document is not the contract's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EvidenceError {
    #[error("the {what} is {len} bytes; at most {max} are accepted")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("the {what} is not the contract's document: {detail}")]
    Malformed { what: &'static str, detail: String },
}

/// `GET /_tuk/attestation/identity`: the EK (public area and certificate) and the AK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The EK's persistent handle (0x81010001 for swtpm's RSA-2048 EK).
    pub ek_handle: u32,
    /// `rsa2048`.
    pub ek_template: String,
    /// The EK's TPMT_PUBLIC.
    pub ek_public: Vec<u8>,
    /// The EK certificate (DER) from NV.
    pub ek_certificate: Vec<u8>,
    /// The AK's TPMT_PUBLIC.
    pub ak_public: Vec<u8>,
    /// The TPM name the instance states for its AK (the verifier recomputes it).
    pub ak_name: Vec<u8>,
}

/// `GET /_tuk/attestation?nonce=`: a quote bound to the nonce and the run-time report, with
/// the event log.
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    /// The nonce the instance says it quoted.
    pub nonce: Vec<u8>,
    /// The run-time report (the integrity monitor's state); the quote's qualifying data is
    /// SHA-256(nonce || canonical JSON of this value).
    pub report: Value,
    /// The qualifying data the instance says it passed to TPM2_Quote.
    pub qualifying_data: Vec<u8>,
    /// TPMS_ATTEST.
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE.
    pub signature: Vec<u8>,
    /// The PCRs the instance says it quoted.
    pub pcrs: Vec<u32>,
    /// The CEL-JSON event log (parsed, not yet replayed).
    pub eventlog: Vec<Record>,
}

#[derive(Deserialize)]
struct RawIdentity {
    ek: RawEk,
    ak: RawAk,
}

#[derive(Deserialize)]
struct RawEk {
    handle: u32,
    template: String,
    public: String,
    certificate: String,
}

#[derive(Deserialize)]
struct RawAk {
    public: String,
    name: String,
}

#[derive(Deserialize)]
struct RawEvidence {
    nonce: String,
    report: Value,
    qualifying_data: String,
    quote: RawQuote,
    pcrs: Vec<u32>,
    eventlog: Value,
}

#[derive(Deserialize)]
struct RawQuote {
    attest: String,
    signature: String,
}

fn bounded(what: &'static str, bytes: &[u8], max: usize) -> Result<(), EvidenceError> {
    if bytes.len() > max {
        return Err(EvidenceError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    Ok(())
}

fn base64(what: &'static str, field: &str, value: &str) -> Result<Vec<u8>, EvidenceError> {
    B64.decode(value).map_err(|e| EvidenceError::Malformed {
        what,
        detail: format!("`{field}` is not base64: {e}"),
    })
}

/// Decodes hex (either case) of any even length.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            let pair = s.get(i..i + 2)?;
            if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u8::from_str_radix(pair, 16).ok()
        })
        .collect()
}

fn hex_field(what: &'static str, field: &str, value: &str) -> Result<Vec<u8>, EvidenceError> {
    unhex(value).ok_or_else(|| EvidenceError::Malformed {
        what,
        detail: format!("`{field}` is not hex"),
    })
}

impl Identity {
    /// Parses the identity document.
    pub fn from_json(bytes: &[u8]) -> Result<Identity, EvidenceError> {
        const WHAT: &str = "identity document";
        bounded(WHAT, bytes, MAX_IDENTITY)?;
        let raw: RawIdentity =
            serde_json::from_slice(bytes).map_err(|e| EvidenceError::Malformed {
                what: WHAT,
                detail: e.to_string(),
            })?;
        Ok(Identity {
            ek_handle: raw.ek.handle,
            ek_template: raw.ek.template,
            ek_public: base64(WHAT, "ek.public", &raw.ek.public)?,
            ek_certificate: base64(WHAT, "ek.certificate", &raw.ek.certificate)?,
            ak_public: base64(WHAT, "ak.public", &raw.ak.public)?,
            ak_name: hex_field(WHAT, "ak.name", &raw.ak.name)?,
        })
    }

    /// The document again (the kernel's encoding).
    pub fn to_json(&self) -> Value {
        json!({
            "ek": {
                "handle": self.ek_handle,
                "template": self.ek_template,
                "public": B64.encode(&self.ek_public),
                "certificate": B64.encode(&self.ek_certificate),
            },
            "ak": {"public": B64.encode(&self.ak_public), "name": hex(&self.ak_name)},
        })
    }
}

impl Evidence {
    /// Parses the evidence document (bounded; the event log with `eventlog::parse_log`'s
    /// bounds).
    pub fn from_json(bytes: &[u8]) -> Result<Evidence, EvidenceError> {
        const WHAT: &str = "evidence document";
        bounded(WHAT, bytes, MAX_EVIDENCE)?;
        let raw: RawEvidence =
            serde_json::from_slice(bytes).map_err(|e| EvidenceError::Malformed {
                what: WHAT,
                detail: e.to_string(),
            })?;
        let log = serde_json::to_vec(&raw.eventlog).map_err(|e| EvidenceError::Malformed {
            what: WHAT,
            detail: e.to_string(),
        })?;
        let eventlog = eventlog::parse_log(&log).map_err(|e| EvidenceError::Malformed {
            what: WHAT,
            detail: format!("`eventlog`: {e}"),
        })?;
        Ok(Evidence {
            nonce: hex_field(WHAT, "nonce", &raw.nonce)?,
            report: raw.report,
            qualifying_data: hex_field(WHAT, "qualifying_data", &raw.qualifying_data)?,
            attest: base64(WHAT, "quote.attest", &raw.quote.attest)?,
            signature: base64(WHAT, "quote.signature", &raw.quote.signature)?,
            pcrs: raw.pcrs,
            eventlog,
        })
    }

    /// The document again (the kernel's encoding).
    pub fn to_json(&self) -> Value {
        json!({
            "nonce": hex(&self.nonce),
            "report": self.report,
            "qualifying_data": hex(&self.qualifying_data),
            "quote": {"attest": B64.encode(&self.attest), "signature": B64.encode(&self.signature)},
            "pcrs": self.pcrs,
            "eventlog": self.eventlog,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDENTITY: &str = r#"{"ek":{"handle":2164326401,"template":"rsa2048","public":"AAE=","certificate":"MIIB"},
        "ak":{"public":"ACM=","name":"000bAbCd"}}"#;

    #[test]
    fn identity_round_trip() {
        let id = Identity::from_json(IDENTITY.as_bytes()).unwrap();
        assert_eq!(id.ek_handle, 0x8101_0001);
        assert_eq!(id.ek_public, [0, 1]);
        assert_eq!(id.ak_name, [0, 0x0b, 0xab, 0xcd]);
        let again = serde_json::to_vec(&id.to_json()).unwrap();
        assert_eq!(Identity::from_json(&again).unwrap(), id);
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in [
            "",
            "{}",
            r#"{"ek":{"handle":1,"template":"x","public":"!!","certificate":""},"ak":{"public":"","name":""}}"#,
            r#"{"ek":{"handle":1,"template":"x","public":"","certificate":""},"ak":{"public":"","name":"abc"}}"#,
        ] {
            assert!(
                matches!(
                    Identity::from_json(bad.as_bytes()),
                    Err(EvidenceError::Malformed { .. })
                ),
                "{bad}"
            );
        }
        let big = vec![b' '; MAX_IDENTITY + 1];
        assert!(matches!(
            Identity::from_json(&big),
            Err(EvidenceError::TooLarge { .. })
        ));
        let evidence = r#"{"nonce":"0011","report":{},"qualifying_data":"00","quote":{"attest":"","signature":""},"pcrs":[4],"eventlog":{}}"#;
        assert!(matches!(
            Evidence::from_json(evidence.as_bytes()),
            Err(EvidenceError::Malformed { detail, .. }) if detail.contains("eventlog")
        ));
        let evidence = evidence.replace(r#""eventlog":{}"#, r#""eventlog":[]"#);
        let e = Evidence::from_json(evidence.as_bytes()).unwrap();
        assert_eq!(e.nonce, [0, 0x11]);
        let again = serde_json::to_vec(&e.to_json()).unwrap();
        assert_eq!(Evidence::from_json(&again).unwrap(), e);
    }

    #[test]
    fn unhex_takes_both_cases_and_nothing_else() {
        assert_eq!(unhex("00aB"), Some(vec![0, 0xab]));
        assert_eq!(unhex(""), Some(vec![]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("+1"), None);
        assert_eq!(unhex("é1"), None);
    }
}
