//! One NVMe/TCP connection from the host's side (NVMe/TCP 1.0): the ICReq/ICResp
//! handshake, a receive buffer that yields every complete PDU it holds (validated, header
//! and data digests checked), and a send buffer that batches PDUs into few syscalls.
//! Both buffers are sized once per connection, so steady-state I/O allocates nothing.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use peerless_core::accel::crc32c_bytes;
use peerless_target::nvme::{le16, le32};
use peerless_target::tcp::pdu::{
    self, pdu_type, validate, CommonHeader, Digests, Fatal, IcReq, IcResp, Layout, Receiver, COMMON_HEADER_BYTES,
    DIGEST_BYTES, IC_BYTES, MAX_HEADER_BYTES,
};

use super::error::{Error, Result};
use super::tls::{HostTls, Stream};

/// What a TLS connection needs: the host's key and the NQNs its identity names.
#[derive(Clone, Copy)]
pub(crate) struct TlsLogin<'a> {
    pub key: &'a HostTls,
    pub hostnqn: &'a str,
    pub subnqn: &'a str,
}

/// Largest data transfer of one command this initiator moves (and so the largest C2HData
/// PDU it accepts): sizes the receive buffer.
pub const MAX_TRANSFER_BYTES: usize = 1 << 20;
/// MAXH2CDATA below this is a spec violation (NVMe/TCP 1.0, 3.6.2.3: at least 4 KiB).
const MIN_MAXH2CDATA: u32 = 4096;
/// Room for one PDU header with both digests on either side of the largest data.
const PDU_OVERHEAD_BYTES: usize = MAX_HEADER_BYTES + 2 * DIGEST_BYTES;
/// The send buffer flushes itself once this much is queued, so a burst of large writes
/// does not grow it without bound.
pub const TX_FLUSH_BYTES: usize = 256 * 1024;
/// Bytes read from the socket per `fill` call at most, so one busy queue cannot starve
/// the others one thread drives.
const RX_READ_BYTES: usize = 256 * 1024;
/// The data of a raw PDU may be at most this large (a TermReq quotes 128 bytes).
const RAW_PDU_MAX_BYTES: usize = MAX_TRANSFER_BYTES + PDU_OVERHEAD_BYTES;

/// What the controller granted in its ICResp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub digests: Digests,
    /// Largest H2CData PDU data the controller accepts.
    pub maxh2cdata: u32,
}

/// A PDU as it arrived, for tests that look at the wire (`QueuePair::recv_pdu`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawPdu {
    pub header: CommonHeader,
    /// The whole PDU: header, digests, data.
    pub bytes: Vec<u8>,
}

impl RawPdu {
    /// FES and FEI if this is a TermReq.
    pub fn term_req(&self) -> Option<(u16, u32)> {
        let is_term = matches!(self.header.pdu_type, pdu_type::C2H_TERM_REQ | pdu_type::H2C_TERM_REQ);
        is_term.then(|| (le16(&self.bytes, 8), le32(&self.bytes, 10)))
    }
}

/// A validated PDU in the receive buffer.
pub(crate) struct Pdu<'a> {
    pub layout: Layout,
    pub bytes: &'a [u8],
    /// False when the PDU carried a data digest that did not match its data.
    pub data_digest_ok: bool,
}

impl Pdu<'_> {
    pub fn data(&self) -> &[u8] {
        &self.bytes[self.layout.data_offset..self.layout.data_offset + self.layout.data_len]
    }
}

/// The first part of a C2HData PDU whose data continues on the socket.
pub(crate) struct Partial<'a> {
    pub layout: Layout,
    /// Header and header digest.
    pub header: &'a [u8],
    /// The data received so far (less than `layout.data_len`).
    pub data: &'a [u8],
}

pub(crate) struct RxBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    digests: Digests,
    /// The last read filled all the room it was given: the socket may hold more.
    more: bool,
}

impl RxBuf {
    fn new(digests: Digests) -> RxBuf {
        RxBuf { buf: vec![0; MAX_TRANSFER_BYTES + 2 * PDU_OVERHEAD_BYTES], start: 0, end: 0, digests, more: false }
    }

