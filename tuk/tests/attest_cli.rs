//! `tuk attest URL` as a user runs it against a real instance (QEMU TCG, swtpm, a signed
//! component): the summary and exit status 0 when affirming, the EAR claims set with --json,
//! 1 when something is only a warning (no reference kernel), 2 when the instance cannot be
//! reached.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use tuk_e2e::signing::signed_pack;
use tuk_e2e::{boot_full, free_listen, kernel_image, vtpm_ca_dir};

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
    let url = vm.url();
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

    // Nothing listens there: exit 2, said on stderr.
    let nowhere = format!("http://{}", free_listen());
    let out = tuk_attest(&nowhere, &refs);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cannot reach"), "{err}");
}
