//! The NVMe/TCP driver over in-memory sockets: PDUs in, PDUs out, with the real engine,
//! the bdev layer and a malloc bdev behind it, all on one stepped lightweight thread.

use std::sync::Arc;

use peerless_bdev::modules::malloc::MallocBdev;
use peerless_bdev::{BdevInfo, BdevManager, Uuid};
use peerless_core::mem::IoBufCache;
use peerless_core::reactor::{AppOptions, SteppedApp, ThreadId};
use serde_json::json;

use super::*;
use crate::nvme::cmd::SqeBuilder;
use crate::nvme::{admin, fctype, io, le16, le32, put16, put_str, Cqe, Status};
use crate::nvmf::namespace::NamespaceSpec;
use crate::nvmf::poll_group::{NsTables, Retired};
use crate::nvmf::subsystem::{ListenAddress, SubsystemConfig};
use crate::tcp::pdu::{flags, DataHeader};
use crate::tcp::socket::{MemPeer, MemSocket};
use crate::tcp::TcpTransport;

mod h2c_direct;
mod zerocopy;

const NQN: &str = "nqn.2016-06.io.spdk:cnode1";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";
const BLOCK: usize = 512;
const NONE: Digests = Digests { header: false, data: false };
const BOTH: Digests = Digests { header: true, data: true };
/// Turns of the thread a test waits for an answer before it calls it missing.
const TURNS: usize = 64;

/// A target with one namespace on a malloc bdev, and the poll group state a connection
/// borrows, on a stepped app.
struct Rig {
    app: SteppedApp,
    thread: ThreadId,
    target: NvmfTarget,
    transport: Arc<dyn Transport>,
    tables: NsTables,
    cache: IoBufCache<'static>,
    retired: Retired,
    local: std::net::SocketAddr,
    next_id: u64,
}

/// One connection: the driver's end, and the host's end of its socket.
struct Wire {
    conn: Conn<MemSocket>,
    peer: MemPeer,
    digests: Digests,
    inbox: Vec<u8>,
}

impl Rig {
    fn new() -> Rig {
        let mut app = SteppedApp::new(AppOptions { name: "conn-tests".into(), ..AppOptions::default() }).unwrap();
        let handle = app.handle();
        let thread = handle.app_thread().id();
        let bdevs = BdevManager::new();
        let info = BdevInfo {
            name: "Malloc0".into(),
            product_name: "Malloc disk".into(),
            block_size: BLOCK as u32,
            num_blocks: 256,
            uuid: Uuid([7; 16]),
            max_io_blocks: 0,
        };
        bdevs.register(Arc::new(MallocBdev::new(info).unwrap())).unwrap();
        let target = NvmfTarget::new(handle, bdevs.clone());
        let local: std::net::SocketAddr = "127.0.0.1:4420".parse().unwrap();
        let config = SubsystemConfig { allow_any_host: true, ..SubsystemConfig::new(NQN) };
        let subsystem = target.create_subsystem(&config).unwrap();
        // The address connections come in on; no socket listens there.
        subsystem.state.lock().listeners.push(ListenAddress::new(local, 0, crate::nvmf::ana::AnaState::Optimized));
        let added = app.run_on(thread, |ctx| target.add_namespace(ctx, NQN, NamespaceSpec::new("Malloc0")));
        assert_eq!(added.map(Result::ok), Some(Some(1)));
        let transport = TcpTransport::create(&json!({"trtype": "TCP", "num_shared_buffers": 16}), 1).unwrap();
        let cache = transport.pool().cache();
        app.step(1);
        Rig {
            app,
            thread,
            target,
            transport,
            tables: NsTables::default(),
            cache,
            retired: Retired::default(),
            local,
            next_id: 1,
        }
    }

