//! A scripted NVMe/TCP controller for testing the initiator without our target: one
//! thread per connection speaking the minimum (ICResp, Connect, properties, identify from
//! the target's own builders, log pages, features, keep-alive, reads via C2HData, writes
//! in-capsule and via R2T/H2CData), checking what the host sends, and misbehaving on cue.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use peerless_target::nvme::cmd::{Sqe, SGL_DATA_BLOCK_OFFSET};
use peerless_target::nvme::identify::{self, ControllerData, ControllerType, NamespaceData};
use peerless_target::nvme::log::{self, DiscoveryEntry};
use peerless_target::nvme::{admin, fctype, get_str, io, le16, le32, status, Cqe, Status, SQE_BYTES};
use peerless_target::tcp::pdu::{
    self, flags, pdu_type, validate, CommonHeader, DataHeader, Digests, Fatal, IcReq, IcResp, Receiver,
    COMMON_HEADER_BYTES,
};

pub const SUBNQN: &str = "nqn.2016-06.io.peerless:fake";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:fake-host";
pub const CNTLID: u16 = 5;
pub const NSID: u32 = 1;
/// A read of this LBA gets a corrupted data digest (when data digests are on).
pub const BAD_DIGEST_LBA: u64 = 13;
/// A vendor opcode on which the fake ends the connection with a C2HTermReq.
pub const TERM_OPCODE: u8 = 0xc1;
pub const TERM_FES: u16 = pdu::fes::PDU_SEQUENCE_ERROR;
pub const TERM_FEI: u32 = 0x1234;
pub const MQES: u64 = 127;
/// The AER completion DW0 the fake returns: notice (2), attribute changed (0), log page 04h.
pub const AER_NOTICE: u64 = 0x0004_0002;

#[derive(Clone, Debug)]
pub struct Config {
    pub maxh2cdata: u32,
    pub in_capsule_bytes: u32,
    /// C2HData PDUs carry at most this much data.
    pub c2h_chunk: usize,
    /// Each R2T asks for at most this much.
    pub r2t_chunk: usize,
    pub c2h_success: bool,
    pub block_size: u32,
    pub num_blocks: u64,
    pub mdts: u8,
    pub bad_header_digest_on_keep_alive: bool,
    /// Flip a byte in every read's data (digests computed after), as a corrupting disk would.
    pub corrupt_read_data: bool,
    /// A read of this LBA gets C2HData at a wrong offset.
    pub bad_c2h_offset_lba: Option<u64>,
    /// Send each C2HData PDU in two parts with a pause between, so the host sees the
    /// header long before the end of the data.
    pub slow_c2h: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            maxh2cdata: 8192,
            in_capsule_bytes: 8192,
            c2h_chunk: 32 * 1024,
            r2t_chunk: 256 * 1024,
            c2h_success: false,
            block_size: 512,
            num_blocks: 16 * 1024,
            mdts: 8,
            bad_header_digest_on_keep_alive: false,
            corrupt_read_data: false,
            bad_c2h_offset_lba: None,
            slow_c2h: false,
        }
    }
}

#[derive(Default)]
pub struct State {
    pub disk: Vec<u8>,
    /// (qid, sqsize, kato, cntlid in the data) of every Connect.
    pub connects: Vec<(u16, u16, u32, u16)>,
    pub cc: u64,
    pub keep_alives: usize,
    pub h2c_pdus: usize,
    pub r2ts: usize,
    pub in_capsule_writes: usize,
    /// TermReqs the host sent us: (FES, FEI).
    pub host_term_reqs: Vec<(u16, u32)>,
    /// Anything the host did wrong, as text; tests assert this stays empty.
    pub errors: Vec<String>,
}

pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl Fake {
    pub fn start(config: Config) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let disk = vec![0u8; (config.num_blocks * u64::from(config.block_size)) as usize];
        let state = Arc::new(Mutex::new(State { disk, ..State::default() }));
        let shared = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (config, state) = (config.clone(), shared.clone());
                thread::spawn(move || Connection::serve(stream, config, state));
            }
        });
        Fake { addr, state }
    }

    pub fn errors(&self) -> Vec<String> {
        self.state.lock().expect("state").errors.clone()
    }
}

struct Connection {
    stream: TcpStream,
    config: Config,
    state: Arc<Mutex<State>>,
    digests: Digests,
    /// Commands that arrived while we waited for H2CData.
    backlog: VecDeque<Vec<u8>>,
    /// The queue this connection carries, from its Connect: opcodes mean different
    /// commands on the admin queue (0) and I/O queues.
    qid: u16,
}

