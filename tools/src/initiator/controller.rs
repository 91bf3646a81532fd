//! A host's view of one NVMe-oF controller: the admin queue's Connect, property access,
//! the enable sequence, identify, log pages, features, keep-alive, and I/O queues on
//! connections of their own (NVMe-oF 1.1, 3.3 and 6).

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use peerless_target::nvme::cmd::SqeBuilder;
use peerless_target::nvme::identify::{cns, IDENTIFY_BYTES};
use peerless_target::nvme::{admin, fctype, le32, put16, put_str};
use peerless_target::tcp::pdu::Digests;

use super::auth::HostAuth;
use super::error::{Error, Result};
use super::info::{Capabilities, ControllerInfo, NamespaceInfo};
use super::queue::{Completion, IoQueue, Link, QueuePair, Xfer, MAX_QUEUE_ENTRIES, MIN_QUEUE_ENTRIES};
use super::tcp_link::TcpLink;
use super::tls::HostTls;
use super::transport::{TlsLogin, Transport, MAX_TRANSFER_BYTES};
pub use super::trtype::{Trtype, NO_RDMA_FEATURE};

/// Entries of the admin queue (Linux's NVME_AQ_DEPTH; the discovery log's ASQSZ).
pub const ADMIN_QUEUE_ENTRIES: u16 = 32;
/// In-capsule data the admin queue accepts (NVMe-oF 1.1, 4.1: 8 KiB for admin capsules).
const ADMIN_IN_CAPSULE_BYTES: usize = 8192;
/// Connect data (NVMe-oF 1.1, Figure 20), always sent in the capsule.
const CONNECT_DATA_BYTES: usize = 1024;
/// An NQN is at most 223 bytes (NVMe Base 2.0, 4.5).
pub const MAX_NQN_BYTES: usize = 223;
/// CNTLID asking for any controller of the dynamic model.
const DYNAMIC_CNTLID: u16 = 0xffff;
/// How often CSTS is read while waiting for RDY.
const CSTS_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Waiting for RDY when CAP.TO is 0 still gets this long.
const MIN_READY_TIMEOUT_MS: u64 = 500;
/// CNS 02h returns at most this many IDs per page; we read at most this many pages.
const NSIDS_PER_PAGE: usize = IDENTIFY_BYTES / 4;
const MAX_NSID_PAGES: usize = 16;

/// Controller properties (NVMe Base 2.0, 3.1.3).
pub mod property {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1c;
}

/// Feature identifiers (NVMe Base 2.0, Figure 317).
pub mod feature {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
}

/// CC fields: EN (bit 0), IOSQES 2^6 = 64 bytes (19:16), IOCQES 2^4 = 16 bytes (23:20).
const CC_ENABLE: u64 = 1 | (6 << 16) | (4 << 20);
const CSTS_RDY: u64 = 1 << 0;
const CSTS_CFS: u64 = 1 << 1;
/// CC.SHN = 01b, normal shutdown (bits 15:14); CSTS.SHST = 10b, complete (bits 3:2).
const CC_SHN_NORMAL: u64 = 1 << 14;
const CSTS_SHST_MASK: u64 = 0x3 << 2;
const CSTS_SHST_COMPLETE: u64 = 0x2 << 2;
/// Waiting for shutdown when the controller gives no RTD3E hint (Linux's default too).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Data per command an RDMA admin queue's registered buffers hold (Identify, log pages in
/// pieces): the admin queue's transfer limit on NVMe/RDMA.
#[cfg(feature = "rdma")]
const RDMA_ADMIN_TRANSFER_BYTES: usize = 32 * 1024;

