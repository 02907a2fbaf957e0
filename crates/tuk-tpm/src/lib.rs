//! The TPM 2.0 commands tuk uses, built and parsed with the `tpm2-protocol` crate, over any
//! [`Transport`] (the kernel's CRB MMIO driver; a TCP socket to swtpm on the host).
//!
//! Contract: every command checks the response code; a TPM error is returned as
//! [`TpmError::Response`] with the raw code and its name, never ignored. Responses are
//! untrusted bytes: they are parsed with `tpm2-protocol`'s checked unmarshalers.
#![cfg_attr(not(test), no_std)]

use core::fmt;

use tpm2_protocol::basic::{TpmBuffer, TpmHandle};
use tpm2_protocol::data::{
    TpmAlgId, TpmRc, TpmRcBase, TpmSt, TpmSu, TpmaSession, TpmlDigestValues, TpmlPcrSelection,
    TpmsAuthCommand, TpmsPcrSelect, TpmsPcrSelection, TpmtHa, TpmuHa,
};
use tpm2_protocol::frame::{
    tpm_marshal_command, TpmFrame, TpmGetRandomCommand, TpmGetRandomResponse, TpmPcrExtendCommand,
    TpmPcrExtendResponse, TpmPcrReadCommand, TpmPcrReadResponse, TpmResponse, TpmShutdownCommand,
    TpmShutdownResponse, TpmStartupCommand, TpmStartupResponse, TpmUnmarshalBody,
};
use tpm2_protocol::TpmWriter;

/// Largest command or response this client exchanges (CRB buffers are 3968 bytes).
pub const MAX_FRAME: usize = 3968;
/// TPM_RS_PW: the password authorization session (empty password).
const TPM_RS_PW: u32 = 0x4000_0009;

