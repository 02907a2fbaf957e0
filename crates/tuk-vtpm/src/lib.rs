//! One software TPM (swtpm) per VM, and the launcher's measured launch on it.
//!
//! docs/measurement.md has the plan; this crate is its host-side machinery:
//!
//! 1. [`manufacture`] (first use of a state directory): `swtpm_setup` creates the TPM state with
//!    an RSA and an ECC endorsement key, their EK certificates and a platform certificate, all
//!    issued by `swtpm_localca` from a CA directory ([`default_ca_dir`], shared by every VM of
//!    the user so one CA certificate verifies them all), then locks the NV indices.
//! 2. [`measured_launch`] (every boot, before QEMU exists): swtpm on the state (any stored
//!    volatile state removed first), CMD_INIT, TPM2_Startup(CLEAR), TPM2_PCR_Extend for each
//!    measurement, TPM2_Shutdown(STATE), then CMD_STORE_VOLATILE: the *running* TPM (started,
//!    PCRs as measured) is written to `tpm2-00.volatilestate`, and swtpm is stopped
//!    (CMD_SHUTDOWN).
//! 3. [`spawn_for_qemu`]: a fresh swtpm on the same state with only a control socket, for
//!    QEMU's `-tpmdev emulator`; it exits with QEMU (`--terminate`). QEMU's CMD_INIT (flags 0)
//!    restores the volatile state, so the TPM is already started when the guest runs: the
//!    host, not the guest, sent TPM2_Startup. Any guest TPM2_Startup (CLEAR or STATE) is
//!    answered TPM_RC_INITIALIZE and cannot reset PCR 4/5 (docs/platform.md has the swtpm
//!    facts this rests on; docs/measurement.md the contract).
//!
//! The TPM commands themselves are `tuk-tpm`'s (the same code the kernel's CRB driver uses);
//! this crate adds the socket [`Transport`](tuk_tpm::Transport) and swtpm's control channel.
//!
//! Layout under the VM's state directory ([`VtpmPaths`]): `tpm/` (swtpm state,
//! `tpm2-00.permall`), `tpm-config/` (the swtpm_setup and swtpm_localca configuration written
//! for this VM), `tpm-certs/` (copies of the EK certificates), `swtpm.log` (swtpm_setup and both
//! swtpm runs), and the sockets (`tpm/*.sock`, or, when the state directory's path is too long
//! for a Unix socket, a 0700 directory with a random name under the temporary directory).
//! Every directory is created 0700 and checked ([`private_dir`]); swtpm writes its state files
//! 0600 (`--tpmstate mode=0600`, and the files swtpm_setup wrote are set to 0600).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub use tuk_tpm::{StartupType, Tpm, TpmError, Transport, TransportError};

/// The file swtpm keeps a TPM 2.0's permanent state in; its presence means "manufactured".
pub const STATE_FILE: &str = "tpm2-00.permall";
/// How long swtpm gets to open its sockets, answer, or exit.
pub const SWTPM_TIMEOUT: Duration = Duration::from_secs(10);
/// The PCR bank tuk uses (the only one swtpm_setup activates for tuk).
pub const PCR_BANK: &str = "sha256";
/// Longest Unix socket path we use (`sun_path` is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 100;

/// Everything that can go wrong with the vTPM. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
pub enum VtpmError {
    #[error("`{tool}` is not installed (not found in PATH): every tuk VM gets a vTPM; install it with `apt-get install swtpm swtpm-tools`")]
    ToolMissing { tool: &'static str },

    #[error("{what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: io::Error,
    },

    #[error("{path} contains a comma or a newline, which swtpm's and QEMU's option syntax cannot carry; use another state directory")]
    BadPath { path: PathBuf },

    #[error("swtpm_setup failed ({status}) to create the vTPM in {dir}; its output is in {log}")]
    SetupFailed {
        status: ExitStatus,
        dir: PathBuf,
        log: PathBuf,
    },

    #[error("swtpm ({phase}) exited early with {status}; its output is in {log}")]
    SwtpmDied {
        phase: &'static str,
        status: ExitStatus,
        log: PathBuf,
    },

    #[error("swtpm ({phase}) did not {what} within {timeout:?}; its output is in {log}")]
    SwtpmTimeout {
        phase: &'static str,
        what: &'static str,
        timeout: Duration,
        log: PathBuf,
    },

    #[error("swtpm ({phase}) control channel: {what}")]
    Ctrl { phase: &'static str, what: String },

    #[error("TPM command {command} failed: {cause}")]
    Tpm {
        command: &'static str,
        cause: TpmError,
    },

    #[error("refusing to use {path}: {reason}; remove it (or pick another state directory with --state-dir) so tuk can create it privately")]
    UnsafeDir { path: PathBuf, reason: String },
}

impl VtpmError {
    fn io(what: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            cause,
        }
    }
}