/// How to connect.
#[derive(Clone, Debug)]
pub struct Options {
    /// TCP (the default) or RDMA.
    pub trtype: Trtype,
    pub digests: Digests,
    /// Keep Alive Timeout asked for at Connect; 0 turns keep-alive off.
    pub kato_ms: u32,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// Host Identifier in the Connect data.
    pub hostid: [u8; 16],
    pub admin_entries: u16,
    /// DH-HMAC-CHAP secrets, for targets that ask the host to authenticate.
    pub auth: Option<HostAuth>,
    /// A TLS PSK: every queue connects over TLS 1.3 (a `secure_channel` listener).
    pub tls: Option<HostTls>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            trtype: Trtype::Tcp,
            digests: Digests::default(),
            kato_ms: 10_000,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(30),
            hostid: *b"peerless-host-id",
            admin_entries: ADMIN_QUEUE_ENTRIES,
            auth: None,
            tls: None,
        }
    }
}

/// Where and as whom to connect, kept for I/O queues.
#[derive(Clone, Debug)]
struct Target {
    addr: SocketAddr,
    subnqn: String,
    hostnqn: String,
    options: Options,
}

impl Target {
    fn tls_login(&self) -> Option<TlsLogin<'_>> {
        let key = self.options.tls.as_ref()?;
        Some(TlsLogin { key, hostnqn: &self.hostnqn, subnqn: &self.subnqn })
    }

    /// Refuses what the transport cannot do before anything is connected.
    fn check(&self) -> Result<()> {
        let options = &self.options;
        if options.trtype == Trtype::Rdma {
            options.trtype.available().map_err(|why| Error::Invalid(why.into()))?;
            if options.tls.is_some() {
                return Err(Error::Invalid("TLS is an NVMe/TCP feature; trtype RDMA has none".into()));
            }
            if options.digests != Digests::default() {
                return Err(Error::Invalid(
                    "header and data digests are NVMe/TCP PDU features; trtype RDMA has none".into(),
                ));
            }
        }
        Ok(())
    }

    /// The admin queue (QID 0) of a new association, not yet connected.
    fn open_admin_queue(&self) -> Result<QueuePair> {
        let entries = self.options.admin_entries;
        self.open_queue(self.addr, 0, entries, DYNAMIC_CNTLID, ADMIN_IN_CAPSULE_BYTES, MAX_TRANSFER_BYTES)
    }

    /// Connects queue `qid` through `addr`: its transport's connection (the RDMA CM
    /// request names the queue and the controller), ready for the Fabrics Connect.
    /// `in_capsule_bytes` is what the queue may send in capsules until the controller's
    /// limits are known; an RDMA admin queue sends none (its data always moves by keyed
    /// SGL, as Linux's and SPDK's hosts do).
    #[cfg_attr(not(feature = "rdma"), allow(unused_variables))]
    fn open_queue(
        &self,
        addr: SocketAddr,
        qid: u16,
        entries: u16,
        cntlid: u16,
        in_capsule_bytes: usize,
        max_transfer_bytes: usize,
    ) -> Result<QueuePair> {
        self.check()?;
        let options = &self.options;
        let link = match options.trtype {
            Trtype::Tcp => Link::Tcp(TcpLink::new(Transport::connect(
                addr,
                options.digests,
                options.connect_timeout,
                self.tls_login(),
            )?)),
            #[cfg(feature = "rdma")]
            Trtype::Rdma => {
                let in_capsule_bytes = if qid == 0 { 0 } else { in_capsule_bytes };
                let max_transfer_bytes = if qid == 0 { RDMA_ADMIN_TRANSFER_BYTES } else { max_transfer_bytes };
                let params = super::rdma::Params {
                    addr,
                    qid,
                    entries,
                    cntlid,
                    in_capsule_bytes,
                    max_transfer_bytes,
                    timeout: options.connect_timeout,
                };
                Link::Rdma(Box::new(super::rdma::RdmaLink::connect(&params)?))
            }
            #[cfg(not(feature = "rdma"))]
            Trtype::Rdma => return Err(Error::Invalid(NO_RDMA_FEATURE.into())),
        };
        let mut queue = QueuePair::new(link, qid, entries, in_capsule_bytes, options.command_timeout);
        queue.set_limits(in_capsule_bytes, MAX_TRANSFER_BYTES);
        Ok(queue)
    }
}

