//! TLS 1.3 for NVMe/TCP with pre-shared keys (NVMe/TCP 1.0, 3.6.1: the secure channel).
//!
//! A listener added with `secure_channel` wraps each accepted socket in a [`TlsSocket`]:
//! the server side of a TLS 1.3 handshake runs first, driven from the socket's readiness
//! like every other read, and then the record layer runs in user space through OpenSSL.
//! Only external PSKs authenticate: no certificates, no session tickets, no TLS 1.2, and
//! the two cipher suites NVMe/TCP names. The PSK is found by the identity the host
//! presents (`NVMe0R01 <hostnqn> <subnqn>`, or version 1's `NVMe1R01 <hostnqn> <subnqn>
//! <digest>`): the host must be listed on that subsystem with a `psk` (a keyring key
//! holding the interchange format, see [`psk`]), and the subsystem must have a secure
//! listener where the connection arrived.
//!
//! After the handshake the record layer moves into the kernel (kTLS) where it has the
//! `tls` module, and stays in OpenSSL where it does not (see [`ktls`]).

pub mod ktls;
pub mod psk;
mod socket;

use std::net::SocketAddr;
use std::sync::OnceLock;

use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslContext, SslMethod, SslMode, SslOptions, SslRef, SslSessionCacheMode, SslVersion};
use peerless_core::keyring::{KeyRef, Keyring};
use peerless_core::rpc::RpcError;
use spdk_sys::tls_psk;
pub use spdk_sys::tls_psk::{set_client_offer, PskSuite};
use zeroize::Zeroizing;

pub use socket::TlsSocket;

use self::psk::{ConfiguredPsk, Identity, PskHash};
use crate::nvmf::connect::TlsPeer;
use crate::nvmf::NvmfTarget;

/// The TLS 1.3 cipher suites NVMe/TCP allows (NVMe/TCP 1.0, 3.6.1.2).
pub const CIPHER_SUITES: &str = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384";

/// Where the PSK callback leaves why it found no key, for the refusal's log line.
fn refusal_index() -> Index<Ssl, String> {
    static INDEX: OnceLock<Index<Ssl, String>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL has room for an ex_data index"))
}

/// Where the PSK callback leaves whom the identity named once it found the key: OpenSSL
/// does not keep a TLS 1.3 server's PSK identity for later.
fn peer_index() -> Index<Ssl, TlsPeer> {
    static INDEX: OnceLock<Index<Ssl, TlsPeer>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL has room for an ex_data index"))
}

/// Checks, when a host is added, that key `name` is a TLS PSK this target can use, so a
/// wrong key fails the RPC rather than every handshake.
pub fn resolve_psk(keyring: &Keyring, name: &str) -> Result<KeyRef, RpcError> {
    let key = keyring
        .get(name)
        .map_err(|err| RpcError::invalid_params(format!("psk: {err} (add it first with keyring_file_add_key)")))?;
    let secret = key.load().map_err(|err| RpcError::invalid_params(format!("psk: {err}")))?;
    ConfiguredPsk::parse(secret.bytes()).map_err(|err| {
        RpcError::invalid_params(format!("psk: key '{name}' is not a TLS PSK in interchange format: {err}"))
    })?;
    Ok(key)
}

/// The cipher suite a PSK of `hash` is used with (NVMe/TCP 1.0, 3.6.1.2): the TLS PSK is
/// as long as the suite's hash, and OpenSSL is handed both together.
pub fn suite_of(hash: PskHash) -> PskSuite {
    match hash {
        PskHash::Sha256 => PskSuite::Aes128GcmSha256,
        PskHash::Sha384 => PskSuite::Aes256GcmSha384,
    }
}

/// The TLS context of one secure listener: its PSK callback looks keys up in `target`
/// for connections that arrived at `local`.
pub fn server_context(target: &NvmfTarget, local: SocketAddr) -> Result<SslContext, ErrorStack> {
    let target = target.clone();
    context_with(move |identity| find_psk(&target, local, identity))
}

/// What a PSK lookup answers: the TLS PSK, whom it belongs to and its hash, or why there
/// is none.
type Lookup = Result<(Zeroizing<Vec<u8>>, TlsPeer, PskHash), String>;