/// The swtpm programs, found in `PATH`.
#[derive(Clone, Debug)]
pub struct Tools {
    pub swtpm: PathBuf,
    pub swtpm_setup: PathBuf,
    pub swtpm_localca: PathBuf,
}

impl Tools {
    /// Finds `swtpm`, `swtpm_setup` and `swtpm_localca`, or says which package is missing.
    pub fn find() -> Result<Tools, VtpmError> {
        Ok(Tools {
            swtpm: find_in_path("swtpm")?,
            swtpm_setup: find_in_path("swtpm_setup")?,
            swtpm_localca: find_in_path("swtpm_localca")?,
        })
    }
}

fn find_in_path(tool: &'static str) -> Result<PathBuf, VtpmError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or(VtpmError::ToolMissing { tool })
}

/// The CA that issues every vTPM's EK and platform certificates: `$TUK_VTPM_CA_DIR`, else
/// `$XDG_DATA_HOME/tuk/vtpm-ca`, else `~/.local/share/tuk/vtpm-ca`. `swtpm_localca` creates
/// it on first use: `swtpm-localca-rootca-cert.pem` (the root a verifier trusts) and
/// `issuercert.pem` (the intermediate that signs the EK certificates; the TPM does not store
/// it, so a verifier needs it too). The private keys stay in this directory (mode 0700).
pub fn default_ca_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TUK_VTPM_CA_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("tuk-user-data"));
    data.join("tuk").join("vtpm-ca")
}

/// The root CA certificate a verifier trusts, inside a CA directory.
pub fn ca_root_cert(ca_dir: &Path) -> PathBuf {
    ca_dir.join("swtpm-localca-rootca-cert.pem")
}

/// The intermediate certificate that signs EK certificates, inside a CA directory.
pub fn ca_issuer_cert(ca_dir: &Path) -> PathBuf {
    ca_dir.join("issuercert.pem")
}

/// Where one VM's vTPM lives, all under its state directory.
#[derive(Clone, Debug)]
pub struct VtpmPaths {
    /// swtpm's state directory (`<state>/tpm`).
    pub state: PathBuf,
    /// The configuration files written for swtpm_setup (`<state>/tpm-config`).
    pub config: PathBuf,
    /// Copies of the EK certificates (`<state>/tpm-certs`, DER: `ek-rsa2048.crt`,
    /// `ek-secp384r1.crt`).
    pub certs: PathBuf,
    /// swtpm_setup's and swtpm's output, appended (`<state>/swtpm.log`).
    pub log: PathBuf,
    /// The measured launch's control and command sockets.
    pub launch_ctrl: PathBuf,
    pub launch_data: PathBuf,
    /// The control socket QEMU connects to (`-chardev socket,path=...`).
    pub qemu_ctrl: PathBuf,
}

impl VtpmPaths {
    pub fn new(state_dir: &Path) -> Result<VtpmPaths, VtpmError> {
        let bad = |s: &str| s.contains(',') || s.contains('\n');
        if bad(&state_dir.to_string_lossy()) {
            return Err(VtpmError::BadPath {
                path: state_dir.to_owned(),
            });
        }
        let state = state_dir.join("tpm");
        // Unix socket paths are limited to ~108 bytes; a deep state directory gets its sockets
        // in a short per-directory folder under the temporary directory instead.
        let probe = state.join("launch-ctrl.sock");
        let sockets = if probe.as_os_str().len() <= MAX_SOCKET_PATH {
            state.clone()
        } else {
            // Not a predictable name (another user could pre-create it): a new 0700 directory
            // with a random name, ours by construction.
            let short = private_random_dir(&std::env::temp_dir(), "tuk-vtpm-")?;
            if short.join("launch-ctrl.sock").as_os_str().len() > MAX_SOCKET_PATH
                || bad(&short.to_string_lossy())
            {
                let _ = fs::remove_dir(&short);
                return Err(VtpmError::BadPath { path: short });
            }
            short
        };
        Ok(VtpmPaths {
            config: state_dir.join("tpm-config"),
            certs: state_dir.join("tpm-certs"),
            log: state_dir.join("swtpm.log"),
            launch_ctrl: sockets.join("launch-ctrl.sock"),
            launch_data: sockets.join("launch-data.sock"),
            qemu_ctrl: sockets.join("swtpm.sock"),
            state,
        })
    }

    /// True once [`manufacture`] has completed for this state.
    pub fn manufactured(&self) -> bool {
        self.state.join(STATE_FILE).is_file()
    }

    fn socket_dir(&self) -> &Path {
        self.qemu_ctrl.parent().unwrap_or(&self.state)
    }

    fn open_log(&self) -> Result<File, VtpmError> {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.log)
            .map_err(|e| VtpmError::io("cannot open", &self.log, e))
    }
}

/// The effective user id of this process (the owner of `/proc/self`).
fn our_uid() -> Result<u32, VtpmError> {
    fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| VtpmError::io("cannot find out our user id from", "/proc/self", e))
}

