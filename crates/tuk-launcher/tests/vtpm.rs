//! The launcher's measured launch against a real swtpm (Debian `swtpm swtpm-tools tpm2-tools`).
//!
//! Each test has its own vTPM state; they share the CA directory (swtpm_localca locks it) and
//! nothing else, so they run in parallel. What they prove:
//! - `resume_keeps_the_launchers_pcrs`: after the launcher's sequence (Startup(CLEAR), extend
//!   PCR 4 and 5, Shutdown(STATE), swtpm stopped), a new swtpm on the same state, powered on
//!   like QEMU does (CMD_INIT) and resumed like the guest does (Startup(STATE)), reports PCR 4
//!   and 5 (read by `tpm2_pcrread`, an independent implementation) equal to the replay of the
//!   launcher's event-log records.
//! - `startup_clear_wipes_them`: a guest that sends Startup(CLEAR) instead finds them zero,
//!   which is why the kernel must resume.
//! - `ek_certificates_chain_to_the_local_ca`: `openssl verify` of the EK certificates against
//!   the CA's root and issuer certificates.
//! - `second_launch_reuses_the_state`: no re-manufacturing, the same EK, PCRs from the new boot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tuk_launcher::measured::{self, BootConfig, LauncherMeasurements};
use tuk_launcher::qemu::{self, Accel};
use tuk_vtpm::{Manufactured, StartupType, Swtpm, Tools, VtpmPaths, SWTPM_TIMEOUT};

fn test_root() -> PathBuf {
    std::env::temp_dir().join("tuk-vtpm-tests")
}

fn ca_dir() -> PathBuf {
    test_root().join("ca")
}

