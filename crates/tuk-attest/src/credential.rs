//! TPM2_MakeCredential in software (TPM 2.0 Part 1 §24 "Credential Protection", Part 3
//! TPM2_MakeCredential): the verifier encrypts a secret so that only the TPM holding the EK,
//! and only for a loaded key with exactly the given name (the AK), can recover it with
//! TPM2_ActivateCredential.
//!
//! 1. seed: RSA EK: `nameAlg`-sized random bytes, RSA-OAEP encrypted (hash and MGF1 with the
//!    EK's nameAlg, label "IDENTITY\0"). ECC EK: an ephemeral key pair on the EK's curve,
//!    Z = x([d_e]Q_EK), seed = KDFe(nameAlg, Z, "IDENTITY", x(Q_e), x(Q_EK), nameAlg bits); the
//!    encrypted secret is the ephemeral public point (TPMS_ECC_POINT).
//! 2. symKey = KDFa(nameAlg, seed, "STORAGE", AK name, "", EK's AES key bits);
//!    encIdentity = AES-CFB(symKey, IV = 0, TPM2B_DIGEST(secret)).
//! 3. HMACkey = KDFa(nameAlg, seed, "INTEGRITY", "", "", nameAlg bits);
//!    outerHMAC = HMAC_nameAlg(HMACkey, encIdentity || AK name).
//! 4. credentialBlob (TPM2B_ID_OBJECT) = TPM2B_DIGEST(outerHMAC) || encIdentity.

use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::{CryptoRngCore, OsRng};
use rsa::{BigUint, Oaep, RsaPublicKey};

use crate::hash::HashAlg;
use crate::public::{sec1_point, EkPublic, PublicKey};

/// The ECC seed: ephemeral ECDH with the EK, KDFe. Returns (seed, TPMS_ECC_POINT bytes).
macro_rules! ecc_seed {
    ($curve:ident, $alg:expr, $ek_sec1:expr, $ek_x:expr, $rng:expr) => {{
        let ek_key = $curve::PublicKey::from_sec1_bytes($ek_sec1)
            .map_err(|_| CredentialError::BadEk("not a point on the curve".into()))?;
        let ephemeral = $curve::ecdh::EphemeralSecret::random($rng);
        let point = ephemeral.public_key().to_encoded_point(false);
        let (ex, ey) = (
            point.x().expect("uncompressed point").to_vec(),
            point.y().expect("uncompressed point").to_vec(),
        );
        let shared = ephemeral.diffie_hellman(&ek_key);
        let seed = $alg.kdfe(
            shared.raw_secret_bytes(),
            "IDENTITY",
            &ex,
            $ek_x,
            ($alg.size() * 8) as u32,
        );
        let mut encrypted = (ex.len() as u16).to_be_bytes().to_vec();
        encrypted.extend(&ex);
        encrypted.extend((ey.len() as u16).to_be_bytes());
        encrypted.extend(&ey);
        (seed, encrypted)
    }};
}

/// What TPM2_ActivateCredential takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// The TPM2B_ID_OBJECT's contents: TPM2B_DIGEST(integrity HMAC) || encIdentity.
    pub credential_blob: Vec<u8>,
    /// The TPM2B_ENCRYPTED_SECRET's contents: the RSA-OAEP ciphertext of the seed, or the
    /// ephemeral public key as a TPMS_ECC_POINT.
    pub encrypted_secret: Vec<u8>,
}

/// Why a credential could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("the secret is {len} bytes; it must be 1 to {max} (the EK's name digest size)")]
    SecretSize { len: usize, max: usize },
    #[error("the AK name is malformed: {0}")]
    BadName(&'static str),
    #[error("the EK's public key cannot be used: {0}")]
    BadEk(String),
}

/// [`make_credential_with_rng`] with the operating system's random number generator.
pub fn make_credential(
    ek: &EkPublic,
    ak_name: &[u8],
    secret: &[u8],
) -> Result<Credential, CredentialError> {
    make_credential_with_rng(ek, ak_name, secret, &mut OsRng)
}

