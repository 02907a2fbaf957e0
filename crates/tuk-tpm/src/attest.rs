//! The attestation commands: keys (CreatePrimary, ReadPublic, FlushContext), the EK certificate
//! (NV_ReadPublic, NV_Read), TPM2_Quote and credential activation (StartAuthSession,
//! PolicySecret, ActivateCredential). docs/attestation.md has the key hierarchy and the flows.
//!
//! Everything here is allocation-free: results are fixed-capacity [`Bytes`].

use core::fmt;
use core::ops::Deref;

use tpm2_protocol::basic::{TpmBuffer, TpmHandle};
use tpm2_protocol::data::{
    Tpm2bPublic, TpmAlgId, TpmEccCurve, TpmSe, TpmaObject, TpmaSession, TpmlPcrSelection,
    TpmsAuthCommand, TpmsEccParms, TpmsEccPoint, TpmsPcrSelect, TpmsPcrSelection, TpmsRsaParms,
    TpmsSchemeHash, TpmtEccScheme, TpmtKdfScheme, TpmtPublic, TpmtRsaScheme, TpmtSigScheme,
    TpmtSignature, TpmtSymDefObject, TpmuAsymScheme, TpmuPublicId, TpmuPublicParms, TpmuSigScheme,
    TpmuSignature, TpmuSymKeyBits, TpmuSymMode,
};
use tpm2_protocol::frame::{
    TpmActivateCredentialCommand, TpmActivateCredentialResponse, TpmCreatePrimaryCommand,
    TpmCreatePrimaryResponse, TpmFlushContextCommand, TpmFlushContextResponse, TpmNvReadCommand,
    TpmNvReadPublicCommand, TpmNvReadPublicResponse, TpmNvReadResponse, TpmPolicySecretCommand,
    TpmPolicySecretResponse, TpmQuoteCommand, TpmQuoteResponse, TpmReadPublicCommand,
    TpmReadPublicResponse, TpmStartAuthSessionCommand, TpmStartAuthSessionResponse,
};
use tpm2_protocol::TpmUnmarshal;

use crate::{password_session, Tpm, TpmError, Transport};

/// TPM_RH_OWNER: the storage hierarchy.
pub const TPM_RH_OWNER: u32 = 0x4000_0001;
/// TPM_RH_NULL.
pub const TPM_RH_NULL: u32 = 0x4000_0007;
/// TPM_RH_ENDORSEMENT: the endorsement hierarchy (EK and tuk's AK live here).
pub const TPM_RH_ENDORSEMENT: u32 = 0x4000_000B;

/// Persistent handle of the RSA-2048 EK (TCG "TPM v2.0 Provisioning Guidance"; swtpm_setup
/// makes it persistent there).
pub const EK_RSA2048_HANDLE: u32 = 0x8101_0001;
/// Persistent handle where swtpm_setup (0.7) keeps its ECC NIST P-384 EK.
pub const EK_ECC_P384_HANDLE: u32 = 0x8101_0016;
/// NV index of the RSA-2048 EK certificate (TCG EK Credential Profile, low range).
pub const NV_EK_CERT_RSA2048: u32 = 0x01c0_0002;
/// NV index of the ECC NIST P-256 EK certificate (low range). swtpm does not create one.
pub const NV_EK_CERT_ECC_P256: u32 = 0x01c0_000a;
/// NV index of the ECC NIST P-384 EK certificate (high range, template H-3): swtpm's.
pub const NV_EK_CERT_ECC_P384: u32 = 0x01c0_0016;

