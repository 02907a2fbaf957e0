//! Host tool for the Linux baseline (scripts/build-baseline, docs/baseline.md):
//!
//! - `compile IN.wasm OUT.cwasm`: compiles a component for the Linux guest with tuk's engine
//!   settings (`tuk_engine::configure`: traps, memory layout, epochs, features) and tuk's CPU
//!   flags (`tuk_engine::ISA_FLAGS`), for target `x86_64-unknown-linux-gnu` instead of the
//!   kernel's `x86_64-unknown-none` (wasmtime refuses code compiled for another OS).
//! - `cpio OUT DIR [--char PATH:MAJOR:MINOR]...`: packs DIR as a newc cpio archive (an
//!   initramfs; compress it with gzip), owned by root, timestamps zero, in sorted order, plus
//!   character device nodes (the kernel opens `dev/console` for /init before devtmpfs exists).
//! - `tsc-khz`: the host's TSC frequency in kHz. Under QEMU's TCG the guest's TSC runs at the
//!   host's rate; the baseline passes it as `tsc_early_khz=` on microvm, where Linux finds no
//!   timer to calibrate against (docs/baseline.md).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const LINUX_TARGET: &str = "x86_64-unknown-linux-gnu";

fn usage() -> ExitCode {
    eprintln!(
        "usage: tuk-linux-build compile IN.wasm OUT.cwasm\n       tuk-linux-build cpio OUT DIR [--char PATH:MAJOR:MINOR]...\n       tuk-linux-build tsc-khz"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("compile") if args.len() == 3 => compile(Path::new(&args[1]), Path::new(&args[2])),
        Some("cpio") if args.len() >= 3 => {
            cpio(Path::new(&args[1]), Path::new(&args[2]), &args[3..])
        }
        Some("tsc-khz") if args.len() == 1 => {
            println!("{}", tsc_khz());
            Ok(())
        }
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tuk-linux-build: {e}");
            ExitCode::FAILURE
        }
    }
}

/// tuk's engine configuration, compiling for the Linux guest.
fn engine() -> Result<wasmtime::Engine, String> {
    let mut config = tuk_engine::config();
    config
        .target(LINUX_TARGET)
        .map_err(|e| format!("target {LINUX_TARGET}: {e}"))?;
    for flag in tuk_engine::ISA_FLAGS {
        // SAFETY: the flags are tuk's (`tuk_engine::ISA_FLAGS`), which the baseline's QEMU CPU
        // model (`tuk_engine::QEMU_CPU_MODEL`, as for tuk) provides; wasmtime also checks
        // them against the CPU when the guest loads the code.
        #[allow(unsafe_code)]
        unsafe {
            config.cranelift_flag_enable(flag);
        }
    }
    wasmtime::Engine::new(&config).map_err(|e| format!("engine: {e:#}"))
}

fn compile(input: &Path, output: &Path) -> Result<(), String> {
    let wasm = fs::read(input).map_err(|e| format!("cannot read {}: {e}", input.display()))?;
    if wasmtime::Engine::detect_precompiled(&wasm).is_some() {
        return Err(format!(
            "{} is already compiled code; give the component (.wasm)",
            input.display()
        ));
    }
    let code = engine()?
        .precompile_component(&wasm)
        .map_err(|e| format!("cannot compile {}: {e:#}", input.display()))?;
    fs::write(output, &code).map_err(|e| format!("cannot write {}: {e}", output.display()))?;
    println!("{} {} bytes", output.display(), code.len());
    Ok(())
}

/// One newc header plus name (NUL-terminated, padded to 4 bytes).
fn newc_entry(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    size: u32,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<()> {
    let namesize = name.len() as u32 + 1;
    write!(
        out,
        "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}\
         {devmajor:08X}{devminor:08X}{rmaj:08X}{rmin:08X}{namesize:08X}{check:08X}",
        uid = 0,
        gid = 0,
        nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 },
        mtime = 0,
        devmajor = 0,
        devminor = 0,
        rmaj = rdev.0,
        rmin = rdev.1,
        check = 0,
    )?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, 110 + namesize as usize)
}

fn pad(out: &mut impl Write, len: usize) -> io::Result<()> {
    let n = (4 - len % 4) % 4;
    out.write_all(&[0; 3][..n])
}

fn walk(root: &Path, rel: &Path, found: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| rel.join(e.file_name())))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        let is_dir = fs::symlink_metadata(root.join(&path))?.is_dir();
        found.push(path.clone());
        if is_dir {
            walk(root, &path, found)?;
        }
    }
    Ok(())
}

