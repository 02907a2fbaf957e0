//! Run-time integrity, end to end (issue: dynamic integrity measurement): signed components
//! run under the in-kernel monitor while an attacker with hypervisor-level access (`tuk
//! tamper`, writing guest RAM through QEMU's shared memory file) changes their code, their
//! immutable data, the kernel's read-only data and its page tables (a page made writable and
//! executable). Each change must be:
//! - detected within the interval plus [`SLACK`];
//! - recorded once in PCR 10 with a record naming the subject and the check (the event log
//!   replays to what `tpm2_pcrread` reads after shutdown);
//! - answered by the policy: `reinstantiate` serves again from the verified bytes (same code
//!   digest as signed), `quarantine` answers 503 with the reason until a newer version is
//!   published, `halt` stops the VM with status 65.
//!
//! Meanwhile traffic to the untouched components never fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tuk_e2e::attestation::references;
use tuk_e2e::signing::{build, get, put, sign, signed_pack};
use tuk_e2e::{boot_full, pcrs_after_shutdown, poll, tamper, Instance};
use tuk_measure::sign::SigningKey;

/// The monitor's interval in these tests.
const INTERVAL: Duration = Duration::from_millis(100);
/// Allowed on top of the interval for detection: a round itself (a few ms), the status poll,
/// and the scheduling noise of a loaded 2-core CI machine running QEMU TCG.
const SLACK: Duration = Duration::from_millis(1500);

/// `GET` on the admin listener (status and event log are served only there).
fn admin_get(vm: &Instance, path: &str) -> tuk_e2e::Response {
    tuk_e2e::Conn::open(tuk_e2e::admin_addr(vm)).get(path)
}

fn status(vm: &Instance) -> Value {
    admin_get(vm, "/_tuk/status").json()
}

fn instance<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no instance {name} in {status}"))
}

/// Polls the status until `done` holds; returns it and the time taken. Fails after
/// INTERVAL + SLACK.
fn wait_for(vm: &Instance, what: &str, done: impl Fn(&Value) -> bool) -> (Value, Duration) {
    poll::until(what, INTERVAL + SLACK, Duration::from_millis(10), || {
        let s = status(vm);
        if done(&s) {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    })
}

/// PCR 10 records in the event log.
fn integrity_records(vm: &Instance) -> Vec<Value> {
    let log = admin_get(vm, "/_tuk/eventlog").json();
    log.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["pcr"] == 10)
        .cloned()
        .collect()
}

/// Boots an instance (`tag` names it) serving signed `names` under `policy_name`.
fn setup(
    tag: &str,
    policy_name: &str,
    names: &[&str],
) -> (
    Instance,
    SigningKey,
    std::collections::BTreeMap<String, tuk_e2e::signing::Built>,
) {
    let (vm, signed) = setup_signed(tag, policy_name, names);
    (vm, signed.key, signed.built)
}

/// [`setup`], returning the whole signed pack (its policy is the appraisal's reference).
fn setup_signed(
    tag: &str,
    policy_name: &str,
    names: &[&str],
) -> (Instance, tuk_e2e::signing::SignedPack) {
    let dir = std::env::temp_dir()
        .join("tuk-e2e")
        .join(format!("integrity-{tag}-{}", std::process::id()));
    let signed = signed_pack(&dir, names);
    let interval = INTERVAL.as_millis().to_string();
    let vm = boot_full(
        &format!("integrity-{tag}"),
        &[
            ("integrity.interval_ms", interval.as_str()),
            ("integrity.policy", policy_name),
        ],
        Some(&signed.pack),
        96,
    );
    (vm, signed)
}

/// Requests to `paths` in a loop on one keep-alive connection per request, counting failures.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    handle: thread::JoinHandle<Vec<String>>,
}