    /// A new connection from the host, not yet introduced.
    fn connect(&mut self) -> Wire {
        let peer_addr = format!("127.0.0.1:{}", 50000 + self.next_id).parse().unwrap();
        let (socket, peer) = MemSocket::pair(self.local, peer_addr);
        let conn = Conn::new(self.next_id, socket, &self.target, &self.transport, &TcpOptions::default()).unwrap();
        self.next_id += 1;
        Wire { conn, peer, digests: NONE, inbox: Vec::new() }
    }

    /// One step of the thread (bdev completions), then one poll of the connection.
    fn turn(&mut self, wire: &mut Wire) {
        let now_ns = self.app.now_ns() + 1_000;
        self.app.step(now_ns);
        let Rig { app, thread, tables, cache, retired, .. } = self;
        app.run_on(*thread, |ctx| {
            let mut group = GroupCtx { tables, buffers: cache, now_ns, retired };
            wire.conn.poll(ctx, &mut group, true, 64);
        });
    }

    /// Sends `bytes` and waits for the next PDU back.
    fn exchange(&mut self, wire: &mut Wire, bytes: &[u8]) -> Vec<u8> {
        wire.peer.deliver(bytes);
        self.expect(wire)
    }

    fn expect(&mut self, wire: &mut Wire) -> Vec<u8> {
        for _ in 0..TURNS {
            if let Some(pdu) = wire.next_pdu() {
                return pdu;
            }
            self.turn(wire);
        }
        panic!("no PDU from the target; it sent {} bytes of a partial one", wire.inbox.len());
    }

    /// Turns until the connection has sent all it will and can go.
    fn drain(&mut self, wire: &mut Wire) {
        for _ in 0..TURNS {
            if wire.conn.is_done() {
                return;
            }
            self.turn(wire);
        }
        panic!("the connection did not finish");
    }

    /// A connection through ICReq/ICResp with `digests`.
    fn introduce(&mut self, digests: Digests) -> Wire {
        self.introduce_aligned(digests, 0)
    }

    /// A connection through ICReq/ICResp with `digests` and C2H data alignment `hpda`.
    fn introduce_aligned(&mut self, digests: Digests, hpda: u8) -> Wire {
        let mut wire = self.connect();
        let request = IcReq { pfv: 0, hpda, digests, maxr2t: 0 };
        let answer = self.exchange(&mut wire, &request.encode());
        assert_eq!(answer[0], pdu_type::IC_RESP);
        let response = IcResp::parse(&answer);
        assert_eq!(response.digests, digests);
        wire.digests = digests;
        wire
    }

    /// A queue connected to the subsystem: the admin queue (returning its controller ID)
    /// or I/O queue `qid` of controller `cntlid`.
    fn connect_queue(&mut self, wire: &mut Wire, qid: u16, cntlid: u16) -> u16 {
        let mut data = [0u8; 1024];
        put16(&mut data, 16, cntlid);
        put_str(&mut data, 256, 256, NQN, 0);
        put_str(&mut data, 512, 256, HOSTNQN, 0);
        let sqe = SqeBuilder::fabrics(fctype::CONNECT, 1).u16_at(42, qid).u16_at(44, 31).in_capsule(1024).build();
        let cqe = self.command(wire, sqe, &data);
        assert_eq!(cqe.status, Status::SUCCESS, "Connect of queue {qid}");
        cqe.result as u16
    }

    /// Sends a command with in-capsule data and returns its completion.
    fn command(&mut self, wire: &mut Wire, sqe: Sqe, data: &[u8]) -> Cqe {
        let pdu = wire.capsule(&sqe, data);
        let answer = self.exchange(wire, &pdu);
        assert_eq!(answer[0], pdu_type::CAPSULE_RESP, "{answer:02x?}");
        Cqe::decode(&answer[pdu::COMMON_HEADER_BYTES..])
    }

    /// An admin queue of an enabled controller, and an I/O queue 1 of it.
    fn controller(&mut self, io_digests: Digests) -> (Wire, Wire) {
        self.controller_aligned(io_digests, 0)
    }

