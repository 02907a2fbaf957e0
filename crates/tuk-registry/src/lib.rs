//! Publish signed tuk bundles to an OCI registry and pull them back.
//!
//! A bundle (`TUKBNDL1`: the component `.wasm`, its compiled code, the DSSE envelope; see
//! docs/measurement.md) is pushed as a Wasm OCI artifact whose first layer is the component
//! itself, so Wasm-aware OCI tools see a component; tuk's two extra layers carry the compiled
//! code and the signature ([`oci`] has the layout, docs/registry.md the reasons).
//!
//! Contract:
//! - Everything the registry sends is untrusted. [`pull`] checks the manifest's media types,
//!   sizes (64 MiB for the whole bundle) and the config, and verifies every blob's SHA-256
//!   while it arrives; a mismatch is an error and nothing is returned. It does **not** verify
//!   the signature: the host-kernel does, against its trust policy (and `tuk verify` can).
//! - [`publish`] refuses a bundle whose envelope is not a DSSE envelope over an in-toto
//!   statement that names the bundle's own wasm and code digests, so the registry never holds
//!   a bundle whose signature cannot match.
//! - http is used for loopback registries (and with `insecure`), https otherwise; anonymous
//!   access only.

#![forbid(unsafe_code)]

pub mod bundle;
mod client;
pub mod local;
pub mod oci;
mod reference;

use std::time::SystemTime;

use base64::Engine as _;
use serde::Deserialize;
use thiserror::Error;

pub use bundle::BundleError;
use client::Client;
pub use oci::{Descriptor, Manifest, PublishOptions, WasmConfig};
pub use reference::Reference;

/// The largest manifest or config blob tuk reads.
const MAX_METADATA: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("invalid reference `{input}`: {reason}")]
    InvalidReference { input: String, reason: String },
    #[error(
        "cannot reach the registry ({url}): {detail}. Is the registry running? Start a local \
         one with `scripts/registry start` (Debian package docker-registry)"
    )]
    Unreachable { url: String, detail: String },
    #[error("not found: {what} ({detail})")]
    NotFound { what: String, detail: String },
    #[error(
        "{url}: the registry asks for credentials (HTTP 401, {challenge}); tuk supports \
         anonymous registries only for now"
    )]
    Unauthorized { url: String, challenge: String },
    #[error("{url}: access denied (HTTP 403: {detail})")]
    Denied { url: String, detail: String },
    #[error("{method} {url}: HTTP {status}: {detail}")]
    Http {
        method: String,
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}; refusing it (the registry's copy is corrupt or was tampered with)")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: the registry sent {actual} bytes, the manifest says {expected}; refusing it")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what} is larger than the {limit}-byte limit")]
    TooLarge { what: String, limit: u64 },
    #[error("{reference} is not a Wasm OCI artifact: {reason}")]
    NotWasmArtifact { reference: String, reason: String },
    #[error("{reference} is a Wasm OCI artifact but not a tuk bundle: {reason} (publish bundles with `tuk publish`)")]
    NotTukBundle { reference: String, reason: String },
    #[error("the bundle cannot be published: {0}")]
    Unpublishable(String),
    #[error("registry protocol error: {0}")]
    Protocol(String),
    #[error("{url}: {detail}")]
    Transport { url: String, detail: String },
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// What [`publish`] pushed.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// The tag reference it was pushed to.
    pub reference: Reference,
    /// `sha256:<hex>` of the manifest: pin deployments with `reference@digest`.
    pub manifest_digest: String,
    /// The manifest exactly as pushed.
    pub manifest: Vec<u8>,
    /// Blobs uploaded, and blobs the registry already had (config and layers).
    pub uploaded: usize,
    pub skipped: usize,
}

impl Pushed {
    /// `registry/repository@sha256:...`.
    pub fn pinned(&self) -> Reference {
        self.reference.with_digest(&self.manifest_digest)
    }
}

/// What [`pull_reference`] fetched.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub manifest_digest: String,
    /// The reassembled `TUKBNDL1` bundle.
    pub bundle: Vec<u8>,
    /// `dev.tuk.name` and `org.opencontainers.image.version`, when the manifest has them
    /// (informational: the signed envelope is what counts).
    pub name: Option<String>,
    pub version: Option<String>,
}