fn cpio(output: &Path, dir: &Path, extra: &[String]) -> Result<(), String> {
    let err = |e: io::Error| format!("{}: {e}", output.display());
    let mut paths = Vec::new();
    walk(dir, Path::new(""), &mut paths).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = io::BufWriter::new(fs::File::create(output).map_err(err)?);
    let mut ino = 1;
    for rel in &paths {
        let full = dir.join(rel);
        let meta = fs::symlink_metadata(&full).map_err(|e| format!("{}: {e}", full.display()))?;
        let name = rel
            .to_str()
            .ok_or_else(|| format!("{}: not UTF-8", rel.display()))?;
        let perm = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            newc_entry(&mut out, ino, 0o040000 | perm, 0, (0, 0), name).map_err(err)?;
        } else if meta.is_file() {
            let data = fs::read(&full).map_err(|e| format!("{}: {e}", full.display()))?;
            let size = u32::try_from(data.len()).map_err(|_| format!("{name}: over 4 GiB"))?;
            newc_entry(&mut out, ino, 0o100000 | perm, size, (0, 0), name).map_err(err)?;
            out.write_all(&data).map_err(err)?;
            pad(&mut out, data.len()).map_err(err)?;
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&full).map_err(|e| format!("{}: {e}", full.display()))?;
            let target = target.to_string_lossy().into_owned();
            newc_entry(&mut out, ino, 0o120777, target.len() as u32, (0, 0), name).map_err(err)?;
            out.write_all(target.as_bytes()).map_err(err)?;
            pad(&mut out, target.len()).map_err(err)?;
        } else {
            return Err(format!(
                "{name}: unsupported file type (mode {:o})",
                meta.mode()
            ));
        }
        ino += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        let spec = match (extra[i].as_str(), extra.get(i + 1)) {
            ("--char", Some(spec)) => spec,
            _ => return Err(format!("unexpected argument `{}`", extra[i])),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let [name, major, minor] = parts[..] else {
            return Err(format!("--char {spec}: expected PATH:MAJOR:MINOR"));
        };
        let num = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("--char {spec}: bad number {s}"))
        };
        newc_entry(&mut out, ino, 0o020600, 0, (num(major)?, num(minor)?), name).map_err(err)?;
        ino += 1;
        i += 2;
    }
    newc_entry(&mut out, 0, 0, 0, (0, 0), "TRAILER!!!").map_err(err)?;
    out.flush().map_err(err)
}

/// The TSC's rate against the monotonic clock over 200 ms, in kHz.
fn tsc_khz() -> u64 {
    #[allow(unsafe_code)]
    fn rdtsc() -> u64 {
        // SAFETY: RDTSC has no memory effects and exists on every x86_64 CPU.
        unsafe { std::arch::x86_64::_rdtsc() }
    }
    let (t0, c0) = (Instant::now(), rdtsc());
    std::thread::sleep(Duration::from_millis(200));
    let (c1, elapsed) = (rdtsc(), t0.elapsed());
    ((c1 - c0) as u128 * 1000 / elapsed.as_micros().max(1)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_newc_layout() {
        let dir = std::env::temp_dir().join(format!("tuk-cpio-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("lib")).unwrap();
        fs::write(dir.join("lib/a.ko"), b"hello").unwrap();
        fs::write(dir.join("init"), b"#!").unwrap();
        let out = dir.with_extension("cpio");
        cpio(&out, &dir, &["--char".into(), "dev/console:5:1".into()]).unwrap();
        let bytes = fs::read(&out).unwrap();
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_file(&out);

        // Walk the archive: every header is "070701", names are NUL-terminated and headers,
        // names and data are padded to 4 bytes.
        let mut at = 0;
        let mut entries = Vec::new();
        loop {
            assert_eq!(&bytes[at..at + 6], b"070701", "magic at {at}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&bytes[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap() as usize
            };
            let (mode, size, rmaj, rmin, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name = std::str::from_utf8(&bytes[at + 110..at + 110 + namesize - 1]).unwrap();
            assert_eq!(bytes[at + 110 + namesize - 1], 0);
            let data = (at + 110 + namesize).next_multiple_of(4);
            entries.push((name.to_owned(), mode, size, rmaj, rmin));
            at = (data + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                break;
            }
        }
        assert_eq!(at, bytes.len());
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            ["init", "lib", "lib/a.ko", "dev/console", "TRAILER!!!"]
        );
        assert_eq!(entries[2].1 & 0o170000, 0o100000);
        assert_eq!(entries[2].2, 5);
        assert_eq!(entries[1].1 & 0o170000, 0o040000);
        assert_eq!(
            (entries[3].1 & 0o170000, entries[3].3, entries[3].4),
            (0o020000, 5, 1)
        );
    }
}
