//! Publish and pull against a real registry: Debian's `docker-registry` (CNCF distribution
//! 2.8) on a free loopback port, one per test, with its storage in a temporary directory.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::Value;
use tuk_registry::local::LocalRegistry;
use tuk_registry::oci::{self, digest_of};
use tuk_registry::{bundle, PublishOptions, Reference, RegistryError};

/// A DSSE envelope over an in-toto statement naming `wasm` and `code` (signature unchecked
/// by the registry, so a placeholder).
fn envelope(name: &str, version: &str, wasm: &[u8], code: &[u8]) -> Vec<u8> {
    let hex = |b: &[u8]| digest_of(b)["sha256:".len()..].to_owned();
    let statement = serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [
            {"name": format!("{name}.wasm"), "digest": {"sha256": hex(wasm)}},
            {"name": format!("{name}.cwasm"), "digest": {"sha256": hex(code)}},
        ],
        "predicateType": "https://tuk.dev/attestations/component/v1",
        "predicate": {"name": name, "version": version, "engine": "00",
                      "world": "tuk:service/service@0.1.0",
                      "limits": {"memory_bytes": 16777216, "deadline_ms": 2000}},
    });
    let payload = base64::engine::general_purpose::STANDARD.encode(statement.to_string());
    serde_json::to_vec(&serde_json::json!({
        "payloadType": "application/vnd.in-toto+json",
        "payload": payload,
        "signatures": [{"keyid": "test", "sig": "AAAA"}],
    }))
    .unwrap()
}

/// A synthetic bundle: an empty component (valid header), some "code", its envelope.
fn synthetic(name: &str, version: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let wasm = b"\0asm\x0d\0\x01\0".to_vec();
    let code: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let env = envelope(name, version, &wasm, &code);
    (wasm, code, env)
}

fn opts(name: &str, version: &str) -> PublishOptions {
    PublishOptions {
        name: name.into(),
        version: version.into(),
        target: Some("tuk:service/service@0.1.0".into()),
        created: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        insecure: false,
    }
}

fn reference(reg: &LocalRegistry, path: &str) -> Reference {
    Reference::parse(&format!("{}/{path}", reg.host())).unwrap()
}

fn publish_synthetic(reg: &LocalRegistry, path: &str) -> (tuk_registry::Pushed, Vec<u8>) {
    let (wasm, code, env) = synthetic("hello", "1.0.0");
    let pushed = tuk_registry::publish_with(
        &reference(reg, path),
        &wasm,
        &code,
        &env,
        &opts("hello", "1.0.0"),
    )
    .unwrap();
    (pushed, bundle::encode(&wasm, &code, &env))
}

#[test]
fn publish_then_pull_is_byte_identical() {
    let reg = LocalRegistry::start().unwrap();
    let (pushed, expected) = publish_synthetic(&reg, "tuk/hello:1.0.0");
    assert_eq!(pushed.uploaded, 4, "config + three layers");
    assert_eq!(pushed.manifest_digest, digest_of(&pushed.manifest));

    let by_tag = tuk_registry::pull(&format!("oci://{}/tuk/hello:1.0.0", reg.host())).unwrap();
    assert_eq!(by_tag, expected);
    let pinned = tuk_registry::pull_reference(&pushed.pinned(), false).unwrap();
    assert_eq!(pinned.bundle, expected);
    assert_eq!(pinned.manifest_digest, pushed.manifest_digest);
    assert_eq!(pinned.name.as_deref(), Some("hello"));
    assert_eq!(pinned.version.as_deref(), Some("1.0.0"));

    // Publishing again uploads nothing and gives the same digest (reproducible manifest).
    let (again, _) = publish_synthetic(&reg, "tuk/hello:1.0.0");
    assert_eq!((again.uploaded, again.skipped), (0, 4));
    assert_eq!(again.manifest_digest, pushed.manifest_digest);
}

