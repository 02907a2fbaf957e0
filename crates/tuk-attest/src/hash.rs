//! The TPM hash algorithms tuk meets (names, KDFs, HMACs).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// A TPM_ALG_ID hash algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlg {
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    /// From a TPM_ALG_ID (0x000b, 0x000c, 0x000d).
    pub fn from_alg_id(id: u16) -> Option<HashAlg> {
        match id {
            0x000b => Some(HashAlg::Sha256),
            0x000c => Some(HashAlg::Sha384),
            0x000d => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    pub fn alg_id(self) -> u16 {
        match self {
            HashAlg::Sha256 => 0x000b,
            HashAlg::Sha384 => 0x000c,
            HashAlg::Sha512 => 0x000d,
        }
    }

    pub fn size(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The digest of the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            HashAlg::Sha256 => run::<Sha256>(parts),
            HashAlg::Sha384 => run::<Sha384>(parts),
            HashAlg::Sha512 => run::<Sha512>(parts),
        }
    }

    /// HMAC with `key` over the concatenation of `parts`.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        macro_rules! run {
            ($d:ty) => {{
                let mut m = <Hmac<$d> as Mac>::new_from_slice(key).expect("HMAC takes any key");
                for p in parts {
                    m.update(p);
                }
                m.finalize().into_bytes().to_vec()
            }};
        }
        match self {
            HashAlg::Sha256 => run!(Sha256),
            HashAlg::Sha384 => run!(Sha384),
            HashAlg::Sha512 => run!(Sha512),
        }
    }

    /// KDFa (TPM 2.0 Part 1 §11.4.10.2, SP800-108 counter mode with HMAC): `bits / 8` bytes of
    /// HMAC_key(counter || label || 0x00 || context_u || context_v || bits), counter from 1.
    /// `label` is given without its terminating zero; it is added here.
    pub fn kdfa(
        self,
        key: &[u8],
        label: &str,
        context_u: &[u8],
        context_v: &[u8],
        bits: u32,
    ) -> Vec<u8> {
        let want = (bits as usize).div_ceil(8);
        let mut out = Vec::with_capacity(want + self.size());
        let mut counter = 0u32;
        while out.len() < want {
            counter += 1;
            out.extend(self.hmac(
                key,
                &[
                    &counter.to_be_bytes(),
                    label.as_bytes(),
                    &[0],
                    context_u,
                    context_v,
                    &bits.to_be_bytes(),
                ],
            ));
        }
        out.truncate(want);
        out
    }

    /// KDFe (TPM 2.0 Part 1 §11.4.10.3, SP800-56A concatenation KDF): `bits / 8` bytes of
    /// H(counter || z || label || 0x00 || party_u || party_v), counter from 1.
    pub fn kdfe(self, z: &[u8], label: &str, party_u: &[u8], party_v: &[u8], bits: u32) -> Vec<u8> {
        let want = (bits as usize).div_ceil(8);
        let mut out = Vec::with_capacity(want + self.size());
        let mut counter = 0u32;
        while out.len() < want {
            counter += 1;
            out.extend(self.digest(&[
                &counter.to_be_bytes(),
                z,
                label.as_bytes(),
                &[0],
                party_u,
                party_v,
            ]));
        }
        out.truncate(want);
        out
    }
}