/// PolicyA with SHA-256: `TPM2_PolicySecret(TPM_RH_ENDORSEMENT)` from an empty digest. The
/// authPolicy of the low-range EK templates (L-1, L-2).
pub const POLICY_A_SHA256: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];
/// PolicyB with SHA-384 (PolicyOR of PolicyA and PolicyC): the authPolicy of the high-range
/// EK template H-3 (ECC NIST P-384), as swtpm_setup creates it.
pub const POLICY_B_SHA384: [u8; 48] = [
    0xb2, 0x6e, 0x7d, 0x28, 0xd1, 0x1a, 0x50, 0xbc, 0x53, 0xd8, 0x82, 0xbc, 0xf5, 0xfd, 0x3a, 0x1a,
    0x07, 0x41, 0x48, 0xbb, 0x35, 0xd3, 0xb4, 0xe4, 0xcb, 0x1c, 0x0a, 0xd9, 0xbd, 0xe4, 0x19, 0xca,
    0xcb, 0x47, 0xba, 0x09, 0x69, 0x96, 0x46, 0x15, 0x0f, 0x9f, 0xc0, 0x00, 0xf3, 0xf8, 0x0e, 0x12,
];

/// Largest TPMT_PUBLIC this client returns (an RSA-4096 key is about 600 bytes).
pub const MAX_PUBLIC: usize = 1024;
/// Largest TPM name: a 2-byte algorithm and a digest of up to 64 bytes.
pub const MAX_NAME: usize = 66;
/// Largest TPMS_ATTEST this client returns.
pub const MAX_ATTEST: usize = 1024;
/// Largest TPMT_SIGNATURE this client returns (RSA-4096 would be 518 bytes).
pub const MAX_SIGNATURE: usize = 640;
/// Largest digest (credential, nonce) this client handles.
pub const MAX_DIGEST: usize = 64;
/// NV_Read chunk: TPM_PT_NV_BUFFER_MAX is at least 512 on every TPM we know; the CRB buffer
/// (3968 bytes) holds it with room to spare.
pub const NV_CHUNK: usize = 512;

/// A byte string of at most `N` bytes, without allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bytes<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Bytes<N> {
    /// The empty string.
    pub const fn new() -> Self {
        Bytes {
            buf: [0; N],
            len: 0,
        }
    }

    /// A copy of `bytes`, or an error if it is longer than `N`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, TpmError> {
        let mut out = Self::new();
        out.buf
            .get_mut(..bytes.len())
            .ok_or(TpmError::Unexpected(
                "value larger than this client's buffer",
            ))?
            .copy_from_slice(bytes);
        out.len = bytes.len();
        Ok(out)
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> Default for Bytes<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Deref for Bytes<N> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl<const N: usize> AsRef<[u8]> for Bytes<N> {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl<const N: usize> fmt::Debug for Bytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_slice() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A loaded object: its handle, its TPMT_PUBLIC (exactly the bytes the TPM returned, without
/// the TPM2B size) and its name (nameAlg || H_nameAlg(TPMT_PUBLIC), as the TPM reported it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub handle: u32,
    pub public: Bytes<MAX_PUBLIC>,
    pub name: Bytes<MAX_NAME>,
}

/// The public area of an NV index (TPMS_NV_PUBLIC) and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvPublic {
    pub index: u32,
    pub name_alg: u16,
    /// TPMA_NV.
    pub attributes: u32,
    pub data_size: u16,
    pub name: Bytes<MAX_NAME>,
}

/// A TPM2_Quote: the signed TPMS_ATTEST bytes (without the TPM2B size) and the TPMT_SIGNATURE
/// over them, both exactly as the TPM returned them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    pub attest: Bytes<MAX_ATTEST>,
    pub signature: Bytes<MAX_SIGNATURE>,
}

/// An ECDSA signature out of a TPMT_SIGNATURE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcdsaSignature {
    /// The hash algorithm (TPM_ALG_ID, 0x000b for SHA-256).
    pub hash_alg: u16,
    pub r: Bytes<66>,
    pub s: Bytes<66>,
}

