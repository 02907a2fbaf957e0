//! DSSE (Dead Simple Signing Envelope) v1: the envelope that carries the signed in-toto
//! Statement, and PAE, the encoding the signatures are computed over.
//!
//! ```json
//! {"payload":"<base64>","payloadType":"application/vnd.in-toto+json",
//!  "signatures":[{"keyid":"<hex sha256 of the ed25519 key>","sig":"<base64>"}]}
//! ```
//!
//! [`Envelope::from_json`] is the checked constructor for untrusted bytes: at most
//! [`MAX_ENVELOPE`] bytes and [`MAX_SIGNATURES`] signatures, no unknown or duplicate fields,
//! base64 in the standard or URL-safe alphabet (the DSSE spec allows either; padding
//! optional, non-canonical trailing bits refused). It only decodes: nothing in the payload is
//! trusted until a signature over [`pae`] verifies ([`crate::verify_bundle`]).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write as _;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{alphabet, Engine as _};
use serde::{Deserialize, Serialize};

/// Largest envelope accepted, in bytes of JSON.
pub const MAX_ENVELOPE: usize = 256 * 1024;
/// Most signatures one envelope may carry (each costs a verification per matching key).
pub const MAX_SIGNATURES: usize = 16;

const DECODE: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, DECODE);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, DECODE);
/// What tuk writes: standard alphabet, padded.
const ENCODE: GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A decoded envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub signatures: Vec<Signature>,
}

