//! One host queue pair on one link: the host's half of NVMe/TCP. It frames and checks
//! what the target sends (digests included, header digest before trusting a length),
//! answers R2Ts with H2CData, reassembles C2HData, and pairs each answer with the
//! command it answers, failing the run on anything the protocol does not allow.

use std::collections::{BTreeMap, BTreeSet};

use peerless_target::nvme::{le16, le32, Cqe, Sqe, Status};
use peerless_target::tcp::pdu::{self, flags, pdu_type, CommonHeader, DataHeader, Digests, IcReq, IcResp, Receiver};

use super::pattern;
use super::world::Env;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QState {
    /// ICReq sent; waiting for ICResp.
    Handshake,
    /// Connect sent.
    Connecting,
    Live,
    /// The host takes no more commands on it; it waits for the link to end.
    Closing,
    /// The link is gone: every command still outstanding was lost with it.
    Dead,
}

#[derive(Clone, Debug)]
pub enum Kind {
    Connect,
    /// Property Set CC: EN = 1 (with the entry sizes), or EN = 0 (a reset).
    SetCc {
        enable: bool,
    },
    GetCsts,
    SetQueues,
    GetKato,
    /// Set Features Asynchronous Event Configuration: namespace attribute notices.
    SetAec,
    /// Get Log Page Changed Namespace List (NVMe Base 2.0, 5.16.1.5).
    GetChangedLog,
    Identify,
    KeepAlive,
    Aer,
    /// Abort of command `cid` on the queue of link `link` (NVMe Base 2.0, 5.1).
    Abort {
        link: usize,
        sqid: u16,
        cid: u16,
    },
    Disconnect,
    Read {
        nsid: u32,
        lba: u64,
        blocks: u64,
        bytes: usize,
    },
    Write {
        nsid: u32,
        lba: u64,
        blocks: u64,
        stamp: u64,
        in_capsule: bool,
    },
    WriteZeroes {
        stamp: u64,
    },
    /// Dataset Management with Attribute Deallocate, its range list `data` (NVM Command
    /// Set 1.0, 3.2.3).
    Deallocate {
        stamp: u64,
        data: Vec<u8>,
        in_capsule: bool,
    },
    Flush,
    /// A command the target must refuse with `expected`.
    Invalid {
        expected: Status,
    },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Connect => "Connect",
            Kind::SetCc { enable: true } => "Property Set CC.EN=1",
            Kind::SetCc { enable: false } => "Property Set CC.EN=0",
            Kind::GetCsts => "Property Get CSTS",
            Kind::SetQueues => "Set Features Number of Queues",
            Kind::GetKato => "Get Features Keep Alive Timer",
            Kind::SetAec => "Set Features Asynchronous Event Configuration",
            Kind::GetChangedLog => "Get Log Page Changed Namespace List",
            Kind::Identify => "Identify",
            Kind::KeepAlive => "Keep Alive",
            Kind::Aer => "Asynchronous Event Request",
            Kind::Abort { .. } => "Abort",
            Kind::Disconnect => "Disconnect",
            Kind::Read { .. } => "Read",
            Kind::Write { .. } => "Write",
            Kind::WriteZeroes { .. } => "Write Zeroes",
            Kind::Deallocate { .. } => "Dataset Management",
            Kind::Flush => "Flush",
            Kind::Invalid { .. } => "invalid command",
        }
    }
}

pub struct Cmd {
    pub kind: Kind,
    pub sent_seq: u64,
    pub sent_ns: u64,
    /// C2HData received so far.
    pub data: Vec<u8>,
    /// An Abort naming this command has been sent.
    pub abort_requested: bool,
}

/// What happened on a queue that its host must act on.
pub enum Event {
    Ready,
    /// A command was answered: by a completion, or by C2HData with SUCCESS (no CQE).
    Answered {
        cid: u16,
        cmd: Cmd,
        cqe: Option<Cqe>,
    },
}