#[test]
fn the_registry_lists_a_wasm_oci_artifact() {
    let reg = LocalRegistry::start().unwrap();
    let (pushed, _) = publish_synthetic(&reg, "tuk/hello:1.0.0");
    publish_synthetic(&reg, "tuk/hello:latest");
    let r = reference(&reg, "tuk/hello:1.0.0");

    let mut tags = tuk_registry::tags(&r, false).unwrap();
    tags.sort();
    assert_eq!(tags, ["1.0.0", "latest"]);

    let (digest, bytes) = tuk_registry::fetch_manifest(&r, false).unwrap();
    assert_eq!(digest, pushed.manifest_digest);
    let m: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["mediaType"], oci::MANIFEST_MEDIA_TYPE);
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(m["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(
        m["layers"][1]["mediaType"],
        "application/vnd.tuk.component.code.v1"
    );
    assert_eq!(
        m["layers"][2]["mediaType"],
        "application/vnd.dsse.envelope.v1+json"
    );
    assert_eq!(
        m["annotations"]["org.opencontainers.image.version"],
        "1.0.0"
    );
    assert_eq!(m["annotations"]["dev.tuk.name"], "hello");

    // The config as the registry stores it.
    let config_digest = m["config"]["digest"].as_str().unwrap();
    let config: Value =
        serde_json::from_slice(&std::fs::read(reg.blob_path(config_digest)).unwrap()).unwrap();
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip2");
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    let layer_digests: Vec<&Value> = (0..3).map(|i| &m["layers"][i]["digest"]).collect();
    assert_eq!(
        config["layerDigests"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        layer_digests
    );
    assert_eq!(config["component"]["target"], "tuk:service/service@0.1.0");
    eprintln!("manifest: {}", String::from_utf8_lossy(&bytes));
    eprintln!("config:   {config}");
}

#[test]
fn a_tampered_blob_is_refused() {
    let reg = LocalRegistry::start().unwrap();
    let (_, _) = publish_synthetic(&reg, "tuk/hello:1.0.0");
    let (_, code, _) = synthetic("hello", "1.0.0");
    let path = reg.blob_path(&digest_of(&code));
    let mut evil = std::fs::read(&path).unwrap();
    assert_eq!(evil, code, "the registry stores blobs as plain files");
    evil[1000] ^= 0x90; // same length, one byte changed: an injected instruction
    std::fs::write(&path, &evil).unwrap();

    let err = tuk_registry::pull(&format!("{}/tuk/hello:1.0.0", reg.host())).unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("code layer") && msg.contains("digest mismatch"),
        "{msg}"
    );

    evil.truncate(500);
    std::fs::write(&path, &evil).unwrap();
    let err = tuk_registry::pull(&format!("{}/tuk/hello:1.0.0", reg.host())).unwrap_err();
    assert!(matches!(err, RegistryError::SizeMismatch { .. }), "{err:?}");
}

#[test]
fn unknown_tag_and_repository_are_clear_404s() {
    let reg = LocalRegistry::start().unwrap();
    publish_synthetic(&reg, "tuk/hello:1.0.0");
    for missing in ["tuk/hello:9.9.9", "tuk/nope:1.0.0"] {
        let err = tuk_registry::pull(&format!("{}/{missing}", reg.host())).unwrap_err();
        assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(missing) && msg.contains("no such repository, tag"),
            "{msg}"
        );
        eprintln!("{msg}");
    }
    let err = tuk_registry::tags(&reference(&reg, "tuk/nope:1"), false).unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
}

#[test]
fn a_registry_that_is_down_gets_a_hint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = tuk_registry::pull(&format!("127.0.0.1:{port}/tuk/hello:1.0.0")).unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("is the registry running") || msg.contains("Is the registry running"));
    assert!(msg.contains("scripts/registry start"), "{msg}");
    let (wasm, code, env) = synthetic("hello", "1.0.0");
    let err = tuk_registry::publish(
        &format!("127.0.0.1:{port}/tuk/hello:1.0.0"),
        &wasm,
        &code,
        &env,
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
}

#[test]
fn a_registry_that_wants_credentials_is_a_clear_401() {
    // distribution's "silly" auth: 401 with a Bearer challenge to any request without an
    // Authorization header.
    let reg = LocalRegistry::start_with(
        "auth:\n  silly:\n    realm: http://127.0.0.1/token\n    service: tuk-test\n",
    )
    .unwrap();
    let err = tuk_registry::pull(&format!("{}/tuk/hello:1.0.0", reg.host())).unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("401") && msg.contains("Bearer"), "{msg}");
    let (wasm, code, env) = synthetic("hello", "1.0.0");
    let err = tuk_registry::publish(
        &format!("{}/tuk/hello:1.0.0", reg.host()),
        &wasm,
        &code,
        &env,
    )
    .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
}

