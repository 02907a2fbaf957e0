//! `tuk attest URL`: one remote attestation of a running instance, thin over
//! `tuk_attest::attest` (docs/attestation.md, "Remote attestation").
//!
//! Unlike the other commands, the result itself goes to stdout: a readable summary, or the EAR
//! claims set as one JSON line with `--json`. Exit status: 0 affirming, 1 warning or
//! contraindicated (including refused evidence), 2 the attestation could not be done
//! (unreachable, not the contract's documents, bad arguments).

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;
use tuk_attest::monitor_report;
use tuk_attest::result::Claim;
use tuk_attest::{AttestationResult, HttpAttester, Status, Submodule};

#[derive(Args)]
pub struct AttestArgs {
    /// The instance's base URL, e.g. http://127.0.0.1:8080 (`tuk run`'s `ready` event).
    #[arg(value_name = "URL")]
    url: String,
    #[command(flatten)]
    refs: crate::verifier::ReferenceArgs,
    /// Print the result as an EAR claims set (JSON, one line) instead of the summary.
    #[arg(long)]
    json: bool,
    /// Seconds each request to the instance may take.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
    /// The out-of-guest monitor's signed report for this instance (`tuk run
    /// --monitor-report-listen`; the ready event's "monitor_report"), fetched after the quote:
    /// it must be signed by a --monitor-key, name the quoted AK and boot (PCR 4/5) and be
    /// fresh; a flagged one contraindicates, a missing, stale or unverifiable one is a warning.
    #[arg(long, value_name = "URL", requires = "monitor_key")]
    monitor_report: Option<String>,
    /// A monitor key the report must be signed by (the launcher host's monitor.pub, from
    /// ~/.local/share/tuk/monitor or $TUK_MONITOR_KEY_DIR; repeatable).
    #[arg(
        long = "monitor-key",
        value_name = "KEY.pub",
        requires = "monitor_report"
    )]
    monitor_key: Vec<std::path::PathBuf>,
}

