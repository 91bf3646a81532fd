//! The server side over real loopback sockets, with PSKs from a fixed lookup: the
//! handshake runs only as far as what has arrived, a read never waits, decrypted bytes
//! OpenSSL holds are reported, and refusals say why.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::thread;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use openssl::ssl::{Ssl, SslContext, SslMethod, SslStream, SslVersion};

use super::*;
use crate::tcp::socket::Socket;

const IDENTITY: &str = "NVMe0R01 nqn.test-host nqn.test-subsys";
const KEY: [u8; 32] = [7; 32];

fn peer() -> TlsPeer {
    TlsPeer { hostnqn: "nqn.test-host".into(), subnqn: "nqn.test-subsys".into() }
}

fn server(answer: Lookup) -> SslContext {
    context_with(move |identity| {
        assert_eq!(identity, Some(IDENTITY.as_bytes()));
        answer.clone()
    })
    .unwrap()
}

/// A TLS 1.3 client with `key` for IDENTITY, handshaken over `tcp` (blocking).
fn handshake(tcp: TcpStream, key: [u8; 32]) -> Result<SslStream<TcpStream>, String> {
    let mut builder = SslContext::builder(SslMethod::tls_client()).unwrap();
    builder.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    builder.set_ciphersuites(CIPHER_SUITES).unwrap();
    builder.set_psk_client_callback(move |_, _, identity, psk| {
        identity[..IDENTITY.len()].copy_from_slice(IDENTITY.as_bytes());
        identity[IDENTITY.len()] = 0;
        psk[..key.len()].copy_from_slice(&key);
        Ok(key.len())
    });
    Ssl::new(&builder.build()).unwrap().connect(tcp).map_err(|err| err.to_string())
}

fn client(port: u16, key: [u8; 32]) -> Result<SslStream<TcpStream>, String> {
    handshake(TcpStream::connect(("127.0.0.1", port)).unwrap(), key)
}

/// Reads until `want` bytes came, waiting on the descriptor only when OpenSSL holds
/// nothing; counts the reads that found input OpenSSL had buffered.
fn read_all(socket: &mut TlsSocket, want: usize, chunk: usize) -> std::io::Result<(Vec<u8>, usize)> {
    let mut got = Vec::new();
    let mut buffered_reads = 0;
    while got.len() < want {
        let buffered = socket.has_buffered_input();
        let mut buf = vec![0u8; chunk];
        match socket.read(&mut buf) {
            Ok(0) => break,
            Ok(read) => {
                buffered_reads += usize::from(buffered);
                got.extend_from_slice(&buf[..read]);
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                assert!(!buffered, "OpenSSL said it held input, and the read found none");
                let mut fds = [PollFd::new(socket.fd().unwrap(), PollFlags::POLLIN)];
                nix::poll::poll(&mut fds, PollTimeout::from(5_000u16)).unwrap();
            }
            Err(err) => return Err(err),
        }
    }
    Ok((got, buffered_reads))
}

fn listen() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

#[test]
fn the_handshake_goes_as_far_as_input_allows_then_records_flow_both_ways() {
    let (listener, port) = listen();
    let (go, start) = mpsc::channel::<()>();
    let payload: Vec<u8> = (0..3 * 16384 + 100).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    let host = thread::spawn(move || {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        start.recv().unwrap();
        let mut tls = handshake(tcp, KEY).expect("handshake");
        tls.write_all(&sent).unwrap();
        let mut answer = [0u8; 5];
        tls.read_exact(&mut answer).unwrap();
        answer
    });
    let (tcp, _) = listener.accept().unwrap();
    let mut socket = TlsSocket::new(&server(Ok((Zeroizing::new(KEY.to_vec()), peer(), PskHash::Sha256))), tcp).unwrap();
    socket.prepare(0).unwrap();
    // Nothing has arrived: the handshake cannot start, and the read says so at once.
    let mut buf = [0u8; 64];
    assert_eq!(socket.read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
    assert_eq!(socket.write(b"early").unwrap_err().kind(), ErrorKind::WouldBlock, "nothing before the handshake");
    assert_eq!(socket.tls_peer(), None);
    go.send(()).unwrap();
    // Small reads leave the rest of each 16 KiB record decrypted inside OpenSSL, where
    // the descriptor does not show it: has_buffered_input must.
    let (got, buffered_reads) = read_all(&mut socket, payload.len(), 1000).unwrap();
    assert!(got == payload, "the records' bytes, in order");
    assert!(buffered_reads > 0, "no read found input OpenSSL held");
    assert_eq!(socket.tls_peer(), Some(peer()));
    let parts = [std::io::IoSlice::new(b"he"), std::io::IoSlice::new(b""), std::io::IoSlice::new(b"llo")];
    assert_eq!(socket.write_vectored(&parts).unwrap(), 5);
    assert_eq!(&host.join().unwrap(), b"hello");
    socket.shutdown();
}

#[test]
fn a_large_read_takes_every_whole_record_there_is() {
    let (listener, port) = listen();
    let payload: Vec<u8> = (0..8 * 16384).map(|i| (i % 249) as u8).collect();
    let sent = payload.clone();
    let host = thread::spawn(move || {
        let mut tls = client(port, KEY).unwrap();
        tls.write_all(&sent).unwrap();
        tls.shutdown().unwrap();
    });
    let (tcp, _) = listener.accept().unwrap();
    let mut socket = TlsSocket::new(&server(Ok((Zeroizing::new(KEY.to_vec()), peer(), PskHash::Sha256))), tcp).unwrap();
    socket.prepare(0).unwrap();
    let (got, _) = read_all(&mut socket, payload.len(), payload.len()).unwrap();
    assert!(got == payload);
    host.join().unwrap();
    // The host's close_notify reads as end of stream.
    let mut buf = [0u8; 16];
    let end = loop {
        match socket.read(&mut buf) {
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(socket.fd().unwrap(), PollFlags::POLLIN)];
                nix::poll::poll(&mut fds, PollTimeout::from(5_000u16)).unwrap();
            }
            other => break other,
        }
    };
    assert_eq!(end.unwrap(), 0);
}

