//! TPMT_PUBLIC: parsing, names, and what makes a key an attestation key or an endorsement key.

use p256::pkcs8::EncodePublicKey;
use tpm2_protocol::data::{
    TpmAlgId, TpmEccCurve, TpmtPublic, TpmuAsymScheme, TpmuPublicId, TpmuPublicParms,
    TpmuSymKeyBits, TpmuSymMode,
};
use tpm2_protocol::TpmUnmarshal;

use crate::hash::HashAlg;

/// TPMA_OBJECT bits (TPM 2.0 Part 2, 8.3).
pub mod attributes {
    pub const FIXED_TPM: u32 = 0x0000_0002;
    pub const FIXED_PARENT: u32 = 0x0000_0010;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 0x0000_0020;
    pub const USER_WITH_AUTH: u32 = 0x0000_0040;
    pub const ADMIN_WITH_POLICY: u32 = 0x0000_0080;
    pub const RESTRICTED: u32 = 0x0001_0000;
    pub const DECRYPT: u32 = 0x0002_0000;
    pub const SIGN: u32 = 0x0004_0000;
}
use attributes::*;

/// Why a public area is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublicError {
    #[error("not a TPMT_PUBLIC: {0}")]
    Malformed(String),
    #[error("{0} bytes after the TPMT_PUBLIC")]
    TrailingBytes(usize),
    #[error("unsupported {what}: {value:#06x}")]
    Unsupported { what: &'static str, value: u32 },
    #[error("the public key is not a valid point or modulus: {0}")]
    BadKey(String),
    #[error("not an attestation key: {0}")]
    NotAnAk(&'static str),
    #[error("not an endorsement key: {0}")]
    NotAnEk(&'static str),
}

/// An ECC curve tuk supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EccCurve {
    NistP256,
    NistP384,
}

impl EccCurve {
    /// Coordinate size in bytes.
    pub fn size(self) -> usize {
        match self {
            EccCurve::NistP256 => 32,
            EccCurve::NistP384 => 48,
        }
    }
}

/// The public key in a TPMT_PUBLIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// Modulus (big-endian) and the real exponent (the TPM's 0 means 65537).
    Rsa { modulus: Vec<u8>, exponent: u32 },
    /// Affine coordinates as the TPM stores them (big-endian).
    Ecc {
        curve: EccCurve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

/// A parsed TPMT_PUBLIC, with its exact bytes (the name is computed over them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmPublic {
    bytes: Vec<u8>,
    pub name_alg: HashAlg,
    /// TPMA_OBJECT.
    pub attributes: u32,
    pub auth_policy: Vec<u8>,
    pub key: PublicKey,
    /// For a storage/decryption key: the AES key size of its symmetric definition (CFB mode),
    /// `None` when the symmetric algorithm is TPM_ALG_NULL.
    pub aes_bits: Option<u16>,
    /// The signing scheme's hash for an ECDSA key (`Some(Sha256)` for tuk's AK), else `None`.
    pub ecdsa_hash: Option<HashAlg>,
}

fn unsupported(what: &'static str, value: u16) -> PublicError {
    PublicError::Unsupported {
        what,
        value: u32::from(value),
    }
}

impl TpmPublic {
    /// Parses TPMT_PUBLIC bytes (without a TPM2B size); every byte must belong to it.
    pub fn parse(bytes: &[u8]) -> Result<TpmPublic, PublicError> {
        let (p, rest) =
            TpmtPublic::unmarshal(bytes).map_err(|e| PublicError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(PublicError::TrailingBytes(rest.len()));
        }
        let name_alg = HashAlg::from_alg_id(p.name_alg.value())
            .ok_or_else(|| unsupported("name algorithm", p.name_alg.value()))?;
        let (symmetric, key, ecdsa_hash) = match (&p.parameters, &p.unique) {
            (TpmuPublicParms::Rsa(parms), TpmuPublicId::Rsa(n)) => {
                let bits: u16 = parms.key_bits.into();
                if n.len() * 8 != usize::from(bits) {
                    return Err(PublicError::BadKey(format!(
                        "{}-byte modulus for a {bits}-bit key",
                        n.len()
                    )));
                }
                let e: u32 = parms.exponent.into();
                let key = PublicKey::Rsa {
                    modulus: n.to_vec(),
                    exponent: if e == 0 { 65537 } else { e },
                };
                (parms.symmetric, key, None)
            }
            (TpmuPublicParms::Ecc(parms), TpmuPublicId::Ecc(point)) => {
                let curve = match parms.curve_id {
                    TpmEccCurve::NistP256 => EccCurve::NistP256,
                    TpmEccCurve::NistP384 => EccCurve::NistP384,
                    other => return Err(unsupported("ECC curve", other.value())),
                };
                let ecdsa_hash = match (parms.scheme.scheme, parms.scheme.details) {
                    (TpmAlgId::Ecdsa, TpmuAsymScheme::Hash(h)) => Some(
                        HashAlg::from_alg_id(h.hash_alg.value())
                            .ok_or_else(|| unsupported("ECDSA hash", h.hash_alg.value()))?,
                    ),
                    _ => None,
                };
                let key = PublicKey::Ecc {
                    curve,
                    x: point.x.to_vec(),
                    y: point.y.to_vec(),
                };
                (parms.symmetric, key, ecdsa_hash)
            }
            _ => return Err(unsupported("object type", p.object_type.value())),
        };
        let aes_bits = match (symmetric.algorithm, symmetric.key_bits, symmetric.mode) {
            (TpmAlgId::Null, _, _) => None,
            (TpmAlgId::Aes, TpmuSymKeyBits::Aes(bits), TpmuSymMode::Aes(TpmAlgId::Cfb)) => {
                let bits: u16 = bits.into();
                if ![128, 192, 256].contains(&bits) {
                    return Err(unsupported("AES key size", bits));
                }
                Some(bits)
            }
            (alg, _, _) => return Err(unsupported("symmetric algorithm or mode", alg.value())),
        };
        Ok(TpmPublic {
            bytes: bytes.to_vec(),
            name_alg,
            attributes: p.object_attributes.bits(),
            auth_policy: p.auth_policy.to_vec(),
            key,
            aes_bits,
            ecdsa_hash,
        })
    }

    /// The TPMT_PUBLIC bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// As a TPM2B_PUBLIC (2-byte size, then the TPMT_PUBLIC): tpm2-tools' "tss" public file.
    pub fn to_tpm2b(&self) -> Vec<u8> {
        let mut out = (self.bytes.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&self.bytes);
        out
    }

    /// The TPM name: nameAlg (2 bytes, big-endian) || H_nameAlg(TPMT_PUBLIC).
    pub fn name(&self) -> Vec<u8> {
        let mut name = self.name_alg.alg_id().to_be_bytes().to_vec();
        name.extend(self.name_alg.digest(&[&self.bytes]));
        name
    }

    fn has(&self, bits: u32) -> bool {
        self.attributes & bits == bits
    }
}

/// An attestation key a verifier accepts: a TPM-resident (fixedTPM, fixedParent,
/// sensitiveDataOrigin) restricted signing ECC NIST P-256 key with the ECDSA-SHA256 scheme.
/// "Restricted" is what makes a quote trustworthy: the TPM signs with such a key only digests
/// it computed itself over data that starts with TPM_GENERATED_VALUE, so no caller can have it
/// sign a forged TPMS_ATTEST.
#[derive(Clone, Debug)]
pub struct AkPublic {
    public: TpmPublic,
    key: p256::ecdsa::VerifyingKey,
}

impl AkPublic {
    /// Parses and checks an AK's TPMT_PUBLIC.
    pub fn parse(bytes: &[u8]) -> Result<AkPublic, PublicError> {
        let public = TpmPublic::parse(bytes)?;
        let need = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | SIGN;
        if !public.has(need) {
            return Err(PublicError::NotAnAk(
                "it must be fixedTPM, fixedParent, sensitiveDataOrigin, restricted and sign",
            ));
        }
        if public.has(DECRYPT) {
            return Err(PublicError::NotAnAk("it is also a decryption key"));
        }
        let PublicKey::Ecc {
            curve: EccCurve::NistP256,
            x,
            y,
        } = &public.key
        else {
            return Err(PublicError::NotAnAk("it is not an ECC NIST P-256 key"));
        };
        if public.ecdsa_hash != Some(HashAlg::Sha256) {
            return Err(PublicError::NotAnAk("its scheme is not ECDSA with SHA-256"));
        }
        let key = p256_verifying_key(x, y)?;
        Ok(AkPublic { public, key })
    }

    pub fn public(&self) -> &TpmPublic {
        &self.public
    }

    /// The AK's TPM name (what MakeCredential binds the credential to).
    pub fn name(&self) -> Vec<u8> {
        self.public.name()
    }

    pub fn verifying_key(&self) -> &p256::ecdsa::VerifyingKey {
        &self.key
    }

    /// The public key as a PEM SubjectPublicKeyInfo (what `tpm2_checkquote -u` reads).
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .expect("a P-256 key always encodes")
    }
}

