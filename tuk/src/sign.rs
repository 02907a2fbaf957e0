//! `tuk keygen`, `tuk sign`, `tuk verify` and `tuk policy`: thin over `tuk-measure` (formats,
//! signing, verification) and `tuk-compose` (ahead-of-time compilation, engine fingerprint).
//! The formats are `docs/measurement.md`'s.
//!
//! Like the rest of the CLI: one JSON object per result on stdout (`event` first), human
//! messages on stderr. A bundle that fails verification is exit status 2 with a
//! `verify-failed` event naming the failure (`VerifyError::code`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde::Serialize;
use tuk_measure::bundle::{Bundle, MAX_BUNDLE};
use tuk_measure::policy::{TrustPolicy, TrustedKey};
use tuk_measure::sign::{sign_bundle, SigningKey};
use tuk_measure::statement::{ComponentPredicate, Limits, WORLD};
use tuk_measure::version::Version;
use tuk_measure::{hex, sha256, verify_bundle};

/// A component's default linear-memory limit, MiB (the kernel's default for unsigned
/// components, host-kernel/src/wasm/mod.rs).
const DEFAULT_MEMORY_MIB: u64 = 16;

#[derive(Args)]
pub struct KeygenArgs {
    /// Where NAME.key (private, mode 0600) and NAME.pub (the trusted-key JSON) go.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The key files' base name.
    #[arg(long, value_name = "NAME", default_value = "tuk")]
    name: String,
}

#[derive(Args)]
pub struct SignArgs {
    /// The component to sign (a .wasm from `tuk component build`); it is compiled here.
    #[arg(value_name = "COMPONENT")]
    wasm: PathBuf,
    /// The private key (`tuk keygen`'s NAME.key).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The component's name (its route, and what the trust policy allows).
    #[arg(long, value_name = "NAME")]
    name: String,
    /// The component's version, MAJOR.MINOR.PATCH.
    #[arg(long, value_name = "VERSION")]
    version: String,
    /// Linear-memory limit the kernel enforces, in MiB.
    #[arg(long = "memory-limit", value_name = "MiB", default_value_t = DEFAULT_MEMORY_MIB)]
    memory_limit: u64,
    /// How long one request may run, in ms.
    #[arg(long, value_name = "MS", default_value_t = tuk_engine::DEFAULT_DEADLINE_MS)]
    deadline: u64,
    /// The bundle to write (default: the component's path with the extension .bundle).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The bundle (`tuk sign`'s output).
    #[arg(value_name = "BUNDLE")]
    bundle: PathBuf,
    /// A trusted key (`tuk keygen`'s NAME.pub); repeatable. Any name and version is allowed.
    #[arg(long = "trust", value_name = "PUB", required_unless_present = "policy")]
    trust: Vec<PathBuf>,
    /// A trust policy (`tuk policy`'s output) instead of --trust.
    #[arg(long, value_name = "POLICY.json", conflicts_with = "trust")]
    policy: Option<PathBuf>,
}

#[derive(Args)]
pub struct PolicyArgs {
    /// A trusted key (`tuk keygen`'s NAME.pub); repeatable, at least one.
    #[arg(long = "trust", value_name = "PUB", required = true)]
    trust: Vec<PathBuf>,
    /// A component name that may run; repeatable (default: any name).
    #[arg(long = "allow", value_name = "NAME")]
    allow: Vec<String>,
    /// The lowest version of a component that may run (rollback protection); repeatable.
    #[arg(long = "min-version", value_name = "NAME=VERSION")]
    min_versions: Vec<String>,
    /// Where to write the policy (its exact bytes are what the kernel measures into PCR 8).
    #[arg(short = 'o', long = "out", value_name = "POLICY.json")]
    out: PathBuf,
}

#[derive(Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
enum Event<'a> {
    KeyGenerated {
        keyid: &'a str,
        private_key: &'a Path,
        public_key: &'a Path,
    },
    Signed {
        path: &'a Path,
        sha256: &'a str,
        bytes: u64,
        keyid: &'a str,
        name: &'a str,
        version: &'a str,
        engine: &'a str,
        wasm_sha256: &'a str,
        code_sha256: &'a str,
    },
    Verified {
        path: &'a Path,
        name: &'a str,
        version: &'a str,
        keyid: &'a str,
        wasm_sha256: &'a str,
        code_sha256: &'a str,
        memory_bytes: u64,
        deadline_ms: u64,
    },
    VerifyFailed {
        path: &'a Path,
        error: &'a str,
        message: &'a str,
    },
    PolicyWritten {
        path: &'a Path,
        /// SHA-256 of the file: the digest the kernel extends PCR 8 with.
        sha256: &'a str,
        keys: usize,
    },
}

