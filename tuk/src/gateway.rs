//! `tuk gateway`: thin over `tuk_gateway` (docs/verifier.md, "The gateway"). Prints one
//! `ready` JSON line on stdout once it listens, then serves until SIGINT/SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args};
use serde_json::json;

#[derive(Args)]
#[command(group(
    ArgGroup::new("pin")
        .required(true)
        .args(["verifier_key", "verifier_key_fingerprint"])
))]
pub struct GatewayArgs {
    /// Address clients connect to.
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,
    /// The instance's SERVICE base URL (`tuk run`'s ready event `url`), e.g.
    /// http://127.0.0.1:8080. Results must name this URL (tuk_service_url, else tuk_url).
    #[arg(long, value_name = "URL")]
    upstream: String,
    /// The verifier's base URL, e.g. https://verifier.example:7070.
    #[arg(long, value_name = "URL")]
    verifier: String,
    /// The instance's id at the verifier.
    #[arg(long, value_name = "ID")]
    instance: String,
    /// The verifier's result-signing public key, pinned: its JWK (`GET /v1/key` saved to a
    /// file over a channel you trust). This or --verifier-key-fingerprint is required.
    #[arg(long, value_name = "JWK.json")]
    verifier_key: Option<PathBuf>,
    /// The verifier's result-signing key, pinned by SHA-256 of its 32-byte public key (hex;
    /// the `ear_key` of `tuk verifier serve`'s ready line, the JWK's `kid`). The key is read
    /// from the verifier and used only if it has this fingerprint.
    #[arg(long, value_name = "SHA256HEX")]
    verifier_key_fingerprint: Option<String>,
    /// PEM certificate(s) the verifier's TLS certificate must chain to (default: the public
    /// web roots).
    #[arg(long, value_name = "CA.pem")]
    verifier_ca: Option<PathBuf>,
    /// A file holding a verifier API token with the `read` scope (`tuk verifier token
    /// --scope read`), sent as `Authorization: Bearer`. Without it the verifier must serve
    /// reads anonymously (`--read-anonymous`).
    #[arg(long, value_name = "FILE")]
    verifier_token: Option<PathBuf>,
    /// Refuse to start with an http:// verifier.
    #[arg(long)]
    require_verifier_tls: bool,
    /// Serve HTTPS with this certificate chain (PEM; needs --tls-key).
    #[arg(long, value_name = "CERT.pem", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Forward /_tuk/* to the instance too (default: 403). The instance's admin endpoints are
    /// on its admin listener, not behind the gateway.
    #[arg(long)]
    forward_tuk: bool,
    /// Seconds each forwarded request may take.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
}

fn emit(v: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

fn key_pin(args: &GatewayArgs) -> Result<tuk_gateway::KeyPin> {
    if let Some(path) = &args.verifier_key {
        let jwk: serde_json::Value = serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        )
        .with_context(|| format!("{} is not JSON", path.display()))?;
        let key = tuk_verifier::ear::key_of_jwk(&jwk)
            .with_context(|| format!("{} is not an Ed25519 JWK", path.display()))?;
        return Ok(tuk_gateway::KeyPin::Key(key));
    }
    let Some(hex) = &args.verifier_key_fingerprint else {
        bail!(
            "the gateway needs the verifier's key pinned: --verifier-key JWK.json or \
             --verifier-key-fingerprint SHA256HEX"
        );
    };
    let bytes: Option<Vec<u8>> = (hex.len() == 64)
        .then(|| {
            (0..32)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                .collect()
        })
        .flatten();
    let Some(Ok(fp)) = bytes.map(<[u8; 32]>::try_from) else {
        bail!("--verifier-key-fingerprint must be 64 hex digits (SHA-256), not {hex:?}");
    };
    Ok(tuk_gateway::KeyPin::Fingerprint(fp))
}

pub fn gateway(args: GatewayArgs) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install the signal handlers")?;
    }
    let verifier_key = key_pin(&args)?;
    let verifier_ca = match &args.verifier_ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let verifier_token = match &args.verifier_token {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(tuk_httpd::Tls::from_pem_files(cert, key).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let gateway = tuk_gateway::Gateway::start(tuk_gateway::Config {
        upstream: args.upstream.clone(),
        verifier: args.verifier.clone(),
        instance: args.instance.clone(),
        verifier_key,
        verifier_ca,
        require_verifier_tls: args.require_verifier_tls,
        forward_tuk: args.forward_tuk,
        verifier_token,
        timeout: Duration::from_secs(args.timeout.max(1)),
    })
    .map_err(anyhow::Error::msg)
    .context("cannot start the gateway")?;
    let mut server = tuk_httpd::Server::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    if let Some(tls) = tls {
        server = server.tls(tls);
    }
    let running = server
        .spawn(gateway.handler())
        .context("cannot start the HTTP server")?;
    emit(&json!({
        "event": "ready",
        "service": "gateway",
        "listen": running.addr().to_string(),
        "tls": args.tls_cert.is_some(),
        "upstream": args.upstream,
        "instance": args.instance,
    }))?;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    running.stop();
    Ok(ExitCode::SUCCESS)
}
