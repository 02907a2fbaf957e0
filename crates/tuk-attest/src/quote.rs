//! TPM2_Quote verification.

use p256::ecdsa::signature::Verifier;
use sha2::{Digest, Sha256};
use tpm2_protocol::data::{TpmAlgId, TpmSt, TpmsAttest, TpmtSignature, TpmuAttest, TpmuSignature};
use tpm2_protocol::TpmUnmarshal;

use crate::hash::HashAlg;
use crate::hex;
use crate::public::AkPublic;

/// TPM_GENERATED_VALUE: every TPMS_ATTEST a TPM signs starts with it.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

/// Why a quote was refused. Checked in this order; the first failure is the error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuoteError {
    #[error("the quote signature is not a TPMT_SIGNATURE: {0}")]
    MalformedSignature(String),
    #[error("the quote is signed with algorithm {alg:#06x} and hash {hash:#06x}, not ECDSA with SHA-256")]
    UnsupportedSignature { alg: u16, hash: u16 },
    #[error("the quote signature does not verify with the attestation key")]
    BadSignature,
    #[error("the signed data does not start with TPM_GENERATED_VALUE (found {found:#010x})")]
    Magic { found: u32 },
    #[error("the signed data is a TPMS_ATTEST of type {found:#06x}, not a quote (0x8018)")]
    NotAQuote { found: u16 },
    #[error("the signed data is not a TPMS_ATTEST: {0}")]
    Malformed(String),
    #[error(
        "the quote's qualifying data is {found}, expected {expected} (a replayed or foreign quote)"
    )]
    QualifyingData { expected: String, found: String },
    #[error("the expected PCR values are invalid: {0}")]
    BadExpectation(&'static str),
    #[error("the quote selects {found}, expected sha256:{expected:?}")]
    PcrSelection { expected: Vec<u32>, found: String },
    #[error("the quote's PCR digest is {found}, the given PCR values digest to {expected}")]
    PcrDigest { expected: String, found: String },
}

/// TPMS_CLOCK_INFO of a quote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered (advances, never goes back while `safe`).
    pub clock: u64,
    /// TPM resets (reboots without a resume) since the TPM was manufactured/cleared.
    pub reset_count: u32,
    /// TPM restarts/resumes since the last reset.
    pub restart_count: u32,
    pub safe: bool,
}

/// One PCR bank of a quote's selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrBank {
    /// TPM_ALG_ID of the bank (0x000b = SHA-256).
    pub hash_alg: u16,
    /// Selected PCR indices, ascending.
    pub pcrs: Vec<u32>,
}

/// The contents of a quote's TPMS_ATTEST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteInfo {
    /// The qualified name of the signing key.
    pub qualified_signer: Vec<u8>,
    /// extraData: the caller's qualifying data (the verifier's nonce or a hash over it).
    pub extra_data: Vec<u8>,
    pub clock: ClockInfo,
    pub firmware_version: u64,
    pub pcr_selection: Vec<PcrBank>,
    /// H_AK-scheme-hash(selected PCR values concatenated in selection order).
    pub pcr_digest: Vec<u8>,
}