pub struct Controller {
    admin: QueuePair,
    target: Target,
    cntlid: u16,
    cap: Capabilities,
    vs: u32,
    info: ControllerInfo,
    next_qid: u16,
    last_keep_alive: Instant,
}

impl Controller {
    /// Connects the admin queue, enables the controller and identifies it.
    pub fn connect(addr: SocketAddr, subnqn: &str, hostnqn: &str, options: &Options) -> Result<Controller> {
        for nqn in [subnqn, hostnqn] {
            if nqn.is_empty() || nqn.len() > MAX_NQN_BYTES {
                return Err(Error::Invalid(format!("NQN of {} bytes: {nqn:?}", nqn.len())));
            }
        }
        if !(MIN_QUEUE_ENTRIES..=MAX_QUEUE_ENTRIES).contains(&options.admin_entries) {
            return Err(Error::Invalid(format!("{} admin queue entries", options.admin_entries)));
        }
        let target = Target { addr, subnqn: subnqn.into(), hostnqn: hostnqn.into(), options: options.clone() };
        let mut admin = target.open_admin_queue()?;
        let cntlid = connect_and_authenticate(&mut admin, &target, 0, DYNAMIC_CNTLID, options.kato_ms)?;
        let cap = Capabilities(property_get(&mut admin, property::CAP, true)?);
        let vs = property_get(&mut admin, property::VS, false)? as u32;
        let mut controller = Controller {
            admin,
            target,
            cntlid,
            cap,
            vs,
            info: ControllerInfo::parse(&[]),
            next_qid: 1,
            last_keep_alive: Instant::now(),
        };
        controller.enable()?;
        controller.info = controller.identify_controller()?;
        let max_transfer = controller.max_transfer_bytes();
        controller.admin.set_limits(ADMIN_IN_CAPSULE_BYTES, max_transfer);
        Ok(controller)
    }

