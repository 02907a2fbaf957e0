//! Out-of-guest measurement (docs/measurement.md, "Out-of-guest measurement"): the launcher
//! re-reads the host-kernel's read-only segments (text R+X, rodata R) from guest RAM, through
//! the memory file QEMU maps shared ([`crate::memory_file`]), and compares them with the kernel
//! image QEMU loaded. What runs inside the guest (including the kernel's own integrity monitor)
//! cannot hide a change from it: it needs no cooperation from the guest.
//!
//! The reference is the ELF file: for every `PT_LOAD` segment that is not writable, the bytes
//! backed by the file (`p_filesz`) at its physical address `p_paddr`, and their SHA-256. A check
//! hashes what guest RAM holds there and compares digests; on a mismatch it also finds the first
//! differing byte. Guest RAM is opened read-only and read with `pread` (`FileExt::read_at`).
//!
//! With [`Monitor::watch_components`] it also checks every component's code image: where it is
//! comes from the kernel's `GET /_tuk/status` (admin listener), what it must hash to from the
//! component's PCR 9 `tuk.component` record in `GET /_tuk/eventlog` (`code_sha256`; a record
//! cancelled by a `tuk.component-failed` record does not count). A mismatch is re-checked
//! after re-reading the status, so a re-instantiation between the two reads is not a finding.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object::elf::{FileHeader64, EM_X86_64, ET_EXEC, PF_W, PF_X, PT_LOAD};
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;
use serde::Serialize;

use crate::measured::{hex, sha256};
use crate::qemu::LOW_RAM_LIMIT;

/// Why a monitor could not be set up or a check could not be made (not a violation).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("{what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("kernel image {path}: {reason}")]
    Elf { path: PathBuf, reason: String },
    #[error(
        "kernel segment {name} (paddr {paddr:#x}, {len} bytes) is not inside guest RAM \
         ({memory_bytes} bytes in {file}, of which the first {LOW_RAM_LIMIT} are addressed 1:1)"
    )]
    OutsideRam {
        name: String,
        paddr: u64,
        len: u64,
        memory_bytes: u64,
        file: PathBuf,
    },
}

/// A read-only `PT_LOAD` segment of the kernel image: what guest RAM must hold at `paddr`.
#[derive(Clone, Debug)]
pub struct Segment {
    /// `text` (R+X) or `rodata` (R); a second segment of a kind is `text.1`, and so on.
    pub name: String,
    /// `r-x` or `r--`.
    pub perm: &'static str,
    /// `p_paddr`: where the loader put it (= the kernel's virtual address: identity map).
    pub paddr: u64,
    /// `p_filesz`: the bytes compared (a read-only segment has no zero-filled tail in practice).
    pub len: u64,
    /// SHA-256 of the segment's file bytes.
    pub sha256: [u8; 32],
    bytes: Vec<u8>,
}

impl Segment {
    /// The segment's bytes in the image.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The read-only segments of a kernel ELF image.
#[derive(Clone, Debug)]
pub struct KernelImage {
    pub path: PathBuf,
    pub segments: Vec<Segment>,
}

impl KernelImage {
    pub fn load(path: &Path) -> Result<KernelImage, MonitorError> {
        let data = std::fs::read(path).map_err(|cause| MonitorError::Io {
            what: "cannot read the kernel image",
            path: path.into(),
            cause,
        })?;
        Self::parse(path, &data)
    }

