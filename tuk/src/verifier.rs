//! `tuk verifier serve` and `tuk gateway`: the long-running attestation services, thin over
//! `tuk_verifier` and `tuk_gateway` (docs/verifier.md). Each prints one `ready` JSON line on
//! stdout once it listens, then serves until SIGINT/SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use tuk_attest::{Ca, References};
use tuk_measure::policy::TrustPolicy;
use tuk_measure::sign::SigningKey;

#[derive(Subcommand)]
pub enum VerifierCommand {
    /// Run the verifier service: register instances, attest them every --interval, keep
    /// signed EAR results (SQLite, or PostgreSQL by URL), notify webhooks, export metrics.
    Serve(ServeArgs),
}

/// The reference values a verifier appraises against (shared by `tuk attest`).
#[derive(Args, Clone)]
pub struct ReferenceArgs {
    /// The swtpm_localca CA directory whose root the EK certificate must chain to
    /// (swtpm-localca-rootca-cert.pem, issuercert.pem; default: the one `tuk run` uses).
    #[arg(long, value_name = "DIR")]
    pub ca: Option<PathBuf>,
    /// The signed kernel reference (`tuk kernel build --sign` writes IMAGE.ref.json): PCR 4
    /// must measure the image it names. Needs --kernel-ref-key.
    #[arg(
        long,
        value_name = "FILE",
        requires = "kernel_ref_key",
        conflicts_with = "kernel"
    )]
    pub kernel_ref: Option<PathBuf>,
    /// A key the kernel reference must be signed by (a `tuk keygen` .pub file; repeatable).
    #[arg(long = "kernel-ref-key", value_name = "KEY.pub")]
    pub kernel_ref_key: Vec<PathBuf>,
    /// The kernel image the instance must run, unsigned (its SHA-256 is compared with PCR 4).
    /// Without it or --kernel-ref, the kernel is at best a warning.
    #[arg(long, value_name = "IMAGE")]
    pub kernel: Option<PathBuf>,
    /// A key components must be signed by (a `tuk keygen` .pub file; repeatable): the policy
    /// the instance must enforce is these keys, any name and version (as `tuk run --trust`).
    #[arg(long = "trust", value_name = "KEY.pub", conflicts_with = "policy")]
    pub trust: Vec<PathBuf>,
    /// The trust policy the instance must enforce (as `tuk run --policy`). Without --trust or
    /// --policy, the policy and the components are at best a warning.
    #[arg(long, value_name = "POLICY.json")]
    pub policy: Option<PathBuf>,
}

