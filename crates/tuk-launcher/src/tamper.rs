//! An attack tool, for testing detection only (`tuk tamper`): writes bytes into a running
//! guest's RAM from the host, through the memory file QEMU maps shared, as an attacker with
//! hypervisor-level access would. The in-guest integrity monitor (`/_tuk/status`) and the
//! out-of-guest monitor ([`crate::monitor`]) must both notice.
//!
//! Targets are found the way an attacker would find them: the kernel's segments from the image
//! (`instance.json` names it), components' code and data from what the guest reports in
//! `GET /_tuk/status` (docs/contracts.md), the page tables from the root the guest reports
//! there. Guest-virtual addresses are guest-physical (the kernel identity-maps RAM), and
//! guest-physical address P is file offset P.

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::instance::InstanceInfo;
use crate::measured::hex;
use crate::monitor::{KernelImage, MonitorError};
use crate::qemu::LOW_RAM_LIMIT;

/// The path of the guest's integrity report.
pub const STATUS_PATH: &str = "/_tuk/status";
/// At most this many bytes per write.
pub const MAX_BYTES: usize = 4096;
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// What to overwrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `kernel:text`, `kernel:rodata`: a read-only segment of the kernel image, offset from its
    /// `p_paddr`.
    Kernel(String),
    /// `component:NAME:code`: the component's compiled code image (`code.addr` in the status).
    ComponentCode(String),
    /// `component:NAME:data`: its first immutable data range (`.rodata` in linear memory).
    ComponentData(String),
    /// `kernel:wx`: the page-table entry that maps the 4 KiB page at guest address `offset`,
    /// rewritten writable and executable (NX cleared, WRITABLE set): what injecting code into
    /// data needs. Found by walking the live tables from `kernel.page_tables.root`.
    KernelWx,
    /// `kernel:x`: the same entry rewritten read+execute (NX and WRITABLE cleared): code
    /// written while the page was writable, then made executable without ever being W+X.
    KernelX,
    /// `kernel:w`: the same entry made writable (WRITABLE set, NX kept): the first step of
    /// changing a read-only page, e.g. one the kernel sealed (`kernel.sealed` in the status).
    KernelW,
    /// `kernel:alias`: the same entry pointed at the next page's frame (flags kept): two
    /// virtual pages on one frame, so the identity map is no longer one to one.
    KernelAlias,
    /// `kernel:idt`, `kernel:gdt`, `kernel:tss`: a descriptor table's bytes, at `offset` from
    /// the address the guest reports in `kernel.descriptor_tables` of its status.
    KernelTable(String),
}

impl Target {
    /// Whether the target is a page-table entry (located by walking the guest's tables).
    pub fn is_page_table_entry(&self) -> bool {
        matches!(
            self,
            Target::KernelWx | Target::KernelX | Target::KernelW | Target::KernelAlias
        )
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["kernel", seg @ ("text" | "rodata")] => Ok(Target::Kernel((*seg).to_owned())),
            ["kernel", "wx"] => Ok(Target::KernelWx),
            ["kernel", "x"] => Ok(Target::KernelX),
            ["kernel", "w"] => Ok(Target::KernelW),
            ["kernel", "alias"] => Ok(Target::KernelAlias),
            ["kernel", t @ ("idt" | "gdt" | "tss")] => Ok(Target::KernelTable((*t).to_owned())),
            ["component", name, "code"] if !name.is_empty() => {
                Ok(Target::ComponentCode((*name).to_owned()))
            }
            ["component", name, "data"] if !name.is_empty() => {
                Ok(Target::ComponentData((*name).to_owned()))
            }
            _ => Err(format!(
                "unknown target `{s}` (expected kernel:text, kernel:rodata, kernel:wx, \
                 kernel:x, kernel:w, kernel:alias, kernel:idt, kernel:gdt, kernel:tss, \
                 component:NAME:code or component:NAME:data)"
            )),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Kernel(seg) => write!(f, "kernel:{seg}"),
            Target::ComponentCode(n) => write!(f, "component:{n}:code"),
            Target::ComponentData(n) => write!(f, "component:{n}:data"),
            Target::KernelWx => f.write_str("kernel:wx"),
            Target::KernelX => f.write_str("kernel:x"),
            Target::KernelW => f.write_str("kernel:w"),
            Target::KernelAlias => f.write_str("kernel:alias"),
            Target::KernelTable(t) => write!(f, "kernel:{t}"),
        }
    }
}

