//! The launcher's measured launch against a real swtpm (Debian `swtpm swtpm-tools tpm2-tools`).
//!
//! Each test has its own vTPM state; they share the CA directory (swtpm_localca locks it) and
//! nothing else, so they run in parallel. What they prove:
//! - `resume_keeps_the_launchers_pcrs`: after the launcher's sequence (Startup(CLEAR), extend
//!   PCR 4 and 5, store the running TPM, swtpm stopped), a host-side inspection (a new swtpm on
//!   the same state, started) reports PCR 4 and 5 (read by `tpm2_pcrread`, an independent
//!   implementation) equal to the replay of the launcher's event-log records.
//! - `a_guest_cannot_restart_the_tpm_to_forge_pcr_4_and_5` (review finding 1, the attack): the
//!   swtpm `tuk run` gives QEMU, driven exactly as QEMU's tpm-emulator and a malicious guest
//!   drive it (CMD_SET_DATAFD, CMD_STOP, CMD_SET_BUFFERSIZE, CMD_INIT; then TPM2_Startup(CLEAR)
//!   and PCR 4/5 extends with a reference kernel's digests): Startup(CLEAR) is answered
//!   TPM_RC_INITIALIZE, PCR 4/5 keep the launcher's values, and a quote of the forged log does
//!   not verify (the verifier's `verify_quote`), while the honest log's does, with
//!   restartCount 0.
//! - `ek_certificates_chain_to_the_local_ca`: `openssl verify` of the EK certificates against
//!   the CA's root and issuer certificates.
//! - `second_launch_reuses_the_state`: no re-manufacturing, the same EK, PCRs from the new boot.
//! - `state_is_private` / `unsafe_state_dirs_are_refused` (review finding 10): 0700 directories,
//!   0600 state files; a symbolic link, a directory of another user or one open to others is
//!   refused as a state directory.
//! - `a_dead_tpm_shows_in_health` (real kernel under QEMU TCG): killing the swtpm of a running
//!   instance turns health's `tpm` from `resumed` to `failed` within a bound.

