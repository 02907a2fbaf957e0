//! Remote attestation evidence (docs/attestation.md): the vTPM's keys, credential activation
//! and quotes.
//!
//! - The EK is swtpm's persistent RSA-2048 EK (0x81010001, TCG template L-1) with its
//!   certificate in NV 0x01c00002; a verifier checks the certificate chain.
//! - The AK is a restricted ECDSA P-256 signing key, created at boot as a primary key in the
//!   endorsement hierarchy from a fixed template (`tuk_tpm::KeyTemplate::Ak`): the same TPM
//!   always yields the same AK. A verifier binds it to the EK once with credential activation.
//! - A quote covers PCRs 4, 5, 8, 9 and 10; its qualifying data is
//!   SHA-256(nonce || canonical JSON of the run-time report), so the report (the integrity
//!   monitor's state) is as fresh and as authentic as the quote.
//!
//! Endpoints (routes.rs): `GET /_tuk/attestation/identity`, `POST /_tuk/attestation/activate`,
//! `GET /_tuk/attestation?nonce=HEX`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use tuk_measure::{hex, sha256};
use tuk_tpm::attest::{EK_RSA2048_HANDLE, NV_EK_CERT_RSA2048};
use tuk_tpm::{KeyTemplate, TPM_RH_ENDORSEMENT};

use crate::measured::Measurements;

/// PCRs every quote covers.
pub const QUOTED_PCRS: [u32; 5] = [4, 5, 8, 9, 10];
/// Nonce bounds, in bytes (hex in the query: twice as many characters).
pub const NONCE_MIN: usize = 8;
pub const NONCE_MAX: usize = 32;
/// Largest EK certificate read from NV.
const EK_CERT_MAX: usize = 4096;

/// The instance's attestation identity, set up at boot.
pub struct Identity {
    ak_handle: u32,
    ak_public: Vec<u8>,
    ak_name: Vec<u8>,
    ek_public: Vec<u8>,
    ek_cert: Vec<u8>,
}

/// Why attestation is unavailable, or a request failed: (HTTP status, reason).
pub type Failure = (u16, String);

impl Identity {
    /// Loads the EK, reads its certificate and creates the AK.
    pub fn setup(m: &mut Measurements) -> Result<Identity, String> {
        let tpm = m
            .tpm_mut()
            .ok_or("no usable TPM: attestation is unavailable")?;
        let ek = tpm
            .read_public(EK_RSA2048_HANDLE)
            .map_err(|e| format!("the EK (0x{EK_RSA2048_HANDLE:08x}) is missing: {e}"))?;
        let mut cert = alloc::vec![0u8; EK_CERT_MAX];
        let n = tpm
            .nv_read_all(NV_EK_CERT_RSA2048, &mut cert)
            .map_err(|e| format!("cannot read the EK certificate: {e}"))?;
        cert.truncate(n);
        let ak = tpm
            .create_primary(TPM_RH_ENDORSEMENT, KeyTemplate::Ak)
            .map_err(|e| format!("cannot create the AK: {e}"))?;
        Ok(Identity {
            ak_handle: ak.handle,
            ak_public: ak.public.as_slice().into(),
            ak_name: ak.name.as_slice().into(),
            ek_public: ek.public.as_slice().into(),
            ek_cert: cert,
        })
    }

    /// `GET /_tuk/attestation/identity`.
    pub fn identity_json(&self) -> Value {
        json!({
            "ek": {
                "handle": EK_RSA2048_HANDLE,
                "template": "rsa2048",
                "public": B64.encode(&self.ek_public),
                "certificate": B64.encode(&self.ek_cert),
            },
            "ak": {
                "public": B64.encode(&self.ak_public),
                "name": hex(&self.ak_name),
            },
        })
    }

    /// `POST /_tuk/attestation/activate`: TPM2_ActivateCredential of the verifier's
    /// credential against this AK and the EK.
    pub fn activate(&self, m: &mut Measurements, body: &[u8]) -> Result<Value, Failure> {
        let req: Value = serde_json::from_slice(body)
            .map_err(|e| (400, format!("the body is not JSON: {e}")))?;
        let field = |name: &str| -> Result<Vec<u8>, Failure> {
            let s = req[name]
                .as_str()
                .ok_or_else(|| (400, format!("`{name}` (base64) is missing")))?;
            B64.decode(s)
                .map_err(|e| (400, format!("`{name}` is not base64: {e}")))
        };
        let blob = field("credential_blob")?;
        let secret = field("encrypted_secret")?;
        let tpm = m.tpm_mut().ok_or((503, String::from("no usable TPM")))?;
        let out = tpm
            .activate_credential(
                self.ak_handle,
                EK_RSA2048_HANDLE,
                KeyTemplate::EkRsa2048.ek_authorization(),
                &blob,
                &secret,
            )
            .map_err(|e| (403, format!("the TPM refused the credential: {e}")))?;
        Ok(json!({ "secret": B64.encode(out.as_slice()) }))
    }

    /// `GET /_tuk/attestation?nonce=HEX`: a quote over [`QUOTED_PCRS`] bound to the nonce and
    /// `report`, with the event log.
    pub fn quote(
        &self,
        m: &mut Measurements,
        query: Option<&str>,
        report: Value,
    ) -> Result<Value, Failure> {
        let nonce = parse_nonce(query)?;
        let canonical = serde_json::to_vec(&report).map_err(|e| (500, format!("{e}")))?;
        let mut bound = nonce.clone();
        bound.extend_from_slice(&canonical);
        let qualifying = sha256(&bound);
        let tpm = m.tpm_mut().ok_or((503, String::from("no usable TPM")))?;
        let quote = tpm
            .quote(self.ak_handle, &qualifying, &QUOTED_PCRS)
            .map_err(|e| (503, format!("TPM2_Quote failed: {e}")))?;
        let eventlog: Value =
            serde_json::from_str(&m.log_json()).map_err(|e| (500, format!("{e}")))?;
        Ok(json!({
            "nonce": hex(&nonce),
            "report": report,
            "qualifying_data": hex(&qualifying),
            "quote": {
                "attest": B64.encode(quote.attest.as_slice()),
                "signature": B64.encode(quote.signature.as_slice()),
            },
            "pcrs": QUOTED_PCRS,
            "eventlog": eventlog,
        }))
    }
}

/// `nonce=HEX` from a query string: 8 to 32 bytes of lowercase or uppercase hex.
fn parse_nonce(query: Option<&str>) -> Result<Vec<u8>, Failure> {
    let bad = |why: &str| {
        (
            400,
            format!("{why}: pass ?nonce= with {NONCE_MIN} to {NONCE_MAX} bytes in hex"),
        )
    };
    let value = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("nonce="))
        .ok_or_else(|| bad("no nonce"))?;
    if value.len() % 2 != 0 || !(NONCE_MIN * 2..=NONCE_MAX * 2).contains(&value.len()) {
        return Err(bad("the nonce has the wrong length"));
    }
    if !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("the nonce is not hex"));
    }
    (0..value.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&value[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad("the nonce is not hex"))
}
