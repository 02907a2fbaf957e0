//! `tuk component build` and `tuk compile` as a user runs them, end to end: a real build of
//! `components/hello` (needs a wasm32 toolchain: rustup's target, or Debian's
//! `rustc-web cargo-web rust-web-src lld`), then its ahead-of-time compilation.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const TUK: &str = env!("CARGO_BIN_EXE_tuk");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tuk(args: &[&str]) -> Output {
    Command::new(TUK)
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("tuk runs")
}

/// The one JSON event `tuk` printed on stdout.
fn event(out: &Output) -> Value {
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(lines[0]).unwrap()
}

/// SHA-256 of a file, by coreutils (independent of tuk's own hashing).
fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn build_then_compile_hello() {
    let dir = scratch("component-cli");
    let wasm = dir.join("hello.wasm");
    let out = tuk(&[
        "component",
        "build",
        "components/hello",
        "--out",
        wasm.to_str().unwrap(),
        "--locked",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = event(&out);
    assert_eq!(built["event"], "component-built");
    assert_eq!(built["name"], "hello");
    assert_eq!(built["path"], wasm.to_str().unwrap());
    assert_eq!(built["sha256"], sha256_of(&wasm));
    assert_eq!(built["bytes"], std::fs::metadata(&wasm).unwrap().len());
    assert!(["rustup", "debian-rustc-web"].contains(&built["toolchain"].as_str().unwrap()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("toolchain"),
        "stderr names the toolchain: {stderr}"
    );
    assert_eq!(
        &std::fs::read(&wasm).unwrap()[4..8],
        b"\x0d\0\x01\0",
        "a component, not a core module"
    );

    let out = tuk(&["compile", wasm.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compiled = event(&out);
    let cwasm = dir.join("hello.cwasm");
    assert_eq!(compiled["event"], "component-compiled");
    assert_eq!(compiled["path"], cwasm.to_str().unwrap());
    assert_eq!(compiled["target"], "x86_64-unknown-none");
    assert_eq!(compiled["sha256"], sha256_of(&cwasm));

    // Compiling again gives the same bytes.
    let again = dir.join("again.cwasm");
    let out = tuk(&[
        "compile",
        wasm.to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(event(&out)["sha256"], compiled["sha256"]);
}

#[test]
fn compile_explains_what_is_wrong() {
    let dir = scratch("component-cli-errors");
    let module = dir.join("module.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
    let out = tuk(&["compile", module.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("this is a core module; build a component with `tuk component build`"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    let out = tuk(&["compile", dir.join("missing.wasm").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.wasm"));

    let out = tuk(&["component", "build", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no Cargo.toml"));
}