impl Traffic {
    fn start(vm: &Instance, paths: &'static [&'static str]) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let addr = vm.addr();
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let handle = thread::spawn(move || {
            let mut errors = Vec::new();
            while !s.load(Ordering::Relaxed) {
                for path in paths {
                    let r = tuk_e2e::Conn::open(addr).try_get(path);
                    match r {
                        Ok(r) if r.status == 200 => {
                            o.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            f.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!(
                                "{path}: {:?}",
                                other.map(|r| (r.status, r.body_text()))
                            ));
                        }
                    }
                }
            }
            errors
        });
        Traffic {
            stop,
            ok,
            failed,
            handle,
        }
    }

    /// Stops and asserts that nothing failed and that traffic actually flowed.
    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.handle.join().unwrap();
        let ok = self.ok.load(Ordering::Relaxed);
        assert!(
            errors.is_empty(),
            "untouched components missed requests: {errors:?}"
        );
        assert_eq!(self.failed.load(Ordering::Relaxed), 0);
        assert!(
            ok >= 10,
            "only {ok} requests to untouched components went through"
        );
        eprintln!("untouched components served {ok} requests, none failed");
    }
}

#[test]
fn example_components_declare_rodata_and_stack() {
    for (name, b) in build(&["hello", "kv", "notes"]) {
        let inv = tuk_invariants::derive(&b.wasm).unwrap();
        assert!(inv.memory.is_some(), "{name}: {inv:?}");
        assert!(
            !inv.immutable.is_empty(),
            "{name} declares no .rodata: {:?}",
            inv.notes
        );
        assert!(inv.stack.is_some(), "{name}: {:?}", inv.notes);
    }
}

