//! Static measurement into the vTPM: every extension of a PCR goes with exactly one record in
//! the event log (TCG Canonical Event Log, CEL-JSON; docs/measurement.md).
//!
//! The log starts with the launcher's records (PCR 4: kernel image, PCR 5: boot
//! configuration), which it measured before the first guest instruction and handed over in
//! the boot pack. The host started the TPM (TPM2_Startup is the launcher's, docs/measurement.md):
//! the kernel's TPM2_Startup(STATE) is answered TPM_RC_INITIALIZE, which means "already
//! resumed by the host", and the kernel never sends TPM2_Startup(CLEAR) (a refused resume is a
//! failed TPM, not papered over). Then it appends its own records: PCR 8 (trust policy) and
//! PCR 9 (each component, before it is instantiated). A verifier replays the log against a
//! quote; nothing here needs to be trusted for that, only the TPM.
//!
//! A TPM that stops answering later (swtpm gone, a command failing at the transport) turns the
//! state to `failed`: an extend that fails does so, and the health report probes the TPM (at
//! most once per [`PROBE_INTERVAL_US`]) so a dead TPM shows without anything being measured.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use serde_json::{json, Value};
use tuk_measure::hex;
use tuk_tpm::{StartupType, Tpm, TpmError, TPM_RC_INITIALIZE};

use crate::arch::now_us;
use crate::drivers::tpm_crb::Crb;

/// The health report probes the TPM at most this often.
pub const PROBE_INTERVAL_US: u64 = 1_000_000;

pub const PCR_POLICY: u32 = 8;
pub const PCR_COMPONENTS: u32 = 9;
/// Run-time integrity events: violations found by re-measurement and the responses to them.
pub const PCR_INTEGRITY: u32 = 10;

/// How the TPM came up, or that it stopped working.
#[derive(Clone, Debug)]
pub enum TpmState {
    /// No TPM device: nothing is measured (the health report says so).
    Absent,
    /// Started by the host with the launcher's PCR 4/5 measurements (our TPM2_Startup(STATE)
    /// was answered TPM_RC_INITIALIZE), or resumed by our TPM2_Startup(STATE) (a launcher that
    /// left the Startup to the guest; the verifier's restartCount check refuses that boot).
    Resumed,
    /// The TPM refused the resume, or a later command failed; nothing more is measured. The
    /// reason is kept.
    Failed(String),
}

pub struct Measurements {
    tpm: RefCell<Option<Tpm<Crb>>>,
    state: RefCell<TpmState>,
    records: Vec<Value>,
    /// `now_us()` of the last liveness probe.
    last_probe_us: Cell<u64>,
}

impl Measurements {
    /// Brings up the TPM and starts the log with the launcher's records (a JSON array).
    pub fn init(launcher_log: Option<&[u8]>) -> Measurements {
        let mut records = Vec::new();
        if let Some(bytes) = launcher_log {
            match serde_json::from_slice::<Vec<Value>>(bytes) {
                Ok(r) => records = r,
                Err(e) => {
                    log::error!("the launcher's event log is not a JSON array ({e}); dropped")
                }
            }
        }
        let Some(crb) = Crb::probe() else {
            log::warn!("no TPM (tpm-crb) found: nothing will be measured");
            return Measurements {
                tpm: RefCell::new(None),
                state: RefCell::new(TpmState::Absent),
                records,
                last_probe_us: Cell::new(0),
            };
        };
        let mut tpm = Tpm::new(crb);
        let state = match tpm.startup(StartupType::State) {
            Err(e) if e.code() == Some(TPM_RC_INITIALIZE) => {
                log::info!("tpm: started by the host (our TPM2_Startup(STATE): TPM_RC_INITIALIZE)");
                TpmState::Resumed
            }
            Ok(()) => {
                log::warn!(
                    "tpm: the host left TPM2_Startup to the guest (an old launcher?); resumed, \
                     but a verifier refuses this boot (restartCount)"
                );
                TpmState::Resumed
            }
            Err(e) => TpmState::Failed(format!(
                "TPM2_Startup(STATE) refused ({e}): the launcher's PCR 4/5 measurements cannot \
                 be resumed; not starting the TPM clear"
            )),
        };
        if let TpmState::Failed(e) = &state {
            log::error!("{e}");
        }
        Measurements {
            tpm: RefCell::new(Some(tpm)),
            state: RefCell::new(state),
            records,
            last_probe_us: Cell::new(now_us()),
        }
    }