/// Checks that `path` is a directory we can keep secrets in: not a symbolic link, owned by
/// this user, no access for group or others.
pub fn check_private_dir(path: &Path) -> Result<(), VtpmError> {
    let unsafe_dir = |reason: String| VtpmError::UnsafeDir {
        path: path.to_owned(),
        reason,
    };
    let meta = fs::symlink_metadata(path).map_err(|e| VtpmError::io("cannot inspect", path, e))?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    let uid = our_uid()?;
    if meta.uid() != uid {
        return Err(unsafe_dir(format!(
            "it belongs to uid {}, not to us (uid {uid})",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(unsafe_dir(format!(
            "its mode is {mode:04o}; it must give no access to group or others (0700)"
        )));
    }
    Ok(())
}

/// Creates `path` (and missing parents) with mode 0700, or accepts it if it exists, then checks
/// it with [`check_private_dir`]. Existing parents are not checked: the caller decides how far
/// up privacy is needed (see tuk-launcher's state directory).
pub fn private_dir(path: &Path) -> Result<(), VtpmError> {
    match fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| VtpmError::io("cannot create", path, e))?;
        }
        Err(e) => return Err(VtpmError::io("cannot inspect", path, e)),
    }
    check_private_dir(path)
}

/// A new directory under `parent`, named `prefix` + 16 random hex digits, mode 0700 (created
/// exclusively: never one that existed).
pub fn private_random_dir(parent: &Path, prefix: &str) -> Result<PathBuf, VtpmError> {
    let mut last = None;
    for _ in 0..16 {
        let mut bytes = [0u8; 8];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| VtpmError::io("cannot read", "/dev/urandom", e))?;
        let dir = parent.join(format!("{prefix}{:016x}", u64::from_le_bytes(bytes)));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                check_private_dir(&dir)?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(VtpmError::io("cannot create", &dir, e)),
        }
    }
    Err(VtpmError::io(
        "cannot create a fresh directory in",
        parent,
        last.unwrap_or_else(|| io::Error::other("no free name")),
    ))
}

/// Sets every regular file directly in `dir` to mode 0600.
fn files_private(dir: &Path) -> Result<(), VtpmError> {
    let entries = fs::read_dir(dir).map_err(|e| VtpmError::io("cannot list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| VtpmError::io("cannot list", dir, e))?;
        let path = entry.path();
        let meta =
            fs::symlink_metadata(&path).map_err(|e| VtpmError::io("cannot inspect", &path, e))?;
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| VtpmError::io("cannot make private", &path, e))?;
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), VtpmError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(VtpmError::io("cannot remove", path, e)),
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), VtpmError> {
    fs::write(path, text).map_err(|e| VtpmError::io("cannot write", path, e))
}

/// What [`manufacture`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manufactured {
    /// The state existed already.
    Existing,
    /// swtpm_setup created it now.
    Created,
}

/// Creates the vTPM state on first use (a no-op when `paths.state` holds one): EKs with
/// certificates from `ca_dir`'s local CA, a platform certificate, NV locked, SHA-256 bank only.
/// Atomic: swtpm_setup works in `tpm.partial/`, which is renamed to `tpm/` only on success, so
/// an interrupted setup is redone rather than leaving a TPM without certificates.
pub fn manufacture(
    tools: &Tools,
    paths: &VtpmPaths,
    ca_dir: &Path,
) -> Result<Manufactured, VtpmError> {
    if paths.manufactured() {
        return Ok(Manufactured::Existing);
    }
    if ca_dir.to_string_lossy().contains(char::is_whitespace) {
        // swtpm-localca.conf is `key = value` lines; it cannot carry spaces in values.
        return Err(VtpmError::BadPath {
            path: ca_dir.to_owned(),
        });
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(ca_dir)
        .map_err(|e| VtpmError::io("cannot create the vTPM CA directory", ca_dir, e))?;
    for dir in [&paths.config, &paths.certs] {
        private_dir(dir)?;
    }
    let ca = ca_dir.display();
    let localca_conf = paths.config.join("swtpm-localca.conf");
    let localca_options = paths.config.join("swtpm-localca.options");
    let setup_conf = paths.config.join("swtpm_setup.conf");
    write_file(
        &localca_conf,
        &format!(
            "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n"
        ),
    )?;
    write_file(
        &localca_options,
        "--platform-manufacturer tuk\n--platform-version 2.1\n--platform-model tuk-microvm\n",
    )?;
    write_file(
        &setup_conf,
        &format!(
            "create_certs_tool = {}\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\nactive_pcr_banks = {PCR_BANK}\n",
            tools.swtpm_localca.display(),
            localca_conf.display(),
            localca_options.display()
        ),
    )?;

    let partial = paths.state.with_extension("partial");
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(|e| VtpmError::io("cannot remove", &partial, e))?;
    }
    private_dir(&partial)?;
    let log = paths.open_log()?;
    let log2 = log
        .try_clone()
        .map_err(|e| VtpmError::io("cannot open", &paths.log, e))?;
    let mut args: Vec<OsString> = vec!["--tpm2".into(), "--tpmstate".into()];
    args.push(partial.clone().into());
    for a in [
        "--create-ek-cert",
        "--create-platform-cert",
        "--lock-nvram",
        "--pcr-banks",
        PCR_BANK,
        "--config",
    ] {
        args.push(a.into());
    }
    args.push(setup_conf.into());
    args.push("--write-ek-cert-files".into());
    args.push(paths.certs.clone().into());
    let status = Command::new(&tools.swtpm_setup)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .status()
        .map_err(|e| VtpmError::io("cannot run", &tools.swtpm_setup, e))?;
    if !status.success() || !partial.join(STATE_FILE).is_file() {
        return Err(VtpmError::SetupFailed {
            status,
            dir: partial,
            log: paths.log.clone(),
        });
    }
    if paths.state.exists() {
        // Left over without a state file (sockets of an earlier failed start): replace it.
        fs::remove_dir_all(&paths.state)
            .map_err(|e| VtpmError::io("cannot remove", &paths.state, e))?;
    }
    // swtpm_setup writes the state 0640: it holds the EPS (the EK and AK), so 0600.
    files_private(&partial)?;
    files_private(&paths.certs)?;
    fs::rename(&partial, &paths.state)
        .map_err(|e| VtpmError::io("cannot move the new vTPM state to", &paths.state, e))?;
    Ok(Manufactured::Created)
}