impl Connection {
    fn serve(stream: TcpStream, config: Config, state: Arc<Mutex<State>>) {
        let mut conn =
            Connection { stream, config, state, digests: Digests::default(), backlog: VecDeque::new(), qid: 0 };
        let mut ic = [0u8; pdu::IC_BYTES];
        if conn.stream.read_exact(&mut ic).is_err() {
            return;
        }
        let request = IcReq::parse(&ic);
        conn.digests = request.digests;
        let resp = IcResp { pfv: 0, cpda: 0, digests: request.digests, maxh2cdata: conn.config.maxh2cdata };
        if conn.stream.write_all(&resp.encode()).is_err() {
            return;
        }
        while let Some(pdu) = conn.next_pdu() {
            if !conn.command(&pdu) {
                return;
            }
        }
    }

    fn error(&self, text: String) {
        self.state.lock().expect("state").errors.push(text);
    }

    /// The next PDU, from the backlog or the socket; None when the connection ends.
    fn next_pdu(&mut self) -> Option<Vec<u8>> {
        if let Some(pdu) = self.backlog.pop_front() {
            return Some(pdu);
        }
        self.read_pdu()
    }

    fn read_pdu(&mut self) -> Option<Vec<u8>> {
        let mut bytes = vec![0u8; COMMON_HEADER_BYTES];
        self.stream.read_exact(&mut bytes).ok()?;
        let header = CommonHeader::parse(&bytes);
        let plen = header.plen as usize;
        if !(COMMON_HEADER_BYTES..=4 << 20).contains(&plen) {
            self.terminate(Fatal::field(4), &bytes);
            return None;
        }
        bytes.resize(plen, 0);
        self.stream.read_exact(&mut bytes[COMMON_HEADER_BYTES..]).ok()?;
        if header.pdu_type == pdu_type::H2C_TERM_REQ {
            self.state.lock().expect("state").host_term_reqs.push((le16(&bytes, 8), le32(&bytes, 10)));
            return None;
        }
        let layout = match validate(header, Receiver::Controller, self.digests, 4 << 20) {
            Ok(layout) => layout,
            Err(fatal) => {
                self.terminate(fatal, &bytes);
                return None;
            }
        };
        let hlen = usize::from(header.hlen);
        if layout.header_bytes > hlen && !pdu::header_digest_ok(&bytes, hlen) {
            self.error(format!("bad header digest from host on PDU type {}", header.pdu_type));
            self.terminate(Fatal::new(pdu::fes::HEADER_DIGEST_ERROR, 0), &bytes);
            return None;
        }
        if layout.data_digest {
            let data = &bytes[layout.data_offset..layout.data_offset + layout.data_len];
            if pdu::digest(data) != bytes[layout.total - 4..layout.total] {
                self.error("bad data digest from host".into());
            }
        }
        Some(bytes)
    }

    fn terminate(&mut self, fatal: Fatal, offending: &[u8]) {
        let _ = self.stream.write_all(&pdu::term_req(pdu_type::C2H_TERM_REQ, fatal, offending));
    }

    fn send(&mut self, header: &[u8], data: &[u8]) {
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(data);
        if !data.is_empty() && self.digests.data {
            bytes.extend_from_slice(&pdu::digest(data));
        }
        let _ = self.stream.write_all(&bytes);
    }

    fn respond(&mut self, cqe: Cqe, corrupt_header_digest: bool) {
        let mut encoded = pdu::capsule_resp(&cqe.encode(), self.digests);
        if corrupt_header_digest {
            encoded.bytes[pdu::CAPSULE_RESP_HLEN] ^= 0xff;
        }
        self.send(encoded.as_slice(), &[]);
    }

    /// Sends `data` in C2HData PDUs; true if the last one carried SUCCESS (no response follows).
    fn send_c2h(&mut self, cid: u16, data: &[u8], corrupt_digest: bool) -> bool {
        let chunk = self.config.c2h_chunk.max(1);
        let mut at = 0;
        while at < data.len() {
            let len = chunk.min(data.len() - at);
            let last = at + len == data.len();
            let mut extra = if last { flags::LAST_PDU } else { 0 };
            if last && self.config.c2h_success {
                extra |= flags::SUCCESS;
            }
            let header = DataHeader { cccid: cid, ttag: 0, offset: at as u32, length: len as u32 };
            let mut bytes = pdu::data_pdu(pdu_type::C2H_DATA, header, extra, self.digests).as_slice().to_vec();
            bytes.extend_from_slice(&data[at..at + len]);
            if self.digests.data {
                let mut crc = pdu::digest(&data[at..at + len]);
                if corrupt_digest {
                    crc[0] ^= 0xff;
                }
                bytes.extend_from_slice(&crc);
            }
            if self.config.slow_c2h {
                let half = bytes.len() / 2;
                let _ = self.stream.write_all(&bytes[..half]);
                thread::sleep(std::time::Duration::from_millis(20));
                let _ = self.stream.write_all(&bytes[half..]);
            } else {
                let _ = self.stream.write_all(&bytes);
            }
            at += len;
        }
        self.config.c2h_success
    }