    /// CC.EN = 1, then CSTS.RDY within CAP.TO (NVMe Base 2.0, 3.5.1).
    fn enable(&mut self) -> Result<()> {
        self.property_set(property::CC, CC_ENABLE)?;
        let timeout_ms = self.cap.ready_timeout_ms().max(MIN_READY_TIMEOUT_MS);
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let csts = self.property_get(property::CSTS, false)?;
            if csts & CSTS_CFS != 0 {
                return Err(Error::Protocol("controller fatal status (CSTS.CFS) while enabling".into()));
            }
            if csts & CSTS_RDY != 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout { what: "CSTS.RDY after CC.EN", ms: timeout_ms });
            }
            thread::sleep(CSTS_POLL_INTERVAL);
        }
    }

    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    pub fn cap(&self) -> Capabilities {
        self.cap
    }

    pub fn vs(&self) -> u32 {
        self.vs
    }

    pub fn info(&self) -> &ControllerInfo {
        &self.info
    }

    pub fn subnqn(&self) -> &str {
        &self.target.subnqn
    }

    pub fn addr(&self) -> SocketAddr {
        self.target.addr
    }

    pub fn trtype(&self) -> Trtype {
        self.target.options.trtype
    }

    /// The admin queue, for commands the helpers do not cover (tests, AER).
    pub fn admin(&mut self) -> &mut QueuePair {
        &mut self.admin
    }

    /// Largest transfer per command: MDTS, bounded by what this initiator buffers.
    pub fn max_transfer_bytes(&self) -> usize {
        let mdts = self.info.max_transfer_bytes(self.cap.min_page_bytes());
        mdts.unwrap_or(MAX_TRANSFER_BYTES).min(MAX_TRANSFER_BYTES)
    }

    /// Most entries an I/O queue may have (CAP.MQES + 1, within our own limit).
    pub fn max_io_queue_entries(&self) -> u16 {
        self.cap.max_queue_entries().min(u32::from(MAX_QUEUE_ENTRIES)) as u16
    }

    pub fn property_get(&mut self, offset: u32, eight_bytes: bool) -> Result<u64> {
        property_get(&mut self.admin, offset, eight_bytes)
    }

    pub fn property_set(&mut self, offset: u32, value: u64) -> Result<()> {
        // Attribute 1 = 8-byte property; CC and CSTS are 4 bytes.
        let eight = offset == property::CAP;
        let cmd =
            SqeBuilder::fabrics(fctype::PROPERTY_SET, 0).byte(40, u8::from(eight)).u32_at(44, offset).u64_at(48, value);
        self.admin.command(cmd, Xfer::None, Vec::new()).map(drop)
    }

    /// Identify with any CNS; returns the 4096-byte data structure.
    pub fn identify(&mut self, cns: u8, nsid: u32) -> Result<Vec<u8>> {
        let cmd = SqeBuilder::new(admin::IDENTIFY, 0).nsid(nsid).cdw(10, u32::from(cns));
        Ok(self.admin.command(cmd, Xfer::FromController, vec![0; IDENTIFY_BYTES])?.buf)
    }

    pub fn identify_controller(&mut self) -> Result<ControllerInfo> {
        Ok(ControllerInfo::parse(&self.identify(cns::CONTROLLER, 0)?))
    }

    /// Identify Namespace, with the UUID from CNS 03h when the controller has one.
    pub fn identify_namespace(&mut self, nsid: u32) -> Result<NamespaceInfo> {
        let mut ns = NamespaceInfo::parse(nsid, &self.identify(cns::NAMESPACE, nsid)?);
        match self.identify(cns::NAMESPACE_DESCRIPTORS, nsid) {
            Ok(list) => ns.apply_descriptors(&list),
            // Optional before NVMe 1.3: a refusal leaves the UUID unknown.
            Err(Error::Command { .. }) => {}
            Err(other) => return Err(other),
        }
        Ok(ns)
    }

    /// Active NSIDs, ascending (CNS 02h, paged by the last NSID seen).
    pub fn active_namespaces(&mut self) -> Result<Vec<u32>> {
        let mut nsids = Vec::new();
        for _ in 0..MAX_NSID_PAGES {
            let after = nsids.last().copied().unwrap_or(0);
            let page = self.identify(cns::ACTIVE_NAMESPACES, after)?;
            let found: Vec<u32> = (0..NSIDS_PER_PAGE).map(|i| le32(&page, i * 4)).take_while(|n| *n != 0).collect();
            let full = found.len() == NSIDS_PER_PAGE;
            nsids.extend(found);
            if !full {
                break;
            }
        }
        Ok(nsids)
    }

    /// Get Log Page: `len` bytes from `offset`, in as many commands as MDTS needs.
    pub fn get_log_page(&mut self, lid: u8, nsid: u32, offset: u64, len: usize) -> Result<Vec<u8>> {
        if len == 0 || !len.is_multiple_of(4) || !offset.is_multiple_of(4) {
            return Err(Error::Invalid(format!("log page read of {len} bytes at {offset}: dword multiples only")));
        }
        // The admin queue's own limit may be lower (an RDMA queue's registered buffers).
        let chunk_max = self.max_transfer_bytes().min(self.admin.max_transfer_bytes());
        let mut page = Vec::with_capacity(len);
        while page.len() < len {
            let chunk = (len - page.len()).min(chunk_max);
            let at = offset + page.len() as u64;
            // NUMD is 0's based dwords, split over CDW10 31:16 (low) and CDW11 15:0 (high).
            let numd = (chunk / 4 - 1) as u32;
            let cmd = SqeBuilder::new(admin::GET_LOG_PAGE, 0)
                .nsid(nsid)
                .cdw(10, u32::from(lid) | ((numd & 0xffff) << 16))
                .cdw(11, numd >> 16)
                .cdw(12, at as u32)
                .cdw(13, (at >> 32) as u32);
            page.extend_from_slice(&self.admin.command(cmd, Xfer::FromController, vec![0; chunk])?.buf);
        }
        Ok(page)
    }

    /// Set Features; returns CQE DW0.
    pub fn set_features(&mut self, fid: u8, cdw11: u32) -> Result<u32> {
        let cmd = SqeBuilder::new(admin::SET_FEATURES, 0).cdw(10, u32::from(fid)).cdw(11, cdw11);
        Ok(self.admin.command(cmd, Xfer::None, Vec::new())?.result as u32)
    }

    /// Get Features (current value); returns CQE DW0.
    pub fn get_features(&mut self, fid: u8) -> Result<u32> {
        let cmd = SqeBuilder::new(admin::GET_FEATURES, 0).cdw(10, u32::from(fid));
        Ok(self.admin.command(cmd, Xfer::None, Vec::new())?.result as u32)
    }

    /// Asks for `count` I/O submission and completion queues; returns what was granted.
    pub fn set_number_of_queues(&mut self, count: u16) -> Result<(u16, u16)> {
        if count == 0 {
            return Err(Error::Invalid("zero I/O queues".into()));
        }
        let wanted = u32::from(count - 1);
        let granted = self.set_features(feature::NUMBER_OF_QUEUES, wanted | (wanted << 16))?;
        Ok(((granted & 0xffff) as u16 + 1, (granted >> 16) as u16 + 1))
    }

    pub fn keep_alive(&mut self) -> Result<()> {
        self.admin.command(SqeBuilder::new(admin::KEEP_ALIVE, 0), Xfer::None, Vec::new())?;
        self.last_keep_alive = Instant::now();
        Ok(())
    }

    /// Sends Keep Alive when half the KATO has passed since the last one; true if it did.
    pub fn keep_alive_if_due(&mut self) -> Result<bool> {
        let kato = u64::from(self.target.options.kato_ms);
        if kato == 0 || self.last_keep_alive.elapsed() < Duration::from_millis(kato / 2) {
            return Ok(false);
        }
        self.keep_alive().map(|()| true)
    }

    /// Normal shutdown: CC.SHN = 01b, then wait for CSTS.SHST = complete (NVMe Base 2.0, 3.6.2).
    pub fn shutdown(&mut self) -> Result<()> {
        self.property_set(property::CC, CC_ENABLE | CC_SHN_NORMAL)?;
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            if self.property_get(property::CSTS, false)? & CSTS_SHST_MASK == CSTS_SHST_COMPLETE {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout { what: "CSTS.SHST after CC.SHN", ms: SHUTDOWN_TIMEOUT.as_millis() as u64 });
            }
            thread::sleep(CSTS_POLL_INTERVAL);
        }
    }

    /// Submits an Asynchronous Event Request; it completes when the controller has an event.
    /// Blocking admin helpers leave its completion for `poll_admin`.
    pub fn submit_async_event_request(&mut self) -> Result<u16> {
        self.admin.submit(SqeBuilder::new(admin::ASYNC_EVENT_REQUEST, 0), Xfer::None, Vec::new())
    }

    /// Completions of admin commands submitted without waiting (AERs), non-blocking.
    pub fn poll_admin(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        self.admin.poll(usize::from(ADMIN_QUEUE_ENTRIES), out)
    }

    /// Connects the next I/O queue (qid 1, 2, ...) with `entries` entries on a new connection.
    pub fn io_queue(&mut self, entries: u16) -> Result<IoQueue> {
        let qid = self.next_qid;
        let queue = self.io_queue_with_qid(qid, entries)?;
        self.next_qid += 1;
        Ok(queue)
    }

    /// Connects an I/O queue with a chosen qid (tests of the target's checks use any).
    pub fn io_queue_with_qid(&mut self, qid: u16, entries: u16) -> Result<IoQueue> {
        self.io_queue_via(self.target.addr, qid, entries)
    }

    /// Connects an I/O queue of this controller through `addr`, which may be another
    /// port of the subsystem than the admin queue's (tests of the target's checks).
    pub fn io_queue_via(&mut self, addr: SocketAddr, qid: u16, entries: u16) -> Result<IoQueue> {
        if !(MIN_QUEUE_ENTRIES..=MAX_QUEUE_ENTRIES).contains(&entries) {
            return Err(Error::Invalid(format!("{entries} queue entries (at most {MAX_QUEUE_ENTRIES})")));
        }
        let mut queue = self.open_io_queue(addr, qid, entries)?;
        // The I/O queue's KATO field is reserved; the admin queue's timer covers the association.
        let result = fabrics_connect(&mut queue, &self.target, qid, self.cntlid, 0)?;
        // The queue's in-capsule limit holds from Connect on: authentication messages obey it.
        queue.set_limits(self.info.in_capsule_data_bytes(), self.max_transfer_bytes());
        authenticate_if_asked(&mut queue, &self.target, qid, result)?;
        Ok(queue)
    }
}

