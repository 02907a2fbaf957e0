//! `tuk component build` and `tuk compile`: thin over `tuk-compose`.
//!
//! Like the rest of the CLI: one JSON object per result on stdout (`event` first), human
//! messages on stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use tuk_compose::{Artifact, BuildOptions};

#[derive(Subcommand)]
pub enum ComponentCommand {
    /// Build a Rust component crate (or every component crate of a workspace) into
    /// WebAssembly components; print each one's path, size and SHA-256.
    Build(BuildArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// The crate's directory, or a workspace's (builds every `cdylib` member).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// The output file (only when one component is built).
    #[arg(long, value_name = "FILE", conflicts_with = "out_dir")]
    out: Option<PathBuf>,
    /// Where `<name>.wasm` files go.
    #[arg(long, value_name = "DIR", default_value = "target/components")]
    out_dir: PathBuf,
    /// Fail instead of updating the crate's Cargo.lock (for CI).
    #[arg(long)]
    locked: bool,
}

#[derive(Args)]
pub struct CompileArgs {
    /// The component to compile (a .wasm from `tuk component build`).
    #[arg(value_name = "COMPONENT")]
    input: PathBuf,
    /// The output (default: the input with the extension .cwasm).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
enum Event<'a> {
    ComponentBuilt {
        name: &'a str,
        path: &'a Path,
        sha256: &'a str,
        bytes: u64,
        toolchain: &'a str,
    },
    ComponentCompiled {
        path: &'a Path,
        sha256: &'a str,
        bytes: u64,
        source: &'a Path,
        target: &'a str,
    },
}

fn emit(event: &Event<'_>) -> Result<()> {
    let line = serde_json::to_string(event).context("cannot encode an event")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

fn describe(artifact: &Artifact) {
    eprintln!(
        "tuk: wrote   {}\ntuk: size    {} bytes\ntuk: sha256  {}",
        artifact.path.display(),
        artifact.size,
        artifact.sha256
    );
}

pub fn component(cmd: ComponentCommand) -> Result<ExitCode> {
    match cmd {
        ComponentCommand::Build(args) => build(args),
    }
}

fn build(args: BuildArgs) -> Result<ExitCode> {
    let toolchain = tuk_compose::Toolchain::detect()?;
    eprintln!(
        "tuk: building components in {} with {}",
        args.dir.display(),
        toolchain.describe()
    );
    let started = Instant::now();
    let opts = BuildOptions {
        out_dir: args.out_dir,
        out: args.out,
        locked: args.locked,
        toolchain: Some(toolchain),
    };
    let (toolchain, built) = tuk_compose::build(&args.dir, &opts)?;
    eprintln!(
        "tuk: built {} component(s) in {:.1} s",
        built.len(),
        started.elapsed().as_secs_f64()
    );
    for b in &built {
        eprintln!("tuk: component {}", b.name);
        describe(&b.artifact);
        emit(&Event::ComponentBuilt {
            name: &b.name,
            path: &b.artifact.path,
            sha256: &b.artifact.sha256,
            bytes: b.artifact.size,
            toolchain: toolchain.id(),
        })?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn compile(args: CompileArgs) -> Result<ExitCode> {
    let output = args
        .output
        .unwrap_or_else(|| args.input.with_extension("cwasm"));
    eprintln!(
        "tuk: compiling {} for {}",
        args.input.display(),
        tuk_compose::compile::TARGET
    );
    let started = Instant::now();
    let artifact = tuk_compose::compile_file(&args.input, &output)
        .with_context(|| format!("cannot compile {}", args.input.display()))?;
    eprintln!("tuk: compiled in {:.1} s", started.elapsed().as_secs_f64());
    describe(&artifact);
    emit(&Event::ComponentCompiled {
        path: &artifact.path,
        sha256: &artifact.sha256,
        bytes: artifact.size,
        source: &args.input,
        target: tuk_compose::compile::TARGET,
    })?;
    Ok(ExitCode::SUCCESS)
}
