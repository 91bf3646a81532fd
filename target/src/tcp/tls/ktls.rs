//! Kernel TLS (kTLS): once OpenSSL has finished a handshake, the record layer moves into
//! the kernel, so reads and writes are plain socket calls that the kernel decrypts and
//! encrypts in place, with no copy through OpenSSL's buffers and the connection's
//! gathered writes going out as they are.
//!
//! OpenSSL reports each connection's TLS 1.3 application traffic secrets through its key
//! log callback; from them come the record keys and IVs (HKDF-Expand-Label "key" and
//! "iv", RFC 8446, 7.3), handed to the socket with `TCP_ULP "tls"` and `TLS_RX`/`TLS_TX`.
//! Both directions start at record sequence 0: the target sends no session tickets, and
//! OpenSSL reads one record at a time, so nothing after the client's Finished has been
//! read or written under those keys yet.
//!
//! It runs when `sock_impl_set_options -i ssl --enable-ktls` asks for it. Where the
//! kernel then has no `tls` module, the records stay in OpenSSL, as they do by default.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{setsockopt, sockopt};
use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslContextBuilder, SslRef};
use parking_lot::Mutex;
use zeroize::{Zeroize, Zeroizing};

use super::psk::{hkdf, KeyIs, PskHash};

/// `sock_impl_set_options -i ssl`'s `enable_ktls`. Off by default, as in SPDK: measured
/// side by side in the QEMU guest (`bench/ktls.sh`), the kernel's record layer ran at
/// 0.87x OpenSSL's IOPS at 4 KiB and 0.65x at 128 KiB, so it is an operator's choice
/// (for a kernel whose AES-GCM or NIC offload is faster), not a default.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Set once `TCP_ULP "tls"` has failed for want of the module, so later connections do
/// not ask again; cleared by turning kTLS on again (after `modprobe tls`, say).
static KERNEL_LACKS_TLS: AtomicBool = AtomicBool::new(false);

pub fn set_enabled(enabled: bool) {
    if enabled {
        KERNEL_LACKS_TLS.store(false, Ordering::Relaxed);
    }
    ENABLED.store(enabled, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether a connection should try: enabled, and not already known to be missing.
pub(super) fn worth_trying() -> bool {
    enabled() && !KERNEL_LACKS_TLS.load(Ordering::Relaxed)
}

/// A connection's application traffic secrets, as OpenSSL's key log reports them.
#[derive(Default)]
pub(super) struct TrafficSecrets {
    client: Mutex<Option<Zeroizing<Vec<u8>>>>,
    server: Mutex<Option<Zeroizing<Vec<u8>>>>,
}

fn secrets_index() -> Index<Ssl, TrafficSecrets> {
    static INDEX: OnceLock<Index<Ssl, TrafficSecrets>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL has room for an ex_data index"))
}

/// Lets the connections of `builder`'s context report their traffic secrets. Only a
/// connection that was given a [`TrafficSecrets`] by [`collect_secrets`] keeps them.
pub(super) fn report_secrets(builder: &mut SslContextBuilder) {
    builder.set_keylog_callback(|ssl, line| {
        let Some(secrets) = ssl.ex_data(secrets_index()) else { return };
        let mut fields = line.split(' ');
        let slot = match fields.next() {
            Some("CLIENT_TRAFFIC_SECRET_0") => &secrets.client,
            Some("SERVER_TRAFFIC_SECRET_0") => &secrets.server,
            _ => return,
        };
        // The client random, then the secret, in hex.
        if let Some(secret) = fields.nth(1).and_then(decode_hex) {
            *slot.lock() = Some(secret);
        }
    });
}

/// Asks OpenSSL to keep this connection's traffic secrets for [`offload`].
pub(super) fn collect_secrets(ssl: &mut SslRef) {
    ssl.set_ex_data(secrets_index(), TrafficSecrets::default());
}

fn decode_hex(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(text.len() / 2));
    for pair in text.as_bytes().chunks(2) {
        let pair = std::str::from_utf8(pair).ok()?;
        bytes.push(u8::from_str_radix(pair, 16).ok()?);
    }
    Some(bytes)
}

/// Which directions the kernel now carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Offloaded {
    pub rx: bool,
    pub tx: bool,
}