/// What [`tamper`] wrote; serializes as the `tampered` event of docs/contracts.md (with
/// `event` added by the CLI).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tampered {
    pub target: String,
    /// Guest-physical address of the first byte written.
    pub paddr: u64,
    /// The offset asked for, within the target.
    pub offset: u64,
    #[serde(serialize_with = "as_hex")]
    pub old: Vec<u8>,
    #[serde(serialize_with = "as_hex")]
    pub new: Vec<u8>,
}

fn as_hex<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(bytes))
}

impl fmt::Display for Tampered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}+{} at paddr {:#x}: {} -> {}",
            self.target,
            self.offset,
            self.paddr,
            hex(&self.old),
            hex(&self.new)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TamperError {
    #[error("no running instance in {dir} ({cause}): start one with `tuk run --state-dir {dir}`", dir = .dir.display())]
    NoInstance { dir: PathBuf, cause: io::Error },
    #[error("the instance in {dir} is not running (QEMU pid {pid} is gone; instance.json is stale)", dir = .dir.display())]
    NotRunning { dir: PathBuf, pid: u32 },
    #[error("{0}")]
    Kernel(#[from] MonitorError),
    #[error("the kernel image has no `{0}` segment")]
    NoSegment(String),
    #[error("GET {url}{STATUS_PATH}: {reason}")]
    Status { url: String, reason: String },
    #[error("no component `{name}` in the guest's status (it has: {known})")]
    NoComponent { name: String, known: String },
    #[error("component `{name}` has no {what} in the guest's status; {hint}")]
    NoRange {
        name: String,
        what: &'static str,
        hint: &'static str,
    },
    #[error("{target}: offset {offset} + {len} byte(s) is outside the target ({size} bytes)")]
    OutOfBounds {
        target: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("paddr {paddr:#x} + {len} is outside guest RAM's file ({memory_bytes} bytes, the first {LOW_RAM_LIMIT} addressed 1:1)")]
    OutsideRam {
        paddr: u64,
        len: u64,
        memory_bytes: u64,
    },
    #[error("{0}")]
    PageTables(String),
    #[error("bytes to write: {0}")]
    BadBytes(String),
    #[error("{what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
}

/// Parses `--bytes`: hex, 1 to [`MAX_BYTES`] bytes.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, TamperError> {
    let bad = |m: &str| TamperError::BadBytes(format!("`{s}`: {m}"));
    if s.is_empty() || s.len() % 2 != 0 {
        return Err(bad("expected an even number of hex digits"));
    }
    if s.len() / 2 > MAX_BYTES {
        return Err(bad("too long"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| bad("not hex"))
        })
        .collect()
}

/// Where `target` + `offset` is, as a guest-physical address, checking that `len` bytes fit
/// inside the target.
pub fn locate(
    info: &InstanceInfo,
    target: &Target,
    offset: u64,
    len: u64,
) -> Result<u64, TamperError> {
    let (base, size) = match target {
        Target::Kernel(seg) => {
            let image = KernelImage::load(&info.kernel)?;
            let s = image
                .segment(seg)
                .ok_or_else(|| TamperError::NoSegment(seg.clone()))?;
            (s.paddr, s.len)
        }
        Target::ComponentCode(_) | Target::ComponentData(_) => {
            component_range(&guest_status(info)?, target)?
        }
        Target::KernelTable(t) => descriptor_table(&guest_status(info)?, t)?,
        Target::KernelWx | Target::KernelX | Target::KernelW | Target::KernelAlias => {
            unreachable!("a page-table target is located by walking the page tables")
        }
    };
    if offset.checked_add(len).is_some_and(|end| end <= size) {
        Ok(base + offset)
    } else {
        Err(TamperError::OutOfBounds {
            target: target.to_string(),
            offset,
            len,
            size,
        })
    }
}

/// A component target's `(guest-physical address, length)` from the guest's status document:
/// `code` is `instances[i].code.{addr,len}`; `data` is `instances[i].immutable[0]`, at
/// `memory.base + offset`.
pub fn component_range(
    status: &serde_json::Value,
    target: &Target,
) -> Result<(u64, u64), TamperError> {
    let (name, code) = match target {
        Target::ComponentCode(n) => (n, true),
        Target::ComponentData(n) => (n, false),
        Target::Kernel(_)
        | Target::KernelWx
        | Target::KernelX
        | Target::KernelW
        | Target::KernelAlias
        | Target::KernelTable(_) => {
            unreachable!("a kernel target is not a component range")
        }
    };
    let instance = find_instance(status, name)?;
    let num = |v: Option<&serde_json::Value>, key: &str| v?.get(key)?.as_u64();
    let missing = |what, hint| TamperError::NoRange {
        name: name.clone(),
        what,
        hint,
    };
    if code {
        let c = instance.get("code");
        return match (num(c, "addr"), num(c, "len")) {
            (Some(addr), Some(len)) => Ok((addr, len)),
            _ => Err(missing(
                "code image (code.addr, code.len)",
                "the kernel's /_tuk/status is not the documented one",
            )),
        };
    }
    let base = num(instance.get("memory"), "base")
        .ok_or_else(|| missing("linear memory (memory.base)", "it exports no memory"))?;
    let first = instance
        .get("immutable")
        .and_then(|r| r.as_array())
        .and_then(|r| r.first());
    match (num(first, "offset"), num(first, "len")) {
        (Some(at), Some(len)) => Ok((base + at, len)),
        _ => Err(missing(
            "immutable data range (immutable[0])",
            "its signed .wasm declares none (unsigned development mode, or a name section \
             without .rodata segment names)",
        )),
    }
}

/// `tuk tamper`: finds the instance in `state_dir`, locates the target and writes `bytes`
/// there (default: the byte there XOR 0xFF, one flipped byte). Returns what was there and
/// what is now.
pub fn tamper(
    state_dir: &Path,
    target: &Target,
    offset: u64,
    bytes: Option<&[u8]>,
) -> Result<Tampered, TamperError> {
    let info = InstanceInfo::read(state_dir).map_err(|cause| TamperError::NoInstance {
        dir: state_dir.into(),
        cause,
    })?;
    if !Path::new("/proc").join(info.pid.to_string()).exists() {
        return Err(TamperError::NotRunning {
            dir: state_dir.into(),
            pid: info.pid,
        });
    }
    let io = |what| {
        let path = info.memory_file.clone();
        move |cause| TamperError::Io { what, path, cause }
    };
    let ram = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&info.memory_file)
        .map_err(io("cannot open guest RAM"))?;
    let memory_bytes = ram.metadata().map_err(io("cannot stat guest RAM"))?.len();
    let (paddr, len) = if target.is_page_table_entry() {
        if bytes.is_some() {
            return Err(TamperError::BadBytes(format!(
                "{target} writes the page-table entry itself; drop --bytes"
            )));
        }
        let root = page_table_root(&guest_status(&info)?)?;
        let read = |paddr: u64| {
            let mut entry = [0u8; 8];
            if paddr + 8 > memory_bytes.min(LOW_RAM_LIMIT) {
                return Err(TamperError::OutsideRam {
                    paddr,
                    len: 8,
                    memory_bytes,
                });
            }
            ram.read_exact_at(&mut entry, paddr)
                .map_err(io("cannot read guest RAM"))?;
            Ok(u64::from_le_bytes(entry))
        };
        (leaf_entry(read, root, offset)?, 8)
    } else {
        let len = bytes.map_or(1, <[u8]>::len) as u64;
        if len == 0 || len > MAX_BYTES as u64 {
            return Err(TamperError::BadBytes(format!(
                "1 to {MAX_BYTES} bytes, not {len}"
            )));
        }
        (locate(&info, target, offset, len)?, len)
    };
    if paddr + len > memory_bytes.min(LOW_RAM_LIMIT) {
        return Err(TamperError::OutsideRam {
            paddr,
            len,
            memory_bytes,
        });
    }
    let mut old = vec![0u8; len as usize];
    ram.read_exact_at(&mut old, paddr)
        .map_err(io("cannot read guest RAM"))?;
    let new = match bytes {
        Some(b) => b.to_vec(),
        None if target.is_page_table_entry() => {
            let entry = u64::from_le_bytes(old.as_slice().try_into().expect("8 bytes"));
            rewrite_entry(target, entry).to_le_bytes().to_vec()
        }
        None => old.iter().map(|b| b ^ 0xFF).collect(),
    };
    ram.write_all_at(&new, paddr)
        .map_err(io("cannot write guest RAM"))?;
    Ok(Tampered {
        target: target.to_string(),
        paddr,
        offset,
        old,
        new,
    })
}