fn pad(coordinate: &[u8], size: usize) -> Result<Vec<u8>, PublicError> {
    if coordinate.len() > size {
        return Err(PublicError::BadKey(format!(
            "{}-byte coordinate for a {size}-byte curve",
            coordinate.len()
        )));
    }
    let mut out = vec![0u8; size - coordinate.len()];
    out.extend_from_slice(coordinate);
    Ok(out)
}

/// SEC1 uncompressed point 0x04 || x || y, coordinates left-padded to the curve size.
pub(crate) fn sec1_point(curve: EccCurve, x: &[u8], y: &[u8]) -> Result<Vec<u8>, PublicError> {
    let mut out = vec![4u8];
    out.extend(pad(x, curve.size())?);
    out.extend(pad(y, curve.size())?);
    Ok(out)
}

fn p256_verifying_key(x: &[u8], y: &[u8]) -> Result<p256::ecdsa::VerifyingKey, PublicError> {
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1_point(EccCurve::NistP256, x, y)?)
        .map_err(|_| PublicError::BadKey("not a point on NIST P-256".into()))
}

/// An endorsement key a verifier can make credentials for: a TPM-resident (fixedTPM,
/// fixedParent) restricted decryption key, RSA (2048 bits or more) or ECC NIST P-256/P-384,
/// with an AES-CFB symmetric definition. Its certificate says which TPM it belongs to.
#[derive(Clone, Debug)]
pub struct EkPublic {
    public: TpmPublic,
}

