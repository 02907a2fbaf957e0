//! Configuration that weakens measurement is never affirmed (issue 12, point 2), end to end:
//! the attacker boots a real instance (QEMU TCG, its own swtpm, signed components, the signed
//! kernel) with run-time measurement configured so that no round ever runs — the review's
//! `--integrity-interval 1000000000000` — and asks the real appraisal (`tuk_attest::attest`,
//! the default boot reference) to affirm it. It must not, and the result must name the field,
//! its value and the bound; an honest boot of the same kernel in the same test stays affirming.
//!
//! PCR 9 says what runs (issue 12, point 6; the review's finding 11): a publisher whose signed
//! new version is measured but fails to instantiate (422) must not make the verifier report
//! that version as running, nor count it as the repair of a quarantined component.

use std::thread;
use std::time::Duration;

use tuk_attest::attester::{attest, HttpAttester};
use tuk_attest::result::{value, Claim};
use tuk_attest::Status;
use tuk_e2e::attestation::{references, summary};
use tuk_e2e::signing::{get, put, sign_with_limits, signed_pack};
use tuk_e2e::{boot_full, tamper, Instance};
use tuk_measure::policy::TrustPolicy;

const TIMEOUT: Duration = Duration::from_secs(30);
/// The review's interval: 31 years, so no round ever runs.
const NEVER_MS: &str = "1000000000000";

/// Boots an instance serving a signed `hello` with `extra` kernel arguments.
fn signed_instance(tag: &str, extra: &[(&str, &str)]) -> (Instance, TrustPolicy) {
    let dir = std::env::temp_dir()
        .join("tuk-e2e")
        .join(format!("appraisal-{tag}-{}", std::process::id()));
    let signed = signed_pack(&dir, &["hello"]);
    let vm = boot_full(&format!("appraisal-{tag}"), extra, Some(&signed.pack), 96);
    (vm, signed.policy)
}

#[test]
fn weakened_run_time_measurement_is_not_affirmed() {
    let attack = thread::spawn(|| signed_instance("never", &[("integrity.interval_ms", NEVER_MS)]));
    // `tuk run --kernel-arg integrity.interval_ms=0`: run-time measurement off.
    let off = thread::spawn(|| signed_instance("off", &[("integrity.interval_ms", "0")]));
    // The honest boot: the kernel's default interval and policy.
    let (honest, honest_policy) = signed_instance("honest", &[]);
    let (never, never_policy) = attack.join().unwrap();
    let (off, off_policy) = off.join().unwrap();
    // The attacked instance booted before this (its uptime is at least this old).
    let booted = std::time::Instant::now();
    let refs = references;

    let result = attest(
        &mut HttpAttester::new(&honest.admin_url(), TIMEOUT),
        &refs(&honest_policy),
    )
    .unwrap();
    assert_eq!(result.status(), Status::Affirming, "{}", summary(&result));
    let kernel = &result.submods["kernel"];
    assert_eq!(kernel.vector[&Claim::Configuration], value::APPROVED_CONFIG);
    assert_eq!(kernel.facts["boot_config"]["memory_mib"], 96);

    let result = attest(
        &mut HttpAttester::new(&never.admin_url(), TIMEOUT),
        &refs(&never_policy),
    )
    .unwrap();
    eprintln!("{}", summary(&result));
    assert_eq!(result.refusal, None, "the evidence itself is genuine");
    assert_eq!(
        result.status(),
        Status::Contraindicated,
        "{}",
        summary(&result)
    );
    let kernel = &result.submods["kernel"];
    assert_eq!(
        kernel.vector[&Claim::Configuration],
        value::UNSUPPORTABLE_CONFIG
    );
    let named = kernel.reasons.iter().any(|r| {
        r.contains("PCR 5")
            && r.contains(&format!("integrity.interval_ms = {NEVER_MS}"))
            && r.contains("10..=10000")
    });
    assert!(
        named,
        "no reason names the field, value and bound: {:?}",
        kernel.reasons
    );
    // The signed EAR carries the same reason.
    let ear = result.to_ear();
    assert_eq!(ear["ear_status"], "contraindicated");
    assert!(ear["submods"]["kernel"]["ear_verifier_claims"]["reasons"]
        .to_string()
        .contains(NEVER_MS));

    // Measurement off: contraindicated, the field named, and every subject not re-measured.
    let result = attest(
        &mut HttpAttester::new(&off.admin_url(), TIMEOUT),
        &refs(&off_policy),
    )
    .unwrap();
    eprintln!("{}", summary(&result));
    assert_eq!(result.refusal, None);
    assert_eq!(
        result.status(),
        Status::Contraindicated,
        "{}",
        summary(&result)
    );
    let kernel = &result.submods["kernel"];
    assert!(
        kernel
            .reasons
            .iter()
            .any(|r| r.contains("integrity.interval_ms = 0 turns run-time measurement off")),
        "{:?}",
        kernel.reasons
    );
    for (name, s) in &result.submods {
        assert!(
            s.reasons
                .iter()
                .any(|r| r.contains("run-time measurement is off")),
            "{name}: {:?}",
            s.reasons
        );
    }

    // Once a round was due (the interval capped at the reference's 10 s, 25 % jitter, 2 s
    // slack) and none ran, the liveness rule says so too, independently of the configuration
    // finding.
    let due = Duration::from_millis(15_000);
    if let Some(rest) = due.checked_sub(booted.elapsed()) {
        thread::sleep(rest);
    }
    let result = attest(
        &mut HttpAttester::new(&never.admin_url(), TIMEOUT),
        &refs(&never_policy),
    )
    .unwrap();
    for (name, s) in &result.submods {
        assert!(
            s.reasons
                .iter()
                .any(|r| r.contains("no completed run-time measurement round")),
            "{name}: {:?}",
            s.reasons
        );
        assert_ne!(s.status(), Status::Affirming, "{name}");
    }
}