const PTE_PRESENT: u64 = 1;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_HUGE: u64 = 1 << 7;
const PTE_NO_EXECUTE: u64 = 1 << 63;
const PTE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// The page-table attack: the new value of a last-level entry.
fn rewrite_entry(target: &Target, entry: u64) -> u64 {
    match target {
        Target::KernelWx => (entry & !PTE_NO_EXECUTE) | PTE_WRITABLE,
        Target::KernelX => entry & !(PTE_NO_EXECUTE | PTE_WRITABLE),
        Target::KernelW => entry | PTE_WRITABLE,
        Target::KernelAlias => {
            let next = (entry & PTE_ADDRESS) + 4096;
            (entry & !PTE_ADDRESS) | (next & PTE_ADDRESS)
        }
        _ => entry,
    }
}

/// A descriptor table's `(address, length)` from the guest's status
/// (`kernel.descriptor_tables.<idt|gdt|tss>`).
fn descriptor_table(status: &serde_json::Value, table: &str) -> Result<(u64, u64), TamperError> {
    let t = status.pointer(&format!("/kernel/descriptor_tables/{table}"));
    let num = |key: &str| t?.get(key)?.as_u64();
    match (num("addr"), num("len")) {
        (Some(addr), Some(len)) if len > 0 => Ok((addr, len)),
        _ => Err(TamperError::PageTables(format!(
            "the guest's status has no kernel.descriptor_tables.{table} (a kernel older than this tool)"
        ))),
    }
}

