//! The signed bundle file (`TUKBNDL1`, docs/measurement.md): magic, then the component `.wasm`,
//! its compiled code and the DSSE envelope, each as a u64 LE length and the bytes.
//!
//! TODO(measure): this is a local copy so the registry did not wait for `tuk-measure`; switch
//! to `tuk_measure::bundle::{encode, Bundle::parse}` (same format) and delete this file.

use thiserror::Error;

pub const MAGIC: &[u8; 8] = b"TUKBNDL1";
/// The largest bundle tuk reads, writes, pushes or pulls.
pub const MAX_BUNDLE: u64 = 64 * 1024 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("not a tuk bundle (the file does not start with TUKBNDL1); make one with `tuk sign`")]
    BadMagic,
    #[error("the bundle is truncated in its {0} section")]
    Truncated(&'static str),
    #[error("the bundle has {0} bytes after its last section")]
    TrailingBytes(usize),
    #[error("the bundle is larger than {MAX_BUNDLE} bytes")]
    TooLarge,
}

/// The three sections of a bundle, borrowed from its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sections<'a> {
    pub wasm: &'a [u8],
    pub code: &'a [u8],
    pub envelope: &'a [u8],
}

/// Encodes a bundle.
pub fn encode(wasm: &[u8], code: &[u8], envelope: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 24 + wasm.len() + code.len() + envelope.len());
    out.extend_from_slice(MAGIC);
    for section in [wasm, code, envelope] {
        out.extend_from_slice(&(section.len() as u64).to_le_bytes());
        out.extend_from_slice(section);
    }
    out
}

/// Splits a bundle into its sections; rejects anything but exactly magic + three sections.
pub fn decode(bytes: &[u8]) -> Result<Sections<'_>, BundleError> {
    if bytes.len() as u64 > MAX_BUNDLE {
        return Err(BundleError::TooLarge);
    }
    let mut rest = bytes.strip_prefix(MAGIC).ok_or(BundleError::BadMagic)?;
    let mut next = |name: &'static str| -> Result<&[u8], BundleError> {
        let (len, after) = rest
            .split_first_chunk::<8>()
            .ok_or(BundleError::Truncated(name))?;
        let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| BundleError::TooLarge)?;
        if len > after.len() {
            return Err(BundleError::Truncated(name));
        }
        let (section, after) = after.split_at(len);
        rest = after;
        Ok(section)
    };
    let wasm = next("wasm")?;
    let code = next("compiled code")?;
    let envelope = next("envelope")?;
    if !rest.is_empty() {
        return Err(BundleError::TrailingBytes(rest.len()));
    }
    Ok(Sections {
        wasm,
        code,
        envelope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let b = encode(b"\0asm", b"code", b"{}");
        assert_eq!(
            decode(&b).unwrap(),
            Sections {
                wasm: b"\0asm",
                code: b"code",
                envelope: b"{}"
            }
        );
        assert_eq!(decode(b"TUKBNDL0"), Err(BundleError::BadMagic));
        assert_eq!(
            decode(&b[..b.len() - 1]),
            Err(BundleError::Truncated("envelope"))
        );
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(BundleError::TrailingBytes(1)));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
        // Every truncation is an error, never a panic.
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err());
        }
    }
}
