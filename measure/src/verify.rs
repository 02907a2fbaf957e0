//! Bundle verification: everything a bundle must satisfy before the kernel deserializes its
//! code, in this order (the first failure is reported):
//!
//! 1. the envelope parses ([`VerifyError::BadEnvelope`]) and carries an in-toto Statement
//!    ([`VerifyError::WrongPayloadType`]);
//! 2. a signature by a key in the policy verifies over PAE(payloadType, payload)
//!    ([`VerifyError::NoTrustedSignature`]); only then is the payload parsed;
//! 3. the Statement is tuk's component statement, with a valid name, version and limits
//!    ([`VerifyError::BadStatement`]), for this kernel's world and engine
//!    ([`VerifyError::WorldMismatch`], [`VerifyError::EngineMismatch`]);
//! 4. its subjects name the bundle's `.wasm` and compiled code with their SHA-256
//!    ([`VerifyError::MissingSubject`], [`VerifyError::DigestMismatch`]);
//! 5. the policy allows the name ([`VerifyError::NameNotAllowed`]) at this version
//!    ([`VerifyError::Rollback`]).
//!
//! Signatures are ed25519 in the strict form (`verify_strict`: no small-order keys or
//! non-canonical signatures), so one signed statement has exactly one valid signature
//! encoding per key.

use alloc::string::String;

use crate::bundle::Bundle;
use crate::dsse::{Envelope, EnvelopeError};
use crate::policy::{PolicyError, TrustPolicy, TrustedKey};
use crate::statement::{self, Limits, Statement, PAYLOAD_TYPE, WORLD};
use crate::version::Version;
use crate::{hex, parse_hex32, sha256, Digest};

/// What a verified bundle says, every field authenticated by a trusted signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub name: String,
    pub version: Version,
    /// The keyid of the policy key whose signature verified.
    pub keyid: String,
    pub wasm_sha256: Digest,
    pub code_sha256: Digest,
    pub limits: Limits,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("bundle's signature envelope is unreadable: {0}")]
    BadEnvelope(EnvelopeError),
    #[error("bundle's envelope carries {0:?}, not an in-toto statement ({PAYLOAD_TYPE}); sign it with `tuk sign`")]
    WrongPayloadType(String),
    #[error("no signature on the bundle verifies with a key the trust policy trusts: sign it with a trusted key, or add the signer's .pub to the policy")]
    NoTrustedSignature,
    #[error("bundle's signed statement is not a valid tuk component statement: {0}")]
    BadStatement(String),
    #[error("bundle's signed statement has no subject {0:?}; sign it again with `tuk sign`")]
    MissingSubject(String),
    #[error("bundle's {which} does not match what was signed (sha256 signed {expected}, bundle has {actual}): the bundle was altered or assembled from different files; sign it again")]
    DigestMismatch {
        which: &'static str,
        expected: String,
        actual: String,
    },
    #[error("the trust policy does not allow a component named {0:?}")]
    NameNotAllowed(String),
    #[error("{name} {version} is older than the minimum version {minimum} the trust policy allows (rollback refused)")]
    Rollback {
        name: String,
        version: Version,
        minimum: Version,
    },
    #[error("bundle was compiled for engine {bundle}, this kernel's engine is {kernel}: sign it again with the tuk that built this kernel")]
    EngineMismatch { bundle: String, kernel: String },
    #[error("bundle implements world {bundle:?}; this kernel serves {WORLD:?}")]
    WorldMismatch { bundle: String },
    /// The policy was built in code and not validated ([`TrustPolicy::validate`]); parsed
    /// policies never cause this.
    #[error("the trust policy is invalid: {0}")]
    BadPolicy(PolicyError),
}

impl VerifyError {
    /// A stable kebab-case name for the failure, for machine-readable reports.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadEnvelope(_) => "bad-envelope",
            Self::WrongPayloadType(_) => "wrong-payload-type",
            Self::NoTrustedSignature => "no-trusted-signature",
            Self::BadStatement(_) => "bad-statement",
            Self::MissingSubject(_) => "missing-subject",
            Self::DigestMismatch { .. } => "digest-mismatch",
            Self::NameNotAllowed(_) => "name-not-allowed",
            Self::Rollback { .. } => "rollback",
            Self::EngineMismatch { .. } => "engine-mismatch",
            Self::WorldMismatch { .. } => "world-mismatch",
            Self::BadPolicy(_) => "bad-policy",
        }
    }
}