/// The root of the guest's page tables (CR3), as the guest reports it.
fn page_table_root(status: &serde_json::Value) -> Result<u64, TamperError> {
    status
        .pointer("/kernel/page_tables/root")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| {
            TamperError::PageTables(
                "the guest's status has no kernel.page_tables.root (a kernel older than this tool)"
                    .into(),
            )
        })
}

/// Walks x86-64 4-level page tables from `root` (`read` gives the 8-byte entry at a
/// guest-physical address) to the last-level entry mapping `vaddr`; returns that entry's
/// guest-physical address. A page mapped by a huge page, or not mapped, is an error.
fn leaf_entry(
    read: impl Fn(u64) -> Result<u64, TamperError>,
    root: u64,
    vaddr: u64,
) -> Result<u64, TamperError> {
    let mut table = root & PTE_ADDRESS;
    for level in (1..=4u32).rev() {
        let index = (vaddr >> (12 + 9 * (level - 1))) & 0x1ff;
        let at = table + index * 8;
        if level == 1 {
            return Ok(at);
        }
        let entry = read(at)?;
        if entry & PTE_PRESENT == 0 {
            return Err(TamperError::PageTables(format!(
                "guest address {vaddr:#x} is not mapped (level {level} entry at {at:#x} is not present)"
            )));
        }
        if entry & PTE_HUGE != 0 {
            return Err(TamperError::PageTables(format!(
                "guest address {vaddr:#x} is in a huge page (level {level}); pick a 4 KiB page, e.g. a component's memory.base"
            )));
        }
        table = entry & PTE_ADDRESS;
    }
    unreachable!("level 1 returns")
}