    /// Parses an x86-64 `ET_EXEC` ELF; `path` only names it in errors.
    pub fn parse(path: &Path, data: &[u8]) -> Result<KernelImage, MonitorError> {
        let bad = |reason: String| MonitorError::Elf {
            path: path.into(),
            reason,
        };
        let header = FileHeader64::<Endianness>::parse(data)
            .map_err(|e| bad(format!("not a 64-bit ELF file ({e})")))?;
        let endian = header
            .endian()
            .map_err(|e| bad(format!("bad ELF header ({e})")))?;
        if header.e_machine(endian) != EM_X86_64 || header.e_type(endian) != ET_EXEC {
            return Err(bad("not an x86-64 executable (ET_EXEC)".into()));
        }
        let phdrs = header
            .program_headers(endian, data)
            .map_err(|e| bad(format!("bad program headers ({e})")))?;
        let mut segments: Vec<Segment> = Vec::new();
        for ph in phdrs {
            let flags = ph.p_flags(endian);
            if ph.p_type(endian) != PT_LOAD || flags & PF_W != 0 || ph.p_filesz(endian) == 0 {
                continue;
            }
            let bytes = ph
                .data(endian, data)
                .map_err(|_| bad("a PT_LOAD segment lies outside the file".into()))?;
            let (kind, perm) = if flags & PF_X != 0 {
                ("text", "r-x")
            } else {
                ("rodata", "r--")
            };
            let same = segments.iter().filter(|s| s.perm == perm).count();
            let name = if same == 0 {
                kind.to_owned()
            } else {
                format!("{kind}.{same}")
            };
            let paddr = ph.p_paddr(endian);
            let len = bytes.len() as u64;
            paddr
                .checked_add(len)
                .ok_or_else(|| bad(format!("segment {name} wraps the address space")))?;
            segments.push(Segment {
                name,
                perm,
                paddr,
                len,
                sha256: sha256(bytes),
                bytes: bytes.to_vec(),
            });
        }
        if segments.is_empty() {
            return Err(bad("no read-only PT_LOAD segment to measure".into()));
        }
        Ok(KernelImage {
            path: path.into(),
            segments,
        })
    }

    /// The segment called `name` (`text`, `rodata`).
    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }
}

/// One segment's result in a [`Report`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentCheck {
    pub name: String,
    pub perm: &'static str,
    pub paddr: u64,
    pub len: u64,
    pub ok: bool,
    /// Offset (from `paddr`) of the first byte that differs from the image.
    pub first_diff: Option<u64>,
    pub expected_sha256: String,
    pub observed_sha256: String,
}

/// The result of one [`Monitor::check`].
#[derive(Clone, Debug)]
pub struct Report {
    /// The kernel's read-only segments (`text`, `rodata`), then, with
    /// [`Monitor::watch_components`], one `component:NAME:code` entry per component code image
    /// compared.
    pub segments: Vec<SegmentCheck>,
    /// Why component code images could not be (all) checked this time, if so.
    pub component_error: Option<String>,
    /// Bytes read from guest RAM and hashed.
    pub bytes: u64,
    /// How long the check took.
    pub took: Duration,
    /// When it finished, in ms since the Unix epoch.
    pub unix_ms: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.segments.iter().all(|s| s.ok)
    }

    pub fn violations(&self) -> impl Iterator<Item = &SegmentCheck> {
        self.segments.iter().filter(|s| !s.ok)
    }
}

/// A segment found changed, as reported once per distinct change by [`Monitor::spawn`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// `text`, `rodata`.
    pub segment: String,
    pub perm: &'static str,
    /// Guest-physical address of the first differing byte (`segment_paddr + offset`).
    pub paddr: u64,
    /// Offset of that byte in the segment.
    pub offset: u64,
    pub segment_paddr: u64,
    pub segment_len: u64,
    pub expected_sha256: String,
    pub observed_sha256: String,
    /// When the check that found it finished, in ms since the Unix epoch.
    pub detected_ms: u64,
    /// How long that check took, in µs.
    pub check_us: u64,
}

impl Violation {
    fn new(c: &SegmentCheck, report: &Report) -> Violation {
        let offset = c.first_diff.unwrap_or(0);
        Violation {
            segment: c.name.clone(),
            perm: c.perm,
            paddr: c.paddr + offset,
            offset,
            segment_paddr: c.paddr,
            segment_len: c.len,
            expected_sha256: c.expected_sha256.clone(),
            observed_sha256: c.observed_sha256.clone(),
            detected_ms: report.unix_ms,
            check_us: report.took.as_micros() as u64,
        }
    }
}

/// What the monitor thread ([`Monitor::spawn`]) reports.
#[derive(Clone, Debug)]
pub enum Event {
    /// A segment changed in a way not reported before (each distinct change once; a segment
    /// that is restored and changed again is reported again). Comes before the round's
    /// [`Event::Checked`].
    Violation(Violation),
    /// One check finished (every interval), with or without violations.
    Checked(Report),
    /// The check itself failed (guest RAM could not be read, or the component check could
    /// not ask the guest where its components are); the thread keeps trying.
    Error(String),
}

