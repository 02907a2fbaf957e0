//! EK certificate chains: the EK certificate (from the TPM's NV) → intermediates (swtpm_localca's
//! `issuercert.pem`) → a trusted root (`swtpm-localca-rootca-cert.pem`), and the certified key
//! is the EK's.

use std::time::SystemTime;

use der::asn1::ObjectIdentifier;
use der::{Decode, DecodePem, Encode};
use rsa::pkcs8::DecodePublicKey;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage};
use x509_cert::Certificate;

use crate::hex;
use crate::public::{sec1_point, EccCurve, EkPublic, PublicKey};

/// tcg-kp-EKCertificate: the extended key usage of an EK certificate (TCG EK Credential
/// Profile).
pub const TCG_KP_EK_CERTIFICATE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.8.1");

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Extensions this verifier understands when they are critical (RFC 5280 §4.2: an unknown
/// critical extension makes a certificate unusable).
const KNOWN_CRITICAL: [ObjectIdentifier; 5] = [
    ObjectIdentifier::new_unwrap("2.5.29.15"), // keyUsage
    ObjectIdentifier::new_unwrap("2.5.29.17"), // subjectAltName (TPM manufacturer/model/version)
    ObjectIdentifier::new_unwrap("2.5.29.19"), // basicConstraints
    ObjectIdentifier::new_unwrap("2.5.29.32"), // certificatePolicies
    ObjectIdentifier::new_unwrap("2.5.29.37"), // extKeyUsage
];
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");

/// Longest chain followed (EK certificate and intermediates).
const MAX_DEPTH: usize = 8;

/// Why an EK certificate was refused. `which` names the certificate: `EK certificate`,
/// `intermediate <subject>` or `root <subject>`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("{which}: not a DER or PEM X.509 certificate: {detail}")]
    Parse { which: String, detail: String },
    #[error("{which}: signed with {oid}, which this verifier does not support")]
    UnsupportedAlgorithm { which: String, oid: String },
    #[error("{which}: its signature does not verify with the key of {signer}")]
    BadSignature { which: String, signer: String },
    #[error("{which}: no given intermediate or root is its issuer `{issuer}`")]
    UnknownIssuer { which: String, issuer: String },
    #[error("{which}: not a CA certificate (basicConstraints cA is not true)")]
    NotCa { which: String },
    #[error("{which}: not valid now (valid from {not_before:?} to {not_after:?})")]
    NotValid {
        which: String,
        not_before: SystemTime,
        not_after: SystemTime,
    },
    #[error("{which}: unknown critical extension {oid}")]
    UnknownCriticalExtension { which: String, oid: String },
    #[error("the chain is longer than {MAX_DEPTH} certificates")]
    TooLong,
    #[error("the EK certificate lacks the EK certificate extended key usage (2.23.133.8.1)")]
    NotAnEkCertificate,
    #[error("the EK certificate certifies another key than the TPM's EK: {0}")]
    KeyMismatch(String),
}

/// What a verified EK certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EkCertificate {
    pub subject: String,
    pub issuer: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Subjects from the EK certificate's issuer up to the root.
    pub chain: Vec<String>,
}

fn parse(which: &str, bytes: &[u8]) -> Result<Certificate, CertError> {
    let result = if bytes.starts_with(b"-----BEGIN") {
        Certificate::from_pem(bytes).map_err(|e| e.to_string())
    } else {
        Certificate::from_der(bytes).map_err(|e| e.to_string())
    };
    result.map_err(|detail| CertError::Parse {
        which: which.to_string(),
        detail,
    })
}

fn check_validity(which: &str, cert: &Certificate, now: SystemTime) -> Result<(), CertError> {
    let v = &cert.tbs_certificate.validity;
    let (not_before, not_after) = (v.not_before.to_system_time(), v.not_after.to_system_time());
    if now < not_before || now > not_after {
        return Err(CertError::NotValid {
            which: which.to_string(),
            not_before,
            not_after,
        });
    }
    Ok(())
}

