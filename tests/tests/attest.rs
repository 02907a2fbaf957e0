//! Remote attestation, end to end (issue 6): real instances under QEMU TCG with their own
//! swtpm, signed components, and the verifier's code (`tuk_attest`) over the kernel's
//! `/_tuk/attestation` endpoints; the kernel's quote also verified by `tpm2_checkquote`.
//!
//! One instance goes through a life: affirming; its evidence replayed for another nonce,
//! forged (a PCR 9 record's content) and reordered, each refused; a quote verified with
//! another instance's AK refused, and that AK relayed through its EK refused at credential
//! activation; a component's code tampered and re-instantiated (warning); the kernel's
//! read-only data tampered (contraindicated).

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tuk_attest::appraise::{appraise, qualifying_data, verify_identity, References, Refusal};
use tuk_attest::attester::{attest, Activation, AttestError, Attester, HttpAttester};
use tuk_attest::credential::Credential;
use tuk_attest::evidence::{Evidence, Identity};
use tuk_attest::{QuoteError, Status};
use tuk_e2e::attestation::{references, summary};
use tuk_e2e::signing::{get, signed_pack};
use tuk_e2e::{boot_full, poll, tamper, Instance};
use tuk_measure::eventlog::EventLogError;
use tuk_measure::policy::TrustPolicy;

/// The in-guest monitor's interval in these tests.
const INTERVAL_MS: u64 = 100;
/// How long detection may take: the interval, a round, and a loaded 2-core machine.
const DETECT: Duration = Duration::from_millis(1600);
const TIMEOUT: Duration = Duration::from_secs(30);

/// Boots an instance serving signed `names` under a fresh key; returns it and the policy.
fn signed_instance(tag: &str, names: &[&str]) -> (Instance, TrustPolicy) {
    let dir = std::env::temp_dir()
        .join("tuk-e2e")
        .join(format!("attest-{tag}-{}", std::process::id()));
    let signed = signed_pack(&dir, names);
    let interval = INTERVAL_MS.to_string();
    let vm = boot_full(
        &format!("attest-{tag}"),
        &[("integrity.interval_ms", interval.as_str())],
        Some(&signed.pack),
        96,
    );
    (vm, signed.policy)
}

fn attester(vm: &Instance) -> HttpAttester {
    // Attestation is on the admin listener.
    HttpAttester::new(&vm.admin_url(), TIMEOUT)
}

/// Polls `/_tuk/status` until `done` holds (within [`DETECT`]).
fn wait_status(vm: &Instance, what: &str, done: impl Fn(&Value) -> bool) {
    let (_, took) = poll::until(what, DETECT, Duration::from_millis(10), || {
        let s = get(vm, "/_tuk/status").json();
        if done(&s) {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    eprintln!("{what} after {took:?}");
}

fn instance<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap()
}

/// Presents one instance's EK with another's AK: activation goes to the first, quotes come
/// from the second (a relay of a foreign AK).
struct Relay<'a> {
    ek_of: &'a mut HttpAttester,
    ak_of: &'a mut HttpAttester,
    activate_on_ak_side: bool,
}

impl Attester for Relay<'_> {
    fn identity(&mut self) -> Result<Identity, AttestError> {
        let mut id = self.ek_of.identity()?;
        let other = self.ak_of.identity()?;
        id.ak_public = other.ak_public;
        id.ak_name = other.ak_name;
        Ok(id)
    }
    fn activate(&mut self, c: &Credential) -> Result<Activation, AttestError> {
        if self.activate_on_ak_side {
            self.ak_of.activate(c)
        } else {
            self.ek_of.activate(c)
        }
    }
    fn evidence(&mut self, nonce: &[u8]) -> Result<Evidence, AttestError> {
        self.ak_of.evidence(nonce)
    }
}

