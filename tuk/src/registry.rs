//! `tuk publish` and `tuk pull`: signed bundles to and from an OCI registry (the work is in
//! `tuk-registry`; this file reads and writes files and prints).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tuk_registry::{bundle, PublishOptions, Reference, Statement};

#[derive(Args)]
pub struct PublishArgs {
    /// The signed bundle `tuk sign` wrote (TUKBNDL1).
    #[arg(value_name = "BUNDLE")]
    bundle: PathBuf,
    /// Where to push it: [oci://]HOST[:PORT]/REPOSITORY:TAG, e.g. 127.0.0.1:5000/tuk/hello:1.0.0.
    #[arg(value_name = "REF", required_unless_present = "to")]
    reference: Option<String>,
    /// Publish straight to a running host-kernel instead (or as well): its ADMIN URL (the
    /// ready event's "admin", `tuk run --admin-listen`), e.g. http://127.0.0.1:9080. The kernel
    /// verifies, measures and deploys the bundle, or refuses it with a reason. The new version
    /// keeps the running one's kv data and configuration unless --reset-kv/--reset-config.
    #[arg(long, value_name = "URL")]
    to: Option<String>,
    /// With --to: start the new version with empty kv data instead of the running one's.
    #[arg(long, requires = "to")]
    reset_kv: bool,
    /// With --to: start the new version without the running one's configuration (config.*).
    #[arg(long, requires = "to")]
    reset_config: bool,
    /// Use http even though the registry is not on loopback.
    #[arg(long)]
    insecure: bool,
}

#[derive(Args)]
pub struct PullArgs {
    /// What to pull: [oci://]HOST[:PORT]/REPOSITORY:TAG or ...@sha256:DIGEST.
    #[arg(value_name = "REF")]
    reference: String,
    /// Where to write the bundle (default: ./<repository's last part>-<tag>.bundle).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Use http even though the registry is not on loopback.
    #[arg(long)]
    insecure: bool,
}

/// The JSON line each command prints on stdout.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
enum Event<'a> {
    PublishedToInstance {
        url: &'a str,
        name: &'a str,
        status: u16,
        response: &'a str,
    },
    Published {
        reference: String,
        digest: &'a str,
        pinned: String,
        name: &'a str,
        version: &'a str,
        uploaded: usize,
        skipped: usize,
        ms: u64,
    },
    Pulled {
        reference: String,
        digest: &'a str,
        path: &'a Path,
        sha256: &'a str,
        bytes: u64,
        ms: u64,
    },
}

