//! The boot-configuration reference: what PCR 5's `tuk.boot-config` document (the launcher's
//! measurement of the QEMU command line, docs/measurement.md) may say for the verifier to affirm
//! an instance, and the run-time measurement freshness rule (docs/attestation.md, "The boot
//! configuration reference").
//!
//! The document is appraised field by field ([`appraise_boot_config`]); every field outside the
//! reference is one finding that names the field, its value and the bound. Unknown document
//! fields and unknown kernel command-line keys are findings too (fail closed) unless the
//! reference lists them. A verifier without a reference file uses [`BootReference::default`].

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

/// An inclusive range of integers.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    pub min: u64,
    pub max: u64,
}

impl Bounds {
    fn contains(self, v: u64) -> bool {
        (self.min..=self.max).contains(&v)
    }
}

impl std::fmt::Display for Bounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

/// How fresh the instance's run-time measurement must be (docs/attestation.md).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    /// The last round may be at most this many intervals old (plus `slack_ms`).
    #[serde(default = "default_rounds")]
    pub rounds: u64,
    /// Added to every bound: rounds run from the kernel's event loop, between requests, on a
    /// possibly loaded host.
    #[serde(default = "default_slack_ms")]
    pub slack_ms: u64,
}

fn default_rounds() -> u64 {
    3
}
fn default_slack_ms() -> u64 {
    2000
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            rounds: default_rounds(),
            slack_ms: default_slack_ms(),
        }
    }
}

/// The launcher's `-M` (tuk_launcher::qemu::MACHINE).
pub const DEFAULT_MACHINE: &str = "microvm,x-option-roms=off,rtc=off,acpi=off,memory-backend=ram";
/// The launcher's guest-RAM backend, `{memory_mib}` standing for the document's `memory_mib`:
/// guest RAM is a file the host maps shared, which the out-of-guest monitor reads.
pub const DEFAULT_MEMORY_BACKEND: &str = "memory-backend-file,id=ram,size={memory_mib}M,share=on";

/// Kernel command-line keys whose value does not weaken measurement (network, logging, HTTP
/// limits, the admin listener and its sockets, the TPM-work rate limit, the wall clock, QEMU's
/// own `virtio_mmio.device`): allowed with any value. host-kernel/src/config.rs is the list of
/// keys the kernel knows; the two keys that configure measurement (`integrity.interval_ms`, `integrity.policy`) are appraised against
/// the reference; every other key is a finding unless the reference lists it in `kernel_args`.
pub const NEUTRAL_KERNEL_ARGS: &[&str] = &[
    "ip",
    "gw",
    "port",
    "admin.port",
    "admin.listeners",
    "admin.max_connections",
    "ratelimit.tpm_per_s",
    "ratelimit.tpm_burst",
    "log",
    "time.unix_ms",
    "virtio_mmio.device",
    "http.idle_timeout_ms",
    "http.request_timeout_ms",
    "http.max_body",
    "http.max_head",
    "http.listeners",
    "http.max_connections",
    // Buffer budgets bound memory against floods (availability), not what is measured.
    "http.buffer_budget",
    "admin.buffer_budget",
];

/// The kernel's defaults and floor for `integrity.*` (host-kernel/src/integrity.rs `Settings`).
pub const KERNEL_DEFAULT_INTERVAL_MS: u64 = 1000;
pub const KERNEL_MIN_INTERVAL_MS: u64 = 10;
pub const KERNEL_DEFAULT_POLICY: &str = "reinstantiate";

/// The document fields the launcher writes (tuk_launcher::measured::BootConfig).
const KNOWN_FIELDS: [&str; 6] = [
    "boot_pack_sha256",
    "cmdline",
    "cpu",
    "machine",
    "memory_backend",
    "memory_mib",
];

