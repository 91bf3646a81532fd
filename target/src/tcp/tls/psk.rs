//! NVMe/TCP pre-shared keys (NVMe/TCP 1.0, 3.6.1.2-3.6.1.4).
//!
//! A configured PSK travels in the PSK interchange format
//! `NVMeTLSkey-1:hh:<base64 of key || CRC-32 of key, little-endian>:`, where `hh` names
//! the hash of the retained PSK: 00 (none: the configured PSK is the retained PSK), 01
//! (SHA-256, a 32-byte key) or 02 (SHA-384, a 48-byte key). From it:
//!
//! - the retained PSK: HKDF with the `hh` hash over the configured PSK, info
//!   HkdfLabel(length, "tls13 HostNQN", host NQN), empty salt;
//! - the PSK identity, version 0: `NVMe0R0c <hostnqn> <subnqn>`, `c` naming the cipher
//!   suite's hash (01 SHA-256 for a 32-byte key, 02 SHA-384 for a 48-byte one);
//! - or version 1: `NVMe1R0c <hostnqn> <subnqn> <PSK digest>`, the digest being the base64
//!   of HMAC(retained PSK, `<hostnqn> <subnqn> NVMe-over-Fabrics`) with the suite's hash,
//!   which binds the identity to the key;
//! - the TLS PSK: HKDF with the cipher suite's hash over the retained PSK, info
//!   HkdfLabel(length, "tls13 nvme-tls-psk", context), empty salt, where the context is
//!   the whole identity in version 0 and `0c <PSK digest>` in version 1.
//!
//! HKDF is OpenSSL's (Extract then Expand, as the Linux host and SPDK compute it).

use openssl::hash::MessageDigest;
use openssl::md::{Md, MdRef};
use openssl::pkey::{Id, PKey};
use openssl::pkey_ctx::{HkdfMode, PkeyCtx};
use openssl::sign::Signer;
use zeroize::Zeroizing;

const PREFIX: &str = "NVMeTLSkey-1:";
const CRC_BYTES: usize = 4;
/// What the digest of a version-1 identity is computed over, after the two NQNs.
const DIGEST_SEED: &[u8] = b" NVMe-over-Fabrics";
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

    fn message_digest(self) -> MessageDigest {
        match self {
            PskHash::Sha256 => MessageDigest::sha256(),
            PskHash::Sha384 => MessageDigest::sha384(),
        }
    }

    pub fn digest_bytes(self) -> usize {
        self.message_digest().size()
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
    #[error("identity version {0} is not 0 or 1")]
    IdentityVersion(u8),
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
            Some(hash) => {
                hkdf(hash, KeyIs::Material, &self.key, RETAINED_LABEL, hostnqn.as_bytes(), hash.digest_bytes())
            }
        }
    }

    /// The identity of `version` (0 or 1) a host presents for this key between
    /// `hostnqn` and `subnqn`.
    pub fn identity(&self, version: u8, hostnqn: &str, subnqn: &str) -> Result<Identity, PskError> {
        let digest = match version {
            0 => None,
            1 => Some(self.digest(hostnqn, subnqn)?),
            other => return Err(PskError::IdentityVersion(other)),
        };
        Ok(Identity { cipher: self.cipher_hash(), hostnqn: hostnqn.into(), subnqn: subnqn.into(), digest })
    }

    /// The PSK digest of a version-1 identity (NVMe/TCP 1.0, 3.6.1.3): HMAC with the
    /// cipher suite's hash, keyed by the retained PSK, over both NQNs and a fixed seed.
    pub fn digest(&self, hostnqn: &str, subnqn: &str) -> Result<String, PskError> {
        let retained = self.retained(hostnqn)?;
        let hash = self.cipher_hash();
        let mac = || {
            let key = PKey::hmac(&retained)?;
            let mut signer = Signer::new(hash.message_digest(), &key)?;
            signer.update(hostnqn.as_bytes())?;
            signer.update(b" ")?;
            signer.update(subnqn.as_bytes())?;
            signer.update(DIGEST_SEED)?;
            signer.sign_to_vec()
        };
        let mac = Zeroizing::new(mac().map_err(|err| PskError::Derive(err.to_string()))?);
        Ok(openssl::base64::encode_block(&mac))
    }

    /// The PSK TLS uses for `identity` (NVMe/TCP 1.0, 3.6.1.4).
    pub fn tls_psk(&self, identity: &Identity) -> Result<Zeroizing<Vec<u8>>, PskError> {
        let retained = self.retained(&identity.hostnqn)?;
        let hash = self.cipher_hash();
        let context = match &identity.digest {
            None => identity.to_string(),
            Some(digest) => format!("{:02} {digest}", identity.cipher.id()),
        };
        hkdf(hash, KeyIs::Material, &retained, TLS_PSK_LABEL, context.as_bytes(), hash.digest_bytes())
    }
}

