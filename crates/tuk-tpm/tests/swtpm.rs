//! The commands against a real swtpm (Debian `swtpm`), over its TCP server interface.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tuk_tpm::{StartupType, Tpm, Transport, TransportError};

struct Swtpm {
    child: Child,
    port: u16,
    _dir: std::path::PathBuf,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn swtpm() -> Swtpm {
    let dir = std::env::temp_dir().join(format!(
        "tuk-tpm-test-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (port, ctrl) = (free_port(), free_port());
    let child = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "not-need-init"])
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.display()))
        .args([
            "--server",
            &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
        ])
        .args([
            "--ctrl",
            &format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("swtpm not found: apt-get install swtpm swtpm-tools");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "swtpm did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Swtpm {
        child,
        port,
        _dir: dir,
    }
}

/// swtpm's TCP server: one command, one response, on a persistent connection.
struct Tcp(TcpStream);

impl Transport for Tcp {
    fn transact(&mut self, command: &[u8], response: &mut [u8]) -> Result<usize, TransportError> {
        self.0.write_all(command).map_err(|_| TransportError::Io)?;
        self.0
            .read_exact(&mut response[..10])
            .map_err(|_| TransportError::Io)?;
        let size =
            u32::from_be_bytes([response[2], response[3], response[4], response[5]]) as usize;
        if !(10..=response.len()).contains(&size) {
            return Err(TransportError::Device("response size out of range"));
        }
        self.0
            .read_exact(&mut response[10..size])
            .map_err(|_| TransportError::Io)?;
        Ok(size)
    }
}

fn connect(t: &Swtpm) -> Tpm<Tcp> {
    let stream = TcpStream::connect(("127.0.0.1", t.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    Tpm::new(Tcp(stream))
}

#[test]
fn startup_extend_read_random() {
    let sw = swtpm();
    let mut tpm = connect(&sw);
    // Before Startup every command is refused with TPM_RC_INITIALIZE, reported, not ignored.
    let err = tpm.pcr_read(9).unwrap_err();
    assert_eq!(err.code(), Some(0x100), "{err}");
    assert!(err.to_string().contains("TPM_RC_INITIALIZE"), "{err}");

    tpm.startup(StartupType::Clear).unwrap();
    assert_eq!(tpm.pcr_read(9).unwrap(), [0u8; 32]);
    let digest: [u8; 32] = Sha256::digest(b"component code").into();
    tpm.pcr_extend(9, &digest).unwrap();
    let mut expected = Sha256::new();
    expected.update([0u8; 32]);
    expected.update(digest);
    let expected: [u8; 32] = expected.finalize().into();
    assert_eq!(tpm.pcr_read(9).unwrap(), expected);
    // Other PCRs untouched.
    assert_eq!(tpm.pcr_read(8).unwrap(), [0u8; 32]);

    let mut a = [0u8; 48];
    let mut b = [0u8; 48];
    tpm.get_random(&mut a).unwrap();
    tpm.get_random(&mut b).unwrap();
    assert_ne!(a, [0u8; 48]);
    assert_ne!(a, b);
}

#[test]
fn tpm_errors_are_reported() {
    let sw = swtpm();
    let mut tpm = connect(&sw);
    tpm.startup(StartupType::Clear).unwrap();
    // A second Startup without a TPM init is refused (TPM_RC_INITIALIZE): reported with its code.
    let again = tpm.startup(StartupType::Clear).unwrap_err();
    assert_eq!(again.code(), Some(0x100), "{again}");
    // Nonexistent PCRs are refused before anything is sent.
    assert!(tpm.pcr_read(24).is_err());
    // Shutdown(STATE) is accepted (the launcher's half of a measured launch).
    tpm.shutdown(StartupType::State).unwrap();
}