/// AUTHREQ.ATR in Connect's DW0: the host must authenticate (DH-HMAC-CHAP) first.
const CONNECT_AUTHREQ_ATR: u64 = 1 << 17;

/// Connect, then DH-HMAC-CHAP when the controller asks for it (NVMe Base 2.0, 8.13).
fn connect_and_authenticate(
    queue: &mut QueuePair,
    target: &Target,
    qid: u16,
    cntlid: u16,
    kato_ms: u32,
) -> Result<u16> {
    let result = fabrics_connect(queue, target, qid, cntlid, kato_ms)?;
    authenticate_if_asked(queue, target, qid, result)?;
    Ok(result as u16)
}

/// DH-HMAC-CHAP on `queue` when Connect's `result` (DW0) asked for it.
fn authenticate_if_asked(queue: &mut QueuePair, target: &Target, qid: u16, result: u64) -> Result<()> {
    if result & CONNECT_AUTHREQ_ATR != 0 {
        let Some(auth) = &target.options.auth else {
            return Err(Error::Authentication(
                "the target requires DH-HMAC-CHAP authentication and no key was given (--dhchap-key)".into(),
            ));
        };
        // The transaction ID only has to tell this queue's transactions apart.
        auth.authenticate(queue, &target.hostnqn, &target.subnqn, qid)?;
    }
    Ok(())
}

