//! Signing (feature `sign`, host only): ed25519 keys, DSSE envelopes, bundles.
//!
//! Private keys are stored as PKCS#8 PEM (RFC 8410), the form `openssl genpkey -algorithm
//! ed25519` writes and `openssl pkey` reads; only that exact unencrypted form (the 48-byte DER
//! with the 32-byte seed) is accepted.

use alloc::string::String;
use alloc::vec::Vec;

use base64::Engine as _;
use ed25519_dalek::Signer as _;

use crate::bundle;
use crate::dsse::{Envelope, Signature};
use crate::policy::TrustedKey;
use crate::sha256;
use crate::statement::{ComponentPredicate, Statement, PAYLOAD_TYPE};

/// DER of a PKCS#8 v1 ed25519 private key, up to the 32-byte seed.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot get randomness from the operating system: {0}")]
    Entropy(getrandom::Error),
    #[error("not an ed25519 private key in PKCS#8 PEM ({0}); make one with `tuk keygen`")]
    BadKeyFile(&'static str),
}

/// An ed25519 signing key (zeroized on drop).
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// A new key from the operating system's entropy.
    pub fn generate() -> Result<Self, SignError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(SignError::Entropy)?;
        Ok(Self::from_seed(*seed))
    }

    /// The key with this 32-byte seed (RFC 8032's private key).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// Lowercase hex SHA-256 of the public key.
    pub fn keyid(&self) -> String {
        crate::keyid(&self.public_key())
    }

    /// The policy entry (and `.pub` file content) for this key.
    pub fn trusted_key(&self) -> TrustedKey {
        TrustedKey::from_public_key(&self.public_key())
    }

    /// PKCS#8 PEM.
    pub fn to_pkcs8_pem(&self) -> zeroize::Zeroizing<String> {
        let mut der = zeroize::Zeroizing::new([0u8; 48]);
        der[..16].copy_from_slice(&PKCS8_PREFIX);
        der[16..].copy_from_slice(self.0.as_bytes());
        let body = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(*der));
        zeroize::Zeroizing::new(alloc::format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", *body))
    }

    /// Reads PKCS#8 PEM (see the module docs for the one form accepted).
    pub fn from_pkcs8_pem(text: &str) -> Result<Self, SignError> {
        let body = text
            .trim()
            .strip_prefix(PEM_BEGIN)
            .and_then(|t| t.strip_suffix(PEM_END))
            .ok_or(SignError::BadKeyFile("no PRIVATE KEY PEM block"))?;
        let body: zeroize::Zeroizing<String> =
            zeroize::Zeroizing::new(body.chars().filter(|c| !c.is_ascii_whitespace()).collect());
        let der = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(body.as_bytes())
                .map_err(|_| SignError::BadKeyFile("invalid base64"))?,
        );
        if der.len() != 48 || der[..16] != PKCS8_PREFIX {
            return Err(SignError::BadKeyFile(
                "not an unencrypted PKCS#8 v1 ed25519 key",
            ));
        }
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&der[16..]);
        Ok(Self::from_seed(*seed))
    }

    /// An Ed25519 signature over `message` (for formats other than DSSE, e.g. a JWT's
    /// signing input).
    pub fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// A DSSE envelope over `payload`, signed by this key.
    pub fn sign_envelope(&self, payload_type: &str, payload: Vec<u8>) -> Envelope {
        let sig = self.0.sign(&crate::dsse::pae(payload_type, &payload));
        Envelope {
            payload_type: payload_type.into(),
            payload,
            signatures: alloc::vec![Signature {
                keyid: self.keyid(),
                sig: sig.to_bytes().to_vec(),
            }],
        }
    }
}

/// Builds and signs a bundle: the Statement for `predicate` over `wasm` and `code`, in a DSSE
/// envelope signed by `key`.
pub fn sign_bundle(
    key: &SigningKey,
    wasm: &[u8],
    code: &[u8],
    predicate: ComponentPredicate,
) -> Vec<u8> {
    let statement = Statement::component(predicate, &sha256(wasm), &sha256(code));
    let envelope = key.sign_envelope(PAYLOAD_TYPE, statement.to_json());
    bundle::encode(wasm, code, &envelope.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{hex, parse_hex32};

    #[test]
    fn rfc8032_test_1() {
        // RFC 8032 section 7.1, TEST 1 (empty message).
        let seed = parse_hex32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap();
        let key = SigningKey::from_seed(seed);
        assert_eq!(
            hex(&key.public_key()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(
            hex(&key.0.sign(b"").to_bytes()),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn pem_round_trip_and_refusals() {
        let key = SigningKey::generate().unwrap();
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI"));
        let back = SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert_ne!(
            SigningKey::generate().unwrap().public_key(),
            key.public_key()
        );
        assert!(SigningKey::from_pkcs8_pem("").is_err());
        assert!(SigningKey::from_pkcs8_pem(&pem.replace("MC4", "MC5")).is_err());
        let pub_pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n";
        assert!(SigningKey::from_pkcs8_pem(pub_pem).is_err());
    }
}