/// Pushes a bundle's parts to `reference` (a tag), taking the name and version from the
/// envelope's statement and the time from the clock. See [`publish_with`].
pub fn publish(
    reference: &str,
    wasm: &[u8],
    code: &[u8],
    envelope: &[u8],
) -> Result<Pushed, RegistryError> {
    let reference = Reference::parse(reference)?;
    let statement = Statement::from_envelope(envelope)?;
    let opts = PublishOptions {
        name: statement.name.clone(),
        version: statement.version.clone(),
        target: statement.world.clone(),
        created: SystemTime::now(),
        insecure: false,
    };
    publish_with(&reference, wasm, code, envelope, &opts)
}

/// Pushes config and layers (skipping blobs the registry already has), then the manifest
/// under `reference`'s tag.
pub fn publish_with(
    reference: &Reference,
    wasm: &[u8],
    code: &[u8],
    envelope: &[u8],
    opts: &PublishOptions,
) -> Result<Pushed, RegistryError> {
    let tag = match (reference.tag(), reference.digest()) {
        (Some(tag), None) => tag.to_owned(),
        _ => {
            return Err(RegistryError::InvalidReference {
                input: reference.to_string(),
                reason: "publish to a tag (REGISTRY/REPO:TAG); the digest is computed".into(),
            })
        }
    };
    let total = (bundle::MAGIC.len() + 24 + wasm.len() + code.len() + envelope.len()) as u64;
    if total > bundle::MAX_BUNDLE {
        return Err(RegistryError::TooLarge {
            what: "the bundle".into(),
            limit: bundle::MAX_BUNDLE,
        });
    }
    Statement::from_envelope(envelope)?.covers(wasm, code)?;
    let artifact =
        oci::build_artifact(wasm, code, envelope, opts).map_err(RegistryError::Unpublishable)?;
    let manifest_digest = oci::digest_of(&artifact.manifest);

    let client = Client::new(reference, opts.insecure);
    let (mut uploaded, mut skipped) = (0, 0);
    for blob in [&artifact.config[..], wasm, code, envelope] {
        let digest = oci::digest_of(blob);
        if client.blob_exists(&digest)? {
            skipped += 1;
        } else {
            client.upload_blob(&digest, blob)?;
            uploaded += 1;
        }
    }
    let stored = client.put_manifest(&tag, oci::MANIFEST_MEDIA_TYPE, &artifact.manifest)?;
    if let Some(stored) = stored {
        if stored != manifest_digest {
            return Err(RegistryError::DigestMismatch {
                what: "pushed manifest".into(),
                expected: manifest_digest,
                actual: stored,
            });
        }
    }
    Ok(Pushed {
        reference: reference.clone(),
        manifest_digest,
        manifest: artifact.manifest,
        uploaded,
        skipped,
    })
}

/// Pulls the bundle at `reference` (tag or digest) and returns its `TUKBNDL1` bytes, every
/// blob verified against the manifest.
pub fn pull(reference: &str) -> Result<Vec<u8>, RegistryError> {
    pull_reference(&Reference::parse(reference)?, false).map(|p| p.bundle)
}