impl Quote {
    /// The ECDSA r and s of [`Quote::signature`]; an error for any other signature scheme.
    pub fn ecdsa(&self) -> Result<EcdsaSignature, TpmError> {
        let (sig, rest) = TpmtSignature::unmarshal(&self.signature)?;
        if !rest.is_empty() {
            return Err(TpmError::Unexpected("bytes after the TPMT_SIGNATURE"));
        }
        match sig.signature {
            TpmuSignature::Ecdsa(e) => Ok(EcdsaSignature {
                hash_alg: e.hash.value(),
                r: Bytes::from_slice(&e.signature_r)?,
                s: Bytes::from_slice(&e.signature_s)?,
            }),
            _ => Err(TpmError::Unexpected("the quote is not signed with ECDSA")),
        }
    }
}

/// A policy session (TPM_SE_POLICY, SHA-256, unsalted, unbound).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySession {
    pub handle: u32,
    pub nonce_tpm: Bytes<MAX_DIGEST>,
}

/// How TPM2_ActivateCredential authorizes the EK (USER role).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EkAuthorization {
    /// A policy session satisfying PolicyA: `TPM2_PolicySecret(TPM_RH_ENDORSEMENT)` (empty
    /// endorsement password). For the low-range templates (L-1 RSA-2048, L-2 ECC P-256), whose
    /// userWithAuth is clear.
    PolicySecretEndorsement,
    /// A password session with the EK's (empty) authValue. For the high-range templates (H-3
    /// ECC P-384, swtpm's), which set userWithAuth.
    Password,
}

/// The key templates tuk creates with TPM2_CreatePrimary. All are fixed, so on one TPM the
/// same template always yields the same key (primary keys derive from the hierarchy's seed and
/// the template).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyTemplate {
    /// TCG EK Credential Profile template L-1: RSA-2048, SHA-256, AES-128-CFB, PolicyA,
    /// fixedTPM|fixedParent|sensitiveDataOrigin|adminWithPolicy|restricted|decrypt, unique =
    /// 256 zero bytes. Matches swtpm's EK at 0x81010001 and its certificate in NV 0x01c00002.
    EkRsa2048,
    /// Template L-2: ECC NIST P-256, SHA-256, AES-128-CFB, PolicyA, same attributes, unique =
    /// two 32-byte zero coordinates. swtpm_setup creates no certificate for it.
    EkEccP256,
    /// Template H-3: ECC NIST P-384, SHA-384, AES-256-CFB, PolicyB (SHA-384),
    /// fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|adminWithPolicy|restricted|decrypt,
    /// empty unique. Matches swtpm's EK at 0x81010016 and its certificate in NV 0x01c00016.
    EkEccP384,
    /// tuk's attestation key: ECC NIST P-256, nameAlg SHA-256, ECDSA-SHA256,
    /// fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|restricted|sign, empty authPolicy,
    /// empty authValue, empty unique; created as a primary in the endorsement hierarchy, so it
    /// is the same key every time on the same TPM (same EPS), and the EK and the AK change only
    /// together (TPM2_ChangeEPS).
    Ak,
}

impl KeyTemplate {
    /// How [`Tpm::activate_credential`] must authorize an EK of this template.
    pub fn ek_authorization(self) -> EkAuthorization {
        match self {
            KeyTemplate::EkEccP384 => EkAuthorization::Password,
            _ => EkAuthorization::PolicySecretEndorsement,
        }
    }

