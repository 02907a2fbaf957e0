//! Dynamic integrity measurement: the kernel re-measures itself and every running component
//! on an interval, and responds to what changed.
//!
//! One round (docs/measurement.md, "Run-time measurement"):
//! - kernel: SHA-256 of its text and read-only data against the values taken at boot (after
//!   the final page tables), and a walk of the live page tables: no page writable and
//!   executable;
//! - each trusted component ([`crate::wasm::Deployed::check`]): its loaded code image against
//!   the hash taken when it was loaded, its memory and table sizes against the limits its
//!   signed `.wasm` declares, and its immutable data (`.rodata`) against the signed bytes.
//!
//! Two digests, one job each: SHA-256 is the measurement of record (what PCR 9 and PCR 10
//! name, what reports show); the periodic comparison of the large ranges (kernel text and
//! rodata, code images) uses [`fingerprint`], XXH3-128 under a per-boot random secret, which
//! is about an order of magnitude cheaper per byte (measured at boot, `hash_rates` in
//! `/_tuk/status`). Its reference is taken from the same bytes whose SHA-256 was taken, at the
//! same moment. The fingerprint is not a cryptographic MAC: it detects changes to memory by
//! anyone who does not know the secret (bugs, bit flips, writes from outside that do not first
//! read the kernel's memory). An attacker who can read and write all guest memory can also
//! rewrite the checker; against that adversary stands the out-of-guest monitor and the
//! measured, attested boot — see docs/measurement.md.
//!
//! A violation is a state change: it extends PCR 10 with one event-log record describing it,
//! and marks the subject untrusted (a component's routes then answer 503 with the reason).
//! Then the policy acts: `reinstantiate` (default) rebuilds the component from its verified
//! bytes and records that in PCR 10 too; `quarantine` leaves it untrusted until a newer
//! version is published; `halt` saves the TPM state and stops the host-kernel. A round that
//! finds nothing new extends nothing. The kernel cannot repair itself: a kernel violation is
//! recorded once per check and reported until the instance is replaced.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use spin::Once;
use xxhash_rust::xxh3::xxh3_128_with_secret;

use serde_json::{json, Value};
use tuk_measure::{hex, sha256};

use crate::arch::{self, ExitCode};
use crate::deploy::Deployer;
use crate::measured::PCR_INTEGRITY;

/// The per-boot secret of [`fingerprint`] (192 bytes from the CPU's random source), in a
/// sealed page (`arch::seal`: read-only, checked by every round's page-table audit).
static SECRET: Once<&'static [u8; 192]> = Once::new();

/// The keyed fast digest used for periodic comparison of large ranges (see the module docs).
pub fn fingerprint(bytes: &[u8]) -> u128 {
    let secret = SECRET.call_once(|| {
        let mut s = [0u8; 192];
        for chunk in s.chunks_mut(8) {
            chunk.copy_from_slice(&arch::random_u64().to_le_bytes());
        }
        arch::seal(s)
    });
    xxh3_128_with_secret(bytes, &secret[..])
}

/// Throughput of both digests over the kernel's text, measured once at boot (MB/s).
#[derive(Clone, Copy, Debug, Default)]
pub struct HashRates {
    pub sha256_mb_s: u64,
    pub fingerprint_mb_s: u64,
}

/// What happens to a component whose check fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Reinstantiate,
    Quarantine,
    Halt,
}

impl Policy {
    pub fn parse(s: &str) -> Option<Policy> {
        Some(match s {
            "reinstantiate" => Policy::Reinstantiate,
            "quarantine" => Policy::Quarantine,
            "halt" => Policy::Halt,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::Reinstantiate => "reinstantiate",
            Policy::Quarantine => "quarantine",
            Policy::Halt => "halt",
        }
    }
}

/// From the command line (`integrity.interval_ms`, `integrity.policy`).
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// 0 turns re-measurement off.
    pub interval_ms: u64,
    pub policy: Policy,
}