pub struct Queue {
    pub qid: u16,
    pub link: usize,
    pub conn_id: u64,
    pub state: QState,
    pub digests: Digests,
    /// Host PDU Data Alignment asked for in ICReq, in dwords, 0's based.
    hpda: u8,
    /// SQSIZE + 1: the host keeps at most one less outstanding.
    pub entries: u16,
    maxh2cdata: usize,
    pub cmds: BTreeMap<u16, Cmd>,
    next_cid: u16,
    rx_pos: usize,
    /// Command IDs an Abort in flight names: not reused until it is answered, or the
    /// Abort could hit the wrong command.
    pub abort_pending: BTreeSet<u16>,
    /// Command IDs an Abort sent for an earlier queue with this QID still names: the
    /// target finds a queue by QID, so they wait for that Abort's answer too.
    pub reserved: BTreeSet<u16>,
    /// Statuses of commands answered while an Abort named them, for that Abort's answer.
    pub answered_under_abort: BTreeMap<u16, Status>,
    /// When the queue was opened, for the watchdog.
    pub opened_ns: u64,
    /// The host ended the connection (H2CTermReq): what still arrives is dropped.
    terminated: bool,
    /// ICResp has arrived: digests are on as negotiated.
    introduced: bool,
}

impl Queue {
    /// Opens a link to the target and sends ICReq.
    pub fn open(env: &mut Env, host: usize, qid: u16, entries: u16, digests: Digests, hpda: u8) -> Queue {
        let (link, conn_id) = env.open_link(host, digests.header && digests.data);
        let request = IcReq { pfv: 0, hpda, digests, maxr2t: 0 };
        env.send(link, &request.encode());
        Queue {
            qid,
            link,
            conn_id,
            state: QState::Handshake,
            digests,
            hpda,
            entries,
            maxh2cdata: 0,
            cmds: BTreeMap::new(),
            next_cid: 0,
            rx_pos: 0,
            abort_pending: BTreeSet::new(),
            reserved: BTreeSet::new(),
            answered_under_abort: BTreeMap::new(),
            opened_ns: env.now_ns,
            terminated: false,
            introduced: false,
        }
    }

    /// Whether one more command fits (the host keeps one entry free, NVMe Base 2.0, 3.3.1).
    pub fn has_room(&self) -> bool {
        self.cmds.len() + 1 < usize::from(self.entries)
    }

    pub fn is_live(&self) -> bool {
        self.state == QState::Live
    }

    /// Sends a command; returns its CID.
    pub fn submit(&mut self, env: &mut Env, kind: Kind, sqe: impl FnOnce(u16) -> Sqe, data: &[u8]) -> u16 {
        assert!(self.cmds.len() < usize::from(self.entries), "queue {} overfilled by the host", self.qid);
        let cid = self.take_cid();
        let sqe = sqe(cid);
        let mut pdu = pdu::capsule_cmd(sqe.bytes(), data.len(), self.digests).as_slice().to_vec();
        pdu.extend_from_slice(data);
        if self.digests.data && !data.is_empty() {
            pdu.extend_from_slice(&pdu::digest(data));
        }
        env.send(self.link, &pdu);
        env.stats.sent += 1;
        let seq = env.next_seq();
        env.trace(&[1, self.link as u64, u64::from(cid), u64::from(sqe.opcode())]);
        self.cmds
            .insert(cid, Cmd { kind, sent_seq: seq, sent_ns: env.now_ns, data: Vec::new(), abort_requested: false });
        cid
    }

    fn take_cid(&mut self) -> u16 {
        loop {
            let cid = self.next_cid;
            self.next_cid = self.next_cid.wrapping_add(1);
            if !self.cmds.contains_key(&cid) && !self.abort_pending.contains(&cid) && !self.reserved.contains(&cid) {
                return cid;
            }
        }
    }

