//! Attestation against real swtpms manufactured the way tuk manufactures every vTPM
//! (`tuk_vtpm::manufacture`: swtpm_setup with EK certificates from swtpm_localca), driven by
//! tuk-tpm (the kernel's TPM code) and checked by tuk-attest (the verifier's code), with
//! `tpm2_checkquote` (tpm2-tools) as an independent verifier.
//!
//! Needs Debian's `swtpm swtpm-tools tpm2-tools`; a missing tool fails the test with the
//! package to install, it never skips. Each test has its own vTPM states; they share one CA
//! directory (swtpm_localca locks it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};
use tuk_attest::{
    make_credential, verify_ek_certificate, verify_quote, AkPublic, CertError, EkPublic, QuoteError,
};
use tuk_tpm::attest::{
    EK_ECC_P384_HANDLE, EK_RSA2048_HANDLE, NV_EK_CERT_ECC_P384, NV_EK_CERT_RSA2048,
};
use tuk_tpm::{EkAuthorization, KeyTemplate, Tpm, TPM_RH_ENDORSEMENT};
use tuk_vtpm::{SocketTransport, StartupType, Swtpm, Tools, VtpmPaths, SWTPM_TIMEOUT};

/// The PCRs a tuk quote covers (docs/measurement.md, docs/attestation.md).
const PCRS: [u32; 5] = [4, 5, 8, 9, 10];

fn test_root() -> PathBuf {
    std::env::temp_dir().join("tuk-attest-tests")
}

fn ca_dir() -> PathBuf {
    test_root().join("ca")
}

/// A manufactured vTPM, powered on and started (Startup(CLEAR)), and a tuk-tpm client on it.
struct Vtpm {
    _swtpm: Swtpm,
    tpm: Tpm<SocketTransport>,
    state: PathBuf,
}

impl Drop for Vtpm {
    fn drop(&mut self) {
        // A failed test keeps its state (and swtpm.log) for a look.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.state);
        }
    }
}

