//! Measurement formats shared by the host-kernel and the host tools (`tuk sign`, `tuk verify`,
//! the verifier). The contract is `docs/measurement.md`; this crate is its one implementation.
//!
//! - [`bundle`]: the signed bundle file (`TUKBNDL1`): component, compiled code, DSSE envelope;
//! - [`dsse`]: the DSSE envelope and its pre-authentication encoding (PAE);
//! - [`statement`]: the in-toto Statement v1 and tuk's component predicate;
//! - [`policy`]: the trust policy (keys, allowed names, minimum versions) and its canonical
//!   bytes (what PCR 8 measures);
//! - [`version`]: `MAJOR.MINOR.PATCH` versions for rollback protection;
//! - [`eventlog`]: the CEL-JSON event log and its replay into PCR values;
//! - [`verify_bundle`]: everything a bundle must satisfy before its code is deserialized.
//!
//! Every parser of untrusted bytes ([`bundle::Bundle::parse`], [`dsse::Envelope::from_json`],
//! [`policy::TrustPolicy::from_json`], [`eventlog::parse_log`]) bounds its input size before
//! looking at it, never panics, and returns a typed error whose message says what to do.
//! Verification authenticates the envelope's payload (ed25519 over PAE) *before* the payload
//! is parsed, so unsigned bytes only ever reach the JSON parser of the envelope itself.
//!
//! `no_std` + `alloc`, so the kernel links it (see `docs/measurement.md` for the one rustflag
//! the kernel needs). Feature `sign` (host only: it needs the OS's entropy) adds key
//! generation, PKCS#8 key files and signing ([`sign`]).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use sha2::Digest as _;

pub mod bundle;
pub mod dsse;
pub mod eventlog;
pub mod kernel_ref;
pub mod policy;
#[cfg(feature = "sign")]
pub mod sign;
pub mod statement;
pub mod version;

mod verify;

pub use verify::{trusted_signer_among, verify_bundle, Verified, VerifyError};

/// Whether `name` is a valid component name (the boot pack's rule: `[a-z0-9-]`, 1-63 bytes,
/// not starting with `-`); statements and policies use the same rule.
pub use tuk_bootpack::valid_name;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Digest {
    sha2::Sha256::digest(bytes).into()
}

/// Lowercase hex of `d`.
pub fn hex(d: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(d.len() * 2);
    for b in d {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Parses exactly 64 lowercase hex digits (the only form tuk writes, so that every digest and
/// key has one spelling and compares as a string).
pub fn parse_hex32(s: &str) -> Option<Digest> {
    let bytes = parse_hex(s)?;
    bytes.try_into().ok()
}

/// Parses lowercase hex of any even length.
pub(crate) fn parse_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if s.len() % 2 != 0 {
        return None;
    }
    s.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// The keyid of an ed25519 public key: lowercase hex SHA-256 of its 32 raw bytes.
pub fn keyid(public_key: &[u8; 32]) -> String {
    hex(&sha256(public_key))
}

#[cfg(test)]
pub(crate) mod testutil {
    /// A deterministic xorshift generator for the randomized no-panic tests.
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
        /// `base` with a few random bytes changed, inserted or removed, then cut.
        pub fn mutate(&mut self, base: &[u8]) -> alloc::vec::Vec<u8> {
            let mut bytes = base.to_vec();
            for _ in 0..1 + self.below(4) {
                let r = self.next();
                let i = self.below(bytes.len() + 1);
                match r % 3 {
                    0 if i < bytes.len() => bytes[i] = (r >> 8) as u8,
                    1 => bytes.insert(i, (r >> 16) as u8),
                    _ if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ => {}
                }
            }
            let cut = self.below(bytes.len() + 1);
            if self.next() % 4 == 0 {
                bytes.truncate(cut);
            }
            bytes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_and_hex() {
        // FIPS 180-2 test vector.
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&[0x00, 0x0f, 0xf0, 0xff]), "000ff0ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn parse_hex32_round_trips_and_refuses_other_spellings() {
        let d = sha256(b"abc");
        assert_eq!(parse_hex32(&hex(&d)), Some(d));
        assert_eq!(parse_hex32(&hex(&d).to_uppercase()), None);
        assert_eq!(parse_hex32(&hex(&d)[..62]), None);
        assert_eq!(parse_hex32(&(hex(&d) + "00")), None);
        assert_eq!(parse_hex32(&hex(&d)[1..]), None);
        assert_eq!(parse_hex32(""), None);
        assert_eq!(parse_hex32(&"g".repeat(64)), None);
        // Multi-byte characters must not split or panic.
        assert_eq!(parse_hex32(&"é".repeat(32)), None);
    }
}