/// Where a swtpm channel listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// Bound to this loopback address.
    Tcp(SocketAddr),
}

impl Endpoint {
    fn option(&self) -> String {
        match self {
            Endpoint::Unix(p) => format!("type=unixio,path={}", p.display()),
            Endpoint::Tcp(a) => format!("type=tcp,port={},bindaddr={}", a.port(), a.ip()),
        }
    }

    fn connect(&self) -> io::Result<Stream> {
        match self {
            Endpoint::Unix(p) => UnixStream::connect(p).map(Stream::Unix),
            Endpoint::Tcp(a) => TcpStream::connect(a).map(Stream::Tcp),
        }
    }
}

/// A connection to swtpm.
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s
                .set_read_timeout(Some(t))
                .and_then(|()| s.set_write_timeout(Some(t))),
            Stream::Tcp(s) => s
                .set_read_timeout(Some(t))
                .and_then(|()| s.set_write_timeout(Some(t))),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// TPM commands over swtpm's command channel: the raw command bytes out, the response
/// (10-byte header with its size, then the rest) back.
pub struct SocketTransport {
    stream: Stream,
    /// The last I/O error, for messages (`TransportError::Io` carries no detail).
    pub last_error: Option<io::Error>,
}

impl SocketTransport {
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            last_error: None,
        }
    }

    fn exchange(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.stream.write_all(command).map_err(|e| self.failed(e))?;
        if response.len() < 10 {
            return Err(TransportError::Device("response buffer below 10 bytes"));
        }
        self.stream
            .read_exact(&mut response[..10])
            .map_err(|e| self.failed(e))?;
        let size =
            u32::from_be_bytes([response[2], response[3], response[4], response[5]]) as usize;
        if !(10..=response.len()).contains(&size) {
            return Err(TransportError::Device("impossible response size"));
        }
        self.stream
            .read_exact(&mut response[10..size])
            .map_err(|e| self.failed(e))?;
        Ok(size)
    }

    fn failed(&mut self, e: io::Error) -> TransportError {
        let timeout = matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        );
        self.last_error = Some(e);
        if timeout {
            TransportError::Timeout("swtpm did not answer")
        } else {
            TransportError::Io
        }
    }
}

impl Transport for SocketTransport {
    fn transact(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.exchange(command, response)
    }
}

/// swtpm's control channel (swtpm's `tpm_ioctl.h`: big-endian u32 command codes).
pub struct Ctrl {
    stream: Stream,
    phase: &'static str,
}

/// Control-channel command codes.
pub mod ctrl_cmd {
    pub const GET_CAPABILITY: u32 = 1;
    pub const INIT: u32 = 2;
    pub const SHUTDOWN: u32 = 3;
    pub const STORE_VOLATILE: u32 = 10;
}

/// swtpm's stored running TPM (CMD_STORE_VOLATILE), inside [`VtpmPaths::state`]. Restored by
/// every CMD_INIT while it exists (swtpm 0.7.1 restores it even under CMD_INIT's
/// delete-volatile flag, which removes the file only after loading it).
pub const VOLATILE_FILE: &str = "tpm2-00.volatilestate";

