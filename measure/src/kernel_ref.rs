//! The kernel's reference manifest: a signed statement of which kernel image is the one to
//! run. `tuk kernel build --sign KEY` writes it next to the image; a verifier appraises PCR 4
//! against the image digest it names, after checking the signature with a key it trusts.
//!
//! It is an in-toto Statement in a DSSE envelope, like a component bundle's, with one subject
//! (`tuk-kernel`, its SHA-256) and the predicate type [`KERNEL_PREDICATE_TYPE`]:
//!
//! ```json
//! {"_type":"https://in-toto.io/Statement/v1",
//!  "subject":[{"name":"tuk-kernel","digest":{"sha256":"<hex>"}}],
//!  "predicateType":"https://tuk.dev/attestations/kernel/v1",
//!  "predicate":{"version":"0.1.0","bytes":1234567,"toolchain":"debian-rustc-web"}}
//! ```

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::dsse::Envelope;
use crate::policy::TrustedKey;
use crate::statement::{Subject, PAYLOAD_TYPE, STATEMENT_TYPE};
use crate::{hex, parse_hex32, Digest};

/// The predicate type of a kernel reference statement.
pub const KERNEL_PREDICATE_TYPE: &str = "https://tuk.dev/attestations/kernel/v1";
/// The statement's subject name.
pub const KERNEL_SUBJECT: &str = "tuk-kernel";

/// What the reference says about the image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelPredicate {
    /// The kernel's version (the workspace's).
    pub version: String,
    /// The image's size in bytes.
    pub bytes: u64,
    /// Which toolchain built it (`tuk kernel build`'s toolchain id).
    pub toolchain: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct KernelStatement {
    #[serde(rename = "_type")]
    type_: String,
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: KernelPredicate,
}

/// A verified kernel reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelReference {
    /// The SHA-256 of the reference image: what PCR 4 must measure.
    pub sha256: Digest,
    pub predicate: KernelPredicate,
    /// The keyid of the trusted key whose signature verified.
    pub signer: String,
}

/// Why a kernel reference was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KernelRefError {
    #[error("the kernel reference is not a DSSE envelope: {0}")]
    Envelope(String),
    #[error("the kernel reference's payload type is {0:?}, not in-toto")]
    PayloadType(String),
    #[error("no signature on the kernel reference verifies with a trusted key (sign it with `tuk kernel build --sign`, and trust that key's .pub)")]
    Untrusted,
    #[error("the kernel reference's statement is not a tuk kernel statement: {0}")]
    Statement(String),
}

/// The statement for `image`, as JSON (the DSSE payload).
pub fn statement(image_sha256: &Digest, predicate: KernelPredicate) -> Vec<u8> {
    let st = KernelStatement {
        type_: STATEMENT_TYPE.into(),
        subject: alloc::vec![Subject {
            name: KERNEL_SUBJECT.into(),
            digest: BTreeMap::from([("sha256".to_string(), hex(image_sha256))]),
        }],
        predicate_type: KERNEL_PREDICATE_TYPE.into(),
        predicate,
    };
    serde_json::to_vec(&st).unwrap_or_default()
}

/// Signs the reference for an image with `key`; returns the envelope's JSON.
#[cfg(feature = "sign")]
pub fn sign(key: &crate::sign::SigningKey, image: &[u8], predicate: KernelPredicate) -> Vec<u8> {
    let payload = statement(&crate::sha256(image), predicate);
    key.sign_envelope(PAYLOAD_TYPE, payload).to_json()
}

/// Verifies an envelope (untrusted bytes) against `trusted` keys and returns the reference.
pub fn verify(envelope: &[u8], trusted: &[TrustedKey]) -> Result<KernelReference, KernelRefError> {
    let envelope =
        Envelope::from_json(envelope).map_err(|e| KernelRefError::Envelope(e.to_string()))?;
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(KernelRefError::PayloadType(
            envelope.payload_type.chars().take(128).collect(),
        ));
    }
    let signer =
        crate::verify::trusted_signer_among(&envelope, trusted).ok_or(KernelRefError::Untrusted)?;
    let bad = |m: String| KernelRefError::Statement(m);
    let st: KernelStatement =
        serde_json::from_slice(&envelope.payload).map_err(|e| bad(e.to_string()))?;
    if st.type_ != STATEMENT_TYPE || st.predicate_type != KERNEL_PREDICATE_TYPE {
        return Err(bad(alloc::format!(
            "_type {:?}, predicateType {:?}",
            st.type_,
            st.predicate_type
        )));
    }
    let [subject] = st.subject.as_slice() else {
        return Err(bad("it must have exactly one subject".into()));
    };
    if subject.name != KERNEL_SUBJECT {
        return Err(bad(alloc::format!("the subject is {:?}", subject.name)));
    }
    let sha256 = subject
        .digest
        .get("sha256")
        .and_then(|h| parse_hex32(h))
        .ok_or_else(|| bad("the subject has no valid sha256 digest".into()))?;
    Ok(KernelReference {
        sha256,
        predicate: st.predicate,
        signer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::SigningKey;

    fn predicate() -> KernelPredicate {
        KernelPredicate {
            version: "0.1.0".into(),
            bytes: 3,
            toolchain: "test".into(),
        }
    }

    #[test]
    fn signed_reference_verifies_with_its_key_only() {
        let key = SigningKey::from_seed([1; 32]);
        let other = SigningKey::from_seed([2; 32]);
        let env = sign(&key, b"abc", predicate());
        let r = verify(&env, &[other.trusted_key(), key.trusted_key()]).unwrap();
        assert_eq!(r.sha256, crate::sha256(b"abc"));
        assert_eq!(r.signer, key.keyid());
        assert_eq!(r.predicate, predicate());
        assert_eq!(
            verify(&env, &[other.trusted_key()]),
            Err(KernelRefError::Untrusted)
        );
    }

    #[test]
    fn tampered_or_foreign_references_are_refused() {
        let key = SigningKey::from_seed([1; 32]);
        let env = sign(&key, b"abc", predicate());
        let mut e = Envelope::from_json(&env).unwrap();
        // Another image digest under the old signature.
        e.payload = statement(&crate::sha256(b"abd"), predicate());
        assert_eq!(
            verify(&e.to_json(), &[key.trusted_key()]),
            Err(KernelRefError::Untrusted)
        );
        // A component statement, properly signed, is not a kernel reference.
        let foreign = key.sign_envelope(PAYLOAD_TYPE, br#"{"_type":"x"}"#.to_vec());
        assert!(matches!(
            verify(&foreign.to_json(), &[key.trusted_key()]),
            Err(KernelRefError::Statement(_))
        ));
        assert!(matches!(
            verify(b"not json", &[key.trusted_key()]),
            Err(KernelRefError::Envelope(_))
        ));
    }
}
