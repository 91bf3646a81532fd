//! NVMe/TCP pre-shared keys (NVMe/TCP 1.0, 3.6.1.2-3.6.1.4).
//!
//! A configured PSK travels in the PSK interchange format
//! `NVMeTLSkey-1:hh:<base64 of key || CRC-32 of key, little-endian>:`, where `hh` names
//! the hash of the retained PSK: 00 (none: the configured PSK is the retained PSK), 01
//! (SHA-256, a 32-byte key) or 02 (SHA-384, a 48-byte key). From it:
//!
//! - the retained PSK: HKDF with the `hh` hash over the configured PSK, info
//!   HkdfLabel(length, "tls13 HostNQN", host NQN), empty salt;
//! - the PSK identity: `NVMe0R0c <hostnqn> <subnqn>`, `c` naming the cipher suite's hash
//!   (01 SHA-256 for a 32-byte key, 02 SHA-384 for a 48-byte one);
//! - the TLS PSK: HKDF with the cipher suite's hash over the retained PSK, info
//!   HkdfLabel(length, "tls13 nvme-tls-psk", identity), empty salt.
//!
//! HKDF is OpenSSL's (Extract then Expand, as the Linux host and SPDK compute it).

use openssl::hash::MessageDigest;
use openssl::md::{Md, MdRef};
use openssl::pkey::Id;
use openssl::pkey_ctx::{HkdfMode, PkeyCtx};
use zeroize::Zeroizing;

const PREFIX: &str = "NVMeTLSkey-1:";
const CRC_BYTES: usize = 4;
/// The version-0 identity prefix of a retained PSK (NVMe/TCP 1.0, 3.6.1.3).
const IDENTITY_PREFIX: &str = "NVMe0R";
const RETAINED_LABEL: &[u8] = b"tls13 HostNQN";
const TLS_PSK_LABEL: &[u8] = b"tls13 nvme-tls-psk";

/// The two hashes the format names (and the two TLS 1.3 cipher suites they pick).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PskHash {
    Sha256,
    Sha384,
}

impl PskHash {
    fn md(self) -> &'static MdRef {
        match self {
            PskHash::Sha256 => Md::sha256(),
            PskHash::Sha384 => Md::sha384(),
        }
    }

    pub fn digest_bytes(self) -> usize {
        match self {
            PskHash::Sha256 => MessageDigest::sha256().size(),
            PskHash::Sha384 => MessageDigest::sha384().size(),
        }
    }

    /// The `hh` / identity digit of this hash.
    pub fn id(self) -> u8 {
        match self {
            PskHash::Sha256 => 1,
            PskHash::Sha384 => 2,
        }
    }

    /// The TLS 1.3 cipher suite a PSK of this hash is used with.
    pub fn cipher_suite(self) -> &'static str {
        match self {
            PskHash::Sha256 => "TLS_AES_128_GCM_SHA256",
            PskHash::Sha384 => "TLS_AES_256_GCM_SHA384",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PskError {
    #[error("it does not start with '{PREFIX}'")]
    Prefix,
    #[error("its hash is not 00, 01 or 02")]
    Hash,
    #[error("it does not end with ':'")]
    Terminator,
    #[error("its key is not valid base64")]
    Base64,
    #[error("its key holds {0} bytes; hash 01 takes 32, 02 takes 48, 00 either")]
    Length(usize),
    #[error("its CRC-32 does not match the key")]
    Crc,
    #[error("OpenSSL could not derive the key: {0}")]
    Derive(String),
}

/// A configured PSK; the key bytes are wiped when it drops and never printed.
pub struct ConfiguredPsk {
    /// None: the configured PSK is used as the retained PSK (`hh` 00).
    retained_hash: Option<PskHash>,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ConfiguredPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfiguredPsk(hash {:?}, <{} bytes, redacted>)", self.retained_hash, self.key.len())
    }
}

impl ConfiguredPsk {
    pub fn parse(text: &[u8]) -> Result<ConfiguredPsk, PskError> {
        let text = std::str::from_utf8(text).map_err(|_| PskError::Prefix)?;
        // A key file written by `echo` ends with a newline; nvme-cli reads such files too.
        let text = text.trim_end_matches(['\n', '\r']);
        let rest = text.strip_prefix(PREFIX).ok_or(PskError::Prefix)?;
        let (hash, rest) = rest.split_once(':').ok_or(PskError::Hash)?;
        let retained_hash = match hash {
            "00" => None,
            "01" => Some(PskHash::Sha256),
            "02" => Some(PskHash::Sha384),
            _ => return Err(PskError::Hash),
        };
        let encoded = rest.strip_suffix(':').ok_or(PskError::Terminator)?;
        if encoded.contains(':') || encoded.bytes().any(|byte| byte.is_ascii_whitespace()) {
            return Err(PskError::Base64);
        }
        let decoded = Zeroizing::new(openssl::base64::decode_block(encoded).map_err(|_| PskError::Base64)?);
        let key_len = decoded.len().checked_sub(CRC_BYTES).ok_or(PskError::Length(decoded.len()))?;
        let allowed = match retained_hash {
            Some(hash) => key_len == hash.digest_bytes(),
            None => key_len == PskHash::Sha256.digest_bytes() || key_len == PskHash::Sha384.digest_bytes(),
        };
        if !allowed {
            return Err(PskError::Length(key_len));
        }
        let (key, crc) = decoded.split_at(key_len);
        // CRC-32 as IEEE 802.3 (the polynomial nvme-cli and the Linux host use).
        if crc32fast::hash(key).to_le_bytes() != crc {
            return Err(PskError::Crc);
        }
        Ok(ConfiguredPsk { retained_hash, key: Zeroizing::new(key.to_vec()) })
    }

