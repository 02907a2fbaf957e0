//! `tuk tamper`: an ATTACK TOOL, for testing detection only. Hidden from `tuk --help`; its own
//! help says what it is. Thin over `tuk_launcher::tamper` (docs/contracts.md, "tuk tamper").

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use tuk_launcher::tamper::{self as attack, Target};

#[derive(Args)]
pub struct TamperArgs {
    /// The running instance's state directory (`tuk run --state-dir`; holds instance.json).
    #[arg(long, value_name = "STATE_DIR")]
    instance: PathBuf,
    /// What to overwrite: kernel:text or kernel:rodata (a read-only segment of the kernel
    /// image; --offset from its start); the page-table entry of the 4 KiB page at guest
    /// address --offset: kernel:wx (made writable and executable), kernel:x (made read+execute:
    /// NX and WRITABLE cleared), kernel:w (made writable, NX kept), kernel:alias (pointed at the
    /// next page's frame); kernel:idt, kernel:gdt, kernel:tss (a descriptor table, --offset
    /// from the address in the status); component:NAME:code (its compiled code image) or
    /// component:NAME:data (its first immutable data range, e.g. .rodata).
    #[arg(long, value_name = "TARGET")]
    target: Target,
    /// Offset in bytes within the target (decimal, or hex with 0x).
    #[arg(long, value_name = "N", default_value = "0", value_parser = parse_offset)]
    offset: u64,
    /// The bytes to write, as hex (default: one byte, the one there XOR 0xFF).
    #[arg(long, value_name = "HEX")]
    bytes: Option<String>,
}

fn parse_offset(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("`{s}` is not an offset (decimal, or hex with 0x)"))
}

#[derive(Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
enum Event<'a> {
    Tampered {
        target: &'a str,
        /// Guest-physical address of the first byte written.
        paddr: u64,
        offset: u64,
        /// What was there and what is there now, hex.
        old: String,
        new: String,
    },
}

pub fn tamper(args: TamperArgs) -> Result<ExitCode> {
    let bytes = args.bytes.as_deref().map(attack::parse_hex).transpose()?;
    let done = attack::tamper(&args.instance, &args.target, args.offset, bytes.as_deref())?;
    eprintln!("tuk: tampered with {done} (guest RAM, from the host)");
    let event = Event::Tampered {
        target: &done.target,
        paddr: done.paddr,
        offset: done.offset,
        old: tuk_measure::hex(&done.old),
        new: tuk_measure::hex(&done.new),
    };
    let line = serde_json::to_string(&event).context("cannot encode an event")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        assert_eq!(parse_offset("4096").unwrap(), 4096);
        assert_eq!(parse_offset("0x18").unwrap(), 24);
        assert!(parse_offset("-1").is_err());
        assert!(parse_offset("0xg").is_err());
    }

    /// The help names every target the attack library accepts (its error message lists them).
    #[test]
    fn help_lists_every_target() {
        use clap::{CommandFactory, Parser};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: TamperArgs,
        }
        let help = Cli::command().render_long_help().to_string();
        let help: String = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let expected = "no-such:target".parse::<Target>().unwrap_err();
        let list = expected
            .split_once("(expected ")
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .expect("the library's error lists the targets");
        let targets: Vec<&str> = list.split([',', ' ']).filter(|w| w.contains(':')).collect();
        assert!(targets.len() >= 11, "{targets:?}");
        for target in targets {
            assert!(
                help.contains(target),
                "`tuk tamper --help` lacks {target}:\n{help}"
            );
        }
    }
}