#[test]
fn other_artifacts_are_not_pulled_as_bundles() {
    let reg = LocalRegistry::start().unwrap();
    // A plain container-style image: OCI manifest, image config, one tar layer.
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = b"not a tar, does not matter";
    let put_blob = |bytes: &[u8]| {
        let agent = ureq::Agent::new_with_defaults();
        let resp = agent
            .post(format!(
                "http://{}/v2/other/image/blobs/uploads/",
                reg.host()
            ))
            .send_empty()
            .unwrap();
        let loc = resp.headers()["location"].to_str().unwrap().to_owned();
        let sep = if loc.contains('?') { '&' } else { '?' };
        let url = if loc.starts_with('/') {
            format!("http://{}{loc}", reg.host())
        } else {
            loc
        };
        agent
            .put(format!("{url}{sep}digest={}", digest_of(bytes)))
            .send(bytes)
            .unwrap();
    };
    put_blob(config);
    put_blob(layer);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest_of(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest_of(layer), "size": layer.len()}],
    });
    ureq::Agent::new_with_defaults()
        .put(format!("http://{}/v2/other/image/manifests/1", reg.host()))
        .header("Content-Type", oci::MANIFEST_MEDIA_TYPE)
        .send(manifest.to_string())
        .unwrap();
    let err = tuk_registry::pull(&format!("{}/other/image:1", reg.host())).unwrap_err();
    assert!(
        matches!(err, RegistryError::NotWasmArtifact { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("application/vnd.wasm.config.v0+json"),
        "{err}"
    );
}

#[test]
fn publish_refuses_an_envelope_that_does_not_sign_the_bundle() {
    // Checked before any network traffic: no registry needed.
    let (wasm, code, _) = synthetic("hello", "1.0.0");
    let other = envelope("hello", "1.0.0", &wasm, b"other code");
    let err =
        tuk_registry::publish("127.0.0.1:1/tuk/hello:1.0.0", &wasm, &code, &other).unwrap_err();
    assert!(matches!(err, RegistryError::Unpublishable(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("does not sign the bundle's compiled code"),
        "{err}"
    );
    let err =
        tuk_registry::publish("127.0.0.1:1/tuk/hello:1.0.0", &wasm, &code, b"{}").unwrap_err();
    assert!(matches!(err, RegistryError::Unpublishable(_)), "{err:?}");
    let err = tuk_registry::publish("127.0.0.1:1/tuk/hello@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", &wasm, &code, &other).unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Unpublishable(_) | RegistryError::InvalidReference { .. }
        ),
        "{err:?}"
    );
}

/// With the real `hello` component (built here with tuk's own tools): the config lists the
/// component's imports and exports, as Wasm OCI tools expect.
#[test]
fn a_real_component_round_trips_with_its_interfaces() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let build_opts = tuk_compose::BuildOptions {
        out_dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("registry-components"),
        locked: true,
        ..tuk_compose::BuildOptions::default()
    };
    let (_, built) = tuk_compose::build(&root.join("components/hello"), &build_opts)
        .unwrap_or_else(|e| panic!("building components/hello failed: {e}"));
    let wasm = std::fs::read(&built[0].artifact.path).unwrap();
    let code = tuk_compose::compile(&wasm).unwrap();
    let reg = LocalRegistry::start().unwrap();
    let env = envelope("hello", "1.0.0", &wasm, &code);
    let r = reference(&reg, "tuk/hello:1.0.0");
    let pushed =
        tuk_registry::publish_with(&r, &wasm, &code, &env, &opts("hello", "1.0.0")).unwrap();
    assert_eq!(
        tuk_registry::pull_reference(&r, false).unwrap().bundle,
        bundle::encode(&wasm, &code, &env)
    );
    let m: Value = serde_json::from_slice(&pushed.manifest).unwrap();
    let config: Value = serde_json::from_slice(
        &std::fs::read(reg.blob_path(m["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let exports = config["component"]["exports"].as_array().unwrap();
    assert!(
        exports
            .iter()
            .any(|e| e.as_str().unwrap().starts_with("tuk:service/")),
        "{config}"
    );
    eprintln!("config of hello: {config}");
}