/// Where a component's code image is, from the guest's status.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CodeImage {
    name: String,
    addr: u64,
    len: u64,
    matches_artifact: bool,
}

/// The component half of the monitor: the guest's admin listener, the expected digests from
/// the event log, and the last clean copy of each image (to locate a change).
#[derive(Debug)]
struct Components {
    admin: SocketAddr,
    /// Name → code_sha256 (hex) of the record that runs, from the last event log read.
    expected: BTreeMap<String, String>,
    /// The images the status named when the event log was last read.
    layout: Vec<CodeImage>,
    /// Name → (addr, the image's bytes when last found clean).
    clean: BTreeMap<String, (u64, Vec<u8>)>,
}

/// The status and event-log paths on the admin listener.
pub const STATUS_PATH: &str = "/_tuk/status";
pub const EVENTLOG_PATH: &str = "/_tuk/eventlog";
const GUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn guest_json(admin: SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    let reply = crate::health::get(admin, path, GUEST_TIMEOUT)
        .map_err(|e| format!("GET http://{admin}{path}: {e}"))?;
    if reply.status != 200 {
        return Err(format!(
            "GET http://{admin}{path} answered {}",
            reply.status
        ));
    }
    serde_json::from_slice(&reply.body)
        .map_err(|e| format!("GET http://{admin}{path}: not JSON ({e})"))
}

/// The code images the guest's status names (`instances[].code`).
fn code_images(status: &serde_json::Value) -> Result<Vec<CodeImage>, String> {
    let Some(instances) = status.get("instances").and_then(|i| i.as_array()) else {
        return Err("the guest's /_tuk/status has no instances array".into());
    };
    let mut out = Vec::new();
    for i in instances {
        let name = i.get("name").and_then(|n| n.as_str());
        let code = i.get("code");
        let field = |k: &str| code.and_then(|c| c.get(k)).and_then(|v| v.as_u64());
        match (name, field("addr"), field("len")) {
            (Some(name), Some(addr), Some(len)) => out.push(CodeImage {
                name: name.to_owned(),
                addr,
                len,
                matches_artifact: code
                    .and_then(|c| c.get("matches_artifact"))
                    .and_then(|m| m.as_bool())
                    .unwrap_or(false),
            }),
            _ => {
                return Err(
                    "an instance in the guest's /_tuk/status has no name or code.{addr,len}".into(),
                )
            }
        }
    }
    Ok(out)
}

/// What runs for each component name according to the event log: the `code_sha256` of its last
/// PCR 9 `tuk.component` record not cancelled by a `tuk.component-failed` record (D3).
pub fn expected_code(records: &[tuk_measure::eventlog::Record]) -> BTreeMap<String, String> {
    let mut stacks: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.pcr == 9) {
        let name = r.content.get("name").and_then(|n| n.as_str());
        let code = r.content.get("code_sha256").and_then(|c| c.as_str());
        match (r.content_type.as_str(), name) {
            ("tuk.component", Some(name)) => {
                if let Some(code) = code {
                    stacks
                        .entry(name.to_owned())
                        .or_default()
                        .push(code.to_ascii_lowercase());
                }
            }
            ("tuk.component-failed", Some(name)) => {
                if let Some(s) = stacks.get_mut(name) {
                    s.pop();
                }
            }
            _ => {}
        }
    }
    stacks
        .into_iter()
        .filter_map(|(n, mut s)| s.pop().map(|c| (n, c)))
        .collect()
}

/// Compares the kernel image's read-only segments with guest RAM.
#[derive(Debug)]
pub struct Monitor {
    image: KernelImage,
    memory: File,
    memory_file: PathBuf,
    memory_bytes: u64,
    buf: Vec<u8>,
    components: Option<Components>,
}

impl Monitor {
    /// Parses the kernel image (the copy QEMU loaded) and opens guest RAM read-only. Fails if
    /// a segment is not inside the 1:1-addressed part of the file.
    pub fn new(kernel_elf: &Path, memory_file: &Path) -> Result<Monitor, MonitorError> {
        Self::with_image(KernelImage::load(kernel_elf)?, memory_file)
    }

