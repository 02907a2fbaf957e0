//! `tuk attest URL` as a user runs it against a real instance (QEMU TCG, swtpm, a signed
//! component): the summary and exit status 0 when affirming, the EAR claims set with --json,
//! 1 when something is only a warning (no reference kernel) or the boot configuration is
//! outside a `--boot-reference`, 2 when the instance cannot be reached or the reference file
//! is not one.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use tuk_e2e::signing::signed_pack;
use tuk_e2e::{boot_full, free_listen, kernel_image, verifier, vtpm_ca_dir};

const TUK: &str = env!("CARGO_BIN_EXE_tuk");

fn tuk_attest(url: &str, extra: &[&std::ffi::OsStr]) -> Output {
    let out = Command::new(TUK)
        .args(["attest", url, "--ca"])
        .arg(vtpm_ca_dir())
        .args(extra)
        .output()
        .expect("run tuk attest");
    eprintln!(
        "tuk attest {url} → {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn tuk_attest_exit_codes_and_output() {
    let dir = std::env::temp_dir()
        .join("tuk-e2e")
        .join(format!("attest-cli-{}", std::process::id()));
    let signed = signed_pack(&dir, &["hello"]);
    let key = &signed.key;
    let key_pub = dir.join("key.pub");
    std::fs::write(&key_pub, key.trusted_key().to_json()).unwrap();
    let vm = boot_full("attest-cli", &[], Some(&signed.pack), 96);
    // Attestation is on the admin listener (docs/contracts.md).
    let url = vm.admin_url();
    let kernel = kernel_image();
    let os = |p: &Path| p.as_os_str().to_owned();
    let refs = [
        std::ffi::OsString::from("--kernel"),
        os(&kernel),
        "--trust".into(),
        os(&key_pub),
    ];
    let refs: Vec<&std::ffi::OsStr> = refs.iter().map(|s| s.as_os_str()).collect();

    // Affirming: exit 0, the summary names every submodule.
    let out = tuk_attest(&url, &refs);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("tuk attest {url}: AFFIRMING")),
        "{text}"
    );
    for needle in [
        "identity   EK certificate",
        "activated",
        "quote",
        "boot       PCR 5: microvm, 96 MiB, cpu max; run-time measurement every 1000 ms, policy reinstantiate",
        "kernel",
        "component:hello",
    ] {
        assert!(text.contains(needle), "no {needle:?} in {text}");
    }

    // --json: one line, the EAR claims set.
    let mut with_json = refs.clone();
    with_json.push("--json".as_ref());
    let out = tuk_attest(&url, &with_json);
    assert_eq!(out.status.code(), Some(0));
    let ear: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(ear["ear_status"], "affirming");
    assert_eq!(ear["tuk_instance"], url.as_str());
    assert_eq!(ear["submods"]["component:hello"]["ear_status"], "affirming");
    assert_eq!(ear["eat_nonce"].as_str().map(str::len), Some(22));

    // No reference kernel: the kernel is only a warning, and so is the result: exit 1.
    let out = tuk_attest(&url, &refs[2..]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(": WARNING"), "{text}");
    assert!(
        text.contains("no reference kernel image (--kernel)"),
        "{text}"
    );

    // A boot reference that this boot's configuration is outside of (96 MiB of guest RAM):
    // contraindicated, exit 1, the summary names the field, its value and the bound.
    let boot_ref = dir.join("boot-reference.json");
    std::fs::write(&boot_ref, r#"{"memory_mib": {"min": 128, "max": 4096}}"#).unwrap();
    let mut with_ref = refs.clone();
    with_ref.extend(["--boot-reference".as_ref(), boot_ref.as_os_str()]);
    let out = tuk_attest(&url, &with_ref);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(": CONTRAINDICATED"), "{text}");
    assert!(
        text.contains("memory_mib = 96 is outside the reference's bounds 128..=4096 MiB"),
        "{text}"
    );
    // A reference file with a misspelt key is a usage error (exit 2), not a silent default.
    std::fs::write(&boot_ref, r#"{"interval": {"min": 10, "max": 100}}"#).unwrap();
    let out = tuk_attest(&url, &with_ref);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("is not a boot-configuration reference") && err.contains("interval"),
        "{err}"
    );

    // Nothing listens there: exit 2, said on stderr.
    let nowhere = format!("http://{}", free_listen());
    let out = tuk_attest(&nowhere, &refs);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cannot reach"), "{err}");
}

/// `tuk verifier serve` takes the same `--boot-reference`, and refuses a file that is not one
/// before it serves anything (the verifier never falls back to the default silently).
#[test]
fn verifier_serve_refuses_a_bad_boot_reference() {
    let dir = std::env::temp_dir()
        .join("tuk-e2e")
        .join(format!("verifier-boot-ref-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let boot_ref = dir.join("boot-reference.json");
    std::fs::write(&boot_ref, r#"{"interval_ms": {"min": 100, "max": 10}}"#).unwrap();
    let out = verifier::serve_command(TUK, &dir.join("state"), 1000)
        .arg("--boot-reference")
        .arg(&boot_ref)
        .output()
        .expect("run tuk verifier serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is not a boot-configuration reference: interval_ms: min 100 is above max 10"),
        "{err}"
    );
}
