//! Attestation costs on this machine: the verifier's work per quote (tuk-attest) and the TPM's
//! round trips on swtpm (tuk-tpm over swtpm's TCP channel). Not a test; run with
//! `cargo run --release -p tuk-attest --example bench [ITERATIONS]`.
//! Needs Debian's `swtpm swtpm-tools`. docs/attestation.md records the numbers.

use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tuk_attest::{make_credential, verify_ek_certificate, verify_quote, AkPublic, EkPublic};
use tuk_tpm::attest::NV_EK_CERT_RSA2048;
use tuk_tpm::{EkAuthorization, KeyTemplate, TPM_RH_ENDORSEMENT};
use tuk_vtpm::{StartupType, Tools, VtpmPaths, SWTPM_TIMEOUT};

const PCRS: [u32; 5] = [4, 5, 8, 9, 10];

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let n = samples.len();
    let at = |q: f64| samples[((n as f64 * q) as usize).min(n - 1)];
    let mean = samples.iter().sum::<Duration>() / n as u32;
    println!(
        "{what:<48} n={n:<5} mean {:>9.1} µs  p50 {:>9.1} µs  p99 {:>9.1} µs",
        mean.as_secs_f64() * 1e6,
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6
    );
}

fn time<T>(samples: &mut Vec<Duration>, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    samples.push(t.elapsed());
    out
}

fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("ITERATIONS is a number"))
        .unwrap_or(500);
    let root = std::env::temp_dir().join(format!("tuk-attest-bench-{}", std::process::id()));
    let ca = std::env::temp_dir().join("tuk-attest-bench-ca");
    let tools = Tools::find().unwrap_or_else(|e| panic!("{e}"));
    let paths = VtpmPaths::new(&root).unwrap();
    tuk_vtpm::manufacture(&tools, &paths, &ca).unwrap_or_else(|e| panic!("{e}"));
    let (mut swtpm, _) = tuk_vtpm::spawn_for_inspection(&tools, &paths, StartupType::Clear)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut tpm = swtpm.tpm(SWTPM_TIMEOUT).unwrap();

    for pcr in PCRS {
        tpm.pcr_extend(pcr, &Sha256::digest(format!("bench {pcr}")).into())
            .unwrap();
    }
    let pcrs: Vec<(u32, [u8; 32])> = PCRS
        .iter()
        .map(|&p| (p, tpm.pcr_read(p).unwrap()))
        .collect();

    let mut s = Vec::new();
    let ak = time(&mut s, || {
        tpm.create_primary(TPM_RH_ENDORSEMENT, KeyTemplate::Ak)
            .unwrap()
    });
    report("TPM2_CreatePrimary(AK, ECC P-256)", s);
    let mut s = Vec::new();
    let ek = time(&mut s, || {
        tpm.create_primary(TPM_RH_ENDORSEMENT, KeyTemplate::EkRsa2048)
            .unwrap()
    });
    report("TPM2_CreatePrimary(EK, RSA-2048)", s);
    let ak_public = AkPublic::parse(&ak.public).unwrap();
    let ek_public = EkPublic::parse(&ek.public).unwrap();

    // TPM2_Quote round trips; the first is a warm-up (swtpm answers it with TPM_RC_RETRY once,
    // which the client resends).
    let nonce: [u8; 32] = Sha256::digest(b"bench nonce").into();
    tpm.quote(ak.handle, &nonce, &PCRS).unwrap();
    let mut s = Vec::new();
    let mut quote = None;
    for _ in 0..iterations {
        quote = Some(time(&mut s, || {
            tpm.quote(ak.handle, &nonce, &PCRS).unwrap()
        }));
    }
    report("TPM2_Quote round trip on swtpm (5 PCRs)", s);
    let quote = quote.unwrap();

    // The verifier's work per quote.
    let mut s = Vec::new();
    for _ in 0..iterations * 4 {
        time(&mut s, || {
            verify_quote(&ak_public, &quote.attest, &quote.signature, &nonce, &pcrs).unwrap()
        });
    }
    report("verify_quote (AK parsed once)", s);
    let mut s = Vec::new();
    for _ in 0..iterations * 4 {
        time(&mut s, || {
            let ak = AkPublic::parse(&ak.public).unwrap();
            verify_quote(&ak, &quote.attest, &quote.signature, &nonce, &pcrs).unwrap()
        });
    }
    report("AkPublic::parse + verify_quote", s);

    // Registration: EK certificate, MakeCredential, ActivateCredential.
    let mut cert = vec![0u8; 4096];
    let mut s = Vec::new();
    let n = time(&mut s, || {
        tpm.nv_read_all(NV_EK_CERT_RSA2048, &mut cert).unwrap()
    });
    report("EK certificate from NV (NV_ReadPublic + 2 NV_Read)", s);
    cert.truncate(n);
    let issuer = std::fs::read(tuk_vtpm::ca_issuer_cert(&ca)).unwrap();
    let ca_root = std::fs::read(tuk_vtpm::ca_root_cert(&ca)).unwrap();
    let mut s = Vec::new();
    for _ in 0..iterations / 5 + 1 {
        time(&mut s, || {
            verify_ek_certificate(&cert, &[&issuer], &ca_root, &ek_public, SystemTime::now())
                .unwrap()
        });
    }
    report("verify_ek_certificate (RSA-3072 CA, 2 signatures)", s);
    let secret = [0x42u8; 32];
    let mut s = Vec::new();
    let mut cred = None;
    for _ in 0..iterations / 5 + 1 {
        cred = Some(time(&mut s, || {
            make_credential(&ek_public, &ak.name, &secret).unwrap()
        }));
    }
    report("make_credential (RSA-2048 EK)", s);
    let cred = cred.unwrap();
    let mut s = Vec::new();
    for _ in 0..iterations / 10 + 1 {
        let got = time(&mut s, || {
            tpm.activate_credential(
                ak.handle,
                ek.handle,
                EkAuthorization::PolicySecretEndorsement,
                &cred.credential_blob,
                &cred.encrypted_secret,
            )
            .unwrap()
        });
        assert_eq!(&got[..], &secret[..]);
    }
    report(
        "GetRandom+StartAuthSession+PolicySecret+ActivateCredential",
        s,
    );
    let ek384 = tpm
        .create_primary(TPM_RH_ENDORSEMENT, KeyTemplate::EkEccP384)
        .unwrap();
    let ek384_public = EkPublic::parse(&ek384.public).unwrap();
    let mut s = Vec::new();
    for _ in 0..iterations / 5 + 1 {
        time(&mut s, || {
            make_credential(&ek384_public, &ak.name, &secret).unwrap()
        });
    }
    report("make_credential (ECC P-384 EK)", s);

    drop(tpm);
    drop(swtpm);
    let _ = std::fs::remove_dir_all(&root);
}