impl QuoteInfo {
    /// Parses a quote's TPMS_ATTEST **without checking its signature** (use [`verify_quote`]):
    /// magic, type, then every field; every byte must belong to it.
    pub fn parse(attest: &[u8]) -> Result<QuoteInfo, QuoteError> {
        let word = |at: usize, n: usize| -> Result<&[u8], QuoteError> {
            attest
                .get(at..at + n)
                .ok_or_else(|| QuoteError::Malformed("truncated header".into()))
        };
        let magic = word(0, 4)?;
        let magic = u32::from_be_bytes([magic[0], magic[1], magic[2], magic[3]]);
        if magic != TPM_GENERATED_VALUE {
            return Err(QuoteError::Magic { found: magic });
        }
        let kind = word(4, 2)?;
        let kind = u16::from_be_bytes([kind[0], kind[1]]);
        if kind != TPM_ST_ATTEST_QUOTE {
            return Err(QuoteError::NotAQuote { found: kind });
        }
        let (a, rest) =
            TpmsAttest::unmarshal(attest).map_err(|e| QuoteError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(QuoteError::Malformed(format!(
                "{} bytes after the TPMS_ATTEST",
                rest.len()
            )));
        }
        let (TpmSt::AttestQuote, TpmuAttest::Quote(q)) = (a.attest_type, &a.attested) else {
            return Err(QuoteError::NotAQuote {
                found: a.attest_type.value(),
            });
        };
        let pcr_selection = q
            .pcr_select
            .iter()
            .map(|s| PcrBank {
                hash_alg: s.hash.value(),
                pcrs: s
                    .pcr_select
                    .iter()
                    .enumerate()
                    .flat_map(|(byte, bits)| {
                        (0..8)
                            .filter(move |bit| bits & (1 << bit) != 0)
                            .map(move |bit| (byte * 8 + bit) as u32)
                    })
                    .collect(),
            })
            .collect();
        Ok(QuoteInfo {
            qualified_signer: a.qualified_signer.to_vec(),
            extra_data: a.extra_data.to_vec(),
            clock: ClockInfo {
                clock: a.clock_info.clock.into(),
                reset_count: a.clock_info.reset_count.into(),
                restart_count: a.clock_info.restart_count.into(),
                safe: a.clock_info.safe.into(),
            },
            firmware_version: a.firmware_version.into(),
            pcr_selection,
            pcr_digest: q.pcr_digest.to_vec(),
        })
    }
}

/// The pcrDigest a TPM computes for a quote over one SHA-256 bank: SHA-256 of the PCR values
/// concatenated in ascending PCR order (pass them in that order).
pub fn pcr_digest(values: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in values {
        h.update(v);
    }
    h.finalize().into()
}

/// The r and s of an ECDSA-SHA256 TPMT_SIGNATURE.
fn ecdsa_signature(signature: &[u8]) -> Result<p256::ecdsa::Signature, QuoteError> {
    let (sig, rest) = TpmtSignature::unmarshal(signature)
        .map_err(|e| QuoteError::MalformedSignature(e.to_string()))?;
    if !rest.is_empty() {
        return Err(QuoteError::MalformedSignature(format!(
            "{} bytes after it",
            rest.len()
        )));
    }
    let TpmuSignature::Ecdsa(ecc) = sig.signature else {
        return Err(QuoteError::UnsupportedSignature {
            alg: sig.sig_alg.value(),
            hash: 0,
        });
    };
    if sig.sig_alg != TpmAlgId::Ecdsa || ecc.hash != TpmAlgId::Sha256 {
        return Err(QuoteError::UnsupportedSignature {
            alg: sig.sig_alg.value(),
            hash: ecc.hash.value(),
        });
    }
    let scalar = |v: &[u8]| -> Result<p256::FieldBytes, QuoteError> {
        if v.len() > 32 {
            return Err(QuoteError::MalformedSignature(format!(
                "{}-byte ECDSA scalar",
                v.len()
            )));
        }
        let mut out = p256::FieldBytes::default();
        out[32 - v.len()..].copy_from_slice(v);
        Ok(out)
    };
    p256::ecdsa::Signature::from_scalars(scalar(&ecc.signature_r)?, scalar(&ecc.signature_s)?)
        .map_err(|_| QuoteError::BadSignature)
}

