//! The event log: TCG Canonical Event Log records in CEL-JSON, one JSON array for the whole
//! boot (launcher records first), and its replay into PCR values.
//!
//! ```json
//! [{"recnum":0,"pcr":4,"digests":[{"hashAlg":"sha256","digest":"<hex>"}],
//!   "content_type":"tuk.kernel","content":{...}}, ...]
//! ```
//!
//! Replaying means, for each record in order, `PCR[pcr] := SHA-256(PCR[pcr] || digest)`
//! starting from 32 zero bytes; the result must equal the PCRs the TPM quotes.
//! [`parse_log`] is the checked constructor for untrusted logs (at most [`MAX_LOG`] bytes and
//! [`MAX_RECORDS`] records); [`replay`] checks what replay relies on: `recnum` counts from 0
//! without gaps, PCR indices are below 24, and each record has exactly one well-formed sha256
//! digest (entries for other banks are ignored).

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::{hex, parse_hex32, Digest};

/// Largest event log accepted, in bytes of JSON.
pub const MAX_LOG: usize = 4 * 1024 * 1024;
/// Most records one log may hold.
pub const MAX_RECORDS: usize = 4096;
/// PCR indices are `0..PCR_COUNT`.
pub const PCR_COUNT: u32 = 24;

/// The `content_type`s tuk writes (see the PCR plan in `docs/measurement.md`).
pub mod content_type {
    pub const KERNEL: &str = "tuk.kernel";
    pub const BOOT_CONFIG: &str = "tuk.boot-config";
    pub const POLICY: &str = "tuk.policy";
    pub const COMPONENT: &str = "tuk.component";
    pub const VIOLATION: &str = "tuk.violation";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub recnum: u64,
    pub pcr: u32,
    pub digests: Vec<DigestEntry>,
    pub content_type: String,
    pub content: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestEntry {
    #[serde(rename = "hashAlg")]
    pub hash_alg: String,
    pub digest: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventLogError {
    #[error("event log is {len} bytes; at most {MAX_LOG} are accepted")]
    TooLarge { len: usize },
    #[error("event log has {0} records; at most {MAX_RECORDS} are accepted")]
    TooManyRecords(usize),
    #[error("event log is not CEL-JSON ({0})")]
    Json(String),
    #[error("event log record {index} has recnum {recnum}; expected {index} (records missing, reordered or duplicated)")]
    BadRecnum { index: usize, recnum: u64 },
    #[error("event log record {recnum} names PCR {pcr}; PCRs are 0-23")]
    BadPcr { recnum: u64, pcr: u32 },
    #[error("event log record {recnum} has no sha256 digest")]
    MissingSha256 { recnum: u64 },
    #[error("event log record {recnum} has more than one sha256 digest")]
    DuplicateSha256 { recnum: u64 },
    #[error("event log record {recnum}: sha256 digest is not 64 lowercase hex digits")]
    BadDigest { recnum: u64 },
}

impl Record {
    /// A record with one sha256 digest.
    pub fn new(
        recnum: u64,
        pcr: u32,
        digest: &Digest,
        content_type: &str,
        content: serde_json::Value,
    ) -> Self {
        Record {
            recnum,
            pcr,
            digests: alloc::vec![DigestEntry {
                hash_alg: "sha256".into(),
                digest: hex(digest),
            }],
            content_type: content_type.into(),
            content,
        }
    }

    /// The record's sha256 digest, checked.
    pub fn sha256(&self) -> Result<Digest, EventLogError> {
        let recnum = self.recnum;
        let mut found = None;
        for entry in self.digests.iter().filter(|e| e.hash_alg == "sha256") {
            if found.is_some() {
                return Err(EventLogError::DuplicateSha256 { recnum });
            }
            found = Some(parse_hex32(&entry.digest).ok_or(EventLogError::BadDigest { recnum })?);
        }
        found.ok_or(EventLogError::MissingSha256 { recnum })
    }
}

/// `SHA-256(pcr || digest)`: one PCR extension.
pub fn extend(pcr: &Digest, digest: &Digest) -> Digest {
    let mut h = sha2::Sha256::new();
    h.update(pcr);
    h.update(digest);
    h.finalize().into()
}

/// Replays `records` from all-zero PCRs; returns the value of every PCR the log extends.
pub fn replay(records: &[Record]) -> Result<BTreeMap<u32, Digest>, EventLogError> {
    let mut pcrs = BTreeMap::new();
    for (index, record) in records.iter().enumerate() {
        if record.recnum != index as u64 {
            return Err(EventLogError::BadRecnum {
                index,
                recnum: record.recnum,
            });
        }
        if record.pcr >= PCR_COUNT {
            return Err(EventLogError::BadPcr {
                recnum: record.recnum,
                pcr: record.pcr,
            });
        }
        let digest = record.sha256()?;
        let pcr = pcrs.entry(record.pcr).or_insert([0u8; 32]);
        *pcr = extend(pcr, &digest);
    }
    Ok(pcrs)
}

/// Parses a CEL-JSON log (bounded; see the module docs). Replay checks the records.
pub fn parse_log(json: &[u8]) -> Result<Vec<Record>, EventLogError> {
    if json.len() > MAX_LOG {
        return Err(EventLogError::TooLarge { len: json.len() });
    }
    let records: Vec<Record> =
        serde_json::from_slice(json).map_err(|e| EventLogError::Json(e.to_string()))?;
    if records.len() > MAX_RECORDS {
        return Err(EventLogError::TooManyRecords(records.len()));
    }
    Ok(records)
}

/// Compact CEL-JSON for `records`.
pub fn to_json(records: &[Record]) -> Vec<u8> {
    serde_json::to_vec(records).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha256;
    use crate::testutil::Rng;
    use serde_json::json;

    fn log() -> Vec<Record> {
        alloc::vec![
            Record::new(
                0,
                4,
                &sha256(b"kernel"),
                content_type::KERNEL,
                json!({"bytes": 6})
            ),
            Record::new(1, 5, &sha256(b"boot"), content_type::BOOT_CONFIG, json!({})),
            Record::new(
                2,
                9,
                &sha256(b"code1"),
                content_type::COMPONENT,
                json!({"name": "a"})
            ),
            Record::new(
                3,
                9,
                &sha256(b"code2"),
                content_type::COMPONENT,
                json!({"name": "b"})
            ),
        ]
    }

    #[test]
    fn replay_gives_the_extended_pcrs() {
        let pcrs = replay(&log()).unwrap();
        assert_eq!(pcrs.keys().copied().collect::<Vec<_>>(), [4, 5, 9]);
        assert_eq!(pcrs[&4], sha256(&[[0u8; 32], sha256(b"kernel")].concat()));
        let nine = extend(&extend(&[0; 32], &sha256(b"code1")), &sha256(b"code2"));
        assert_eq!(pcrs[&9], nine);
        // A value computed independently (Python's hashlib): SHA-256(32 zero bytes || SHA-256("")).
        assert_eq!(
            hex(&extend(&[0; 32], &sha256(b""))),
            "1c9ecec90e28d2461650418635878a5c91e49f47586ecf75f2b0cbb94e897112"
        );
    }

    #[test]
    fn json_round_trip_and_shape() {
        let json = to_json(&log());
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(
            text.starts_with(r#"[{"recnum":0,"pcr":4,"digests":[{"hashAlg":"sha256","digest":""#)
        );
        assert!(text.contains(r#""content_type":"tuk.kernel","content":{"bytes":6}}"#));
        assert_eq!(parse_log(&json).unwrap(), log());
    }

    #[test]
    fn replay_refuses_broken_logs() {
        let mut l = log();
        l.swap(1, 2);
        assert_eq!(
            replay(&l),
            Err(EventLogError::BadRecnum {
                index: 1,
                recnum: 2
            })
        );
        let mut l = log();
        l.remove(0);
        assert!(matches!(replay(&l), Err(EventLogError::BadRecnum { .. })));
        let mut l = log();
        l[1].pcr = 24;
        assert_eq!(
            replay(&l),
            Err(EventLogError::BadPcr { recnum: 1, pcr: 24 })
        );
        let mut l = log();
        l[2].digests[0].hash_alg = "sha1".into();
        assert_eq!(replay(&l), Err(EventLogError::MissingSha256 { recnum: 2 }));
        let mut l = log();
        let dup = l[2].digests[0].clone();
        l[2].digests.push(dup);
        assert_eq!(
            replay(&l),
            Err(EventLogError::DuplicateSha256 { recnum: 2 })
        );
        let mut l = log();
        l[3].digests[0].digest = l[3].digests[0].digest.to_uppercase();
        assert_eq!(replay(&l), Err(EventLogError::BadDigest { recnum: 3 }));
        // Other banks' entries are ignored.
        let mut l = log();
        l[0].digests.push(DigestEntry {
            hash_alg: "sha384".into(),
            digest: "00".into(),
        });
        assert_eq!(replay(&l), replay(&log()));
        assert_eq!(replay(&[]).unwrap(), BTreeMap::new());
    }

    #[test]
    fn parse_log_bounds() {
        assert!(matches!(parse_log(b"{}"), Err(EventLogError::Json(_))));
        let big = alloc::vec![b' '; MAX_LOG + 1];
        assert_eq!(
            parse_log(&big),
            Err(EventLogError::TooLarge { len: MAX_LOG + 1 })
        );
        let one = String::from_utf8(to_json(&log()[..1])).unwrap();
        let many = alloc::format!(
            "[{}]",
            alloc::vec![&one[1..one.len() - 1]; MAX_RECORDS + 1].join(",")
        );
        assert_eq!(
            parse_log(many.as_bytes()),
            Err(EventLogError::TooManyRecords(MAX_RECORDS + 1))
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let base = to_json(&log());
        let mut rng = Rng(0xda94_2042_e4dd_58b5);
        for _ in 0..20_000 {
            let bytes = rng.mutate(&base);
            if let Ok(records) = parse_log(&bytes) {
                let _ = replay(&records);
            }
        }
    }
}