fn emit(event: &Event<'_>) -> Result<()> {
    let line = serde_json::to_string(event).context("cannot encode an event")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes a new file; refuses to replace one (keys must never be overwritten by accident).
pub(crate) fn create_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} already exists; move it away or choose another --name",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot create {}", path.display()))
        }
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Reads a private key (`tuk keygen`'s NAME.key).
pub(crate) fn load_signing_key(path: &Path) -> Result<SigningKey> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem)
        .with_context(|| format!("{} is not a signing key", path.display()))
}

fn load_trusted_key(path: &Path) -> Result<TrustedKey> {
    TrustedKey::from_json(&read(path)?).with_context(|| {
        format!(
            "{} is not a trusted key (a `tuk keygen` .pub file)",
            path.display()
        )
    })
}

pub(crate) fn policy_of_keys(paths: &[PathBuf]) -> Result<TrustPolicy> {
    let policy = TrustPolicy {
        keys: paths
            .iter()
            .map(|p| load_trusted_key(p))
            .collect::<Result<_>>()?,
        allowed_names: None,
        min_versions: Default::default(),
    };
    policy.validate()?;
    Ok(policy)
}

fn engine_fingerprint() -> Result<String> {
    tuk_compose::compile::engine_fingerprint().context("cannot compute the engine fingerprint")
}

