//! The verifier's side of TPM 2.0 attestation, in pure Rust (RustCrypto, no OpenSSL).
//! docs/attestation.md is the contract: the key hierarchy, the credential activation flow and
//! what a verifier checks.
//!
//! - [`public`]: TPMT_PUBLIC parsing, TPM names, the checks that make a key an AK
//!   ([`AkPublic`]) or an EK ([`EkPublic`]).
//! - [`quote`]: TPM2_Quote verification ([`verify_quote`]): the ECDSA signature with the AK,
//!   then TPMS_ATTEST (magic, type, extraData, PCR selection, pcrDigest).
//! - [`credential`]: TPM2_MakeCredential in software ([`make_credential`]), TPM 2.0 Part 1
//!   §24 (KDFa, KDFe, OAEP with label "IDENTITY", AES-CFB, HMAC).
//! - [`cert`]: EK certificate chains up to the swtpm_localca root ([`verify_ek_certificate`]).
//! - [`evidence`]: the kernel's identity and evidence documents (checked parsers).
//! - [`appraise`]: the verification policy for tuk evidence: identity, quote, event log,
//!   reference values ([`verify_identity`], [`appraise()`]).
//! - [`boot_reference`]: the reference PCR 5's boot configuration is appraised against, and
//!   the run-time measurement freshness rule ([`BootReference`]).
//! - [`monitor_report`]: the out-of-guest monitor's signed report and its appraisal.
//! - [`result`]: AR4SI trust tiers and claims per submodule, as an EAR claims set.
//! - [`attester`]: one attestation end to end over the kernel's HTTP endpoints ([`attest`]).
//!
//! Inputs are untrusted bytes; every failure is a typed error that says what failed.
#![forbid(unsafe_code)]

pub mod appraise;
pub mod attester;
pub mod boot_reference;
pub mod cert;
pub mod credential;
pub mod evidence;
mod hash;
pub mod monitor_report;
pub mod public;
pub mod quote;
pub mod result;

pub use appraise::{appraise, verify_identity, Ca, References, Refusal, VerifiedIdentity};
pub use attester::{attest, quote, register, AttestError, Attester, HttpAttester};
pub use boot_reference::BootReference;
pub use cert::{verify_ek_certificate, CertError, EkCertificate};
pub use credential::{
    make_credential, make_credential_with_rng, secret_matches, Credential, CredentialError,
};
pub use hash::HashAlg;
pub use public::{AkPublic, EkPublic, PublicError, PublicKey, TpmPublic};
pub use quote::{pcr_digest, verify_quote, ClockInfo, QuoteError, QuoteInfo};
pub use result::{AttestationResult, Status, Submodule};

/// Lowercase hex, for messages.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