    /// Handles what arrived on the link; the events are the host's to act on.
    pub fn receive(&mut self, env: &mut Env, events: &mut Vec<Event>) {
        if self.state == QState::Dead {
            return;
        }
        if self.terminated {
            // Nothing more from this connection can be trusted, or needs to be.
            env.links[self.link].host_rx.clear();
            return;
        }
        loop {
            match self.next_pdu(env, events) {
                Ok(true) => {}
                Ok(false) => break,
                Err(why) => {
                    // The host ends a connection whose bytes it cannot trust (NVMe/TCP 1.0,
                    // 3.6.2.4), which is only expected where the network flipped a bit.
                    if !env.links[self.link].corrupted_to_host {
                        env.fail(format!("queue {} (link {}): the target sent a bad PDU: {why}", self.qid, self.link));
                    }
                    env.stats.host_terminations += 1;
                    let term =
                        pdu::term_req(pdu_type::H2C_TERM_REQ, pdu::Fatal::new(pdu::fes::HEADER_DIGEST_ERROR, 0), &[]);
                    env.send(self.link, &term);
                    env.close_link(self.link);
                    self.state = QState::Closing;
                    self.terminated = true;
                    env.links[self.link].host_rx.truncate(self.rx_pos);
                    break;
                }
            }
        }
        let link = &mut env.links[self.link];
        if self.rx_pos > 0 {
            link.host_rx.drain(..self.rx_pos);
            self.rx_pos = 0;
        }
    }

    /// Whether the link has ended (reset, or closed by the target after all it sent).
    pub fn link_ended(&self, env: &Env) -> bool {
        let link = &env.links[self.link];
        !link.is_open() || (link.host_saw_fin && link.host_rx.len() == self.rx_pos)
    }

    fn next_pdu(&mut self, env: &mut Env, events: &mut Vec<Event>) -> Result<bool, String> {
        let rx = &env.links[self.link].host_rx[self.rx_pos..];
        if rx.len() < pdu::COMMON_HEADER_BYTES {
            return Ok(false);
        }
        let header = CommonHeader::parse(rx);
        let digests = if self.introduced { self.digests } else { Digests::default() };
        let max_data = match header.pdu_type {
            pdu_type::C2H_DATA => env.config.max_io_size as usize,
            _ => pdu::TERM_MAX_DATA,
        };
        let layout = pdu::validate(header, Receiver::Host, digests, max_data).map_err(|fatal| {
            format!("{:02x?}: FES {:#x} at byte {}", &rx[..pdu::COMMON_HEADER_BYTES], fatal.fes, fatal.fei)
        })?;
        if self.state == QState::Handshake
            && header.pdu_type != pdu_type::IC_RESP
            && header.pdu_type != pdu_type::C2H_TERM_REQ
        {
            return Err(format!("PDU type {:#x} before ICResp", header.pdu_type));
        }
        // The header digest before the length it covers: a flipped PLEN must not make the
        // host wait for bytes that will never come.
        if rx.len() < layout.header_bytes {
            return Ok(false);
        }
        let hlen = usize::from(header.hlen);
        if layout.header_bytes > hlen && !pdu::header_digest_ok(&rx[..layout.header_bytes], hlen) {
            return Err(format!("header digest error on PDU type {:#x}", header.pdu_type));
        }
        // Data the host asked to be aligned must be (NVMe/TCP 1.0, 3.6.2.2 HPDA); a
        // TermReq's error data follows its header, PDO being reserved there.
        let alignment = (usize::from(self.hpda) + 1) * 4;
        if header.pdu_type == pdu_type::C2H_DATA && layout.data_offset % alignment != 0 {
            return Err(format!(
                "PDU type {:#x} has its data at {}, HPDA asks for {alignment}",
                header.pdu_type, layout.data_offset
            ));
        }
        if rx.len() < layout.total {
            return Ok(false);
        }
        let bytes = rx[..layout.total].to_vec();
        let data = &bytes[layout.data_offset..layout.data_offset + layout.data_len];
        if layout.data_digest {
            let end = layout.data_offset + layout.data_len;
            if pdu::digest(data) != bytes[end..end + pdu::DIGEST_BYTES] {
                return Err(format!("data digest error on PDU type {:#x}", header.pdu_type));
            }
        }
        self.rx_pos += layout.total;
        env.trace(&[2, self.link as u64, u64::from(header.pdu_type), layout.total as u64]);
        self.on_pdu(env, events, header, &bytes[..layout.header_bytes], data);
        Ok(true)
    }