use std::io::{IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tuk_launcher::measured::{self, BootConfig, LauncherMeasurements, Record};
use tuk_launcher::qemu::{self, Accel};
use tuk_vtpm::{
    Manufactured, SocketTransport, StartupType, Stream, Swtpm, Tools, Tpm, VtpmPaths, SWTPM_TIMEOUT,
};

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

/// A host-side inspection swtpm on the same state, from the permanent state (the launcher's
/// Shutdown(STATE)) started with `kind` (see `tuk_vtpm::spawn_for_inspection`). Returns it and
/// its command port.
fn inspect(tools: &Tools, paths: &VtpmPaths, kind: StartupType) -> (Swtpm, u16) {
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

    let (mut swtpm, port) = inspect(&tools, &paths, StartupType::State);
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

use tuk_tpm::TPM_RC_INITIALIZE;

/// QEMU's side of swtpm's control channel (QEMU 7.2 `backends/tpm/tpm_emulator.c`): hands swtpm
/// the data channel (CMD_SET_DATAFD, one end of a socket pair passed with SCM_RIGHTS), then at
/// machine reset CMD_STOP, CMD_SET_BUFFERSIZE and CMD_INIT with flags 0. Returns the control
/// connection (kept open, as QEMU does) and QEMU's end of the data channel: the guest's TPM.
fn act_as_qemu(ctrl_path: &Path) -> (UnixStream, Tpm<SocketTransport>) {
    fn result(ctrl: &mut UnixStream, what: &str, extra: usize) {
        let mut resp = vec![0u8; 4 + extra];
        ctrl.read_exact(&mut resp).unwrap();
        let rc = u32::from_be_bytes(resp[..4].try_into().unwrap());
        assert_eq!(rc, 0, "{what} answered {rc:#x}");
    }
    let mut ctrl = UnixStream::connect(ctrl_path).unwrap();
    ctrl.set_read_timeout(Some(SWTPM_TIMEOUT)).unwrap();
    let (qemu_end, swtpm_end) = UnixStream::pair().unwrap();
    // CMD_SET_DATAFD (16) with the descriptor in the ancillary data.
    let fds = [swtpm_end.as_fd()];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = rustix::net::SendAncillaryBuffer::new(&mut space);
    assert!(anc.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
    let cmd = 16u32.to_be_bytes();
    rustix::net::sendmsg(
        &ctrl,
        &[IoSlice::new(&cmd)],
        &mut anc,
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
    result(&mut ctrl, "CMD_SET_DATAFD", 0);
    drop(swtpm_end);
    ctrl.write_all(&14u32.to_be_bytes()).unwrap(); // CMD_STOP
    result(&mut ctrl, "CMD_STOP", 0);
    let mut setbuf = 17u32.to_be_bytes().to_vec(); // CMD_SET_BUFFERSIZE
    setbuf.extend(4096u32.to_be_bytes());
    ctrl.write_all(&setbuf).unwrap();
    result(&mut ctrl, "CMD_SET_BUFFERSIZE", 12);
    let mut init = 2u32.to_be_bytes().to_vec(); // CMD_INIT, flags 0 (a normal boot)
    init.extend(0u32.to_be_bytes());
    ctrl.write_all(&init).unwrap();
    result(&mut ctrl, "CMD_INIT", 0);
    qemu_end.set_read_timeout(Some(SWTPM_TIMEOUT)).unwrap();
    (ctrl, Tpm::new(SocketTransport::new(Stream::Unix(qemu_end))))
}

/// An AK (tuk's template) in `tpm` and a quote of PCRs 4, 5, 8, 9, 10 over `nonce`.
fn quote(tpm: &mut Tpm<SocketTransport>, nonce: &[u8]) -> (tuk_attest::AkPublic, Vec<u8>, Vec<u8>) {
    let ak = tpm
        .create_primary(tuk_tpm::TPM_RH_ENDORSEMENT, tuk_tpm::KeyTemplate::Ak)
        .unwrap();
    let q = tpm.quote(ak.handle, nonce, &[4, 5, 8, 9, 10]).unwrap();
    (
        tuk_attest::AkPublic::parse(&ak.public).unwrap(),
        q.attest.as_slice().to_vec(),
        q.signature.as_slice().to_vec(),
    )
}

/// PCRs 4, 5, 8, 9, 10 as a verifier expects them from a replayed log.
fn quoted(records: &[Record]) -> Vec<(u32, [u8; 32])> {
    let replay = measured::replay(records);
    [4, 5, 8, 9, 10]
        .iter()
        .map(|&i| (i, replay.get(&i).copied().unwrap_or([0; 32])))
        .collect()
}

#[test]
fn a_guest_cannot_restart_the_tpm_to_forge_pcr_4_and_5() {
    let state = fresh_state("attack");
    // What `tuk run` measures for the image it boots: a modified kernel.
    let booted = measurements(b"a MODIFIED kernel image", "1700000000001");
    // What the attacker wants the verifier to believe: the signed reference image.
    let reference = measurements(b"the SIGNED reference kernel image", "1700000000001");
    let (tools, paths, _) = launch(&state, &booted);
    let mut swtpm = tuk_vtpm::spawn_for_qemu(&tools, &paths).unwrap();
    let (_ctrl, mut guest) = act_as_qemu(&paths.qemu_ctrl);

    // The guest tries a TPM Reset/Restart: refused, the host started the TPM already.
    let clear = guest.startup(StartupType::Clear).unwrap_err();
    assert_eq!(
        clear.code(),
        Some(TPM_RC_INITIALIZE),
        "Startup(CLEAR): {clear}"
    );
    let resume = guest.startup(StartupType::State).unwrap_err();
    assert_eq!(
        resume.code(),
        Some(TPM_RC_INITIALIZE),
        "Startup(STATE): {resume}"
    );
    let launcher = measured::replay(&booted.records);
    assert_eq!(
        guest.pcr_read(4).unwrap(),
        launcher[&4],
        "PCR 4 is the launcher's"
    );
    assert_eq!(
        guest.pcr_read(5).unwrap(),
        launcher[&5],
        "PCR 5 is the launcher's"
    );

    // It extends the reference digests anyway and presents the reference records as its log.
    for (pcr, digest) in reference.extends() {
        guest.pcr_extend(pcr, &digest).unwrap();
    }
    let forged = measured::replay(&reference.records);
    assert_ne!(guest.pcr_read(4).unwrap(), forged[&4]);
    assert_ne!(guest.pcr_read(5).unwrap(), forged[&5]);
    let nonce = b"verifier nonce 0123456789abcdef";
    let (ak, attest, sig) = quote(&mut guest, nonce);
    let refused = tuk_attest::verify_quote(&ak, &attest, &sig, nonce, &quoted(&reference.records));
    assert!(
        matches!(refused, Err(tuk_attest::QuoteError::PcrDigest { .. })),
        "the forged log must not verify: {refused:?}"
    );
    drop(guest);
    swtpm.kill();
}

#[test]
fn the_honest_guest_quotes_the_launchers_pcrs_with_restart_count_0() {
    let state = fresh_state("honest");
    // Two boots on one state directory, as a reused `--state-dir` or the KVM→TCG retry do: the
    // first launch ended with Shutdown(STATE), and the second's Startup(CLEAR) must still be a
    // TPM Reset, not a Restart (restartCount 1 is what a verifier refuses).
    for (boot, time) in [(1, "1700000000002"), (2, "1700000000003")] {
        let m = measurements(b"the kernel image", time);
        let (tools, paths, _) = launch(&state, &m);
        let mut swtpm = tuk_vtpm::spawn_for_qemu(&tools, &paths).unwrap();
        let (mut ctrl, mut guest) = act_as_qemu(&paths.qemu_ctrl);
        // What host-kernel/src/measured.rs does: Startup(STATE), TPM_RC_INITIALIZE = resumed.
        let e = guest.startup(StartupType::State).unwrap_err();
        assert_eq!(e.code(), Some(TPM_RC_INITIALIZE), "{e}");
        let nonce = b"another verifier nonce";
        let (ak, attest, sig) = quote(&mut guest, nonce);
        let info = tuk_attest::verify_quote(&ak, &attest, &sig, nonce, &quoted(&m.records))
            .unwrap_or_else(|e| panic!("boot {boot}: the launcher's log must verify: {e}"));
        eprintln!(
            "honest boot {boot}: resetCount {}, restartCount {}, safe {}",
            info.clock.reset_count, info.clock.restart_count, info.clock.safe
        );
        assert_eq!(
            info.clock.restart_count, 0,
            "boot {boot}: no TPM2_Startup after the launcher's, and the launcher's is a Reset"
        );
        // QEMU's exit: CMD_SHUTDOWN (3), which makes swtpm store the TPM's state, sent while the
        // data channel is still open (swtpm --terminate exits as soon as it closes).
        ctrl.write_all(&3u32.to_be_bytes()).unwrap();
        let mut rc = [0u8; 4];
        ctrl.read_exact(&mut rc).unwrap();
        assert_eq!(u32::from_be_bytes(rc), 0, "CMD_SHUTDOWN");
        drop(guest);
        swtpm.kill();
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn state_is_private() {
    let state = fresh_state("private");
    let m = measurements(b"k", "5");
    let (tools, paths, _) = launch(&state, &m);
    let swtpm = tuk_vtpm::spawn_for_qemu(&tools, &paths).unwrap();
    for dir in [&paths.state, &paths.config, &paths.certs] {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    let mut files = 0;
    for entry in std::fs::read_dir(&paths.state).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files += 1;
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
    assert!(
        paths.state.join("tpm2-00.permall").is_file()
            && paths.state.join("tpm2-00.volatilestate").is_file(),
        "the permanent and the stored running state"
    );
    assert!(files >= 2);
    assert_eq!(mode(&paths.log), 0o600);
    drop(swtpm);

    // The launcher's state directory: created 0700.
    let dir = state.join("instance");
    tuk_launcher::instance::prepare_state_dir(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    // Accepted again (a second run on the same directory).
    tuk_launcher::instance::prepare_state_dir(&dir).unwrap();
}

#[test]
fn unsafe_state_dirs_are_refused() {
    let root = fresh_state("unsafe");
    let refused = |dir: &Path, why: &str| {
        let e = tuk_launcher::instance::prepare_state_dir(dir)
            .expect_err(&format!("{} must be refused", dir.display()))
            .to_string();
        assert!(e.contains(why) && e.contains("refusing"), "{e}");
    };
    // A symbolic link another user planted, to a directory that is otherwise fine.
    let target = root.join("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = root.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    refused(&link, "symbolic link");
    // Open to others.
    let open = root.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    refused(&open, "0755");
    // Another user's, even if 0700.
    let foreign = root.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).unwrap();
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    let other = if me == 65534 { 65533 } else { 65534 };
    let chown = Command::new("chown")
        .arg(other.to_string())
        .arg(&foreign)
        .output()
        .unwrap();
    assert!(
        chown.status.success(),
        "this test needs to create a directory of another user (run as root): {}",
        String::from_utf8_lossy(&chown.stderr)
    );
    refused(&foreign, &format!("uid {other}"));
    // And the vTPM's own directory, swapped for one open to others after manufacture.
    let (tools, paths, _) = launch(&root.join("vtpm"), &measurements(b"k", "6"));
    std::fs::set_permissions(&paths.state, std::fs::Permissions::from_mode(0o750)).unwrap();
    let e = tuk_vtpm::spawn_for_qemu(&tools, &paths)
        .unwrap_err()
        .to_string();
    assert!(e.contains("0750") && e.contains("refusing"), "{e}");
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
    let (mut swtpm, port) = inspect(&tools, &paths, StartupType::State);
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

/// `GET /_tuk/health` as JSON.
fn health_json(vm: &tuk_launcher::Instance) -> serde_json::Value {
    let reply = tuk_launcher::health::get(
        vm.addr(),
        tuk_launcher::health::HEALTH_PATH,
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("health: {e}"));
    assert_eq!(reply.status, 200);
    serde_json::from_slice(&reply.body).unwrap()
}

#[test]
fn a_dead_tpm_shows_in_health() {
    let kernel = tuk_launcher::kernel::default_image()
        .unwrap_or_else(|e| panic!("cannot locate the kernel image ({e}); run `tuk kernel build`"));
    assert!(
        kernel.is_file(),
        "kernel image {} does not exist: run `tuk kernel build` first (or set TUK_KERNEL)",
        kernel.display()
    );
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let root = fresh_state("dead-tpm");
    let mut cfg = tuk_launcher::RunConfig::new(kernel, listen);
    cfg.accel = Accel::Tcg;
    cfg.vtpm_ca_dir = ca_dir();
    cfg.state_dir = root.join("state");
    let mut vm = tuk_launcher::Instance::start(cfg).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(health_json(&vm)["tpm"], "resumed");

    // The launcher's files are private, and QEMU loads the measured copy.
    let state = vm.state_dir().to_owned();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("boot")), 0o700);
    assert_eq!(mode(vm.kernel_image()), 0o600);
    assert_eq!(mode(&state.join("boot/initrd.pack")), 0o600);
    assert_eq!(
        measured::hex(&measured::sha256(
            &std::fs::read(vm.kernel_image()).unwrap()
        )),
        vm.info().kernel_sha256
    );

    let pid = vm.swtpm_pid().expect("swtpm runs behind QEMU");
    let kill = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let killed = Instant::now();
    let bound = Duration::from_secs(10);
    let mut last = serde_json::Value::Null;
    while killed.elapsed() < bound {
        last = health_json(&vm);
        if last["tpm"] == "failed" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "health reports tpm {} {} ms after swtpm was killed",
        last["tpm"],
        killed.elapsed().as_millis()
    );
    assert_eq!(last["tpm"], "failed", "within {bound:?}: {last}");
    assert_eq!(last["status"], "degraded", "a failed TPM is not ok: {last}");
    let exit = vm.shutdown(Duration::from_secs(10)).unwrap();
    eprintln!("exit: {exit}");
}
