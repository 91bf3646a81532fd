//! DH-HMAC-CHAP in-band authentication (NVMe Base 2.0, 8.13): a host proves it holds the
//! secret configured for it (and, when asked, the controller proves it holds its own),
//! optionally mixing in an ephemeral Diffie-Hellman exchange so a recorded transaction
//! reveals nothing. The primitives come from OpenSSL (HMAC, SHA-2, DH modexp); this module
//! holds the secret representation (`secret`), the response computations (`crypto`), the
//! wire messages (`msg`), the controller's per-queue state machine (`session`) and the
//! per-host limit on failed attempts (`limiter`). The host side (the initiator in
//! `tools`) uses the same primitives and messages.

pub mod crypto;
pub mod ffdhe;
pub mod limiter;
pub mod msg;
pub mod rpc;
pub mod secret;
pub mod session;

use openssl::hash::MessageDigest;

/// Hash functions by their DH-HMAC-CHAP identifier (NVMe Base 2.0, Figure 453).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Digest {
    Sha256 = 1,
    Sha384 = 2,
    Sha512 = 3,
}

impl Digest {
    /// Strongest first: the controller picks the strongest both sides allow, as SPDK does.
    pub const ALL: [Digest; 3] = [Digest::Sha512, Digest::Sha384, Digest::Sha256];

    pub fn id(self) -> u8 {
        self as u8
    }

    pub fn from_id(id: u8) -> Option<Digest> {
        Digest::ALL.into_iter().find(|digest| digest.id() == id)
    }

    /// The hash length in bytes: also the challenge and response length (HL).
    pub fn hash_len(self) -> usize {
        match self {
            Digest::Sha256 => 32,
            Digest::Sha384 => 48,
            Digest::Sha512 => 64,
        }
    }

    /// SPDK's names, used by `nvmf_set_config` and `nvmf_subsystem_get_qpairs`.
    pub fn name(self) -> &'static str {
        match self {
            Digest::Sha256 => "sha256",
            Digest::Sha384 => "sha384",
            Digest::Sha512 => "sha512",
        }
    }

    pub fn from_name(name: &str) -> Option<Digest> {
        Digest::ALL.into_iter().find(|digest| digest.name() == name)
    }

    pub(crate) fn md(self) -> MessageDigest {
        match self {
            Digest::Sha256 => MessageDigest::sha256(),
            Digest::Sha384 => MessageDigest::sha384(),
            Digest::Sha512 => MessageDigest::sha512(),
        }
    }
}

/// Diffie-Hellman groups by their DH-HMAC-CHAP identifier (NVMe Base 2.0, Figure 454);
/// `Null` is no exchange at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DhGroup {
    Null = 0,
    Ffdhe2048 = 1,
    Ffdhe3072 = 2,
    Ffdhe4096 = 3,
    Ffdhe6144 = 4,
    Ffdhe8192 = 5,
}

impl DhGroup {
    /// Strongest first, as `Digest::ALL`.
    pub const ALL: [DhGroup; 6] = [
        DhGroup::Ffdhe8192,
        DhGroup::Ffdhe6144,
        DhGroup::Ffdhe4096,
        DhGroup::Ffdhe3072,
        DhGroup::Ffdhe2048,
        DhGroup::Null,
    ];

    pub fn id(self) -> u8 {
        self as u8
    }

    pub fn from_id(id: u8) -> Option<DhGroup> {
        DhGroup::ALL.into_iter().find(|group| group.id() == id)
    }

    /// Bytes of a public value (DHVLEN): the prime's size; 0 for `Null`.
    pub fn value_len(self) -> usize {
        match self {
            DhGroup::Null => 0,
            DhGroup::Ffdhe2048 => 256,
            DhGroup::Ffdhe3072 => 384,
            DhGroup::Ffdhe4096 => 512,
            DhGroup::Ffdhe6144 => 768,
            DhGroup::Ffdhe8192 => 1024,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Null => "null",
            DhGroup::Ffdhe2048 => "ffdhe2048",
            DhGroup::Ffdhe3072 => "ffdhe3072",
            DhGroup::Ffdhe4096 => "ffdhe4096",
            DhGroup::Ffdhe6144 => "ffdhe6144",
            DhGroup::Ffdhe8192 => "ffdhe8192",
        }
    }

    pub fn from_name(name: &str) -> Option<DhGroup> {
        DhGroup::ALL.into_iter().find(|group| group.name() == name)
    }

    /// The group's prime in hex (RFC 7919, appendix A); None for `Null`.
    pub(crate) fn prime_hex(self) -> Option<&'static str> {
        match self {
            DhGroup::Null => None,
            DhGroup::Ffdhe2048 => Some(ffdhe::FFDHE2048_P),
            DhGroup::Ffdhe3072 => Some(ffdhe::FFDHE3072_P),
            DhGroup::Ffdhe4096 => Some(ffdhe::FFDHE4096_P),
            DhGroup::Ffdhe6144 => Some(ffdhe::FFDHE6144_P),
            DhGroup::Ffdhe8192 => Some(ffdhe::FFDHE8192_P),
        }
    }
}

/// What the target allows (`nvmf_set_config` `dhchap_digests`, `dhchap_dhgroups`); every
/// digest and group unless an operator narrows it, as SPDK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    pub digests: Vec<Digest>,
    pub dhgroups: Vec<DhGroup>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { digests: Digest::ALL.to_vec(), dhgroups: DhGroup::ALL.to_vec() }
    }
}

/// AUTH_Failure reason code explanations (NVMe Base 2.0, Figure 463).
pub mod reason {
    pub const FAILED: u8 = 0x01;
    pub const PROTOCOL_UNUSABLE: u8 = 0x02;
    pub const SCC_MISMATCH: u8 = 0x03;
    pub const HASH_UNUSABLE: u8 = 0x04;
    pub const DHGROUP_UNUSABLE: u8 = 0x05;
    pub const INCORRECT_PAYLOAD: u8 = 0x06;
    pub const INCORRECT_PROTOCOL_MESSAGE: u8 = 0x07;
}

/// Why authentication could not run or failed, never carrying key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("DH-HMAC-CHAP secret: {0}")]
    Secret(#[from] secret::SecretError),
    #[error("the peer's Diffie-Hellman value is not valid for {0}")]
    BadPublicValue(&'static str),
    #[error("OpenSSL failed: {0}")]
    Crypto(String),
}

impl From<openssl::error::ErrorStack> for AuthError {
    fn from(err: openssl::error::ErrorStack) -> AuthError {
        AuthError::Crypto(err.to_string())
    }
}
