//! A structure-aware fuzzer against a live `peerless-tgt`: from a seed, connections past
//! the handshake send mutated but well-framed PDUs (random opcodes, NSIDs, LBAs, lengths,
//! SGL types and lengths, PSDT, duplicate CIDs, H2CData with bogus or stale TTAGs and
//! offsets, out of order, with and without digests, and now and then a corrupted header).
//! Every reply must be a well-formed CapsuleResp, C2HData, R2T or TermReq; the process
//! must stay up and another host must be served throughout; at the end nothing is left
//! pending. `PEERLESS_WIRE_FUZZ_SEED` and `PEERLESS_WIRE_FUZZ_CONNS` replay or lengthen it.

mod support;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peerless_target::nvme::cmd::{SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK};
use peerless_target::nvme::{admin, io, le16, put16, put32, put64};
use peerless_target::tcp::pdu::{self, flags, pdu_type, CommonHeader, DataHeader, Digests, Receiver};
use peerless_testkit::{Target, WAIT};
use peerless_tools::initiator::{Controller, Error, Options, QueuePair};
use serde_json::json;
use support::{tgt, HOSTNQN};

const NQN: &str = "nqn.2016-06.io.peerless:wirefuzz";
const BLOCK: u32 = 512;
const BLOCKS: u64 = 8192;
const DEFAULT_SEED: u64 = 0x5eed_0011;
const DEFAULT_CONNS: usize = 100;
const BATCHES_PER_CONN: usize = 12;
const TIME_BUDGET: Duration = Duration::from_secs(20);
/// The most data one fuzzed PDU carries (twice the in-capsule limit, so both sides of it).
const MAX_FUZZ_DATA: usize = 16 * 1024;
/// The target's in-capsule data limit in this test.
const IN_CAPSULE_BYTES: usize = 8192;

/// xorshift64*: small, seedable, good enough to pick fields. A `Cell`, so a choice list
/// may itself hold random values.
struct Rng(Cell<u64>);