impl ReferenceArgs {
    pub fn load(&self) -> Result<References> {
        // The signed references first: a bad one is the user's most likely mistake.
        let kernel_sha256 = match (&self.kernel_ref, &self.kernel) {
            (Some(path), _) => {
                let keys = crate::sign::policy_of_keys(&self.kernel_ref_key)?.keys;
                let envelope = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let r = tuk_measure::kernel_ref::verify(&envelope, &keys)
                    .with_context(|| format!("kernel reference {}", path.display()))?;
                Some(r.sha256)
            }
            (None, Some(path)) => Some(tuk_measure::sha256(
                &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            )),
            (None, None) => None,
        };
        let policy = match (&self.policy, self.trust.is_empty()) {
            (Some(path), _) => Some(
                TrustPolicy::from_json(
                    &std::fs::read(path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                )
                .with_context(|| format!("{} is not a valid trust policy", path.display()))?,
            ),
            (None, false) => Some(crate::sign::policy_of_keys(&self.trust)?),
            (None, true) => None,
        };
        let ca_dir = self.ca.clone().unwrap_or_else(tuk_vtpm::default_ca_dir);
        let ca = Ca::load(&ca_dir)
            .with_context(|| format!("cannot load the vTPM CA from {}", ca_dir.display()))?;
        Ok(References {
            ca,
            kernel_sha256,
            policy,
        })
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address of the REST API and /metrics.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Where the verifier keeps its files: verifier.db (unless --db) and ear.key (the key
    /// that signs results, created on first start, unless --ear-key).
    #[arg(long, value_name = "DIR", default_value = "tuk-verifier")]
    state_dir: PathBuf,
    /// The database: a SQLite file (default: STATE_DIR/verifier.db) or a PostgreSQL URL
    /// (postgres://user@host:port/db).
    #[arg(long, value_name = "FILE|URL")]
    db: Option<String>,
    /// The private key that signs results (a `tuk keygen` .key file).
    #[arg(long, value_name = "KEY")]
    ear_key: Option<PathBuf>,
    /// Attest every registered instance this often, in milliseconds.
    #[arg(long = "interval", value_name = "MS", default_value_t = 5000)]
    interval_ms: u64,
    /// Attestations in flight at once.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Seconds each request to an instance or a webhook may take.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
    /// Delete results older than this many days (checked every minute; each instance's latest
    /// result is always kept). 0 keeps every result.
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    retain_days: u64,
    #[command(flatten)]
    refs: ReferenceArgs,
}

fn emit(v: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install the signal handlers")?;
    }
    Ok(stop)
}

/// Loads the result-signing key, creating it (mode 0600) on first start.
fn ear_key(path: &Path) -> Result<SigningKey> {
    if path.exists() {
        return crate::sign::load_signing_key(path);
    }
    let key = SigningKey::generate().context("cannot generate the result-signing key")?;
    crate::sign::create_new(path, key.to_pkcs8_pem().as_bytes(), 0o600)?;
    Ok(key)
}

pub fn verifier(cmd: VerifierCommand) -> Result<ExitCode> {
    let VerifierCommand::Serve(args) = cmd;
    let stop = stop_flag()?;
    if args.interval_ms < 100 {
        bail!("--interval must be at least 100 ms");
    }
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create {}", args.state_dir.display()))?;
    let refs = args.refs.load()?;
    let db = args
        .db
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", args.state_dir.join("verifier.db").display()));
    let store = tuk_verifier::store::Store::open(&db)
        .with_context(|| format!("cannot open the verifier's database {db}"))?;
    let key_path = args
        .ear_key
        .clone()
        .unwrap_or_else(|| args.state_dir.join("ear.key"));
    let signer = tuk_verifier::ear::EarSigner::new(ear_key(&key_path)?);
    let keyid = signer.keyid();
    let kind = store.kind();
    let cfg = tuk_verifier::Config {
        interval: Duration::from_millis(args.interval_ms),
        refs,
        workers: args.workers.max(1),
        timeout: Duration::from_secs(args.timeout.max(1)),
        retention: (args.retain_days > 0).then(|| Duration::from_secs(args.retain_days * 86_400)),
    };
    let service = tuk_verifier::Verifier::start(cfg, store, signer)
        .context("cannot load the verifier's state")?;
    let server = tuk_httpd::Server::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let running = server
        .spawn(tuk_verifier::api::handler(Arc::clone(&service)))
        .context("cannot start the HTTP server")?;
    emit(&json!({
        "event": "ready",
        "service": "verifier",
        "listen": running.addr().to_string(),
        "store": kind,
        "ear_key": keyid,
        "interval_ms": args.interval_ms,
        "instances": service.list().len(),
    }))?;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    running.stop();
    emit(&json!({"event": "exit", "service": "verifier"}))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct GatewayArgs {
    /// Address clients connect to.
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,
    /// The instance's base URL (`tuk run`'s ready event), e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    upstream: String,
    /// The verifier's base URL, e.g. http://127.0.0.1:7070.
    #[arg(long, value_name = "URL")]
    verifier: String,
    /// The instance's id at the verifier.
    #[arg(long, value_name = "ID")]
    instance: String,
    /// The verifier's result-signing public key, as its JWK (`GET /v1/key` saved to a file).
    /// Without it the key is fetched from the verifier at start (trust on first use).
    #[arg(long, value_name = "JWK.json")]
    verifier_key: Option<PathBuf>,
    /// Seconds each forwarded request may take.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
}

pub fn gateway(args: GatewayArgs) -> Result<ExitCode> {
    let stop = stop_flag()?;
    let verifier_key = match &args.verifier_key {
        Some(path) => {
            let jwk: serde_json::Value = serde_json::from_slice(
                &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            )
            .with_context(|| format!("{} is not JSON", path.display()))?;
            Some(
                tuk_verifier::ear::key_of_jwk(&jwk)
                    .with_context(|| format!("{} is not an Ed25519 JWK", path.display()))?,
            )
        }
        None => None,
    };
    let gateway = tuk_gateway::Gateway::start(tuk_gateway::Config {
        upstream: args.upstream.trim_end_matches('/').to_owned(),
        verifier: args.verifier.clone(),
        instance: args.instance.clone(),
        verifier_key,
        timeout: Duration::from_secs(args.timeout.max(1)),
    })
    .map_err(anyhow::Error::msg)
    .context("cannot start the gateway")?;
    let running = tuk_httpd::Server::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?
        .spawn(gateway.handler())
        .context("cannot start the HTTP server")?;
    emit(&json!({
        "event": "ready",
        "service": "gateway",
        "listen": running.addr().to_string(),
        "upstream": args.upstream,
        "instance": args.instance,
    }))?;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    running.stop();
    Ok(ExitCode::SUCCESS)
}