/// `GET /_tuk/status` from the guest, as JSON.
fn guest_status(info: &InstanceInfo) -> Result<serde_json::Value, TamperError> {
    // /_tuk/status is served on the admin listener only.
    let bad = |reason: String| TamperError::Status {
        url: info.admin.clone(),
        reason,
    };
    let addr = info.admin_addr().ok_or_else(|| {
        bad("instance.json's admin is not http://IP:PORT (an instance from an older tuk?)".into())
    })?;
    let reply =
        crate::health::get(addr, STATUS_PATH, STATUS_TIMEOUT).map_err(|e| bad(e.to_string()))?;
    if reply.status != 200 {
        return Err(bad(format!(
            "status {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        )));
    }
    serde_json::from_slice(&reply.body).map_err(|e| bad(format!("not JSON: {e}")))
}

fn find_instance<'a>(
    status: &'a serde_json::Value,
    name: &str,
) -> Result<&'a serde_json::Value, TamperError> {
    let instances = status
        .get("instances")
        .and_then(|i| i.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    instances
        .iter()
        .find(|i| i.get("name").and_then(|n| n.as_str()) == Some(name))
        .ok_or_else(|| TamperError::NoComponent {
            name: name.to_owned(),
            known: {
                let names: Vec<&str> = instances
                    .iter()
                    .filter_map(|i| i.get("name")?.as_str())
                    .collect();
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        for s in [
            "kernel:text",
            "kernel:rodata",
            "component:hello:code",
            "component:kv:data",
        ] {
            assert_eq!(s.parse::<Target>().unwrap().to_string(), s);
        }
        assert_eq!("kernel:wx".parse::<Target>().unwrap(), Target::KernelWx);
        assert_eq!(Target::KernelWx.to_string(), "kernel:wx");
        for s in [
            "kernel:x",
            "kernel:alias",
            "kernel:idt",
            "kernel:gdt",
            "kernel:tss",
        ] {
            assert_eq!(s.parse::<Target>().unwrap().to_string(), s);
        }
        assert!("kernel:x".parse::<Target>().unwrap().is_page_table_entry());
        assert!(!"kernel:idt"
            .parse::<Target>()
            .unwrap()
            .is_page_table_entry());
        for s in [
            "kernel:data",
            "kernel",
            "component::code",
            "component:a:b:code",
            "component:a:stack",
        ] {
            assert!(s.parse::<Target>().is_err(), "{s}");
        }
    }

    #[test]
    fn page_table_walk() {
        // A 4-level table in a byte buffer: root at 0x1000, then 0x2000, 0x3000, 0x4000;
        // guest address 0x40_5000 (PML4 0, PDPT 0, PD 2, PT 5); PD 3 is a huge page.
        let mut ram = vec![0u8; 0x5000];
        let mut put = |at: usize, v: u64| ram[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(0x1000, 0x2000 | PTE_PRESENT | PTE_WRITABLE);
        put(0x2000, 0x3000 | PTE_PRESENT | PTE_WRITABLE);
        put(0x3000 + 2 * 8, 0x4000 | PTE_PRESENT | PTE_WRITABLE);
        put(0x3000 + 3 * 8, 0x60_0000 | PTE_PRESENT | PTE_HUGE);
        let read = |at: u64| {
            let at = at as usize;
            Ok(u64::from_le_bytes(ram[at..at + 8].try_into().unwrap()))
        };
        assert_eq!(leaf_entry(read, 0x1000, 0x40_5000).unwrap(), 0x4000 + 5 * 8);
        assert_eq!(leaf_entry(read, 0x1000, 0x40_5fff).unwrap(), 0x4000 + 5 * 8);
        let e = leaf_entry(read, 0x1000, 0x60_1000).unwrap_err();
        assert!(e.to_string().contains("huge page"), "{e}");
        let e = leaf_entry(read, 0x1000, 0x20_0000).unwrap_err();
        assert!(e.to_string().contains("not mapped"), "{e}");
        let e = page_table_root(&serde_json::json!({"kernel": {}})).unwrap_err();
        assert!(e.to_string().contains("page_tables.root"), "{e}");
    }

    #[test]
    fn page_table_attacks() {
        let rw_nx = 0x40_5000 | PTE_PRESENT | PTE_WRITABLE | PTE_NO_EXECUTE;
        assert_eq!(
            rewrite_entry(&Target::KernelWx, rw_nx),
            0x40_5000 | PTE_PRESENT | PTE_WRITABLE
        );
        assert_eq!(
            rewrite_entry(&Target::KernelX, rw_nx),
            0x40_5000 | PTE_PRESENT
        );
        assert_eq!(
            rewrite_entry(&Target::KernelAlias, rw_nx),
            0x40_6000 | PTE_PRESENT | PTE_WRITABLE | PTE_NO_EXECUTE
        );
        let status = serde_json::json!({"kernel": {"descriptor_tables": {
            "idt": {"addr": 4096, "len": 4096, "sha256": "00"}}}});
        assert_eq!(descriptor_table(&status, "idt").unwrap(), (4096, 4096));
        let e = descriptor_table(&status, "gdt").unwrap_err();
        assert!(e.to_string().contains("descriptor_tables.gdt"), "{e}");
    }

    #[test]
    fn hex_bytes() {
        assert_eq!(parse_hex("00ff10").unwrap(), [0, 0xff, 0x10]);
        for bad in ["", "abc", "zz", "é1"] {
            assert!(parse_hex(bad).is_err(), "{bad}");
        }
        assert!(parse_hex(&"00".repeat(MAX_BYTES + 1)).is_err());
    }

    #[test]
    fn component_ranges_from_the_status_contract() {
        let status = serde_json::json!({"interval_ms":100,"policy":"reinstantiate","kernel":{},
            "instances":[{"name":"hello","state":"trusted","checks":12,"violations":0,
                "last_check_ms":1234,"code":{"addr":1234567,"len":345678,"sha256":"00"},
                "memory":{"base":2345678,"bytes":1114112,"limit_bytes":16777216},
                "immutable":[{"name":".rodata","offset":1048576,"len":4096}]},
                {"name":"bare","code":{"addr":1,"len":2},"memory":null,"immutable":[]}]});
        let code = |n: &str| Target::ComponentCode(n.to_owned());
        let data = |n: &str| Target::ComponentData(n.to_owned());
        assert_eq!(
            component_range(&status, &code("hello")).unwrap(),
            (1234567, 345678)
        );
        assert_eq!(
            component_range(&status, &data("hello")).unwrap(),
            (2345678 + 1048576, 4096)
        );
        assert_eq!(component_range(&status, &code("bare")).unwrap(), (1, 2));
        let e = component_range(&status, &data("bare")).unwrap_err();
        assert!(e.to_string().contains("no linear memory"), "{e}");
        let mut no_ranges = status.clone();
        no_ranges["instances"][0]["immutable"] = serde_json::json!([]);
        let e = component_range(&no_ranges, &data("hello")).unwrap_err();
        assert!(e.to_string().contains("immutable data range"), "{e}");
        let e = find_instance(&status, "nope").unwrap_err();
        assert!(e.to_string().contains("hello, bare"), "{e}");
        assert!(find_instance(&serde_json::json!({}), "x")
            .unwrap_err()
            .to_string()
            .contains("none"));
    }
}