    /// Reads what the socket has (non-blocking). Ok(0): nothing yet.
    pub fn fill(&mut self, stream: &mut impl Read) -> Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.start + self.room_needed() > self.buf.len() {
            // The PDU at `start` would not fit where it is; the buffer holds the largest one.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let limit = (self.end + RX_READ_BYTES).min(self.buf.len());
        if limit == self.end {
            return Ok(0);
        }
        match stream.read(&mut self.buf[self.end..limit]) {
            Ok(0) => Err(Error::Closed),
            Ok(read) => {
                self.more = self.end + read == limit;
                self.end += read;
                Ok(read)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(0),
            Err(e) => Err(Error::io("receive", &e)),
        }
    }

    /// Whether another read now would likely find data (the last one was not short).
    pub fn more(&self) -> bool {
        self.more
    }

    /// Bytes the PDU at `start` occupies once complete (a header's worth while its length
    /// is unknown), never more than the buffer.
    fn room_needed(&self) -> usize {
        let pending = self.pending();
        let plen = if pending.len() >= COMMON_HEADER_BYTES { le32(pending, 4) as usize } else { 0 };
        plen.max(PDU_OVERHEAD_BYTES).min(self.buf.len())
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The next complete PDU, validated. A fatal problem queues an H2CTermReq on `tx`
    /// (NVMe/TCP 1.0, 3.6.2.4) and returns the error that ends the connection.
    pub fn next(&mut self, tx: &mut TxBuf) -> Result<Option<Pdu<'_>>> {
        let pending = self.pending();
        if pending.len() < COMMON_HEADER_BYTES {
            return Ok(None);
        }
        let header = CommonHeader::parse(pending);
        if header.pdu_type == pdu_type::C2H_TERM_REQ && pending.len() >= pdu::TERM_HLEN {
            // The controller is ending the connection; its reasons are in the fixed header.
            return Err(Error::Terminated { fes: le16(pending, 8), fei: le32(pending, 10) });
        }
        let layout = match validate(header, Receiver::Host, self.digests, MAX_TRANSFER_BYTES) {
            Ok(layout) => layout,
            Err(fatal) => return Err(self.fatal(tx, fatal, format!("invalid PDU header {header:?}"))),
        };
        if pending.len() < layout.total {
            return Ok(None);
        }
        let hlen = usize::from(header.hlen);
        if layout.header_bytes > hlen && !pdu::header_digest_ok(pending, hlen) {
            let fatal = Fatal::new(pdu::fes::HEADER_DIGEST_ERROR, 0);
            self.fatal(tx, fatal, String::new());
            return Err(Error::HeaderDigest { pdu_type: header.pdu_type });
        }
        let data_digest_ok = !layout.data_digest || {
            let data = &pending[layout.data_offset..layout.data_offset + layout.data_len];
            let trailer = &pending[layout.data_offset + layout.data_len..layout.total];
            crc32c_bytes(data, 0).to_le_bytes() == trailer
        };
        let range = self.start..self.start + layout.total;
        self.start += layout.total;
        Ok(Some(Pdu { layout, bytes: &self.buf[range], data_digest_ok }))
    }

    /// A C2HData PDU of at least `min_data` bytes whose header (digest checked) is here
    /// but whose data is still arriving: the header and the data so far are consumed, so
    /// the rest can be read from the socket straight into the command's buffer.
    pub fn take_partial_data(&mut self, tx: &mut TxBuf, min_data: usize) -> Result<Option<Partial<'_>>> {
        let pending = self.pending();
        if pending.len() < COMMON_HEADER_BYTES {
            return Ok(None);
        }
        let header = CommonHeader::parse(pending);
        if header.pdu_type != pdu_type::C2H_DATA {
            return Ok(None);
        }
        // An invalid header is `next`'s to report; here it only means "not this path".
        let Ok(layout) = validate(header, Receiver::Host, self.digests, MAX_TRANSFER_BYTES) else { return Ok(None) };
        let data_end = layout.data_offset + layout.data_len;
        if layout.data_len < min_data || pending.len() < layout.data_offset || pending.len() >= data_end {
            return Ok(None);
        }
        let hlen = usize::from(header.hlen);
        if layout.header_bytes > hlen && !pdu::header_digest_ok(pending, hlen) {
            self.fatal(tx, Fatal::new(pdu::fes::HEADER_DIGEST_ERROR, 0), String::new());
            return Err(Error::HeaderDigest { pdu_type: header.pdu_type });
        }
        let start = self.start;
        self.start = self.end;
        let header = &self.buf[start..start + layout.data_offset];
        let data = &self.buf[start + layout.data_offset..self.end];
        Ok(Some(Partial { layout, header, data }))
    }

    fn fatal(&self, tx: &mut TxBuf, fatal: Fatal, what: String) -> Error {
        let pending = self.pending();
        let quoted = &pending[..pending.len().min(MAX_HEADER_BYTES)];
        tx.push(&pdu::term_req(pdu_type::H2C_TERM_REQ, fatal, quoted));
        Error::Protocol(format!("{what}: FES {:#x} FEI {:#x}", fatal.fes, fatal.fei))
    }