    fn reply_data(&mut self, cid: u16, data: &[u8], corrupt_digest: bool) {
        if !self.send_c2h(cid, data, corrupt_digest) {
            self.respond(Cqe::new(cid, Status::SUCCESS), false);
        }
    }

    /// Handles one command PDU; false ends the connection.
    fn command(&mut self, bytes: &[u8]) -> bool {
        let header = CommonHeader::parse(bytes);
        if header.pdu_type != pdu_type::CAPSULE_CMD {
            self.error(format!("PDU type {:#x} where a command was expected", header.pdu_type));
            self.terminate(Fatal::new(pdu::fes::PDU_SEQUENCE_ERROR, 0), bytes);
            return false;
        }
        let mut raw = [0u8; SQE_BYTES];
        raw.copy_from_slice(&bytes[COMMON_HEADER_BYTES..COMMON_HEADER_BYTES + SQE_BYTES]);
        let sqe = Sqe(raw);
        let data_offset = usize::from(header.pdo);
        let trailer = if self.digests.data { 4 } else { 0 };
        let in_capsule = if data_offset > 0 { &bytes[data_offset..bytes.len() - trailer] } else { &[][..] };
        let cid = sqe.cid();
        if sqe.opcode() == TERM_OPCODE {
            self.terminate(Fatal::new(TERM_FES, TERM_FEI), bytes);
            return false;
        }
        if sqe.opcode() == admin::FABRICS {
            self.fabrics(&sqe, in_capsule);
            return true;
        }
        if self.qid > 0 {
            match sqe.opcode() {
                io::READ => self.read(&sqe),
                io::WRITE => return self.write(&sqe, in_capsule),
                io::FLUSH => self.respond(Cqe::new(cid, Status::SUCCESS), false),
                _ => self.respond(Cqe::new(cid, Status::INVALID_OPCODE), false),
            }
            return true;
        }
        match sqe.opcode() {
            admin::IDENTIFY => self.identify(&sqe),
            admin::GET_LOG_PAGE => self.log_page(&sqe),
            admin::SET_FEATURES => {
                // Grant what was asked (number of queues echoes CDW11).
                self.respond(Cqe::new(cid, Status::SUCCESS).with_result(u64::from(sqe.cdw(11))), false)
            }
            admin::GET_FEATURES => self.respond(Cqe::new(cid, Status::SUCCESS).with_result(0x42), false),
            // A notice at once: namespace attribute changed (type 2, info 0, log 04h).
            admin::ASYNC_EVENT_REQUEST => self.respond(Cqe::new(cid, Status::SUCCESS).with_result(AER_NOTICE), false),
            admin::KEEP_ALIVE => {
                self.state.lock().expect("state").keep_alives += 1;
                let corrupt = self.config.bad_header_digest_on_keep_alive;
                self.respond(Cqe::new(cid, Status::SUCCESS), corrupt);
            }
            _ => self.respond(Cqe::new(cid, Status::INVALID_OPCODE), false),
        }
        true
    }