/// What a retained-PSK identity names; with a digest, it is a version-1 identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cipher: PskHash,
    pub hostnqn: String,
    pub subnqn: String,
    pub digest: Option<String>,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (version, cipher, host, sub) = (self.version(), self.cipher.id(), &self.hostnqn, &self.subnqn);
        write!(f, "NVMe{version}R{cipher:02} {host} {sub}")?;
        match &self.digest {
            Some(digest) => write!(f, " {digest}"),
            None => Ok(()),
        }
    }
}

impl Identity {
    pub fn version(&self) -> u8 {
        u8::from(self.digest.is_some())
    }

    /// Reads a retained-PSK identity of version 0 or 1; None for anything else (a
    /// generated PSK's `NVMe0G`/`NVMe1G`, another version, garbage).
    pub fn parse(identity: &[u8]) -> Option<Identity> {
        let text = std::str::from_utf8(identity).ok()?;
        let (with_digest, rest) = match text.strip_prefix("NVMe0R") {
            Some(rest) => (false, rest),
            None => (true, text.strip_prefix("NVMe1R")?),
        };
        let mut parts = rest.split(' ');
        let cipher = match parts.next()? {
            "01" => PskHash::Sha256,
            "02" => PskHash::Sha384,
            _ => return None,
        };
        let hostnqn = parts.next().filter(|nqn| !nqn.is_empty())?.to_string();
        let subnqn = parts.next().filter(|nqn| !nqn.is_empty())?.to_string();
        let digest = if with_digest {
            // Base64 of a SHA-256 or SHA-384 HMAC: 44 or 64 characters.
            let digest = parts.next()?;
            let decoded = openssl::base64::decode_block(digest).ok()?;
            if decoded.len() != cipher.digest_bytes() {
                return None;
            }
            Some(digest.to_string())
        } else {
            None
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Identity { cipher, hostnqn, subnqn, digest })
    }
}

/// How [`hkdf`] treats its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyIs {
    /// Input keying material: HKDF-Extract with an empty salt runs first (the NVMe/TCP
    /// derivations).
    Material,
    /// Already a pseudorandom key, such as a TLS 1.3 traffic secret: HKDF-Expand only.
    Pseudorandom,
}

/// HKDF-Expand with the TLS 1.3 HkdfLabel info (RFC 8446, 7.1): the output length (2
/// bytes), then the label and the context, each after a length byte.
pub(super) fn hkdf(
    hash: PskHash,
    key_is: KeyIs,
    key: &[u8],
    label: &[u8],
    context: &[u8],
    out_len: usize,
) -> Result<Zeroizing<Vec<u8>>, PskError> {
    let too_long = |what: &str| PskError::Derive(format!("{what} over 255 bytes"));
    let context_len = u8::try_from(context.len()).map_err(|_| too_long("context"))?;
    let label_len = u8::try_from(label.len()).map_err(|_| too_long("label"))?;
    let out_len_field = u16::try_from(out_len).map_err(|_| PskError::Derive("output over 65535 bytes".into()))?;
    let mut info = Vec::with_capacity(4 + label.len() + context.len());
    info.extend_from_slice(&out_len_field.to_be_bytes());
    info.push(label_len);
    info.extend_from_slice(label);
    info.push(context_len);
    info.extend_from_slice(context);
    let derive = || {
        let mut ctx = PkeyCtx::new_id(Id::HKDF)?;
        ctx.derive_init()?;
        match key_is {
            KeyIs::Material => {
                ctx.set_hkdf_mode(HkdfMode::EXTRACT_THEN_EXPAND)?;
                ctx.set_hkdf_salt(&[])?;
            }
            KeyIs::Pseudorandom => ctx.set_hkdf_mode(HkdfMode::EXPAND_ONLY)?,
        }
        ctx.set_hkdf_md(hash.md())?;
        ctx.set_hkdf_key(key)?;
        ctx.add_hkdf_info(&info)?;
        let mut out = Zeroizing::new(vec![0u8; out_len]);
        ctx.derive(Some(&mut out))?;
        Ok::<_, openssl::error::ErrorStack>(out)
    };
    derive().map_err(|err| PskError::Derive(err.to_string()))
}

#[cfg(test)]
mod tests;