/// [`pull`] with a parsed reference; `insecure` forces http.
pub fn pull_reference(reference: &Reference, insecure: bool) -> Result<Pulled, RegistryError> {
    let client = Client::new(reference, insecure);
    let (manifest_digest, manifest) = get_manifest(&client, reference)?;
    let m: Manifest =
        serde_json::from_slice(&manifest).map_err(|e| RegistryError::NotWasmArtifact {
            reference: reference.to_string(),
            reason: format!("its manifest is not an OCI image manifest: {e}"),
        })?;
    let not_wasm = |reason: String| RegistryError::NotWasmArtifact {
        reference: reference.to_string(),
        reason,
    };
    if m.schema_version != 2 {
        return Err(not_wasm(format!("schemaVersion {}", m.schema_version)));
    }
    if m.config.media_type != oci::WASM_CONFIG_MEDIA_TYPE {
        return Err(not_wasm(format!(
            "its config is {}, not {}",
            m.config.media_type,
            oci::WASM_CONFIG_MEDIA_TYPE
        )));
    }
    let find = |media_type: &str| -> Result<&Descriptor, RegistryError> {
        let mut found = m.layers.iter().filter(|l| l.media_type == media_type);
        match (found.next(), found.next()) {
            (Some(one), None) => Ok(one),
            (None, _) if media_type == oci::WASM_LAYER_MEDIA_TYPE => {
                Err(not_wasm(format!("it has no {media_type} layer")))
            }
            (None, _) => Err(RegistryError::NotTukBundle {
                reference: reference.to_string(),
                reason: format!("it has no {media_type} layer"),
            }),
            (Some(_), Some(_)) => Err(not_wasm(format!("it has more than one {media_type} layer"))),
        }
    };
    let wasm_layer = find(oci::WASM_LAYER_MEDIA_TYPE)?;
    let code_layer = find(oci::CODE_LAYER_MEDIA_TYPE)?;
    let envelope_layer = find(oci::ENVELOPE_LAYER_MEDIA_TYPE)?;

    // Sizes and digests are checked before anything large is downloaded.
    let mut total = 0u64;
    for d in std::iter::once(&m.config).chain(&m.layers) {
        reference::check_digest(&d.digest).map_err(|r| not_wasm(r.to_string()))?;
        total = total.saturating_add(d.size);
    }
    if m.config.size > MAX_METADATA || total > bundle::MAX_BUNDLE {
        return Err(RegistryError::TooLarge {
            what: format!("{reference} (config and layers, {total} bytes)"),
            limit: bundle::MAX_BUNDLE,
        });
    }

    let config = client.get_blob("config", &m.config.digest, m.config.size)?;
    let config: WasmConfig = serde_json::from_slice(&config)
        .map_err(|e| not_wasm(format!("its config is not a Wasm config: {e}")))?;
    if config.architecture != "wasm" {
        return Err(not_wasm(format!("architecture `{}`", config.architecture)));
    }
    let layer_digests: Vec<&str> = m.layers.iter().map(|l| l.digest.as_str()).collect();
    if config.layer_digests != layer_digests {
        return Err(not_wasm(
            "the config's layerDigests do not match the manifest's layers".into(),
        ));
    }

    let wasm = client.get_blob("component layer", &wasm_layer.digest, wasm_layer.size)?;
    oci::wasm_kind(&wasm).map_err(not_wasm)?;
    let code = client.get_blob("code layer", &code_layer.digest, code_layer.size)?;
    let envelope = client.get_blob(
        "envelope layer",
        &envelope_layer.digest,
        envelope_layer.size,
    )?;
    Statement::from_envelope(&envelope).map_err(|e| RegistryError::NotTukBundle {
        reference: reference.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Pulled {
        manifest_digest,
        bundle: bundle::encode(&wasm, &code, &envelope),
        name: m.annotations.get(oci::ANNOTATION_NAME).cloned(),
        version: m.annotations.get(oci::ANNOTATION_VERSION).cloned(),
    })
}

/// The manifest at `reference`, checked: an OCI image manifest no larger than 1 MiB, whose
/// digest matches the pinned digest and the registry's own `Docker-Content-Digest`.
/// Returns `(digest, bytes)`.
pub fn fetch_manifest(
    reference: &Reference,
    insecure: bool,
) -> Result<(String, Vec<u8>), RegistryError> {
    get_manifest(&Client::new(reference, insecure), reference)
}

fn get_manifest(
    client: &Client,
    reference: &Reference,
) -> Result<(String, Vec<u8>), RegistryError> {
    // Ask for the other kinds too, so that a container image or an index gets a clear
    // "not a Wasm artifact" rather than a 404.
    const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
        application/vnd.oci.image.index.v1+json;q=0.5, \
        application/vnd.docker.distribution.manifest.v2+json;q=0.5, \
        application/vnd.docker.distribution.manifest.list.v2+json;q=0.5";
    let (bytes, content_type, claimed) = client
        .get_manifest(reference.manifest_reference(), ACCEPT, MAX_METADATA)
        .map_err(|e| match e {
            RegistryError::NotFound { detail, .. } => RegistryError::NotFound {
                what: format!("{reference}: no such repository, tag or digest in the registry"),
                detail,
            },
            e => e,
        })?;
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if media_type != oci::MANIFEST_MEDIA_TYPE {
        return Err(RegistryError::NotWasmArtifact {
            reference: reference.to_string(),
            reason: format!(
                "the registry serves it as `{content_type}`, not {}",
                oci::MANIFEST_MEDIA_TYPE
            ),
        });
    }
    let digest = oci::digest_of(&bytes);
    for expected in [reference.digest().map(str::to_owned), claimed]
        .into_iter()
        .flatten()
    {
        if expected != digest {
            return Err(RegistryError::DigestMismatch {
                what: format!("manifest of {reference}"),
                expected,
                actual: digest,
            });
        }
    }
    Ok((digest, bytes))
}

/// The tags of `reference`'s repository.
pub fn tags(reference: &Reference, insecure: bool) -> Result<Vec<String>, RegistryError> {
    Client::new(reference, insecure)
        .tags()
        .map_err(|e| match e {
            RegistryError::NotFound { detail, .. } => RegistryError::NotFound {
                what: format!(
                    "repository {}/{}",
                    reference.registry(),
                    reference.repository()
                ),
                detail,
            },
            e => e,
        })
}

/// The parts of the envelope's in-toto statement the registry uses (no signature check).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub name: String,
    pub version: String,
    pub world: Option<String>,
    /// Subject names and SHA-256 digests (hex).
    pub subjects: Vec<(String, String)>,
}