impl Settings {
    pub const DEFAULT_INTERVAL_MS: u64 = 1000;
    /// Shorter intervals are raised to this (a round must finish before the next is due).
    pub const MIN_INTERVAL_MS: u64 = 10;
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interval_ms: Self::DEFAULT_INTERVAL_MS,
            policy: Policy::Reinstantiate,
        }
    }
}

/// One failed check.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which check: `code`, `immutable-data`, `memory-size`, `memory-count`, `table-size`,
    /// `kernel-text`, `kernel-rodata`, `kernel-wx`, `kernel-exec` (executable pages other
    /// than the expected set), `kernel-identity` (a page that does not map its own frame),
    /// `kernel-control` (CR0/CR3/CR4/EFER/IDTR/GDTR changed), `kernel-descriptors` (the
    /// IDT, GDT or TSS contents changed), `kernel-sealed` (a page holding the references or
    /// the secret is no longer read-only).
    pub check: &'static str,
    pub detail: String,
    pub expected: Option<String>,
    pub observed: Option<String>,
}

impl Violation {
    pub fn simple(check: &'static str, detail: impl Into<String>) -> Violation {
        Violation {
            check,
            detail: detail.into(),
            expected: None,
            observed: None,
        }
    }
}

/// The monitor's record of one subject (the kernel or a component).
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub checks: u64,
    pub violations: u64,
    pub reinstantiations: u64,
    /// Uptime (ms) of the last check.
    pub last_check_ms: Option<u64>,
    /// The last violation, for reports.
    pub last_violation: Option<String>,
    untrusted: Option<String>,
}

impl Record {
    /// Why the subject is untrusted; `None` while trusted.
    pub fn untrusted_reason(&self) -> Option<&str> {
        self.untrusted.as_deref()
    }

    pub fn state(&self) -> &'static str {
        if self.untrusted.is_some() {
            "untrusted"
        } else {
            "trusted"
        }
    }

    /// The record as the run-time report and the status show it (plus `name` when given).
    pub fn to_json(&self, name: Option<&str>) -> Value {
        let mut v = json!({
            "state": self.state(),
            "checks": self.checks,
            "violations": self.violations,
            "reinstantiations": self.reinstantiations,
            "last_check_ms": self.last_check_ms,
        });
        if let (Value::Object(map), Some(name)) = (&mut v, name) {
            map.insert("name".into(), Value::from(name));
        }
        v
    }

    /// The record after a newer version was published: trusted again, history kept.
    pub fn redeployed(&self) -> Record {
        Record {
            untrusted: None,
            ..self.clone()
        }
    }
}

/// Round timings, for the status report and the benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundStats {
    pub rounds: u64,
    pub last_us: u64,
    pub max_us: u64,
    pub total_us: u64,
    /// Bytes hashed in the last round (kernel + code images + immutable data).
    pub last_bytes: u64,
    /// Where the last round's time went: the kernel's text and rodata, the page-table walk,
    /// the components' code images and invariants (µs each; the sum is about `last_us`).
    pub last_kernel_us: u64,
    pub last_wx_us: u64,
    pub last_components_us: u64,
    /// The last round's page-table audit.
    pub last_audit: arch::WxAudit,
}

pub struct Monitor {
    pub settings: Settings,
    next_due_us: u64,
    pub kernel: Record,
    /// The kernel's reference values, sealed (see [`References`]).
    refs: &'static References,
    pub hash_rates: HashRates,
    /// Kernel checks already recorded as violated (each is extended once).
    kernel_flagged: Vec<&'static str>,
    pub stats: RoundStats,
}

/// The kernel's reference values, taken once at boot and then sealed in a read-only page of
/// their own (`arch::seal`), which every round's page-table audit checks is still read-only,
/// no-execute and identity-mapped (docs/measurement.md, "Where the references live").
#[derive(Clone, Copy, Debug)]
struct References {
    text_sha256: [u8; 32],
    rodata_sha256: [u8; 32],
    /// Fingerprints of the text and rodata taken with the SHA-256 references.
    text_fp: u128,
    rodata_fp: u128,
    /// The control and descriptor-table registers after boot (the final page tables live).
    control: arch::ControlState,
    /// Fingerprints of the IDT, GDT and TSS bytes after boot, with their SHA-256.
    descriptors: [(u128, [u8; 32]); 3],
}