#[test]
fn attestation_of_an_instance_through_its_life() {
    // Two instances boot at once: `a` lives through the scenario, `b` is the other TPM.
    let other = thread::spawn(|| signed_instance("b", &["hello"]));
    let (a, policy) = signed_instance("a", &["hello", "kv"]);
    let (b, _) = other.join().unwrap();
    let refs = references(&policy);

    // 1. Healthy, with reference values: affirming, every submodule.
    let t = Instant::now();
    let result = attest(&mut attester(&a), &refs).unwrap();
    eprintln!("attested in {:?}: {}", t.elapsed(), summary(&result));
    assert_eq!(result.status(), Status::Affirming, "{}", summary(&result));
    assert_eq!(
        result.submods.keys().collect::<Vec<_>>(),
        ["component:hello", "component:kv", "kernel"]
    );
    let ear = result.to_ear();
    assert_eq!(ear["ear_status"], "affirming");
    assert_eq!(
        ear["submods"]["kernel"]["ear_trustworthiness_vector"],
        serde_json::json!({"configuration": 2, "executables": 2, "hardware": 2, "instance-identity": 2})
    );
    assert_eq!(
        ear["submods"]["component:hello"]["ear_verifier_claims"]["version"],
        "1.0.0"
    );
    // Without reference values nothing can be affirmed: warning.
    let bare = References {
        kernel_sha256: None,
        policy: None,
        ..refs.clone()
    };
    let result = attest(&mut attester(&a), &bare).unwrap();
    assert_eq!(result.status(), Status::Warning, "{}", summary(&result));

    // The registered identity, as a verifier service would keep it.
    let identity = attester(&a).identity().unwrap();
    let verified = verify_identity(&identity, &refs.ca, std::time::SystemTime::now()).unwrap();
    let ak = &verified.ak;

    // 2. Replay: evidence for one nonce does not answer another.
    let n1 = tuk_attest::attester::random_bytes(16);
    let n2 = tuk_attest::attester::random_bytes(16);
    let evidence = attester(&a).evidence(&n1).unwrap();
    appraise(ak, &evidence, &n1, &refs).expect("the evidence answers its own nonce");
    assert!(matches!(
        appraise(ak, &evidence, &n2, &refs),
        Err(Refusal::Nonce { .. })
    ));
    let mut restated = evidence.clone();
    restated.nonce = n2.clone();
    assert!(matches!(
        appraise(ak, &restated, &n2, &refs),
        Err(Refusal::Quote(QuoteError::QualifyingData { .. }))
    ));

    // Interop: the kernel's quote verifies with tpm2_checkquote (tpm2-tools), given the AK as
    // PEM, the PCR values replayed from the instance's own event log and the qualifying data
    // for this nonce; the same quote for another nonce, or another PCR value, is refused.
    let dir = a.state_dir().join("checkquote");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ak.pem"), ak.to_pem()).unwrap();
    std::fs::write(dir.join("quote.msg"), &evidence.attest).unwrap();
    std::fs::write(dir.join("quote.sig"), &evidence.signature).unwrap();
    let replayed = tuk_measure::eventlog::replay(&evidence.eventlog).unwrap();
    let values: Vec<u8> = evidence
        .pcrs
        .iter()
        .flat_map(|pcr| replayed.get(pcr).copied().unwrap_or([0; 32]))
        .collect();
    let pcr_list = format!(
        "sha256:{}",
        evidence
            .pcrs
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let checkquote = |values: &[u8], nonce: &[u8]| {
        std::fs::write(dir.join("pcrs.bin"), values).unwrap();
        let qualifying = qualifying_data(nonce, &evidence.report);
        let hex: String = qualifying.iter().map(|b| format!("{b:02x}")).collect();
        std::process::Command::new("tpm2_checkquote")
            .current_dir(&dir)
            .args([
                "-u",
                "ak.pem",
                "-m",
                "quote.msg",
                "-s",
                "quote.sig",
                "-f",
                "pcrs.bin",
            ])
            .args(["-l", &pcr_list, "-g", "sha256", "-q", &hex])
            .output()
            .expect("run tpm2_checkquote (apt-get install tpm2-tools)")
    };
    let out = checkquote(&values, &n1);
    assert!(
        out.status.success(),
        "tpm2_checkquote refused the kernel's quote: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!checkquote(&values, &n2).status.success(), "another nonce");
    let mut other_values = values.clone();
    other_values[0] ^= 1;
    assert!(
        !checkquote(&other_values, &n1).status.success(),
        "another PCR value"
    );

    // 3. A forged PCR 9 record: its content changed (digest kept), then its digest too.
    let nines: Vec<usize> = (0..evidence.eventlog.len())
        .filter(|&i| evidence.eventlog[i].pcr == 9)
        .collect();
    assert_eq!(nines.len(), 2, "hello and kv are measured");
    let mut forged = evidence.clone();
    forged.eventlog[nines[0]].content["version"] = "9.9.9".into();
    let refusal = appraise(ak, &forged, &n1, &refs).unwrap_err();
    assert!(
        matches!(refusal, Refusal::Record { pcr: 9, .. }),
        "{refusal}"
    );
    let canonical = tuk_attest::appraise::canonical_json(&forged.eventlog[nines[0]].content);
    forged.eventlog[nines[0]].digests[0].digest =
        tuk_measure::hex(&tuk_measure::sha256(&canonical));
    assert!(matches!(
        appraise(ak, &forged, &n1, &refs),
        Err(Refusal::Quote(QuoteError::PcrDigest { .. }))
    ));

    // 4. A reordered log: the two component records swapped, renumbered or not.
    let mut reordered = evidence.clone();
    reordered.eventlog.swap(nines[0], nines[1]);
    assert!(matches!(
        appraise(ak, &reordered, &n1, &refs),
        Err(Refusal::EventLog(EventLogError::BadRecnum { .. }))
    ));
    reordered.eventlog[nines[0]].recnum = nines[0] as u64;
    reordered.eventlog[nines[1]].recnum = nines[1] as u64;
    assert!(matches!(
        appraise(ak, &reordered, &n1, &refs),
        Err(Refusal::Quote(QuoteError::PcrDigest { .. }))
    ));

    // 5. Another instance's AK: b's quote does not verify with a's AK ...
    let b_evidence = attester(&b).evidence(&n1).unwrap();
    assert_eq!(
        appraise(ak, &b_evidence, &n1, &refs).unwrap_err(),
        Refusal::Quote(QuoteError::BadSignature)
    );
    // ... and b's AK presented with a's EK fails credential activation, on either TPM.
    for activate_on_ak_side in [false, true] {
        let (mut ea, mut eb) = (attester(&a), attester(&b));
        let mut relay = Relay {
            ek_of: &mut ea,
            ak_of: &mut eb,
            activate_on_ak_side,
        };
        let r = attest(&mut relay, &refs).unwrap();
        assert_eq!(r.status(), Status::Contraindicated);
        let refusal = r.refusal.clone().unwrap();
        assert!(
            refusal.contains("credential activation was refused"),
            "{refusal}"
        );
        eprintln!("relayed AK (activation on the AK's side: {activate_on_ak_side}): {refusal}");
    }
    // A refused activation leaves both TPMs working: a attests as before; b too, but its
    // components are signed by another key, under another policy than a's references say.
    let r = attest(&mut attester(&a), &refs).unwrap();
    assert_eq!(r.status(), Status::Affirming, "{}", summary(&r));
    let r = attest(&mut attester(&b), &refs).unwrap();
    assert_eq!(r.refusal, None);
    assert_eq!(r.status(), Status::Contraindicated);
    assert!(
        r.submods["kernel"].reasons[0].contains("the reference policy is sha256:"),
        "{}",
        summary(&r)
    );
    assert!(r.submods["component:hello"].reasons[0].contains("does not trust"));

    // 6. A component's code tampered: detected, re-instantiated, recorded: warning.
    tamper(&a, "component:hello:code", 4096);
    wait_status(&a, "hello re-instantiated", |s| {
        instance(s, "hello")["reinstantiations"] == 1
    });
    let result = attest(&mut attester(&a), &refs).unwrap();
    assert_eq!(result.status(), Status::Warning, "{}", summary(&result));
    let hello = &result.submods["component:hello"];
    assert_eq!(hello.status(), Status::Warning);
    assert!(
        hello
            .reasons
            .iter()
            .any(|r| r.contains("code check failed")),
        "{:?}",
        hello.reasons
    );
    assert_eq!(result.submods["component:kv"].status(), Status::Affirming);
    assert_eq!(result.submods["kernel"].status(), Status::Affirming);

    // 7. The kernel's read-only data tampered (a message string: changing it cannot crash the
    // kernel): contraindicated, for good.
    let offset = tuk_e2e::kernel_rodata_offset_of(b"no component serves this path");
    tamper(&a, "kernel:rodata", offset);
    wait_status(&a, "kernel violation", |s| s["kernel"]["violations"] == 1);
    let result = attest(&mut attester(&a), &refs).unwrap();
    assert_eq!(result.status(), Status::Contraindicated);
    let kernel = &result.submods["kernel"];
    assert_eq!(kernel.status(), Status::Contraindicated);
    assert!(
        kernel
            .reasons
            .iter()
            .any(|r| r.contains("kernel-rodata check failed")),
        "{:?}",
        kernel.reasons
    );
    eprintln!("after the kernel tamper: {}", summary(&result));
}
