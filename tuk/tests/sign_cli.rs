//! `tuk keygen`, `tuk sign`, `tuk verify` and `tuk policy` as a user runs them, end to end,
//! with real keys and a real component (`components/hello`, built here: needs a wasm32
//! toolchain, see `component_cli.rs`). Every way a bundle can be refused is shown to be
//! refused with its own error.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

const TUK: &str = env!("CARGO_BIN_EXE_tuk");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn tuk(args: &[&str]) -> Output {
    Command::new(TUK)
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("tuk runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
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

fn ok(out: Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    event(&out)
}

/// SHA-256 of a file, by coreutils (independent of tuk's own hashing).
fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

struct Fixture {
    dir: PathBuf,
    wasm: PathBuf,
    bundle: PathBuf,
    key: PathBuf,
    public: PathBuf,
    other_public: PathBuf,
}

/// Built once for all tests: hello.wasm, two keys, hello 1.2.0 signed with the first.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sign-cli");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let wasm = dir.join("hello.wasm");
        ok(tuk(&[
            "component",
            "build",
            "components/hello",
            "--out",
            s(&wasm),
            "--locked",
        ]));
        let keys = dir.join("keys");
        let key = ok(tuk(&["keygen", "--out", s(&keys), "--name", "dev"]));
        assert_eq!(key["event"], "key-generated");
        let other = ok(tuk(&["keygen", "--out", s(&keys), "--name", "other"]));
        assert_ne!(key["keyid"], other["keyid"]);
        let bundle = dir.join("hello.bundle");
        let signed = ok(tuk(&[
            "sign",
            s(&wasm),
            "--key",
            s(&keys.join("dev.key")),
            "--name",
            "hello",
            "--version",
            "1.2.0",
            "--memory-limit",
            "8",
            "--deadline",
            "500",
            "-o",
            s(&bundle),
        ]));
        assert_eq!(signed["event"], "signed");
        assert_eq!(signed["path"], s(&bundle));
        assert_eq!(signed["sha256"], sha256_of(&bundle));
        assert_eq!(signed["keyid"], key["keyid"]);
        assert_eq!(signed["wasm_sha256"], sha256_of(&wasm));
        Fixture {
            wasm,
            bundle,
            key: keys.join("dev.key"),
            public: keys.join("dev.pub"),
            other_public: keys.join("other.pub"),
            dir,
        }
    })
}