    fn fabrics(&mut self, sqe: &Sqe, data: &[u8]) {
        let cid = sqe.cid();
        match sqe.fctype() {
            fctype::CONNECT => {
                let (qid, sqsize, kato) = (le16(&sqe.0, 42), le16(&sqe.0, 44), le32(&sqe.0, 48));
                if data.len() != 1024 || sqe.sgl_type() != SGL_DATA_BLOCK_OFFSET {
                    self.error(format!("Connect data of {} bytes, SGL type {:#x}", data.len(), sqe.sgl_type()));
                }
                let cntlid = le16(data, 16);
                self.state.lock().expect("state").connects.push((qid, sqsize, kato, cntlid));
                self.qid = qid;
                let subnqn = get_str(data, 256, 256).unwrap_or_default();
                let hostnqn = get_str(data, 512, 256).unwrap_or_default();
                let known = subnqn == SUBNQN || subnqn == peerless_tools::initiator::DISCOVERY_NQN;
                if !known || hostnqn != HOSTNQN {
                    return self.respond(Cqe::new(cid, status::CONNECT_INVALID_HOST), false);
                }
                // IPO names the offending field: SQSIZE (SQE byte 44) or CNTLID (data byte 16).
                if u64::from(sqsize) > MQES {
                    let refusal = Cqe::new(cid, status::CONNECT_INVALID_PARAMETERS).with_result(44);
                    return self.respond(refusal, false);
                }
                if qid > 0 && cntlid != CNTLID {
                    let refusal = Cqe::new(cid, status::CONNECT_INVALID_PARAMETERS).with_result(16 | 1 << 16);
                    return self.respond(refusal, false);
                }
                self.respond(Cqe::new(cid, Status::SUCCESS).with_result(u64::from(CNTLID)), false);
            }
            fctype::DISCONNECT => self.respond(Cqe::new(cid, Status::SUCCESS), false),
            fctype::PROPERTY_GET => {
                let cc = self.state.lock().expect("state").cc;
                let value = match le32(&sqe.0, 44) {
                    0x00 => MQES | (1 << 24), // CAP: MQES, TO = 500 ms
                    0x08 => 0x0001_0300,
                    0x14 => cc,
                    // CSTS.RDY follows CC.EN at once; SHST reports complete once SHN is set.
                    0x1c => (cc & 1) | if cc & (0x3 << 14) != 0 { 0x2 << 2 } else { 0 },
                    _ => return self.respond(Cqe::new(cid, Status::INVALID_FIELD), false),
                };
                self.respond(Cqe::new(cid, Status::SUCCESS).with_result(value), false);
            }
            fctype::PROPERTY_SET => {
                if le32(&sqe.0, 44) == 0x14 {
                    self.state.lock().expect("state").cc = u64::from(le32(&sqe.0, 48));
                }
                self.respond(Cqe::new(cid, Status::SUCCESS), false);
            }
            _ => self.respond(Cqe::new(cid, Status::INVALID_OPCODE), false),
        }
    }

    fn identify(&mut self, sqe: &Sqe) {
        let nguid = [0x11; 16];
        let eui64 = [0x22; 8];
        let data = match sqe.cdw(10) & 0xff {
            0x01 => identify::controller(&ControllerData {
                serial: "FAKE0001",
                model: "Fake Controller",
                firmware: "1.0",
                cntlid: CNTLID,
                version: 0x0001_0300,
                subnqn: SUBNQN,
                controller_type: ControllerType::Io,
                mdts: self.config.mdts,
                max_namespaces: 1,
                kas: 100,
                aerl: 3,
                volatile_write_cache: false,
                in_capsule_data_bytes: self.config.in_capsule_bytes,
                max_commands: 128,
                oncs: identify::ONCS,
                ana_groups: 0,
                ana_transition_time_s: 0,
                keyed_sgl: false,
            }),
            0x00 => identify::namespace(&NamespaceData {
                num_blocks: self.config.num_blocks,
                block_size: self.config.block_size,
                nguid,
                eui64,
                shared: false,
                anagrpid: 0,
                accessible: true,
            }),
            0x02 => identify::active_namespaces(&[NSID], sqe.nsid()),
            0x03 => identify::namespace_descriptors(&nguid, &eui64, &[0x33; 16]),
            _ => return self.respond(Cqe::new(sqe.cid(), Status::INVALID_FIELD), false),
        };
        if sqe.sgl_length() as usize != data.len() {
            self.error(format!("identify SGL length {}", sqe.sgl_length()));
        }
        self.reply_data(sqe.cid(), &data, false);
    }

    fn log_page(&mut self, sqe: &Sqe) {
        let lid = (sqe.cdw(10) & 0xff) as u8;
        let numd = (sqe.cdw(10) >> 16) | ((sqe.cdw(11) & 0xffff) << 16);
        let len = (numd as usize + 1) * 4;
        let offset = (u64::from(sqe.cdw(13)) << 32 | u64::from(sqe.cdw(12))) as usize;
        if lid != log::lid::DISCOVERY {
            return self.respond(Cqe::new(sqe.cid(), status::INVALID_LOG_PAGE), false);
        }
        let entry = |subtype, subnqn| DiscoveryEntry {
            subtype,
            portid: 1,
            ipv6: false,
            trsvcid: "4420",
            traddr: "127.0.0.1",
            subnqn,
            secure_channel_required: false,
            trtype: "TCP",
        };
        let page = log::discovery(7, &[entry(3, peerless_tools::initiator::DISCOVERY_NQN), entry(2, SUBNQN)]);
        let mut data = vec![0u8; len];
        if let Some(available) = page.get(offset..) {
            let n = available.len().min(len);
            data[..n].copy_from_slice(&available[..n]);
        }
        self.reply_data(sqe.cid(), &data, false);
    }