fn vtpm(name: &str) -> Vtpm {
    let tools = Tools::find().unwrap_or_else(|e| panic!("{e}"));
    let state = test_root().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).unwrap();
    let paths = VtpmPaths::new(&state).unwrap();
    let t = Instant::now();
    tuk_vtpm::manufacture(&tools, &paths, &ca_dir()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{name}: manufactured in {} ms", t.elapsed().as_millis());
    let (mut swtpm, _port) = tuk_vtpm::spawn_for_inspection(&tools, &paths, StartupType::Clear)
        .unwrap_or_else(|e| panic!("{e}"));
    let tpm = swtpm.tpm(SWTPM_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    Vtpm {
        _swtpm: swtpm,
        tpm,
        state,
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn root_cert() -> Vec<u8> {
    read(&tuk_vtpm::ca_root_cert(&ca_dir()))
}

fn issuer_cert() -> Vec<u8> {
    read(&tuk_vtpm::ca_issuer_cert(&ca_dir()))
}

fn ek_cert(tpm: &mut Tpm<SocketTransport>, index: u32) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let n = tpm.nv_read_all(index, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn rsa_ek_certificate_and_credential_activation() {
    let mut v = vtpm("rsa-ek");
    let tpm = &mut v.tpm;

    // The EK from the TCG template is the key swtpm_setup made persistent and certified.
    let t = Instant::now();
    let ek = tpm
        .create_primary(TPM_RH_ENDORSEMENT, KeyTemplate::EkRsa2048)
        .unwrap();
    eprintln!("CreatePrimary(EK RSA-2048): {} ms", t.elapsed().as_millis());
    let persistent = tpm.read_public(EK_RSA2048_HANDLE).unwrap();
    assert_eq!(ek.public, persistent.public, "template L-1 ≠ swtpm's EK");
    assert_eq!(ek.name, persistent.name);
    let ek_public = EkPublic::parse(&ek.public).unwrap();
    assert_eq!(
        ek_public.name(),
        &ek.name[..],
        "name = nameAlg || H(TPMT_PUBLIC)"
    );

    // The AK: deterministic (same template, same EPS), its name is what tuk-attest computes.
    let ak = tpm
        .create_primary(TPM_RH_ENDORSEMENT, KeyTemplate::Ak)
        .unwrap();
    let again = tpm
        .create_primary(TPM_RH_ENDORSEMENT, KeyTemplate::Ak)
        .unwrap();
    assert_eq!(ak.public, again.public, "the AK is not deterministic");
    assert_ne!(ak.handle, again.handle);
    tpm.flush_context(again.handle).unwrap();
    let ak_public = AkPublic::parse(&ak.public).unwrap();
    assert_eq!(ak_public.name(), &ak.name[..]);
    assert_eq!(tpm.read_public(ak.handle).unwrap().public, ak.public);
    // The AK is not an EK and the EK is not an AK.
    assert!(EkPublic::parse(&ak.public).is_err());
    assert!(AkPublic::parse(&ek.public).is_err());

    // The EK certificate, from NV in chunks, is the one swtpm_setup wrote and chains to the CA.
    let cert = ek_cert(tpm, NV_EK_CERT_RSA2048);
    assert_eq!(cert, read(&v.state.join("tpm-certs/ek-rsa2048.crt")));
    let issuer = issuer_cert();
    let root = root_cert();
    let t = Instant::now();
    let info =
        verify_ek_certificate(&cert, &[&issuer], &root, &ek_public, SystemTime::now()).unwrap();
    eprintln!(
        "EK certificate chain verified in {} µs: {info:?}",
        t.elapsed().as_micros()
    );
    assert_eq!(info.chain.len(), 2, "{info:?}");
    // Without the intermediate the chain does not reach the root.
    assert!(matches!(
        verify_ek_certificate(&cert, &[], &root, &ek_public, SystemTime::now()),
        Err(CertError::UnknownIssuer { .. })
    ));
    // A flipped bit in the signature.
    let mut forged = cert.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(matches!(
        verify_ek_certificate(&forged, &[&issuer], &root, &ek_public, SystemTime::now()),
        Err(CertError::BadSignature { .. })
    ));
    // The certificate of this TPM's other EK does not certify this one.
    let ecc_cert = ek_cert(tpm, NV_EK_CERT_ECC_P384);
    let err = verify_ek_certificate(&ecc_cert, &[&issuer], &root, &ek_public, SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, CertError::KeyMismatch(_)), "{err}");
    // Expired at a time before the CA existed.
    let long_ago = SystemTime::UNIX_EPOCH;
    assert!(matches!(
        verify_ek_certificate(&cert, &[&issuer], &root, &ek_public, long_ago),
        Err(CertError::NotValid { .. })
    ));

    // MakeCredential in software → ActivateCredential in the TPM gives the secret back.
    let secret: [u8; 32] = Sha256::digest(b"verifier secret").into();
    let t = Instant::now();
    let cred = make_credential(&ek_public, &ak.name, &secret).unwrap();
    let made = t.elapsed();
    let t = Instant::now();
    let got = tpm
        .activate_credential(
            ak.handle,
            ek.handle,
            EkAuthorization::PolicySecretEndorsement,
            &cred.credential_blob,
            &cred.encrypted_secret,
        )
        .unwrap();
    eprintln!(
        "MakeCredential (RSA EK): {} µs; StartAuthSession + PolicySecret + ActivateCredential: {} ms",
        made.as_micros(),
        t.elapsed().as_millis()
    );
    assert!(tuk_attest::secret_matches(&secret, &got));
    // The persistent EK works the same.
    let got = tpm
        .activate_credential(
            ak.handle,
            EK_RSA2048_HANDLE,
            EkAuthorization::PolicySecretEndorsement,
            &cred.credential_blob,
            &cred.encrypted_secret,
        )
        .unwrap();
    assert_eq!(&got[..], &secret[..]);

    // A credential made for another key's name is refused by the TPM (integrity check).
    let mut other_name = ak.name.to_vec();
    other_name[5] ^= 1;
    let cred = make_credential(&ek_public, &other_name, &secret).unwrap();
    let err = tpm
        .activate_credential(
            ak.handle,
            ek.handle,
            EkAuthorization::PolicySecretEndorsement,
            &cred.credential_blob,
            &cred.encrypted_secret,
        )
        .unwrap_err();
    eprintln!("credential for another name: {err}");
    assert_eq!(err.base_code(), Some(0x9f), "{err}"); // TPM_RC_INTEGRITY
                                                      // Without the endorsement policy the EK refuses to decrypt.
    let cred = make_credential(&ek_public, &ak.name, &secret).unwrap();
    let err = tpm
        .activate_credential(
            ak.handle,
            ek.handle,
            EkAuthorization::Password,
            &cred.credential_blob,
            &cred.encrypted_secret,
        )
        .unwrap_err();
    eprintln!("EK without its policy: {err}");
    assert_eq!(err.base_code(), Some(0x12f), "{err}"); // TPM_RC_AUTH_UNAVAILABLE
                                                       // The failed attempts left no session behind: the policy path still works.
    let got = tpm
        .activate_credential(
            ak.handle,
            ek.handle,
            EkAuthorization::PolicySecretEndorsement,
            &cred.credential_blob,
            &cred.encrypted_secret,
        )
        .unwrap();
    assert_eq!(&got[..], &secret[..]);

    tpm.flush_context(ak.handle).unwrap();
    tpm.flush_context(ek.handle).unwrap();
    // Flushed means gone.
    assert!(tpm.read_public(ak.handle).is_err());
}

#[test]
fn ecc_eks_certificate_and_credential_activation() {
    let mut v = vtpm("ecc-ek");
    let tpm = &mut v.tpm;
    let ak = tpm
        .create_primary(TPM_RH_ENDORSEMENT, KeyTemplate::Ak)
        .unwrap();
    let secret = [0x5a; 32];

    // P-384 (template H-3): swtpm's second EK, with a certificate; userWithAuth, so a
    // password session authorizes it.
    let ek = tpm
        .create_primary(TPM_RH_ENDORSEMENT, KeyTemplate::EkEccP384)
        .unwrap();
    assert_eq!(
        ek.public,
        tpm.read_public(EK_ECC_P384_HANDLE).unwrap().public,
        "template H-3 ≠ swtpm's ECC EK"
    );
    let ek_public = EkPublic::parse(&ek.public).unwrap();
    assert_eq!(ek_public.name(), &ek.name[..]);
    let cert = ek_cert(tpm, NV_EK_CERT_ECC_P384);
    assert_eq!(cert, read(&v.state.join("tpm-certs/ek-secp384r1.crt")));
    verify_ek_certificate(
        &cert,
        &[&issuer_cert()],
        &root_cert(),
        &ek_public,
        SystemTime::now(),
    )
    .unwrap();
    let t = Instant::now();
    let cred = make_credential(&ek_public, &ak.name, &secret).unwrap();
    eprintln!("MakeCredential (P-384 EK): {} µs", t.elapsed().as_micros());
    assert_eq!(
        KeyTemplate::EkEccP384.ek_authorization(),
        EkAuthorization::Password
    );
    let got = tpm
        .activate_credential(
            ak.handle,
            ek.handle,
            EkAuthorization::Password,
            &cred.credential_blob,
            &cred.encrypted_secret,
        )
        .unwrap();
    assert_eq!(&got[..], &secret[..]);
    // A 48-byte secret fits a SHA-384 EK's credential.
    let cred = make_credential(&ek_public, &ak.name, &[7; 48]).unwrap();
    let got = tpm
        .activate_credential(
            ak.handle,
            ek.handle,
            EkAuthorization::Password,
            &cred.credential_blob,
            &cred.encrypted_secret,
        )
        .unwrap();
    assert_eq!(&got[..], &[7; 48][..]);
    tpm.flush_context(ek.handle).unwrap();

    // P-256 (template L-2, PolicyA): no certificate from swtpm, but the ECC credential path
    // with the PolicySecret session.
    let ek = tpm
        .create_primary(TPM_RH_ENDORSEMENT, KeyTemplate::EkEccP256)
        .unwrap();
    let ek_public = EkPublic::parse(&ek.public).unwrap();
    let cred = make_credential(&ek_public, &ak.name, &secret).unwrap();
    let got = tpm
        .activate_credential(
            ak.handle,
            ek.handle,
            EkAuthorization::PolicySecretEndorsement,
            &cred.credential_blob,
            &cred.encrypted_secret,
        )
        .unwrap();
    assert_eq!(&got[..], &secret[..]);
    // A tampered ephemeral point is refused.
    let mut bad = cred.encrypted_secret.clone();
    bad[10] ^= 1;
    assert!(tpm
        .activate_credential(
            ak.handle,
            ek.handle,
            EkAuthorization::PolicySecretEndorsement,
            &cred.credential_blob,
            &bad,
        )
        .is_err());
    tpm.flush_context(ek.handle).unwrap();
    tpm.flush_context(ak.handle).unwrap();
}

fn extend_and_read(tpm: &mut Tpm<SocketTransport>, seed: &str) -> Vec<(u32, [u8; 32])> {
    for pcr in PCRS {
        let digest: [u8; 32] = Sha256::digest(format!("{seed} {pcr}")).into();
        tpm.pcr_extend(pcr, &digest).unwrap();
    }
    PCRS.iter()
        .map(|&pcr| (pcr, tpm.pcr_read(pcr).unwrap()))
        .collect()
}

fn tpm2_checkquote(dir: &Path, public: &str, nonce: &[u8]) -> std::process::Output {
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    Command::new("tpm2_checkquote")
        .current_dir(dir)
        .args(["-u", public, "-m", "quote.msg", "-s", "quote.sig"])
        .args(["-f", "pcrs.bin", "-l", "sha256:4,5,8,9,10", "-g", "sha256"])
        .args(["-q", &hex])
        .output()
        .unwrap_or_else(|e| panic!("cannot run tpm2_checkquote ({e}): apt-get install tpm2-tools"))
}

#[test]
fn quote_verifies_and_tampering_is_detected() {
    let mut v = vtpm("quote");
    let tpm = &mut v.tpm;
    let pcrs = extend_and_read(tpm, "boot");
    // PCR 10 of a healthy instance may be all zero; the extends above just make every PCR
    // distinct so a swapped value shows.
    let ak = tpm
        .create_primary(TPM_RH_ENDORSEMENT, KeyTemplate::Ak)
        .unwrap();
    let ak_public = AkPublic::parse(&ak.public).unwrap();
    let nonce: [u8; 32] = Sha256::digest(b"verifier nonce 1").into();

    let t = Instant::now();
    let quote = tpm.quote(ak.handle, &nonce, &PCRS).unwrap();
    eprintln!("TPM2_Quote round trip: {} µs", t.elapsed().as_micros());
    let ecdsa = quote.ecdsa().unwrap();
    assert_eq!(ecdsa.hash_alg, 0x000b);

    let info = verify_quote(&ak_public, &quote.attest, &quote.signature, &nonce, &pcrs).unwrap();
    assert_eq!(info.extra_data, nonce);
    assert_eq!(info.pcr_selection.len(), 1);
    assert_eq!(info.pcr_selection[0].pcrs, PCRS);
    // The expected values may come in any order.
    let mut shuffled = pcrs.clone();
    shuffled.reverse();
    verify_quote(
        &ak_public,
        &quote.attest,
        &quote.signature,
        &nonce,
        &shuffled,
    )
    .unwrap();

    // Another nonce (a replayed quote).
    let other_nonce: [u8; 32] = Sha256::digest(b"verifier nonce 2").into();
    let err = verify_quote(
        &ak_public,
        &quote.attest,
        &quote.signature,
        &other_nonce,
        &pcrs,
    )
    .unwrap_err();
    assert!(matches!(err, QuoteError::QualifyingData { .. }), "{err}");
    // A changed PCR value.
    let mut changed = pcrs.clone();
    changed[3].1[0] ^= 1;
    let err = verify_quote(
        &ak_public,
        &quote.attest,
        &quote.signature,
        &nonce,
        &changed,
    )
    .unwrap_err();
    assert!(matches!(err, QuoteError::PcrDigest { .. }), "{err}");
    // Two PCR values swapped.
    let mut swapped = pcrs.clone();
    let (a, b) = (swapped[0].1, swapped[1].1);
    swapped[0].1 = b;
    swapped[1].1 = a;
    let err = verify_quote(
        &ak_public,
        &quote.attest,
        &quote.signature,
        &nonce,
        &swapped,
    )
    .unwrap_err();
    assert!(matches!(err, QuoteError::PcrDigest { .. }), "{err}");
    // Another PCR set.
    let err = verify_quote(
        &ak_public,
        &quote.attest,
        &quote.signature,
        &nonce,
        &pcrs[..4],
    )
    .unwrap_err();
    assert!(matches!(err, QuoteError::PcrSelection { .. }), "{err}");
    // A flipped byte anywhere in the signature's r or s, or in the signed data.
    let sig_len = quote.signature.len();
    for at in [6, 20, sig_len - 1] {
        let mut sig = quote.signature.to_vec();
        sig[at] ^= 0x01;
        let err = verify_quote(&ak_public, &quote.attest, &sig, &nonce, &pcrs).unwrap_err();
        assert_eq!(err, QuoteError::BadSignature, "byte {at}");
    }
    let mut attest = quote.attest.to_vec();
    let last = attest.len() - 1;
    attest[last] ^= 1;
    let err = verify_quote(&ak_public, &attest, &quote.signature, &nonce, &pcrs).unwrap_err();
    assert_eq!(err, QuoteError::BadSignature);
    // Truncated signature.
    let err = verify_quote(
        &ak_public,
        &quote.attest,
        &quote.signature[..10],
        &nonce,
        &pcrs,
    )
    .unwrap_err();
    assert!(matches!(err, QuoteError::MalformedSignature(_)), "{err}");

    // Another TPM's AK (same template, another EPS) does not verify this TPM's quote.
    let mut other = vtpm("quote-other");
    let other_ak = other
        .tpm
        .create_primary(TPM_RH_ENDORSEMENT, KeyTemplate::Ak)
        .unwrap();
    assert_ne!(other_ak.public, ak.public);
    let other_public = AkPublic::parse(&other_ak.public).unwrap();
    let err = verify_quote(
        &other_public,
        &quote.attest,
        &quote.signature,
        &nonce,
        &pcrs,
    )
    .unwrap_err();
    assert_eq!(err, QuoteError::BadSignature);
    // ... nor does this TPM's AK verify the other's quote of the same PCR values and nonce.
    let other_pcrs = extend_and_read(&mut other.tpm, "boot");
    assert_eq!(other_pcrs, pcrs);
    let other_quote = other.tpm.quote(other_ak.handle, &nonce, &PCRS).unwrap();
    verify_quote(
        &other_public,
        &other_quote.attest,
        &other_quote.signature,
        &nonce,
        &pcrs,
    )
    .unwrap();
    let err = verify_quote(
        &ak_public,
        &other_quote.attest,
        &other_quote.signature,
        &nonce,
        &pcrs,
    )
    .unwrap_err();
    assert_eq!(err, QuoteError::BadSignature);
    // And a credential for this TPM's EK cannot be activated on the other TPM.
    let ek = tpm
        .create_primary(TPM_RH_ENDORSEMENT, KeyTemplate::EkRsa2048)
        .unwrap();
    let cred = make_credential(&EkPublic::parse(&ek.public).unwrap(), &ak.name, &[1; 32]).unwrap();
    let other_ek = other
        .tpm
        .create_primary(TPM_RH_ENDORSEMENT, KeyTemplate::EkRsa2048)
        .unwrap();
    assert!(other
        .tpm
        .activate_credential(
            other_ak.handle,
            other_ek.handle,
            EkAuthorization::PolicySecretEndorsement,
            &cred.credential_blob,
            &cred.encrypted_secret,
        )
        .is_err());

    // Interop: tpm2_checkquote (tpm2-tools) verifies the quote, with the AK as PEM and as a
    // TPM2B_PUBLIC, and refuses another nonce or another PCR value.
    let dir = v.state.join("checkquote");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ak.pem"), ak_public.to_pem()).unwrap();
    std::fs::write(dir.join("ak.pub"), ak_public.public().to_tpm2b()).unwrap();
    std::fs::write(dir.join("quote.msg"), &quote.attest[..]).unwrap();
    std::fs::write(dir.join("quote.sig"), &quote.signature[..]).unwrap();
    let values: Vec<u8> = pcrs.iter().flat_map(|(_, v)| *v).collect();
    std::fs::write(dir.join("pcrs.bin"), &values).unwrap();
    for public in ["ak.pem", "ak.pub"] {
        let out = tpm2_checkquote(&dir, public, &nonce);
        assert!(
            out.status.success(),
            "tpm2_checkquote -u {public}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = tpm2_checkquote(&dir, "ak.pem", &other_nonce);
    assert!(
        !out.status.success(),
        "tpm2_checkquote accepted another nonce"
    );
    let mut bad_values = values.clone();
    bad_values[0] ^= 1;
    std::fs::write(dir.join("pcrs.bin"), &bad_values).unwrap();
    let out = tpm2_checkquote(&dir, "ak.pem", &nonce);
    assert!(
        !out.status.success(),
        "tpm2_checkquote accepted another PCR value"
    );
    std::fs::write(dir.join("ak.pem"), other_public.to_pem()).unwrap();
    std::fs::write(dir.join("pcrs.bin"), &values).unwrap();
    let out = tpm2_checkquote(&dir, "ak.pem", &nonce);
    assert!(
        !out.status.success(),
        "tpm2_checkquote accepted another TPM's AK"
    );
}