/// Drives the server until its handshake ends, returning how it ended.
fn serve_one(listener: &TcpListener, context: &SslContext) -> std::io::Error {
    let (tcp, _) = listener.accept().unwrap();
    let mut socket = TlsSocket::new(context, tcp).unwrap();
    socket.prepare(0).unwrap();
    loop {
        let mut buf = [0u8; 64];
        match socket.read(&mut buf) {
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                let fd = socket.fd().unwrap();
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                nix::poll::poll(&mut fds, PollTimeout::from(5_000u16)).unwrap();
            }
            Err(err) => return err,
            Ok(read) => panic!("a refused handshake gave {read} bytes"),
        }
    }
}

#[test]
fn a_wrong_psk_or_a_failed_lookup_refuses_the_handshake_and_says_why() {
    let (listener, port) = listen();
    let host = thread::spawn(move || client(port, [8; 32]));
    let err = serve_one(&listener, &server(Ok((Zeroizing::new(KEY.to_vec()), peer(), PskHash::Sha256))));
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
    assert!(host.join().unwrap().is_err(), "the host with the wrong key got in");

    let host = thread::spawn(move || client(port, KEY));
    let err = serve_one(&listener, &server(Err("host 'nqn.test-host' has no psk on 'nqn.test-subsys'".into())));
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("has no psk"), "{err}");
    assert!(host.join().unwrap().is_err());
}

#[test]
fn plaintext_nvme_tcp_is_no_handshake() {
    let (listener, port) = listen();
    let host = thread::spawn(move || {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // An ICReq's common header: type 0, HLEN 128, PLEN 128.
        let mut icreq = [0u8; 128];
        icreq[2] = 128;
        icreq[4] = 128;
        tcp.write_all(&icreq).unwrap();
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest);
        rest
    });
    let err = serve_one(&listener, &server(Ok((Zeroizing::new(KEY.to_vec()), peer(), PskHash::Sha256))));
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let answer = host.join().unwrap();
    assert!(answer.first().is_none_or(|&byte| byte == 0x15), "only a TLS alert, never an ICResp: {answer:?}");
}

/// A client that offers its PSK as a session with its cipher suite, as the initiator does.
fn session_client(port: u16, key: Vec<u8>, suite: PskSuite) -> Result<SslStream<TcpStream>, String> {
    let mut builder = SslContext::builder(SslMethod::tls_client()).unwrap();
    builder.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    builder.set_ciphersuites(suite.name()).unwrap();
    let offer = move |_: &mut SslRef| Some((IDENTITY.as_bytes().to_vec(), Zeroizing::new(key.clone()), suite));
    set_client_offer(&mut builder, Box::new(offer));
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    Ssl::new(&builder.build()).unwrap().connect(tcp).map_err(|err| err.to_string())
}

#[test]
fn each_psk_length_negotiates_its_own_cipher_suite_and_a_mismatch_is_refused() {
    for (hash, len) in [(PskHash::Sha384, 48), (PskHash::Sha256, 32)] {
        let (listener, port) = listen();
        let key: Vec<u8> = (0..len as u8).collect();
        let host_key = key.clone();
        let host = thread::spawn(move || {
            let mut tls = session_client(port, host_key, suite_of(hash))?;
            tls.write_all(b"ping").map_err(|err| err.to_string())?;
            Ok::<_, String>(tls.ssl().current_cipher().map(|cipher| cipher.standard_name().unwrap_or("?").to_string()))
        });
        let (tcp, _) = listener.accept().unwrap();
        let mut socket = TlsSocket::new(&server(Ok((Zeroizing::new(key), peer(), hash))), tcp).unwrap();
        socket.prepare(0).unwrap();
        let (got, _) = read_all(&mut socket, 4, 64).unwrap();
        assert_eq!(got, b"ping", "{hash:?}");
        let cipher = host.join().unwrap().unwrap();
        assert_eq!(cipher.as_deref(), Some(hash.cipher_suite()), "{hash:?}");
        assert_eq!(socket.tls_peer(), Some(peer()));
    }
    // The host's 48-byte key for SHA-384 against the server's 32-byte one for SHA-256.
    let (listener, port) = listen();
    let host = thread::spawn(move || session_client(port, vec![3; 48], PskSuite::Aes256GcmSha384));
    let err = serve_one(&listener, &server(Ok((Zeroizing::new(KEY.to_vec()), peer(), PskHash::Sha256))));
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(host.join().unwrap().is_err(), "a host with a key of the other suite got in");
}