    /// The TPMT_PUBLIC template.
    pub fn public(self) -> Result<TpmtPublic, TpmError> {
        let ek_attributes = TpmaObject::FIXED_TPM
            | TpmaObject::FIXED_PARENT
            | TpmaObject::SENSITIVE_DATA_ORIGIN
            | TpmaObject::ADMIN_WITH_POLICY
            | TpmaObject::RESTRICTED
            | TpmaObject::DECRYPT;
        let aes_cfb = |bits: u16| TpmtSymDefObject {
            algorithm: TpmAlgId::Aes,
            key_bits: TpmuSymKeyBits::Aes(bits.into()),
            mode: TpmuSymMode::Aes(TpmAlgId::Cfb),
        };
        let ecc = |curve, symmetric, scheme| {
            TpmuPublicParms::Ecc(TpmsEccParms {
                symmetric,
                scheme,
                curve_id: curve,
                kdf: TpmtKdfScheme::default(),
            })
        };
        let point = |len: usize| -> Result<TpmuPublicId, TpmError> {
            let zeros = [0u8; 32];
            Ok(TpmuPublicId::Ecc(TpmsEccPoint {
                x: TpmBuffer::try_from(&zeros[..len])?,
                y: TpmBuffer::try_from(&zeros[..len])?,
            }))
        };
        Ok(match self {
            KeyTemplate::EkRsa2048 => TpmtPublic {
                object_type: TpmAlgId::Rsa,
                name_alg: TpmAlgId::Sha256,
                object_attributes: ek_attributes,
                auth_policy: TpmBuffer::try_from(&POLICY_A_SHA256[..])?,
                parameters: TpmuPublicParms::Rsa(TpmsRsaParms {
                    symmetric: aes_cfb(128),
                    scheme: TpmtRsaScheme::default(),
                    key_bits: 2048u16.into(),
                    exponent: 0u32.into(),
                }),
                unique: TpmuPublicId::Rsa(TpmBuffer::try_from(&[0u8; 256][..])?),
            },
            KeyTemplate::EkEccP256 => TpmtPublic {
                object_type: TpmAlgId::Ecc,
                name_alg: TpmAlgId::Sha256,
                object_attributes: ek_attributes,
                auth_policy: TpmBuffer::try_from(&POLICY_A_SHA256[..])?,
                parameters: ecc(
                    TpmEccCurve::NistP256,
                    aes_cfb(128),
                    TpmtEccScheme::default(),
                ),
                unique: point(32)?,
            },
            KeyTemplate::EkEccP384 => TpmtPublic {
                object_type: TpmAlgId::Ecc,
                name_alg: TpmAlgId::Sha384,
                object_attributes: ek_attributes | TpmaObject::USER_WITH_AUTH,
                auth_policy: TpmBuffer::try_from(&POLICY_B_SHA384[..])?,
                parameters: ecc(
                    TpmEccCurve::NistP384,
                    aes_cfb(256),
                    TpmtEccScheme::default(),
                ),
                unique: point(0)?,
            },
            KeyTemplate::Ak => TpmtPublic {
                object_type: TpmAlgId::Ecc,
                name_alg: TpmAlgId::Sha256,
                object_attributes: TpmaObject::FIXED_TPM
                    | TpmaObject::FIXED_PARENT
                    | TpmaObject::SENSITIVE_DATA_ORIGIN
                    | TpmaObject::USER_WITH_AUTH
                    | TpmaObject::RESTRICTED
                    | TpmaObject::SIGN_ENCRYPT,
                auth_policy: TpmBuffer::new(),
                parameters: ecc(
                    TpmEccCurve::NistP256,
                    TpmtSymDefObject {
                        algorithm: TpmAlgId::Null,
                        ..Default::default()
                    },
                    TpmtEccScheme {
                        scheme: TpmAlgId::Ecdsa,
                        details: TpmuAsymScheme::Hash(TpmsSchemeHash {
                            hash_alg: TpmAlgId::Sha256,
                        }),
                    },
                ),
                unique: point(0)?,
            },
        })
    }
}

/// A TPML_PCR_SELECTION of the SHA-256 bank with `pcrs` (each below 24) selected.
pub(crate) fn sha256_selection(pcrs: &[u32]) -> Result<TpmlPcrSelection, TpmError> {
    let mut bits = [0u8; 3];
    for &pcr in pcrs {
        if pcr >= 24 {
            return Err(TpmError::Unexpected("PCR index above 23"));
        }
        bits[(pcr / 8) as usize] |= 1 << (pcr % 8);
    }
    let mut list = TpmlPcrSelection::new();
    list.try_push(TpmsPcrSelection {
        hash: TpmAlgId::Sha256,
        pcr_select: TpmsPcrSelect::try_from(&bits[..])?,
    })?;
    Ok(list)
}