impl EkPublic {
    /// Parses and checks an EK's TPMT_PUBLIC.
    pub fn parse(bytes: &[u8]) -> Result<EkPublic, PublicError> {
        let public = TpmPublic::parse(bytes)?;
        if !public.has(FIXED_TPM | FIXED_PARENT | RESTRICTED | DECRYPT) {
            return Err(PublicError::NotAnEk(
                "it must be fixedTPM, fixedParent, restricted and decrypt",
            ));
        }
        if public.has(SIGN) {
            return Err(PublicError::NotAnEk("it is also a signing key"));
        }
        if public.aes_bits.is_none() {
            return Err(PublicError::NotAnEk(
                "it has no AES-CFB symmetric definition",
            ));
        }
        match &public.key {
            PublicKey::Rsa { modulus, .. } if modulus.len() < 256 => {
                return Err(PublicError::NotAnEk("RSA keys below 2048 bits are refused"));
            }
            PublicKey::Rsa { .. } => {}
            PublicKey::Ecc { curve, x, y } => {
                // Checks the point is on the curve.
                let sec1 = sec1_point(*curve, x, y)?;
                let ok = match curve {
                    EccCurve::NistP256 => p256::PublicKey::from_sec1_bytes(&sec1).is_ok(),
                    EccCurve::NistP384 => p384::PublicKey::from_sec1_bytes(&sec1).is_ok(),
                };
                if !ok {
                    return Err(PublicError::BadKey("not a point on the curve".into()));
                }
            }
        }
        Ok(EkPublic { public })
    }

    pub fn public(&self) -> &TpmPublic {
        &self.public
    }

    pub fn name(&self) -> Vec<u8> {
        self.public.name()
    }
}
