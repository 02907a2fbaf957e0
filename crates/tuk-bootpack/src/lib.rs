//! The boot pack: the one blob the launcher hands the host-kernel at boot (as the PVH module,
//! QEMU's `-initrd`), carrying the components to serve.
//!
//! ```text
//! pack   = magic "TUKPACK1" | count: u32 LE | entry * count
//! entry  = name_len: u16 LE | name (UTF-8, [a-z0-9-], 1..=63 bytes, or a reserved name)
//!        | meta_len: u32 LE | meta (UTF-8 lines `key=value\n`)
//!        | data_len: u64 LE | data (the component's compiled code, `tuk compile` output)
//! ```
//!
//! Besides components, a pack carries at most one of each *reserved* entry ([`RESERVED`]):
//! `_eventlog` (the launcher's CEL-JSON event-log records, docs/measurement.md) and `_policy`
//! (the trust policy). Their names start with `_`, so they can never collide with a component
//! (nor be routed to); [`PackBuilder::add_reserved`] writes them and [`Pack::reserved`] reads
//! them. [`Pack::entries`] holds components only, so code that deploys every entry never sees
//! a reserved one. [`Pack::components_encoding`] is the pack without its reserved entries:
//! what the launcher's PCR 5 boot-configuration document digests (`boot_pack_sha256`).
//!
//! [`Pack::parse`] is the checked constructor for untrusted bytes: it validates every length
//! against the remaining input before slicing, bounds the entry count, checks names and
//! metadata, and rejects trailing bytes and duplicate names. After it succeeds, accessors never
//! panic. Nothing here trusts the pack: the kernel measures and (with signing) verifies each
//! entry before instantiating it.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub const MAGIC: &[u8; 8] = b"TUKPACK1";
/// Upper bound on components in one pack.
pub const MAX_ENTRIES: usize = 64;
/// Upper bound on one entry's metadata.
pub const MAX_META: usize = 16 * 1024;
pub const MAX_NAME: usize = 63;
/// The launcher's event-log records (a CEL-JSON array), read by the kernel at boot.
pub const EVENTLOG: &str = "_eventlog";
/// The trust policy (canonical JSON), measured by the kernel into PCR 8.
pub const POLICY: &str = "_policy";
/// Names a pack may carry besides components, each at most once.
pub const RESERVED: [&str; 2] = [EVENTLOG, POLICY];

/// True if `name` is one of the [`RESERVED`] entry names.
pub fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name)
}

/// One component in a pack, borrowing the pack's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub name: &'a str,
    /// `key=value` pairs in the order given.
    pub meta: Vec<(&'a str, &'a str)>,
    pub data: &'a [u8],
}

impl<'a> Entry<'a> {
    /// The first value for `key`.
    pub fn meta(&self, key: &str) -> Option<&'a str> {
        self.meta.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pack<'a> {
    /// The components, in pack order (never a reserved entry).
    pub entries: Vec<Entry<'a>>,
    /// The reserved entries ([`RESERVED`]), in pack order; look them up with [`Pack::reserved`].
    pub reserved_entries: Vec<Entry<'a>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PackError {
    BadMagic,
    Truncated { needed: u64, at: usize },
    TooManyEntries(u32),
    BadName(String),
    DuplicateName(String),
    BadMeta { entry: String, reason: &'static str },
    TrailingBytes(usize),
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => write!(f, "not a tuk boot pack (bad magic): build it with `tuk run --component`"),
            Self::Truncated { needed, at } => {
                write!(f, "boot pack truncated: {needed} more bytes needed at offset {at}")
            }
            Self::TooManyEntries(n) => write!(f, "boot pack lists {n} components; at most {MAX_ENTRIES}"),
            Self::BadName(n) => write!(
                f,
                "invalid component name {n:?}: use 1-{MAX_NAME} characters from [a-z0-9-], not starting with '-' or '_'"
            ),
            Self::DuplicateName(n) => write!(f, "component name {n:?} appears twice in the boot pack"),
            Self::BadMeta { entry, reason } => write!(f, "component {entry:?}: invalid metadata: {reason}"),
            Self::TrailingBytes(n) => write!(f, "boot pack has {n} unexpected trailing bytes"),
        }
    }
}

impl core::error::Error for PackError {}

/// True if `name` is a valid component name (also the first path segment it is routed by).
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], PackError> {
        let rest = (self.bytes.len() - self.at) as u64;
        if n > rest {
            return Err(PackError::Truncated {
                needed: n - rest,
                at: self.at,
            });
        }
        let n = n as usize;
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], PackError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }
}