/// The first TPM2B in `params`: its contents and what follows it.
fn split_tpm2b(params: &[u8]) -> Result<(&[u8], &[u8]), TpmError> {
    let size = params
        .get(..2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]) as usize)
        .ok_or(TpmError::Unexpected("truncated TPM2B"))?;
    let body = params
        .get(2..2 + size)
        .ok_or(TpmError::Unexpected("truncated TPM2B"))?;
    Ok((body, &params[2 + size..]))
}

fn session(handle: u32) -> TpmsAuthCommand {
    TpmsAuthCommand {
        session_handle: TpmHandle::new(handle),
        nonce: Default::default(),
        session_attributes: TpmaSession::empty(),
        hmac: Default::default(),
    }
}

impl<T: Transport> Tpm<T> {
    /// TPM2_CreatePrimary of `template` under `hierarchy` (e.g. [`TPM_RH_ENDORSEMENT`]) with
    /// the hierarchy's empty password, an empty authValue for the new key and no creation PCRs.
    /// The key stays loaded (transient handle) until [`Tpm::flush_context`] or a TPM reset; the
    /// caller flushes it. Same template + same seed = same key, so this also "finds" the EK
    /// without knowing whether it was made persistent.
    pub fn create_primary(
        &mut self,
        hierarchy: u32,
        template: KeyTemplate,
    ) -> Result<Object, TpmError> {
        let cmd = TpmCreatePrimaryCommand {
            handles: [TpmHandle::new(hierarchy)],
            in_sensitive: Default::default(),
            in_public: Tpm2bPublic {
                inner: template.public()?,
            },
            outside_info: Default::default(),
            creation_pcr: TpmlPcrSelection::new(),
        };
        let n = self.exchange(&cmd, &[password_session()])?;
        let resp: TpmCreatePrimaryResponse =
            tpm2_protocol::frame::TpmResponse::cast(&self.response[..n])?.unmarshal()?;
        let (public, _) = split_tpm2b(self.response_parameters(n, 1)?)?;
        Ok(Object {
            handle: resp.handles[0].value(),
            public: Bytes::from_slice(public)?,
            name: Bytes::from_slice(&resp.name)?,
        })
    }

    /// TPM2_ReadPublic of a loaded or persistent object: its TPMT_PUBLIC and name.
    pub fn read_public(&mut self, handle: u32) -> Result<Object, TpmError> {
        let cmd = TpmReadPublicCommand {
            handles: [TpmHandle::new(handle)],
        };
        let n = self.exchange(&cmd, &[])?;
        let resp: TpmReadPublicResponse =
            tpm2_protocol::frame::TpmResponse::cast(&self.response[..n])?.unmarshal()?;
        let (public, _) = split_tpm2b(self.response_parameters(n, 0)?)?;
        Ok(Object {
            handle,
            public: Bytes::from_slice(public)?,
            name: Bytes::from_slice(&resp.name)?,
        })
    }

    /// TPM2_FlushContext: unloads a transient object or ends a session.
    pub fn flush_context(&mut self, handle: u32) -> Result<(), TpmError> {
        let cmd = TpmFlushContextCommand {
            handles: [],
            flush_handle: TpmHandle::new(handle),
        };
        let _: TpmFlushContextResponse = self.run_with(&cmd, &[])?;
        Ok(())
    }

    /// TPM2_NV_ReadPublic of `index`.
    pub fn nv_read_public(&mut self, index: u32) -> Result<NvPublic, TpmError> {
        let cmd = TpmNvReadPublicCommand {
            handles: [TpmHandle::new(index)],
        };
        let resp: TpmNvReadPublicResponse = self.run_with(&cmd, &[])?;
        let p = resp.nv_public.inner;
        Ok(NvPublic {
            index: p.nv_index.value(),
            name_alg: p.name_alg.value(),
            attributes: p.attributes.bits(),
            data_size: p.data_size.into(),
            name: Bytes::from_slice(&resp.nv_name)?,
        })
    }