impl Ctrl {
    fn call(&mut self, cmd: u32, payload: &[u8], name: &str) -> Result<(), VtpmError> {
        let mut msg = cmd.to_be_bytes().to_vec();
        msg.extend_from_slice(payload);
        let mut result = [0u8; 4];
        self.stream
            .write_all(&msg)
            .and_then(|()| self.stream.read_exact(&mut result))
            .map_err(|e| VtpmError::Ctrl {
                phase: self.phase,
                what: format!("{name}: {e}"),
            })?;
        match u32::from_be_bytes(result) {
            0 => Ok(()),
            rc => Err(VtpmError::Ctrl {
                phase: self.phase,
                what: format!("{name} returned TPM result {rc:#x}"),
            }),
        }
    }

    /// CMD_INIT (flags 0, as QEMU sends it): power the TPM on. With a stored volatile state
    /// (`tpm2-00.volatilestate`) swtpm continues from it, TPM already started; without, from
    /// the permanent state, and the TPM needs TPM2_Startup (STATE resumes a
    /// TPM2_Shutdown(STATE), CLEAR resets). A host-side swtpm ([`Swtpm::spawn`] with a command
    /// channel) has had the volatile state removed, so it is the latter. This is when swtpm
    /// locks its state directory: a second swtpm on the same state starts fine and fails only
    /// here (result 0x9, "Could not lock access to lockfile" in its log).
    pub fn init(&mut self) -> Result<(), VtpmError> {
        self.call(
            ctrl_cmd::INIT,
            &0u32.to_be_bytes(),
            "CMD_INIT (if the result is 0x9, another swtpm may be using this state)",
        )
    }

    /// CMD_STORE_VOLATILE: writes the running TPM's volatile state (started, PCR values,
    /// loaded objects) to [`VOLATILE_FILE`]; every later CMD_INIT continues from it.
    pub fn store_volatile(&mut self) -> Result<(), VtpmError> {
        self.call(ctrl_cmd::STORE_VOLATILE, &[], "CMD_STORE_VOLATILE")
    }

    /// CMD_SHUTDOWN: swtpm ends (after the reply); its NV state is on disk.
    pub fn shutdown(&mut self) -> Result<(), VtpmError> {
        self.call(ctrl_cmd::SHUTDOWN, &[], "CMD_SHUTDOWN")
    }
}

/// How to run one swtpm.
#[derive(Clone, Debug)]
pub struct SwtpmConfig {
    /// Named in messages: `measured launch`, `qemu`, ...
    pub phase: &'static str,
    pub ctrl: Endpoint,
    /// The command channel; `None` when QEMU hands swtpm its data channel (CMD_SET_DATAFD).
    pub server: Option<Endpoint>,
    /// `--terminate`: exit when the *command* connection closes. QEMU hands swtpm that
    /// connection over the control channel (CMD_SET_DATAFD), so swtpm ends with QEMU. Closing
    /// the control connection does not end swtpm.
    pub terminate: bool,
    /// `--flags not-need-init`: accept TPM commands without CMD_INIT.
    pub not_need_init: bool,
}

/// A running swtpm. Dropping it kills (SIGKILL) and reaps the process if it is still running.
pub struct Swtpm {
    child: Child,
    status: Option<ExitStatus>,
    cfg: SwtpmConfig,
    log: PathBuf,
}

impl std::fmt::Debug for Swtpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swtpm")
            .field("pid", &self.child.id())
            .field("phase", &self.cfg.phase)
            .field("ctrl", &self.cfg.ctrl)
            .finish_non_exhaustive()
    }
}