#[test]
fn a_failed_publish_is_neither_what_runs_nor_a_repair() {
    let dir = std::env::temp_dir()
        .join("tuk-e2e")
        .join(format!("appraisal-failed-{}", std::process::id()));
    let signed = signed_pack(&dir, &["hello"]);
    // Quarantine: a violated component stays violated until something repairs it.
    let vm = boot_full(
        "appraisal-failed",
        &[
            ("integrity.interval_ms", "100"),
            ("integrity.policy", "quarantine"),
        ],
        Some(&signed.pack),
        96,
    );
    let refs = references(&signed.policy);
    let attest_vm = || {
        let r = attest(&mut HttpAttester::new(&vm.admin_url(), TIMEOUT), &refs).unwrap();
        eprintln!("{}", summary(&r));
        r
    };
    let result = attest_vm();
    assert_eq!(result.status(), Status::Affirming, "{}", summary(&result));

    // A signed 1.1.0 whose signed memory limit (64 KiB) is too small to instantiate: measured,
    // then refused.
    let small = sign_with_limits(
        &signed.key,
        "hello",
        "1.1.0",
        &signed.built["hello"],
        64 << 10,
    );
    let r = put(&vm, "hello", &small);
    assert_eq!(r.status, 422, "{}", r.body_text());
    let result = attest_vm();
    assert_eq!(result.status(), Status::Affirming, "{}", summary(&result));
    let hello = &result.submods["component:hello"];
    assert_eq!(
        hello.facts["version"], "1.0.0",
        "what runs is the old version"
    );
    assert_eq!(hello.facts["deployments"], 1);
    assert_eq!(hello.facts["failed_deployments"][0]["version"], "1.1.0");

    // The attack: tamper the running code (quarantined: contraindicated), then publish the
    // failing version again, hoping the verifier counts the new measurement as a repair.
    tamper(&vm, "component:hello:code", 4096);
    let start = std::time::Instant::now();
    while get(&vm, "/_tuk/status").json()["instances"][0]["state"] == "trusted" {
        assert!(start.elapsed() < Duration::from_secs(5), "no detection");
        thread::sleep(Duration::from_millis(20));
    }
    let result = attest_vm();
    assert_eq!(result.status(), Status::Contraindicated);
    let r = put(&vm, "hello", &small);
    assert_eq!(r.status, 422, "{}", r.body_text());
    let result = attest_vm();
    assert_eq!(
        result.status(),
        Status::Contraindicated,
        "{}",
        summary(&result)
    );
    let hello = &result.submods["component:hello"];
    assert_eq!(hello.facts["version"], "1.0.0");
    assert!(
        hello.reasons.iter().any(|r| r.contains("not repaired")),
        "{:?}",
        hello.reasons
    );
    assert_eq!(
        hello.facts["failed_deployments"].as_array().unwrap().len(),
        2
    );
}