/// The reference a boot configuration is appraised against (`--boot-reference FILE`, JSON with
/// these keys; every key optional, absent keys take the default's value; unknown keys are an
/// error).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BootReference {
    /// `integrity.interval_ms` (ms): the run-time measurement interval. 0 (off) is outside any
    /// range with `min` ≥ 1.
    pub interval_ms: Bounds,
    /// Allowed `integrity.policy` values.
    pub integrity_policies: Vec<String>,
    /// Allowed `-M` strings, exactly.
    pub machines: Vec<String>,
    /// Allowed `-cpu` strings, exactly.
    pub cpus: Vec<String>,
    /// Guest RAM (`-m`, MiB).
    pub memory_mib: Bounds,
    /// Allowed guest-RAM backends, exactly, `{memory_mib}` replaced by the document's value.
    pub memory_backends: Vec<String>,
    /// Allowed boot packs (SHA-256 hex of the components encoding); `null`: any boot pack
    /// (its components are appraised through PCR 9 anyway), but there must be one.
    pub boot_packs: Option<Vec<String>>,
    /// Kernel command-line keys allowed with any value beyond [`NEUTRAL_KERNEL_ARGS`].
    pub kernel_args: Vec<String>,
    /// Document fields allowed (and not appraised) beyond the launcher's six.
    pub fields: Vec<String>,
    pub freshness: Freshness,
}

impl Default for BootReference {
    fn default() -> Self {
        BootReference {
            interval_ms: Bounds {
                min: 10,
                max: 10_000,
            },
            integrity_policies: ["reinstantiate", "quarantine", "halt"]
                .map(str::to_owned)
                .to_vec(),
            machines: vec![DEFAULT_MACHINE.to_owned()],
            cpus: vec!["max".to_owned()],
            memory_mib: Bounds {
                min: 32,
                max: 16_384,
            },
            memory_backends: vec![DEFAULT_MEMORY_BACKEND.to_owned()],
            boot_packs: None,
            kernel_args: Vec::new(),
            fields: Vec::new(),
            freshness: Freshness::default(),
        }
    }
}

impl BootReference {
    /// Parses a reference file (see the type's docs).
    pub fn from_json(bytes: &[u8]) -> Result<BootReference, String> {
        let r: BootReference = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        for (name, b) in [("interval_ms", r.interval_ms), ("memory_mib", r.memory_mib)] {
            if b.min > b.max {
                return Err(format!("{name}: min {} is above max {}", b.min, b.max));
            }
        }
        if r.freshness.rounds == 0 {
            return Err("freshness.rounds must be at least 1".into());
        }
        Ok(r)
    }
}