fn parse_meta<'a>(entry: &str, bytes: &'a [u8]) -> Result<Vec<(&'a str, &'a str)>, PackError> {
    let bad = |reason| PackError::BadMeta {
        entry: entry.into(),
        reason,
    };
    let text = core::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (k, v) = line.split_once('=').ok_or(bad("a line without '='"))?;
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic() && b != b'=') {
                return Err(bad("a key that is empty or not printable ASCII"));
            }
            Ok((k, v))
        })
        .collect()
}

impl<'a> Pack<'a> {
    /// Parses and validates a pack (see the module docs for what is checked).
    pub fn parse(bytes: &'a [u8]) -> Result<Pack<'a>, PackError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(8).map_err(|_| PackError::BadMagic)? != MAGIC {
            return Err(PackError::BadMagic);
        }
        let count = u32::from_le_bytes(r.array()?);
        if count as usize > MAX_ENTRIES + RESERVED.len() {
            return Err(PackError::TooManyEntries(count));
        }
        let mut entries: Vec<Entry<'a>> = Vec::with_capacity(count as usize);
        let mut reserved_entries: Vec<Entry<'a>> = Vec::new();
        for _ in 0..count {
            let name_len = u16::from_le_bytes(r.array()?);
            let name_bytes = r.take(u64::from(name_len))?;
            let name = core::str::from_utf8(name_bytes)
                .ok()
                .filter(|n| valid_name(n) || is_reserved(n))
                .ok_or_else(|| PackError::BadName(String::from_utf8_lossy(name_bytes).into()))?;
            if entries
                .iter()
                .chain(&reserved_entries)
                .any(|e| e.name == name)
            {
                return Err(PackError::DuplicateName(name.into()));
            }
            if !is_reserved(name) && entries.len() == MAX_ENTRIES {
                return Err(PackError::TooManyEntries(count));
            }
            let meta_len = u32::from_le_bytes(r.array()?);
            if meta_len as usize > MAX_META {
                return Err(PackError::BadMeta {
                    entry: name.into(),
                    reason: "longer than 16 KiB",
                });
            }
            let meta = parse_meta(name, r.take(u64::from(meta_len))?)?;
            let data_len = u64::from_le_bytes(r.array()?);
            let data = r.take(data_len)?;
            let list = if is_reserved(name) {
                &mut reserved_entries
            } else {
                &mut entries
            };
            list.push(Entry { name, meta, data });
        }
        match bytes.len() - r.at {
            0 => Ok(Pack {
                entries,
                reserved_entries,
            }),
            n => Err(PackError::TrailingBytes(n)),
        }
    }

    /// The reserved entry `name` ([`EVENTLOG`], [`POLICY`]), if the pack carries it.
    pub fn reserved(&self, name: &str) -> Option<&Entry<'a>> {
        self.reserved_entries.iter().find(|e| e.name == name)
    }

    /// The canonical encoding of this pack's components alone (reserved entries left out), as
    /// [`PackBuilder`] writes it. For a pack built without reserved entries this is exactly its
    /// bytes. The launcher's boot-configuration document (PCR 5) carries its SHA-256.
    pub fn components_encoding(&self) -> Vec<u8> {
        let mut b = PackBuilder::new();
        for e in &self.entries {
            b.push(e.name, &e.meta, e.data);
        }
        b.finish()
    }

    /// A builder holding every entry of this pack (components and reserved, in that order),
    /// to add more to.
    pub fn to_builder(&self) -> PackBuilder {
        let mut b = PackBuilder::new();
        for e in self.entries.iter().chain(&self.reserved_entries) {
            b.push(e.name, &e.meta, e.data);
        }
        b
    }
}

/// Builds a pack. Names and metadata are validated; the result always parses.
#[derive(Default)]
pub struct PackBuilder {
    out: Vec<u8>,
    names: Vec<String>,
    components: usize,
}

