//! Signed attestation results: an EAR claims set as a JWT (RFC 7519) signed with Ed25519
//! (`alg: EdDSA`, RFC 8037), the verifier's key published as a JWK (`GET /v1/key`). The
//! `kid` is the key's tuk keyid (SHA-256 of the public key, hex).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde_json::{json, Value};
use tuk_measure::sign::SigningKey;

/// Signs EAR claims sets.
pub struct EarSigner {
    key: SigningKey,
}

impl EarSigner {
    pub fn new(key: SigningKey) -> EarSigner {
        EarSigner { key }
    }

    pub fn keyid(&self) -> String {
        self.key.keyid()
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.public_key()
    }

    /// The compact JWS of `claims`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": self.keyid()});
        let mut input = B64URL.encode(header.to_string());
        input.push('.');
        input.push_str(&B64URL.encode(claims.to_string()));
        let sig = self.key.sign_raw(input.as_bytes());
        input.push('.');
        input.push_str(&B64URL.encode(sig));
        input
    }

    /// The public key as a JWK (RFC 8037 OKP).
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": self.keyid(),
            "x": B64URL.encode(self.public_key()),
        })
    }
}

/// Why a signed result does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("not a compact JWS (three base64url parts)")]
    Shape,
    #[error("the JWS header is not {{\"alg\":\"EdDSA\"}}")]
    Alg,
    #[error("the signature does not verify with the verifier's key")]
    Signature,
    #[error("the payload is not JSON")]
    Payload,
}

/// Verifies a signed result with the verifier's public key and returns its claims.
pub fn verify(jwt: &str, public_key: &[u8; 32]) -> Result<Value, JwtError> {
    let mut parts = jwt.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Shape);
    };
    let header: Value = B64URL
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Shape)?;
    if header.get("alg").and_then(Value::as_str) != Some("EdDSA") {
        return Err(JwtError::Alg);
    }
    let sig = B64URL.decode(s).map_err(|_| JwtError::Shape)?;
    let sig = ed25519_dalek::Signature::from_slice(&sig).map_err(|_| JwtError::Signature)?;
    let key =
        ed25519_dalek::VerifyingKey::from_bytes(public_key).map_err(|_| JwtError::Signature)?;
    let input = &jwt[..h.len() + 1 + p.len()];
    key.verify_strict(input.as_bytes(), &sig)
        .map_err(|_| JwtError::Signature)?;
    let payload = B64URL.decode(p).map_err(|_| JwtError::Payload)?;
    serde_json::from_slice(&payload).map_err(|_| JwtError::Payload)
}

/// The claims of a JWT this verifier signed and stored (already trusted: no check).
pub fn claims_of(jwt: &str) -> Option<Value> {
    let payload = jwt.split('.').nth(1)?;
    serde_json::from_slice(&B64URL.decode(payload).ok()?).ok()
}

/// A JWK's Ed25519 public key.
pub fn key_of_jwk(jwk: &Value) -> Option<[u8; 32]> {
    if jwk.get("kty")?.as_str()? != "OKP" || jwk.get("crv")?.as_str()? != "Ed25519" {
        return None;
    }
    B64URL.decode(jwk.get("x")?.as_str()?).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies() {
        let s = EarSigner::new(SigningKey::from_seed([3; 32]));
        let claims = json!({"ear_status": "affirming", "iat": 1});
        let jwt = s.sign(&claims);
        let key = key_of_jwk(&s.jwk()).unwrap();
        assert_eq!(verify(&jwt, &key).unwrap(), claims);
        assert_eq!(claims_of(&jwt).unwrap(), claims);
        // Another payload under the same signature.
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let forged = B64URL.encode(json!({"ear_status": "affirming", "iat": 2}).to_string());
        parts[1] = &forged;
        assert_eq!(verify(&parts.join("."), &key), Err(JwtError::Signature));
        let other = EarSigner::new(SigningKey::from_seed([4; 32])).public_key();
        assert_eq!(verify(&jwt, &other), Err(JwtError::Signature));
        assert_eq!(verify("a.b", &key), Err(JwtError::Shape));
        let none = format!("{}.{}.", B64URL.encode(r#"{"alg":"none"}"#), parts[1]);
        assert_eq!(verify(&none, &key), Err(JwtError::Alg));
    }
}