impl Rng {
    fn next(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn chance(&self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&self, choices: &[T]) -> T {
        choices[self.below(choices.len() as u64) as usize]
    }
}

#[derive(Default)]
struct Tally {
    pdus_sent: u64,
    replies: BTreeMap<&'static str, u64>,
    conns: u64,
    terminated: u64,
    fes: BTreeMap<u16, u64>,
}

/// What the fuzzer remembers of one connection: CIDs it used and the R2Ts it saw.
struct ConnState {
    digests: Digests,
    cids: Vec<u16>,
    r2ts: Vec<DataHeader>,
}

fn with_data(mut header: Vec<u8>, data: &[u8], digests: Digests) -> Vec<u8> {
    header.extend_from_slice(data);
    if digests.data && !data.is_empty() {
        header.extend_from_slice(&pdu::digest(data));
    }
    header
}

fn capsule(rng: &Rng, state: &mut ConnState, on_admin: bool) -> Vec<u8> {
    let mut sqe = [0u8; 64];
    sqe[0] = if on_admin {
        rng.pick(&[
            admin::IDENTIFY,
            admin::GET_LOG_PAGE,
            admin::SET_FEATURES,
            admin::GET_FEATURES,
            admin::KEEP_ALIVE,
            admin::ASYNC_EVENT_REQUEST,
            admin::ABORT,
            0x7f,
            rng.next() as u8,
        ])
    } else {
        rng.pick(&[
            io::READ,
            io::WRITE,
            io::WRITE,
            io::COMPARE,
            io::WRITE_ZEROES,
            io::FLUSH,
            io::DATASET_MANAGEMENT,
            rng.next() as u8,
        ])
    };
    sqe[1] = rng.pick(&[0x40, 0x40, 0x40, 0x00, 0x80, rng.next() as u8]);
    let cid = if rng.chance(70) { rng.below(8) as u16 } else { rng.next() as u16 };
    state.cids.push(cid);
    put16(&mut sqe, 2, cid);
    put32(&mut sqe, 4, rng.pick(&[1, 1, 1, 0, 2, u32::MAX, rng.next() as u32]));
    let nlb = rng.pick(&[0u16, 0, 7, 31, 255, rng.next() as u16]);
    let slba = rng.pick(&[0, rng.below(BLOCKS), BLOCKS - 2, u64::MAX - rng.below(4), rng.next()]);
    put64(&mut sqe, 40, slba);
    put32(&mut sqe, 48, u32::from(nlb) | ((rng.next() as u32) & rng.pick(&[0, 0, 0xffff_0000])));
    for dword in [10usize, 11, 12, 13, 14, 15] {
        if rng.chance(10) {
            put32(&mut sqe, dword * 4, rng.next() as u32);
        }
    }
    let bytes = (u32::from(nlb) + 1) * BLOCK;
    let sgl_type =
        rng.pick(&[SGL_TRANSPORT_DATA_BLOCK, SGL_TRANSPORT_DATA_BLOCK, SGL_DATA_BLOCK_OFFSET, rng.next() as u8]);
    sqe[39] = sgl_type;
    let mut data_len = 0usize;
    let sgl_len = if sgl_type == SGL_DATA_BLOCK_OFFSET && rng.chance(80) {
        let limit = if rng.chance(5) { MAX_FUZZ_DATA } else { IN_CAPSULE_BYTES };
        data_len = rng.pick(&[(bytes as usize).min(limit), 16, 512, rng.below(limit as u64) as usize]);
        data_len as u32
    } else {
        rng.pick(&[bytes, bytes, 0, rng.below(1 << 21) as u32, rng.next() as u32])
    };
    put32(&mut sqe, 32, sgl_len);
    if rng.chance(10) {
        put64(&mut sqe, 24, rng.next());
    }
    let data: Vec<u8> = (0..data_len).map(|_| rng.next() as u8).collect();
    with_data(pdu::capsule_cmd(&sqe, data_len, state.digests).as_slice().to_vec(), &data, state.digests)
}

fn h2c_data(rng: &Rng, state: &mut ConnState) -> Vec<u8> {
    let known = (!state.r2ts.is_empty()).then(|| state.r2ts[rng.below(state.r2ts.len() as u64) as usize]);
    let asked = known.unwrap_or(DataHeader { cccid: 0, ttag: 0, offset: 0, length: 4096 });
    let cccid =
        if rng.chance(80) { asked.cccid } else { rng.pick(&state.cids.clone()).wrapping_add(rng.below(2) as u16) };
    let ttag = if rng.chance(80) { asked.ttag } else { rng.next() as u16 };
    let offset = rng.pick(&[asked.offset, asked.offset, 0, asked.offset + 512, rng.next() as u32]);
    let length = rng.pick(&[asked.length.min(MAX_FUZZ_DATA as u32), 512, 1 + rng.below(MAX_FUZZ_DATA as u64) as u32]);
    let last = if rng.chance(70) { flags::LAST_PDU } else { 0 };
    let header = DataHeader { cccid, ttag, offset, length };
    let data: Vec<u8> = (0..length).map(|_| rng.next() as u8).collect();
    with_data(pdu::data_pdu(pdu_type::H2C_DATA, header, last, state.digests).as_slice().to_vec(), &data, state.digests)
}

/// Checks one reply; returns whether it ended the connection.
fn check_reply(reply: &peerless_tools::initiator::RawPdu, state: &mut ConnState, tally: &mut Tally) -> bool {
    let header: CommonHeader = reply.header;
    let layout = pdu::validate(header, Receiver::Host, state.digests, 1 << 20)
        .unwrap_or_else(|fatal| panic!("a malformed reply {header:?}: {fatal:?}"));
    assert_eq!(layout.total, reply.bytes.len());
    if state.digests.header && header.pdu_type != pdu_type::C2H_TERM_REQ {
        assert!(pdu::header_digest_ok(&reply.bytes, usize::from(header.hlen)), "bad header digest on {header:?}");
    }
    let name = match header.pdu_type {
        pdu_type::CAPSULE_RESP => {
            let cid = le16(&reply.bytes, COMMAND_ID_OFFSET);
            assert!(state.cids.contains(&cid), "a CapsuleResp for CID {cid} that was never sent");
            "CapsuleResp"
        }
        pdu_type::C2H_DATA => {
            let data = DataHeader::parse(&reply.bytes);
            assert!(state.cids.contains(&data.cccid), "C2HData for CID {} that was never sent", data.cccid);
            assert_eq!(data.length as usize, layout.data_len);
            "C2HData"
        }
        pdu_type::R2T => {
            let r2t = DataHeader::parse(&reply.bytes);
            assert!(state.cids.contains(&r2t.cccid), "R2T for CID {} that was never sent", r2t.cccid);
            assert!(r2t.length > 0);
            state.r2ts.push(r2t);
            "R2T"
        }
        pdu_type::C2H_TERM_REQ => {
            let fes = le16(&reply.bytes, 8);
            *tally.fes.entry(fes).or_default() += 1;
            assert!((pdu::fes::INVALID_HEADER_FIELD..=pdu::fes::UNSUPPORTED_PARAMETER).contains(&fes), "FES {fes}");
            "TermReq"
        }
        other => panic!("PDU type {other:#04x} from the controller"),
    };
    *tally.replies.entry(name).or_default() += 1;
    header.pdu_type == pdu_type::C2H_TERM_REQ
}

/// CQE byte 12 (CID) inside a CapsuleResp, after the 8-byte common header.
const COMMAND_ID_OFFSET: usize = 8 + 12;

/// Sends batches of fuzzed PDUs on `queue` and checks every reply until the connection
/// ends or the batches run out.
fn fuzz_queue(queue: &mut QueuePair, rng: &Rng, digests: Digests, on_admin: bool, tally: &mut Tally, end: Instant) {
    let mut state = ConnState { digests, cids: Vec::new(), r2ts: Vec::new() };
    for _ in 0..BATCHES_PER_CONN {
        if Instant::now() >= end {
            return;
        }
        for _ in 0..1 + rng.below(6) {
            // H2CData mostly answers an R2T seen; a bogus TTAG ends the connection, so rarely.
            let h2c = if state.r2ts.is_empty() { rng.chance(3) } else { rng.chance(40) };
            let mut bytes = if state.cids.is_empty() || !h2c {
                capsule(rng, &mut state, on_admin)
            } else {
                h2c_data(rng, &mut state)
            };
            if rng.chance(3) {
                // Now and then a corrupted common header.
                let at = rng.below(8) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
            tally.pdus_sent += 1;
            if queue.send_raw(&bytes).is_err() {
                return;
            }
        }
        loop {
            match queue.recv_pdu(Duration::from_millis(15)) {
                Ok(reply) => {
                    if check_reply(&reply, &mut state, tally) {
                        tally.terminated += 1;
                        return;
                    }
                }
                Err(Error::Timeout { .. }) => break,
                Err(Error::Protocol(why)) => panic!("a reply the host cannot parse: {why}"),
                // The controller closed the connection (after a TermReq it sent, or a
                // refusal): that is an allowed end.
                Err(_) => return,
            }
        }
    }
}

fn pattern(seed: u64) -> Vec<u8> {
    (0..BLOCK as usize * 8).map(|index| (index as u64 ^ seed.wrapping_mul(31)) as u8).collect()
}

fn check_healthy(target: &mut Target, controller: &mut Controller, healthy: &mut QueuePair, round: u64) {
    assert!(target.exit_status().is_none(), "peerless-tgt died in round {round}");
    controller.keep_alive_if_due().unwrap_or_else(|err| panic!("the healthy host's keep-alive, round {round}: {err}"));
    let data = pattern(round);
    let slba = BLOCKS - 8;
    healthy.write(1, slba, 8, &data).unwrap_or_else(|err| panic!("the healthy host, round {round}: {err}"));
    let mut back = vec![0u8; data.len()];
    healthy.read(1, slba, 8, &mut back).unwrap();
    assert!(back == data, "the healthy host's data, round {round}");
}

#[test]
fn a_live_target_survives_mutated_command_streams() {
    let seed = std::env::var("PEERLESS_WIRE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED);
    let conns = std::env::var("PEERLESS_WIRE_FUZZ_CONNS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_CONNS);
    let mut target = tgt().start("wire-fuzz", &["-m", "0x3"]);
    let addr: SocketAddr = target.serve_malloc(
        NQN,
        BLOCKS,
        BLOCK,
        json!({"in_capsule_data_size": IN_CAPSULE_BYTES, "max_queue_depth": 32, "max_io_size": 131_072}),
    );
    let mut healthy_ctrl = Controller::connect(addr, NQN, HOSTNQN, &Options::default()).unwrap();
    let mut healthy = healthy_ctrl.io_queue(8).unwrap();
    let rng = Rng(Cell::new(seed | 1));
    let mut tally = Tally::default();
    let end = Instant::now() + TIME_BUDGET;
    for round in 0..conns as u64 {
        if Instant::now() >= end {
            break;
        }
        let digests = Digests { header: rng.chance(30), data: rng.chance(30) };
        let options = Options { digests, ..Options::default() };
        let mut controller = Controller::connect(addr, NQN, HOSTNQN, &options).expect("a fuzz host connects");
        let on_admin = rng.chance(20);
        if on_admin {
            fuzz_queue(controller.admin(), &rng, digests, true, &mut tally, end);
        } else {
            let depth = rng.pick(&[4u16, 16, 32]);
            let mut queue = controller.io_queue(depth).expect("an I/O queue");
            fuzz_queue(&mut queue, &rng, digests, false, &mut tally, end);
        }
        tally.conns += 1;
        drop(controller);
        check_healthy(&mut target, &mut healthy_ctrl, &mut healthy, round);
    }
    // Every fuzz connection has gone and taken its commands with it.
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = target.call("nvmf_get_stats", None);
        let sum = |key: &str| -> u64 {
            stats["poll_groups"].as_array().unwrap().iter().map(|group| group[key].as_u64().unwrap()).sum()
        };
        if sum("pending_bdev_io") == 0 && sum("current_io_qpairs") == 1 && sum("current_admin_qpairs") == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "fuzz connections left state behind: {stats}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(tally.conns >= 10 && tally.pdus_sent >= 100, "too little fuzzing to mean anything");
    eprintln!(
        "wire fuzz seed {seed:#x}: {} connections, {} PDUs sent, replies {:?}, {} connections terminated by TermReq (by FES {:?})",
        tally.conns, tally.pdus_sent, tally.replies, tally.terminated, tally.fes
    );
}