    pub fn with_image(image: KernelImage, memory_file: &Path) -> Result<Monitor, MonitorError> {
        let io = |what| {
            move |cause| MonitorError::Io {
                what,
                path: memory_file.into(),
                cause,
            }
        };
        let memory = File::open(memory_file).map_err(io("cannot open guest RAM"))?;
        let memory_bytes = memory
            .metadata()
            .map_err(io("cannot stat guest RAM"))?
            .len();
        let limit = memory_bytes.min(LOW_RAM_LIMIT);
        for s in &image.segments {
            if s.paddr + s.len > limit {
                return Err(MonitorError::OutsideRam {
                    name: s.name.clone(),
                    paddr: s.paddr,
                    len: s.len,
                    memory_bytes,
                    file: memory_file.into(),
                });
            }
        }
        Ok(Monitor {
            image,
            memory,
            memory_file: memory_file.into(),
            memory_bytes,
            buf: Vec::new(),
            components: None,
        })
    }

    /// Also checks every component's code image, asking the guest's admin listener at `admin`
    /// where they are (module docs).
    pub fn watch_components(&mut self, admin: SocketAddr) {
        self.components = Some(Components {
            admin,
            expected: BTreeMap::new(),
            layout: Vec::new(),
            clean: BTreeMap::new(),
        });
    }

    pub fn image(&self) -> &KernelImage {
        &self.image
    }