impl Swtpm {
    /// Starts `swtpm socket --tpm2` on `paths.state` (which must be manufactured and private),
    /// in its own process group (a terminal's Ctrl-C must not take the TPM away from a VM
    /// shutting down), output appended to `paths.log`. Stale Unix socket files are removed
    /// first. A swtpm with its own command channel (`cfg.server`: the host's, never QEMU's)
    /// starts from the permanent state: the stored running TPM ([`VOLATILE_FILE`], which only
    /// the swtpm for QEMU continues from) is removed first.
    pub fn spawn(tools: &Tools, paths: &VtpmPaths, cfg: SwtpmConfig) -> Result<Swtpm, VtpmError> {
        check_private_dir(&paths.state)?;
        private_dir(paths.socket_dir())?;
        if cfg.server.is_some() {
            remove_if_present(&paths.state.join(VOLATILE_FILE))?;
        }
        for ep in std::iter::once(&cfg.ctrl).chain(cfg.server.as_ref()) {
            if let Endpoint::Unix(p) = ep {
                remove_if_present(p)?;
            }
        }
        let mut args: Vec<String> = vec![
            "socket".into(),
            "--tpm2".into(),
            "--tpmstate".into(),
            // mode: the files swtpm (re)writes are 0600 (its default is 0640).
            format!("dir={},mode=0600", paths.state.display()),
            "--ctrl".into(),
            cfg.ctrl.option(),
        ];
        if let Some(server) = &cfg.server {
            args.push("--server".into());
            args.push(server.option());
        }
        if cfg.terminate {
            args.push("--terminate".into());
        }
        if cfg.not_need_init {
            args.push("--flags".into());
            args.push("not-need-init".into());
        }
        let log = paths.open_log()?;
        let log2 = log
            .try_clone()
            .map_err(|e| VtpmError::io("cannot open", &paths.log, e))?;
        let child = Command::new(&tools.swtpm)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| VtpmError::io("cannot start", &tools.swtpm, e))?;
        Ok(Swtpm {
            child,
            status: None,
            cfg,
            log: paths.log.clone(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn died(&mut self) -> Result<(), VtpmError> {
        match self.try_wait() {
            Some(status) => Err(VtpmError::SwtpmDied {
                phase: self.cfg.phase,
                status,
                log: self.log.clone(),
            }),
            None => Ok(()),
        }
    }

    fn timeout(&self, what: &'static str, timeout: Duration) -> VtpmError {
        VtpmError::SwtpmTimeout {
            phase: self.cfg.phase,
            what,
            timeout,
            log: self.log.clone(),
        }
    }

    /// Connects to `ep`, retrying while swtpm is still starting.
    fn connect(&mut self, ep: &Endpoint, timeout: Duration) -> Result<Stream, VtpmError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.died()?;
            if let Ok(stream) = ep.connect() {
                stream.set_timeout(timeout).map_err(|e| VtpmError::Ctrl {
                    phase: self.cfg.phase,
                    what: format!("cannot set a socket timeout: {e}"),
                })?;
                return Ok(stream);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout("open its sockets", timeout));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// The control channel (one client at a time).
    pub fn ctrl(&mut self, timeout: Duration) -> Result<Ctrl, VtpmError> {
        let ep = self.cfg.ctrl.clone();
        Ok(Ctrl {
            stream: self.connect(&ep, timeout)?,
            phase: self.cfg.phase,
        })
    }

    /// A TPM on the command channel.
    pub fn tpm(&mut self, timeout: Duration) -> Result<Tpm<SocketTransport>, VtpmError> {
        let ep = self.cfg.server.clone().ok_or_else(|| VtpmError::Ctrl {
            phase: self.cfg.phase,
            what: "this swtpm has no command channel (--server)".into(),
        })?;
        Ok(Tpm::new(SocketTransport::new(self.connect(&ep, timeout)?)))
    }

    /// Waits until the Unix control socket is listening *without connecting to it*, so QEMU is
    /// the control channel's first and only client: reads `/proc/net/unix`.
    pub fn wait_listening(&mut self, timeout: Duration) -> Result<(), VtpmError> {
        let Endpoint::Unix(path) = self.cfg.ctrl.clone() else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        loop {
            self.died()?;
            if unix_listening(&path) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.timeout("listen on its control socket", timeout));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// The exit status, if swtpm has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for swtpm to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, VtpmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout("exit", timeout));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills (SIGKILL) and reaps swtpm unless it has exited.
    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Waits up to `grace` for swtpm to exit by itself (as a `--terminate` swtpm does once QEMU
    /// has gone), then kills it. Returns how it ended.
    pub fn reap(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.wait_exit(grace).is_err() {
            self.kill();
        }
        self.status
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True if `/proc/net/unix` lists a listening socket bound to `path`.
fn unix_listening(path: &Path) -> bool {
    const SO_ACCEPTCON: u32 = 0x0001_0000;
    let Ok(table) = fs::read_to_string("/proc/net/unix") else {
        // Not Linux (or no /proc): fall back to the file's existence.
        return path.exists();
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Num RefCount Protocol Flags Type St Inode Path
        cols.len() >= 8
            && cols[7] == want
            && u32::from_str_radix(cols[3], 16).is_ok_and(|f| f & SO_ACCEPTCON != 0)
    })
}

/// Timings of one [`measured_launch`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LaunchTimes {
    /// Spawn → TPM answered Startup.
    pub start: Duration,
    /// The whole sequence including swtpm's exit.
    pub total: Duration,
}

/// The launcher's measured launch: swtpm on the (manufactured) state, CMD_INIT (from the
/// permanent state: a stored volatile state is discarded first), TPM2_Startup(CLEAR) and
/// TPM2_Shutdown(CLEAR) and CMD_INIT again (so that what follows is a TPM Reset, never a
/// Restart: restartCount 0), TPM2_Startup(CLEAR), one
/// TPM2_PCR_Extend (SHA-256 bank) per `(pcr, digest)` in order, TPM2_Shutdown(STATE) (for
/// inspection after the VM: [`spawn_for_inspection`]), CMD_STORE_VOLATILE, CMD_SHUTDOWN, and
/// swtpm's exit awaited. When this returns `Ok`, the state on disk is a *started* TPM with
/// exactly these PCR values: QEMU's CMD_INIT restores it, and the guest cannot send a
/// TPM2_Startup of its own (TPM_RC_INITIALIZE), so it cannot reset PCR 4/5 (a TPM Reset or
/// Restart needs a Startup). The host sent the only Startup.
pub fn measured_launch(
    tools: &Tools,
    paths: &VtpmPaths,
    extends: &[(u32, [u8; 32])],
) -> Result<LaunchTimes, VtpmError> {
    let started = Instant::now();
    let mut swtpm = Swtpm::spawn(
        tools,
        paths,
        SwtpmConfig {
            phase: "measured launch",
            ctrl: Endpoint::Unix(paths.launch_ctrl.clone()),
            server: Some(Endpoint::Unix(paths.launch_data.clone())),
            terminate: false,
            not_need_init: false,
        },
    )?;
    let mut ctrl = swtpm.ctrl(SWTPM_TIMEOUT)?;
    ctrl.init()?;
    let tpm_err = |command| move |cause| VtpmError::Tpm { command, cause };
    // The previous launch on this state (an earlier `tuk run`, or the KVM attempt before a TCG
    // retry) ended with Shutdown(STATE), and Startup(CLEAR) after Shutdown(STATE) is a TPM
    // *Restart* (restartCount + 1), which a verifier must refuse (it is what a guest Startup
    // would look like). So: Startup(CLEAR), Shutdown(CLEAR), power-cycle, Startup(CLEAR): the
    // second is always a TPM *Reset* (restartCount 0, resetCount + 1), whatever came before.
    // A TPM that comes up already started (a volatile state another swtpm left behind)
    // answers the first Startup with TPM_RC_INITIALIZE; the Shutdown(CLEAR) ends it the same way.
    {
        let mut tpm = swtpm.tpm(SWTPM_TIMEOUT)?;
        match tpm.startup(StartupType::Clear) {
            Err(e) if e.code() != Some(tuk_tpm::TPM_RC_INITIALIZE) => {
                return Err(tpm_err("TPM2_Startup(CLEAR), clearing a saved state")(e))
            }
            _ => {}
        }
        tpm.shutdown(StartupType::Clear)
            .map_err(tpm_err("TPM2_Shutdown(CLEAR)"))?;
    }
    ctrl.init()?;
    let mut tpm = swtpm.tpm(SWTPM_TIMEOUT)?;
    tpm.startup(StartupType::Clear)
        .map_err(tpm_err("TPM2_Startup(CLEAR)"))?;
    let start = started.elapsed();
    for (pcr, digest) in extends {
        tpm.pcr_extend(*pcr, digest)
            .map_err(tpm_err("TPM2_PCR_Extend"))?;
    }
    // Saved for a host-side inspection (a fresh swtpm, the running TPM discarded, resumes these
    // values with TPM2_Startup(STATE)) as before; the TPM stays started for what follows.
    tpm.shutdown(StartupType::State)
        .map_err(tpm_err("TPM2_Shutdown(STATE)"))?;
    drop(tpm);
    ctrl.store_volatile()?;
    ctrl.shutdown()?;
    drop(ctrl);
    swtpm.wait_exit(SWTPM_TIMEOUT)?;
    for p in [&paths.launch_ctrl, &paths.launch_data] {
        remove_if_present(p)?;
    }
    Ok(LaunchTimes {
        start,
        total: started.elapsed(),
    })
}

/// The swtpm QEMU talks to: control socket [`VtpmPaths::qemu_ctrl`] (listening when this
/// returns), `--terminate` so it ends with QEMU.
pub fn spawn_for_qemu(tools: &Tools, paths: &VtpmPaths) -> Result<Swtpm, VtpmError> {
    let mut swtpm = Swtpm::spawn(
        tools,
        paths,
        SwtpmConfig {
            phase: "qemu",
            ctrl: Endpoint::Unix(paths.qemu_ctrl.clone()),
            server: None,
            terminate: true,
            not_need_init: false,
        },
    )?;
    swtpm.wait_listening(SWTPM_TIMEOUT)?;
    Ok(swtpm)
}

/// A swtpm on `paths`' state with TCP channels on loopback (control = command port + 1, as the
/// tpm2-tools `swtpm` TCTI expects), powered on from the permanent state (the running TPM the
/// launch stored is discarded) and started with `TPM2_Startup(kind)`: STATE resumes
/// what the kernel saved with TPM2_Shutdown(STATE) on its way out, CLEAR starts afresh. Both
/// connections are closed again (swtpm serves one client per channel) so an independent
/// client such as `tpm2_pcrread` can use them. For inspecting a vTPM after its VM ended.
/// Returns the swtpm and its command port.
pub fn spawn_for_inspection(
    tools: &Tools,
    paths: &VtpmPaths,
    kind: StartupType,
) -> Result<(Swtpm, u16), VtpmError> {
    let mut last = None;
    for _ in 0..20 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| VtpmError::Ctrl {
            phase: "inspection",
            what: format!("no free port: {e}"),
        })?;
        let port = probe.local_addr().map(|a| a.port()).unwrap_or(0);
        if port == 0
            || port == u16::MAX
            || std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_err()
        {
            continue;
        }
        drop(probe);
        let mut swtpm = Swtpm::spawn(
            tools,
            paths,
            SwtpmConfig {
                phase: "inspection",
                ctrl: Endpoint::Tcp(([127, 0, 0, 1], port + 1).into()),
                server: Some(Endpoint::Tcp(([127, 0, 0, 1], port).into())),
                terminate: false,
                not_need_init: false,
            },
        )?;
        let mut ctrl = match swtpm.ctrl(SWTPM_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                last = Some(e); // lost the port race: try another pair
                continue;
            }
        };
        ctrl.init()?;
        let mut tpm = swtpm.tpm(SWTPM_TIMEOUT)?;
        tpm.startup(kind).map_err(|cause| VtpmError::Tpm {
            command: "TPM2_Startup",
            cause,
        })?;
        drop(tpm);
        drop(ctrl);
        return Ok((swtpm, port));
    }
    Err(last.unwrap_or(VtpmError::Ctrl {
        phase: "inspection",
        what: "no free port pair".into(),
    }))
}

/// Reads SHA-256 `pcrs` with `tpm2_pcrread` (tpm2-tools: an implementation independent of
/// tuk's) from a swtpm started by [`spawn_for_inspection`] on command port `port`.
pub fn tpm2_pcrread(port: u16, pcrs: &[u32]) -> Result<BTreeMap<u32, [u8; 32]>, VtpmError> {
    let tool_error = |what: String| VtpmError::Ctrl {
        phase: "tpm2_pcrread",
        what,
    };
    let list = pcrs
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = std::env::temp_dir().join(format!("tuk-pcrs-{}-{port}.bin", std::process::id()));
    let run = Command::new("tpm2_pcrread")
        .arg(format!("sha256:{list}"))
        .arg("-o")
        .arg(&out)
        .env(
            "TPM2TOOLS_TCTI",
            format!("swtpm:host=127.0.0.1,port={port}"),
        )
        .output()
        .map_err(|e| tool_error(format!("cannot run it ({e}): apt-get install tpm2-tools")))?;
    if !run.status.success() {
        return Err(tool_error(
            String::from_utf8_lossy(&run.stderr).trim().to_string(),
        ));
    }
    let bytes = fs::read(&out).map_err(|e| tool_error(format!("no output: {e}")))?;
    let _ = fs::remove_file(&out);
    if bytes.len() != 32 * pcrs.len() {
        return Err(tool_error(format!(
            "{} bytes for {} PCRs",
            bytes.len(),
            pcrs.len()
        )));
    }
    Ok(pcrs
        .iter()
        .zip(bytes.chunks(32))
        .map(|(p, v)| (*p, v.try_into().expect("32-byte chunk")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_state_dirs_get_short_sockets() {
        let short = VtpmPaths::new(Path::new("/tmp/tuk/1-8080")).unwrap();
        assert_eq!(short.qemu_ctrl, Path::new("/tmp/tuk/1-8080/tpm/swtpm.sock"));
        assert_eq!(short.state, Path::new("/tmp/tuk/1-8080/tpm"));
        let deep = format!("/tmp/{}", "d/".repeat(60));
        let long = VtpmPaths::new(Path::new(&deep)).unwrap();
        assert!(long.qemu_ctrl.as_os_str().len() <= MAX_SOCKET_PATH);
        assert!(long.state.starts_with(&deep));
        assert_eq!(long.launch_ctrl.parent(), long.qemu_ctrl.parent());
        // Not a name another user can predict: random, created 0700 by us.
        let again = VtpmPaths::new(Path::new(&deep)).unwrap();
        assert_ne!(long.socket_dir(), again.socket_dir());
        check_private_dir(long.socket_dir()).unwrap();
        for p in [&long, &again] {
            fs::remove_dir(p.socket_dir()).unwrap();
        }
        assert!(matches!(
            VtpmPaths::new(Path::new("/tmp/a,b")),
            Err(VtpmError::BadPath { .. })
        ));
    }

    #[test]
    fn missing_tools_name_the_package() {
        let e = VtpmError::ToolMissing { tool: "swtpm" };
        assert!(
            e.to_string().contains("apt-get install swtpm swtpm-tools"),
            "{e}"
        );
        assert!(matches!(
            find_in_path("tuk-no-such-tool"),
            Err(VtpmError::ToolMissing { .. })
        ));
    }

    #[test]
    fn proc_net_unix_sees_a_listener() {
        let dir = std::env::temp_dir().join(format!("tuk-vtpm-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("l.sock");
        let _ = fs::remove_file(&sock);
        assert!(!unix_listening(&sock));
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(unix_listening(&sock));
        drop(l);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ca_dir_override() {
        // Only reads the environment; the default is per user.
        let d = default_ca_dir();
        assert!(d.ends_with("vtpm-ca") || std::env::var_os("TUK_VTPM_CA_DIR").is_some());
    }
}
