//! Signed components, static measurement and the vTPM, end to end (issue: signed registry,
//! static measurement and the vTPM):
//! - components are built and compiled with tuk's tools, signed with real ed25519 keys,
//!   published to a real OCI registry (Debian's `docker-registry` on loopback) and pulled;
//! - the kernel boots with a trust policy and refuses, each with its reason, a byte flipped
//!   in the .wasm, in the compiled code, in the envelope, a signature by an untrusted key, a
//!   version below the policy minimum, a name the policy does not allow, a truncated bundle;
//!   the same at runtime (`PUT /_tuk/components/<name>`), plus a rollback below what runs and
//!   an oversized body, while the good components keep serving;
//! - the event log replays to the PCR values that `tpm2_pcrread` reads from the instance's
//!   vTPM after a clean shutdown.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tuk_compose::Deployment;
use tuk_e2e::signing::{build, get, put, sign};
use tuk_e2e::{boot_full, pcrs_after_shutdown, Conn, IO_TIMEOUT};
use tuk_measure::policy::TrustPolicy;
use tuk_measure::sign::SigningKey;

/// Flips one byte inside section `section` (0 wasm, 1 code, 2 envelope) of a bundle.
fn flip(bundle: &[u8], section: usize) -> Vec<u8> {
    let mut out = bundle.to_vec();
    let mut at = 8;
    for i in 0..=section {
        let len = u64::from_le_bytes(out[at..at + 8].try_into().unwrap()) as usize;
        if i == section {
            out[at + 8 + len / 2] ^= 0x5a;
        }
        at += 8 + len;
    }
    out
}

