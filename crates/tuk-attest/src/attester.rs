//! One attestation of one instance, end to end: fetch its identity, verify it, activate a
//! credential, fetch a quote for a fresh nonce, appraise it ([`attest`]). The instance is
//! reached through an [`Attester`]; [`HttpAttester`] speaks the kernel's
//! `/_tuk/attestation` endpoints (docs/contracts.md).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};

use crate::appraise::{
    appraise, verify_identity, Ca, References, Refusal, VerifiedIdentity, NONCE_LEN, SECRET_LEN,
};
use crate::credential::{make_credential, secret_matches, Credential};
use crate::evidence::{Evidence, EvidenceError, Identity, MAX_EVIDENCE, MAX_IDENTITY};
use crate::hex;
use crate::result::{value, AttestationResult, Claim, Submodule};

/// Why an attestation could not be carried out at all (as opposed to a result, which may be
/// contraindicated).
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{url}: {detail}")]
    Protocol { url: String, detail: String },
    #[error(transparent)]
    Malformed(#[from] EvidenceError),
}

/// What TPM2_ActivateCredential on the instance gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Activation {
    /// The recovered secret.
    Secret(Vec<u8>),
    /// The TPM refused (the instance's reason).
    Refused(String),
}

/// An instance's attestation endpoints.
pub trait Attester {
    /// `GET /_tuk/attestation/identity`.
    fn identity(&mut self) -> Result<Identity, AttestError>;
    /// `POST /_tuk/attestation/activate`.
    fn activate(&mut self, credential: &Credential) -> Result<Activation, AttestError>;
    /// `GET /_tuk/attestation?nonce=`.
    fn evidence(&mut self, nonce: &[u8]) -> Result<Evidence, AttestError>;
}

/// The kernel's endpoints over HTTP/1.1 (plain HTTP; instances listen on loopback or a
/// private network).
pub struct HttpAttester {
    base: String,
    agent: ureq::Agent,
}

impl HttpAttester {
    /// `url` is the instance's base URL (`http://127.0.0.1:8080`; `http://` is assumed when no
    /// scheme is given); `timeout` bounds each request.
    pub fn new(url: &str, timeout: Duration) -> HttpAttester {
        let url = url.trim_end_matches('/');
        let base = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .user_agent(concat!("tuk-attest/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        HttpAttester { base, agent }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends `request`, returns (status, body of at most `limit` bytes).
    fn exchange(
        &self,
        url: &str,
        body: Option<&[u8]>,
        limit: usize,
    ) -> Result<(u16, Vec<u8>), AttestError> {
        let sent = match body {
            Some(b) => self
                .agent
                .post(url)
                .header("Content-Type", "application/json")
                .send(b),
            None => self.agent.get(url).call(),
        };
        let response = sent.map_err(|e| transport(url, e))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .into_with_config()
            .limit(limit as u64)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => AttestError::Protocol {
                    url: url.to_owned(),
                    detail: format!("the response is larger than {limit} bytes"),
                },
                e => transport(url, e),
            })?;
        Ok((status, body))
    }

    fn expect_ok(url: &str, status: u16) -> Result<(), AttestError> {
        if status == 200 {
            return Ok(());
        }
        Err(AttestError::Protocol {
            url: url.to_owned(),
            detail: status_text(status),
        })
    }
}

/// What an answer other than 200 means, from its status code alone. The body is never
/// repeated: the URL may be anything a client registered (a server-side request), and its
/// answer is not ours to relay.
fn status_text(status: u16) -> String {
    let hint = match status {
        403 => "forbidden: attestation needs the instance's ADMIN url (the `admin` of `tuk run`'s ready line)",
        404 => "not found: is this a tuk instance's base url?",
        400..=499 => "the request was refused",
        500..=599 => "the instance failed to answer",
        _ => "not an attestation answer",
    };
    format!("answered {status} ({hint})")
}

fn transport(url: &str, e: ureq::Error) -> AttestError {
    use std::io::ErrorKind;
    let unreachable = match &e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionReset
                | ErrorKind::NotFound
                | ErrorKind::AddrNotAvailable
                | ErrorKind::TimedOut
        ),
        _ => false,
    };
    if unreachable {
        AttestError::Unreachable {
            url: url.to_owned(),
            detail: e.to_string(),
        }
    } else {
        AttestError::Protocol {
            url: url.to_owned(),
            detail: e.to_string(),
        }
    }
}

impl Attester for HttpAttester {
    fn identity(&mut self) -> Result<Identity, AttestError> {
        let url = format!("{}/_tuk/attestation/identity", self.base);
        let (status, body) = self.exchange(&url, None, MAX_IDENTITY + 1)?;
        Self::expect_ok(&url, status)?;
        Ok(Identity::from_json(&body)?)
    }

    fn activate(&mut self, credential: &Credential) -> Result<Activation, AttestError> {
        let url = format!("{}/_tuk/attestation/activate", self.base);
        let request = json!({
            "credential_blob": B64.encode(&credential.credential_blob),
            "encrypted_secret": B64.encode(&credential.encrypted_secret),
        });
        let request = serde_json::to_vec(&request).unwrap_or_default();
        let (status, body) = self.exchange(&url, Some(&request), 64 * 1024)?;
        if status == 403 {
            return Ok(Activation::Refused(
                "the instance answered 403: its TPM refused to activate the credential, or this \
                 is not its admin url (attestation needs the admin listener: `admin` in `tuk \
                 run`'s ready line)"
                    .into(),
            ));
        }
        Self::expect_ok(&url, status)?;
        let secret = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("secret").and_then(Value::as_str).map(str::to_owned))
            .and_then(|s| B64.decode(s).ok())
            .ok_or_else(|| EvidenceError::Malformed {
                what: "activation answer",
                detail: "no base64 `secret`".into(),
            })?;
        Ok(Activation::Secret(secret))
    }

    fn evidence(&mut self, nonce: &[u8]) -> Result<Evidence, AttestError> {
        let url = format!("{}/_tuk/attestation?nonce={}", self.base, hex(nonce));
        let (status, body) = self.exchange(&url, None, MAX_EVIDENCE + 1)?;
        Self::expect_ok(&url, status)?;
        Ok(Evidence::from_json(&body)?)
    }
}