/// Verifies a TPM2_Quote made by `ak` and returns what it attests.
///
/// `attest` is the TPMS_ATTEST and `signature` the TPMT_SIGNATURE, as `tuk_tpm::Tpm::quote`
/// returns them. `qualifying_data` is what the verifier expects in extraData (its nonce, or the
/// hash the protocol derives from it). `pcrs` are the expected SHA-256 PCR values, each index
/// once, in any order; the quote must select exactly these PCRs of exactly the SHA-256 bank.
///
/// Checks, in order (the first failure is the error): the signature is ECDSA-SHA256 and verifies
/// with the AK over `attest` → magic is TPM_GENERATED_VALUE → type is ATTEST_QUOTE → the
/// structure parses completely → extraData equals `qualifying_data` → the selection equals
/// `pcrs`' indices → pcrDigest equals SHA-256 of `pcrs`' values in ascending index order.
pub fn verify_quote(
    ak: &AkPublic,
    attest: &[u8],
    signature: &[u8],
    qualifying_data: &[u8],
    pcrs: &[(u32, [u8; 32])],
) -> Result<QuoteInfo, QuoteError> {
    let sig = ecdsa_signature(signature)?;
    ak.verifying_key()
        .verify(attest, &sig)
        .map_err(|_| QuoteError::BadSignature)?;
    let info = QuoteInfo::parse(attest)?;
    if info.extra_data != qualifying_data {
        return Err(QuoteError::QualifyingData {
            expected: hex(qualifying_data),
            found: hex(&info.extra_data),
        });
    }
    let mut expected: Vec<(u32, [u8; 32])> = pcrs.to_vec();
    expected.sort_by_key(|(i, _)| *i);
    if expected.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(QuoteError::BadExpectation("a PCR index is given twice"));
    }
    if expected.iter().any(|(i, _)| *i >= 24) {
        return Err(QuoteError::BadExpectation("a PCR index above 23"));
    }
    let indices: Vec<u32> = expected.iter().map(|(i, _)| *i).collect();
    let selected_ok = matches!(
        info.pcr_selection.as_slice(),
        [bank] if bank.hash_alg == HashAlg::Sha256.alg_id() && bank.pcrs == indices
    );
    if !selected_ok {
        let found = info
            .pcr_selection
            .iter()
            .map(|b| format!("{:#06x}:{:?}", b.hash_alg, b.pcrs))
            .collect::<Vec<_>>()
            .join(" ");
        return Err(QuoteError::PcrSelection {
            expected: indices,
            found,
        });
    }
    let values: Vec<[u8; 32]> = expected.iter().map(|(_, v)| *v).collect();
    let digest = pcr_digest(&values);
    if info.pcr_digest != digest {
        return Err(QuoteError::PcrDigest {
            expected: hex(&digest),
            found: hex(&info.pcr_digest),
        });
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;

    const PCRS: [u32; 5] = [4, 5, 8, 9, 10];

    fn pcr_values() -> Vec<(u32, [u8; 32])> {
        PCRS.iter().map(|&i| (i, [i as u8; 32])).collect()
    }

    /// A quote's TPMS_ATTEST, byte by byte (TPM 2.0 Part 2, 10.12.12).
    fn attest(extra: &[u8], select: [u8; 3], digest: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend(TPM_GENERATED_VALUE.to_be_bytes());
        a.extend(TPM_ST_ATTEST_QUOTE.to_be_bytes());
        a.extend([0, 2, 0xab, 0xcd]); // qualifiedSigner
        a.extend((extra.len() as u16).to_be_bytes());
        a.extend(extra);
        a.extend(1234u64.to_be_bytes()); // clock
        a.extend(7u32.to_be_bytes()); // resetCount
        a.extend(2u32.to_be_bytes()); // restartCount
        a.push(1); // safe
        a.extend(0x2019_1023u64.to_be_bytes()); // firmwareVersion
        a.extend(1u32.to_be_bytes()); // one bank
        a.extend([0x00, 0x0b, 3]);
        a.extend(select);
        a.extend((digest.len() as u16).to_be_bytes());
        a.extend(digest);
        a
    }

    /// A software "AK" with tuk's AK attributes, its TPMT_PUBLIC, and a signer.
    fn software_ak() -> (AkPublic, p256::ecdsa::SigningKey) {
        let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let point = key.verifying_key().to_encoded_point(false);
        let mut p = vec![0x00, 0x23, 0x00, 0x0b, 0x00, 0x05, 0x00, 0x72, 0x00, 0x00];
        p.extend([0x00, 0x10, 0x00, 0x18, 0x00, 0x0b, 0x00, 0x03, 0x00, 0x10]);
        p.extend([0x00, 0x20]);
        p.extend(point.x().unwrap());
        p.extend([0x00, 0x20]);
        p.extend(point.y().unwrap());
        (AkPublic::parse(&p).unwrap(), key)
    }

    fn sign(key: &p256::ecdsa::SigningKey, attest: &[u8]) -> Vec<u8> {
        let sig: p256::ecdsa::Signature = key.sign(attest);
        let (r, s) = sig.split_bytes();
        let mut t = vec![0x00, 0x18, 0x00, 0x0b, 0x00, 0x20];
        t.extend(r);
        t.extend([0x00, 0x20]);
        t.extend(s);
        t
    }

    #[test]
    fn parses_a_quote() {
        let values: Vec<[u8; 32]> = pcr_values().iter().map(|(_, v)| *v).collect();
        let digest = pcr_digest(&values);
        let info = QuoteInfo::parse(&attest(b"nonce", [0x30, 0x07, 0], &digest)).unwrap();
        assert_eq!(info.extra_data, b"nonce");
        assert_eq!(info.qualified_signer, [0xab, 0xcd]);
        assert_eq!(
            info.clock,
            ClockInfo {
                clock: 1234,
                reset_count: 7,
                restart_count: 2,
                safe: true
            }
        );
        assert_eq!(info.pcr_selection[0].pcrs, PCRS);
        assert_eq!(info.pcr_digest, digest);
    }

    #[test]
    fn malformed_quotes_are_refused() {
        let good = attest(b"n", [0x30, 0x07, 0], &[0; 32]);
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(matches!(
            QuoteInfo::parse(&bad),
            Err(QuoteError::Magic { .. })
        ));
        let mut bad = good.clone();
        bad[5] = 0x14; // 0x8014: TPM_ST_ATTEST_NV
        assert!(matches!(
            QuoteInfo::parse(&bad),
            Err(QuoteError::NotAQuote { found: 0x8014 })
        ));
        for len in [0, 3, 5, 20, good.len() - 1] {
            assert!(QuoteInfo::parse(&good[..len]).is_err(), "{len}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            QuoteInfo::parse(&long),
            Err(QuoteError::Malformed(_))
        ));
    }

    #[test]
    fn verification_checks_everything_in_order() {
        let (ak, key) = software_ak();
        let pcrs = pcr_values();
        let values: Vec<[u8; 32]> = pcrs.iter().map(|(_, v)| *v).collect();
        let a = attest(b"nonce", [0x30, 0x07, 0], &pcr_digest(&values));
        let s = sign(&key, &a);
        verify_quote(&ak, &a, &s, b"nonce", &pcrs).unwrap();
        assert!(matches!(
            verify_quote(&ak, &a, &s, b"other", &pcrs),
            Err(QuoteError::QualifyingData { .. })
        ));
        let (other_ak, _) = software_ak();
        assert_eq!(
            verify_quote(&other_ak, &a, &s, b"nonce", &pcrs),
            Err(QuoteError::BadSignature)
        );
        // A validly signed statement over other PCRs, or a selection of another bank.
        let a2 = attest(b"nonce", [0x30, 0x03, 0], &pcr_digest(&values));
        let s2 = sign(&key, &a2);
        assert!(matches!(
            verify_quote(&ak, &a2, &s2, b"nonce", &pcrs),
            Err(QuoteError::PcrSelection { .. })
        ));
        let a3 = attest(b"nonce", [0x30, 0x07, 0], &[0; 32]);
        let s3 = sign(&key, &a3);
        assert!(matches!(
            verify_quote(&ak, &a3, &s3, b"nonce", &pcrs),
            Err(QuoteError::PcrDigest { .. })
        ));
        // A signed non-quote is refused even with a good signature.
        let mut a4 = a.clone();
        a4[0] = 0;
        let s4 = sign(&key, &a4);
        assert!(matches!(
            verify_quote(&ak, &a4, &s4, b"nonce", &pcrs),
            Err(QuoteError::Magic { .. })
        ));
        // Expectations are checked too.
        let mut dup = pcrs.clone();
        dup[1].0 = 4;
        assert!(matches!(
            verify_quote(&ak, &a, &s, b"nonce", &dup),
            Err(QuoteError::BadExpectation(_))
        ));
        // An RSA or SHA-1 signature is not ECDSA-SHA256.
        let mut sha1 = s.clone();
        sha1[3] = 0x04;
        assert!(matches!(
            verify_quote(&ak, &a, &sha1, b"nonce", &pcrs),
            Err(QuoteError::UnsupportedSignature { .. })
        ));
    }

    #[test]
    fn an_unrestricted_key_is_not_an_ak() {
        let (ak, _) = software_ak();
        let mut p = ak.public().bytes().to_vec();
        p[5] = 0x04; // sign without restricted
        assert!(matches!(
            AkPublic::parse(&p),
            Err(crate::PublicError::NotAnAk(_))
        ));
    }
}