    /// The interchange text of `key` (what `nvme gen-tls-key` prints).
    pub fn format(retained_hash: Option<PskHash>, key: &[u8]) -> Zeroizing<String> {
        let mut bytes = Zeroizing::new(key.to_vec());
        bytes.extend_from_slice(&crc32fast::hash(key).to_le_bytes());
        let id = retained_hash.map_or(0, PskHash::id);
        Zeroizing::new(format!("{PREFIX}{id:02}:{}:", openssl::base64::encode_block(&bytes)))
    }

    /// The hash of the TLS cipher suite, chosen by the key's length.
    pub fn cipher_hash(&self) -> PskHash {
        if self.key.len() == PskHash::Sha384.digest_bytes() {
            PskHash::Sha384
        } else {
            PskHash::Sha256
        }
    }

    /// The retained PSK for host `hostnqn` (NVMe/TCP 1.0, 3.6.1.3).
    pub fn retained(&self, hostnqn: &str) -> Result<Zeroizing<Vec<u8>>, PskError> {
        match self.retained_hash {
            None => Ok(Zeroizing::new(self.key.to_vec())),
            Some(hash) => hkdf(hash, &self.key, RETAINED_LABEL, hostnqn.as_bytes(), hash.digest_bytes()),
        }
    }

    /// The identity a host presents for this key between `hostnqn` and `subnqn`.
    pub fn identity(&self, hostnqn: &str, subnqn: &str) -> String {
        identity(self.cipher_hash(), hostnqn, subnqn)
    }

    /// The PSK TLS uses, for `identity` (NVMe/TCP 1.0, 3.6.1.4).
    pub fn tls_psk(&self, hostnqn: &str, identity: &str) -> Result<Zeroizing<Vec<u8>>, PskError> {
        let retained = self.retained(hostnqn)?;
        let hash = self.cipher_hash();
        hkdf(hash, &retained, TLS_PSK_LABEL, identity.as_bytes(), hash.digest_bytes())
    }
}

pub fn identity(cipher: PskHash, hostnqn: &str, subnqn: &str) -> String {
    format!("{IDENTITY_PREFIX}{:02} {hostnqn} {subnqn}", cipher.id())
}

/// What a PSK identity names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cipher: PskHash,
    pub hostnqn: String,
    pub subnqn: String,
}

impl Identity {
    /// Reads a version-0 retained-PSK identity; None for anything else (a generated
    /// PSK's `NVMe0G`, a version-1 identity with a digest, garbage).
    pub fn parse(identity: &[u8]) -> Option<Identity> {
        let text = std::str::from_utf8(identity).ok()?;
        let rest = text.strip_prefix(IDENTITY_PREFIX)?;
        let mut parts = rest.split(' ');
        let cipher = match parts.next()? {
            "01" => PskHash::Sha256,
            "02" => PskHash::Sha384,
            _ => return None,
        };
        let hostnqn = parts.next().filter(|nqn| !nqn.is_empty())?.to_string();
        let subnqn = parts.next().filter(|nqn| !nqn.is_empty())?.to_string();
        if parts.next().is_some() {
            return None;
        }
        Some(Identity { cipher, hostnqn, subnqn })
    }
}

/// HKDF-Extract (empty salt) then HKDF-Expand with the TLS 1.3 HkdfLabel info
/// (RFC 8446, 7.1): length (2 bytes), label and context, each with a length byte.
fn hkdf(
    hash: PskHash,
    key: &[u8],
    label: &[u8],
    context: &[u8],
    out_len: usize,
) -> Result<Zeroizing<Vec<u8>>, PskError> {
    let context_len = u8::try_from(context.len()).map_err(|_| PskError::Derive("context over 255 bytes".into()))?;
    let mut info = Vec::with_capacity(4 + label.len() + context.len());
    info.extend_from_slice(&(key.len() as u16).to_be_bytes());
    info.push(label.len() as u8);
    info.extend_from_slice(label);
    info.push(context_len);
    info.extend_from_slice(context);
    let derive = || {
        let mut ctx = PkeyCtx::new_id(Id::HKDF)?;
        ctx.derive_init()?;
        ctx.set_hkdf_mode(HkdfMode::EXTRACT_THEN_EXPAND)?;
        ctx.set_hkdf_md(hash.md())?;
        ctx.set_hkdf_key(key)?;
        ctx.set_hkdf_salt(&[])?;
        ctx.add_hkdf_info(&info)?;
        let mut out = Zeroizing::new(vec![0u8; out_len]);
        ctx.derive(Some(&mut out))?;
        Ok::<_, openssl::error::ErrorStack>(out)
    };
    derive().map_err(|err| PskError::Derive(err.to_string()))
}

#[cfg(test)]
mod tests;