    /// TPM2_NV_Read of `out.len()` bytes of `index` from `offset`, in [`NV_CHUNK`]-byte
    /// commands, authorized by the index itself with an empty password (TPMA_NV_AUTHREAD, as
    /// the EK certificate indices have), so it works whatever the owner password is.
    pub fn nv_read(&mut self, index: u32, offset: u16, out: &mut [u8]) -> Result<(), TpmError> {
        let mut done = 0;
        while done < out.len() {
            let want = (out.len() - done).min(NV_CHUNK);
            let at = usize::from(offset) + done;
            let at =
                u16::try_from(at).map_err(|_| TpmError::Unexpected("NV offset above 64 KiB"))?;
            let cmd = TpmNvReadCommand {
                handles: [TpmHandle::new(index), TpmHandle::new(index)],
                size: (want as u16).into(),
                offset: at.into(),
            };
            let resp: TpmNvReadResponse = self.run(&cmd, true)?;
            if resp.data.len() != want {
                return Err(TpmError::Unexpected("NV_Read returned another length"));
            }
            out[done..done + want].copy_from_slice(&resp.data);
            done += want;
        }
        Ok(())
    }

    /// Reads a whole NV index (e.g. an EK certificate: [`NV_EK_CERT_RSA2048`],
    /// [`NV_EK_CERT_ECC_P384`]) into `out`; returns its length. An error if `out` is too small.
    pub fn nv_read_all(&mut self, index: u32, out: &mut [u8]) -> Result<usize, TpmError> {
        let size = usize::from(self.nv_read_public(index)?.data_size);
        let out = out
            .get_mut(..size)
            .ok_or(TpmError::Unexpected("NV index larger than the buffer"))?;
        self.nv_read(index, 0, out)?;
        Ok(size)
    }

    /// TPM2_Quote with the (restricted signing) key `ak_handle` over the SHA-256 bank's `pcrs`,
    /// with `qualifying_data` (at most 64 bytes, e.g. a hash of the verifier's nonce) as the
    /// TPMS_ATTEST's extraData, signed with the key's own scheme (the AK's ECDSA-SHA256). The
    /// AK is authorized with its empty password. Returns the signed bytes and the signature
    /// exactly as the TPM produced them; a verifier checks them with `tuk-attest`.
    pub fn quote(
        &mut self,
        ak_handle: u32,
        qualifying_data: &[u8],
        pcrs: &[u32],
    ) -> Result<Quote, TpmError> {
        if qualifying_data.len() > MAX_DIGEST {
            return Err(TpmError::Unexpected("qualifying data above 64 bytes"));
        }
        let cmd = TpmQuoteCommand {
            handles: [TpmHandle::new(ak_handle)],
            qualifying_data: TpmBuffer::try_from(qualifying_data)?,
            in_scheme: TpmtSigScheme {
                scheme: TpmAlgId::Null,
                details: TpmuSigScheme::Null,
            },
            pcr_select: sha256_selection(pcrs)?,
        };
        let n = self.exchange(&cmd, &[password_session()])?;
        let _: TpmQuoteResponse =
            tpm2_protocol::frame::TpmResponse::cast(&self.response[..n])?.unmarshal()?;
        let (attest, signature) = split_tpm2b(self.response_parameters(n, 0)?)?;
        Ok(Quote {
            attest: Bytes::from_slice(attest)?,
            signature: Bytes::from_slice(signature)?,
        })
    }