/// One signature: `sig` over `pae(payload_type, payload)` by the key `keyid` names (a hint:
/// the keyid itself is not authenticated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub keyid: String,
    pub sig: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is {len} bytes; at most {MAX_ENVELOPE} are accepted")]
    TooLarge { len: usize },
    #[error("envelope is not DSSE JSON ({0}); sign the component again with `tuk sign`")]
    Json(String),
    #[error("envelope field {0} is not valid base64")]
    Base64(&'static str),
    #[error("envelope has {0} signatures; at most {MAX_SIGNATURES} are accepted")]
    TooManySignatures(usize),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEnvelope {
    payload: String,
    #[serde(rename = "payloadType")]
    payload_type: String,
    signatures: Vec<WireSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSignature {
    #[serde(default)]
    keyid: String,
    sig: String,
}

fn decode_base64(text: &str, field: &'static str) -> Result<Vec<u8>, EnvelopeError> {
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .map_err(|_| EnvelopeError::Base64(field))
}

impl Envelope {
    /// Parses an envelope (see the module docs for what is checked).
    pub fn from_json(json: &[u8]) -> Result<Self, EnvelopeError> {
        if json.len() > MAX_ENVELOPE {
            return Err(EnvelopeError::TooLarge { len: json.len() });
        }
        let wire: WireEnvelope =
            serde_json::from_slice(json).map_err(|e| EnvelopeError::Json(e.to_string()))?;
        if wire.signatures.len() > MAX_SIGNATURES {
            return Err(EnvelopeError::TooManySignatures(wire.signatures.len()));
        }
        let signatures = wire
            .signatures
            .into_iter()
            .map(|s| {
                Ok(Signature {
                    keyid: s.keyid,
                    sig: decode_base64(&s.sig, "signatures[].sig")?,
                })
            })
            .collect::<Result<_, EnvelopeError>>()?;
        Ok(Envelope {
            payload: decode_base64(&wire.payload, "payload")?,
            payload_type: wire.payload_type,
            signatures,
        })
    }

    /// Compact JSON, base64 in the standard alphabet with padding.
    pub fn to_json(&self) -> Vec<u8> {
        let wire = WireEnvelope {
            payload: ENCODE.encode(&self.payload),
            payload_type: self.payload_type.clone(),
            signatures: self
                .signatures
                .iter()
                .map(|s| WireSignature {
                    keyid: s.keyid.clone(),
                    sig: ENCODE.encode(&s.sig),
                })
                .collect(),
        };
        // Serializing strings and vectors into memory cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// The bytes every signature signs.
    pub fn pae(&self) -> Vec<u8> {
        pae(&self.payload_type, &self.payload)
    }
}

/// DSSE v1 pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut head = String::with_capacity(32 + payload_type.len());
    // Writing into a String cannot fail.
    let _ = write!(
        head,
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    );
    let mut out = Vec::with_capacity(head.len() + payload.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    #[test]
    fn pae_matches_the_dsse_spec() {
        // From the DSSE protocol specification (protocol.md, "Test vectors").
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
        // Lengths are bytes, not characters.
        assert_eq!(pae("é", b"\xff"), b"DSSEv1 2 \xc3\xa9 1 \xff");
    }

    fn sample() -> Envelope {
        Envelope {
            payload_type: "application/vnd.in-toto+json".into(),
            payload: b"{\"a\":1}\xff".to_vec(),
            signatures: alloc::vec![Signature {
                keyid: "ab".into(),
                sig: alloc::vec![1; 64],
            }],
        }
    }

    #[test]
    fn json_round_trip() {
        let env = sample();
        let json = env.to_json();
        assert!(
            json.starts_with(br#"{"payload":""#),
            "{}",
            String::from_utf8_lossy(&json)
        );
        assert_eq!(Envelope::from_json(&json).unwrap(), env);
    }

    #[test]
    fn accepts_url_safe_and_unpadded_base64_and_missing_keyid() {
        let env = Envelope::from_json(
            br#"{"payloadType":"t","payload":"_-8","signatures":[{"sig":"AQ=="}]}"#,
        )
        .unwrap();
        assert_eq!(env.payload, [0xff, 0xef]);
        assert_eq!(env.signatures[0].keyid, "");
        assert_eq!(env.signatures[0].sig, [1]);
    }

    #[test]
    fn rejects_bad_envelopes() {
        let bad = |json: &str| Envelope::from_json(json.as_bytes()).unwrap_err();
        assert!(matches!(bad("[]"), EnvelopeError::Json(_)));
        assert!(matches!(
            bad(r#"{"payloadType":"t","payload":"","signatures":[],"extra":1}"#),
            EnvelopeError::Json(_)
        ));
        assert!(matches!(
            bad(r#"{"payloadType":"t","payloadType":"u","payload":"","signatures":[]}"#),
            EnvelopeError::Json(_)
        ));
        assert_eq!(
            bad(r#"{"payloadType":"t","payload":"!!","signatures":[]}"#),
            EnvelopeError::Base64("payload")
        );
        // Non-canonical trailing bits ("AR" decodes to 0x01 with a stray bit).
        assert_eq!(
            bad(r#"{"payloadType":"t","payload":"","signatures":[{"sig":"AR"}]}"#),
            EnvelopeError::Base64("signatures[].sig")
        );
        let many = alloc::format!(
            r#"{{"payloadType":"t","payload":"","signatures":[{}]}}"#,
            alloc::vec![r#"{"sig":""}"#; MAX_SIGNATURES + 1].join(",")
        );
        assert_eq!(
            bad(&many),
            EnvelopeError::TooManySignatures(MAX_SIGNATURES + 1)
        );
        let big = alloc::vec![b' '; MAX_ENVELOPE + 1];
        assert_eq!(
            Envelope::from_json(&big).unwrap_err(),
            EnvelopeError::TooLarge {
                len: MAX_ENVELOPE + 1
            }
        );
        // Deep nesting is refused by serde_json's recursion limit, not by a stack overflow.
        let deep = alloc::format!(r#"{{"payload":{}"#, "[".repeat(100_000));
        assert!(matches!(bad(&deep), EnvelopeError::Json(_)));
    }

    #[test]
    fn random_bytes_never_panic() {
        let base = sample().to_json();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..50_000 {
            let bytes = rng.mutate(&base);
            if let Ok(env) = Envelope::from_json(&bytes) {
                assert!(env.signatures.len() <= MAX_SIGNATURES);
            }
        }
    }
}