    /// The next complete PDU as bytes, without validation (tests).
    fn next_raw(&mut self) -> Result<Option<RawPdu>> {
        let pending = self.pending();
        if pending.len() < COMMON_HEADER_BYTES {
            return Ok(None);
        }
        let header = CommonHeader::parse(pending);
        let total = header.plen as usize;
        if !(COMMON_HEADER_BYTES..=RAW_PDU_MAX_BYTES).contains(&total) {
            return Err(Error::Protocol(format!("PDU length {total} out of range")));
        }
        if pending.len() < total {
            return Ok(None);
        }
        let bytes = pending[..total].to_vec();
        self.start += total;
        Ok(Some(RawPdu { header, bytes }))
    }
}

/// PDUs waiting to go out. Appending copies the bytes once; `flush` writes as much as the
/// socket takes without blocking.
pub(crate) struct TxBuf {
    buf: Vec<u8>,
    sent: usize,
}

impl TxBuf {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn is_empty(&self) -> bool {
        self.sent == self.buf.len()
    }

    pub fn len(&self) -> usize {
        self.buf.len() - self.sent
    }

    pub fn flush(&mut self, stream: &mut impl Write) -> Result<()> {
        while self.sent < self.buf.len() {
            match stream.write(&self.buf[self.sent..]) {
                Ok(0) => return Err(Error::Closed),
                Ok(written) => self.sent += written,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("send", &e)),
            }
        }
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        }
        Ok(())
    }
}

/// A connected, handshaken NVMe/TCP connection in non-blocking mode.
pub(crate) struct Transport {
    pub stream: Stream,
    pub rx: RxBuf,
    pub tx: TxBuf,
    pub negotiated: Negotiated,
}

impl Transport {
    /// Connects (with a TLS handshake first when `tls` names the key and the NQNs) and
    /// exchanges ICReq/ICResp, asking for `digests`.
    pub fn connect(
        addr: SocketAddr,
        digests: Digests,
        timeout: Duration,
        tls: Option<TlsLogin<'_>>,
    ) -> Result<Transport> {
        let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| Error::io("connect", &e))?;
        // Commands are small and latency-bound; never let Nagle hold one back.
        tcp.set_nodelay(true).map_err(|e| Error::io("set TCP_NODELAY", &e))?;
        tcp.set_read_timeout(Some(timeout)).map_err(|e| Error::io("set read timeout", &e))?;
        tcp.set_write_timeout(Some(timeout)).map_err(|e| Error::io("set write timeout", &e))?;
        let mut stream = match tls {
            None => Stream::Plain(tcp),
            Some(login) => Stream::Tls(Box::new(login.key.handshake(tcp, login.hostnqn, login.subnqn)?)),
        };
        let request = IcReq { pfv: 0, hpda: 0, digests, maxr2t: 0 };
        stream.write_all(&request.encode()).map_err(|e| Error::io("send ICReq", &e))?;
        let response = read_ic_resp(&mut stream)?;
        if response.pfv != 0 {
            return Err(Error::Unsupported(format!("PDU format version {}", response.pfv)));
        }
        if response.cpda != 0 {
            // Data in our PDUs follows the header directly; padding is not implemented.
            return Err(Error::Unsupported(format!("controller PDU data alignment (CPDA) {}", response.cpda)));
        }
        let granted = response.digests;
        if (granted.header && !digests.header) || (granted.data && !digests.data) {
            return Err(Error::Protocol(format!("ICResp enabled digests that were not asked for: {granted:?}")));
        }
        if response.maxh2cdata < MIN_MAXH2CDATA {
            return Err(Error::Protocol(format!("ICResp MAXH2CDATA {} below 4096", response.maxh2cdata)));
        }
        let tcp = stream.tcp();
        tcp.set_read_timeout(None).map_err(|e| Error::io("clear read timeout", &e))?;
        tcp.set_write_timeout(None).map_err(|e| Error::io("clear write timeout", &e))?;
        tcp.set_nonblocking(true).map_err(|e| Error::io("set non-blocking", &e))?;
        let negotiated = Negotiated { digests: granted, maxh2cdata: response.maxh2cdata };
        Ok(Transport { stream, rx: RxBuf::new(granted), tx: TxBuf { buf: Vec::new(), sent: 0 }, negotiated })
    }

    /// Waits until the socket is readable (or writable, with `write`) or `deadline`
    /// passes (Ok(false)).
    pub fn wait_ready(&self, deadline: Instant, write: bool) -> Result<bool> {
        if self.stream.has_buffered_input() {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let events = if write { PollFlags::POLLIN | PollFlags::POLLOUT } else { PollFlags::POLLIN };
        let mut fds = [PollFd::new(self.stream.as_fd(), events)];
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            Ok(ready) => Ok(ready > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(Error::io("poll", &std::io::Error::from(e))),
        }
    }

    /// Flushes the send buffer completely, waiting for the socket as needed.
    pub fn flush_all(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.tx.flush(&mut self.stream)?;
            if self.tx.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let ms = timeout.as_millis() as u64;
                return Err(Error::Timeout { what: "the socket to take queued PDUs", ms });
            }
            let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLOUT)];
            // A timeout here only loops back to the deadline check.
            let _ = nix::poll::poll(&mut fds, PollTimeout::from(100u16));
        }
    }

    /// The next complete PDU as raw bytes, waiting up to `timeout`.
    pub fn recv_raw(&mut self, timeout: Duration) -> Result<RawPdu> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(raw) = self.rx.next_raw()? {
                return Ok(raw);
            }
            if self.rx.fill(&mut self.stream)? == 0 {
                if Instant::now() >= deadline {
                    return Err(Error::Timeout { what: "a PDU", ms: timeout.as_millis() as u64 });
                }
                self.wait_ready(deadline, false)?;
            }
        }
    }
}