/// What [`appraise_boot_config`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootFindings {
    /// One sentence per field outside the reference (empty: the configuration is the
    /// reference's).
    pub findings: Vec<String>,
    /// The run-time measurement interval the command line configures, as the kernel applies
    /// it (its default when absent, raised to its floor); `None` when unparseable.
    pub interval_ms: Option<u64>,
    /// The integrity policy the command line configures (the kernel's default when absent).
    pub policy: Option<String>,
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Appraises PCR 5's document against `reference`, field by field.
pub fn appraise_boot_config(doc: &Value, reference: &BootReference) -> BootFindings {
    let mut out = BootFindings::default();
    let f = &mut out.findings;
    let Some(map) = doc.as_object() else {
        f.push(format!(
            "the boot configuration is not a JSON object: {doc}"
        ));
        return out;
    };
    for key in map.keys() {
        if !KNOWN_FIELDS.contains(&key.as_str()) && !reference.fields.contains(key) {
            f.push(format!(
                "field {key} = {} is not a field of the launcher's boot configuration, and the \
                 reference does not list it in `fields`",
                map[key]
            ));
        }
    }
    let string = |f: &mut Vec<String>, key: &str| -> Option<String> {
        match map.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                f.push(format!("field {key} = {other} is not a string"));
                None
            }
            None => {
                f.push(format!("field {key} is missing"));
                None
            }
        }
    };
    if let Some(machine) = string(f, "machine") {
        if !reference.machines.contains(&machine) {
            f.push(format!(
                "machine = {machine:?} is not one of the reference's machines {}",
                list(&reference.machines)
            ));
        }
    }
    if let Some(cpu) = string(f, "cpu") {
        if !reference.cpus.contains(&cpu) {
            f.push(format!(
                "cpu = {cpu:?} is not one of the reference's cpus {}",
                list(&reference.cpus)
            ));
        }
    }
    let memory_mib = match map.get("memory_mib") {
        Some(v) => match v.as_u64() {
            Some(m) => {
                if !reference.memory_mib.contains(m) {
                    f.push(format!(
                        "memory_mib = {m} is outside the reference's bounds {} MiB",
                        reference.memory_mib
                    ));
                }
                Some(m)
            }
            None => {
                f.push(format!("field memory_mib = {v} is not an unsigned integer"));
                None
            }
        },
        None => {
            f.push("field memory_mib is missing".into());
            None
        }
    };
    if let Some(backend) = string(f, "memory_backend") {
        let allowed: Vec<String> = reference
            .memory_backends
            .iter()
            .map(|b| match memory_mib {
                Some(m) => b.replace("{memory_mib}", &m.to_string()),
                None => b.clone(),
            })
            .collect();
        if memory_mib.is_none() || !allowed.contains(&backend) {
            f.push(format!(
                "memory_backend = {backend:?} is not one of the reference's memory backends {}",
                list(&allowed)
            ));
        }
    }
    match map.get("boot_pack_sha256") {
        Some(Value::String(pack)) => {
            let is_digest = pack.len() == 64 && pack.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_digest {
                f.push(format!(
                    "boot_pack_sha256 = {pack:?} is not a SHA-256 in hex"
                ));
            } else if let Some(allowed) = &reference.boot_packs {
                if !allowed.iter().any(|a| a.eq_ignore_ascii_case(pack)) {
                    f.push(format!(
                        "boot_pack_sha256 = {pack} is not one of the reference's boot packs {}",
                        list(allowed)
                    ));
                }
            }
        }
        Some(other) => f.push(format!(
            "boot_pack_sha256 = {other}: the instance booted without a boot pack (the launcher \
             always gives one)"
        )),
        None => f.push("field boot_pack_sha256 is missing".into()),
    }
    if let Some(cmdline) = string(f, "cmdline") {
        appraise_cmdline(&cmdline, reference, &mut out);
    }
    out
}

/// The kernel command line, word by word (host-kernel/src/config.rs parses it the same way:
/// whitespace-separated `key=value`, the last of a repeated key wins — a repeated key is a
/// finding here).
fn appraise_cmdline(cmdline: &str, reference: &BootReference, out: &mut BootFindings) {
    let mut args: BTreeMap<&str, &str> = BTreeMap::new();
    let mut repeated = BTreeSet::new();
    for word in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            out.findings.push(format!(
                "kernel command-line word {word:?} is not key=value"
            ));
            continue;
        };
        if args.insert(key, value).is_some() {
            repeated.insert(key);
        }
    }
    for key in repeated {
        out.findings.push(format!(
            "kernel command-line key {key} is given more than once (the kernel takes the last)"
        ));
    }
    for (&key, &value) in &args {
        let known = matches!(key, "integrity.interval_ms" | "integrity.policy")
            || NEUTRAL_KERNEL_ARGS.contains(&key)
            || reference.kernel_args.iter().any(|k| k == key);
        if !known {
            out.findings.push(format!(
                "kernel command-line key {key} (= {value:?}) is not one the reference knows \
                 (add it to the reference's `kernel_args` if it does not weaken measurement)"
            ));
        }
    }
    let bounds = reference.interval_ms;
    out.interval_ms = match args.get("integrity.interval_ms") {
        None => {
            if !bounds.contains(KERNEL_DEFAULT_INTERVAL_MS) {
                out.findings.push(format!(
                    "integrity.interval_ms is not set (the kernel's default {KERNEL_DEFAULT_INTERVAL_MS} \
                     ms) and the default is outside the reference's bounds {bounds} ms"
                ));
            }
            Some(KERNEL_DEFAULT_INTERVAL_MS)
        }
        Some(v) => match v.parse::<u64>() {
            Ok(0) if !bounds.contains(0) => {
                out.findings.push(format!(
                    "integrity.interval_ms = 0 turns run-time measurement off (reference bounds \
                     {bounds} ms)"
                ));
                Some(0)
            }
            Ok(0) => Some(0),
            Ok(ms) => {
                if !bounds.contains(ms) {
                    out.findings.push(format!(
                        "integrity.interval_ms = {ms} is outside the reference's bounds {bounds} ms"
                    ));
                }
                Some(ms.max(KERNEL_MIN_INTERVAL_MS))
            }
            Err(_) => {
                out.findings.push(format!(
                    "integrity.interval_ms = {v:?} is not a number of milliseconds (reference \
                     bounds {bounds} ms)"
                ));
                None
            }
        },
    };
    let policy = args
        .get("integrity.policy")
        .copied()
        .unwrap_or(KERNEL_DEFAULT_POLICY);
    if !reference.integrity_policies.iter().any(|p| p == policy) {
        out.findings.push(format!(
            "integrity.policy = {policy:?} is not one of the reference's integrity policies {}",
            list(&reference.integrity_policies)
        ));
    }
    out.policy = Some(policy.to_owned());
}

