//! The signed bundle: one file carrying a component, its compiled code and the DSSE envelope
//! that signs both (see `docs/measurement.md`).
//!
//! ```text
//! bundle  = magic "TUKBNDL1"
//!         | wasm_len: u64 LE     | wasm      (the component, .wasm)
//!         | code_len: u64 LE     | code      (its compiled code, .cwasm)
//!         | envelope_len: u64 LE | envelope  (DSSE envelope, JSON)
//! ```
//!
//! [`Bundle::parse`] is the checked constructor: it refuses inputs over [`MAX_BUNDLE`] before
//! reading them, validates every length against the remaining input before slicing (a length
//! is never used to allocate), and refuses bad magic, truncation and trailing bytes. It does
//! not judge the contents: that is [`crate::verify_bundle`]'s job.

use alloc::vec::Vec;

/// The bundle's first eight bytes.
pub const MAGIC: &[u8; 8] = b"TUKBNDL1";
/// Largest bundle accepted (component + code + envelope, with framing).
pub const MAX_BUNDLE: usize = 64 * 1024 * 1024;

/// A parsed bundle, borrowing the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bundle<'a> {
    pub wasm: &'a [u8],
    pub code: &'a [u8],
    pub envelope: &'a [u8],
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is {len} bytes; at most {MAX_BUNDLE} are accepted")]
    TooLarge { len: usize },
    #[error("not a tuk bundle (bad magic; expected \"TUKBNDL1\"): make one with `tuk sign`")]
    BadMagic,
    #[error("bundle truncated in its {section} section: {needed} more bytes needed at offset {at}; copy the whole file again")]
    Truncated {
        section: &'static str,
        needed: u64,
        at: usize,
    },
    #[error("bundle has {0} unexpected trailing bytes after the envelope")]
    TrailingBytes(usize),
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, section: &'static str) -> Result<&'a [u8], BundleError> {
        let rest = self.bytes.len().saturating_sub(self.at);
        match usize::try_from(n) {
            Ok(n) if n <= rest => {
                let (out, _) = self.bytes[self.at..].split_at(n);
                self.at += n;
                Ok(out)
            }
            _ => Err(BundleError::Truncated {
                section,
                needed: n.saturating_sub(rest as u64),
                at: self.at,
            }),
        }
    }

    fn section(&mut self, section: &'static str) -> Result<&'a [u8], BundleError> {
        let len = self.take(8, section)?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(len);
        self.take(u64::from_le_bytes(raw), section)
    }
}

impl<'a> Bundle<'a> {
    /// Parses a bundle (see the module docs for what is checked).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE {
            return Err(BundleError::TooLarge { len: bytes.len() });
        }
        let mut r = Reader { bytes, at: 0 };
        if r.take(8, "magic").map_err(|_| BundleError::BadMagic)? != MAGIC {
            return Err(BundleError::BadMagic);
        }
        let wasm = r.section("wasm")?;
        let code = r.section("code")?;
        let envelope = r.section("envelope")?;
        match bytes.len() - r.at {
            0 => Ok(Bundle {
                wasm,
                code,
                envelope,
            }),
            n => Err(BundleError::TrailingBytes(n)),
        }
    }
}

/// Encodes a bundle. It parses back as long as the total stays within [`MAX_BUNDLE`].
pub fn encode(wasm: &[u8], code: &[u8], envelope: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 24 + wasm.len() + code.len() + envelope.len());
    out.extend_from_slice(MAGIC);
    for section in [wasm, code, envelope] {
        out.extend_from_slice(&(section.len() as u64).to_le_bytes());
        out.extend_from_slice(section);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    #[test]
    fn round_trip() {
        let bytes = encode(b"wasm!", b"", b"{}");
        let b = Bundle::parse(&bytes).unwrap();
        assert_eq!(b.wasm, b"wasm!");
        assert_eq!(b.code, b"");
        assert_eq!(b.envelope, b"{}");
        assert_eq!(bytes.len(), 8 + 24 + 5 + 2);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(b"abc", b"defg", b"{}");
        for n in 0..bytes.len() {
            let err = Bundle::parse(&bytes[..n]).unwrap_err();
            if n < 8 {
                assert_eq!(err, BundleError::BadMagic);
            } else {
                assert!(matches!(err, BundleError::Truncated { .. }), "{n}: {err}");
            }
        }
    }

    #[test]
    fn rejects_bad_input() {
        let mut bytes = encode(b"a", b"b", b"c");
        bytes.push(0);
        assert_eq!(Bundle::parse(&bytes), Err(BundleError::TrailingBytes(1)));
        assert_eq!(Bundle::parse(b"TUKPACK1"), Err(BundleError::BadMagic));
        // A length claiming more than the input is a truncation, not an allocation or overflow.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            Bundle::parse(&huge),
            Err(BundleError::Truncated {
                section: "wasm",
                needed: u64::MAX,
                at: 16
            })
        );
        let mut after = encode(b"a", b"", b"");
        after.truncate(8 + 9);
        after.extend_from_slice(&(u64::MAX - 3).to_le_bytes());
        assert!(matches!(
            Bundle::parse(&after),
            Err(BundleError::Truncated {
                section: "code",
                ..
            })
        ));
        let big = alloc::vec![0u8; MAX_BUNDLE + 1];
        assert_eq!(
            Bundle::parse(&big),
            Err(BundleError::TooLarge {
                len: MAX_BUNDLE + 1
            })
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let base = encode(b"\0asm component", b"compiled code", br#"{"payload":""}"#);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..50_000 {
            let bytes = rng.mutate(&base);
            if let Ok(b) = Bundle::parse(&bytes) {
                assert_eq!(encode(b.wasm, b.code, b.envelope), bytes);
            }
        }
    }
}