    /// Records that the TPM stopped working (a command failed): nothing more is measured and
    /// health reports `failed`.
    fn fail(&self, why: String) {
        let mut state = self.state.borrow_mut();
        if matches!(*state, TpmState::Resumed) {
            log::error!("tpm: {why}; the TPM is now reported failed");
            *state = TpmState::Failed(why);
        }
    }

    /// A command's error that means the TPM itself is gone or broken, not a refused request:
    /// transport failures and TPM_RC_FAILURE (what QEMU answers when its TPM backend is gone).
    fn fatal(e: &TpmError) -> bool {
        const TPM_RC_FAILURE: u32 = 0x101;
        matches!(e, TpmError::Transport(_)) || e.base_code() == Some(TPM_RC_FAILURE)
    }

    /// Checks that the TPM still answers (TPM2_PCR_Read of PCR 0), at most once per
    /// [`PROBE_INTERVAL_US`]; a failure turns the state to `failed`.
    pub fn probe(&self) {
        if !matches!(*self.state.borrow(), TpmState::Resumed) {
            return;
        }
        let now = now_us();
        if now.saturating_sub(self.last_probe_us.get()) < PROBE_INTERVAL_US {
            return;
        }
        self.last_probe_us.set(now);
        let result = match self.tpm.borrow_mut().as_mut() {
            Some(tpm) => tpm.pcr_read(0).map(drop),
            None => return,
        };
        if let Err(e) = result {
            self.fail(format!("the TPM stopped answering (TPM2_PCR_Read: {e})"));
        }
    }

    /// Extends `pcr` with `digest` and appends the matching record. Nothing is logged if the
    /// TPM refuses (the caller must then not go on as if measured).
    pub fn extend(
        &mut self,
        pcr: u32,
        digest: &[u8; 32],
        content_type: &str,
        content: Value,
    ) -> Result<(), String> {
        let state = self.state.get_mut().clone();
        match (self.tpm.get_mut(), state) {
            (Some(tpm), TpmState::Resumed) => {
                if let Err(e) = tpm.pcr_extend(pcr, digest) {
                    let why = format!("PCR {pcr} extend failed: {e}");
                    if Self::fatal(&e) {
                        self.fail(why.clone());
                    }
                    return Err(why);
                }
            }
            (_, TpmState::Failed(e)) => return Err(format!("the TPM is unusable: {e}")),
            (_, _) => {} // no TPM: logged only, and health says nothing is measured
        }
        let recnum = self.records.len();
        self.records.push(json!({
            "recnum": recnum,
            "pcr": pcr,
            "digests": [{"hashAlg": "sha256", "digest": hex(digest)}],
            "content_type": content_type,
            "content": content,
        }));
        Ok(())
    }

    /// The TPM, when it is usable (resumed, not failed): for attestation.
    pub fn tpm_mut(&mut self) -> Option<&mut Tpm<Crb>> {
        match self.state.get_mut() {
            TpmState::Resumed => self.tpm.get_mut().as_mut(),
            _ => None,
        }
    }

    /// The whole event log as a JSON array.
    pub fn log_json(&self) -> String {
        serde_json::to_string(&self.records).unwrap_or_else(|_| String::from("[]"))
    }

    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// Clean shutdown: TPM2_Shutdown(STATE), so the PCRs can be inspected after the VM ends
    /// (a fresh swtpm on the same state + TPM2_Startup(STATE)).
    pub fn shutdown(&mut self) {
        if let Some(tpm) = self.tpm.get_mut() {
            if let Err(e) = tpm.shutdown(StartupType::State) {
                log::warn!("TPM2_Shutdown(STATE) failed: {e}");
            }
        }
    }

    /// Why the TPM is not fully measured, if it is not.
    pub fn problem(&self) -> Option<String> {
        match &*self.state.borrow() {
            TpmState::Failed(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// The TPM's state for the health report: `absent`, `resumed` or `failed`. Probes the TPM
    /// first (see [`Measurements::probe`]), so a TPM that stopped answering shows within
    /// [`PROBE_INTERVAL_US`] plus the driver's command timeout.
    pub fn state_name(&self) -> &'static str {
        self.probe();
        match &*self.state.borrow() {
            TpmState::Absent => "absent",
            TpmState::Resumed => "resumed",
            TpmState::Failed(_) => "failed",
        }
    }
}
