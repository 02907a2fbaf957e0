//! The TPM 2.0 commands tuk uses, built and parsed with the `tpm2-protocol` crate, over any
//! [`Transport`] (the kernel's CRB MMIO driver; a TCP socket to swtpm on the host): the measured
//! launch's (Startup, Shutdown, PCR_Extend, PCR_Read, GetRandom) and attestation's (the
//! [`attest`] module: CreatePrimary of the EK and the AK, ReadPublic, FlushContext, the EK
//! certificate from NV, Quote, credential activation). No allocation: `no_std` without `alloc`.
//!
//! Contract: every command checks the response code; a TPM error is returned as
//! [`TpmError::Response`] with the raw code and its name, never ignored. Responses are
//! untrusted bytes: they are parsed with `tpm2-protocol`'s checked unmarshalers.
#![cfg_attr(not(test), no_std)]

use core::fmt;

pub mod attest;
pub use attest::{
    Bytes, EkAuthorization, KeyTemplate, NvPublic, Object, PolicySession, Quote,
    TPM_RH_ENDORSEMENT, TPM_RH_NULL, TPM_RH_OWNER,
};

use tpm2_protocol::basic::{TpmBuffer, TpmHandle};
use tpm2_protocol::data::{
    TpmAlgId, TpmRc, TpmRcBase, TpmSt, TpmSu, TpmaSession, TpmlDigestValues, TpmsAuthCommand,
    TpmtHa, TpmuHa,
};
use tpm2_protocol::frame::{
    tpm_marshal_command, TpmFrame, TpmGetRandomCommand, TpmGetRandomResponse, TpmPcrExtendCommand,
    TpmPcrExtendResponse, TpmPcrReadCommand, TpmPcrReadResponse, TpmResponse, TpmShutdownCommand,
    TpmShutdownResponse, TpmStartupCommand, TpmStartupResponse, TpmUnmarshalBody,
};
use tpm2_protocol::TpmWriter;

/// Largest command or response this client exchanges (CRB buffers are 3968 bytes).
pub const MAX_FRAME: usize = 3968;
/// TPM_RC_RETRY, TPM_RC_TESTING, TPM_RC_YIELDED: warnings that ask for the command again.
const RC_RETRY: u32 = 0x922;
const RC_TESTING: u32 = 0x90a;
const RC_YIELDED: u32 = 0x908;
/// How often one command is sent before a retry warning is returned as an error.
const MAX_ATTEMPTS: u32 = 16;
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

    /// The response code without the handle/session/parameter number of a format-1 error
    /// (`0x1df`, TPM_RC_INTEGRITY in parameter 1, gives `0x09f`, TPM_RC_INTEGRITY).
    pub fn base_code(&self) -> Option<u32> {
        self.code().map(|c| {
            if c & 0x80 != 0 {
                0x80 | (c & 0x3f)
            } else {
                c & 0xfff
            }
        })
    }
}

/// TPM_RC_INITIALIZE: a command before TPM2_Startup, or TPM2_Startup to a started TPM. tuk's
/// kernel reads it on its TPM2_Startup(STATE) as "started by the host" (docs/measurement.md).
pub const TPM_RC_INITIALIZE: u32 = 0x100;

/// A response code, decoded (TPM 2.0 Part 2, 6.6): its name, and for a format-1 error which
/// handle, session or parameter it is about.
struct Rc(u32);