#[test]
fn signed_components_measured_into_the_vtpm() {
    let built = build(&["hello", "kv", "notes"]);
    let publisher = SigningKey::generate().unwrap();
    let stranger = SigningKey::generate().unwrap();
    let mut min_versions = BTreeMap::new();
    min_versions.insert("kv".to_string(), "2.0.0".to_string());
    let policy = TrustPolicy {
        keys: vec![publisher.trusted_key()],
        allowed_names: Some(vec![
            "hello".into(),
            "kv".into(),
            "notes".into(),
            "bad-wasm".into(),
            "bad-code".into(),
            "bad-env".into(),
            "stranger".into(),
            "old".into(),
            "cut".into(),
        ]),
        min_versions,
    };
    policy.validate().unwrap();

    let hello = sign(&publisher, "hello", "1.0.0", &built["hello"]);
    let kv = sign(&publisher, "kv", "2.0.0", &built["kv"]);
    // Through a real registry: publish, then deploy what was pulled.
    let registry = tuk_registry::local::LocalRegistry::start().expect("docker-registry starts");
    let reference = format!("{}/tuk/hello:1.0.0", registry.addr());
    let parts = tuk_measure::bundle::Bundle::parse(&hello).unwrap();
    tuk_registry::publish(&reference, parts.wasm, parts.code, parts.envelope).unwrap();
    let pulled = tuk_registry::pull(&reference).unwrap();
    assert_eq!(pulled, hello, "the registry round trip changes nothing");

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-signed-pack");
    std::fs::create_dir_all(&dir).unwrap();
    let mut deployments = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| {
        let path = dir.join(format!("{name}.bundle"));
        std::fs::write(&path, bytes).unwrap();
        deployments.push(Deployment {
            name: name.into(),
            source: path,
            meta: vec![],
        });
    };
    add("hello", pulled);
    add("kv", kv.clone());
    // Each of these must be refused at boot, alone.
    add(
        "bad-wasm",
        flip(&sign(&publisher, "bad-wasm", "1.0.0", &built["notes"]), 0),
    );
    add(
        "bad-code",
        flip(&sign(&publisher, "bad-code", "1.0.0", &built["notes"]), 1),
    );
    add(
        "bad-env",
        flip(&sign(&publisher, "bad-env", "1.0.0", &built["notes"]), 2),
    );
    add(
        "stranger",
        sign(&stranger, "stranger", "1.0.0", &built["notes"]),
    );
    add(
        "intruder",
        sign(&publisher, "intruder", "1.0.0", &built["notes"]),
    );
    let cut = sign(&publisher, "cut", "1.0.0", &built["notes"]);
    add("cut", cut[..cut.len() / 2].to_vec());
    let (pack, _) = tuk_compose::boot_pack(&deployments, Some(&policy.canonical_json())).unwrap();
    let pack_path = dir.join("boot.pack");
    std::fs::write(&pack_path, pack).unwrap();

    let mut vm = boot_full(
        "signed",
        &[
            ("http.max_body", "4194304"),
            ("http.request_timeout_ms", "20000"),
        ],
        Some(&pack_path),
        96,
    );
    let health = get(&vm, "/_tuk/health").json();
    assert_eq!(health["tpm"], "resumed", "{health}");
    assert_eq!(health["trust"], "signed", "{health}");
    let list = get(&vm, "/_tuk/components").json();
    let names: Vec<&str> = list["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello", "kv"], "only the good bundles run: {list}");
    assert_eq!(get(&vm, "/hello/").status, 200);
    let console = std::fs::read_to_string(vm.console_log_path()).unwrap();
    for (name, reason) in [
        ("bad-wasm", "digest-mismatch"),
        ("bad-code", "digest-mismatch"),
        ("bad-env", ""),
        ("stranger", "no-trusted-signature"),
        ("intruder", "name-not-allowed"),
        ("cut", "truncated"),
    ] {
        let line = console
            .lines()
            .find(|l| l.contains(&format!("component {name} refused")))
            .unwrap_or_else(|| panic!("no refusal for {name} in:\n{console}"));
        assert!(line.contains(reason), "{name}: {line}");
    }

    // Runtime publishing: the same checks, 4xx with a reason, the running set untouched.
    let refusals: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "kv",
            flip(&sign(&publisher, "kv", "2.1.0", &built["kv"]), 0),
            403,
        ),
        (
            "kv",
            flip(&sign(&publisher, "kv", "2.1.0", &built["kv"]), 1),
            403,
        ),
        (
            "kv",
            flip(&sign(&publisher, "kv", "2.1.0", &built["kv"]), 2),
            403,
        ),
        ("kv", sign(&stranger, "kv", "2.1.0", &built["kv"]), 403),
        ("kv", sign(&publisher, "kv", "1.9.0", &built["kv"]), 403), // below the policy minimum
        ("kv", kv.clone(), 409),                                    // not newer than what runs
        (
            "intruder",
            sign(&publisher, "intruder", "1.0.0", &built["kv"]),
            403,
        ),
        ("kv", kv[..kv.len() / 3].to_vec(), 400),
        ("hello", sign(&publisher, "kv", "9.0.0", &built["kv"]), 403), // signed for another name
    ];
    for (name, body, status) in refusals {
        let r = put(&vm, name, &body);
        assert_eq!(r.status, status, "PUT {name}: {}", r.body_text());
        assert!(r.json()["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert_eq!(get(&vm, "/hello/").status, 200, "hello keeps serving");
    }
    let big = vec![0u8; 5 << 20];
    assert_eq!(put(&vm, "kv", &big).status, 413);
    // A good newer version replaces the running one; state in kv survives? (new instance, same
    // kv store): first write something.
    let mut c = Conn::open(vm.addr());
    c.send(b"PUT /kv/kv/k HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nv")
        .unwrap();
    assert_eq!(c.read_response(IO_TIMEOUT).unwrap().status, 201);
    let r = put(&vm, "kv", &sign(&publisher, "kv", "2.1.0", &built["kv"]));
    assert_eq!(r.status, 201, "{}", r.body_text());
    let notes = put(
        &vm,
        "notes",
        &sign(&publisher, "notes", "1.0.0", &built["notes"]),
    );
    assert_eq!(notes.status, 201, "{}", notes.body_text());
    assert_eq!(get(&vm, "/notes/notes").status, 200);
    assert_eq!(get(&vm, "/_tuk/health").status, 200);

    // The event log replays to the vTPM's PCRs, read by tpm2-tools after a clean shutdown.
    let log_bytes = get(&vm, "/_tuk/eventlog").body;
    let records = tuk_measure::eventlog::parse_log(&log_bytes).unwrap();
    let kinds: Vec<(u32, &str)> = records
        .iter()
        .map(|r| (r.pcr, r.content_type.as_str()))
        .collect();
    assert_eq!(
        &kinds[..3],
        &[(4, "tuk.kernel"), (5, "tuk.boot-config"), (8, "tuk.policy")]
    );
    let component_records = records.iter().filter(|r| r.pcr == 9).count();
    assert_eq!(
        component_records, 4,
        "hello + kv at boot, kv 2.1.0 + notes at runtime"
    );
    let replay = tuk_measure::eventlog::replay(&records).unwrap();
    let exit = vm.shutdown(Duration::from_secs(10)).unwrap();
    assert!(exit.is_clean(), "{exit}");
    let pcrs = pcrs_after_shutdown(&vm, &[4, 5, 8, 9]);
    for pcr in [4, 5, 8, 9] {
        assert_eq!(
            pcrs[&pcr], replay[&pcr],
            "PCR {pcr}: vTPM vs replayed event log"
        );
    }
    assert_eq!(
        replay[&8],
        tuk_measure::eventlog::extend(&[0; 32], &policy.digest())
    );
}