fn fresh_state(name: &str) -> PathBuf {
    let dir = test_root().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tools() -> Tools {
    Tools::find().unwrap_or_else(|e| panic!("{e}"))
}

/// The launcher's measurements for a fake kernel image and cmdline, exactly as `Instance`
/// derives them (from the QEMU argv).
fn measurements(kernel: &[u8], unix_ms: &str) -> LauncherMeasurements {
    let argv = qemu::qemu_args(
        Path::new("/boot/tuk-kernel"),
        Accel::Tcg,
        64,
        Path::new("/dev/shm/tuk-test.ram"),
        "127.0.0.1:8080".parse().unwrap(),
        &[("time.unix_ms".into(), unix_ms.into())],
    )
    .unwrap();
    let empty = tuk_bootpack::PackBuilder::new().finish();
    let pack = tuk_bootpack::Pack::parse(&empty).unwrap();
    let doc = BootConfig::from_argv(
        &argv,
        Some(measured::hex(&measured::sha256(
            &pack.components_encoding(),
        ))),
    )
    .unwrap();
    LauncherMeasurements::new(
        "tuk-kernel",
        kernel.len() as u64,
        measured::sha256(kernel),
        doc,
    )
}

/// Manufacture (first use) and the measured launch, as `Instance::start` does them.
fn launch(state: &Path, m: &LauncherMeasurements) -> (Tools, VtpmPaths, Manufactured) {
    let tools = tools();
    let paths = VtpmPaths::new(state).unwrap();
    let t = Instant::now();
    let made = tuk_vtpm::manufacture(&tools, &paths, &ca_dir()).unwrap();
    eprintln!("manufacture ({made:?}): {} ms", t.elapsed().as_millis());
    let times = tuk_vtpm::measured_launch(&tools, &paths, &m.extends()).unwrap();
    eprintln!(
        "measured launch: {} ms (swtpm up and Startup done after {} ms)",
        times.total.as_millis(),
        times.start.as_millis()
    );
    (tools, paths, made)
}

/// A swtpm on the same state, powered on and started as a guest would (see
/// `tuk_vtpm::spawn_for_inspection`). Returns it and its command port.
fn guest(tools: &Tools, paths: &VtpmPaths, kind: StartupType) -> (Swtpm, u16) {
    tuk_vtpm::spawn_for_inspection(tools, paths, kind).unwrap()
}

/// PCR 4 and 5 (SHA-256 bank) through `tpm2_pcrread` and the swtpm TCTI.
fn pcrread(port: u16) -> [[u8; 32]; 2] {
    let pcrs = tuk_vtpm::tpm2_pcrread(port, &[4, 5]).unwrap();
    [pcrs[&4], pcrs[&5]]
}

#[test]
fn resume_keeps_the_launchers_pcrs() {
    let state = fresh_state("resume");
    let m = measurements(b"a kernel image", "1700000000000");
    let (tools, paths, made) = launch(&state, &m);
    assert_eq!(made, Manufactured::Created);
    assert!(paths.manufactured());

    let (mut swtpm, port) = guest(&tools, &paths, StartupType::State);
    let pcrs = pcrread(port);
    // The event log the launcher hands on, serialized and read back like a verifier would.
    let records: Vec<measured::Record> = serde_json::from_slice(&m.eventlog_json()).unwrap();
    let replay = measured::replay(&records);
    assert_eq!(
        pcrs[0], replay[&4],
        "PCR 4 = replay of the tuk.kernel record"
    );
    assert_eq!(
        pcrs[1], replay[&5],
        "PCR 5 = replay of the tuk.boot-config record"
    );
    assert_ne!(pcrs[0], [0; 32]);
    // The kernel's own driver code (tuk-tpm) reads the same.
    let mut tpm = swtpm.tpm(SWTPM_TIMEOUT).unwrap();
    assert_eq!(tpm.pcr_read(4).unwrap(), replay[&4]);
    assert_eq!(tpm.pcr_read(5).unwrap(), replay[&5]);
    drop(tpm);
    swtpm.kill();
}

#[test]
fn startup_clear_wipes_them() {
    let state = fresh_state("clear");
    let m = measurements(b"another kernel image", "1700000000001");
    let (tools, paths, _) = launch(&state, &m);
    let (mut swtpm, port) = guest(&tools, &paths, StartupType::Clear);
    let pcrs = pcrread(port);
    assert_eq!(pcrs, [[0u8; 32]; 2], "Startup(CLEAR) resets PCR 4 and 5");
    let replay = measured::replay(&m.records);
    assert_ne!(pcrs[0], replay[&4]);
    swtpm.kill();
}

#[test]
fn second_launch_reuses_the_state() {
    let state = fresh_state("again");
    let first = measurements(b"kernel v1", "1");
    let (tools, paths, made) = launch(&state, &first);
    assert_eq!(made, Manufactured::Created);
    let ek = std::fs::read(paths.certs.join("ek-rsa2048.crt")).unwrap();
    // A second boot (say, after the VM stopped) on the same state: measured afresh.
    let second = measurements(b"kernel v2", "2");
    let (_, _, made) = launch(&state, &second);
    assert_eq!(made, Manufactured::Existing);
    assert_eq!(
        std::fs::read(paths.certs.join("ek-rsa2048.crt")).unwrap(),
        ek
    );
    let (mut swtpm, port) = guest(&tools, &paths, StartupType::State);
    let pcrs = pcrread(port);
    let replay = measured::replay(&second.records);
    assert_eq!(
        pcrs,
        [replay[&4], replay[&5]],
        "only the second boot's measurements"
    );
    swtpm.kill();
}

#[test]
fn ek_certificates_chain_to_the_local_ca() {
    let state = fresh_state("ek");
    let m = measurements(b"k", "3");
    let (_, paths, _) = launch(&state, &m);
    let ca = ca_dir();
    let root = tuk_vtpm::ca_root_cert(&ca);
    let issuer = tuk_vtpm::ca_issuer_cert(&ca);
    assert!(root.is_file() && issuer.is_file());
    for ek in ["ek-rsa2048.crt", "ek-secp384r1.crt"] {
        let der = paths.certs.join(ek);
        let pem = state.join(format!("{ek}.pem"));
        let conv = Command::new("openssl")
            .args(["x509", "-inform", "der", "-in"])
            .arg(&der)
            .arg("-out")
            .arg(&pem)
            .output()
            .expect("openssl runs");
        assert!(
            conv.status.success(),
            "{}",
            String::from_utf8_lossy(&conv.stderr)
        );
        let verify = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&root)
            .arg("-untrusted")
            .arg(&issuer)
            .arg(&pem)
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{ek} does not chain to the CA: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
    }
}
