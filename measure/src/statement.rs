//! The in-toto Statement v1 a bundle's envelope carries, with tuk's component predicate:
//!
//! ```json
//! {"_type":"https://in-toto.io/Statement/v1",
//!  "subject":[{"name":"hello.wasm","digest":{"sha256":"<hex>"}},
//!             {"name":"hello.cwasm","digest":{"sha256":"<hex>"}}],
//!  "predicateType":"https://tuk.dev/attestations/component/v1",
//!  "predicate":{"name":"hello","version":"1.0.0","engine":"<engine fingerprint hex>",
//!               "world":"tuk:service/service@0.1.0",
//!               "limits":{"memory_bytes":16777216,"deadline_ms":2000}}}
//! ```
//!
//! Parsing is only ever done on a payload whose signature has verified. The statement level
//! ignores unknown fields (in-toto says consumers must); the predicate refuses them, because a
//! field this kernel does not know may be a restriction it would silently fail to apply.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::{hex, Digest};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://tuk.dev/attestations/component/v1";
/// The DSSE payloadType of an in-toto Statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The WIT world every tuk component implements.
pub const WORLD: &str = "tuk:service/service@0.1.0";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub type_: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: ComponentPredicate,
}

/// An artifact the statement is about: a file name and its digests by algorithm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub name: String,
    pub digest: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentPredicate {
    /// The component's name (a boot-pack name: `[a-z0-9-]`, 1-63 bytes); also its route.
    pub name: String,
    /// `MAJOR.MINOR.PATCH` ([`crate::version::Version`]).
    pub version: String,
    /// The engine fingerprint the code was compiled for (lowercase hex).
    pub engine: String,
    /// The WIT world the component implements ([`WORLD`]).
    pub world: String,
    pub limits: Limits,
}

/// What the kernel enforces on the component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear-memory limit, bytes.
    pub memory_bytes: u64,
    /// How long one request may run, ms.
    pub deadline_ms: u64,
}

/// The subject name of a component's `.wasm`.
pub fn wasm_subject_name(name: &str) -> String {
    let mut s = String::from(name);
    s.push_str(".wasm");
    s
}

/// The subject name of a component's compiled code.
pub fn code_subject_name(name: &str) -> String {
    let mut s = String::from(name);
    s.push_str(".cwasm");
    s
}

impl Statement {
    /// The statement `tuk sign` makes for a component.
    pub fn component(
        predicate: ComponentPredicate,
        wasm_sha256: &Digest,
        code_sha256: &Digest,
    ) -> Self {
        let subject = |name: String, digest: &Digest| Subject {
            name,
            digest: [("sha256".to_string(), hex(digest))].into_iter().collect(),
        };
        Statement {
            type_: STATEMENT_TYPE.into(),
            subject: alloc::vec![
                subject(wasm_subject_name(&predicate.name), wasm_sha256),
                subject(code_subject_name(&predicate.name), code_sha256),
            ],
            predicate_type: PREDICATE_TYPE.into(),
            predicate,
        }
    }

    /// Compact JSON (the DSSE payload).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing strings, integers and maps into memory cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a statement whose signature has already been verified. Checks the statement and
    /// predicate types before the predicate, so a foreign statement gets a clear error.
    pub fn from_json(json: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(rename = "_type")]
            type_: String,
            #[serde(rename = "predicateType")]
            predicate_type: String,
        }
        let head: Head = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        if head.type_ != STATEMENT_TYPE {
            return Err(alloc::format!(
                "_type is {:?}, expected {STATEMENT_TYPE:?}",
                head.type_
            ));
        }
        if head.predicate_type != PREDICATE_TYPE {
            return Err(alloc::format!(
                "predicateType is {:?}, expected {PREDICATE_TYPE:?}",
                head.predicate_type
            ));
        }
        serde_json::from_slice(json).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha256;

    pub(crate) fn sample() -> Statement {
        Statement::component(
            ComponentPredicate {
                name: "hello".into(),
                version: "1.0.0".into(),
                engine: "ab".repeat(32),
                world: WORLD.into(),
                limits: Limits {
                    memory_bytes: 16 << 20,
                    deadline_ms: 2000,
                },
            },
            &sha256(b"wasm"),
            &sha256(b"code"),
        )
    }

    #[test]
    fn json_shape_and_round_trip() {
        let s = sample();
        let json = String::from_utf8(s.to_json()).unwrap();
        assert!(json.starts_with(
            r#"{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"hello.wasm","digest":{"sha256":""#
        ));
        assert!(json.contains(r#""predicateType":"https://tuk.dev/attestations/component/v1","predicate":{"name":"hello","version":"1.0.0","engine":""#));
        assert!(json.ends_with(
            r#""world":"tuk:service/service@0.1.0","limits":{"memory_bytes":16777216,"deadline_ms":2000}}}"#
        ));
        assert_eq!(Statement::from_json(json.as_bytes()).unwrap(), s);
    }

    #[test]
    fn foreign_statements_and_unknown_predicate_fields_are_refused() {
        let json = String::from_utf8(sample().to_json()).unwrap();
        let err = Statement::from_json(json.replace("Statement/v1", "Statement/v0.1").as_bytes())
            .unwrap_err();
        assert!(err.contains("_type"), "{err}");
        let err = Statement::from_json(json.replace("component/v1", "component/v2").as_bytes())
            .unwrap_err();
        assert!(err.contains("predicateType"), "{err}");
        let extra = json.replace(r#""world":"#, r#""network":"any","world":"#);
        let err = Statement::from_json(extra.as_bytes()).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        // Unknown statement-level fields are ignored, as in-toto requires.
        let extra = json.replacen('{', r#"{"note":1,"#, 1);
        assert_eq!(Statement::from_json(extra.as_bytes()).unwrap(), sample());
    }
}