fn emit(event: &Event<'_>) -> Result<()> {
    let line = serde_json::to_string(event).context("cannot encode an event")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

pub fn publish(args: PublishArgs) -> Result<ExitCode> {
    let bytes = read_bundle(&args.bundle)?;
    let sections = bundle::decode(&bytes)
        .with_context(|| format!("{} is not a valid bundle", args.bundle.display()))?;
    let statement = Statement::from_envelope(sections.envelope)
        .with_context(|| format!("{}: bad envelope", args.bundle.display()))?;
    if let Some(url) = &args.to {
        let reset = match (args.reset_kv, args.reset_config) {
            (false, false) => None,
            (true, false) => Some("kv"),
            (false, true) => Some("config"),
            (true, true) => Some("all"),
        };
        publish_to_instance(url, &statement.name, &bytes, reset)?;
    }
    let Some(reference) = &args.reference else {
        return Ok(ExitCode::SUCCESS);
    };
    let reference = Reference::parse(reference)?;
    let opts = PublishOptions {
        name: statement.name.clone(),
        version: statement.version.clone(),
        target: statement.world.clone(),
        created: SystemTime::now(),
        insecure: args.insecure,
    };
    let started = Instant::now();
    let pushed = tuk_registry::publish_with(
        &reference,
        sections.wasm,
        sections.code,
        sections.envelope,
        &opts,
    )?;
    let ms = started.elapsed().as_millis() as u64;
    eprintln!(
        "tuk: published {} {} as {reference} ({} blobs uploaded, {} already there, {ms} ms)\n\
         tuk: digest {}\ntuk: pin it  {}",
        statement.name,
        statement.version,
        pushed.uploaded,
        pushed.skipped,
        pushed.manifest_digest,
        pushed.pinned(),
    );
    emit(&Event::Published {
        reference: reference.to_string(),
        digest: &pushed.manifest_digest,
        pinned: pushed.pinned().to_string(),
        name: &statement.name,
        version: &statement.version,
        uploaded: pushed.uploaded,
        skipped: pushed.skipped,
        ms,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `PUT <url>/_tuk/components/<name>[?reset=...]` with the bundle: the kernel's runtime
/// publishing (on its admin listener).
fn publish_to_instance(url: &str, name: &str, bundle: &[u8], reset: Option<&str>) -> Result<()> {
    let mut endpoint = format!("{}/_tuk/components/{name}", url.trim_end_matches('/'));
    if let Some(r) = reset {
        endpoint.push_str(&format!("?reset={r}"));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into();
    let mut response = agent
        .put(&endpoint)
        .header("Content-Type", "application/vnd.tuk.bundle")
        .send(bundle)
        .with_context(|| format!("cannot reach {endpoint}: is the instance running (tuk run)?"))?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    anyhow::ensure!(
        status != 403 || !body.contains("admin listener"),
        "{endpoint} is the instance's service listener, which does not publish: pass the admin \
         URL to --to (the ready event's \"admin\", `tuk run --admin-listen`): {}",
        body.trim()
    );
    anyhow::ensure!(
        (200..300).contains(&status),
        "{endpoint} refused the bundle ({status}): {}",
        body.trim()
    );
    eprintln!("tuk: published {name} to {endpoint}");
    emit(&Event::PublishedToInstance {
        url: &endpoint,
        name,
        status,
        response: body.trim(),
    })
}

pub fn pull(args: PullArgs) -> Result<ExitCode> {
    let reference = Reference::parse(&args.reference)?;
    let started = Instant::now();
    let pulled = tuk_registry::pull_reference(&reference, args.insecure)?;
    let ms = started.elapsed().as_millis() as u64;
    let path = args.output.unwrap_or_else(|| default_output(&reference));
    write_atomically(&path, &pulled.bundle)?;
    let sha256 = hex(&Sha256::digest(&pulled.bundle));
    eprintln!(
        "tuk: pulled {reference} ({}) in {ms} ms, every blob verified\n\
         tuk: wrote {} ({} bytes, sha256 {sha256}); the signature is checked where it is \
         deployed",
        pulled.manifest_digest,
        path.display(),
        pulled.bundle.len(),
    );
    emit(&Event::Pulled {
        reference: reference.to_string(),
        digest: &pulled.manifest_digest,
        path: &path,
        sha256: &sha256,
        bytes: pulled.bundle.len() as u64,
        ms,
    })?;
    Ok(ExitCode::SUCCESS)
}

fn read_bundle(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= bundle::MAX_BUNDLE,
        "{} is {len} bytes, more than the {}-byte bundle limit",
        path.display(),
        bundle::MAX_BUNDLE
    );
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `./<last repository component>-<tag or digest prefix>.bundle`.
fn default_output(reference: &Reference) -> PathBuf {
    let name = reference
        .repository()
        .rsplit('/')
        .next()
        .unwrap_or("bundle");
    let which = match (reference.tag(), reference.digest()) {
        (Some(tag), _) => tag.to_owned(),
        (None, Some(d)) => d.trim_start_matches("sha256:").chars().take(12).collect(),
        (None, None) => "latest".to_owned(),
    };
    PathBuf::from(format!("{name}-{which}.bundle"))
}

/// Writes to a temporary file next to `path` and renames it, so a failed pull never leaves
/// a half-written bundle behind.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("bundle"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("cannot write {}: {e}", path.display())
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