pub fn keygen(args: KeygenArgs) -> Result<ExitCode> {
    ensure!(
        tuk_measure::valid_name(&args.name),
        "invalid key name {:?}: use [a-z0-9-], 1-63 characters",
        args.name
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let private = args.out.join(format!("{}.key", args.name));
    let public = args.out.join(format!("{}.pub", args.name));
    if public.exists() {
        bail!(
            "{} already exists; move it away or choose another --name",
            public.display()
        );
    }
    let key = SigningKey::generate()?;
    create_new(&private, key.to_pkcs8_pem().as_bytes(), 0o600)?;
    let mut pub_json = key.trusted_key().to_json();
    pub_json.push(b'\n');
    create_new(&public, &pub_json, 0o644)?;
    let keyid = key.keyid();
    eprintln!(
        "tuk: key {keyid}\ntuk: private {} (keep it secret)\ntuk: public  {} (give it to `tuk verify --trust` / `tuk policy --trust`)",
        private.display(),
        public.display()
    );
    emit(&Event::KeyGenerated {
        keyid: &keyid,
        private_key: &private,
        public_key: &public,
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn sign(args: SignArgs) -> Result<ExitCode> {
    ensure!(
        tuk_measure::valid_name(&args.name),
        "invalid component name {:?}: use [a-z0-9-], 1-63 characters, not starting with '-'",
        args.name
    );
    let version: Version = args.version.parse()?;
    ensure!(
        args.memory_limit > 0 && args.deadline > 0,
        "--memory-limit and --deadline must be positive"
    );
    let memory_bytes = args
        .memory_limit
        .checked_mul(1 << 20)
        .context("--memory-limit is too large")?;
    let key = load_signing_key(&args.key)?;

    let wasm = read(&args.wasm)?;
    let code = tuk_compose::compile(&wasm)
        .with_context(|| format!("cannot compile {}", args.wasm.display()))?;
    let engine = engine_fingerprint()?;
    let predicate = ComponentPredicate {
        name: args.name.clone(),
        version: version.to_string(),
        engine: engine.clone(),
        world: WORLD.into(),
        limits: Limits {
            memory_bytes,
            deadline_ms: args.deadline,
        },
    };
    let bundle = sign_bundle(&key, &wasm, &code, predicate);
    ensure!(
        bundle.len() <= MAX_BUNDLE,
        "the bundle would be {} bytes; at most {MAX_BUNDLE} are accepted",
        bundle.len()
    );
    // Check our own output the way the kernel will, before anyone relies on it.
    let own_policy = TrustPolicy {
        keys: vec![key.trusted_key()],
        allowed_names: None,
        min_versions: Default::default(),
    };
    let verified = verify_bundle(&Bundle::parse(&bundle)?, &own_policy, &engine)
        .context("the bundle just signed does not verify (a bug in tuk)")?;

    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.wasm.with_extension("bundle"));
    std::fs::write(&out, &bundle).with_context(|| format!("cannot write {}", out.display()))?;
    let sha = hex(&sha256(&bundle));
    let keyid = key.keyid();
    eprintln!(
        "tuk: signed {} {} with key {keyid}\ntuk: bundle {} ({} bytes: component {}, code {})\ntuk: sha256 {sha}",
        args.name,
        version,
        out.display(),
        bundle.len(),
        wasm.len(),
        code.len()
    );
    emit(&Event::Signed {
        path: &out,
        sha256: &sha,
        bytes: bundle.len() as u64,
        keyid: &keyid,
        name: &args.name,
        version: &version.to_string(),
        engine: &engine,
        wasm_sha256: &hex(&verified.wasm_sha256),
        code_sha256: &hex(&verified.code_sha256),
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn verify(args: VerifyArgs) -> Result<ExitCode> {
    let policy = match &args.policy {
        Some(path) => TrustPolicy::from_json(&read(path)?)
            .with_context(|| format!("{} is not a trust policy", path.display()))?,
        None => policy_of_keys(&args.trust)?,
    };
    let size = std::fs::metadata(&args.bundle)
        .with_context(|| format!("cannot read {}", args.bundle.display()))?
        .len();
    ensure!(
        size <= MAX_BUNDLE as u64,
        "{} is {size} bytes; a bundle is at most {MAX_BUNDLE}",
        args.bundle.display()
    );
    let bytes = read(&args.bundle)?;
    let engine = engine_fingerprint()?;
    let outcome = Bundle::parse(&bytes)
        .map_err(|e| ("bad-bundle", e.to_string()))
        .and_then(|bundle| {
            verify_bundle(&bundle, &policy, &engine).map_err(|e| (e.code(), e.to_string()))
        });
    match outcome {
        Ok(v) => {
            eprintln!(
                "tuk: OK {} {} signed by {}\ntuk: component sha256 {}\ntuk: code      sha256 {}\ntuk: limits    memory {} bytes, deadline {} ms",
                v.name,
                v.version,
                v.keyid,
                hex(&v.wasm_sha256),
                hex(&v.code_sha256),
                v.limits.memory_bytes,
                v.limits.deadline_ms
            );
            emit(&Event::Verified {
                path: &args.bundle,
                name: &v.name,
                version: &v.version.to_string(),
                keyid: &v.keyid,
                wasm_sha256: &hex(&v.wasm_sha256),
                code_sha256: &hex(&v.code_sha256),
                memory_bytes: v.limits.memory_bytes,
                deadline_ms: v.limits.deadline_ms,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Err((code, message)) => {
            eprintln!(
                "tuk: error: {} does not verify: {message}",
                args.bundle.display()
            );
            emit(&Event::VerifyFailed {
                path: &args.bundle,
                error: code,
                message: &message,
            })?;
            Ok(ExitCode::from(2))
        }
    }
}

pub fn policy(args: PolicyArgs) -> Result<ExitCode> {
    let mut policy = policy_of_keys(&args.trust)?;
    if !args.allow.is_empty() {
        policy.allowed_names = Some(args.allow.clone());
    }
    for arg in &args.min_versions {
        let Some((name, version)) = arg.split_once('=') else {
            bail!("--min-version {arg:?}: use NAME=MAJOR.MINOR.PATCH");
        };
        let version: Version = version.parse()?;
        if policy
            .min_versions
            .insert(name.to_owned(), version.to_string())
            .is_some()
        {
            bail!("--min-version for {name:?} is given twice");
        }
    }
    policy.validate()?;
    let bytes = policy.canonical_json();
    std::fs::write(&args.out, &bytes)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let sha = hex(&sha256(&bytes));
    eprintln!(
        "tuk: policy {} ({} keys, names: {}, minimum versions: {})\ntuk: sha256 {sha} (what the kernel measures into PCR 8)",
        args.out.display(),
        policy.keys.len(),
        policy
            .allowed_names
            .as_ref()
            .map_or_else(|| "any".to_owned(), |n| n.join(", ")),
        policy.min_versions.len()
    );
    emit(&Event::PolicyWritten {
        path: &args.out,
        sha256: &sha,
        keys: policy.keys.len(),
    })?;
    Ok(ExitCode::SUCCESS)
}