fn check_critical(which: &str, cert: &Certificate) -> Result<(), CertError> {
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        if ext.critical && !KNOWN_CRITICAL.contains(&ext.extn_id) {
            return Err(CertError::UnknownCriticalExtension {
                which: which.to_string(),
                oid: ext.extn_id.to_string(),
            });
        }
    }
    Ok(())
}

fn check_ca(which: &str, cert: &Certificate) -> Result<(), CertError> {
    let ca = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == BASIC_CONSTRAINTS)
        .and_then(|e| BasicConstraints::from_der(e.extn_value.as_bytes()).ok())
        .is_some_and(|bc| bc.ca);
    if !ca {
        return Err(CertError::NotCa {
            which: which.to_string(),
        });
    }
    Ok(())
}

/// Verifies `cert`'s signature with `signer`'s public key.
fn check_signature(
    which: &str,
    cert: &Certificate,
    signer_name: &str,
    signer: &Certificate,
) -> Result<(), CertError> {
    let bad = || CertError::BadSignature {
        which: which.to_string(),
        signer: signer_name.to_string(),
    };
    let tbs = cert.tbs_certificate.to_der().map_err(|_| bad())?;
    let sig = cert.signature.as_bytes().ok_or_else(bad)?;
    let spki = signer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| bad())?;
    let oid = cert.signature_algorithm.oid;
    use rsa::signature::Verifier;
    macro_rules! rsa_verify {
        ($digest:ty) => {{
            let key = rsa::RsaPublicKey::from_public_key_der(&spki).map_err(|_| bad())?;
            let sig = rsa::pkcs1v15::Signature::try_from(sig).map_err(|_| bad())?;
            rsa::pkcs1v15::VerifyingKey::<$digest>::new(key)
                .verify(&tbs, &sig)
                .map_err(|_| bad())
        }};
    }
    macro_rules! ecdsa_verify {
        ($curve:ident) => {{
            let key = $curve::ecdsa::VerifyingKey::from_public_key_der(&spki).map_err(|_| bad())?;
            let sig = $curve::ecdsa::DerSignature::try_from(sig).map_err(|_| bad())?;
            key.verify(&tbs, &sig).map_err(|_| bad())
        }};
    }
    match oid {
        o if o == SHA256_WITH_RSA => rsa_verify!(sha2::Sha256),
        o if o == SHA384_WITH_RSA => rsa_verify!(sha2::Sha384),
        o if o == SHA512_WITH_RSA => rsa_verify!(sha2::Sha512),
        o if o == ECDSA_WITH_SHA256 => ecdsa_verify!(p256),
        o if o == ECDSA_WITH_SHA384 => ecdsa_verify!(p384),
        o => Err(CertError::UnsupportedAlgorithm {
            which: which.to_string(),
            oid: o.to_string(),
        }),
    }
}

/// The certificate's public key equals the EK's.
fn check_key(cert: &Certificate, ek: &EkPublic) -> Result<(), CertError> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let mismatch = |what: String| CertError::KeyMismatch(what);
    match &ek.public().key {
        PublicKey::Rsa { modulus, exponent } => {
            if spki.algorithm.oid != RSA_ENCRYPTION {
                return Err(mismatch(format!(
                    "the EK is RSA, the certificate's key is {}",
                    spki.algorithm.oid
                )));
            }
            let der = spki.to_der().map_err(|e| mismatch(e.to_string()))?;
            let key = rsa::RsaPublicKey::from_public_key_der(&der)
                .map_err(|e| mismatch(e.to_string()))?;
            use rsa::traits::PublicKeyParts;
            let n = key.n().to_bytes_be();
            if n != *modulus {
                return Err(mismatch(format!(
                    "modulus {}… is not the EK's {}…",
                    hex(&n[..8.min(n.len())]),
                    hex(&modulus[..8.min(modulus.len())])
                )));
            }
            if key.e() != &rsa::BigUint::from(*exponent) {
                return Err(mismatch("another public exponent".into()));
            }
        }
        PublicKey::Ecc { curve, x, y } => {
            let want_curve = match curve {
                EccCurve::NistP256 => SECP256R1,
                EccCurve::NistP384 => SECP384R1,
            };
            let params = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            if spki.algorithm.oid != EC_PUBLIC_KEY || params != Some(want_curve) {
                return Err(mismatch(format!(
                    "the EK is ECC on {want_curve}, the certificate's key is {} {:?}",
                    spki.algorithm.oid, params
                )));
            }
            let point = sec1_point(*curve, x, y).map_err(|e| mismatch(e.to_string()))?;
            if spki.subject_public_key.as_bytes() != Some(&point[..]) {
                return Err(mismatch("another EC point".into()));
            }
        }
    }
    Ok(())
}