#[test]
fn tampering_is_detected_recorded_and_repaired() {
    let (mut vm, _, built) = setup("reinstantiate", "reinstantiate", &["hello", "kv", "notes"]);
    let s = status(&vm);
    let hello = instance(&s, "hello").clone();
    let signed_code = tuk_measure::hex(&tuk_measure::sha256(&built["hello"].code));
    assert_eq!(
        hello["code"]["sha256"],
        signed_code.as_str(),
        "the loaded image is the signed code"
    );
    assert_eq!(hello["code"]["matches_artifact"], true);
    assert_eq!(hello["state"], "trusted");
    assert!(
        !hello["immutable"].as_array().unwrap().is_empty(),
        "hello declares .rodata: {hello}"
    );
    assert!(
        integrity_records(&vm).is_empty(),
        "a healthy instance extends nothing"
    );
    // Rounds run, and find nothing.
    let (s, _) = wait_for(&vm, "three clean rounds", |s| {
        instance(s, "hello")["checks"].as_u64() >= Some(3)
    });
    assert_eq!(instance(&s, "hello")["violations"], 0);
    assert_eq!(s["kernel"]["violations"], 0);

    let traffic = Traffic::start(&vm, &["/kv/kv", "/notes/notes"]);

    // 1. The code image of hello.
    let written = tamper(&vm, "component:hello:code", 4096);
    let (s, took) = wait_for(&vm, "code tamper detected and repaired", |s| {
        let h = instance(s, "hello");
        h["violations"] == 1 && h["reinstantiations"] == 1
    });
    eprintln!("code tamper ({written}) detected and repaired in {took:?}");
    let h = instance(&s, "hello");
    assert_eq!(h["state"], "trusted");
    assert_eq!(
        h["code"]["sha256"],
        signed_code.as_str(),
        "rebuilt from the verified bytes"
    );
    assert!(
        h["last_violation"]
            .as_str()
            .unwrap()
            .starts_with("code check failed"),
        "{h}"
    );
    assert_eq!(get(&vm, "/hello/").status, 200);

    // 2. Immutable data (.rodata) in hello's linear memory.
    let written = tamper(&vm, "component:hello:data", 16);
    let (_, took) = wait_for(&vm, "data tamper detected and repaired", |s| {
        let h = instance(s, "hello");
        h["violations"] == 2 && h["reinstantiations"] == 2
    });
    eprintln!("data tamper ({written}) detected and repaired in {took:?}");
    assert_eq!(get(&vm, "/hello/").body_text(), "hello from tuk\n");

    // 3. The kernel's read-only data: a byte inside a message string (changing it cannot crash
    // the kernel). The kernel cannot repair itself: it reports and records.
    let offset = tuk_e2e::kernel_rodata_offset_of(b"no component serves this path");
    tamper(&vm, "kernel:rodata", offset);
    let (s, took) = wait_for(&vm, "kernel rodata tamper detected", |s| {
        s["kernel"]["violations"] == 1
    });
    eprintln!("kernel rodata tamper detected in {took:?}");
    assert_eq!(s["kernel"]["state"], "untrusted");
    assert_eq!(
        get(&vm, "/_tuk/health").json()["integrity"]["kernel"],
        "untrusted"
    );
    traffic.finish();

    // Exactly one record per violation and per repair, in order.
    let records = integrity_records(&vm);
    let summary: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            let c = &r["content"];
            (
                c["kind"].as_str().unwrap().to_owned(),
                c["subject"].as_str().unwrap().to_owned(),
                c["check"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expect = |k: &str, s: &str, c: &str| (k.to_owned(), s.to_owned(), c.to_owned());
    assert_eq!(
        summary,
        [
            expect("violation", "component:hello", "code"),
            expect("reinstantiated", "component:hello", ""),
            expect("violation", "component:hello", "immutable-data"),
            expect("reinstantiated", "component:hello", ""),
            expect("violation", "kernel", "kernel-rodata"),
        ],
        "{records:?}"
    );
    assert_ne!(
        records[0]["content"]["expected_sha256"],
        records[0]["content"]["observed_sha256"]
    );

    // Each record's digest is the SHA-256 of its content's canonical JSON, and the log
    // replays to the TPM's PCR 10.
    let records = tuk_measure::eventlog::parse_log(&admin_get(&vm, "/_tuk/eventlog").body).unwrap();
    for r in records.iter().filter(|r| r.pcr == 10) {
        let canonical = serde_json::to_vec(&r.content).unwrap();
        assert_eq!(
            r.sha256().unwrap(),
            tuk_measure::sha256(&canonical),
            "{:?}",
            r.content
        );
    }
    let replayed = tuk_measure::eventlog::replay(&records).expect("the event log replays");
    assert!(vm.shutdown(Duration::from_secs(20)).unwrap().is_clean());
    let pcrs = pcrs_after_shutdown(&vm, &[10]);
    assert_eq!(replayed[&10], pcrs[&10], "PCR 10 = replay of its records");
}

#[test]
fn quarantine_answers_503_until_a_newer_version_is_published() {
    let (vm, key, built) = setup("quarantine", "quarantine", &["hello", "kv"]);
    let traffic = Traffic::start(&vm, &["/hello/"]);
    tamper(&vm, "component:kv:code", 8192);
    let (s, _) = wait_for(&vm, "kv quarantined", |s| {
        instance(s, "kv")["state"] == "untrusted"
    });
    assert_eq!(instance(&s, "kv")["reinstantiations"], 0);
    let r = get(&vm, "/kv/");
    assert_eq!(r.status, 503);
    assert!(r.body_text().contains("untrusted"), "{}", r.body_text());
    // It stays so: later rounds neither repair it nor record it again.
    thread::sleep(INTERVAL * 3);
    assert_eq!(get(&vm, "/kv/").status, 503);
    assert_eq!(integrity_records(&vm).len(), 1);
    traffic.finish();
    // A newer signed version replaces it and is trusted.
    let r = put(&vm, "kv", &sign(&key, "kv", "1.0.1", &built["kv"]));
    assert_eq!(r.status, 201, "{}", r.body_text());
    assert_eq!(get(&vm, "/kv/kv").status, 200);
    assert_eq!(instance(&status(&vm), "kv")["state"], "trusted");
    // The old code image was unmapped and the new one mapped: the executable-page set
    // follows (no false positive from the runtime publish).
    let rounds = status(&vm)["rounds"].as_u64().unwrap();
    let (s, _) = wait_for(&vm, "three rounds after the publish", |s| {
        s["rounds"].as_u64() >= Some(rounds + 3)
    });
    assert_eq!(s["kernel"]["violations"], 0, "{s}");
    let paging = &s["kernel"]["paging"];
    assert_eq!(paging["unexpected_executable_pages"], 0, "{paging}");
    assert_eq!(paging["missing_executable_pages"], 0, "{paging}");
    assert_eq!(integrity_records(&vm).len(), 1);
}

#[test]
fn halt_policy_stops_the_vm_with_pcr_10_saved() {
    let (mut vm, _, _) = setup("halt", "halt", &["hello"]);
    tamper(&vm, "component:hello:code", 4096);
    let start = Instant::now();
    let exit = loop {
        if let Some(exit) = vm.exit_kind().unwrap() {
            break exit;
        }
        assert!(start.elapsed() <= INTERVAL + SLACK, "the VM did not halt");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(65), "{exit}");
    let console = std::fs::read_to_string(vm.console_log_path()).unwrap();
    assert!(
        console.contains("integrity halt: component:hello code"),
        "{console}"
    );
    let pcrs = pcrs_after_shutdown(&vm, &[10]);
    assert_ne!(pcrs[&10], [0u8; 32], "the violation is in PCR 10");
}

#[test]
fn a_writable_executable_page_is_found_by_the_page_table_audit() {
    // From the host, the page-table entry of a page of hello's linear memory is rewritten
    // writable and executable: what running injected code needs. The kernel's audit of its
    // live page tables finds it within an interval and records it once in PCR 10; the
    // components keep serving.
    let (vm, _, _) = setup("wx", "reinstantiate", &["hello"]);
    let traffic = Traffic::start(&vm, &["/hello/"]);
    let s = status(&vm);
    assert_eq!(s["kernel"]["violations"], 0, "{s}");
    let page = instance(&s, "hello")["memory"]["base"].as_u64().unwrap();
    let done = tamper(&vm, "kernel:wx", page);
    let entry = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("an 8-byte entry"));
    assert_ne!(
        entry(&done.old) & (1 << 63),
        0,
        "linear memory was no-execute"
    );
    assert_eq!(entry(&done.new) & (1 << 63 | 1 << 1), 1 << 1, "now W+X");
    let (s, took) = wait_for(&vm, "the W+X page found", |s| {
        s["kernel"]["violations"].as_u64() >= Some(1)
    });
    eprintln!("W+X page found {took:?} after the tamper");
    assert_eq!(s["kernel"]["state"], "untrusted");
    // The page is both W+X and executable outside the expected set: two checks, one round.
    let records = integrity_records(&vm);
    let checks: Vec<&str> = records
        .iter()
        .map(|r| r["content"]["check"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["kernel-wx", "kernel-exec"], "{records:?}");
    assert!(records.iter().all(|r| r["content"]["subject"] == "kernel"));
    let wx = &records[0]["content"]["detail"];
    assert_eq!(wx, "1 pages are writable and executable", "{records:?}");
    let exec = records[1]["content"]["detail"].as_str().unwrap();
    assert!(
        exec.starts_with(&format!(
            "1 executable pages are not kernel text or component code (the first at {page:#x})"
        )),
        "{exec}"
    );
    // Later rounds do not record it again; hello served every request.
    thread::sleep(INTERVAL * 3);
    assert_eq!(integrity_records(&vm).len(), 2);
    traffic.finish();
}

/// Attests `vm` as a verifier would (on its admin listener).
fn attest(vm: &Instance, refs: &tuk_attest::appraise::References) -> tuk_attest::AttestationResult {
    let mut attester =
        tuk_attest::attester::HttpAttester::new(&tuk_e2e::admin_url(vm), Duration::from_secs(30));
    tuk_attest::attester::attest(&mut attester, refs).unwrap()
}

/// Runs `rounds` clean rounds (with traffic) and asserts that none found anything: the honest
/// path of the kernel checks has no false positives.
fn clean_rounds(vm: &Instance, rounds: u64) {
    let start = status(vm)["rounds"].as_u64().unwrap();
    let deadline = Instant::now() + INTERVAL * (rounds as u32) * 2 + SLACK * 4;
    loop {
        let s = status(vm);
        assert_eq!(s["kernel"]["violations"], 0, "false positive: {s}");
        assert_eq!(
            s["kernel"]["paging"]["unexpected_executable_pages"], 0,
            "{s}"
        );
        assert_eq!(s["kernel"]["paging"]["non_identity_pages"], 0, "{s}");
        if s["rounds"].as_u64().unwrap() >= start + rounds {
            eprintln!(
                "{rounds} clean rounds; last round {} us, parts {}",
                s["last_round_us"], s["last_round_parts_us"]
            );
            break;
        }
        assert!(Instant::now() < deadline, "rounds did not run: {s}");
        thread::sleep(INTERVAL);
    }
    assert!(
        integrity_records(vm).is_empty(),
        "{:?}",
        integrity_records(vm)
    );
}

#[test]
fn a_page_made_executable_without_write_is_found() {
    // The review's attack (finding 9): code written into a writable heap page, which is then
    // made read+execute, never W+X. The executable-page set is compared with the kernel's
    // text plus the component code the kernel mapped: the page is found, PCR 10 records it,
    // and attestation turns contraindicated.
    let (vm, signed) = setup_signed("x", "reinstantiate", &["hello", "kv"]);
    let refs = references(&signed.policy);
    let traffic = Traffic::start(&vm, &["/hello/", "/kv/kv"]);
    clean_rounds(&vm, 20);
    let s = status(&vm);
    let paging = &s["kernel"]["paging"];
    assert_eq!(
        paging["executable_pages"], paging["expected_executable_pages"],
        "{paging}"
    );
    assert_eq!(paging["missing_executable_pages"], 0, "{paging}");
    assert_eq!(attest(&vm, &refs).status(), tuk_attest::Status::Affirming);

    let page = instance(&s, "kv")["memory"]["base"].as_u64().unwrap();
    let done = tamper(&vm, "kernel:x", page);
    let entry = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("an 8-byte entry"));
    assert_eq!(
        entry(&done.old) & (1 << 63 | 1 << 1),
        1 << 63 | 1 << 1,
        "was RW+NX"
    );
    assert_eq!(
        entry(&done.new) & (1 << 63 | 1 << 1),
        0,
        "now R+X, not writable"
    );
    let (s, took) = wait_for(&vm, "the executable page found", |s| {
        s["kernel"]["violations"] == 1
    });
    eprintln!("R+X page found {took:?} after the tamper");
    assert_eq!(s["kernel"]["state"], "untrusted");
    assert_eq!(
        s["kernel"]["paging"]["unexpected_executable_pages"], 1,
        "{s}"
    );
    assert_eq!(s["kernel"]["paging"]["writable_executable_pages"], 0, "{s}");
    let records = integrity_records(&vm);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["content"]["subject"], "kernel");
    assert_eq!(records[0]["content"]["check"], "kernel-exec");
    assert_eq!(
        get(&vm, "/_tuk/health").json()["integrity"]["kernel"],
        "untrusted"
    );
    let result = attest(&vm, &refs);
    assert_eq!(result.status(), tuk_attest::Status::Contraindicated);
    let reasons = &result.submods["kernel"].reasons;
    assert!(
        reasons.iter().any(|r| r.contains("kernel-exec")),
        "{reasons:?}"
    );
    traffic.finish();
}