impl Controller {
    /// Connects I/O queue `qid` and stops after Connect: returns the queue and whether the
    /// controller asked for authentication. For tests of a host that skips it.
    pub fn connect_io_queue_unauthenticated(&mut self, qid: u16, entries: u16) -> Result<(QueuePair, bool)> {
        let mut queue = self.open_io_queue(self.target.addr, qid, entries)?;
        let result = fabrics_connect(&mut queue, &self.target, qid, self.cntlid, 0)?;
        queue.set_limits(self.info.in_capsule_data_bytes(), self.max_transfer_bytes());
        Ok((queue, result & CONNECT_AUTHREQ_ATR != 0))
    }

    /// An I/O queue's connection: Connect data travels in the capsule over TCP; over
    /// RDMA in the capsule only when IOCCSZ leaves room, else by keyed SGL.
    fn open_io_queue(&self, addr: SocketAddr, qid: u16, entries: u16) -> Result<QueuePair> {
        let in_capsule = match self.target.options.trtype {
            Trtype::Tcp => CONNECT_DATA_BYTES,
            Trtype::Rdma => self.info.in_capsule_data_bytes(),
        };
        self.target.open_queue(addr, qid, entries, self.cntlid, in_capsule, self.max_transfer_bytes())
    }

    /// Authenticates the admin queue again (NVMe Base 2.0, 8.13: a host may at any time).
    pub fn reauthenticate(&mut self, tid: u16) -> Result<()> {
        let Some(auth) = self.target.options.auth.clone() else {
            return Err(Error::Invalid("no DH-HMAC-CHAP key to authenticate with".into()));
        };
        auth.authenticate(&mut self.admin, &self.target.hostnqn, &self.target.subnqn, tid).map(drop)
    }
}