/// Format-0 errors (TPM_RC_VER1 + n) and warnings (TPM_RC_WARN + n).
fn rc_format0_name(code: u32) -> Option<&'static str> {
    Some(match code {
        0x100 => {
            "TPM_RC_INITIALIZE (TPM2_Startup missing, or a TPM2_Startup to a TPM already started)"
        }
        0x101 => "TPM_RC_FAILURE (TPM in failure mode)",
        0x103 => "TPM_RC_SEQUENCE",
        0x10b => "TPM_RC_PRIVATE",
        0x119 => "TPM_RC_HMAC",
        0x120 => "TPM_RC_DISABLED",
        0x121 => "TPM_RC_EXCLUSIVE",
        0x124 => "TPM_RC_AUTH_TYPE",
        0x125 => "TPM_RC_AUTH_MISSING",
        0x126 => "TPM_RC_POLICY",
        0x127 => "TPM_RC_PCR",
        0x128 => "TPM_RC_PCR_CHANGED",
        0x12e => "TPM_RC_TOO_MANY_CONTEXTS",
        0x12f => "TPM_RC_AUTH_UNAVAILABLE (the object cannot be authorized this way)",
        0x130 => "TPM_RC_REBOOT (TPM needs a reset)",
        0x131 => "TPM_RC_UNBALANCED",
        0x142 => "TPM_RC_COMMAND_SIZE",
        0x143 => "TPM_RC_COMMAND_CODE (command not supported)",
        0x144 => "TPM_RC_AUTHSIZE",
        0x145 => "TPM_RC_AUTH_CONTEXT",
        0x146 => "TPM_RC_NV_RANGE",
        0x147 => "TPM_RC_NV_SIZE",
        0x148 => "TPM_RC_NV_LOCKED",
        0x149 => "TPM_RC_NV_AUTHORIZATION",
        0x14a => "TPM_RC_NV_UNINITIALIZED",
        0x14b => "TPM_RC_NV_SPACE",
        0x14c => "TPM_RC_NV_DEFINED",
        0x150 => "TPM_RC_BAD_CONTEXT",
        0x151 => "TPM_RC_CPHASH",
        0x152 => "TPM_RC_PARENT",
        0x153 => "TPM_RC_NEEDS_TEST",
        0x154 => "TPM_RC_NO_RESULT",
        0x155 => "TPM_RC_SENSITIVE",
        0x901 => "TPM_RC_CONTEXT_GAP",
        0x902 => "TPM_RC_OBJECT_MEMORY (too many loaded objects: flush some)",
        0x903 => "TPM_RC_SESSION_MEMORY (too many sessions: flush some)",
        0x904 => "TPM_RC_MEMORY",
        0x905 => "TPM_RC_SESSION_HANDLES",
        0x906 => "TPM_RC_OBJECT_HANDLES",
        0x907 => "TPM_RC_LOCALITY",
        0x908 => "TPM_RC_YIELDED (warning: retry)",
        0x909 => "TPM_RC_CANCELED",
        0x90a => "TPM_RC_TESTING (warning: retry)",
        0x920 => "TPM_RC_NV_RATE",
        0x921 => "TPM_RC_LOCKOUT (dictionary attack lockout)",
        0x922 => "TPM_RC_RETRY (warning: retry)",
        0x923 => "TPM_RC_NV_UNAVAILABLE",
        _ => return None,
    })
}

/// Format-1 errors (TPM_RC_FMT1 + n), by n.
fn rc_format1_name(n: u32) -> Option<&'static str> {
    Some(match n {
        0x01 => "TPM_RC_ASYMMETRIC",
        0x02 => "TPM_RC_ATTRIBUTES",
        0x03 => "TPM_RC_HASH",
        0x04 => "TPM_RC_VALUE (bad parameter)",
        0x05 => "TPM_RC_HIERARCHY",
        0x07 => "TPM_RC_KEY_SIZE",
        0x08 => "TPM_RC_MGF",
        0x09 => "TPM_RC_MODE",
        0x0a => "TPM_RC_TYPE",
        0x0b => "TPM_RC_HANDLE",
        0x0c => "TPM_RC_KDF",
        0x0d => "TPM_RC_RANGE",
        0x0e => "TPM_RC_AUTH_FAIL (wrong authorization)",
        0x0f => "TPM_RC_NONCE",
        0x10 => "TPM_RC_PP",
        0x12 => "TPM_RC_SCHEME",
        0x15 => "TPM_RC_SIZE",
        0x16 => "TPM_RC_SYMMETRIC",
        0x17 => "TPM_RC_TAG",
        0x18 => "TPM_RC_SELECTOR",
        0x1a => "TPM_RC_INSUFFICIENT",
        0x1b => "TPM_RC_SIGNATURE",
        0x1c => "TPM_RC_KEY",
        0x1d => "TPM_RC_POLICY_FAIL",
        0x1f => "TPM_RC_INTEGRITY (integrity check failed)",
        0x20 => "TPM_RC_TICKET",
        0x21 => "TPM_RC_RESERVED_BITS",
        0x22 => "TPM_RC_BAD_AUTH",
        0x23 => "TPM_RC_EXPIRED",
        0x24 => "TPM_RC_POLICY_CC",
        0x25 => "TPM_RC_BINDING",
        0x26 => "TPM_RC_CURVE",
        0x27 => "TPM_RC_ECC_POINT",
        _ => return None,
    })
}