/// The bytes of the IDT, GDT and TSS (empty for a table the registers no longer place in the
/// kernel's image: the control check names that).
fn descriptor_bytes() -> [&'static [u8]; 3] {
    let (idt, gdt) = arch::descriptor_tables();
    [
        idt.unwrap_or_default(),
        gdt.unwrap_or_default(),
        arch::tss_bytes().unwrap_or_default(),
    ]
}

const DESCRIPTOR_NAMES: [&str; 3] = ["IDT", "GDT", "TSS"];

/// What differs between two readings of the control registers, e.g. `CR0 0x80010033 ->
/// 0x80000033`; empty if nothing does.
fn control_changes(boot: &arch::ControlState, now: &arch::ControlState) -> Vec<String> {
    let mut out = Vec::new();
    for (name, a, b) in [
        ("CR0", boot.cr0, now.cr0),
        ("CR3", boot.cr3, now.cr3),
        ("CR4", boot.cr4, now.cr4),
        ("EFER", boot.efer, now.efer),
        ("IDTR.base", boot.idtr_base, now.idtr_base),
        ("IDTR.limit", boot.idtr_limit.into(), now.idtr_limit.into()),
        ("GDTR.base", boot.gdtr_base, now.gdtr_base),
        ("GDTR.limit", boot.gdtr_limit.into(), now.gdtr_limit.into()),
    ] {
        if a != b {
            out.push(format!("{name} {a:#x} -> {b:#x}"));
        }
    }
    out
}

impl Monitor {
    /// Takes the kernel's reference hashes (call after the final page tables are live).
    pub fn new(mut settings: Settings, now_us: u64) -> Monitor {
        if settings.interval_ms != 0 && settings.interval_ms < Settings::MIN_INTERVAL_MS {
            log::warn!(
                "integrity.interval_ms={} is below {} ms; using {}",
                settings.interval_ms,
                Settings::MIN_INTERVAL_MS,
                Settings::MIN_INTERVAL_MS
            );
            settings.interval_ms = Settings::MIN_INTERVAL_MS;
        }
        let text = arch::kernel_text();
        let t0 = arch::now_us();
        let text_ref = sha256(text);
        let t1 = arch::now_us();
        let text_fp = fingerprint(text);
        let t2 = arch::now_us();
        let rate = |us: u64| text.len() as u64 / us.max(1); // bytes/us = MB/s
        let hash_rates = HashRates {
            sha256_mb_s: rate(t1 - t0),
            fingerprint_mb_s: rate(t2 - t1),
        };
        log::info!(
            "integrity: SHA-256 {} MB/s, fingerprint {} MB/s (kernel text, {} KiB)",
            hash_rates.sha256_mb_s,
            hash_rates.fingerprint_mb_s,
            text.len() >> 10
        );
        Monitor {
            settings,
            next_due_us: now_us + settings.interval_ms * 1000,
            kernel: Record::default(),
            refs: arch::seal(References {
                text_sha256: text_ref,
                rodata_sha256: sha256(arch::kernel_rodata()),
                text_fp,
                rodata_fp: fingerprint(arch::kernel_rodata()),
                control: arch::control_state(),
                descriptors: descriptor_bytes().map(|b| (fingerprint(b), sha256(b))),
            }),
            hash_rates,
            kernel_flagged: Vec::new(),
            stats: RoundStats::default(),
        }
    }

