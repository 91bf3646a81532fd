//! OpenSSL's session-based external PSKs for TLS 1.3, which the `openssl` crate does not
//! wrap. Its PSK callbacks (`set_psk_server_callback`, `set_psk_client_callback`) are
//! OpenSSL's older ones, for which TLS 1.3 assumes a SHA-256 cipher suite; NVMe/TCP
//! (1.0, 3.6.1.2) also names TLS_AES_256_GCM_SHA384, whose 48-byte PSKs need the PSK
//! handed over as a session with its cipher suite (`SSL_CTX_set_psk_find_session_callback`
//! on the server, `SSL_CTX_set_psk_use_session_callback` on the client, OpenSSL 1.1.1+).
//!
//! The lookups are Rust closures kept in the context's ex_data; the C trampolines below
//! find them there. A lookup that finds nothing makes the handshake fail with an alert.

use std::os::raw::{c_int, c_uchar};
use std::sync::OnceLock;

use foreign_types::ForeignTypeRef;
use openssl::ex_data::Index;
use openssl::ssl::{SslContext, SslContextBuilder, SslRef};
use openssl_sys::{EVP_MD, SSL, SSL_CIPHER, SSL_CTX, SSL_SESSION};
use zeroize::Zeroizing;

/// The TLS 1.3 cipher suites NVMe/TCP allows, each with the PSK length its hash takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PskSuite {
    Aes128GcmSha256,
    Aes256GcmSha384,
}

impl PskSuite {
    /// The suite's name as OpenSSL's `set_ciphersuites` takes it. A client offers only
    /// its PSK's suite: an OpenSSL server picks the suite by the client's preference
    /// before it looks at the PSK, and ignores a PSK whose hash is not the suite's.
    pub fn name(self) -> &'static str {
        match self {
            PskSuite::Aes128GcmSha256 => "TLS_AES_128_GCM_SHA256",
            PskSuite::Aes256GcmSha384 => "TLS_AES_256_GCM_SHA384",
        }
    }

    /// The suite's two-byte code (RFC 8446, B.4).
    fn code(self) -> [u8; 2] {
        match self {
            PskSuite::Aes128GcmSha256 => [0x13, 0x01],
            PskSuite::Aes256GcmSha384 => [0x13, 0x02],
        }
    }
}

/// A server's lookup: the PSK for an identity, and the suite it is for.
pub type ServerLookup = Box<dyn Fn(&mut SslRef, &[u8]) -> Option<(Zeroizing<Vec<u8>>, PskSuite)> + Send + Sync>;

/// A client's offer: its identity, PSK and suite.
pub type ClientOffer = Box<dyn Fn(&mut SslRef) -> Option<(Vec<u8>, Zeroizing<Vec<u8>>, PskSuite)> + Send + Sync>;

fn server_index() -> Index<SslContext, ServerLookup> {
    static INDEX: OnceLock<Index<SslContext, ServerLookup>> = OnceLock::new();
    *INDEX.get_or_init(|| SslContext::new_ex_index().expect("OpenSSL has room for an ex_data index"))
}

fn client_index() -> Index<SslContext, ClientOffer> {
    static INDEX: OnceLock<Index<SslContext, ClientOffer>> = OnceLock::new();
    *INDEX.get_or_init(|| SslContext::new_ex_index().expect("OpenSSL has room for an ex_data index"))
}

/// Where a client's identity lives while OpenSSL reads it: it takes a pointer that must
/// stay valid until the handshake has sent it, so it is kept in the connection.
fn identity_index() -> Index<openssl::ssl::Ssl, Vec<u8>> {
    static INDEX: OnceLock<Index<openssl::ssl::Ssl, Vec<u8>>> = OnceLock::new();
    *INDEX.get_or_init(|| openssl::ssl::Ssl::new_ex_index().expect("OpenSSL has room for an ex_data index"))
}

const TLS1_3_VERSION: c_int = 0x0304;

type FindSessionCallback = extern "C" fn(*mut SSL, *const c_uchar, usize, *mut *mut SSL_SESSION) -> c_int;
type UseSessionCallback =
    extern "C" fn(*mut SSL, *const EVP_MD, *mut *const c_uchar, *mut usize, *mut *mut SSL_SESSION) -> c_int;

extern "C" {
    fn SSL_CTX_set_psk_find_session_callback(ctx: *mut SSL_CTX, callback: Option<FindSessionCallback>);
    fn SSL_CTX_set_psk_use_session_callback(ctx: *mut SSL_CTX, callback: Option<UseSessionCallback>);
    fn SSL_CIPHER_find(ssl: *mut SSL, code: *const c_uchar) -> *const SSL_CIPHER;
    fn SSL_SESSION_new() -> *mut SSL_SESSION;
    fn SSL_SESSION_free(session: *mut SSL_SESSION);
    fn SSL_SESSION_set1_master_key(session: *mut SSL_SESSION, key: *const c_uchar, len: usize) -> c_int;
    fn SSL_SESSION_set_cipher(session: *mut SSL_SESSION, cipher: *const SSL_CIPHER) -> c_int;
    fn SSL_SESSION_set_protocol_version(session: *mut SSL_SESSION, version: c_int) -> c_int;
    fn EVP_MD_get_size(md: *const EVP_MD) -> c_int;
}

/// Makes `lookup` the server's source of PSKs for TLS 1.3.
pub fn set_server_lookup(builder: &mut SslContextBuilder, lookup: ServerLookup) {
    builder.set_ex_data(server_index(), lookup);
    // SAFETY: a live context under construction and a callback with OpenSSL's signature.
    unsafe { SSL_CTX_set_psk_find_session_callback(builder.as_ptr(), Some(find_session)) };
}

