//! Static measurement into the vTPM: every extension of a PCR goes with exactly one record in
//! the event log (TCG Canonical Event Log, CEL-JSON; docs/measurement.md).
//!
//! The log starts with the launcher's records (PCR 4: kernel image, PCR 5: boot
//! configuration), which it measured before the first guest instruction and handed over in
//! the boot pack; the kernel resumes the TPM (`TPM2_Startup(STATE)`) so those PCR values
//! survive, then appends its own: PCR 8 (trust policy) and PCR 9 (each component, before it is
//! instantiated). A verifier replays the log against a quote; nothing here needs to be
//! trusted for that, only the TPM.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::{json, Value};
use tuk_measure::hex;
use tuk_tpm::{StartupType, Tpm};

use crate::drivers::tpm_crb::Crb;

pub const PCR_POLICY: u32 = 8;
pub const PCR_COMPONENTS: u32 = 9;
/// Run-time integrity events: violations found by re-measurement and the responses to them.
pub const PCR_INTEGRITY: u32 = 10;

/// How the TPM came up.
#[derive(Clone, Debug)]
pub enum TpmState {
    /// No TPM device: nothing is measured (the health report says so).
    Absent,
    /// Resumed: the launcher's PCR 4/5 measurements are intact.
    Resumed,
    /// Resume was refused (no launcher measurement to resume); started clear, so PCR 4/5 are
    /// empty and the log's launcher records will not replay. The reason is kept.
    StartedClear(String),
    /// The TPM failed; measurements cannot be made.
    Failed(String),
}

pub struct Measurements {
    tpm: Option<Tpm<Crb>>,
    pub state: TpmState,
    records: Vec<Value>,
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
                tpm: None,
                state: TpmState::Absent,
                records,
            };
        };
        let mut tpm = Tpm::new(crb);
        let state = match tpm.startup(StartupType::State) {
            Ok(()) => TpmState::Resumed,
            Err(resume) => {
                log::error!(
                    "TPM2_Startup(STATE) refused ({resume}): the launcher's PCR 4/5 measurements \
                     are lost; starting clear"
                );
                match tpm.startup(StartupType::Clear) {
                    Ok(()) => TpmState::StartedClear(resume.to_string()),
                    Err(e) => TpmState::Failed(format!("TPM2_Startup failed: {e}")),
                }
            }
        };
        if let TpmState::Failed(e) = &state {
            log::error!("{e}");
        }
        Measurements {
            tpm: Some(tpm),
            state,
            records,
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
        match (&mut self.tpm, &self.state) {
            (Some(tpm), TpmState::Resumed | TpmState::StartedClear(_)) => tpm
                .pcr_extend(pcr, digest)
                .map_err(|e| format!("PCR {pcr} extend failed: {e}"))?,
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

    /// The TPM, when it is usable (resumed or started clear): for attestation.
    pub fn tpm_mut(&mut self) -> Option<&mut Tpm<Crb>> {
        match self.state {
            TpmState::Resumed | TpmState::StartedClear(_) => self.tpm.as_mut(),
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
        if let Some(tpm) = &mut self.tpm {
            if let Err(e) = tpm.shutdown(StartupType::State) {
                log::warn!("TPM2_Shutdown(STATE) failed: {e}");
            }
        }
    }

    /// Why the TPM is not fully measured, if it is not.
    pub fn problem(&self) -> Option<&str> {
        match &self.state {
            TpmState::StartedClear(e) | TpmState::Failed(e) => Some(e),
            _ => None,
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            TpmState::Absent => "absent",
            TpmState::Resumed => "resumed",
            TpmState::StartedClear(_) => "started-clear",
            TpmState::Failed(_) => "failed",
        }
    }
}