    fn on_pdu(&mut self, env: &mut Env, events: &mut Vec<Event>, header: CommonHeader, head: &[u8], data: &[u8]) {
        let queue = format!("queue {} (link {}, conn {})", self.qid, self.link, self.conn_id);
        match header.pdu_type {
            pdu_type::IC_RESP => {
                if self.introduced {
                    env.fail(format!("{queue}: a second ICResp"));
                }
                self.introduced = true;
                let response = IcResp::parse(head);
                if response.digests != self.digests || response.pfv != 0 || response.cpda != 0 {
                    env.fail(format!("{queue}: ICResp {response:?} does not answer our ICReq"));
                }
                if response.maxh2cdata < 4096 || !response.maxh2cdata.is_multiple_of(4) {
                    env.fail(format!("{queue}: MAXH2CDATA {} (NVMe/TCP 1.0, 3.6.2.3)", response.maxh2cdata));
                }
                self.maxh2cdata = response.maxh2cdata as usize;
                if self.digests.header && self.digests.data {
                    env.links[self.link].corruptible = true;
                }
                // A queue the host gave up on meanwhile (a reset) goes no further.
                if self.state == QState::Handshake {
                    self.state = QState::Connecting;
                    events.push(Event::Ready);
                }
            }
            pdu_type::C2H_TERM_REQ => {
                let (fes, fei) = (le16(head, 8), le32(head, 10));
                let link = &env.links[self.link];
                if !link.corrupted_to_target && !link.host_mangled {
                    env.fail(format!("{queue}: the target terminated the connection (FES {fes:#x}, FEI {fei})"));
                }
                // An unknown PDU type is an invalid header field at byte 0 (NVMe/TCP 1.0, 3.6.2.4).
                if link.host_mangled && !link.corrupted_to_target && (fes, fei) != (pdu::fes::INVALID_HEADER_FIELD, 0) {
                    env.fail(format!("{queue}: an unknown PDU type earned FES {fes:#x}, FEI {fei}"));
                }
                env.stats.target_terminations += 1;
                self.state = QState::Closing;
            }
            pdu_type::CAPSULE_RESP => {
                let cqe = Cqe::decode(&head[pdu::COMMON_HEADER_BYTES..]);
                self.answer(env, events, cqe.cid, Some(cqe));
            }
            pdu_type::C2H_DATA => {
                let data_header = DataHeader::parse(head);
                let cid = data_header.cccid;
                let Some(cmd) = self.cmds.get_mut(&cid) else {
                    env.fail(format!("{queue}: C2HData for command {cid}, which is not outstanding"));
                };
                let expected = match cmd.kind {
                    Kind::Read { bytes, .. } => bytes,
                    Kind::Identify | Kind::GetChangedLog => 4096,
                    _ => env.fail(format!("{queue}: C2HData for a {} (cid {cid})", cmd.kind.name())),
                };
                let offset = data_header.offset as usize;
                if offset != cmd.data.len()
                    || offset + data.len() > expected
                    || data_header.length as usize != data.len()
                {
                    env.fail(format!(
                        "{queue}: C2HData for cid {cid} at offset {offset} length {} (have {} of {expected})",
                        data.len(),
                        cmd.data.len()
                    ));
                }
                cmd.data.extend_from_slice(data);
                if header.flags & flags::SUCCESS != 0 {
                    if header.flags & flags::LAST_PDU == 0 || cmd.data.len() != expected {
                        env.fail(format!("{queue}: C2HData SUCCESS for cid {cid} before all its data"));
                    }
                    self.answer(env, events, cid, None);
                }
            }
            pdu_type::R2T => self.on_r2t(env, DataHeader::parse(head)),
            other => env.fail(format!("{queue}: unexpected PDU type {other:#x}")),
        }
    }