/// Makes `offer` the client's PSK for TLS 1.3.
pub fn set_client_offer(builder: &mut SslContextBuilder, offer: ClientOffer) {
    builder.set_ex_data(client_index(), offer);
    // SAFETY: a live context under construction and a callback with OpenSSL's signature.
    unsafe { SSL_CTX_set_psk_use_session_callback(builder.as_ptr(), Some(use_session)) };
}

/// A session carrying `key` for `suite`, as OpenSSL takes an external PSK; None if
/// OpenSSL refuses any part of it.
///
/// # Safety
/// `ssl` must be the live connection whose handshake asks for the session.
unsafe fn psk_session(ssl: *mut SSL, key: &[u8], suite: PskSuite) -> Option<*mut SSL_SESSION> {
    let code = suite.code();
    // SAFETY: a live connection and a two-byte code, which OpenSSL reads whole.
    let cipher = unsafe { SSL_CIPHER_find(ssl, code.as_ptr()) };
    if cipher.is_null() {
        return None;
    }
    // SAFETY: no arguments; a null result is handled.
    let session = unsafe { SSL_SESSION_new() };
    if session.is_null() {
        return None;
    }
    // SAFETY: a fresh session; the key is copied by OpenSSL (set1), so it may go after.
    let set = unsafe {
        SSL_SESSION_set1_master_key(session, key.as_ptr(), key.len()) == 1
            && SSL_SESSION_set_cipher(session, cipher) == 1
            && SSL_SESSION_set_protocol_version(session, TLS1_3_VERSION) == 1
    };
    if !set {
        // SAFETY: the session is ours and nobody else holds it.
        unsafe { SSL_SESSION_free(session) };
        return None;
    }
    Some(session)
}

/// OpenSSL's server callback: 1 with a session (the PSK found) or a null one (none found,
/// the handshake fails); 0 would abort it without an alert.
extern "C" fn find_session(
    ssl: *mut SSL,
    identity: *const c_uchar,
    identity_len: usize,
    session: *mut *mut SSL_SESSION,
) -> c_int {
    // SAFETY: OpenSSL passes a valid out-pointer.
    unsafe { *session = std::ptr::null_mut() };
    // SAFETY: OpenSSL passes the connection whose handshake is running, which no Rust
    // reference holds during the call.
    let ssl_ref = unsafe { SslRef::from_ptr_mut(ssl) };
    let Some(lookup) = ssl_ref.ssl_context().ex_data(server_index()) else { return 1 };
    // The context outlives this call, and the lookup with it; a raw pointer ends the
    // borrow of `ssl_ref` that `ex_data` began, so the lookup may take it mutably.
    let lookup: *const ServerLookup = lookup;
    let identity = if identity.is_null() || identity_len == 0 {
        &[][..]
    } else {
        // SAFETY: OpenSSL passes `identity_len` readable bytes.
        unsafe { std::slice::from_raw_parts(identity, identity_len) }
    };
    // SAFETY: see above: the lookup lives in the context for the whole handshake.
    let found = unsafe { &*lookup }(ssl_ref, identity);
    if let Some((key, suite)) = found {
        // SAFETY: the live connection OpenSSL passed in.
        if let Some(made) = unsafe { psk_session(ssl, &key, suite) } {
            // SAFETY: a valid out-pointer; OpenSSL takes ownership of the session.
            unsafe { *session = made };
        }
    }
    1
}

/// OpenSSL's client callback: 1 with the identity and a session, or 1 with none (no PSK
/// to offer); 0 aborts. `md` is the hash of a suite already chosen by an earlier
/// handshake message (HelloRetryRequest); a PSK for another hash is then not offered.
extern "C" fn use_session(
    ssl: *mut SSL,
    md: *const EVP_MD,
    identity: *mut *const c_uchar,
    identity_len: *mut usize,
    session: *mut *mut SSL_SESSION,
) -> c_int {
    // SAFETY: OpenSSL passes valid out-pointers.
    unsafe {
        *session = std::ptr::null_mut();
        *identity = std::ptr::null();
        *identity_len = 0;
    }
    // SAFETY: as in `find_session`.
    let ssl_ref = unsafe { SslRef::from_ptr_mut(ssl) };
    let Some(offer) = ssl_ref.ssl_context().ex_data(client_index()) else { return 1 };
    let offer: *const ClientOffer = offer;
    // SAFETY: the offer lives in the context for the whole handshake.
    let Some((id, key, suite)) = (unsafe { &*offer })(ssl_ref) else { return 1 };
    if !md.is_null() {
        // Compared by size: OpenSSL 3 may pass a fetched digest, not the static one.
        // SAFETY: a digest OpenSSL passed in.
        let size = unsafe { EVP_MD_get_size(md) };
        let wanted = match suite {
            PskSuite::Aes128GcmSha256 => 32,
            PskSuite::Aes256GcmSha384 => 48,
        };
        if size != wanted {
            return 1;
        }
    }
    // SAFETY: the live connection OpenSSL passed in.
    let Some(made) = (unsafe { psk_session(ssl, &key, suite) }) else { return 0 };
    ssl_ref.set_ex_data(identity_index(), id);
    let Some(kept) = ssl_ref.ex_data(identity_index()) else {
        // SAFETY: the session is ours and was not handed over.
        unsafe { SSL_SESSION_free(made) };
        return 0;
    };
    // SAFETY: valid out-pointers; the identity lives in the connection's ex_data until
    // it is freed, and OpenSSL takes ownership of the session.
    unsafe {
        *identity = kept.as_ptr();
        *identity_len = kept.len();
        *session = made;
    }
    1
}
