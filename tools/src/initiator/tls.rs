//! The host side of the NVMe/TCP secure channel (NVMe/TCP 1.0, 3.6.1): a TLS 1.3
//! handshake with the PSK derived from the host's configured key, before ICReq. The
//! record layer then runs in OpenSSL, and the connection's socket becomes a [`Stream`].

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;

use openssl::ssl::{Ssl, SslContext, SslMethod, SslMode, SslOptions, SslStream, SslVersion};
use peerless_target::tcp::tls::psk::ConfiguredPsk;
use peerless_target::tcp::tls::{set_client_offer, suite_of};
use zeroize::Zeroizing;

use super::error::{Error, Result};

/// A host's configured PSK (interchange format); Debug output never shows it.
#[derive(Clone)]
pub struct HostTls {
    interchange: Arc<Zeroizing<String>>,
    /// The PSK identity version presented: 0 (`NVMe0R..`, the default) or 1
    /// (`NVMe1R.. <digest>`).
    identity_version: u8,
}

impl std::fmt::Debug for HostTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostTls(<PSK redacted>)")
    }
}

impl HostTls {
    /// Checks the key's form now, so a typo fails before connecting.
    pub fn new(interchange: &str) -> Result<HostTls> {
        ConfiguredPsk::parse(interchange.as_bytes()).map_err(|err| Error::Invalid(format!("TLS PSK: {err}")))?;
        Ok(HostTls { interchange: Arc::new(Zeroizing::new(interchange.trim_end().to_string())), identity_version: 0 })
    }

    /// Presents a PSK identity of `version` (0 or 1; NVMe/TCP 1.0, 3.6.1.3).
    pub fn with_identity_version(self, version: u8) -> Result<HostTls> {
        if version > 1 {
            return Err(Error::Invalid(format!("TLS PSK identity version {version}: 0 or 1")));
        }
        Ok(HostTls { identity_version: version, ..self })
    }

    /// Reads the key from a file (what `nvme gen-tls-key` printed, saved 0600).
    pub fn from_file(path: &Path) -> Result<HostTls> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|err| Error::Invalid(format!("PSK file {}: {err}", path.display())))?,
        );
        HostTls::new(&text)
    }

    /// The TLS handshake over `tcp` as `hostnqn` to `subnqn`, blocking up to the
    /// socket's timeouts.
    pub fn handshake(&self, tcp: TcpStream, hostnqn: &str, subnqn: &str) -> Result<SslStream<TcpStream>> {
        let psk = ConfiguredPsk::parse(self.interchange.as_bytes())
            .map_err(|err| Error::Invalid(format!("TLS PSK: {err}")))?;
        let invalid = |err: peerless_target::tcp::tls::psk::PskError| Error::Invalid(err.to_string());
        let identity = psk.identity(self.identity_version, hostnqn, subnqn).map_err(invalid)?;
        let tls_psk = psk.tls_psk(&identity).map_err(invalid)?;
        let identity = identity.to_string();
        let tls_err = |what: &'static str| {
            move |err: openssl::error::ErrorStack| Error::Io {
                op: what,
                kind: io::ErrorKind::Other,
                message: err.to_string(),
            }
        };
        let mut builder = SslContext::builder(SslMethod::tls_client()).map_err(tls_err("TLS context"))?;
        builder.set_min_proto_version(Some(SslVersion::TLS1_3)).map_err(tls_err("TLS version"))?;
        builder.set_max_proto_version(Some(SslVersion::TLS1_3)).map_err(tls_err("TLS version"))?;
        let suite = suite_of(psk.cipher_hash());
        builder.set_ciphersuites(suite.name()).map_err(tls_err("TLS cipher suites"))?;
        builder.set_options(SslOptions::NO_TICKET);
        // The send buffer may grow (move) between a write the socket refused and its retry.
        builder.set_mode(SslMode::ENABLE_PARTIAL_WRITE | SslMode::ACCEPT_MOVING_WRITE_BUFFER);
        // Offered as a session with its cipher suite: a 48-byte PSK asks for
        // TLS_AES_256_GCM_SHA384, a 32-byte one for TLS_AES_128_GCM_SHA256.
        set_client_offer(&mut builder, Box::new(move |_| Some((identity.as_bytes().to_vec(), tls_psk.clone(), suite))));
        let context = builder.build();
        let ssl = Ssl::new(&context).map_err(tls_err("TLS session"))?;
        ssl.connect(tcp).map_err(|err| Error::Io {
            op: "TLS handshake",
            kind: io::ErrorKind::ConnectionRefused,
            message: format!("{err} (a wrong PSK, or a host or subsystem the target does not know?)"),
        })
    }
}

/// A connection's byte stream: plain TCP, or TLS over it.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref(),
        }
    }

    /// Input OpenSSL decrypted and holds while the socket shows nothing: read it first.
    pub fn has_buffered_input(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(tls) => tls.ssl().pending() > 0,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tcp().as_fd()
    }
}