#[test]
fn an_aliased_page_is_found_by_the_identity_check() {
    // A page-table entry of hello's linear memory pointed at the next page's frame: two
    // virtual pages on one frame (how a read-only or executable frame gets a writable alias).
    let (vm, _, _) = setup("alias", "reinstantiate", &["hello"]);
    let traffic = Traffic::start(&vm, &["/hello/"]);
    let s = status(&vm);
    assert_eq!(s["kernel"]["violations"], 0, "{s}");
    let page = instance(&s, "hello")["memory"]["base"].as_u64().unwrap();
    let done = tamper(&vm, "kernel:alias", page);
    let frame = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap()) & 0x000f_ffff_ffff_f000;
    assert_eq!(frame(&done.old), page, "the identity map");
    assert_eq!(frame(&done.new), page + 4096);
    let (s, took) = wait_for(&vm, "the alias found", |s| s["kernel"]["violations"] == 1);
    eprintln!("alias found {took:?} after the tamper");
    let records = integrity_records(&vm);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["content"]["check"], "kernel-identity");
    let detail = records[0]["content"]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!(
            "1 pages do not map their own frame (the first at {page:#x})"
        )),
        "{detail}"
    );
    assert_eq!(s["kernel"]["state"], "untrusted");
    // Later rounds do not record it again; hello served every request.
    thread::sleep(INTERVAL * 3);
    assert_eq!(integrity_records(&vm).len(), 1);
    traffic.finish();
}