/// A copy of the fixture's bundle, changed by `edit`.
fn altered(name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let f = fixture();
    let mut bytes = std::fs::read(&f.bundle).unwrap();
    edit(&mut bytes);
    let path = f.dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The sections of a bundle: (offset, length) of wasm, code, envelope.
fn sections(bytes: &[u8]) -> [(usize, usize); 3] {
    let mut at = 8;
    let mut out = [(0, 0); 3];
    for section in &mut out {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        *section = (at + 8, len);
        at += 8 + len;
    }
    assert_eq!(at, bytes.len());
    out
}

/// Runs `tuk verify` expecting refusal; returns the failure's code and message.
fn refused(bundle: &Path, trust: &[&str]) -> (String, String) {
    let mut args = vec!["verify", s(bundle)];
    args.extend_from_slice(trust);
    let out = tuk(&args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = event(&out);
    assert_eq!(e["event"], "verify-failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let message = e["message"].as_str().unwrap().to_owned();
    assert!(stderr.contains(&message), "{stderr}");
    (e["error"].as_str().unwrap().to_owned(), message)
}

#[test]
fn keygen_writes_a_private_key_only_we_can_read_and_never_overwrites() {
    let f = fixture();
    let mode = std::fs::metadata(&f.key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let pem = std::fs::read_to_string(&f.key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let public: Value = serde_json::from_slice(&std::fs::read(&f.public).unwrap()).unwrap();
    assert_eq!(public["keyid"].as_str().unwrap().len(), 64);
    let before = std::fs::read(&f.key).unwrap();
    let out = tuk(&[
        "keygen",
        "--out",
        s(f.key.parent().unwrap()),
        "--name",
        "dev",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&f.key).unwrap(), before);
}

#[test]
fn a_signed_bundle_verifies() {
    let f = fixture();
    let v = ok(tuk(&["verify", s(&f.bundle), "--trust", s(&f.public)]));
    assert_eq!(v["event"], "verified");
    assert_eq!(v["name"], "hello");
    assert_eq!(v["version"], "1.2.0");
    assert_eq!(v["wasm_sha256"], sha256_of(&f.wasm));
    assert_eq!(v["memory_bytes"], 8 << 20);
    assert_eq!(v["deadline_ms"], 500);
    // The code section is exactly what `tuk compile` produces (deterministic compilation).
    let cwasm = f.dir.join("hello.cwasm");
    ok(tuk(&["compile", s(&f.wasm), "-o", s(&cwasm)]));
    assert_eq!(v["code_sha256"], sha256_of(&cwasm));
    // Either trusted key is enough.
    ok(tuk(&[
        "verify",
        s(&f.bundle),
        "--trust",
        s(&f.other_public),
        "--trust",
        s(&f.public),
    ]));
}

#[test]
fn altered_bytes_are_refused_with_the_specific_error() {
    let f = fixture();
    let trust = ["--trust", s(&f.public)];
    let bytes = std::fs::read(&f.bundle).unwrap();
    let [wasm, code, envelope] = sections(&bytes);

    let path = altered("wasm-flipped.bundle", |b| b[wasm.0 + wasm.1 / 2] ^= 0x01);
    let (error, message) = refused(&path, &trust);
    assert_eq!(error, "digest-mismatch");
    assert!(
        message.starts_with("bundle's wasm does not match"),
        "{message}"
    );

    let path = altered("code-flipped.bundle", |b| b[code.0 + code.1 / 2] ^= 0x01);
    let (error, message) = refused(&path, &trust);
    assert_eq!(error, "digest-mismatch");
    assert!(
        message.starts_with("bundle's code does not match"),
        "{message}"
    );

    // One base64 character of the signed payload changed: a valid envelope whose signature
    // no longer verifies.
    let text = std::str::from_utf8(&bytes[envelope.0..envelope.0 + envelope.1]).unwrap();
    let payload_at = envelope.0 + text.find(r#""payload":""#).unwrap() + 11 + 40;
    let path = altered("payload-flipped.bundle", |b| {
        b[payload_at] = if b[payload_at] == b'A' { b'B' } else { b'A' }
    });
    assert_eq!(refused(&path, &trust).0, "no-trusted-signature");

    // The envelope's JSON broken.
    let path = altered("envelope-broken.bundle", |b| b[envelope.0] = b'[');
    assert_eq!(refused(&path, &trust).0, "bad-envelope");
}

#[test]
fn a_truncated_or_padded_bundle_is_refused() {
    let f = fixture();
    let trust = ["--trust", s(&f.public)];
    let path = altered("truncated.bundle", |b| b.truncate(b.len() - 1));
    let (error, message) = refused(&path, &trust);
    assert_eq!(error, "bad-bundle");
    assert!(
        message.contains("truncated in its envelope section"),
        "{message}"
    );
    let path = altered("padded.bundle", |b| b.push(b'\n'));
    assert_eq!(refused(&path, &trust).0, "bad-bundle");
    let path = altered("not-a-bundle.bundle", |b| b[0] = b'X');
    assert_eq!(refused(&path, &trust).0, "bad-bundle");
}

#[test]
fn an_untrusted_key_is_refused() {
    let f = fixture();
    let (error, message) = refused(&f.bundle, &["--trust", s(&f.other_public)]);
    assert_eq!(error, "no-trusted-signature");
    assert!(message.contains("add the signer's .pub"), "{message}");
}

#[test]
fn policies_refuse_rollback_and_names_not_allowed() {
    let f = fixture();
    let policy = |name: &str, extra: &[&str]| {
        let path = f.dir.join(name);
        let mut args = vec!["policy", "--trust", s(&f.public), "-o", s(&path)];
        args.extend_from_slice(extra);
        let e = ok(tuk(&args));
        assert_eq!(e["event"], "policy-written");
        // The file is the canonical bytes; its SHA-256 is the PCR 8 measurement.
        assert_eq!(e["sha256"], sha256_of(&path));
        path
    };

    let allowed = policy(
        "allowed.json",
        &["--allow", "hello", "--min-version", "hello=1.2.0"],
    );
    ok(tuk(&["verify", s(&f.bundle), "--policy", s(&allowed)]));

    let rollback = policy("rollback.json", &["--min-version", "hello=1.10.0"]);
    let (error, message) = refused(&f.bundle, &["--policy", s(&rollback)]);
    assert_eq!(error, "rollback");
    assert_eq!(
        message,
        "hello 1.2.0 is older than the minimum version 1.10.0 the trust policy allows (rollback refused)"
    );

    let names = policy("names.json", &["--allow", "kv", "--allow", "notes"]);
    let (error, message) = refused(&f.bundle, &["--policy", s(&names)]);
    assert_eq!(error, "name-not-allowed");
    assert!(message.contains("\"hello\""), "{message}");

    // Bad policy arguments are usage errors, not policies.
    let out = tuk(&[
        "policy",
        "--trust",
        s(&f.public),
        "--min-version",
        "hello=1.2",
        "-o",
        s(&f.dir.join("bad.json")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MAJOR.MINOR.PATCH"));
}

#[test]
fn sign_refuses_bad_input() {
    let f = fixture();
    let out_path = f.dir.join("never.bundle");
    let sign = |wasm: &Path, name: &str, version: &str| {
        tuk(&[
            "sign",
            s(wasm),
            "--key",
            s(&f.key),
            "--name",
            name,
            "--version",
            version,
            "-o",
            s(&out_path),
        ])
    };
    for (wasm, name, version, needle) in [
        (&f.wasm, "Hello", "1.0.0", "invalid component name"),
        (&f.wasm, "hello", "1.0", "MAJOR.MINOR.PATCH"),
        (&f.bundle, "hello", "1.0.0", "not a WebAssembly component"),
    ] {
        let out = sign(wasm, name, version);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    // A public key is not a signing key.
    let out = tuk(&[
        "sign",
        s(&f.wasm),
        "--key",
        s(&f.public),
        "--name",
        "hello",
        "--version",
        "1.0.0",
        "-o",
        s(&out_path),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PKCS#8"));
    assert!(!out_path.exists());
}