    fn controller_aligned(&mut self, io_digests: Digests, io_hpda: u8) -> (Wire, Wire) {
        let mut admin = self.introduce(NONE);
        let cntlid = self.connect_queue(&mut admin, 0, 0xffff);
        let enable =
            SqeBuilder::fabrics(fctype::PROPERTY_SET, 2).u32_at(44, 0x14).u64_at(48, 1 | (6 << 16) | (4 << 20));
        assert_eq!(self.command(&mut admin, enable.build(), &[]).status, Status::SUCCESS);
        let mut io = self.introduce_aligned(io_digests, io_hpda);
        self.connect_queue(&mut io, 1, cntlid);
        (admin, io)
    }

    /// Closes both queues of `controller` from the host's side and lets them go.
    fn hang_up(&mut self, wires: (Wire, Wire)) {
        let (mut admin, mut io) = wires;
        for wire in [&mut io, &mut admin] {
            wire.peer.close();
            self.drain(wire);
        }
    }
}

impl Wire {
    /// The next whole PDU the target sent, if one is there.
    fn next_pdu(&mut self) -> Option<Vec<u8>> {
        self.peer.take(usize::MAX, &mut self.inbox);
        if self.inbox.len() < pdu::COMMON_HEADER_BYTES {
            return None;
        }
        let plen = le32(&self.inbox, 4) as usize;
        if self.inbox.len() < plen {
            return None;
        }
        let rest = self.inbox.split_off(plen);
        Some(std::mem::replace(&mut self.inbox, rest))
    }

    fn capsule(&self, sqe: &Sqe, data: &[u8]) -> Vec<u8> {
        let mut pdu = pdu::capsule_cmd(sqe.bytes(), data.len(), self.digests).as_slice().to_vec();
        self.append_data(&mut pdu, data);
        pdu
    }

    fn h2c(&self, cid: u16, ttag: u16, offset: usize, data: &[u8], last: bool) -> Vec<u8> {
        let header = DataHeader { cccid: cid, ttag, offset: offset as u32, length: data.len() as u32 };
        let extra = if last { flags::LAST_PDU } else { 0 };
        let mut pdu = pdu::data_pdu(pdu_type::H2C_DATA, header, extra, self.digests).as_slice().to_vec();
        self.append_data(&mut pdu, data);
        pdu
    }

    fn append_data(&self, pdu: &mut Vec<u8>, data: &[u8]) {
        pdu.extend_from_slice(data);
        if self.digests.data && !data.is_empty() {
            pdu.extend_from_slice(&pdu::digest(data));
        }
    }
}