/// Verifies `bundle` against `policy` for a kernel whose engine fingerprint is
/// `engine_fingerprint` (see the module docs for what is checked, in order).
pub fn verify_bundle(
    bundle: &Bundle<'_>,
    policy: &TrustPolicy,
    engine_fingerprint: &str,
) -> Result<Verified, VerifyError> {
    let envelope = Envelope::from_json(bundle.envelope).map_err(VerifyError::BadEnvelope)?;
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(VerifyError::WrongPayloadType(
            envelope.payload_type.chars().take(128).collect(),
        ));
    }
    let keyid = trusted_signer(&envelope, policy).ok_or(VerifyError::NoTrustedSignature)?;

    let bad = VerifyError::BadStatement;
    let st = Statement::from_json(&envelope.payload).map_err(bad)?;
    let p = &st.predicate;
    if !tuk_bootpack::valid_name(&p.name) {
        return Err(bad(alloc::format!(
            "name {:?} is not a valid component name ([a-z0-9-], 1-63 characters)",
            p.name
        )));
    }
    let version: Version = p
        .version
        .parse()
        .map_err(|e: crate::version::VersionError| bad(alloc::format!("{e}")))?;
    if p.limits.memory_bytes == 0 || p.limits.deadline_ms == 0 {
        return Err(bad("limits must be positive".into()));
    }
    if p.world != WORLD {
        return Err(VerifyError::WorldMismatch {
            bundle: p.world.clone(),
        });
    }
    if p.engine != engine_fingerprint {
        return Err(VerifyError::EngineMismatch {
            bundle: p.engine.clone(),
            kernel: engine_fingerprint.into(),
        });
    }

    let wasm_sha256 = sha256(bundle.wasm);
    let code_sha256 = sha256(bundle.code);
    check_subject(
        &st,
        "wasm",
        &statement::wasm_subject_name(&p.name),
        &wasm_sha256,
    )?;
    check_subject(
        &st,
        "code",
        &statement::code_subject_name(&p.name),
        &code_sha256,
    )?;
    if st.subject.len() != 2 {
        return Err(bad(alloc::format!(
            "{} subjects; expected exactly the .wasm and the .cwasm",
            st.subject.len()
        )));
    }

    if !policy.allows(&p.name) {
        return Err(VerifyError::NameNotAllowed(p.name.clone()));
    }
    if let Some(minimum) = policy
        .min_version(&p.name)
        .map_err(VerifyError::BadPolicy)?
    {
        if version < minimum {
            return Err(VerifyError::Rollback {
                name: p.name.clone(),
                version,
                minimum,
            });
        }
    }
    Ok(Verified {
        name: p.name.clone(),
        version,
        keyid,
        wasm_sha256,
        code_sha256,
        limits: p.limits,
    })
}

/// The keyid of the first policy key with a valid signature on the envelope. A signature's
/// keyid is an unauthenticated hint: it selects the key to try (all keys when it is empty),
/// and the key that verifies is reported.
fn trusted_signer(envelope: &Envelope, policy: &TrustPolicy) -> Option<String> {
    trusted_signer_among(envelope, &policy.keys)
}

/// The keyid of the first key in `keys` with a valid signature on `envelope` (also used for
/// the out-of-guest monitor's reports).
pub fn trusted_signer_among(envelope: &Envelope, keys: &[TrustedKey]) -> Option<String> {
    let message = envelope.pae();
    for sig in &envelope.signatures {
        let Ok(signature) = ed25519_dalek::Signature::from_slice(&sig.sig) else {
            continue;
        };
        for key in keys {
            if !sig.keyid.is_empty() && sig.keyid != key.keyid {
                continue;
            }
            let Ok(verifying) = key.verifying_key() else {
                continue;
            };
            if verifying.verify_strict(&message, &signature).is_ok() {
                return Some(key.keyid.clone());
            }
        }
    }
    None
}

