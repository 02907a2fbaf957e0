//! `tuk verifier serve`: the long-running attestation service, thin over `tuk_verifier`
//! (docs/verifier.md; `tuk gateway` is in gateway.rs). It prints one `ready` JSON line on
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
    Serve(Box<ServeArgs>),
    /// Make an API token for a verifier's state directory and print it (JSON: id, scope,
    /// token). Only its SHA-256 is stored (STATE_DIR/api-tokens.json): this is the only time
    /// the token is shown. A running verifier accepts it at once.
    Token(TokenArgs),
}

#[derive(Args)]
pub struct TokenArgs {
    /// The verifier's state directory (as `tuk verifier serve --state-dir`).
    #[arg(long, value_name = "DIR", default_value = "tuk-verifier")]
    state_dir: PathBuf,
    /// read: the GET routes; admin: every route (register, replace, delete, webhooks).
    #[arg(long, value_name = "read|admin", default_value = "read")]
    scope: String,
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
    /// The boot-configuration reference PCR 5 is appraised against, field by field (JSON;
    /// docs/attestation.md, "The boot configuration reference"). Default: the built-in one
    /// (integrity interval 10..=10000 ms, any integrity policy, the launcher's machine).
    #[arg(long, value_name = "FILE")]
    pub boot_reference: Option<PathBuf>,
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
        let boot = match &self.boot_reference {
            Some(path) => tuk_attest::BootReference::from_json(
                &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            )
            .map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a boot-configuration reference: {e} (docs/attestation.md)",
                    path.display()
                )
            })?,
            None => tuk_attest::BootReference::default(),
        };
        let ca_dir = self.ca.clone().unwrap_or_else(tuk_vtpm::default_ca_dir);
        let ca = Ca::load(&ca_dir)
            .with_context(|| format!("cannot load the vTPM CA from {}", ca_dir.display()))?;
        Ok(References {
            ca,
            kernel_sha256,
            policy,
            boot,
        })
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address of the REST API and /metrics.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Where the verifier keeps its files: verifier.db (unless --db), ear.key (the key that
    /// signs results, created on first start, unless --ear-key), api-tokens.json (the API
    /// tokens' SHA-256) and admin.token (the first admin token, written on first start).
    #[arg(long, value_name = "DIR", default_value = "tuk-verifier")]
    state_dir: PathBuf,
    /// Serve HTTPS with this certificate chain (PEM; needs --tls-key).
    #[arg(long, value_name = "CERT.pem", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Let the read-only GET routes in without a token (every change still needs an admin
    /// token).
    #[arg(long)]
    read_anonymous: bool,
    /// Instances registered at most (registration answers 409 beyond).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    max_instances: usize,
    /// Allow webhooks to loopback, private (RFC 1918, ULA), link-local and multicast
    /// addresses (refused by default: the verifier would post to its own network).
    #[arg(long)]
    webhook_allow_private: bool,
    /// The database: a SQLite file (default: STATE_DIR/verifier.db) or a PostgreSQL URL
    /// (postgres://user@host:port/db).
    #[arg(long, value_name = "FILE|URL")]
    db: Option<String>,
    /// The private key that signs results (a `tuk keygen` .key file). Several processes on
    /// one PostgreSQL share the fleet: give each the same key file.
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
    /// A key out-of-guest monitor reports must be signed by (a launcher host's monitor.pub,
    /// from ~/.local/share/tuk/monitor or $TUK_MONITOR_KEY_DIR; repeatable). Instances
    /// registered with a "monitor_url" are then affirming only with a verified, fresh, clean
    /// report from it.
    #[arg(long = "monitor-key", value_name = "KEY.pub")]
    monitor_key: Vec<PathBuf>,
    /// Every instance needs a monitor report: one registered without "monitor_url" is at best
    /// a warning. Needs --monitor-key.
    #[arg(long, requires = "monitor_key")]
    require_monitor: bool,
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

/// Creates the state directory (mode 0700) if it is missing.
fn state_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

fn token(args: TokenArgs) -> Result<ExitCode> {
    let Some(scope) = tuk_verifier::auth::Scope::parse(&args.scope) else {
        bail!("--scope must be read or admin, not {:?}", args.scope);
    };
    let path = args.state_dir.join(tuk_verifier::auth::TOKENS_FILE);
    if !path.exists() {
        bail!(
            "{} does not exist: start `tuk verifier serve --state-dir {}` once first",
            path.display(),
            args.state_dir.display()
        );
    }
    let (token, entry) =
        tuk_verifier::auth::create_token(&path, scope).map_err(anyhow::Error::msg)?;
    emit(&json!({
        "event": "token",
        "id": entry.id,
        "scope": entry.scope.as_str(),
        "token": token,
        "tokens_file": path,
    }))?;
    Ok(ExitCode::SUCCESS)
}

pub fn verifier(cmd: VerifierCommand) -> Result<ExitCode> {
    let args = match cmd {
        VerifierCommand::Serve(args) => *args,
        VerifierCommand::Token(args) => return token(args),
    };
    let stop = stop_flag()?;
    if args.interval_ms < 100 {
        bail!("--interval must be at least 100 ms");
    }
    if args.max_instances == 0 {
        bail!("--max-instances must be at least 1");
    }
    state_dir(&args.state_dir)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(tuk_httpd::Tls::from_pem_files(cert, key).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let tokens = tuk_verifier::auth::Tokens::init(&args.state_dir).map_err(anyhow::Error::msg)?;
    if let Some(path) = &tokens.created_admin_token {
        eprintln!(
            "tuk verifier: made the first admin API token: {} (mode 0600; send it as \
             `Authorization: Bearer TOKEN`; `tuk verifier token --state-dir {} --scope read` \
             makes read-only ones)",
            path.display(),
            args.state_dir.display()
        );
    }
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
    if store.kind() == "postgresql" && args.ear_key.is_none() {
        eprintln!(
            "tuk verifier: note: with PostgreSQL, every verifier process on the database \
             attests a share of the fleet: give them all the same --ear-key so gateways verify \
             results from any of them (this one signs with {})",
            key_path.display()
        );
    }
    let signer = tuk_verifier::ear::EarSigner::new(ear_key(&key_path)?);
    let keyid = signer.keyid();
    let kind = store.kind();
    let cfg = tuk_verifier::Config {
        interval: Duration::from_millis(args.interval_ms),
        refs,
        workers: args.workers.max(1),
        timeout: Duration::from_secs(args.timeout.max(1)),
        retention: (args.retain_days > 0)
            .then(|| Duration::from_secs(args.retain_days.saturating_mul(86_400))),
        max_instances: args.max_instances,
        webhook_allow_private: args.webhook_allow_private,
        monitor_keys: if args.monitor_key.is_empty() {
            Vec::new()
        } else {
            crate::sign::policy_of_keys(&args.monitor_key)
                .context("--monitor-key")?
                .keys
        },
        require_monitor: args.require_monitor,
    };
    let service = tuk_verifier::Verifier::start(cfg, store, signer)
        .context("cannot load the verifier's state")?;
    let mut server = tuk_httpd::Server::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let Some(tls) = tls {
        server = server.tls(tls);
    }
    let tokens_file = tokens.tokens.path().to_owned();
    let access = tuk_verifier::api::Access {
        tokens: tokens.tokens,
        read_anonymous: args.read_anonymous,
    };
    let running = server
        .spawn(tuk_verifier::api::handler(Arc::clone(&service), access))
        .context("cannot start the HTTP server")?;
    emit(&json!({
        "event": "ready",
        "service": "verifier",
        "listen": running.addr().to_string(),
        "url": format!("{scheme}://{}", running.addr()),
        "tokens_file": tokens_file,
        "admin_token_file": tokens.created_admin_token,
        "read_anonymous": args.read_anonymous,
        "store": kind,
        "ear_key": keyid,
        "interval_ms": args.interval_ms,
        "instances": service.list().len(),
        "lease_holder": service.lease().map(|(h, _)| h),
        "lease_ttl_ms": service.lease().map(|(_, t)| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
    }))?;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    running.stop();
    emit(&json!({"event": "exit", "service": "verifier"}))?;
    Ok(ExitCode::SUCCESS)
}