    /// The kernel's run-time facts for `/_tuk/status`'s `kernel` object: the last page-table
    /// audit, the control registers and where the descriptor tables are.
    pub fn kernel_status(&self) -> Value {
        let a = &self.stats.last_audit;
        let c = &self.refs.control;
        let tables = descriptor_bytes();
        let table = |i: usize| {
            json!({
                "addr": tables[i].as_ptr() as u64,
                "len": tables[i].len(),
                "sha256": hex(&self.refs.descriptors[i].1),
            })
        };
        json!({
            "paging": {
                "mapped_pages": a.mapped_pages,
                "executable_pages": a.executable_pages,
                "expected_executable_pages": a.expected_executable_pages,
                "unexpected_executable_pages": a.unexpected_executable_pages,
                "missing_executable_pages": a.missing_executable_pages,
                "writable_executable_pages": a.writable_executable_pages,
                "non_identity_pages": a.non_identity_pages,
                "sealed_pages": a.sealed_pages,
                "unsealed_pages": a.unsealed_pages,
            },
            "sealed": arch::sealed_ranges().iter().map(|&(start, end)| json!({"addr": start, "len": end - start})).collect::<Vec<_>>(),
            "control": {
                "cr0": c.cr0, "cr3": c.cr3, "cr4": c.cr4, "efer": c.efer,
                "idtr": {"base": c.idtr_base, "limit": c.idtr_limit},
                "gdtr": {"base": c.gdtr_base, "limit": c.gdtr_limit},
            },
            "descriptor_tables": {"idt": table(0), "gdt": table(1), "tss": table(2)},
        })
    }

    pub fn kernel_text_sha256(&self) -> &[u8; 32] {
        &self.refs.text_sha256
    }

    pub fn kernel_rodata_sha256(&self) -> &[u8; 32] {
        &self.refs.rodata_sha256
    }

    /// When the next round is due (`None`: re-measurement is off).
    pub fn next_due_us(&self) -> Option<u64> {
        (self.settings.interval_ms != 0).then_some(self.next_due_us)
    }

    /// Runs a round if one is due.
    pub fn tick(&mut self, deployer: &mut Deployer, now_us: u64) {
        if self.next_due_us().is_none_or(|due| now_us < due) {
            return;
        }
        self.round(deployer, now_us);
        let end = arch::now_us();
        self.next_due_us = end + jittered(self.settings.interval_ms * 1000, arch::random_u64());
    }