impl PackBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a component.
    pub fn add(
        &mut self,
        name: &str,
        meta: &[(&str, &str)],
        data: &[u8],
    ) -> Result<&mut Self, PackError> {
        if !valid_name(name) {
            return Err(PackError::BadName(name.into()));
        }
        if self.components == MAX_ENTRIES {
            return Err(PackError::TooManyEntries(MAX_ENTRIES as u32 + 1));
        }
        self.checked_push(name, meta, data)?;
        self.components += 1;
        Ok(self)
    }

    /// Adds a reserved entry ([`EVENTLOG`] or [`POLICY`]); any other name is refused.
    pub fn add_reserved(
        &mut self,
        name: &str,
        meta: &[(&str, &str)],
        data: &[u8],
    ) -> Result<&mut Self, PackError> {
        if !is_reserved(name) {
            return Err(PackError::BadName(name.into()));
        }
        self.checked_push(name, meta, data)?;
        Ok(self)
    }

    /// Appends an entry that came out of [`Pack::parse`] (already validated).
    fn push(&mut self, name: &str, meta: &[(&str, &str)], data: &[u8]) {
        let pushed = self.checked_push(name, meta, data);
        debug_assert!(pushed.is_ok(), "a parsed entry failed to re-encode");
        if !is_reserved(name) {
            self.components += 1;
        }
    }

    fn checked_push(
        &mut self,
        name: &str,
        meta: &[(&str, &str)],
        data: &[u8],
    ) -> Result<(), PackError> {
        if self.names.iter().any(|n| n == name) {
            return Err(PackError::DuplicateName(name.into()));
        }
        let mut meta_text = String::new();
        for (k, v) in meta {
            if k.is_empty()
                || !k.bytes().all(|b| b.is_ascii_graphic() && b != b'=')
                || v.contains('\n')
                || v.contains('\r')
            {
                return Err(PackError::BadMeta {
                    entry: name.into(),
                    reason: "keys are printable ASCII without '='; values are one line",
                });
            }
            meta_text.push_str(k);
            meta_text.push('=');
            meta_text.push_str(v);
            meta_text.push('\n');
        }
        if meta_text.len() > MAX_META {
            return Err(PackError::BadMeta {
                entry: name.into(),
                reason: "longer than 16 KiB",
            });
        }
        self.out
            .extend_from_slice(&(name.len() as u16).to_le_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out
            .extend_from_slice(&(meta_text.len() as u32).to_le_bytes());
        self.out.extend_from_slice(meta_text.as_bytes());
        self.out
            .extend_from_slice(&(data.len() as u64).to_le_bytes());
        self.out.extend_from_slice(data);
        self.names.push(name.into());
        Ok(())
    }

    pub fn finish(&self) -> Vec<u8> {
        let mut pack = Vec::with_capacity(12 + self.out.len());
        pack.extend_from_slice(MAGIC);
        pack.extend_from_slice(&(self.names.len() as u32).to_le_bytes());
        pack.extend_from_slice(&self.out);
        pack
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = PackBuilder::new();
        b.add(
            "hello",
            &[
                ("memory_limit_bytes", "1048576"),
                ("config.greeting", "hi = there"),
            ],
            b"code1",
        )
        .unwrap();
        b.add("kv", &[], b"").unwrap();
        b.finish()
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let pack = Pack::parse(&bytes).unwrap();
        assert_eq!(pack.entries.len(), 2);
        assert_eq!(pack.entries[0].name, "hello");
        assert_eq!(pack.entries[0].meta("config.greeting"), Some("hi = there"));
        assert_eq!(pack.entries[0].data, b"code1");
        assert_eq!(pack.entries[1].name, "kv");
        assert!(pack.entries[1].meta.is_empty());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for n in 0..bytes.len() {
            assert!(
                Pack::parse(&bytes[..n]).is_err(),
                "prefix of {n} bytes parsed"
            );
        }
    }

    #[test]
    fn rejects_bad_input() {
        let mut bytes = sample();
        bytes.push(0);
        assert_eq!(Pack::parse(&bytes), Err(PackError::TrailingBytes(1)));
        assert_eq!(Pack::parse(b"NOTAPACK\0\0\0\0"), Err(PackError::BadMagic));
        let mut many = MAGIC.to_vec();
        many.extend_from_slice(&1000u32.to_le_bytes());
        assert_eq!(Pack::parse(&many), Err(PackError::TooManyEntries(1000)));
        // A length field claiming more than the input is a truncation, not a huge allocation.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&1u32.to_le_bytes());
        huge.extend_from_slice(&1u16.to_le_bytes());
        huge.push(b'a');
        huge.extend_from_slice(&0u32.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Pack::parse(&huge),
            Err(PackError::Truncated { .. })
        ));
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "Hello", "a/b", "-x", "_tuk", &"a".repeat(64)] {
            assert!(
                PackBuilder::new().add(bad, &[], b"").is_err(),
                "{bad:?} accepted"
            );
        }
        let mut b = PackBuilder::new();
        b.add("a", &[], b"").unwrap();
        assert_eq!(
            b.add("a", &[], b"").err(),
            Some(PackError::DuplicateName("a".into()))
        );
        assert!(PackBuilder::new()
            .add("a", &[("k", "v\nx=y")], b"")
            .is_err());
    }

    #[test]
    fn reserved_entries() {
        let components = sample();
        let mut b = Pack::parse(&components).unwrap().to_builder();
        b.add_reserved(EVENTLOG, &[("format", "cel-json")], b"[]")
            .unwrap();
        b.add_reserved(POLICY, &[], b"{}").unwrap();
        let bytes = b.finish();
        let pack = Pack::parse(&bytes).unwrap();
        // Components only in `entries`: a deploy loop never sees a reserved entry.
        let names: Vec<_> = pack.entries.iter().map(|e| e.name).collect();
        assert_eq!(names, ["hello", "kv"]);
        assert_eq!(pack.reserved(EVENTLOG).unwrap().data, b"[]");
        assert_eq!(
            pack.reserved(EVENTLOG).unwrap().meta("format"),
            Some("cel-json")
        );
        assert_eq!(pack.reserved(POLICY).unwrap().data, b"{}");
        assert!(pack.reserved("_other").is_none());
        // Without its reserved entries the pack is byte for byte the components' pack.
        assert_eq!(pack.components_encoding(), components);
        assert_eq!(
            Pack::parse(&components).unwrap().components_encoding(),
            components
        );
        // Checked parsing still holds with reserved entries in.
        for n in 0..bytes.len() {
            assert!(
                Pack::parse(&bytes[..n]).is_err(),
                "prefix of {n} bytes parsed"
            );
        }
    }

    #[test]
    fn reserved_names_are_checked() {
        // Not through `add`, and only the listed names through `add_reserved`.
        assert!(PackBuilder::new().add(EVENTLOG, &[], b"").is_err());
        for bad in ["_tuk", "_", "hello", "_EVENTLOG"] {
            assert!(
                PackBuilder::new().add_reserved(bad, &[], b"").is_err(),
                "{bad:?} accepted"
            );
        }
        let mut b = PackBuilder::new();
        b.add_reserved(POLICY, &[], b"").unwrap();
        assert_eq!(
            b.add_reserved(POLICY, &[], b"").err(),
            Some(PackError::DuplicateName(POLICY.into()))
        );
        // A hand-made pack with an unknown `_` name or a reserved name twice is refused.
        let mut raw = MAGIC.to_vec();
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(&4u16.to_le_bytes());
        raw.extend_from_slice(b"_tuk");
        raw.extend_from_slice(&0u32.to_le_bytes());
        raw.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(Pack::parse(&raw), Err(PackError::BadName("_tuk".into())));
        let mut twice = MAGIC.to_vec();
        twice.extend_from_slice(&2u32.to_le_bytes());
        for _ in 0..2 {
            twice.extend_from_slice(&7u16.to_le_bytes());
            twice.extend_from_slice(b"_policy");
            twice.extend_from_slice(&0u32.to_le_bytes());
            twice.extend_from_slice(&0u64.to_le_bytes());
        }
        assert_eq!(
            Pack::parse(&twice),
            Err(PackError::DuplicateName(POLICY.into()))
        );
    }

    #[test]
    fn reserved_entries_do_not_count_against_components() {
        let mut b = PackBuilder::new();
        for i in 0..MAX_ENTRIES {
            b.add(&format!("c{i}"), &[], b"").unwrap();
        }
        assert!(b.add("one-more", &[], b"").is_err());
        b.add_reserved(EVENTLOG, &[], b"").unwrap();
        b.add_reserved(POLICY, &[], b"").unwrap();
        let bytes = b.finish();
        let pack = Pack::parse(&bytes).unwrap();
        assert_eq!(pack.entries.len(), MAX_ENTRIES);
        assert_eq!(pack.reserved_entries.len(), 2);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let base = sample();
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = base.clone();
            let i = (state as usize) % bytes.len();
            bytes[i] = (state >> 32) as u8;
            let cut = (state >> 40) as usize % (bytes.len() + 1);
            let _ = Pack::parse(&bytes[..cut]);
        }
    }
}