/// Moves one command to the TPM and its response back.
pub trait Transport {
    /// Sends `command`, writes the response into `response`, returns its length.
    fn transact(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError>;
}

/// A transport failure (the TPM never answered properly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// The device did not become ready / respond in time.
    Timeout(&'static str),
    /// The device reported an error state or an impossible length.
    Device(&'static str),
    /// I/O failure on a host transport.
    Io,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartupType {
    /// TPM Reset: PCRs cleared.
    Clear,
    /// TPM Resume: PCRs saved by `Shutdown(State)` restored.
    State,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TpmError {
    Transport(TransportError),
    /// Building the command or parsing the response failed.
    Protocol(tpm2_protocol::TpmError),
    /// The TPM answered with a non-success response code.
    Response {
        code: u32,
    },
    /// The response was well-formed but not what the command must return.
    Unexpected(&'static str),
}

impl TpmError {
    /// The TPM response code, if the TPM refused the command.
    pub fn code(&self) -> Option<u32> {
        match self {
            TpmError::Response { code } => Some(*code),
            _ => None,
        }
    }
}

/// Names of the response codes tuk can meet (TPM 2.0 Part 2, 6.6).
fn rc_name(code: u32) -> &'static str {
    match code & 0xfff {
        0x100 => "TPM_RC_INITIALIZE (TPM not started: send TPM2_Startup first)",
        0x101 => "TPM_RC_FAILURE (TPM in failure mode)",
        0x103 => "TPM_RC_SEQUENCE",
        0x143 => "TPM_RC_COMMAND_CODE (command not supported)",
        0x149 => "TPM_RC_REBOOT (TPM needs a reset)",
        0x904..=0x90f if code & 0x900 == 0x900 => "TPM_RC_RETRY/TESTING/YIELDED (warning: retry)",
        0x084 | 0x0c4 | 0x1c4 => "TPM_RC_VALUE (bad parameter)",
        0x09d | 0x0dd | 0x1dd => "TPM_RC_HANDLE or TPM_RC_LOCALITY",
        _ => "see TPM 2.0 Part 2, section 6.6",
    }
}

impl fmt::Display for TpmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TpmError::Transport(TransportError::Timeout(what)) => write!(f, "TPM timeout: {what}"),
            TpmError::Transport(TransportError::Device(what)) => {
                write!(f, "TPM device error: {what}")
            }
            TpmError::Transport(TransportError::Io) => write!(f, "TPM I/O error"),
            TpmError::Protocol(e) => write!(f, "TPM protocol error: {e}"),
            TpmError::Response { code } => write!(f, "TPM returned {code:#x}: {}", rc_name(*code)),
            TpmError::Unexpected(what) => write!(f, "unexpected TPM response: {what}"),
        }
    }
}

impl core::error::Error for TpmError {}

impl From<tpm2_protocol::TpmError> for TpmError {
    fn from(e: tpm2_protocol::TpmError) -> Self {
        TpmError::Protocol(e)
    }
}

impl From<TransportError> for TpmError {
    fn from(e: TransportError) -> Self {
        TpmError::Transport(e)
    }
}

/// A TPM reached through a transport.
pub struct Tpm<T: Transport> {
    transport: T,
    command: [u8; MAX_FRAME],
    response: [u8; MAX_FRAME],
}

fn password_session() -> TpmsAuthCommand {
    TpmsAuthCommand {
        session_handle: TpmHandle::new(TPM_RS_PW),
        nonce: Default::default(),
        session_attributes: TpmaSession::empty(),
        hmac: Default::default(),
    }
}

fn pcr_selection(pcr: u32) -> Result<TpmlPcrSelection, TpmError> {
    if pcr >= 24 {
        return Err(TpmError::Unexpected("PCR index above 23"));
    }
    let mut bits = [0u8; 3];
    bits[(pcr / 8) as usize] = 1 << (pcr % 8);
    let mut list = TpmlPcrSelection::new();
    list.try_push(TpmsPcrSelection {
        hash: TpmAlgId::Sha256,
        pcr_select: TpmsPcrSelect::try_from(&bits[..])?,
    })?;
    Ok(list)
}

impl<T: Transport> Tpm<T> {
    pub fn new(transport: T) -> Self {
        Tpm {
            transport,
            command: [0; MAX_FRAME],
            response: [0; MAX_FRAME],
        }
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    fn run<C: TpmFrame, R: TpmUnmarshalBody>(
        &mut self,
        command: &C,
        authorized: bool,
    ) -> Result<R, TpmError> {
        let len = {
            let mut writer = TpmWriter::new(&mut self.command);
            if authorized {
                tpm_marshal_command(command, TpmSt::Sessions, &[password_session()], &mut writer)?;
            } else {
                tpm_marshal_command(command, TpmSt::NoSessions, &[], &mut writer)?;
            }
            writer.len()
        };
        let n = self
            .transport
            .transact(&self.command[..len], &mut self.response)?;
        let bytes = self
            .response
            .get(..n)
            .ok_or(TpmError::Unexpected("response longer than the buffer"))?;
        let response = TpmResponse::cast(bytes)?;
        match response.rc()? {
            TpmRc::Fmt0(TpmRcBase::Success) => Ok(response.unmarshal::<R>()?),
            _ => {
                let code = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
                Err(TpmError::Response { code })
            }
        }
    }

    /// TPM2_Startup.
    pub fn startup(&mut self, kind: StartupType) -> Result<(), TpmError> {
        let startup_type = match kind {
            StartupType::Clear => TpmSu::Clear,
            StartupType::State => TpmSu::State,
        };
        let _: TpmStartupResponse = self.run(
            &TpmStartupCommand {
                handles: [],
                startup_type,
            },
            false,
        )?;
        Ok(())
    }

    /// TPM2_Shutdown.
    pub fn shutdown(&mut self, kind: StartupType) -> Result<(), TpmError> {
        let shutdown_type = match kind {
            StartupType::Clear => TpmSu::Clear,
            StartupType::State => TpmSu::State,
        };
        let _: TpmShutdownResponse = self.run(
            &TpmShutdownCommand {
                handles: [],
                shutdown_type,
            },
            false,
        )?;
        Ok(())
    }

    /// TPM2_PCR_Extend of the SHA-256 bank of `pcr` with `digest`.
    pub fn pcr_extend(&mut self, pcr: u32, digest: &[u8; 32]) -> Result<(), TpmError> {
        let mut digests = TpmlDigestValues::new();
        digests.try_push(TpmtHa {
            hash_alg: TpmAlgId::Sha256,
            digest: TpmuHa::Digest(TpmBuffer::try_from(&digest[..])?),
        })?;
        let cmd = TpmPcrExtendCommand {
            handles: [TpmHandle::new(pcr)],
            digests,
        };
        let _: TpmPcrExtendResponse = self.run(&cmd, true)?;
        Ok(())
    }

    /// TPM2_PCR_Read of the SHA-256 bank of `pcr`.
    pub fn pcr_read(&mut self, pcr: u32) -> Result<[u8; 32], TpmError> {
        let cmd = TpmPcrReadCommand {
            handles: [],
            pcr_selection_in: pcr_selection(pcr)?,
        };
        let resp: TpmPcrReadResponse = self.run(&cmd, false)?;
        let value = resp
            .pcr_values
            .iter()
            .next()
            .ok_or(TpmError::Unexpected("PCR_Read returned no value"))?;
        <[u8; 32]>::try_from(&value[..])
            .map_err(|_| TpmError::Unexpected("PCR value is not 32 bytes"))
    }

    /// TPM2_GetRandom: fills `out` (several commands if needed).
    pub fn get_random(&mut self, out: &mut [u8]) -> Result<(), TpmError> {
        let mut filled = 0;
        while filled < out.len() {
            let want = (out.len() - filled).min(32) as u16;
            let cmd = TpmGetRandomCommand {
                handles: [],
                bytes_requested: want.into(),
            };
            let resp: TpmGetRandomResponse = self.run(&cmd, false)?;
            let got = &resp.random_bytes[..];
            if got.is_empty() || got.len() > usize::from(want) {
                return Err(TpmError::Unexpected(
                    "GetRandom returned no or too many bytes",
                ));
            }
            out[filled..filled + got.len()].copy_from_slice(got);
            filled += got.len();
        }
        Ok(())
    }
}