pub fn attest(args: AttestArgs) -> Result<ExitCode> {
    let refs = args.refs.load()?;
    let monitor_keys = if args.monitor_key.is_empty() {
        Vec::new()
    } else {
        crate::sign::policy_of_keys(&args.monitor_key)
            .context("--monitor-key")?
            .keys
    };
    let timeout = Duration::from_secs(args.timeout.max(1));
    let mut attester = HttpAttester::new(&args.url, timeout);
    let started = Instant::now();
    let (result, evidence) = {
        let mut tap = monitor_report::EvidenceTap::new(&mut attester);
        let result = tuk_attest::attest(&mut tap, &refs);
        (result, tap.evidence)
    };
    let mut result = result.with_context(|| format!("cannot attest {}", attester.base_url()))?;
    if let Some(url) = &args.monitor_report {
        let fetched = monitor_report::fetch(url, timeout);
        monitor_report::appraise_report(
            &mut result,
            evidence.as_ref(),
            fetched,
            &monitor_keys,
            None,
        );
    }
    let elapsed = started.elapsed();
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut ear = result.to_ear();
        if let Value::Object(map) = &mut ear {
            map.insert("tuk_instance".into(), Value::from(attester.base_url()));
        }
        writeln!(out, "{ear}")
    } else {
        write!(out, "{}", summary(attester.base_url(), &result, elapsed))
    }
    .and_then(|()| out.flush())
    .context("cannot write to stdout")?;
    Ok(match result.status() {
        Status::Affirming => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// The first `n` hex digits of a fact, with an ellipsis.
fn short(v: Option<&Value>, n: usize) -> String {
    match v.and_then(Value::as_str) {
        Some(s) if s.len() > n => format!("{}…", &s[..n]),
        Some(s) => s.to_owned(),
        None => "?".to_owned(),
    }
}

fn counts(s: &Submodule) -> String {
    let Some(a) = &s.attester else {
        return String::new();
    };
    format!(
        "{}, {} checks, {} violations, {} re-instantiations",
        a["state"].as_str().unwrap_or("?"),
        a["checks"],
        a["violations"],
        a["reinstantiations"]
    )
}

/// The readable summary: the overall status, identity, quote and boot-configuration facts,
/// then one line per submodule with its status and what it runs, and every reason below it.
fn summary(url: &str, r: &AttestationResult, elapsed: Duration) -> String {
    let mut s = format!(
        "tuk attest {url}: {} ({} ms)\n",
        r.status().as_str().to_uppercase(),
        elapsed.as_millis()
    );
    if let Some(refusal) = &r.refusal {
        s += &format!("  REFUSED: {refusal}\n");
    }
    let kernel = r.submods.get("kernel");
    let fact = |key: &str| kernel.and_then(|k| k.facts.get(key));
    if let Some(cert) = fact("ek_certificate") {
        let chain: Vec<&str> = cert["chain"]
            .as_array()
            .map(|c| c.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        s += &format!(
            "  identity   EK certificate {} (serial {}), chain {}\n",
            cert["subject"].as_str().unwrap_or("?"),
            short(cert.get("serial"), 16),
            chain.join(" → ")
        );
        let activated = kernel
            .and_then(|k| k.vector.get(&Claim::InstanceIdentity))
            .is_some_and(|v| Status::of_claim(*v) == Status::Affirming);
        s += &format!(
            "             AK {} {}\n",
            short(fact("ak_name"), 20),
            if activated {
                "activated with the EK (credential activation)"
            } else {
                "not activated"
            }
        );
    }
    if let Some(tpm) = fact("tpm") {
        s += &format!(
            "  quote      fresh nonce {}, PCRs 4 5 8 9 10 = replay of {} event-log records; TPM resets {}, restarts {}\n",
            tuk_measure::hex(&r.nonce),
            fact("eventlog_records").map_or_else(|| "?".into(), Value::to_string),
            tpm["reset_count"],
            tpm["restart_count"]
        );
    }
    if let Some(boot) = fact("boot_config") {
        let integrity = fact("integrity");
        let machine = boot["machine"].as_str().unwrap_or("?");
        s += &format!(
            "  boot       PCR 5: {}, {} MiB, cpu {}; run-time measurement every {} ms, policy {}\n",
            machine.split(',').next().unwrap_or(machine),
            boot["memory_mib"],
            boot["cpu"].as_str().unwrap_or("?"),
            integrity.map_or_else(|| "?".into(), |i| i["interval_ms"].to_string()),
            integrity.and_then(|i| i["policy"].as_str()).unwrap_or("?")
        );
    }
    let width = r.submods.keys().map(String::len).max().unwrap_or(6).max(6);
    // The kernel first, then the components in name order.
    let ordered = r
        .submods
        .iter()
        .filter(|(n, _)| *n == "kernel")
        .chain(r.submods.iter().filter(|(n, _)| *n != "kernel"));
    for (name, sub) in ordered {
        let what = if name == "kernel" {
            let mut parts = Vec::new();
            for (label, key) in [("image", "kernel_sha256"), ("policy", "policy_sha256")] {
                if let Some(v) = sub.facts.get(key) {
                    parts.push(format!("{label} sha256:{}", short(Some(v), 16)));
                }
            }
            let mut what = parts.join(", ");
            if sub.attester.is_some() {
                what += &format!("; {}", counts(sub));
            }
            what
        } else {
            format!(
                "{} (key {}), code sha256:{}; {}",
                sub.facts
                    .get("version")
                    .and_then(Value::as_str)
                    .unwrap_or("?"),
                short(sub.facts.get("keyid"), 12),
                short(sub.facts.get("code_sha256"), 16),
                counts(sub)
            )
        };
        s += &format!("  {name:<width$}  {:<15}  {what}\n", sub.status().as_str());
        for reason in &sub.reasons {
            s += &format!("  {:<width$}    - {reason}\n", "");
        }
    }
    s
}