fn check_subject(
    st: &Statement,
    which: &'static str,
    name: &str,
    actual: &Digest,
) -> Result<(), VerifyError> {
    let mut matching = st.subject.iter().filter(|s| s.name == name);
    let subject = matching
        .next()
        .ok_or_else(|| VerifyError::MissingSubject(name.into()))?;
    if matching.next().is_some() {
        return Err(VerifyError::BadStatement(alloc::format!(
            "subject {name:?} is listed twice"
        )));
    }
    let expected = subject
        .digest
        .get("sha256")
        .and_then(|d| parse_hex32(d))
        .ok_or_else(|| {
            VerifyError::BadStatement(alloc::format!(
                "subject {name:?} has no sha256 digest in lowercase hex"
            ))
        })?;
    if &expected != actual {
        return Err(VerifyError::DigestMismatch {
            which,
            expected: hex(&expected),
            actual: hex(actual),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{encode, Bundle};
    use crate::dsse::Signature;
    use crate::policy::TrustedKey;
    use crate::sign::{sign_bundle, SigningKey};
    use crate::statement::ComponentPredicate;
    use crate::testutil::Rng;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    const ENGINE: &str = "e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0";
    const WASM: &[u8] = b"\0asm\x0d\0\x01\0 a component";
    const CODE: &[u8] = b"\x7fELF compiled code";

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed([n; 32])
    }

    fn predicate(name: &str, version: &str) -> ComponentPredicate {
        ComponentPredicate {
            name: name.into(),
            version: version.into(),
            engine: ENGINE.into(),
            world: WORLD.into(),
            limits: Limits {
                memory_bytes: 16 << 20,
                deadline_ms: 2000,
            },
        }
    }

    fn policy(keys: &[&SigningKey]) -> TrustPolicy {
        TrustPolicy {
            keys: keys.iter().map(|k| k.trusted_key()).collect(),
            allowed_names: None,
            min_versions: Default::default(),
        }
    }

    fn bundle_with(p: ComponentPredicate) -> Vec<u8> {
        sign_bundle(&key(1), WASM, CODE, p)
    }

    fn verify(bytes: &[u8], policy: &TrustPolicy) -> Result<Verified, VerifyError> {
        verify_bundle(&Bundle::parse(bytes).unwrap(), policy, ENGINE)
    }

    /// Re-signs a hand-made statement with key 1 into a bundle of WASM and CODE.
    fn bundle_of_statement(st: &Statement) -> Vec<u8> {
        let env = key(1).sign_envelope(PAYLOAD_TYPE, st.to_json());
        encode(WASM, CODE, &env.to_json())
    }

    #[test]
    fn a_signed_bundle_verifies() {
        let bytes = bundle_with(predicate("hello", "1.2.3"));
        let v = verify(&bytes, &policy(&[&key(2), &key(1)])).unwrap();
        assert_eq!(
            v,
            Verified {
                name: "hello".into(),
                version: Version::new(1, 2, 3),
                keyid: key(1).keyid(),
                wasm_sha256: sha256(WASM),
                code_sha256: sha256(CODE),
                limits: predicate("hello", "1.2.3").limits,
            }
        );
    }

    #[test]
    fn bad_envelope() {
        let bytes = encode(WASM, CODE, b"not json");
        assert!(matches!(
            verify(&bytes, &policy(&[&key(1)])),
            Err(VerifyError::BadEnvelope(EnvelopeError::Json(_)))
        ));
    }

    #[test]
    fn wrong_payload_type() {
        let st = Statement::component(predicate("hello", "1.0.0"), &sha256(WASM), &sha256(CODE));
        let env = key(1).sign_envelope("text/plain", st.to_json());
        let bytes = encode(WASM, CODE, &env.to_json());
        assert_eq!(
            verify(&bytes, &policy(&[&key(1)])),
            Err(VerifyError::WrongPayloadType("text/plain".into()))
        );
    }

    #[test]
    fn no_trusted_signature() {
        let bytes = bundle_with(predicate("hello", "1.0.0"));
        // Signed by a key the policy does not trust.
        assert_eq!(
            verify(&bytes, &policy(&[&key(2)])),
            Err(VerifyError::NoTrustedSignature)
        );
        let mut env = Envelope::from_json(Bundle::parse(&bytes).unwrap().envelope).unwrap();
        // A trusted key's keyid on another key's signature does not help.
        env.signatures[0].keyid = key(2).keyid();
        let relabeled = encode(WASM, CODE, &env.to_json());
        assert_eq!(
            verify(&relabeled, &policy(&[&key(2)])),
            Err(VerifyError::NoTrustedSignature)
        );
        // An altered payload (a signed statement edited afterwards).
        let mut tampered = env.clone();
        tampered.signatures[0].keyid = key(1).keyid();
        let text = String::from_utf8(tampered.payload.clone()).unwrap();
        tampered.payload = text.replace("1.0.0", "9.0.0").into_bytes();
        assert_eq!(
            verify(
                &encode(WASM, CODE, &tampered.to_json()),
                &policy(&[&key(1)])
            ),
            Err(VerifyError::NoTrustedSignature)
        );
        // No signatures, and a signature that is not 64 bytes.
        let mut unsigned = env.clone();
        unsigned.signatures.clear();
        assert_eq!(
            verify(
                &encode(WASM, CODE, &unsigned.to_json()),
                &policy(&[&key(1)])
            ),
            Err(VerifyError::NoTrustedSignature)
        );
        let mut short = env.clone();
        short.signatures[0].keyid.clear();
        short.signatures[0].sig.pop();
        assert_eq!(
            verify(&encode(WASM, CODE, &short.to_json()), &policy(&[&key(1)])),
            Err(VerifyError::NoTrustedSignature)
        );
        // An empty keyid tries every key; a second, untrusted signature does not matter.
        let mut hintless = Envelope::from_json(Bundle::parse(&bytes).unwrap().envelope).unwrap();
        hintless.signatures[0].keyid.clear();
        hintless.signatures.insert(
            0,
            Signature {
                keyid: key(3).keyid(),
                sig: alloc::vec![7; 64],
            },
        );
        let v = verify(
            &encode(WASM, CODE, &hintless.to_json()),
            &policy(&[&key(1)]),
        )
        .unwrap();
        assert_eq!(v.keyid, key(1).keyid());
    }

    #[test]
    fn bad_statement() {
        type Edit = fn(&mut Statement);
        let cases: [(&str, Edit); 6] = [
            ("_type", |s| {
                s.type_ = "https://in-toto.io/Statement/v0.1".into()
            }),
            ("predicateType", |s| s.predicate_type = "x".into()),
            ("not a valid component name", |s| {
                s.predicate.name = "Hello".into()
            }),
            ("invalid version", |s| {
                s.predicate.version = "1.0.0-rc1".into()
            }),
            ("limits", |s| s.predicate.limits.deadline_ms = 0),
            ("subjects", |s| {
                let extra = s.subject[0].clone();
                s.subject[0].name = "other.wasm".into();
                s.subject.push(extra);
            }),
        ];
        for (needle, edit) in cases {
            let mut st =
                Statement::component(predicate("hello", "1.0.0"), &sha256(WASM), &sha256(CODE));
            edit(&mut st);
            match verify(&bundle_of_statement(&st), &policy(&[&key(1)])) {
                Err(VerifyError::BadStatement(msg)) => assert!(msg.contains(needle), "{msg}"),
                other => panic!("{needle}: {other:?}"),
            }
        }
        let env = key(1).sign_envelope(PAYLOAD_TYPE, b"[1,2]".to_vec());
        assert!(matches!(
            verify(&encode(WASM, CODE, &env.to_json()), &policy(&[&key(1)])),
            Err(VerifyError::BadStatement(_))
        ));
    }

    #[test]
    fn missing_subject() {
        let mut st =
            Statement::component(predicate("hello", "1.0.0"), &sha256(WASM), &sha256(CODE));
        st.subject.remove(1);
        assert_eq!(
            verify(&bundle_of_statement(&st), &policy(&[&key(1)])),
            Err(VerifyError::MissingSubject("hello.cwasm".into()))
        );
        let mut st =
            Statement::component(predicate("hello", "1.0.0"), &sha256(WASM), &sha256(CODE));
        st.subject[0].name = "kv.wasm".into();
        assert_eq!(
            verify(&bundle_of_statement(&st), &policy(&[&key(1)])),
            Err(VerifyError::MissingSubject("hello.wasm".into()))
        );
    }

    #[test]
    fn digest_mismatch() {
        let bytes = bundle_with(predicate("hello", "1.0.0"));
        let b = Bundle::parse(&bytes).unwrap();
        let mut wasm = WASM.to_vec();
        wasm[3] ^= 1;
        let swapped = encode(&wasm, b.code, b.envelope);
        assert_eq!(
            verify(&swapped, &policy(&[&key(1)])),
            Err(VerifyError::DigestMismatch {
                which: "wasm",
                expected: hex(&sha256(WASM)),
                actual: hex(&sha256(&wasm)),
            })
        );
        let swapped = encode(b.wasm, b"other code", b.envelope);
        assert!(matches!(
            verify(&swapped, &policy(&[&key(1)])),
            Err(VerifyError::DigestMismatch { which: "code", .. })
        ));
    }

    #[test]
    fn name_not_allowed() {
        let bytes = bundle_with(predicate("notes", "1.0.0"));
        let mut p = policy(&[&key(1)]);
        p.allowed_names = Some(alloc::vec!["hello".into(), "kv".into()]);
        assert_eq!(
            verify(&bytes, &p),
            Err(VerifyError::NameNotAllowed("notes".into()))
        );
        p.allowed_names = Some(alloc::vec!["notes".into()]);
        assert!(verify(&bytes, &p).is_ok());
    }

    #[test]
    fn rollback() {
        let mut p = policy(&[&key(1)]);
        p.min_versions.insert("kv".into(), "1.2.0".into());
        let old = bundle_with(predicate("kv", "1.1.9"));
        assert_eq!(
            verify(&old, &p),
            Err(VerifyError::Rollback {
                name: "kv".into(),
                version: Version::new(1, 1, 9),
                minimum: Version::new(1, 2, 0),
            })
        );
        assert!(verify(&bundle_with(predicate("kv", "1.2.0")), &p).is_ok());
        assert!(verify(&bundle_with(predicate("kv", "1.10.0")), &p).is_ok());
        // The minimum applies to its name only.
        assert!(verify(&bundle_with(predicate("hello", "0.0.1")), &p).is_ok());
        // An unvalidated policy with a broken minimum refuses rather than allowing any version.
        p.min_versions.insert("kv".into(), "latest".into());
        assert!(matches!(
            verify(&bundle_with(predicate("kv", "9.0.0")), &p),
            Err(VerifyError::BadPolicy(PolicyError::BadVersion { .. }))
        ));
    }

    #[test]
    fn engine_and_world_mismatch() {
        let bytes = bundle_with(predicate("hello", "1.0.0"));
        let other = "0".repeat(64);
        assert_eq!(
            verify_bundle(&Bundle::parse(&bytes).unwrap(), &policy(&[&key(1)]), &other),
            Err(VerifyError::EngineMismatch {
                bundle: ENGINE.into(),
                kernel: other.clone(),
            })
        );
        let mut p = predicate("hello", "1.0.0");
        p.world = "tuk:service/service@0.2.0".into();
        assert_eq!(
            verify(&bundle_with(p), &policy(&[&key(1)])),
            Err(VerifyError::WorldMismatch {
                bundle: "tuk:service/service@0.2.0".into()
            })
        );
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = VerifyError::NoTrustedSignature.to_string();
        assert!(e.contains("add the signer's .pub"), "{e}");
        let e = VerifyError::DigestMismatch {
            which: "code",
            expected: "aa".into(),
            actual: "bb".into(),
        }
        .to_string();
        assert!(
            e.starts_with("bundle's code does not match what was signed"),
            "{e}"
        );
    }

    #[test]
    fn random_bundles_never_panic_and_never_verify_altered_bytes() {
        let good = bundle_with(predicate("hello", "1.0.0"));
        let p = policy(&[&key(1)]);
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..3_000 {
            let bytes = rng.mutate(&good);
            let Ok(b) = Bundle::parse(&bytes) else {
                continue;
            };
            if let Ok(v) = verify_bundle(&b, &p, ENGINE) {
                // Only alterations outside what is signed (the envelope's JSON whitespace,
                // the base64 spelling) can keep a bundle valid; what it says cannot change.
                assert_eq!(v.wasm_sha256, sha256(WASM));
                assert_eq!(v.code_sha256, sha256(CODE));
                assert_eq!(v.version, Version::new(1, 0, 0));
            }
        }
    }

    #[test]
    fn trusted_key_round_trip() {
        let k = key(9).trusted_key();
        assert_eq!(TrustedKey::from_json(&k.to_json()).unwrap(), k);
        assert_eq!(k.keyid, crate::keyid(&key(9).public_key()));
        assert_eq!(k.keyid.len(), 64);
        assert_eq!(k.keyid, k.keyid.to_string().to_lowercase());
    }
}
