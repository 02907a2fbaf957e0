//! The launcher's measurements (docs/measurement.md): PCR 4 = SHA-256 of the kernel image,
//! PCR 5 = SHA-256 of the boot configuration document, each with one CEL-JSON event-log record
//! (recnum 0 and 1). The records go to `<state_dir>/eventlog.launcher.json` and, as the boot
//! pack's reserved `_eventlog` entry, to the kernel.
//!
//! Records, digests and replay are `tuk-measure`'s: the same implementation the kernel and the
//! verifier use.

use std::collections::BTreeMap;
use std::ffi::OsString;

use serde::{Deserialize, Serialize};

/// The event log the launcher writes into the state directory.
pub const EVENTLOG_FILE: &str = "eventlog.launcher.json";
/// PCR for the kernel image.
pub const PCR_KERNEL: u32 = 4;
/// PCR for the boot configuration document.
pub const PCR_BOOT_CONFIG: u32 = 5;
pub const CONTENT_KERNEL: &str = "tuk.kernel";
pub const CONTENT_BOOT_CONFIG: &str = "tuk.boot-config";

pub use tuk_measure::eventlog::Record;
pub use tuk_measure::{hex, sha256};

/// The boot configuration document: what the launcher hands the guest that matters for trust,
/// taken from the QEMU command line itself ([`BootConfig::from_argv`]) so it cannot drift from
/// what QEMU is given. Canonical form ([`BootConfig::canonical_json`]): compact JSON, keys
/// sorted (the field order below), integers and strings only (RFC 8785 for this document).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootConfig {
    /// SHA-256 (hex) of the boot pack's components encoding (the pack without its reserved
    /// entries, `tuk_bootpack::Pack::components_encoding`); `null` only for a launch without a
    /// boot pack, which this launcher never does.
    pub boot_pack_sha256: Option<String>,
    /// The exact `-append` string.
    pub cmdline: String,
    /// `-cpu`.
    pub cpu: String,
    /// `-M`.
    pub machine: String,
    /// The `-object memory-backend-*` that is guest RAM (`-M ...,memory-backend=ram`), without
    /// its `mem-path=` (a host file name that changes every boot, like the log files):
    /// `memory-backend-file,id=ram,size=<N>M,share=on` says guest RAM is a file the host maps
    /// shared, which is what the out-of-guest monitor reads.
    pub memory_backend: String,
    /// `-m`.
    pub memory_mib: u32,
}

impl BootConfig {
    /// Reads `-append`, `-m`, `-M`, `-cpu` and the memory backend's `-object` out of QEMU's
    /// argv (each must be there once).
    pub fn from_argv(
        argv: &[OsString],
        boot_pack_sha256: Option<String>,
    ) -> Result<BootConfig, String> {
        let value = |flag: &str| -> Result<String, String> {
            let mut found = argv
                .windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].to_string_lossy().into_owned());
            match (found.next(), found.next()) {
                (Some(v), None) => Ok(v),
                (None, _) => Err(format!("QEMU's argv has no {flag}")),
                (Some(_), Some(_)) => Err(format!("QEMU's argv has {flag} twice")),
            }
        };
        let mut backends = argv
            .windows(2)
            .filter(|w| w[0] == "-object")
            .map(|w| w[1].to_string_lossy().into_owned())
            .filter(|v| v.starts_with("memory-backend-"));
        let memory_backend = match (backends.next(), backends.next()) {
            (Some(v), None) => without_option(&v, "mem-path"),
            (None, _) => return Err("QEMU's argv has no -object memory-backend-*".into()),
            (Some(_), Some(_)) => return Err("QEMU's argv has two -object memory-backend-*".into()),
        };
        Ok(BootConfig {
            boot_pack_sha256,
            cmdline: value("-append")?,
            cpu: value("-cpu")?,
            machine: value("-M")?,
            memory_backend,
            memory_mib: value("-m")?
                .parse()
                .map_err(|_| "QEMU's -m is not a number of MiB".to_owned())?,
        })
    }

    /// The bytes PCR 5 measures.
    pub fn canonical_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of strings and integers serializes")
    }
}

/// A QEMU option value (`a=1,b=2`, a literal comma doubled) without its `key=` option.
fn without_option(value: &str, key: &str) -> String {
    let mut options = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push_str(",,");
                continue;
            }
            options.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    options.push(current);
    let prefix = format!("{key}=");
    options.retain(|o| !o.starts_with(&prefix));
    options.join(",")
}

/// The launcher's two measurements and their records.
#[derive(Clone, Debug)]
pub struct LauncherMeasurements {
    pub kernel_sha256: [u8; 32],
    pub boot_config: BootConfig,
    pub boot_config_sha256: [u8; 32],
    /// recnum 0 (PCR 4) and 1 (PCR 5).
    pub records: Vec<Record>,
}

impl LauncherMeasurements {
    /// `kernel_name` and `kernel_size` describe the image in the record's content
    /// (`{"file","size"}`); the digest is over the image's bytes.
    pub fn new(
        kernel_name: &str,
        kernel_size: u64,
        kernel_sha256: [u8; 32],
        boot_config: BootConfig,
    ) -> Self {
        let boot_config_sha256 = sha256(&boot_config.canonical_json());
        let doc = serde_json::to_value(&boot_config).expect("serializes");
        let records = vec![
            Record::new(
                0,
                PCR_KERNEL,
                &kernel_sha256,
                CONTENT_KERNEL,
                serde_json::json!({ "file": kernel_name, "size": kernel_size }),
            ),
            Record::new(
                1,
                PCR_BOOT_CONFIG,
                &boot_config_sha256,
                CONTENT_BOOT_CONFIG,
                doc,
            ),
        ];
        LauncherMeasurements {
            kernel_sha256,
            boot_config,
            boot_config_sha256,
            records,
        }
    }