    /// One full round over the kernel and every trusted component.
    pub fn round(&mut self, deployer: &mut Deployer, now_us: u64) {
        let now_ms = now_us / 1000;
        let mut bytes = 0u64;

        self.kernel.checks += 1;
        self.kernel.last_check_ms = Some(now_ms);
        let text = arch::kernel_text();
        let rodata = arch::kernel_rodata();
        bytes += (text.len() + rodata.len()) as u64;
        let mut found = Vec::new();
        for (check, section, reference, fp) in [
            (
                "kernel-text",
                text,
                self.refs.text_sha256,
                self.refs.text_fp,
            ),
            (
                "kernel-rodata",
                rodata,
                self.refs.rodata_sha256,
                self.refs.rodata_fp,
            ),
        ] {
            if fingerprint(section) != fp {
                // Changed: the record names the SHA-256 of what is there now.
                let observed = sha256(section);
                found.push(Violation {
                    check,
                    detail: format!(
                        "the kernel's {} at {:#x} ({} bytes) changed since boot",
                        &check[7..],
                        section.as_ptr() as u64,
                        section.len()
                    ),
                    expected: Some(hex(&reference)),
                    observed: Some(hex(&observed)),
                });
            }
        }
        let kernel_done = arch::now_us();
        let wx = arch::audit_wx();
        found.extend(audit_violations(&wx));
        let control = arch::control_state();
        let changes = control_changes(&self.refs.control, &control);
        if !changes.is_empty() {
            found.push(Violation::simple(
                "kernel-control",
                format!(
                    "control registers changed since boot: {}",
                    changes.join(", ")
                ),
            ));
        }
        let tables = descriptor_bytes();
        let changed: Vec<&str> = DESCRIPTOR_NAMES
            .iter()
            .zip(tables.iter().zip(&self.refs.descriptors))
            .filter(|(_, (bytes, (fp, _)))| fingerprint(bytes) != *fp)
            .map(|(name, _)| *name)
            .collect();
        if let Some(first) = changed.first() {
            let i = DESCRIPTOR_NAMES
                .iter()
                .position(|n| n == first)
                .unwrap_or(0);
            found.push(Violation {
                check: "kernel-descriptors",
                detail: format!(
                    "the {} changed since boot (the first at {:#x})",
                    changed.join(", "),
                    tables[i].as_ptr() as u64
                ),
                expected: Some(hex(&self.refs.descriptors[i].1)),
                observed: Some(hex(&sha256(tables[i]))),
            });
        }
        let wx_done = arch::now_us();
        self.stats.last_audit = wx;
        for v in found {
            if !self.kernel_flagged.contains(&v.check) {
                self.kernel_flagged.push(v.check);
                self.kernel_violation(deployer, v, now_ms);
            }
        }

        let names: Vec<String> = deployer
            .runtime
            .components()
            .filter(|d| d.integrity.untrusted_reason().is_none())
            .map(|d| d.instance.name.clone())
            .collect();
        for name in names {
            let Some(d) = deployer.runtime.get_mut(&name) else {
                continue;
            };
            bytes += d.image.len + d.invariants.immutable.iter().map(|r| r.len).sum::<u64>();
            let result = d.check();
            d.integrity.checks += 1;
            d.integrity.last_check_ms = Some(now_ms);
            if let Err(v) = result {
                self.component_violation(deployer, &name, v, now_ms);
            }
        }

        let end = arch::now_us();
        let took = end.saturating_sub(now_us);
        self.stats.last_kernel_us = kernel_done.saturating_sub(now_us);
        self.stats.last_wx_us = wx_done.saturating_sub(kernel_done);
        self.stats.last_components_us = end.saturating_sub(wx_done);
        self.stats.rounds += 1;
        self.stats.last_us = took;
        self.stats.max_us = self.stats.max_us.max(took);
        self.stats.total_us += took;
        self.stats.last_bytes = bytes;
    }

    fn kernel_violation(&mut self, deployer: &mut Deployer, v: Violation, now_ms: u64) {
        self.kernel.violations += 1;
        self.kernel.last_violation = Some(format!("{}: {}", v.check, v.detail));
        self.kernel.untrusted = Some(format!("{}: {}", v.check, v.detail));
        log::error!("integrity: kernel {}: {}", v.check, v.detail);
        record(deployer, "kernel", &v, self.settings.policy, now_ms);
        if self.settings.policy == Policy::Halt {
            halt(deployer, "kernel", &v);
        }
    }

    fn component_violation(
        &mut self,
        deployer: &mut Deployer,
        name: &str,
        v: Violation,
        now_ms: u64,
    ) {
        let subject = format!("component:{name}");
        log::error!("integrity: {subject} {}: {}", v.check, v.detail);
        record(deployer, &subject, &v, self.settings.policy, now_ms);
        if let Some(d) = deployer.runtime.get_mut(name) {
            d.integrity.violations += 1;
            let reason = format!("{} check failed: {}", v.check, v.detail);
            d.integrity.last_violation = Some(reason.clone());
            d.integrity.untrusted = Some(reason);
        }
        match self.settings.policy {
            Policy::Quarantine => {
                log::warn!("integrity: {subject} quarantined (answers 503) until a newer version is published");
            }
            Policy::Halt => halt(deployer, &subject, &v),
            Policy::Reinstantiate => match deployer.runtime.reload(name) {
                Ok(()) => {
                    let Some(d) = deployer.runtime.get_mut(name) else {
                        return;
                    };
                    d.integrity.untrusted = None;
                    d.integrity.reinstantiations += 1;
                    let content = json!({
                        "kind": "reinstantiated",
                        "subject": subject,
                        "code_sha256": hex(&d.image.sha256),
                        "uptime_ms": now_ms,
                    });
                    log::warn!("integrity: {subject} re-instantiated from its verified bytes");
                    extend(deployer, content);
                }
                Err(e) => {
                    log::error!("integrity: {subject}: re-instantiation failed: {e}");
                    if let Some(d) = deployer.runtime.get_mut(name) {
                        d.integrity.untrusted = Some(format!("re-instantiation failed: {e}"));
                    }
                }
            },
        }
    }
}