impl fmt::Display for Rc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.0;
        let other = "see TPM 2.0 Part 2, section 6.6";
        if code & 0x80 == 0 {
            return f.write_str(rc_format0_name(code & 0xfff).unwrap_or(other));
        }
        f.write_str(rc_format1_name(code & 0x3f).unwrap_or(other))?;
        let n = (code >> 8) & 0xf;
        if code & 0x40 != 0 {
            write!(f, " in parameter {n}")
        } else if n & 0x8 != 0 {
            write!(f, " in session {}", n & 0x7)
        } else if n != 0 {
            write!(f, " of handle {n}")
        } else {
            Ok(())
        }
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
            TpmError::Response { code } => write!(f, "TPM returned {code:#x}: {}", Rc(*code)),
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
        if authorized {
            self.run_with(command, &[password_session()])
        } else {
            self.run_with(command, &[])
        }
    }

    /// Sends `command` with `sessions` (none: `TPM_ST_NO_SESSIONS`) and parses the response.
    fn run_with<C: TpmFrame, R: TpmUnmarshalBody>(
        &mut self,
        command: &C,
        sessions: &[TpmsAuthCommand],
    ) -> Result<R, TpmError> {
        let n = self.exchange(command, sessions)?;
        Ok(TpmResponse::cast(&self.response[..n])?.unmarshal::<R>()?)
    }

    /// Sends `command`, checks the response code; returns the response's length in
    /// `self.response`.
    fn exchange<C: TpmFrame>(
        &mut self,
        command: &C,
        sessions: &[TpmsAuthCommand],
    ) -> Result<usize, TpmError> {
        let len = {
            let mut writer = TpmWriter::new(&mut self.command);
            let tag = if sessions.is_empty() {
                TpmSt::NoSessions
            } else {
                TpmSt::Sessions
            };
            tpm_marshal_command(command, tag, sessions, &mut writer)?;
            writer.len()
        };
        // TPM_RC_RETRY, TPM_RC_TESTING and TPM_RC_YIELDED mean "send the same command again"
        // (TPM 2.0 Part 2, 6.6.3); a TPM may answer so while it self-tests an algorithm on
        // first use. A bounded number of immediate retries.
        let mut attempts = 0;
        let (n, code) = loop {
            let n = self
                .transport
                .transact(&self.command[..len], &mut self.response)?;
            if !(10..=self.response.len()).contains(&n) {
                return Err(TpmError::Unexpected("response length out of range"));
            }
            // The code is read before anything else is parsed: a code tpm2-protocol does not
            // know is still a TPM error with its number, not a parse failure.
            let r = &self.response;
            let code = u32::from_be_bytes([r[6], r[7], r[8], r[9]]);
            attempts += 1;
            if matches!(code, RC_RETRY | RC_TESTING | RC_YIELDED) && attempts < MAX_ATTEMPTS {
                continue;
            }
            break (n, code);
        };
        let bytes = &self.response[..n];
        if code != 0 {
            return Err(TpmError::Response { code });
        }
        match TpmResponse::cast(bytes)?.rc()? {
            TpmRc::Fmt0(TpmRcBase::Success) => Ok(n),
            _ => Err(TpmError::Response { code }),
        }
    }

    /// The parameter area of the last response (after the header, `handles` handles and, for a
    /// response with sessions, the parameter size), up to the sessions.
    fn response_parameters(&self, n: usize, handles: usize) -> Result<&[u8], TpmError> {
        let bytes = &self.response[..n];
        let start = 10 + 4 * handles;
        let sessions = u16::from_be_bytes([bytes[0], bytes[1]]) == 0x8002;
        let params = if sessions {
            let size = bytes
                .get(start..start + 4)
                .ok_or(TpmError::Unexpected("response without a parameter size"))?;
            let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize;
            bytes.get(start + 4..start + 4 + size)
        } else {
            bytes.get(start..)
        };
        params.ok_or(TpmError::Unexpected("response parameters out of bounds"))
    }

    /// TPM2_Startup. On a TPM that is already started (by tuk's launcher, which hands QEMU a
    /// started vTPM) the TPM answers [`TPM_RC_INITIALIZE`] and nothing changes.
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
            pcr_selection_in: attest::sha256_selection(&[pcr])?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_codes_are_named_with_their_position() {
        let msg = |code| TpmError::Response { code }.to_string();
        assert!(msg(0x100).contains("TPM_RC_INITIALIZE"));
        assert!(msg(0x1df).contains("TPM_RC_INTEGRITY"), "{}", msg(0x1df));
        assert!(msg(0x1df).contains("parameter 1"), "{}", msg(0x1df));
        assert!(msg(0x98e).contains("TPM_RC_AUTH_FAIL"), "{}", msg(0x98e));
        assert!(msg(0x98e).ends_with("in session 1"), "{}", msg(0x98e));
        assert!(
            msg(0x18b).contains("TPM_RC_HANDLE of handle 1"),
            "{}",
            msg(0x18b)
        );
        assert!(msg(0x12f).contains("TPM_RC_AUTH_UNAVAILABLE"));
        assert!(msg(0x922).contains("TPM_RC_RETRY"));
        assert!(msg(0x7ff).contains("section 6.6"));
        assert_eq!(TpmError::Response { code: 0x1df }.base_code(), Some(0x9f));
        assert_eq!(TpmError::Response { code: 0x12f }.base_code(), Some(0x12f));
    }

    #[test]
    fn templates_marshal() {
        use tpm2_protocol::TpmMarshal;
        for t in [
            KeyTemplate::EkRsa2048,
            KeyTemplate::EkEccP256,
            KeyTemplate::EkEccP384,
            KeyTemplate::Ak,
        ] {
            let mut buf = [0u8; 1024];
            let mut w = TpmWriter::new(&mut buf);
            t.public().unwrap().marshal(&mut w).unwrap();
            assert!(w.len() > 20, "{t:?}");
        }
        // The AK template, byte for byte (docs/attestation.md): ECC, SHA-256, attributes
        // 0x00050072, empty policy, symmetric NULL, ECDSA-SHA256, P-256, KDF NULL, empty x, y.
        let mut buf = [0u8; 64];
        let mut w = TpmWriter::new(&mut buf);
        KeyTemplate::Ak.public().unwrap().marshal(&mut w).unwrap();
        let n = w.len();
        assert_eq!(
            &buf[..n],
            &[
                0x00, 0x23, 0x00, 0x0b, 0x00, 0x05, 0x00, 0x72, 0x00, 0x00, 0x00, 0x10, 0x00, 0x18,
                0x00, 0x0b, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00
            ]
        );
    }

    #[test]
    fn bytes_are_bounded() {
        assert_eq!(&Bytes::<4>::from_slice(&[1, 2, 3]).unwrap()[..], &[1, 2, 3]);
        assert!(Bytes::<2>::from_slice(&[1, 2, 3]).is_err());
        assert_eq!(
            format!("{:?}", Bytes::<4>::from_slice(&[0xab, 1]).unwrap()),
            "ab01"
        );
    }

    #[test]
    fn pcr_selections() {
        let sel = attest::sha256_selection(&[4, 5, 8, 9, 10]).unwrap();
        assert_eq!(&sel[0].pcr_select[..], &[0x30, 0x07, 0x00]);
        assert!(attest::sha256_selection(&[24]).is_err());
    }
}