/// `n` random bytes from the operating system.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    OsRng.fill_bytes(&mut out);
    out
}

/// Credential activation: makes a credential for the AK's name on the EK with a fresh random
/// secret, has the instance activate it, and compares the secret.
pub fn activate(
    attester: &mut dyn Attester,
    identity: &VerifiedIdentity,
) -> Result<Result<(), Refusal>, AttestError> {
    let secret = random_bytes(SECRET_LEN);
    let credential = match make_credential(&identity.ek, &identity.ak.name(), &secret) {
        Ok(c) => c,
        Err(e) => return Ok(Err(Refusal::Credential(e.to_string()))),
    };
    Ok(match attester.activate(&credential)? {
        Activation::Refused(reason) => Err(Refusal::Activation(reason)),
        Activation::Secret(s) if secret_matches(&secret, &s) => Ok(()),
        Activation::Secret(_) => Err(Refusal::SecretMismatch),
    })
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A contraindicated result for a refusal, with what was established before it.
fn refused(nonce: &[u8], mut kernel: Submodule, refusal: &Refusal) -> AttestationResult {
    let (claim, value) = refusal.claim();
    kernel.claim(claim, value, Some(refusal.to_string()));
    AttestationResult {
        issued_at: now_s(),
        nonce: nonce.to_vec(),
        submods: [("kernel".to_owned(), kernel)].into(),
        refusal: Some(refusal.to_string()),
    }
}

/// Registers an instance: its identity (EK certificate chain against `ca`, AK) and credential
/// activation, which binds the AK to the certified EK. What a verifier service does once per
/// instance; [`quote`] then attests it as often as wanted.
pub fn register(
    attester: &mut dyn Attester,
    ca: &Ca,
) -> Result<Result<VerifiedIdentity, Refusal>, AttestError> {
    let identity = attester.identity()?;
    register_identity(attester, &identity, ca)
}

/// [`register`] with an identity document already fetched from the instance (a verifier keeps
/// the document, to re-check it after a restart).
pub fn register_identity(
    attester: &mut dyn Attester,
    identity: &Identity,
    ca: &Ca,
) -> Result<Result<VerifiedIdentity, Refusal>, AttestError> {
    let verified = match verify_identity(identity, ca, SystemTime::now()) {
        Ok(v) => v,
        Err(r) => return Ok(Err(r)),
    };
    if let Err(r) = activate(attester, &verified)? {
        return Ok(Err(r));
    }
    Ok(Ok(verified))
}

/// The kernel submodule's claims and facts that registration established.
fn identity_submodule(identity: &VerifiedIdentity) -> Submodule {
    let mut kernel = Submodule::default();
    let c = &identity.ek_certificate;
    kernel.facts.insert(
        "ek_certificate".into(),
        json!({"subject": c.subject, "issuer": c.issuer, "serial": c.serial, "chain": c.chain}),
    );
    kernel
        .facts
        .insert("ak_name".into(), Value::from(hex(&identity.ak.name())));
    kernel.claim(Claim::Hardware, value::GENUINE_HARDWARE, None);
    kernel
}

/// Attests a registered instance once: a quote for a fresh [`NONCE_LEN`]-byte nonce with the
/// registered AK, and its appraisal against `refs`. A refusal is a contraindicated result.
pub fn quote(
    attester: &mut dyn Attester,
    identity: &VerifiedIdentity,
    refs: &References,
) -> Result<AttestationResult, AttestError> {
    let nonce = random_bytes(NONCE_LEN);
    let mut kernel = identity_submodule(identity);
    kernel.claim(Claim::InstanceIdentity, value::TRUSTWORTHY_INSTANCE, None);
    let evidence = attester.evidence(&nonce)?;
    match appraise(&identity.ak, &evidence, &nonce, refs) {
        Ok(mut appraisal) => {
            if let Some(k) = appraisal.submods.get_mut("kernel") {
                for (claim, v) in &kernel.vector {
                    k.claim(*claim, *v, None);
                }
                for (key, v) in kernel.facts {
                    k.facts.insert(key, v);
                }
            }
            Ok(AttestationResult {
                issued_at: now_s(),
                nonce,
                submods: appraisal.submods,
                refusal: None,
            })
        }
        Err(r) => Ok(refused(&nonce, kernel, &r)),
    }
}

/// Attests one instance once: [`register`], then [`quote`]. A refusal is a contraindicated
/// result; only an instance that cannot be reached or answers something that is not the
/// contract's documents is an error.
pub fn attest(
    attester: &mut dyn Attester,
    refs: &References,
) -> Result<AttestationResult, AttestError> {
    match register(attester, &refs.ca)? {
        Ok(identity) => quote(attester, &identity, refs),
        Err(r) => Ok(refused(&random_bytes(NONCE_LEN), Submodule::default(), &r)),
    }
}