    fn answer(&mut self, env: &mut Env, events: &mut Vec<Event>, cid: u16, cqe: Option<Cqe>) {
        let Some(cmd) = self.cmds.remove(&cid) else {
            env.fail(format!(
                "queue {} (link {}): an answer for command {cid}, which is not outstanding (answered twice?)",
                self.qid, self.link
            ));
        };
        if let Some(cqe) = &cqe {
            // A refused Connect answers for a queue that does not exist: SQID 0.
            let refused_connect = matches!(cmd.kind, Kind::Connect) && !cqe.status.is_success();
            if cqe.sqid != self.qid && !refused_connect {
                env.fail(format!("queue {}: completion of cid {cid} names SQID {}", self.qid, cqe.sqid));
            }
            if cqe.sqhd >= self.entries && !matches!(cmd.kind, Kind::Connect) {
                env.fail(format!("queue {}: SQHD {} beyond {} entries", self.qid, cqe.sqhd, self.entries));
            }
        }
        if cmd.abort_requested && self.abort_pending.contains(&cid) {
            let status = cqe.map_or(Status::SUCCESS, |cqe| cqe.status);
            self.answered_under_abort.insert(cid, status);
        }
        env.trace(&[3, self.link as u64, u64::from(cid), cqe.map_or(0, |cqe| u64::from(cqe.status.sc) + 1)]);
        events.push(Event::Answered { cid, cmd, cqe });
    }

    /// Sends the data an R2T asks for, in H2CData PDUs no larger than MAXH2CDATA.
    fn on_r2t(&mut self, env: &mut Env, r2t: DataHeader) {
        let queue = format!("queue {} (link {})", self.qid, self.link);
        let Some(cmd) = self.cmds.get(&r2t.cccid) else {
            env.fail(format!("{queue}: R2T for command {}, which is not outstanding", r2t.cccid));
        };
        let data = match &cmd.kind {
            Kind::Write { nsid, lba, blocks, stamp, in_capsule: false } => {
                let block_size = env.config.block_size(*nsid);
                let mut data = vec![0u8; *blocks as usize * block_size];
                pattern::fill_blocks(&mut data, block_size, *nsid, *lba, *stamp);
                data
            }
            Kind::Deallocate { data, in_capsule: false, .. } => data.clone(),
            other => env.fail(format!("{queue}: R2T for a {} (cid {})", other.name(), r2t.cccid)),
        };
        let total = data.len();
        let (offset, length) = (r2t.offset as usize, r2t.length as usize);
        if length == 0 || offset + length > total || length > env.config.max_io_size as usize {
            env.fail(format!("{queue}: R2T for cid {} asks for {offset}+{length} of {total}", r2t.cccid));
        }
        let mut at = offset;
        while at < offset + length {
            let most = (offset + length - at).min(self.maxh2cdata);
            let chunk = env.rng.range(1, most as u64) as usize;
            let chunk = if env.rng.coin() { most } else { chunk };
            let last = at + chunk == offset + length;
            let header = DataHeader { cccid: r2t.cccid, ttag: r2t.ttag, offset: at as u32, length: chunk as u32 };
            let extra = if last { flags::LAST_PDU } else { 0 };
            let mut h2c = pdu::data_pdu(pdu_type::H2C_DATA, header, extra, self.digests).as_slice().to_vec();
            h2c.extend_from_slice(&data[at..at + chunk]);
            if self.digests.data {
                h2c.extend_from_slice(&pdu::digest(&data[at..at + chunk]));
            }
            env.send(self.link, &h2c);
            at += chunk;
        }
        env.stats.r2t += 1;
    }

    /// The link ended: everything outstanding is lost with it.
    pub fn die(&mut self) -> Vec<(u16, Cmd)> {
        self.state = QState::Dead;
        std::mem::take(&mut self.cmds).into_iter().collect()
    }
}