/// A server context whose PSKs come from `lookup`.
fn context_with(lookup: impl Fn(Option<&[u8]>) -> Lookup + Send + Sync + 'static) -> Result<SslContext, ErrorStack> {
    let mut builder = SslContext::builder(SslMethod::tls_server())?;
    builder.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    builder.set_max_proto_version(Some(SslVersion::TLS1_3))?;
    builder.set_ciphersuites(CIPHER_SUITES)?;
    // No resumption: every connection proves its PSK anew, and no ticket key to guard.
    builder.set_options(SslOptions::NO_TICKET);
    builder.set_num_tickets(0)?;
    builder.set_session_cache_mode(SslSessionCacheMode::OFF);
    // The connection's outbox retries a write from the same bytes, possibly from a
    // buffer that moved, and takes partial writes.
    builder.set_mode(SslMode::ENABLE_PARTIAL_WRITE | SslMode::ACCEPT_MOVING_WRITE_BUFFER);
    // The PSK goes to OpenSSL as a session with its cipher suite, so a 48-byte PSK
    // selects TLS_AES_256_GCM_SHA384 (the `openssl` crate's own PSK callback would
    // assume SHA-256).
    let lookup = move |ssl: &mut SslRef, identity: &[u8]| {
        let identity = (!identity.is_empty()).then_some(identity);
        match lookup(identity) {
            Ok((psk, peer, hash)) => {
                ssl.set_ex_data(peer_index(), peer);
                Some((psk, suite_of(hash)))
            }
            Err(why) => {
                ssl.set_ex_data(refusal_index(), why);
                // No key: OpenSSL ends the handshake with an alert.
                None
            }
        }
    };
    tls_psk::set_server_lookup(&mut builder, Box::new(lookup));
    ktls::report_secrets(&mut builder);
    Ok(builder.build())
}

/// The TLS PSK for `identity` at listener `local`, or why there is none. The reason
/// names NQNs and key names, never key material.
fn find_psk(target: &NvmfTarget, local: SocketAddr, identity: Option<&[u8]>) -> Lookup {
    let identity = identity.ok_or("the host presented no PSK identity")?;
    let shown = || String::from_utf8_lossy(&identity[..identity.len().min(300)]).into_owned();
    let parsed = Identity::parse(identity)
        .ok_or_else(|| format!("PSK identity '{}' is not an NVMe retained-PSK identity", shown()))?;
    let subsystem = target
        .find_subsystem(&parsed.subnqn)
        .ok_or_else(|| format!("PSK identity names subsystem '{}', which does not exist", parsed.subnqn))?;
    if !subsystem.listener_secure(crate::tcp::TRTYPE, local) {
        return Err(format!("subsystem '{}' has no secure_channel listener at {local}", parsed.subnqn));
    }
    if !subsystem.host_allowed(&parsed.hostnqn) {
        return Err(format!("host '{}' is not allowed on '{}'", parsed.hostnqn, parsed.subnqn));
    }
    let key = subsystem
        .host_psk(&parsed.hostnqn)
        .ok_or_else(|| format!("host '{}' has no psk on '{}'", parsed.hostnqn, parsed.subnqn))?;
    let secret = key.load().map_err(|err| format!("psk of host '{}': {err}", parsed.hostnqn))?;
    let configured = ConfiguredPsk::parse(secret.bytes()).map_err(|err| format!("key '{}': {err}", key.name()))?;
    if configured.cipher_hash() != parsed.cipher {
        return Err(format!(
            "PSK identity asks for {} but key '{}' is for {}",
            parsed.cipher.cipher_suite(),
            key.name(),
            configured.cipher_hash().cipher_suite()
        ));
    }
    if let Some(presented) = &parsed.digest {
        // The digest binds a version-1 identity to its key: a host holding another key
        // for the same pair of NQNs presents another digest, and is told so here
        // rather than by a failed binder.
        let expected = configured.digest(&parsed.hostnqn, &parsed.subnqn).map_err(|err| err.to_string())?;
        if presented.len() != expected.len() || !openssl::memcmp::eq(presented.as_bytes(), expected.as_bytes()) {
            return Err(format!(
                "PSK identity's digest does not match key '{}' of host '{}': the host holds another key",
                key.name(),
                parsed.hostnqn
            ));
        }
    }
    let psk = configured.tls_psk(&parsed).map_err(|err| err.to_string())?;
    Ok((psk, TlsPeer { hostnqn: parsed.hostnqn, subnqn: parsed.subnqn }, parsed.cipher))
}

/// Who a completed handshake's identity named.
fn peer_of(ssl: &SslRef) -> Option<TlsPeer> {
    ssl.ex_data(peer_index()).cloned()
}

#[cfg(test)]
mod tests;