#[test]
fn a_changed_interrupt_descriptor_table_is_found() {
    // One byte of the IDT's #BP gate (vector 3: never raised by this kernel, so the change
    // cannot crash it) flipped from the host: an attacker redirecting an exception handler.
    let (vm, _, _) = setup("idt", "reinstantiate", &["hello"]);
    let s = status(&vm);
    let idt = &s["kernel"]["descriptor_tables"]["idt"];
    assert_eq!(idt["len"], 4096, "{s}");
    assert_eq!(idt["addr"], s["kernel"]["control"]["idtr"]["base"], "{s}");
    tamper(&vm, "kernel:idt", 3 * 16);
    let (s, took) = wait_for(&vm, "the IDT change found", |s| {
        s["kernel"]["violations"] == 1
    });
    eprintln!("IDT change found {took:?} after the tamper");
    let records = integrity_records(&vm);
    assert_eq!(records.len(), 1, "{records:?}");
    let c = &records[0]["content"];
    assert_eq!(c["check"], "kernel-descriptors");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .starts_with("the IDT changed since boot"),
        "{c}"
    );
    assert_eq!(c["expected_sha256"], idt["sha256"], "{c}");
    assert_ne!(c["observed_sha256"], idt["sha256"], "{c}");
    assert_eq!(s["kernel"]["state"], "untrusted");
    assert_eq!(get(&vm, "/hello/").status, 200, "the kernel keeps serving");
}