/// Why a connection keeps OpenSSL's record layer, for one log line.
#[derive(Debug, thiserror::Error)]
pub enum NotOffloaded {
    #[error("the kernel has no TLS upper-layer protocol (load the tls module)")]
    NoKernelTls,
    #[error("{0}")]
    Other(String),
}

/// Moves the record layer of a connection whose handshake has just completed into the
/// kernel: receive first, then send. A failure before the receive side is set leaves
/// the socket as it was (the ULP alone passes bytes through untouched); should the send
/// side fail after it, reads come from the kernel and writes keep going through OpenSSL,
/// whose send state the receive side never touched.
pub(super) fn offload(ssl: &SslRef, tcp: &TcpStream) -> Result<Offloaded, NotOffloaded> {
    let other = |why: String| NotOffloaded::Other(why);
    let cipher = ssl.current_cipher().map(|cipher| cipher.name()).unwrap_or("none");
    let hash = match cipher {
        "TLS_AES_128_GCM_SHA256" => PskHash::Sha256,
        "TLS_AES_256_GCM_SHA384" => PskHash::Sha384,
        other_suite => return Err(other(format!("cipher suite {other_suite} has no kernel offload here"))),
    };
    if ssl.pending() > 0 {
        return Err(other("OpenSSL already holds decrypted bytes of this connection".into()));
    }
    let secrets = ssl.ex_data(secrets_index()).ok_or_else(|| other("no traffic secrets were collected".into()))?;
    let client =
        secrets.client.lock().take().ok_or_else(|| other("OpenSSL reported no client traffic secret".into()))?;
    let server =
        secrets.server.lock().take().ok_or_else(|| other("OpenSSL reported no server traffic secret".into()))?;
    let rx = crypto_info(hash, &client).map_err(other)?;
    let tx = crypto_info(hash, &server).map_err(other)?;
    match setsockopt(tcp, sockopt::TcpUlp::default(), b"tls") {
        Ok(()) => {}
        Err(Errno::ENOENT) => {
            KERNEL_LACKS_TLS.store(true, Ordering::Relaxed);
            return Err(NotOffloaded::NoKernelTls);
        }
        Err(err) => return Err(other(format!("TCP_ULP tls: {err}"))),
    }
    let result = setsockopt(tcp, sockopt::TcpTlsRx, &rx.0);
    if let Err(err) = result {
        return Err(other(format!("TLS_RX: {err}")));
    }
    let tx_set = setsockopt(tcp, sockopt::TcpTlsTx, &tx.0);
    Ok(Offloaded { rx: true, tx: tx_set.is_ok() })
}

/// The kernel's key material for one direction, wiped when it drops.
struct CryptoInfo(sockopt::TlsCryptoInfo);

impl Drop for CryptoInfo {
    fn drop(&mut self) {
        match &mut self.0 {
            sockopt::TlsCryptoInfo::Aes128Gcm(info) => {
                info.key.zeroize();
                info.iv.zeroize();
                info.salt.zeroize();
            }
            sockopt::TlsCryptoInfo::Aes256Gcm(info) => {
                info.key.zeroize();
                info.iv.zeroize();
                info.salt.zeroize();
            }
            sockopt::TlsCryptoInfo::Chacha20Poly1305(info) => {
                info.key.zeroize();
                info.iv.zeroize();
            }
        }
    }
}