/// The FES and FEI of a C2HTermReq.
fn term(pdu: &[u8]) -> (u16, u32) {
    assert_eq!(pdu[0], pdu_type::C2H_TERM_REQ, "expected a C2HTermReq, got {:02x?}", &pdu[..8]);
    (le16(pdu, 8), le32(pdu, 10))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|at| (at as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn ic_req_is_answered_with_ic_resp_and_the_digests_asked_for() {
    let mut rig = Rig::new();
    for digests in [NONE, BOTH, Digests { header: true, data: false }] {
        let mut wire = rig.connect();
        let request = IcReq { pfv: 0, hpda: 0, digests, maxr2t: 0 };
        let answer = rig.exchange(&mut wire, &request.encode());
        assert_eq!(answer.len(), pdu::IC_BYTES);
        let response = IcResp::parse(&answer);
        assert_eq!(response, IcResp { pfv: 0, cpda: 0, digests, maxh2cdata: rig.transport.opts().max_io_size });
        wire.peer.close();
        rig.drain(&mut wire);
    }
}

#[test]
fn a_write_fetches_its_data_with_r2t_and_a_read_returns_it_in_c2h_data() {
    let mut rig = Rig::new();
    for digests in [NONE, BOTH] {
        let (admin, mut io) = rig.controller(digests);
        let data = pattern(3 * BLOCK, 5);
        let write = SqeBuilder::new(io::WRITE, 9).rw(1, 10, 3).transport_data(data.len() as u32).build();
        let capsule = io.capsule(&write, &[]);
        let r2t = rig.exchange(&mut io, &capsule);
        assert_eq!(r2t[0], pdu_type::R2T);
        let asked = DataHeader::parse(&r2t);
        assert_eq!((asked.cccid, asked.offset, asked.length), (9, 0, data.len() as u32));
        // The host may split the data over several H2CData PDUs (NVMe/TCP 1.0, 3.6.2.7).
        let first = io.h2c(9, asked.ttag, 0, &data[..1024], false);
        let second = io.h2c(9, asked.ttag, 1024, &data[1024..], true);
        io.peer.deliver(&first);
        let done = rig.exchange(&mut io, &second);
        assert_eq!(done[0], pdu_type::CAPSULE_RESP);
        let cqe = Cqe::decode(&done[pdu::COMMON_HEADER_BYTES..]);
        assert_eq!((cqe.cid, cqe.status, cqe.sqid), (9, Status::SUCCESS, 1));

        let read = SqeBuilder::new(io::READ, 10).rw(1, 10, 3).transport_data(data.len() as u32).build();
        let capsule = io.capsule(&read, &[]);
        let c2h = rig.exchange(&mut io, &capsule);
        assert_eq!(c2h[0], pdu_type::C2H_DATA);
        let header = DataHeader::parse(&c2h);
        assert_eq!((header.cccid, header.offset, header.length), (10, 0, data.len() as u32));
        // With c2h_success the data completes the read: no CapsuleResp follows.
        assert_eq!(c2h[1] & (flags::LAST_PDU | flags::SUCCESS), flags::LAST_PDU | flags::SUCCESS);
        let start = usize::from(c2h[3]);
        assert_eq!(&c2h[start..start + data.len()], &data[..]);
        if digests.data {
            assert_eq!(c2h[start + data.len()..], pdu::digest(&data));
        }
        rig.turn(&mut io);
        assert!(io.next_pdu().is_none(), "nothing after a read that data completed");
        rig.hang_up((admin, io));
    }
}

#[test]
fn commands_the_bdev_completes_at_once_are_answered_in_the_poll_that_read_them() {
    // Malloc completes in its submit: the response must go out in the same poll, not wait
    // for the next one (a pass of latency and, with the command in flight, a read of the
    // socket that finds nothing).
    let mut rig = Rig::new();
    let (admin, mut io) = rig.controller(NONE);
    let data = pattern(2 * BLOCK, 8);
    let write = SqeBuilder::new(io::WRITE, 3).rw(1, 20, 2).transport_data(data.len() as u32).build();
    let capsule = io.capsule(&write, &[]);
    let r2t = rig.exchange(&mut io, &capsule);
    assert_eq!(r2t[0], pdu_type::R2T);
    io.peer.deliver(&io.h2c(3, DataHeader::parse(&r2t).ttag, 0, &data, true));
    rig.turn(&mut io);
    let done = io.next_pdu().expect("no CapsuleResp from the poll that read the write's data");
    assert_eq!(done[0], pdu_type::CAPSULE_RESP);
    for depth in [1u16, 4, 16] {
        let mut capsules = Vec::new();
        for cid in 0..depth {
            let read = SqeBuilder::new(io::READ, 100 + cid).rw(1, 20, 2).transport_data(data.len() as u32).build();
            capsules.extend(io.capsule(&read, &[]));
        }
        io.peer.deliver(&capsules);
        rig.turn(&mut io);
        for cid in 0..depth {
            let c2h = io.next_pdu().unwrap_or_else(|| panic!("read {cid} of {depth} not answered in the same poll"));
            assert_eq!(c2h[0], pdu_type::C2H_DATA);
            let header = DataHeader::parse(&c2h);
            assert_eq!(header.cccid, 100 + cid);
            let start = usize::from(c2h[3]);
            assert_eq!(&c2h[start..start + data.len()], &data[..]);
        }
    }
    rig.hang_up((admin, io));
}

/// Sets up a connection in `phase`, sends `bad`, and checks the C2HTermReq it earns and
/// that the connection then ends.
fn check_fatal(phase: Phase, digests: Digests, bad: impl Fn(&Wire) -> Vec<u8>, expected: (u16, u32)) {
    let mut rig = Rig::new();
    let (mut wire, admin) = match phase {
        Phase::AwaitIcReq => (rig.connect(), None),
        Phase::Ready => {
            let (admin, io) = rig.controller(digests);
            (io, Some(admin))
        }
        Phase::Closing => unreachable!("a closing connection reads nothing"),
    };
    let pdu = bad(&wire);
    let answer = rig.exchange(&mut wire, &pdu);
    assert_eq!(term(&answer), expected, "after {:02x?}", &pdu[..pdu.len().min(24)]);
    rig.drain(&mut wire);
    assert!(wire.peer.is_shut_down(), "the target shuts its socket after the TermReq");
    if let Some(mut admin) = admin {
        admin.peer.close();
        rig.drain(&mut admin);
    }
}

#[test]
fn malformed_pdus_end_the_connection_with_the_fatal_status_they_earn() {
    let read = SqeBuilder::new(io::READ, 3).rw(1, 0, 1).transport_data(BLOCK as u32).build();
    // Anything before ICReq is out of sequence (NVMe/TCP 1.0, 3.6.2.2).
    check_fatal(Phase::AwaitIcReq, NONE, |wire| wire.capsule(&read, &[]), (fes::PDU_SEQUENCE_ERROR, 0));
    // A protocol version we do not speak.
    let pfv = |_: &Wire| {
        let mut bytes = IcReq { pfv: 0, hpda: 0, digests: NONE, maxr2t: 0 }.encode();
        bytes[8] = 1;
        bytes.to_vec()
    };
    check_fatal(Phase::AwaitIcReq, NONE, pfv, (fes::UNSUPPORTED_PARAMETER, 8));
    // A second ICReq on a running connection.
    let again = |_: &Wire| IcReq { pfv: 0, hpda: 0, digests: NONE, maxr2t: 0 }.encode().to_vec();
    check_fatal(Phase::Ready, NONE, again, (fes::PDU_SEQUENCE_ERROR, 0));
    // A PDU type nobody defined, and a header length that is not its type's.
    check_fatal(
        Phase::Ready,
        NONE,
        |wire| {
            let mut pdu = wire.capsule(&read, &[]);
            pdu[0] = 0x0f;
            pdu
        },
        (fes::INVALID_HEADER_FIELD, 0),
    );
    check_fatal(
        Phase::Ready,
        NONE,
        |wire| {
            let mut pdu = wire.capsule(&read, &[]);
            pdu[2] = 71;
            pdu
        },
        (fes::INVALID_HEADER_FIELD, 2),
    );
    // In-capsule data beyond what the I/O queue accepts (in_capsule_data_size, 4 KiB).
    let big = SqeBuilder::new(io::WRITE, 4).rw(1, 0, 16).in_capsule(16 * BLOCK as u32).build();
    check_fatal(Phase::Ready, NONE, |wire| wire.capsule(&big, &[0; 16 * BLOCK]), (fes::DATA_LIMIT_EXCEEDED, 4));
    // H2CData for a transfer tag no R2T handed out: TTAG is at byte 10.
    check_fatal(Phase::Ready, NONE, |wire| wire.h2c(3, 7, 0, &[0; BLOCK], true), (fes::INVALID_HEADER_FIELD, 10));
}

#[test]
fn digest_errors_end_the_connection() {
    let read = SqeBuilder::new(io::READ, 3).rw(1, 0, 1).transport_data(BLOCK as u32).build();
    let bad_header = |wire: &Wire| {
        let mut pdu = wire.capsule(&read, &[]);
        pdu[20] ^= 0x40;
        pdu
    };
    check_fatal(Phase::Ready, BOTH, bad_header, (fes::HEADER_DIGEST_ERROR, 0));
    // A data digest error ends the connection too, with the same FES, as SPDK's target does.
    let write = SqeBuilder::new(io::WRITE, 4).rw(1, 0, 1).in_capsule(BLOCK as u32).build();
    let bad_data = |wire: &Wire| {
        let mut pdu = wire.capsule(&write, &[9; BLOCK]);
        let last = pdu.len() - 1;
        pdu[last] ^= 1;
        pdu
    };
    check_fatal(Phase::Ready, BOTH, bad_data, (fes::HEADER_DIGEST_ERROR, 0));
}

#[test]
fn keep_alive_and_disconnect() {
    let mut rig = Rig::new();
    let (mut admin, mut io) = rig.controller(NONE);
    let keep_alive = SqeBuilder::new(admin::KEEP_ALIVE, 5).build();
    assert_eq!(rig.command(&mut admin, keep_alive, &[]).status, Status::SUCCESS);
    // Disconnect ends the I/O queue once its answer is out (NVMe-oF 1.1, 3.8).
    let disconnect = SqeBuilder::fabrics(fctype::DISCONNECT, 6).build();
    assert_eq!(rig.command(&mut io, disconnect, &[]).status, Status::SUCCESS);
    rig.drain(&mut io);
    assert!(io.peer.is_shut_down());
    admin.peer.close();
    rig.drain(&mut admin);
}

/// Data the host sends for a write the engine has already let go (its queue ended by a
/// controller reset, NVMe Base 2.0, 3.7.2) is in flight through no fault of the host: the
/// connection closes quietly, with no C2HTermReq blaming the host (found by the
/// simulation: a reset racing H2CData ended connections with FES 0x1, FEI 10).
#[test]
fn data_for_a_queue_the_engine_ended_is_not_a_protocol_error() {
    let mut rig = Rig::new();
    let (admin, mut io) = rig.controller(NONE);
    let data = pattern(2 * BLOCK, 1);
    let write = SqeBuilder::new(io::WRITE, 9).rw(1, 0, 2).transport_data(data.len() as u32).build();
    let capsule = io.capsule(&write, &[]);
    let r2t = rig.exchange(&mut io, &capsule);
    let ttag = DataHeader::parse(&r2t).ttag;
    // What the engine does to every I/O queue of a controller whose CC.EN went to 0.
    io.conn.qpair_mut().close("its controller was reset");
    io.peer.deliver(&io.h2c(9, ttag, 0, &data, true));
    rig.drain(&mut io);
    assert!(io.peer.is_shut_down());
    assert_eq!(io.next_pdu().map(|pdu| pdu[0]), None, "the host did nothing wrong");
    rig.hang_up((admin, io));
}

/// A flipped bit in PLEN is caught by the header digest as soon as the header is in,
/// not after waiting for the bytes the wrong length promises: a host waiting for answers
/// sends no more, so that wait would never end (NVMe/TCP 1.0, 3.6.2.1: the header digest
/// covers the whole PDU header, PLEN included).
#[test]
fn a_header_digest_is_checked_before_its_length_is_trusted() {
    let write = SqeBuilder::new(io::WRITE, 3).rw(1, 0, 1).in_capsule(BLOCK as u32).build();
    let longer = |wire: &Wire| {
        let mut pdu = wire.capsule(&write, &[5; BLOCK]);
        let plen = le16(&pdu, 4);
        put16(&mut pdu, 4, plen + 16);
        pdu
    };
    check_fatal(Phase::Ready, BOTH, longer, (fes::HEADER_DIGEST_ERROR, 0));
}

/// C2HData puts its data where the host's HPDA asks (NVMe/TCP 1.0, 3.6.2.2: 0's based, in
/// dwords), padding after the header; the data digest covers the data only (found by the
/// simulation: the target ignored HPDA and always put data right after the header).
#[test]
fn c2h_data_is_aligned_as_the_host_asked() {
    let mut rig = Rig::new();
    // (HPDA, digests, where the data must start)
    for (hpda, digests, at) in
        [(0, NONE, 24), (0, BOTH, 28), (1, NONE, 24), (2, NONE, 24), (3, BOTH, 32), (31, BOTH, 128)]
    {
        let (admin, mut io) = rig.controller_aligned(digests, hpda);
        let data = pattern(BLOCK, hpda);
        let write = SqeBuilder::new(io::WRITE, 1).rw(1, 5, 1).in_capsule(BLOCK as u32).build();
        assert_eq!(rig.command(&mut io, write, &data).status, Status::SUCCESS);
        let read = SqeBuilder::new(io::READ, 2).rw(1, 5, 1).transport_data(BLOCK as u32).build();
        let capsule = io.capsule(&read, &[]);
        let c2h = rig.exchange(&mut io, &capsule);
        assert_eq!((c2h[0], usize::from(c2h[3])), (pdu_type::C2H_DATA, at), "HPDA {hpda}, {digests:?}");
        let trailer = if digests.data { pdu::DIGEST_BYTES } else { 0 };
        assert_eq!(le32(&c2h, 4) as usize, at + BLOCK + trailer, "PLEN counts the padding");
        let header_bytes = pdu::DATA_HLEN + if digests.header { pdu::DIGEST_BYTES } else { 0 };
        assert!(c2h[header_bytes..at].iter().all(|byte| *byte == 0), "padding is zeroes");
        assert_eq!(&c2h[at..at + BLOCK], &data[..]);
        if digests.data {
            assert_eq!(c2h[at + BLOCK..], pdu::digest(&data));
        }
        if digests.header {
            assert!(pdu::header_digest_ok(&c2h, pdu::DATA_HLEN));
        }
        rig.hang_up((admin, io));
    }
}

/// Reads the whole malloc disk back in C2HData of every size from one block to MDTS
/// (max_io_size, 128 KiB: several pool buffers), with and without digests, through a
/// send window so small that every gathered write stops part way into a header, a
/// payload or a digest. The data, sent in place from the pool buffers, must arrive
/// whole and in order, and every slot must come back to the engine.
#[test]
fn c2h_data_sent_in_place_arrives_whole_through_partial_writes() {
    let mut rig = Rig::new();
    let disk = pattern(256 * BLOCK, 3);
    for digests in [NONE, BOTH] {
        let (admin, mut io) = rig.controller(digests);
        for (at, chunk) in disk.chunks(8 * BLOCK).enumerate() {
            let write = SqeBuilder::new(io::WRITE, 1).rw(1, (at * 8) as u64, 8).in_capsule(chunk.len() as u32).build();
            let cqe = rig.command(&mut io, write, chunk);
            assert_eq!(cqe.status, Status::SUCCESS);
        }
        for (window, blocks) in [(usize::MAX, 1), (1000, 1), (777, 8), (4093, 17), (1 << 20, 256), (9001, 256)] {
            io.peer.set_send_window(window.min(crate::tcp::socket::DEFAULT_SEND_WINDOW_BYTES));
            let len = blocks * BLOCK;
            let read = SqeBuilder::new(io::READ, 7).rw(1, 0, blocks as u32).transport_data(len as u32).build();
            let capsule = io.capsule(&read, &[]);
            let c2h = rig.exchange(&mut io, &capsule);
            assert_eq!(c2h[0], pdu_type::C2H_DATA, "{blocks} blocks through a {window}-byte window");
            let start = usize::from(c2h[3]);
            assert_eq!(&c2h[start..start + len], &disk[..len], "{blocks} blocks, {digests:?}");
            if digests.data {
                assert_eq!(c2h[start + len..], pdu::digest(&disk[..len]));
            }
            assert_eq!(io.conn.qpair().slots_in_use(), 0, "the slot came back once the data was out");
        }
        io.peer.set_send_window(crate::tcp::socket::DEFAULT_SEND_WINDOW_BYTES);
        rig.hang_up((admin, io));
    }
}

/// Many reads at once: their C2HData go out in the order the engine finished them, each
/// whole, none mixed with another, while the socket takes a little at a time.
#[test]
fn many_reads_in_flight_each_arrive_whole() {
    let mut rig = Rig::new();
    let disk = pattern(256 * BLOCK, 9);
    let (admin, mut io) = rig.controller(BOTH);
    for (at, chunk) in disk.chunks(8 * BLOCK).enumerate() {
        let write = SqeBuilder::new(io::WRITE, 1).rw(1, (at * 8) as u64, 8).in_capsule(chunk.len() as u32).build();
        assert_eq!(rig.command(&mut io, write, chunk).status, Status::SUCCESS);
    }
    io.peer.set_send_window(3000);
    let mut batch = Vec::new();
    // (command id, first block, blocks): sizes from one block to 64 KiB.
    let reads: Vec<(u16, usize, usize)> =
        (0..24).map(|i| (100 + i as u16, (i * 7) % 128, 1 + (i * 13) % 128)).collect();
    for &(cid, lba, blocks) in &reads {
        let read =
            SqeBuilder::new(io::READ, cid).rw(1, lba as u64, blocks as u32).transport_data((blocks * BLOCK) as u32);
        batch.extend(io.capsule(&read.build(), &[]));
    }
    io.peer.deliver(&batch);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..reads.len() {
        let c2h = rig.expect(&mut io);
        assert_eq!(c2h[0], pdu_type::C2H_DATA);
        let header = DataHeader::parse(&c2h);
        let &(cid, lba, blocks) = reads.iter().find(|read| read.0 == header.cccid).expect("a read that was asked for");
        assert!(seen.insert(cid), "command {cid} answered twice");
        let (start, len) = (usize::from(c2h[3]), blocks * BLOCK);
        assert_eq!(header.length as usize, len);
        assert_eq!(&c2h[start..start + len], &disk[lba * BLOCK..lba * BLOCK + len], "command {cid}");
        assert_eq!(c2h[start + len..], pdu::digest(&disk[lba * BLOCK..lba * BLOCK + len]));
        assert!(pdu::header_digest_ok(&c2h, pdu::DATA_HLEN));
    }
    io.peer.set_send_window(crate::tcp::socket::DEFAULT_SEND_WINDOW_BYTES);
    rig.turn(&mut io);
    assert_eq!(io.conn.qpair().slots_in_use(), 0);
    rig.hang_up((admin, io));
}

/// A host that breaks the connection while read data waits in place for the socket: the
/// data is let go, its slots return to the engine and the connection finishes (nothing
/// left holding a pool buffer).
#[test]
fn data_waiting_in_place_is_let_go_when_the_connection_breaks() {
    let mut rig = Rig::new();
    let (admin, mut io) = rig.controller(NONE);
    io.peer.set_send_window(100);
    let read = SqeBuilder::new(io::READ, 3).rw(1, 0, 64).transport_data(64 * BLOCK as u32).build();
    io.peer.deliver(&io.capsule(&read, &[]));
    for _ in 0..8 {
        rig.turn(&mut io);
    }
    assert!(io.conn.has_pending_output(), "the data waits for the socket");
    assert_eq!(io.conn.qpair().slots_in_use(), 1);
    io.peer.reset();
    rig.drain(&mut io);
    assert_eq!(io.conn.qpair().slots_in_use(), 0);
    let mut admin = admin;
    admin.peer.close();
    rig.drain(&mut admin);
}