#[test]
fn a_sealed_reference_page_made_writable_is_found() {
    // The monitor's reference values and fingerprint secret live in pages the kernel made
    // read-only after boot (`kernel.sealed`). To change them from inside the guest, a writer
    // first needs such a page writable: that change of its page-table entry is found.
    let (vm, _, _) = setup("sealed", "reinstantiate", &["hello"]);
    let (s, _) = wait_for(&vm, "a first round", |s| s["rounds"].as_u64() >= Some(1));
    let sealed = s["kernel"]["sealed"].as_array().unwrap().clone();
    assert!(sealed.len() >= 2, "the secret and the references: {s}");
    assert_eq!(
        s["kernel"]["paging"]["sealed_pages"],
        sealed
            .iter()
            .map(|r| r["len"].as_u64().unwrap() / 4096)
            .sum::<u64>(),
        "{s}"
    );
    let page = sealed[0]["addr"].as_u64().unwrap();
    let done = tamper(&vm, "kernel:w", page);
    let entry = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
    assert_eq!(entry(&done.old) & 0b10, 0, "the sealed page was read-only");
    assert_eq!(entry(&done.new) & 0b10, 0b10);
    let (s, took) = wait_for(&vm, "the unsealed page found", |s| {
        s["kernel"]["violations"] == 1
    });
    eprintln!("unsealed page found {took:?} after the tamper");
    let records = integrity_records(&vm);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["content"]["check"], "kernel-sealed");
    let detail = records[0]["content"]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("1 of the ") && detail.ends_with(&format!("(the first at {page:#x})")),
        "{detail}"
    );
    assert_eq!(s["kernel"]["paging"]["unsealed_pages"], 1, "{s}");
}

#[test]
fn rounds_are_jittered() {
    // An observer of `last_check_ms` must not be able to time a tamper-and-restore between
    // two rounds: the gaps between rounds vary over 75-125 % of the interval.
    let (vm, _, _) = setup("jitter", "reinstantiate", &["hello"]);
    let mut seen: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 31 {
        let s = status(&vm);
        let at = s["kernel"]["last_check_ms"].as_u64().unwrap_or(0);
        if seen.last() != Some(&at) && at != 0 {
            seen.push(at);
        }
        assert!(Instant::now() < deadline, "rounds did not run: {s}");
        thread::sleep(Duration::from_millis(3));
    }
    // Only consecutive observations (no round missed between two polls) count.
    let gaps: Vec<u64> = seen.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("gaps between rounds (ms): {gaps:?}");
    let interval = INTERVAL.as_millis() as u64;
    let single: Vec<u64> = gaps
        .iter()
        .copied()
        .filter(|&g| g < interval * 3 / 2)
        .collect();
    assert!(
        single.len() >= 15,
        "too few consecutive rounds seen: {gaps:?}"
    );
    assert!(
        single.iter().all(|&g| g >= interval * 3 / 4),
        "a round came earlier than 75 % of the interval: {gaps:?}"
    );
    let (min, max) = (single.iter().min().unwrap(), single.iter().max().unwrap());
    assert!(
        max - min >= interval / 5,
        "the gaps do not vary (min {min} ms, max {max} ms): {gaps:?}"
    );
}
