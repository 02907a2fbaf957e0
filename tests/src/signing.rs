//! Signed components for the tests: build the example components with tuk's tools, sign them
//! with real ed25519 keys, pack them with a trust policy, and publish at run time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tuk_compose::{BuildOptions, Deployment};
use tuk_launcher::Instance;
use tuk_measure::policy::TrustPolicy;
use tuk_measure::sign::SigningKey;
use tuk_measure::statement::{ComponentPredicate, Limits, WORLD};

use crate::{Conn, Response, IO_TIMEOUT};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// A component's `.wasm` and its compiled code.
pub struct Built {
    pub wasm: Vec<u8>,
    pub code: Vec<u8>,
}

/// Builds components/ (once per call) and compiles the named components.
pub fn build(names: &[&str]) -> BTreeMap<String, Built> {
    let out = std::env::temp_dir().join("tuk-e2e").join("components");
    let opts = BuildOptions {
        out_dir: out,
        locked: true,
        ..BuildOptions::default()
    };
    let (_, built) = tuk_compose::build(&repo_root().join("components"), &opts)
        .unwrap_or_else(|e| panic!("building components/ failed: {e}"));
    names
        .iter()
        .map(|n| {
            let b = built.iter().find(|b| b.name == *n).unwrap();
            let wasm = std::fs::read(&b.artifact.path).unwrap();
            let code = tuk_compose::compile(&wasm).unwrap();
            (n.to_string(), Built { wasm, code })
        })
        .collect()
}

/// A signed bundle of `b` as `name` `version` (16 MiB, 2 s limits).
pub fn sign(key: &SigningKey, name: &str, version: &str, b: &Built) -> Vec<u8> {
    sign_with_limits(key, name, version, b, 16 << 20)
}

/// A signed bundle of `b` as `name` `version` with a signed memory limit of `memory_bytes`
/// (2 s deadline).
pub fn sign_with_limits(
    key: &SigningKey,
    name: &str,
    version: &str,
    b: &Built,
    memory_bytes: u64,
) -> Vec<u8> {
    let predicate = ComponentPredicate {
        name: name.into(),
        version: version.into(),
        engine: tuk_compose::compile::engine_fingerprint().unwrap(),
        world: WORLD.into(),
        limits: Limits {
            memory_bytes,
            deadline_ms: 2000,
        },
    };
    tuk_measure::sign::sign_bundle(key, &b.wasm, &b.code, predicate)
}

/// Writes a boot pack of `bundles` (name, bytes) with `policy` into `dir`; returns its path.
pub fn pack(dir: &Path, bundles: &[(&str, Vec<u8>)], policy: &TrustPolicy) -> PathBuf {
    let none: Vec<PackEntry<'_>> = bundles
        .iter()
        .map(|(n, b)| (*n, b.clone(), Vec::new()))
        .collect();
    pack_with_meta(dir, &none, policy)
}

/// One bundle of a boot pack: its name, its bytes and its deployment metadata
/// (`config.KEY`, ...).
pub type PackEntry<'a> = (&'a str, Vec<u8>, Vec<(String, String)>);

/// Like [`pack`], each bundle with its deployment metadata.
pub fn pack_with_meta(dir: &Path, bundles: &[PackEntry<'_>], policy: &TrustPolicy) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let deployments: Vec<Deployment> = bundles
        .iter()
        .map(|(name, bytes, meta)| {
            let path = dir.join(format!("{name}.bundle"));
            std::fs::write(&path, bytes).unwrap();
            Deployment {
                name: (*name).into(),
                source: path,
                meta: meta.clone(),
            }
        })
        .collect();
    let (pack, _) = tuk_compose::boot_pack(&deployments, Some(&policy.canonical_json())).unwrap();
    let path = dir.join("boot.pack");
    std::fs::write(&path, pack).unwrap();
    path
}

/// What [`signed_pack`] made: a fresh publisher key, a policy that trusts only it, the built
/// components and the boot pack of their signed bundles.
pub struct SignedPack {
    pub key: SigningKey,
    pub policy: TrustPolicy,
    pub built: BTreeMap<String, Built>,
    pub pack: PathBuf,
}

/// Builds `names`, signs each as version 1.0.0 with a fresh key, and writes a boot pack of
/// them with a policy trusting only that key (any name, any version) into `dir`.
pub fn signed_pack(dir: &Path, names: &[&str]) -> SignedPack {
    let built = build(names);
    let key = SigningKey::generate().unwrap();
    let policy = TrustPolicy {
        keys: vec![key.trusted_key()],
        allowed_names: None,
        min_versions: Default::default(),
    };
    let bundles: Vec<(&str, Vec<u8>)> = names
        .iter()
        .map(|n| (*n, sign(&key, n, "1.0.0", &built[*n])))
        .collect();
    let pack = pack(dir, &bundles, &policy);
    SignedPack {
        key,
        policy,
        built,
        pack,
    }
}

/// What [`signed_bundle`] wrote: the publisher key, its public half as `tuk run --trust` and
/// `tuk attest --trust` take it, and the signed bundle.
pub struct SignedBundle {
    pub key: SigningKey,
    /// `DIR/key.pub`: the key's trusted-key JSON.
    pub key_pub: PathBuf,
    /// `DIR/NAME.bundle`.
    pub bundle: PathBuf,
}

/// Builds the example component `name`, signs it as version 1.0.0 (16 MiB, 2 s limits) with a
/// fresh key, and writes the bundle to `dir/NAME.bundle` and the key's public half to
/// `dir/key.pub` (`dir` is created).
pub fn signed_bundle(dir: &Path, name: &str) -> SignedBundle {
    std::fs::create_dir_all(dir).unwrap();
    let built = build(&[name]);
    let key = SigningKey::generate().unwrap();
    let bundle = dir.join(format!("{name}.bundle"));
    std::fs::write(&bundle, sign(&key, name, "1.0.0", &built[name])).unwrap();
    let key_pub = dir.join("key.pub");
    std::fs::write(&key_pub, key.trusted_key().to_json()).unwrap();
    SignedBundle {
        key,
        key_pub,
        bundle,
    }
}

/// `PUT /_tuk/components/<name>` with `body`, on the admin listener.
pub fn put(vm: &Instance, name: &str, body: &[u8]) -> Response {
    put_at(vm.admin_addr(), name, body)
}

/// `PUT /_tuk/components/<name>` with `body` to `addr` (either listener).
pub fn put_at(addr: std::net::SocketAddr, name: &str, body: &[u8]) -> Response {
    let mut c = Conn::open(addr);
    let mut req = format!(
        "PUT /_tuk/components/{name} HTTP/1.1\r\nHost: tuk\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    // A refused upload may be answered before the body is fully sent: ignore send errors.
    let _ = c.send(&req);
    c.read_response(IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("PUT {name}: {e}"))
}

/// One GET on a fresh connection: `/_tuk/*` on the admin listener (which serves all of them),
/// anything else (components) on the service listener.
pub fn get(vm: &Instance, path: &str) -> Response {
    let addr = if path.starts_with("/_tuk/") {
        vm.admin_addr()
    } else {
        vm.addr()
    };
    Conn::open(addr).get(path)
}