/// Reads the ICResp (or a TermReq refusing the connection) in blocking mode.
fn read_ic_resp(stream: &mut impl Read) -> Result<IcResp> {
    let mut bytes = [0u8; IC_BYTES];
    read_exact(stream, &mut bytes[..COMMON_HEADER_BYTES])?;
    let header = CommonHeader::parse(&bytes);
    let layout = validate(header, Receiver::Host, Digests::default(), 0)
        .map_err(|f| Error::Protocol(format!("bad reply to ICReq: FES {:#x} FEI {:#x}", f.fes, f.fei)))?;
    read_exact(stream, &mut bytes[COMMON_HEADER_BYTES..layout.total.min(IC_BYTES)])?;
    match header.pdu_type {
        pdu_type::IC_RESP => Ok(IcResp::parse(&bytes)),
        pdu_type::C2H_TERM_REQ => Err(Error::Terminated { fes: le16(&bytes, 8), fei: le32(&bytes, 10) }),
        other => Err(Error::Protocol(format!("PDU type {other:#04x} in reply to ICReq"))),
    }
}

fn read_exact(stream: &mut impl Read, bytes: &mut [u8]) -> Result<()> {
    stream.read_exact(bytes).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => Error::Closed,
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Error::Timeout { what: "ICResp", ms: 0 },
        _ => Error::io("receive ICResp", &e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerless_target::nvme::{Cqe, Status};

    fn rx_with(bytes: &[u8], digests: Digests) -> RxBuf {
        let mut rx = RxBuf::new(digests);
        rx.buf[..bytes.len()].copy_from_slice(bytes);
        rx.end = bytes.len();
        rx
    }

    #[test]
    fn parses_every_complete_pdu_and_waits_for_partial_ones() {
        let digests = Digests { header: true, data: true };
        let resp = pdu::capsule_resp(&Cqe::new(7, Status::SUCCESS).encode(), digests);
        let mut wire = resp.as_slice().to_vec();
        wire.extend_from_slice(resp.as_slice());
        wire.extend_from_slice(&resp.as_slice()[..10]);
        let mut rx = rx_with(&wire, digests);
        let mut tx = TxBuf { buf: Vec::new(), sent: 0 };
        for _ in 0..2 {
            let pdu = rx.next(&mut tx).expect("valid").expect("complete");
            assert_eq!(pdu.layout.header.pdu_type, pdu_type::CAPSULE_RESP);
        }
        assert!(rx.next(&mut tx).expect("valid").is_none(), "a partial PDU waits");
        assert!(tx.is_empty());
    }

    #[test]
    fn bad_header_digest_is_an_error_and_queues_a_term_req() {
        let digests = Digests { header: true, data: false };
        let mut bytes = pdu::capsule_resp(&Cqe::new(1, Status::SUCCESS).encode(), digests).as_slice().to_vec();
        bytes[24] ^= 0xff;
        let mut rx = rx_with(&bytes, digests);
        let mut tx = TxBuf { buf: Vec::new(), sent: 0 };
        assert_eq!(rx.next(&mut tx).err(), Some(Error::HeaderDigest { pdu_type: pdu_type::CAPSULE_RESP }));
        assert_eq!(tx.buf[0], pdu_type::H2C_TERM_REQ);
        assert_eq!(le16(&tx.buf, 8), pdu::fes::HEADER_DIGEST_ERROR);
    }

    #[test]
    fn bad_data_digest_is_flagged_not_fatal() {
        let digests = Digests { header: false, data: true };
        let header = pdu::DataHeader { cccid: 3, ttag: 0, offset: 0, length: 4 };
        let mut bytes = pdu::data_pdu(pdu_type::C2H_DATA, header, 0, digests).as_slice().to_vec();
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        let mut rx = rx_with(&bytes, digests);
        let mut tx = TxBuf { buf: Vec::new(), sent: 0 };
        let pdu = rx.next(&mut tx).expect("valid").expect("complete");
        assert!(!pdu.data_digest_ok);
        assert_eq!(pdu.data(), &[1, 2, 3, 4]);
    }

    #[test]
    fn wrong_direction_pdu_is_fatal() {
        let cmd = pdu::capsule_cmd(&[0; 64], 0, Digests::default());
        let mut rx = rx_with(cmd.as_slice(), Digests::default());
        let mut tx = TxBuf { buf: Vec::new(), sent: 0 };
        assert!(matches!(rx.next(&mut tx), Err(Error::Protocol(_))));
        assert_eq!(le16(&tx.buf, 8), pdu::fes::INVALID_HEADER_FIELD);
    }
}

#[cfg(test)]
mod stream_tests {
    //! The receive buffer against arbitrary TCP segmentation: whatever sizes the bytes
    //! arrive in, every PDU comes out whole, in order, with its data intact.

    use super::*;
    use peerless_target::nvme::{Cqe, Status};
    use proptest::prelude::*;

    /// Hands out `bytes` in the given chunk sizes, then WouldBlock, like a non-blocking socket.
    struct Chunked {
        bytes: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        turn: usize,
    }

    impl Read for Chunked {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.bytes.len() {
                return Err(ErrorKind::WouldBlock.into());
            }
            let size = self.sizes[self.turn % self.sizes.len()].max(1);
            self.turn += 1;
            let n = size.min(out.len()).min(self.bytes.len() - self.at);
            out[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    /// (cid, data length) pairs become CapsuleResps (length 0) or C2HData PDUs.
    fn wire(pdus: &[(u16, usize)], digests: Digests) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (cid, len) in pdus {
            if *len == 0 {
                bytes.extend_from_slice(
                    pdu::capsule_resp(&Cqe::new(*cid, Status::SUCCESS).encode(), digests).as_slice(),
                );
                continue;
            }
            let header = pdu::DataHeader { cccid: *cid, ttag: 0, offset: 0, length: *len as u32 };
            bytes.extend_from_slice(pdu::data_pdu(pdu_type::C2H_DATA, header, 0, digests).as_slice());
            let data: Vec<u8> = (0..*len).map(|i| (i as u8) ^ (*cid as u8)).collect();
            bytes.extend_from_slice(&data);
            if digests.data {
                bytes.extend_from_slice(&pdu::digest(&data));
            }
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn every_pdu_survives_any_segmentation(
            pdus in prop::collection::vec((0u16..128, prop_oneof![Just(0usize), 1usize..9000, 200_000usize..MAX_TRANSFER_BYTES]), 1..12),
            sizes in prop::collection::vec(1usize..70_000, 1..8),
            header in any::<bool>(),
            data in any::<bool>(),
        ) {
            let digests = Digests { header, data };
            let mut stream = Chunked { bytes: wire(&pdus, digests), at: 0, sizes, turn: 0 };
            let mut rx = RxBuf::new(digests);
            let mut tx = TxBuf { buf: Vec::new(), sent: 0 };
            let mut seen = Vec::new();
            for _ in 0..100_000 {
                let read = rx.fill(&mut stream).expect("fill");
                while let Some(pdu) = rx.next(&mut tx).expect("valid") {
                    prop_assert!(pdu.data_digest_ok);
                    let cid = pdu::DataHeader::parse(pdu.bytes).cccid;
                    let is_resp = pdu.layout.header.pdu_type == pdu_type::CAPSULE_RESP;
                    let cid = if is_resp { peerless_target::nvme::le16(pdu.bytes, 8 + 12) } else { cid };
                    let intact = pdu.data().iter().enumerate().all(|(i, b)| *b == (i as u8) ^ (cid as u8));
                    prop_assert!(intact);
                    seen.push((cid, pdu.layout.data_len));
                }
                if read == 0 && stream.at == stream.bytes.len() {
                    break;
                }
            }
            prop_assert_eq!(seen, pdus);
            prop_assert!(tx.is_empty());
        }
    }
}