    /// `(pcr, digest)` in extension order, for `tuk_vtpm::measured_launch`.
    pub fn extends(&self) -> Vec<(u32, [u8; 32])> {
        self.records
            .iter()
            .map(|r| (r.pcr, r.sha256().expect("our records carry sha256")))
            .collect()
    }

    /// The event log as written to [`EVENTLOG_FILE`] and the `_eventlog` pack entry: one
    /// compact JSON array.
    pub fn eventlog_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.records).expect("records serialize")
    }
}

/// Replays records: PCR := SHA-256(PCR || digest) from 32 zero bytes, per PCR (SHA-256 bank).
/// The launcher's own records always replay; a malformed log replays to nothing.
pub fn replay(records: &[Record]) -> BTreeMap<u32, [u8; 32]> {
    tuk_measure::eventlog::replay(records).unwrap_or_default()
}

/// Checks what a verifier checks of the launcher's records without a TPM: the boot-config
/// record's digest is the SHA-256 of its content's canonical form.
pub fn check_boot_config_record(r: &Record) -> Result<BootConfig, String> {
    let doc: BootConfig = serde_json::from_value(r.content.clone()).map_err(|e| e.to_string())?;
    if r.sha256().ok() != Some(sha256(&doc.canonical_json())) {
        return Err("digest is not the SHA-256 of the canonical document".into());
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::{self, Accel};
    use std::path::Path;

    fn argv() -> Vec<OsString> {
        qemu::qemu_args(
            Path::new("/k"),
            Accel::Tcg,
            96,
            Path::new("/dev/shm/a,b.ram"),
            "127.0.0.1:8080".parse().unwrap(),
            &[
                ("log".into(), "debug".into()),
                ("time.unix_ms".into(), "1".into()),
            ],
        )
        .unwrap()
    }

    #[test]
    fn boot_config_comes_from_the_argv() {
        let doc = BootConfig::from_argv(&argv(), Some("ab".repeat(32))).unwrap();
        assert_eq!(doc.cmdline, "log=debug time.unix_ms=1");
        assert_eq!(doc.memory_mib, 96);
        assert_eq!(doc.machine, qemu::MACHINE);
        assert_eq!(doc.cpu, qemu::CPU);
        // The host path of the RAM file (even one with a comma) is not part of it.
        assert_eq!(
            doc.memory_backend,
            "memory-backend-file,id=ram,size=96M,share=on"
        );
        // Canonical: compact, keys sorted.
        assert_eq!(
            String::from_utf8(doc.canonical_json()).unwrap(),
            format!(
                r#"{{"boot_pack_sha256":"{}","cmdline":"log=debug time.unix_ms=1","cpu":"max","machine":"microvm,x-option-roms=off,rtc=off,acpi=off,memory-backend=ram","memory_backend":"memory-backend-file,id=ram,size=96M,share=on","memory_mib":96}}"#,
                "ab".repeat(32)
            )
        );
        // A verifier re-serializing the parsed object (serde_json's sorted map) gets the same bytes.
        let v: serde_json::Value = serde_json::from_slice(&doc.canonical_json()).unwrap();
        assert_eq!(serde_json::to_vec(&v).unwrap(), doc.canonical_json());
        let mut twice = argv();
        twice.extend(["-m".into(), "1".into()]);
        assert!(BootConfig::from_argv(&twice, None).is_err());
        let mut two_backends = argv();
        two_backends.extend(["-object".into(), "memory-backend-ram,id=x".into()]);
        assert!(BootConfig::from_argv(&two_backends, None).is_err());
        assert_eq!(
            without_option("a=1,mem-path=/x,,y,b=2", "mem-path"),
            "a=1,b=2"
        );
        assert_eq!(without_option("a=x,,y,c", "b"), "a=x,,y,c");
    }

    #[test]
    fn records_match_the_documented_format_and_replay() {
        let doc = BootConfig::from_argv(&argv(), None).unwrap();
        let m = LauncherMeasurements::new("tuk-kernel", 5, sha256(b"image"), doc);
        let log: serde_json::Value = serde_json::from_slice(&m.eventlog_json()).unwrap();
        assert_eq!(
            log[0],
            serde_json::json!({
                "recnum": 0, "pcr": 4,
                "digests": [{"hashAlg": "sha256", "digest": hex(&sha256(b"image"))}],
                "content_type": "tuk.kernel",
                "content": {"file": "tuk-kernel", "size": 5}
            })
        );
        assert_eq!(log[1]["recnum"], 1);
        assert_eq!(log[1]["pcr"], 5);
        assert_eq!(log[1]["content_type"], "tuk.boot-config");
        assert_eq!(
            log[1]["content"]["boot_pack_sha256"],
            serde_json::Value::Null
        );
        let back: Vec<Record> = serde_json::from_value(log).unwrap();
        assert_eq!(back, m.records);
        check_boot_config_record(&back[1]).unwrap();

        let pcrs = replay(&back);
        let extend = |d: [u8; 32]| {
            let mut buf = [0u8; 64];
            buf[32..].copy_from_slice(&d);
            sha256(&buf)
        };
        assert_eq!(pcrs[&4], extend(sha256(b"image")));
        assert_eq!(pcrs[&5], extend(m.boot_config_sha256));
        assert_eq!(
            m.extends(),
            [(4, m.kernel_sha256), (5, m.boot_config_sha256)]
        );

        let mut forged = back[1].clone();
        forged.content["memory_mib"] = 4096.into();
        assert!(check_boot_config_record(&forged).is_err());
    }
}