    /// TPM2_StartAuthSession of a policy session: SHA-256, no salt (tpmKey = TPM_RH_NULL), not
    /// bound (bind = TPM_RH_NULL), no parameter encryption, with `nonce_caller` (16 to 32
    /// bytes). The session lives until a command uses it without continueSession, or
    /// [`Tpm::flush_context`].
    pub fn start_auth_session(&mut self, nonce_caller: &[u8]) -> Result<PolicySession, TpmError> {
        if !(16..=32).contains(&nonce_caller.len()) {
            return Err(TpmError::Unexpected("nonceCaller must be 16 to 32 bytes"));
        }
        let cmd = TpmStartAuthSessionCommand {
            handles: [TpmHandle::new(TPM_RH_NULL), TpmHandle::new(TPM_RH_NULL)],
            nonce_caller: TpmBuffer::try_from(nonce_caller)?,
            encrypted_salt: TpmBuffer::new(),
            session_type: TpmSe::Policy,
            symmetric: TpmtSymDefObject {
                algorithm: TpmAlgId::Null,
                ..Default::default()
            },
            auth_hash: TpmAlgId::Sha256,
        };
        let resp: TpmStartAuthSessionResponse = self.run_with(&cmd, &[])?;
        Ok(PolicySession {
            handle: resp.handles[0].value(),
            nonce_tpm: Bytes::from_slice(&resp.nonce_tpm)?,
        })
    }

    /// TPM2_PolicySecret: extends `session`'s policy digest with "the caller knows the
    /// authorization of `auth_handle`" (e.g. [`TPM_RH_ENDORSEMENT`], authorized here with its
    /// empty password). No nonceTPM binding, no cpHash, no policyRef, no expiration.
    pub fn policy_secret(
        &mut self,
        auth_handle: u32,
        session: &PolicySession,
    ) -> Result<(), TpmError> {
        let cmd = TpmPolicySecretCommand {
            handles: [TpmHandle::new(auth_handle), TpmHandle::new(session.handle)],
            nonce_tpm: TpmBuffer::new(),
            cp_hash_a: TpmBuffer::new(),
            policy_ref: TpmBuffer::new(),
            expiration: 0i32.into(),
        };
        let _: TpmPolicySecretResponse = self.run(&cmd, true)?;
        Ok(())
    }

    /// TPM2_ActivateCredential: the EK (`ek_handle`, loaded or persistent) decrypts the seed in
    /// `encrypted_secret` (a TPM2B_ENCRYPTED_SECRET's contents), checks the integrity HMAC of
    /// `credential_blob` (a TPM2B_ID_OBJECT's contents) against the name of the loaded key
    /// `ak_handle`, and returns the credential (the verifier's secret) only if both match: only
    /// the TPM holding that EK, with that exact AK loaded, can recover it.
    ///
    /// Authorization: the AK (ADMIN role) with its empty password; the EK (USER role) per
    /// `ek_auth`: for [`EkAuthorization::PolicySecretEndorsement`] a policy session is started
    /// (nonceCaller from TPM2_GetRandom), satisfied with TPM2_PolicySecret(TPM_RH_ENDORSEMENT)
    /// and consumed by this command (continueSession clear); it is flushed on any failure.
    pub fn activate_credential(
        &mut self,
        ak_handle: u32,
        ek_handle: u32,
        ek_auth: EkAuthorization,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Bytes<MAX_DIGEST>, TpmError> {
        let cmd = TpmActivateCredentialCommand {
            handles: [TpmHandle::new(ak_handle), TpmHandle::new(ek_handle)],
            credential_blob: TpmBuffer::try_from(credential_blob)?,
            secret: TpmBuffer::try_from(encrypted_secret)?,
        };
        let policy = match ek_auth {
            EkAuthorization::Password => None,
            EkAuthorization::PolicySecretEndorsement => {
                let mut nonce = [0u8; 32];
                self.get_random(&mut nonce)?;
                let session = self.start_auth_session(&nonce)?;
                if let Err(e) = self.policy_secret(TPM_RH_ENDORSEMENT, &session) {
                    let _ = self.flush_context(session.handle);
                    return Err(e);
                }
                Some(session.handle)
            }
        };
        let ek_session = policy.map_or_else(password_session, session);
        let result: Result<TpmActivateCredentialResponse, TpmError> =
            self.run_with(&cmd, &[password_session(), ek_session]);
        match result {
            Ok(resp) => Bytes::from_slice(&resp.cert_info),
            Err(e) => {
                if let Some(handle) = policy {
                    let _ = self.flush_context(handle);
                }
                Err(e)
            }
        }
    }
}