/// How far a round's time may lie after the report's uptime: the kernel reads its clock for
/// each in whole milliseconds at slightly different moments of building one report (seen: a
/// round at 358 ms in a report saying uptime 357 ms). More than this is a report that lies.
pub const REPORT_SKEW_MS: u64 = 50;

/// The run-time measurement freshness rule for one subject (docs/attestation.md): `None` when
/// fresh, else why not. All arithmetic saturates: the inputs come from the instance.
///
/// - `interval_ms` 0: off, never fresh.
/// - no completed round (`last_check_ms` `None`): not fresh once `uptime_ms` exceeds
///   `since_ms + interval + interval/4 (the kernel's round jitter) + slack`, where `since_ms`
///   is when the subject started to exist (0 for the kernel and boot components).
/// - else: not fresh when the last round is older than `rounds × interval + slack`, or lies
///   more than [`REPORT_SKEW_MS`] in the future.
///
/// `interval_ms` is capped at the reference's maximum, so a huge configured interval cannot
/// stretch the bound (it is a configuration finding of its own).
pub fn staleness(
    who: &str,
    uptime_ms: u64,
    interval_ms: u64,
    last_check_ms: Option<u64>,
    since_ms: u64,
    reference: &BootReference,
) -> Option<String> {
    if interval_ms == 0 {
        return Some(format!(
            "{who} is not re-measured: run-time measurement is off (interval 0)"
        ));
    }
    let interval = interval_ms.min(reference.interval_ms.max.max(1));
    let slack = reference.freshness.slack_ms;
    match last_check_ms {
        None => {
            // The first round comes one interval in, jittered by up to a quarter of it.
            let first = interval.saturating_add(interval / 4);
            let due = since_ms
                .min(uptime_ms)
                .saturating_add(first)
                .saturating_add(slack);
            (uptime_ms > due).then(|| {
                format!(
                    "{who} has no completed run-time measurement round at uptime {uptime_ms} ms \
                     (one was due by {due} ms: interval {interval} ms + 25 % jitter + {slack} ms)"
                )
            })
        }
        Some(last) if last > uptime_ms.saturating_add(REPORT_SKEW_MS) => Some(format!(
            "{who}'s last round at {last} ms is after the report's uptime {uptime_ms} ms"
        )),
        Some(last) => {
            let since = uptime_ms.saturating_sub(last);
            let bound = reference
                .freshness
                .rounds
                .saturating_mul(interval)
                .saturating_add(slack);
            (since > bound).then(|| {
                format!(
                    "{who} was last checked {since} ms ago, more than {} × {interval} ms + {slack} ms",
                    reference.freshness.rounds
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn honest() -> Value {
        json!({
            "boot_pack_sha256": "ab".repeat(32),
            "cmdline": "log=info integrity.interval_ms=100 time.unix_ms=1733300000000",
            "cpu": "max",
            "machine": DEFAULT_MACHINE,
            "memory_backend": "memory-backend-file,id=ram,size=96M,share=on",
            "memory_mib": 96,
        })
    }

    fn findings(doc: &Value) -> Vec<String> {
        appraise_boot_config(doc, &BootReference::default()).findings
    }

    /// The one finding for `doc`, which must name every one of `words`.
    fn refused(doc: Value, words: &[&str]) {
        let f = findings(&doc);
        assert_eq!(f.len(), 1, "{f:?}");
        for w in words {
            assert!(f[0].contains(w), "{:?} does not name {w:?}", f[0]);
        }
    }

    fn with(key: &str, value: Value) -> Value {
        let mut d = honest();
        d[key] = value;
        d
    }

    fn cmdline(c: &str) -> Value {
        with("cmdline", json!(c))
    }

    #[test]
    fn the_launchers_configuration_is_the_default_reference() {
        let a = appraise_boot_config(&honest(), &BootReference::default());
        assert!(a.findings.is_empty(), "{:?}", a.findings);
        assert_eq!(a.interval_ms, Some(100));
        assert_eq!(a.policy.as_deref(), Some("reinstantiate"));
        // No integrity keys: the kernel's defaults, which are inside the default reference.
        let a = appraise_boot_config(&cmdline(""), &BootReference::default());
        assert!(a.findings.is_empty(), "{:?}", a.findings);
        assert_eq!(a.interval_ms, Some(KERNEL_DEFAULT_INTERVAL_MS));
    }

    /// Every key the kernel's command-line parser knows is classified here: appraised
    /// (`integrity.*`) or neutral. A key added to host-kernel/src/config.rs without deciding
    /// whether it weakens measurement fails this test (and would make honest boots that use it
    /// contraindicated).
    #[test]
    fn every_kernel_command_line_key_is_classified() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../host-kernel/src/config.rs"
        );
        let source = std::fs::read_to_string(path).unwrap();
        let start = source
            .find("let ok = match key {")
            .expect("config.rs parses keys in `let ok = match key {`");
        let end = start + source[start..].find("_ =>").unwrap();
        let keys: BTreeSet<&str> = source[start..end]
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix('"'))
            .filter_map(|l| l.split_once('"').map(|(k, _)| k))
            .collect();
        assert!(keys.len() >= 15, "{keys:?}");
        let classified: BTreeSet<&str> = NEUTRAL_KERNEL_ARGS
            .iter()
            .copied()
            .chain(["integrity.interval_ms", "integrity.policy"])
            .collect();
        let unclassified: Vec<_> = keys.difference(&classified).collect();
        assert!(
            unclassified.is_empty(),
            "kernel command-line keys neither appraised nor neutral: {unclassified:?}"
        );
        // The command line `tuk run` gives (every neutral key, the measurement settings).
        let words: Vec<String> = NEUTRAL_KERNEL_ARGS
            .iter()
            .map(|k| format!("{k}=1"))
            .chain([
                "integrity.interval_ms=1000".into(),
                "integrity.policy=halt".into(),
            ])
            .collect();
        let a = appraise_boot_config(&cmdline(&words.join(" ")), &BootReference::default());
        assert!(a.findings.is_empty(), "{:?}", a.findings);
    }

    /// The launcher's document fields are the ones appraised here: a field added to
    /// `tuk_launcher::measured::BootConfig` needs a rule (else every boot is contraindicated).
    #[test]
    fn every_boot_config_field_is_appraised() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tuk-launcher/src/measured.rs"
        );
        let source = std::fs::read_to_string(path).unwrap();
        let start = source.find("pub struct BootConfig {").unwrap();
        let end = start + source[start..].find("\n}").unwrap();
        let fields: BTreeSet<&str> = source[start..end]
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("pub "))
            .filter_map(|l| l.split_once(':').map(|(f, _)| f))
            .collect();
        assert_eq!(fields, KNOWN_FIELDS.into_iter().collect());
    }

    #[test]
    fn measurement_off_or_too_rare_is_refused() {
        refused(
            cmdline("integrity.interval_ms=0"),
            &["integrity.interval_ms = 0", "off", "10..=10000"],
        );
        refused(
            cmdline("integrity.interval_ms=1000000000000"),
            &["integrity.interval_ms = 1000000000000", "10..=10000"],
        );
        refused(
            cmdline(&format!("integrity.interval_ms={}", u64::MAX)),
            &[&u64::MAX.to_string(), "10..=10000"],
        );
        // Beyond u64, or not a number: the kernel would use its default; the verifier does
        // not guess.
        refused(
            cmdline("integrity.interval_ms=99999999999999999999999"),
            &["not a number", "99999999999999999999999"],
        );
        refused(cmdline("integrity.interval_ms=1e3"), &["not a number"]);
        // Below the floor the kernel raises it; below the reference's minimum it is refused.
        let mut r = BootReference::default();
        r.interval_ms.min = 50;
        let a = appraise_boot_config(&cmdline("integrity.interval_ms=20"), &r);
        assert!(a.findings[0].contains("= 20 is outside the reference's bounds 50..=10000"));
        // The kernel's default outside the reference's bounds.
        r.interval_ms.max = 500;
        let a = appraise_boot_config(&cmdline(""), &r);
        assert!(a.findings[0].contains("is not set"), "{:?}", a.findings);
    }

    #[test]
    fn a_policy_outside_the_reference_is_refused() {
        let r = BootReference {
            integrity_policies: vec!["halt".into()],
            ..BootReference::default()
        };
        let a = appraise_boot_config(&cmdline("integrity.policy=quarantine"), &r);
        assert_eq!(a.findings.len(), 1);
        assert!(a.findings[0].contains("integrity.policy = \"quarantine\""));
        assert!(a.findings[0].contains("[\"halt\"]"));
        // Absent: the kernel's default, reinstantiate, is not allowed either.
        let a = appraise_boot_config(&cmdline(""), &r);
        assert!(a.findings[0].contains("\"reinstantiate\""));
        refused(
            cmdline("integrity.policy=ignore"),
            &["integrity.policy = \"ignore\""],
        );
    }

    #[test]
    fn unknown_repeated_and_malformed_kernel_args_are_refused() {
        refused(
            cmdline("integrity.check=none"),
            &["integrity.check", "\"none\"", "kernel_args"],
        );
        refused(
            cmdline("integrity.interval_ms=100 integrity.interval_ms=1000"),
            &["integrity.interval_ms", "more than once"],
        );
        refused(cmdline("nointegrity"), &["\"nointegrity\"", "key=value"]);
        // A key the reference lists is allowed with any value.
        let mut r = BootReference::default();
        r.kernel_args.push("debug.trace".into());
        let a = appraise_boot_config(&cmdline("debug.trace=1"), &r);
        assert!(a.findings.is_empty(), "{:?}", a.findings);
    }

    #[test]
    fn machine_cpu_memory_and_backend_outside_the_reference_are_refused() {
        refused(
            with("machine", json!("pc")),
            &["machine = \"pc\"", "microvm"],
        );
        refused(
            with(
                "machine",
                json!("microvm,x-option-roms=on,rtc=off,acpi=off,memory-backend=ram"),
            ),
            &["x-option-roms=on"],
        );
        refused(with("cpu", json!("host")), &["cpu = \"host\"", "[\"max\"]"]);
        let memory = |mib: Value| {
            let mut d = with("memory_mib", mib.clone());
            d["memory_backend"] = json!(format!("memory-backend-file,id=ram,size={mib}M,share=on"));
            d
        };
        refused(memory(json!(8)), &["memory_mib = 8", "32..=16384"]);
        refused(
            memory(json!(u64::MAX)),
            &["memory_mib = 18446744073709551615"],
        );
        let f = findings(&memory(json!(-1)));
        assert!(
            f[0].contains("memory_mib = -1 is not an unsigned integer"),
            "{f:?}"
        );
        // Not shared with the host: the out-of-guest monitor cannot read it.
        refused(
            with(
                "memory_backend",
                json!("memory-backend-ram,id=ram,size=96M"),
            ),
            &[
                "memory_backend = \"memory-backend-ram,id=ram,size=96M\"",
                "share=on",
            ],
        );
        // A size that is not the measured -m.
        refused(
            with(
                "memory_backend",
                json!("memory-backend-file,id=ram,size=4096M,share=on"),
            ),
            &["size=4096M", "size=96M"],
        );
    }

    #[test]
    fn boot_packs_and_unknown_or_missing_fields_are_refused() {
        refused(
            with("boot_pack_sha256", Value::Null),
            &["boot_pack_sha256 = null"],
        );
        refused(with("boot_pack_sha256", json!("zz")), &["\"zz\""]);
        let mut r = BootReference {
            boot_packs: Some(vec!["cd".repeat(32)]),
            ..BootReference::default()
        };
        let a = appraise_boot_config(&honest(), &r);
        assert_eq!(a.findings.len(), 1);
        assert!(a.findings[0].contains(&"ab".repeat(32)));
        r.boot_packs = Some(vec!["AB".repeat(32)]);
        assert!(appraise_boot_config(&honest(), &r).findings.is_empty());

        refused(
            with("monitor", json!("off")),
            &["field monitor = \"off\"", "`fields`"],
        );
        let mut r = BootReference::default();
        r.fields.push("monitor".into());
        assert!(appraise_boot_config(&with("monitor", json!("off")), &r)
            .findings
            .is_empty());
        let mut d = honest();
        d.as_object_mut().unwrap().remove("cpu");
        refused(d, &["field cpu is missing"]);
        refused(
            with("cmdline", json!(7)),
            &["field cmdline = 7 is not a string"],
        );
        assert!(!findings(&json!([1])).is_empty());
    }

    #[test]
    fn reference_files_parse_with_defaults_and_are_checked() {
        let r = BootReference::from_json(br#"{"interval_ms":{"min":50,"max":500}}"#).unwrap();
        assert_eq!(r.interval_ms, Bounds { min: 50, max: 500 });
        assert_eq!(r.machines, BootReference::default().machines);
        assert_eq!(r.freshness, Freshness::default());
        assert_eq!(
            BootReference::from_json(b"{}").unwrap(),
            BootReference::default()
        );
        assert!(
            BootReference::from_json(br#"{"interval":{"min":1,"max":2}}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(BootReference::from_json(br#"{"interval_ms":{"min":5,"max":1}}"#).is_err());
        assert!(BootReference::from_json(br#"{"freshness":{"rounds":0}}"#).is_err());
    }

    #[test]
    fn staleness_is_overflow_free_and_fails_closed() {
        let r = BootReference::default();
        let fresh = |up, iv, last, since| staleness("x", up, iv, last, since, &r);
        assert_eq!(fresh(5000, 1000, Some(4900), 0), None);
        assert_eq!(fresh(3250, 1000, None, 0), None);
        assert!(fresh(3251, 1000, None, 0).unwrap().contains("no completed"));
        assert!(fresh(60_000, 1000, Some(4900), 0)
            .unwrap()
            .contains("last checked"));
        assert!(fresh(5000, 0, Some(4900), 0).unwrap().contains("off"));
        assert!(fresh(5000, 1000, Some(9000), 0).unwrap().contains("after"));
        // A component published at uptime 60 s, not yet checked: fresh for one interval.
        assert_eq!(fresh(63_250, 1000, None, 60_000), None);
        assert!(fresh(63_251, 1000, None, 60_000).is_some());
        // Huge values from the instance: no panic, and not fresh.
        let m = u64::MAX;
        assert!(fresh(m, m, None, 0).is_some());
        assert!(fresh(m, m, Some(0), 0).is_some());
        assert!(fresh(m, m, Some(0), m).unwrap().contains("last checked"));
        // A start after the uptime counts from the uptime: the report cannot push it ahead.
        assert!(fresh(1, 1000, None, m).is_none());
        assert!(fresh(m, 1000, None, m).is_none());
        assert!(fresh(m, 1000, None, m - 3251).is_some());
        assert!(fresh(m, 1000, None, m - 3250).is_none());
        assert!(fresh(0, m, Some(m), 0).unwrap().contains("after"));
        // A huge interval does not stretch the bound: capped at the reference's maximum.
        assert!(fresh(40_000, 1_000_000_000_000, None, 0).is_some());
        assert!(fresh(40_000, m, Some(1), 0).is_some());
        let wide = BootReference {
            freshness: Freshness {
                rounds: m,
                slack_ms: m,
            },
            interval_ms: Bounds { min: 0, max: m },
            ..BootReference::default()
        };
        assert!(staleness("x", m, m, Some(0), 0, &wide).is_none());
        assert!(staleness("x", m, m, None, 0, &wide).is_none());
    }
}