/// Verifies an EK certificate for `ek` and returns what it says.
///
/// `ek_cert` is the certificate as read from the TPM's NV (DER; PEM is accepted too),
/// `intermediates` the CA certificates that may sit between it and the root (swtpm_localca's
/// `issuercert.pem`; the TPM does not store them), `root` the trust anchor
/// (`swtpm-localca-rootca-cert.pem`), `now` the time the certificates must be valid at.
///
/// Checks: every certificate parses, is valid at `now` and has no unknown critical extension;
/// the EK certificate has the tcg-kp-EKCertificate extended key usage and certifies exactly
/// `ek`'s public key; each certificate's signature verifies with the key of the certificate
/// named as its issuer (found by subject among `intermediates`, then `root`), each issuer is a
/// CA (basicConstraints cA), and the walk ends at `root`. Signatures: RSA PKCS#1 v1.5 with
/// SHA-256/384/512 (swtpm_localca uses RSA-3072 with SHA-256), ECDSA P-256/SHA-256,
/// P-384/SHA-384.
pub fn verify_ek_certificate(
    ek_cert: &[u8],
    intermediates: &[&[u8]],
    root: &[u8],
    ek: &EkPublic,
    now: SystemTime,
) -> Result<EkCertificate, CertError> {
    let leaf = parse("EK certificate", ek_cert)?;
    let root = parse("root", root)?;
    let root_name = format!("root {}", root.tbs_certificate.subject);
    check_validity(&root_name, &root, now)?;
    check_ca(&root_name, &root)?;
    let intermediates = intermediates
        .iter()
        .enumerate()
        .map(|(i, der)| parse(&format!("intermediate #{i}"), der))
        .collect::<Result<Vec<_>, _>>()?;

    check_validity("EK certificate", &leaf, now)?;
    check_critical("EK certificate", &leaf)?;
    let eku = leaf
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == EXT_KEY_USAGE)
        .and_then(|e| ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).ok());
    if !eku.is_some_and(|eku| eku.0.contains(&TCG_KP_EK_CERTIFICATE)) {
        return Err(CertError::NotAnEkCertificate);
    }
    check_key(&leaf, ek)?;

    let mut chain = Vec::new();
    let mut used = vec![false; intermediates.len()];
    let mut current = &leaf;
    let mut current_name = "EK certificate".to_string();
    for _ in 0..MAX_DEPTH {
        let issuer = &current.tbs_certificate.issuer;
        if *issuer == root.tbs_certificate.subject {
            check_signature(&current_name, current, &root_name, &root)?;
            chain.push(root.tbs_certificate.subject.to_string());
            return Ok(EkCertificate {
                subject: leaf.tbs_certificate.subject.to_string(),
                issuer: leaf.tbs_certificate.issuer.to_string(),
                serial: hex(leaf.tbs_certificate.serial_number.as_bytes()),
                chain,
            });
        }
        let Some(i) = (0..intermediates.len())
            .find(|&i| !used[i] && intermediates[i].tbs_certificate.subject == *issuer)
        else {
            return Err(CertError::UnknownIssuer {
                which: current_name,
                issuer: issuer.to_string(),
            });
        };
        used[i] = true;
        let next = &intermediates[i];
        let next_name = format!("intermediate {}", next.tbs_certificate.subject);
        check_signature(&current_name, current, &next_name, next)?;
        check_validity(&next_name, next, now)?;
        check_critical(&next_name, next)?;
        check_ca(&next_name, next)?;
        chain.push(next.tbs_certificate.subject.to_string());
        current = next;
        current_name = next_name;
    }
    Err(CertError::TooLong)
}