/// The record key and IV of `secret` (RFC 8446, 7.3), laid out as the kernel takes
/// them for TLS 1.3 AES-GCM: the IV's first 4 bytes are the "salt", its last 8 the
/// "iv", and the record sequence number starts at 0.
fn crypto_info(hash: PskHash, secret: &[u8]) -> Result<CryptoInfo, String> {
    let derive = |label: &[u8], len: usize| {
        hkdf(hash, KeyIs::Pseudorandom, secret, label, &[], len).map_err(|err| err.to_string())
    };
    let write_iv = derive(b"tls13 iv", 12)?;
    let info = match hash {
        PskHash::Sha256 => {
            let key = derive(b"tls13 key", 16)?;
            let mut info = libc::tls12_crypto_info_aes_gcm_128 {
                info: libc::tls_crypto_info {
                    version: libc::TLS_1_3_VERSION,
                    cipher_type: libc::TLS_CIPHER_AES_GCM_128,
                },
                iv: [0; 8],
                key: [0; 16],
                salt: [0; 4],
                rec_seq: [0; 8],
            };
            info.key.copy_from_slice(&key);
            info.salt.copy_from_slice(&write_iv[..4]);
            info.iv.copy_from_slice(&write_iv[4..]);
            sockopt::TlsCryptoInfo::Aes128Gcm(info)
        }
        PskHash::Sha384 => {
            let key = derive(b"tls13 key", 32)?;
            let mut info = libc::tls12_crypto_info_aes_gcm_256 {
                info: libc::tls_crypto_info {
                    version: libc::TLS_1_3_VERSION,
                    cipher_type: libc::TLS_CIPHER_AES_GCM_256,
                },
                iv: [0; 8],
                key: [0; 32],
                salt: [0; 4],
                rec_seq: [0; 8],
            };
            info.key.copy_from_slice(&key);
            info.salt.copy_from_slice(&write_iv[..4]);
            info.iv.copy_from_slice(&write_iv[4..]);
            sockopt::TlsCryptoInfo::Aes256Gcm(info)
        }
    };
    Ok(CryptoInfo(info))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// The kernel's fields of one direction: key, salt, iv, record sequence.
    fn fields(hash: PskHash, secret: &[u8]) -> (String, String, String, String) {
        let info = crypto_info(hash, secret).unwrap();
        let (key, salt, iv, seq, version) = match &info.0 {
            sockopt::TlsCryptoInfo::Aes128Gcm(i) => (hex(&i.key), hex(&i.salt), hex(&i.iv), hex(&i.rec_seq), i.info),
            sockopt::TlsCryptoInfo::Aes256Gcm(i) => (hex(&i.key), hex(&i.salt), hex(&i.iv), hex(&i.rec_seq), i.info),
            sockopt::TlsCryptoInfo::Chacha20Poly1305(_) => panic!("only AES-GCM is derived"),
        };
        assert_eq!(version.version, libc::TLS_1_3_VERSION);
        (key, salt, iv, seq)
    }

    #[test]
    fn record_keys_match_rfc_8448() {
        // RFC 8448, 3 (Simple 1-RTT Handshake): the server's application traffic secret
        // and the write key and IV derived from it.
        let secret = decode_hex("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643").unwrap();
        let (key, salt, iv, seq) = fields(PskHash::Sha256, &secret);
        assert_eq!(key, "9f02283b6c9c07efc26bb9f2ac92e356");
        assert_eq!(format!("{salt}{iv}"), "cf782b88dd83549aadf1e984");
        assert_eq!(seq, "0000000000000000");
    }

    #[test]
    fn sha384_record_keys_are_32_bytes() {
        // An independent HKDF-Expand-Label (Python's hmac module) over the secret 00..2f.
        let secret: Vec<u8> = (0..48).collect();
        let (key, salt, iv, _) = fields(PskHash::Sha384, &secret);
        assert_eq!(key, "6877d022f1c61d24ebb7487c16752d9a4798e40431c75b39320e537c90e23225");
        assert_eq!(format!("{salt}{iv}"), "42822531a0fe88648fc09e9f");
    }

    #[test]
    fn hex_secrets_decode_and_garbage_does_not() {
        assert_eq!(decode_hex("00ff7a").unwrap().as_slice(), &[0x00, 0xff, 0x7a]);
        for bad in ["0", "zz", "0g", "+1"] {
            assert!(decode_hex(bad).is_none(), "{bad}");
        }
    }
}