    /// The byte range of an I/O command on the disk, or the status that refuses it.
    fn range(&self, sqe: &Sqe) -> Result<std::ops::Range<usize>, Status> {
        if sqe.nsid() != NSID {
            return Err(Status::INVALID_NAMESPACE);
        }
        if sqe.slba() + u64::from(sqe.nlb()) > self.config.num_blocks {
            return Err(Status::LBA_OUT_OF_RANGE);
        }
        let bs = self.config.block_size as usize;
        let start = sqe.slba() as usize * bs;
        let len = sqe.nlb() as usize * bs;
        if sqe.sgl_length() as usize != len {
            return Err(status::DATA_SGL_LENGTH_INVALID);
        }
        Ok(start..start + len)
    }

    fn read(&mut self, sqe: &Sqe) {
        let range = match self.range(sqe) {
            Ok(range) => range,
            Err(status) => return self.respond(Cqe::new(sqe.cid(), status), false),
        };
        if Some(sqe.slba()) == self.config.bad_c2h_offset_lba {
            let header = DataHeader { cccid: sqe.cid(), ttag: 0, offset: 512, length: 512 };
            let encoded = pdu::data_pdu(pdu_type::C2H_DATA, header, flags::LAST_PDU, self.digests);
            return self.send(encoded.as_slice(), &[0u8; 512]);
        }
        let mut data = self.state.lock().expect("state").disk[range].to_vec();
        if self.config.corrupt_read_data {
            let middle = data.len() / 2;
            data[middle] ^= 0x5a;
        }
        self.reply_data(sqe.cid(), &data, sqe.slba() == BAD_DIGEST_LBA);
    }

    fn write(&mut self, sqe: &Sqe, in_capsule: &[u8]) -> bool {
        let cid = sqe.cid();
        let range = match self.range(sqe) {
            Ok(range) => range,
            Err(status) => {
                self.respond(Cqe::new(cid, status), false);
                return true;
            }
        };
        let data = if sqe.sgl_type() == SGL_DATA_BLOCK_OFFSET {
            if in_capsule.len() != range.len() || in_capsule.len() > self.config.in_capsule_bytes as usize {
                self.error(format!("in-capsule write of {} bytes for {}", in_capsule.len(), range.len()));
            }
            self.state.lock().expect("state").in_capsule_writes += 1;
            in_capsule.to_vec()
        } else {
            match self.solicit(cid, range.len()) {
                Some(data) => data,
                None => return false,
            }
        };
        self.state.lock().expect("state").disk[range].copy_from_slice(&data);
        self.respond(Cqe::new(cid, Status::SUCCESS), false);
        true
    }

    /// R2T for the whole write in `r2t_chunk` pieces; collects the H2CData answers.
    fn solicit(&mut self, cid: u16, len: usize) -> Option<Vec<u8>> {
        let mut data = vec![0u8; len];
        let mut solicited = 0;
        let ttag = cid.wrapping_add(100);
        while solicited < len {
            let r2t_len = self.config.r2t_chunk.min(len - solicited);
            let header = DataHeader { cccid: cid, ttag, offset: solicited as u32, length: r2t_len as u32 };
            self.send(pdu::r2t(header, self.digests).as_slice(), &[]);
            self.state.lock().expect("state").r2ts += 1;
            let mut received = 0;
            while received < r2t_len {
                let pdu = self.read_pdu()?;
                let common = CommonHeader::parse(&pdu);
                if common.pdu_type == pdu_type::CAPSULE_CMD {
                    self.backlog.push_back(pdu);
                    continue;
                }
                let h2c = DataHeader::parse(&pdu);
                let at = h2c.offset as usize;
                let n = h2c.length as usize;
                let expect_last = received + n == r2t_len;
                let ok = common.pdu_type == pdu_type::H2C_DATA
                    && h2c.cccid == cid
                    && h2c.ttag == ttag
                    && at == solicited + received
                    && n <= self.config.maxh2cdata as usize
                    && (common.flags & flags::LAST_PDU != 0) == expect_last;
                if !ok {
                    self.error(format!("bad H2CData {h2c:?} flags {:#x} for R2T at {solicited}", common.flags));
                    return None;
                }
                let start = usize::from(common.pdo);
                data[at..at + n].copy_from_slice(&pdu[start..start + n]);
                received += n;
                self.state.lock().expect("state").h2c_pdus += 1;
            }
            solicited += r2t_len;
        }
        Some(data)
    }
}