impl Statement {
    /// Reads a DSSE envelope (`payloadType` in-toto, base64 `payload`, at least one
    /// signature) and its statement's subjects and predicate name/version.
    pub fn from_envelope(envelope: &[u8]) -> Result<Statement, RegistryError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Envelope {
            payload_type: String,
            payload: String,
            signatures: Vec<serde_json::Value>,
        }
        #[derive(Deserialize)]
        struct InToto {
            subject: Vec<Subject>,
            predicate: Predicate,
        }
        #[derive(Deserialize)]
        struct Subject {
            name: String,
            digest: std::collections::BTreeMap<String, String>,
        }
        #[derive(Deserialize)]
        struct Predicate {
            name: String,
            version: String,
            world: Option<String>,
        }
        let bad = |why: String| {
            RegistryError::Unpublishable(format!("the envelope is not a tuk DSSE envelope: {why}"))
        };
        let env: Envelope = serde_json::from_slice(envelope).map_err(|e| bad(e.to_string()))?;
        if env.payload_type != "application/vnd.in-toto+json" {
            return Err(bad(format!("payloadType `{}`", env.payload_type)));
        }
        if env.signatures.is_empty() {
            return Err(bad("it has no signatures".into()));
        }
        let payload = base64::engine::general_purpose::STANDARD
            .decode(env.payload.as_bytes())
            .map_err(|e| bad(format!("payload is not base64: {e}")))?;
        let st: InToto = serde_json::from_slice(&payload)
            .map_err(|e| bad(format!("payload is not an in-toto statement: {e}")))?;
        Ok(Statement {
            name: st.predicate.name,
            version: st.predicate.version,
            world: st.predicate.world,
            subjects: st
                .subject
                .into_iter()
                .map(|s| (s.name, s.digest.get("sha256").cloned().unwrap_or_default()))
                .collect(),
        })
    }

    /// Checks that the statement's subjects include the digests of `wasm` and `code`.
    pub fn covers(&self, wasm: &[u8], code: &[u8]) -> Result<(), RegistryError> {
        for (what, bytes) in [("wasm", wasm), ("compiled code", code)] {
            let digest = oci::digest_of(bytes);
            let hex = &digest["sha256:".len()..];
            if !self.subjects.iter().any(|(_, d)| d == hex) {
                return Err(RegistryError::Unpublishable(format!(
                    "the envelope does not sign the bundle's {what} ({digest}); re-sign it with `tuk sign`"
                )));
            }
        }
        Ok(())
    }
}