    pub fn memory_file(&self) -> &Path {
        &self.memory_file
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// Reads every segment from guest RAM and compares it with the image.
    pub fn check(&mut self) -> Result<Report, MonitorError> {
        let started = Instant::now();
        let mut segments = Vec::with_capacity(self.image.segments.len());
        let mut bytes = 0;
        for s in &self.image.segments {
            self.buf.resize(s.bytes.len(), 0);
            self.memory
                .read_exact_at(&mut self.buf, s.paddr)
                .map_err(|cause| MonitorError::Io {
                    what: "cannot read guest RAM",
                    path: self.memory_file.clone(),
                    cause,
                })?;
            bytes += s.len;
            let observed = sha256(&self.buf);
            let ok = observed == s.sha256;
            let first_diff = if ok {
                None
            } else {
                // Equal digests of different bytes are out of reach; different digests of
                // equal bytes are impossible, so a byte differs.
                self.buf
                    .iter()
                    .zip(&s.bytes)
                    .position(|(a, b)| a != b)
                    .map(|i| i as u64)
            };
            segments.push(SegmentCheck {
                name: s.name.clone(),
                perm: s.perm,
                paddr: s.paddr,
                len: s.len,
                ok,
                first_diff,
                expected_sha256: hex(&s.sha256),
                observed_sha256: hex(&observed),
            });
        }
        let mut component_error = None;
        if let Some(mut c) = self.components.take() {
            match self.check_components(&mut c, &mut segments, &mut bytes) {
                Ok(()) => {}
                Err(e) => component_error = Some(e),
            }
            self.components = Some(c);
        }
        Ok(Report {
            segments,
            component_error,
            bytes,
            took: started.elapsed(),
            unix_ms: unix_ms(),
        })
    }

    /// Reads `len` bytes of guest RAM at `addr` into `self.buf`.
    fn read_ram(&mut self, addr: u64, len: u64) -> Result<(), String> {
        let limit = self.memory_bytes.min(LOW_RAM_LIMIT);
        if addr.checked_add(len).is_none_or(|end| end > limit) || len > 1 << 30 {
            return Err(format!(
                "a code image at {addr:#x} ({len} bytes) is not inside guest RAM"
            ));
        }
        self.buf.resize(len as usize, 0);
        self.memory
            .read_exact_at(&mut self.buf, addr)
            .map_err(|e| format!("cannot read guest RAM {}: {e}", self.memory_file.display()))
    }

    /// The component half of [`Monitor::check`]: appends one entry per code image compared.
    fn check_components(
        &mut self,
        c: &mut Components,
        segments: &mut Vec<SegmentCheck>,
        bytes: &mut u64,
    ) -> Result<(), String> {
        let images = code_images(&guest_json(c.admin, STATUS_PATH)?)?;
        if images != c.layout || images.iter().any(|i| !c.expected.contains_key(&i.name)) {
            let log = guest_json(c.admin, EVENTLOG_PATH)?;
            let records: Vec<tuk_measure::eventlog::Record> = serde_json::from_value(log)
                .map_err(|e| format!("the guest's /_tuk/eventlog is not CEL-JSON ({e})"))?;
            c.expected = expected_code(&records);
            c.layout = images.clone();
            c.clean.retain(|n, _| c.expected.contains_key(n));
        }
        let mut problems = Vec::new();
        for name in c.expected.keys() {
            if !images.iter().any(|i| &i.name == name) {
                problems.push(format!(
                    "component {name} has a standing PCR 9 record but the guest's status does not list its code image"
                ));
            }
        }
        for image in &images {
            let Some(expected) = c.expected.get(&image.name).cloned() else {
                problems.push(format!(
                    "component {} runs, but the event log has no tuk.component record for it",
                    image.name
                ));
                continue;
            };
            if !image.matches_artifact {
                problems.push(format!(
                    "component {}'s code image is not the signed code byte for byte (matches_artifact false): not compared",
                    image.name
                ));
                continue;
            }
            self.read_ram(image.addr, image.len)?;
            let mut observed = hex(&sha256(&self.buf));
            if observed != expected {
                // Re-read the status: a re-instantiation may have moved the image meanwhile.
                let again = code_images(&guest_json(c.admin, STATUS_PATH)?)?;
                if !again.contains(image) {
                    continue; // moved or gone: checked next time
                }
                self.read_ram(image.addr, image.len)?;
                observed = hex(&sha256(&self.buf));
            }
            *bytes += image.len;
            let ok = observed == expected;
            let first_diff = match c.clean.get(&image.name) {
                Some((addr, good)) if !ok && *addr == image.addr => self
                    .buf
                    .iter()
                    .zip(good)
                    .position(|(a, b)| a != b)
                    .map(|i| i as u64),
                _ => None,
            };
            if ok
                && c.clean
                    .get(&image.name)
                    .is_none_or(|(a, g)| *a != image.addr || g.len() as u64 != image.len)
            {
                c.clean
                    .insert(image.name.clone(), (image.addr, self.buf.clone()));
            }
            segments.push(SegmentCheck {
                name: format!("component:{}:code", image.name),
                perm: "r-x",
                paddr: image.addr,
                len: image.len,
                ok,
                first_diff,
                expected_sha256: expected,
                observed_sha256: observed,
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Checks at once and then every `interval` on a thread of its own, calling `on_event` with
    /// each new violation, each finished check and each failed check. Stops when the returned
    /// [`MonitorThread`] is stopped or dropped.
    pub fn spawn(
        mut self,
        interval: Duration,
        mut on_event: impl FnMut(Event) + Send + 'static,
    ) -> io::Result<MonitorThread> {
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = thread::Builder::new()
            .name("tuk-monitor".into())
            .spawn(move || {
                // Per segment: the observed digest last reported.
                let mut reported: BTreeMap<String, String> = BTreeMap::new();
                let mut next = Instant::now();
                loop {
                    match self.check() {
                        Ok(report) => {
                            for c in &report.segments {
                                if c.ok {
                                    reported.remove(&c.name);
                                } else if reported.get(&c.name) != Some(&c.observed_sha256) {
                                    reported.insert(c.name.clone(), c.observed_sha256.clone());
                                    on_event(Event::Violation(Violation::new(c, &report)));
                                }
                            }
                            if let Some(e) = &report.component_error {
                                on_event(Event::Error(e.clone()));
                            }
                            on_event(Event::Checked(report));
                        }
                        Err(e) => on_event(Event::Error(e.to_string())),
                    }
                    next += interval;
                    let now = Instant::now();
                    if next < now {
                        next = now; // a slow check: do not try to catch up
                    }
                    match stopped.recv_timeout(next - now) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(MonitorThread {
            stop: Some(stop),
            handle: Some(handle),
        })
    }
}

/// The running monitor of [`Monitor::spawn`]; stopping (or dropping) it ends the thread.
#[derive(Debug)]
pub struct MonitorThread {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl MonitorThread {
    /// Stops the thread and waits for it (at most one check's time).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.handle.take() {
            if handle.thread().id() != thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for MonitorThread {
    fn drop(&mut self) {
        self.halt();
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::sync::{Arc, Mutex};

    /// A minimal x86-64 ET_EXEC: a PT_NOTE on the first bytes of text (like the kernel's),
    /// text (R+X) at 1 MiB, rodata (R) at 1 MiB + 8 KiB, data (RW, with a .bss tail) at
    /// 1 MiB + 12 KiB.
    fn synthetic_elf() -> Vec<u8> {
        let text: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        let rodata = b"read-only message\0".repeat(20);
        let data = [0xAAu8; 64];
        let (text_at, rodata_at, data_at) = (0x1000u64, 0x3000u64, 0x4000u64);
        // (type, flags, file offset, file size, paddr, memory size)
        let segs: [(u32, u32, u64, u64, u64, u64); 4] = [
            (4, 4, text_at, 16, 0x10_0000, 16),
            (PT_LOAD, 5, text_at, 5000, 0x10_0000, 5000),
            (PT_LOAD, 4, rodata_at, 360, 0x10_2000, 360),
            (PT_LOAD, 6, data_at, 64, 0x10_3000, 0x2000),
        ];
        let mut out = vec![0u8; 0x4040];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2; // 64-bit
        out[5] = 1; // little-endian
        out[6] = 1;
        out[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        out[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        out[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, (ty, flags, offset, filesz, paddr, memsz)) in segs.iter().enumerate() {
            let ph = 64 + i * 56;
            out[ph..ph + 4].copy_from_slice(&ty.to_le_bytes());
            out[ph + 4..ph + 8].copy_from_slice(&flags.to_le_bytes());
            out[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            out[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
            out[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            out[ph + 32..ph + 40].copy_from_slice(&filesz.to_le_bytes());
            out[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
            out[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        }
        for (at, bytes) in [
            (text_at, &text[..]),
            (rodata_at, &rodata[..]),
            (data_at, &data[..]),
        ] {
            out[at as usize..][..bytes.len()].copy_from_slice(bytes);
        }
        out
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir()
            .join("tuk-launcher-unit")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes the ELF and a 4 MiB "guest RAM" holding every PT_LOAD at its p_paddr, as the
    /// PVH loader leaves it (data changed, as a running kernel changes it).
    fn setup(name: &str) -> (PathBuf, PathBuf, KernelImage) {
        let dir = scratch(name);
        let elf = synthetic_elf();
        let kernel = dir.join("kernel.elf");
        std::fs::write(&kernel, &elf).unwrap();
        let image = KernelImage::load(&kernel).unwrap();
        let mut ram = vec![0u8; 4 << 20];
        for s in &image.segments {
            ram[s.paddr as usize..][..s.bytes().len()].copy_from_slice(s.bytes());
        }
        ram[0x10_3000..0x10_3040].fill(0x55); // .data is not compared
        let memory = dir.join("guest.ram");
        std::fs::write(&memory, &ram).unwrap();
        (kernel, memory, image)
    }

    fn poke(memory: &Path, paddr: u64, byte: u8) {
        let f = OpenOptions::new().write(true).open(memory).unwrap();
        f.write_all_at(&[byte], paddr).unwrap();
    }

    #[test]
    fn expected_code_follows_failed_deployments() {
        use tuk_measure::eventlog::Record;
        let rec = |n: u64, pcr: u32, ty: &str, name: &str, code: &str| {
            Record::new(
                n,
                pcr,
                &[0; 32],
                ty,
                serde_json::json!({"name": name, "code_sha256": code}),
            )
        };
        let log = [
            rec(0, 4, "tuk.kernel", "x", "k"),
            rec(1, 9, "tuk.component", "a", "A1"),
            rec(2, 9, "tuk.component", "b", "b1"),
            rec(3, 9, "tuk.component", "a", "a2"),
            // a2 failed to load: a1 still runs.
            rec(4, 9, "tuk.component-failed", "a", "a2"),
            // b's only deployment failed: nothing runs for b.
            rec(5, 9, "tuk.component-failed", "b", "b1"),
            rec(6, 10, "tuk.component", "c", "not pcr 9"),
        ];
        let got = expected_code(&log);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [("a".to_owned(), "a1".to_owned())]
        );
    }

    #[test]
    fn finds_the_read_only_segments() {
        let (_, _, image) = setup("monitor-parse");
        let names: Vec<(&str, &str, u64, u64)> = image
            .segments
            .iter()
            .map(|s| (s.name.as_str(), s.perm, s.paddr, s.len))
            .collect();
        assert_eq!(
            names,
            [
                ("text", "r-x", 0x10_0000, 5000),
                ("rodata", "r--", 0x10_2000, 360)
            ]
        );
        assert_eq!(image.segments[0].sha256, sha256(image.segments[0].bytes()));
        assert!(KernelImage::parse(Path::new("x"), b"\x7fELF-not-really").is_err());
        let mut elf = synthetic_elf();
        elf[18] = 3; // EM_386
        assert!(KernelImage::parse(Path::new("x"), &elf).is_err());
    }

    #[test]
    fn detects_a_flipped_byte_and_where() {
        let (kernel, memory, image) = setup("monitor-check");
        let mut m = Monitor::new(&kernel, &memory).unwrap();
        let r = m.check().unwrap();
        assert!(r.ok(), "{:?}", r.segments);
        assert_eq!(r.bytes, 5360);

        poke(&memory, 0x10_0000 + 4321, 0xEE);
        let r = m.check().unwrap();
        assert!(!r.ok());
        let v: Vec<&SegmentCheck> = r.violations().collect();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name, "text");
        assert_eq!(v[0].first_diff, Some(4321));
        assert_ne!(v[0].expected_sha256, v[0].observed_sha256);
        assert!(r.segments[1].ok);

        // Restored: clean again. Writable segments (data, bss) are not compared.
        poke(&memory, 0x10_0000 + 4321, image.segments[0].bytes()[4321]);
        poke(&memory, 0x10_3010, 1);
        poke(&memory, 0x10_3100, 1);
        assert!(m.check().unwrap().ok());
    }

    #[test]
    fn refuses_ram_too_small_for_the_image() {
        let (kernel, memory, _) = setup("monitor-small");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&memory)
            .unwrap()
            .set_len(0x10_1000)
            .unwrap();
        let e = Monitor::new(&kernel, &memory).unwrap_err();
        assert!(matches!(e, MonitorError::OutsideRam { .. }), "{e}");
        assert!(e.to_string().contains("text"), "{e}");
    }

    #[test]
    fn thread_reports_each_distinct_change_once() {
        let (kernel, memory, image) = setup("monitor-thread");
        let rodata = image.segment("rodata").unwrap().bytes().to_vec();
        let m = Monitor::new(&kernel, &memory).unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let (tx, rx) = mpsc::channel();
        let t = m
            .spawn(Duration::from_millis(5), move |e| {
                if let Event::Checked(_) = e {
                    let _ = tx.send(());
                } else {
                    sink.lock().unwrap().push(e);
                }
            })
            .unwrap();
        let rounds = |n| {
            for _ in 0..n {
                rx.recv_timeout(Duration::from_secs(5)).expect("a check");
            }
        };
        rounds(3);
        poke(&memory, 0x10_2000 + 7, b'X');
        rounds(5);
        poke(&memory, 0x10_2000 + 9, b'Y'); // a second change: a new digest
        rounds(5);
        poke(&memory, 0x10_2000 + 7, rodata[7]); // restore both
        poke(&memory, 0x10_2000 + 9, rodata[9]);
        rounds(3);
        poke(&memory, 0x10_2000 + 7, b'X'); // changed again after a clean check
        rounds(3);
        t.stop();
        let got: Vec<(String, u64, u64)> = events
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                Event::Violation(v) => (v.segment.clone(), v.offset, v.paddr),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                ("rodata".to_owned(), 7, 0x10_2007),
                ("rodata".to_owned(), 7, 0x10_2007),
                ("rodata".to_owned(), 7, 0x10_2007),
            ]
        );
    }
}