/// Makes a credential (module docs) protecting `secret` for the key named `ak_name` on the TPM
/// of `ek`. `ak_name` is a TPM name: a hash algorithm's TPM_ALG_ID and a digest of its size.
pub fn make_credential_with_rng(
    ek: &EkPublic,
    ak_name: &[u8],
    secret: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<Credential, CredentialError> {
    let public = ek.public();
    let alg = public.name_alg;
    if secret.is_empty() || secret.len() > alg.size() {
        return Err(CredentialError::SecretSize {
            len: secret.len(),
            max: alg.size(),
        });
    }
    check_name(ak_name)?;
    let aes_bits = public
        .aes_bits
        .ok_or(CredentialError::BadEk("no symmetric definition".into()))?;

    let (seed, encrypted_secret) = match &public.key {
        PublicKey::Rsa { modulus, exponent } => rsa_seed(alg, modulus, *exponent, rng)?,
        PublicKey::Ecc { curve, x, y } => {
            let sec1 =
                sec1_point(*curve, x, y).map_err(|e| CredentialError::BadEk(e.to_string()))?;
            match curve {
                crate::public::EccCurve::NistP256 => ecc_seed!(p256, alg, &sec1, x, rng),
                crate::public::EccCurve::NistP384 => ecc_seed!(p384, alg, &sec1, x, rng),
            }
        }
    };

    let sym_key = alg.kdfa(&seed, "STORAGE", ak_name, &[], u32::from(aes_bits));
    let mut enc_identity = (secret.len() as u16).to_be_bytes().to_vec();
    enc_identity.extend_from_slice(secret);
    aes_cfb_encrypt(&sym_key, &mut enc_identity);

    let hmac_key = alg.kdfa(&seed, "INTEGRITY", &[], &[], (alg.size() * 8) as u32);
    let outer_hmac = alg.hmac(&hmac_key, &[&enc_identity, ak_name]);

    let mut credential_blob = (outer_hmac.len() as u16).to_be_bytes().to_vec();
    credential_blob.extend(outer_hmac);
    credential_blob.extend(enc_identity);
    Ok(Credential {
        credential_blob,
        encrypted_secret,
    })
}

/// Compares the secret an instance returned from TPM2_ActivateCredential with the one the
/// verifier made, in time independent of where they differ.
pub fn secret_matches(expected: &[u8], returned: &[u8]) -> bool {
    expected.len() == returned.len()
        && expected
            .iter()
            .zip(returned)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn check_name(name: &[u8]) -> Result<(), CredentialError> {
    let [a, b, digest @ ..] = name else {
        return Err(CredentialError::BadName(
            "shorter than an algorithm identifier",
        ));
    };
    let alg = HashAlg::from_alg_id(u16::from_be_bytes([*a, *b]))
        .ok_or(CredentialError::BadName("unknown name algorithm"))?;
    if digest.len() != alg.size() {
        return Err(CredentialError::BadName(
            "the digest's length does not match its algorithm",
        ));
    }
    Ok(())
}

fn rsa_seed(
    alg: HashAlg,
    modulus: &[u8],
    exponent: u32,
    rng: &mut impl CryptoRngCore,
) -> Result<(Vec<u8>, Vec<u8>), CredentialError> {
    let key = RsaPublicKey::new(BigUint::from_bytes_be(modulus), BigUint::from(exponent))
        .map_err(|e| CredentialError::BadEk(e.to_string()))?;
    let mut seed = vec![0u8; alg.size()];
    rng.fill_bytes(&mut seed);
    // The label includes its terminating zero, as the TPM's does.
    const LABEL: &str = "IDENTITY\0";
    let padding = match alg {
        HashAlg::Sha256 => Oaep::new_with_label::<sha2::Sha256, _>(LABEL),
        HashAlg::Sha384 => Oaep::new_with_label::<sha2::Sha384, _>(LABEL),
        HashAlg::Sha512 => Oaep::new_with_label::<sha2::Sha512, _>(LABEL),
    };
    let encrypted = key
        .encrypt(rng, padding, &seed)
        .map_err(|e| CredentialError::BadEk(e.to_string()))?;
    Ok((seed, encrypted))
}

fn aes_cfb_encrypt(key: &[u8], data: &mut [u8]) {
    let iv = [0u8; 16];
    match key.len() {
        16 => cfb_mode::Encryptor::<aes::Aes128>::new(key.into(), &iv.into()).encrypt(data),
        24 => cfb_mode::Encryptor::<aes::Aes192>::new(key.into(), &iv.into()).encrypt(data),
        32 => cfb_mode::Encryptor::<aes::Aes256>::new(key.into(), &iv.into()).encrypt(data),
        _ => unreachable!("AES key sizes are checked when the EK is parsed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Vectors computed with Python's hmac/hashlib from the same definitions (a second
    /// implementation, not the TPM's: `tests/swtpm.rs` proves the TPM agrees, end to end).
    #[test]
    fn kdfs_match_a_second_implementation() {
        let a = HashAlg::Sha256.kdfa(&[0x11; 32], "STORAGE", &[0x22; 34], &[], 128);
        assert_eq!(a, unhex("1a228015d7ab047652c2be4370a87f73"));
        let a = HashAlg::Sha256.kdfa(&[0x11; 32], "STORAGE", &[0x22; 34], &[], 384);
        assert_eq!(
            a,
            unhex(
                "54da8085a5a52fb65397ec16915027dc3f17e97d4a87c4c8ddeeffcd21ecb255\
                 2504703196fd4c0096e2593318193317"
            )
        );
        let e = HashAlg::Sha384.kdfe(&[0x33; 48], "IDENTITY", &[0x44; 48], &[0x55; 48], 384);
        assert_eq!(
            e,
            unhex(
                "a3cfedcb398ef13a76bf96da4a05a6973b7f4ba1d8d366fc232f5cf9469bb1ee\
                 c9d6f479a116696a9513d88d1c5749ae"
            )
        );
    }

    #[test]
    fn secrets_compare() {
        assert!(secret_matches(&[1, 2, 3], &[1, 2, 3]));
        assert!(!secret_matches(&[1, 2, 3], &[1, 2, 4]));
        assert!(!secret_matches(&[1, 2, 3], &[1, 2]));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name(&[0, 0x0b]).is_err());
        let mut name = vec![0, 0x0b];
        name.extend([0u8; 32]);
        assert!(check_name(&name).is_ok());
        name.push(0);
        assert!(check_name(&name).is_err());
    }
}
