//! The real kernel with the vTPM attached: the launcher's measured launch, swtpm behind QEMU's
//! `tpm-crb`, the kernel resuming the TPM, and the PCRs after a clean shutdown equal to the
//! replay of the launcher's event log.

use std::time::Duration;

use tuk_e2e::{boot, health};
use tuk_launcher::instance::{BOOT_DIR, BOOT_PACK};
use tuk_launcher::measured::{self, Record};
use tuk_vtpm::{Endpoint, StartupType, Swtpm, SwtpmConfig, Tools, SWTPM_TIMEOUT};

#[test]
fn boots_with_the_vtpm_and_keeps_the_launchers_pcrs() {
    let mut vm = boot("vtpm");
    let doc = health(vm.addr());
    assert_eq!(doc["status"], "ok");
    let m = vm.measured_boot().clone();
    eprintln!(
        "  vTPM: manufactured now: {} ({} ms), measured launch + swtpm for QEMU: {} ms, boot {} ms",
        m.manufactured,
        m.manufacture_ms,
        m.launch_ms,
        vm.boot_ms()
    );
    assert!(vm.swtpm_pid().is_some(), "swtpm runs behind QEMU");
    if let Some(tpm) = doc.get("tpm") {
        // A kernel with the TPM driver resumes the launcher's state.
        assert_eq!(tpm, "resumed", "health: {doc}");
    }

    // The event log file, the records the Instance reports and the boot pack's `_eventlog`
    // entry are the same two records.
    let file = std::fs::read(&m.eventlog).unwrap();
    let records: Vec<Record> = serde_json::from_slice(&file).unwrap();
    assert_eq!(records, m.records);
    assert_eq!(records.len(), 2);
    let pack_path = m.eventlog.parent().unwrap().join(BOOT_DIR).join(BOOT_PACK);
    let pack_bytes = std::fs::read(&pack_path).unwrap();
    let pack = tuk_bootpack::Pack::parse(&pack_bytes).unwrap();
    assert_eq!(
        pack.reserved(tuk_bootpack::EVENTLOG).unwrap().data,
        &file[..]
    );
    assert!(pack.entries.is_empty());
    assert_eq!(
        m.boot_config.boot_pack_sha256.as_deref(),
        Some(measured::hex(&measured::sha256(&pack.components_encoding())).as_str())
    );
    measured::check_boot_config_record(&records[1]).unwrap();
    let kernel = std::fs::read(
        m.eventlog
            .parent()
            .unwrap()
            .join(BOOT_DIR)
            .join("tuk-kernel"),
    )
    .unwrap();
    assert_eq!(records[0].sha256().ok(), Some(measured::sha256(&kernel)));

    let exit = vm.shutdown(Duration::from_secs(10)).unwrap();
    assert!(exit.is_clean(), "{exit}");
    assert!(vm.swtpm_pid().is_none(), "swtpm exits with QEMU");
    let swtpm_exit = vm.swtpm_exit().unwrap();
    assert!(
        swtpm_exit.success(),
        "swtpm ended by itself when QEMU did, not killed: {swtpm_exit}"
    );

    // The kernel saved the TPM with Shutdown(STATE) on its way out (when it has the driver;
    // otherwise the launcher's Shutdown(STATE) is still the last one): resume and read.
    let tools = Tools::find().unwrap();
    let mut swtpm = Swtpm::spawn(
        &tools,
        &m.vtpm,
        SwtpmConfig {
            phase: "after the VM",
            ctrl: Endpoint::Unix(m.vtpm.launch_ctrl.clone()),
            server: Some(Endpoint::Unix(m.vtpm.launch_data.clone())),
            terminate: false,
            not_need_init: false,
        },
    )
    .unwrap();
    swtpm.ctrl(SWTPM_TIMEOUT).unwrap().init().unwrap();
    let mut tpm = swtpm.tpm(SWTPM_TIMEOUT).unwrap();
    tpm.startup(StartupType::State).unwrap();
    let replay = measured::replay(&records);
    assert_eq!(tpm.pcr_read(4).unwrap(), replay[&4], "PCR 4");
    assert_eq!(tpm.pcr_read(5).unwrap(), replay[&5], "PCR 5");
    drop(tpm);
    swtpm.kill();
}