/// The page-table audit's findings as violations: W+X pages, executable pages outside the
/// expected set (or expected ones gone), pages that do not map their own frame.
fn audit_violations(wx: &arch::WxAudit) -> Vec<Violation> {
    let mut out = Vec::new();
    if wx.writable_executable_pages != 0 {
        out.push(Violation::simple(
            "kernel-wx",
            format!(
                "{} pages are writable and executable",
                wx.writable_executable_pages
            ),
        ));
    }
    if wx.unexpected_executable_pages != 0 || wx.missing_executable_pages != 0 {
        out.push(Violation::simple(
            "kernel-exec",
            format!(
                "{} executable pages are not kernel text or component code (the first at {:#x}); \
                 {} of the {} expected executable pages are not executable",
                wx.unexpected_executable_pages,
                wx.first_unexpected_executable.unwrap_or(0),
                wx.missing_executable_pages,
                wx.expected_executable_pages
            ),
        ));
    }
    if wx.unsealed_pages != 0 {
        out.push(Violation::simple(
            "kernel-sealed",
            format!(
                "{} of the {} pages holding the monitor's references and secret are no longer \
                 read-only (the first at {:#x})",
                wx.unsealed_pages,
                wx.sealed_pages,
                wx.first_unsealed.unwrap_or(0)
            ),
        ));
    }
    if wx.non_identity_pages != 0 {
        out.push(Violation::simple(
            "kernel-identity",
            format!(
                "{} pages do not map their own frame (the first at {:#x}): an alias or a remapping",
                wx.non_identity_pages,
                wx.first_non_identity.unwrap_or(0)
            ),
        ));
    }
    out
}

/// The delay until the next round: `interval_us` ± up to 25 %, uniformly from `random`, so
/// that an observer of `last_check_ms` cannot time a tamper-and-restore between two rounds.
fn jittered(interval_us: u64, random: u64) -> u64 {
    let spread = interval_us / 2; // 50 % wide: 75 % ..= 125 %
    interval_us - interval_us / 4 + random % (spread + 1)
}

/// Extends PCR 10 with the violation's record.
fn record(deployer: &mut Deployer, subject: &str, v: &Violation, policy: Policy, now_ms: u64) {
    let mut content = json!({
        "kind": "violation",
        "subject": subject,
        "check": v.check,
        "detail": v.detail,
        "action": policy.name(),
        "uptime_ms": now_ms,
    });
    if let (Value::Object(map), Some(e), Some(o)) = (&mut content, &v.expected, &v.observed) {
        map.insert("expected_sha256".into(), Value::from(e.as_str()));
        map.insert("observed_sha256".into(), Value::from(o.as_str()));
    }
    extend(deployer, content);
}

/// Extends PCR 10 with the SHA-256 of `content`'s canonical JSON and logs the record.
fn extend(deployer: &mut Deployer, content: Value) {
    let canonical = serde_json::to_vec(&content).unwrap_or_default();
    let digest = sha256(&canonical);
    if let Err(e) = deployer
        .measurements
        .extend(PCR_INTEGRITY, &digest, "tuk.integrity", content)
    {
        log::error!("integrity: cannot extend PCR {PCR_INTEGRITY}: {e}");
    }
}

/// The `halt` policy: the TPM saves its state (PCR 10 stays inspectable) and the VM stops.
fn halt(deployer: &mut Deployer, subject: &str, v: &Violation) -> ! {
    deployer.measurements.shutdown();
    crate::logger::console_line(format_args!(
        "tuk: integrity halt: {subject} {}: {}",
        v.check, v.detail
    ));
    arch::exit_qemu(ExitCode::IntegrityHalt)
}