/// Connects a bare admin queue to `subnqn` and stops there: returns the queue, its CNTLID
/// and whether the controller asked for authentication. For tests of what a target does
/// with a host that skips or botches authentication.
pub fn connect_admin_queue(
    addr: SocketAddr,
    subnqn: &str,
    hostnqn: &str,
    options: &Options,
) -> Result<(QueuePair, u16, bool)> {
    let target = Target { addr, subnqn: subnqn.into(), hostnqn: hostnqn.into(), options: options.clone() };
    let mut admin = target.open_admin_queue()?;
    let result = fabrics_connect(&mut admin, &target, 0, DYNAMIC_CNTLID, options.kato_ms)?;
    Ok((admin, result as u16, result & CONNECT_AUTHREQ_ATR != 0))
}

/// Fabrics Connect (NVMe-oF 1.1, 3.3): returns DW0 of the response (CNTLID in bits 15:0,
/// AUTHREQ in 31:16).
fn fabrics_connect(queue: &mut QueuePair, target: &Target, qid: u16, cntlid: u16, kato_ms: u32) -> Result<u64> {
    let mut data = vec![0u8; CONNECT_DATA_BYTES];
    data[..16].copy_from_slice(&target.options.hostid);
    put16(&mut data, 16, cntlid);
    put_str(&mut data, 256, 256, &target.subnqn, 0);
    put_str(&mut data, 512, 256, &target.hostnqn, 0);
    // SQSIZE is 0's based; RECFMT 0; CATTR 0 (no priority class).
    let cmd = SqeBuilder::fabrics(fctype::CONNECT, 0)
        .u16_at(40, 0)
        .u16_at(42, qid)
        .u16_at(44, queue.entries() - 1)
        .byte(46, 0)
        .u32_at(48, kato_ms);
    let completion = queue.command(cmd, Xfer::ToController, data)?;
    Ok(completion.result & 0xffff_ffff)
}

/// Property Get (NVMe-oF 1.1, 3.4): ATTRIB byte 40 (0 = 4 bytes, 1 = 8), OFST at 44.
fn property_get(queue: &mut QueuePair, offset: u32, eight_bytes: bool) -> Result<u64> {
    let cmd = SqeBuilder::fabrics(fctype::PROPERTY_GET, 0).byte(40, u8::from(eight_bytes)).u32_at(44, offset);
    let value = queue.command(cmd, Xfer::None, Vec::new())?.result;
    Ok(if eight_bytes { value } else { value & 0xffff_ffff })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rdma(options: Options) -> Result<Controller> {
        let addr = "127.0.0.1:4420".parse().expect("addr");
        let options = Options { trtype: Trtype::Rdma, connect_timeout: Duration::from_secs(2), ..options };
        Controller::connect(addr, "nqn.2016-06.io.spdk:cnode1", "nqn.host", &options)
    }

    #[test]
    fn rdma_refuses_what_only_tcp_has() {
        let digests = Options { digests: Digests { header: true, data: false }, ..Options::default() };
        let tls = Options {
            tls: Some(HostTls::new("NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:").expect("key")),
            ..Options::default()
        };
        for options in [digests, tls] {
            match rdma(options) {
                Err(Error::Invalid(why)) => assert!(why.contains("NVMe/TCP") || why == NO_RDMA_FEATURE, "{why}"),
                other => panic!("{:?}", other.err()),
            }
        }
    }

    #[test]
    fn rdma_says_what_is_missing() {
        let error = rdma(Options::default()).err().expect("no RDMA target on 127.0.0.1");
        if cfg!(feature = "rdma") {
            #[cfg(feature = "rdma")]
            if spdk_sys::rdma::devices().map_or(true, |found| found.is_empty()) {
                assert!(error.to_string().contains("RDMA devices: none on this machine"), "{error}");
            }
        } else {
            assert_eq!(error, Error::Invalid(NO_RDMA_FEATURE.into()));
            assert!(error.to_string().contains("--features peerless-tools/rdma"));
        }
    }
}
