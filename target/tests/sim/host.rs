//! A simulated host: one controller at a time (an admin queue and I/O queues, each on its
//! own link), brought up the way Linux's nvme-tcp does it (Connect, CC.EN = 1, CSTS.RDY,
//! Number of Queues, an AER, Keep Alive), then busy with reads and writes while it
//! now and then resets the controller, disconnects a queue, aborts a command, goes
//! silent until keep-alive reclaims its controller, or sends a command the target must
//! refuse. Each answer is checked against what the protocol and the media model allow.

use peerless_target::nvme::cmd::SqeBuilder;
use peerless_target::nvme::{admin, fctype, io, le16, put16, put_str, status, Status};
use peerless_target::tcp::pdu::Digests;

use super::pattern;
use super::queue::{Cmd, Event, Kind, QState, Queue};
use super::rng::Rng;
use super::world::{Env, NQN};

/// CC with EN = 1 and the only entry sizes the target serves: IOSQES 6, IOCQES 4.
const CC_ENABLE: u64 = 1 | (6 << 16) | (4 << 20);
const PROP_CC: u32 = 0x14;
const PROP_CSTS: u32 = 0x1c;
const FID_NUMBER_OF_QUEUES: u32 = 0x07;
const FID_KEEP_ALIVE_TIMER: u32 = 0x0f;
const FID_ASYNC_EVENT_CONFIG: u32 = 0x0b;
/// AEC bit 8: Namespace Attribute Notices (NVMe Base 2.0, Figure 317).
const AEC_NAMESPACE_ATTRIBUTE: u32 = 1 << 8;
const LID_CHANGED_NAMESPACES: u32 = 0x04;
/// AER DW0 for a namespace attribute change: notice (2), info 0, log page 4 (Figure 150).
const EVENT_NAMESPACE_CHANGED: u64 = 0x0004_0002;
const CNS_CONTROLLER: u32 = 0x01;
/// A command unanswered this long on a working link is lost (the run fails).
const ANSWER_LIMIT_NS: u64 = 2_000_000_000;

/// How often each host does each unusual thing, per step (per million).
#[derive(Clone, Copy, Debug)]
pub struct HostFaults {
    pub reset_per_million: u32,
    pub disconnect_per_million: u32,
    pub abort_per_million: u32,
    pub silence_per_million: u32,
    pub invalid_per_million: u32,
    pub identify_per_million: u32,
    /// A Keep Alive at a random moment, besides those the timeout calls for.
    pub keep_alive_per_million: u32,
    /// A PDU of no defined type on an I/O queue: the target must terminate the connection.
    pub mangle_per_million: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct HostConfig {
    pub io_queues: u16,
    pub admin_entries: u16,
    pub io_entries: u16,
    pub kato_ms: u32,
    /// Commands a live I/O queue may start per step, at most.
    pub burst: u64,
    pub faults: HostFaults,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No controller; a new one is brought up at `until_ns`.
    Idle {
        until_ns: u64,
    },
    /// The admin queue is coming up (handshake, Connect, enable, Number of Queues).
    Starting,
    Running,
    /// CC.EN = 0 was sent: I/O queues end, then the controller is enabled again.
    Resetting {
        disabled: bool,
        enabling: bool,
        since_ns: u64,
    },
    /// The controller is gone: every link is closed before a new one starts.
    TearingDown {
        since_ns: u64,
    },
}

pub struct Host {
    pub id: usize,
    nqn: String,
    rng: Rng,
    config: HostConfig,
    phase: Phase,
    cntlid: u16,
    granted_queues: u16,
    /// The Keep Alive Timeout the controller runs with (Get Features), in ms.
    kato_ms: u32,
    pub admin: Option<Queue>,
    pub io: Vec<Option<Queue>>,
    reopen_at_ns: Vec<u64>,
    next_keep_alive_ns: u64,
    /// No admin command is sent until then: keep-alive must reclaim the controller first.
    silent_until_ns: Option<u64>,
    aer: Option<u16>,
    /// Aborts sent and not yet answered, as (SQID, CID) of their victims.
    aborts_in_flight: std::collections::BTreeSet<(u16, u16)>,
    /// The target answered a command of this host, or lost one with a link.
    pub answered: u64,
}

impl Host {
    pub fn new(id: usize, rng: Rng, config: HostConfig) -> Host {
        Host {
            id,
            nqn: format!("nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-{:012x}", id + 1),
            rng,
            config,
            phase: Phase::Idle { until_ns: 0 },
            cntlid: 0,
            granted_queues: 0,
            kato_ms: config.kato_ms,
            admin: None,
            io: (0..config.io_queues).map(|_| None).collect(),
            reopen_at_ns: vec![0; usize::from(config.io_queues)],
            next_keep_alive_ns: 0,
            silent_until_ns: None,
            aer: None,
            aborts_in_flight: Default::default(),
            answered: 0,
        }
    }

    fn digests(&mut self) -> Digests {
        Digests { header: self.rng.coin(), data: self.rng.coin() }
    }

    /// Host PDU Data Alignment for a new connection: mostly none, as Linux asks.
    fn hpda(&mut self) -> u8 {
        *self.rng.pick(&[0, 0, 0, 1, 2, 3, 7, 31])
    }

    /// Every queue, admin first.
    fn queues_mut(&mut self) -> impl Iterator<Item = &mut Queue> {
        self.admin.iter_mut().chain(self.io.iter_mut().flatten())
    }

    /// Whether the host has nothing outstanding and nothing open.
    pub fn is_quiet(&self) -> bool {
        self.admin.is_none() && self.io.iter().all(Option::is_none)
    }

    /// Commands sent and not yet answered or lost, the held AER aside.
    pub fn outstanding(&self) -> usize {
        let admin = self.admin.as_ref().map_or(0, |queue| queue.cmds.len() - usize::from(self.aer.is_some()));
        admin + self.io.iter().flatten().map(|queue| queue.cmds.len()).sum::<usize>()
    }

    pub fn step(&mut self, env: &mut Env) {
        self.receive(env);
        self.bury(env);
        self.advance(env);
        if self.phase == Phase::Running && !env.draining {
            self.act(env);
            self.issue_io(env);
        }
    }

    /// Handles what arrived on every queue.
    fn receive(&mut self, env: &mut Env) {
        let mut events = Vec::new();
        if let Some(queue) = self.admin.as_mut() {
            queue.receive(env, &mut events);
            for event in events.drain(..) {
                self.on_admin_event(env, event);
            }
        }
        for index in 0..self.io.len() {
            let Some(queue) = self.io[index].as_mut() else { continue };
            queue.receive(env, &mut events);
            for event in events.drain(..) {
                self.on_io_event(env, index, event);
            }
        }
    }

    /// Queues whose links ended lose what they had outstanding.
    fn bury(&mut self, env: &mut Env) {
        if self.admin.as_ref().is_some_and(|queue| queue.link_ended(env)) {
            let mut queue = self.admin.take().expect("checked just above");
            self.lose(env, &mut queue);
            self.aer = None;
            // Aborts lost with the admin queue never reach the target.
            self.aborts_in_flight.clear();
            for queue in self.io.iter_mut().flatten() {
                queue.reserved.clear();
            }
            if !matches!(self.phase, Phase::Idle { .. } | Phase::TearingDown { .. }) {
                env.stats.controllers_lost += 1;
                self.phase = Phase::TearingDown { since_ns: env.now_ns };
            }
        }
        for index in 0..self.io.len() {
            if self.io[index].as_ref().is_some_and(|queue| queue.link_ended(env)) {
                let mut queue = self.io[index].take().expect("checked just above");
                self.lose(env, &mut queue);
                self.reopen_at_ns[index] = env.now_ns + self.rng.range(1_000, 200_000);
            }
        }
    }

    fn lose(&mut self, env: &mut Env, queue: &mut Queue) {
        for (_, cmd) in queue.die() {
            self.answered += 1;
            env.lose(queue.conn_id, &cmd);
        }
        // Its link may still be open at the target's end: close ours.
        env.close_link(queue.link);
    }

    /// Moves the controller's life on.
    fn advance(&mut self, env: &mut Env) {
        let now = env.now_ns;
        match self.phase {
            Phase::Idle { until_ns } if now >= until_ns && !env.finished => {
                let digests = self.digests();
                let hpda = self.hpda();
                self.admin = Some(Queue::open(env, self.id, 0, self.config.admin_entries, digests, hpda));
                self.phase = Phase::Starting;
                self.silent_until_ns = None;
            }
            Phase::TearingDown { since_ns } => {
                for queue in self.queues_mut() {
                    if queue.state != QState::Closing {
                        queue.state = QState::Closing;
                        env.close_link(queue.link);
                    }
                }
                if self.is_quiet() {
                    self.phase = Phase::Idle { until_ns: now + self.rng.range(10_000, 2_000_000) };
                } else if now - since_ns > ANSWER_LIMIT_NS {
                    env.fail(format!(
                        "host {}: its queues did not end {} ms after its controller went",
                        self.id,
                        (now - since_ns) / 1_000_000
                    ));
                }
            }
            Phase::Resetting { disabled: true, enabling: false, since_ns } => {
                if self.io.iter().all(Option::is_none) {
                    self.send_admin(env, Kind::SetCc { enable: true });
                    self.phase = Phase::Resetting { disabled: true, enabling: true, since_ns };
                } else if now - since_ns > ANSWER_LIMIT_NS {
                    env.fail(format!("host {}: CC.EN = 0 did not end its I/O queues: {}", self.id, self.describe(env)));
                }
            }
            _ => {}
        }
        if let Some(until) = self.silent_until_ns {
            if now >= until {
                self.silent_until_ns = None;
                if self.admin.as_ref().is_some_and(|queue| queue.state == QState::Live) && self.phase == Phase::Running
                {
                    env.fail(format!(
                        "host {}: silent for 1.5 x its keep-alive timeout of {} ms, and its controller is still there: {}",
                        self.id,
                        self.kato_ms,
                        self.describe(env)
                    ));
                }
            }
        }
        let talking = self.silent_until_ns.is_none()
            && matches!(self.phase, Phase::Running | Phase::Resetting { .. })
            && self.admin.as_ref().is_some_and(Queue::is_live);
        let due = now >= self.next_keep_alive_ns || self.rng.chance(self.config.faults.keep_alive_per_million);
        if talking && due && self.admin.as_ref().is_some_and(Queue::has_room) {
            self.send_admin(env, Kind::KeepAlive);
            env.stats.keep_alives += 1;
        }
        if self.phase == Phase::Running && !env.finished {
            self.open_io_queues(env);
            if self.aer.is_none() && self.silent_until_ns.is_none() {
                self.aer = self.send_admin(env, Kind::Aer);
            }
        }
    }

    fn open_io_queues(&mut self, env: &mut Env) {
        for index in 0..self.io.len() {
            let qid = index as u16 + 1;
            if self.io[index].is_none() && qid <= self.granted_queues && env.now_ns >= self.reopen_at_ns[index] {
                let digests = self.digests();
                let hpda = self.hpda();
                let mut queue = Queue::open(env, self.id, qid, self.config.io_entries, digests, hpda);
                queue.reserved =
                    self.aborts_in_flight.iter().filter(|(sqid, _)| *sqid == qid).map(|(_, cid)| *cid).collect();
                self.io[index] = Some(queue);
            }
        }
    }

    /// Sends an admin command on the live admin queue, with the SQE its kind calls for.
    fn send_admin(&mut self, env: &mut Env, kind: Kind) -> Option<u16> {
        // Silence means silence: any admin command would restart the keep-alive timer.
        if self.silent_until_ns.is_some() {
            return None;
        }
        let queue = self.admin.as_mut().filter(|queue| queue.is_live() && queue.has_room())?;
        let io_queues = self.config.io_queues;
        let sqe_kind = kind.clone();
        let cid = queue.submit(
            env,
            kind,
            move |cid| match sqe_kind {
                Kind::SetCc { enable } => SqeBuilder::fabrics(fctype::PROPERTY_SET, cid)
                    .u32_at(44, PROP_CC)
                    .u64_at(48, if enable { CC_ENABLE } else { 0 })
                    .build(),
                Kind::GetCsts => SqeBuilder::fabrics(fctype::PROPERTY_GET, cid).u32_at(44, PROP_CSTS).build(),
                Kind::SetQueues => {
                    let want = u32::from(io_queues - 1);
                    SqeBuilder::new(admin::SET_FEATURES, cid)
                        .cdw(10, FID_NUMBER_OF_QUEUES)
                        .cdw(11, want | (want << 16))
                        .build()
                }
                Kind::Identify => {
                    SqeBuilder::new(admin::IDENTIFY, cid).cdw(10, CNS_CONTROLLER).transport_data(4096).build()
                }
                Kind::GetKato => SqeBuilder::new(admin::GET_FEATURES, cid).cdw(10, FID_KEEP_ALIVE_TIMER).build(),
                Kind::SetAec => SqeBuilder::new(admin::SET_FEATURES, cid)
                    .cdw(10, FID_ASYNC_EVENT_CONFIG)
                    .cdw(11, AEC_NAMESPACE_ATTRIBUTE)
                    .build(),
                Kind::GetChangedLog => {
                    // NUMDL in CDW10 bits 31:16, 0's based: 1024 dwords.
                    SqeBuilder::new(admin::GET_LOG_PAGE, cid)
                        .cdw(10, LID_CHANGED_NAMESPACES | (1023 << 16))
                        .transport_data(4096)
                        .build()
                }
                Kind::KeepAlive => SqeBuilder::new(admin::KEEP_ALIVE, cid).build(),
                Kind::Aer => SqeBuilder::new(admin::ASYNC_EVENT_REQUEST, cid).build(),
                Kind::Abort { sqid, cid: victim, .. } => {
                    SqeBuilder::new(admin::ABORT, cid).cdw(10, u32::from(sqid) | (u32::from(victim) << 16)).build()
                }
                other => unreachable!("{} is not sent by send_admin", other.name()),
            },
            &[],
        );
        // Any admin command shows the host is alive; the next Keep Alive can wait.
        self.next_keep_alive_ns = env.now_ns + u64::from(self.kato_ms) * 1_000_000 / 4;
        Some(cid)
    }

    fn on_admin_event(&mut self, env: &mut Env, event: Event) {
        match event {
            Event::Ready => {
                let queue = self.admin.as_mut().expect("an admin event comes from the admin queue");
                let entries = queue.entries;
                let (host, nqn, kato_ms) = (self.id, self.nqn.clone(), self.config.kato_ms);
                queue.submit(
                    env,
                    Kind::Connect,
                    move |cid| {
                        SqeBuilder::fabrics(fctype::CONNECT, cid)
                            .u16_at(42, 0)
                            .u16_at(44, entries - 1)
                            .u32_at(48, kato_ms)
                            .in_capsule(1024)
                            .build()
                    },
                    &connect_data(host, 0xffff, &nqn),
                );
            }
            Event::Answered { cid, cmd, cqe } => {
                self.answered += 1;
                let status = cqe.map_or(Status::SUCCESS, |cqe| cqe.status);
                let result = cqe.map_or(0, |cqe| cqe.result);
                self.on_admin_answer(env, cid, cmd, status, result);
            }
        }
    }

    fn on_admin_answer(&mut self, env: &mut Env, cid: u16, cmd: Cmd, status: Status, result: u64) {
        let host = self.id;
        let expect_success = |env: &mut Env, what: &str| {
            if status != Status::SUCCESS {
                env.fail(format!("host {host}: {what} failed: {status}"));
            }
        };
        match cmd.kind {
            Kind::Connect => {
                expect_success(env, "admin Connect");
                self.cntlid = result as u16;
                if let Some(queue) = self.admin.as_mut() {
                    queue.state = QState::Live;
                }
                self.send_admin(env, Kind::SetCc { enable: true });
            }
            Kind::SetCc { enable: true } => {
                expect_success(env, "CC.EN = 1");
                self.send_admin(env, Kind::GetCsts);
            }
            Kind::SetCc { enable: false } => {
                expect_success(env, "CC.EN = 0");
                if let Phase::Resetting { since_ns, .. } = self.phase {
                    self.phase = Phase::Resetting { disabled: true, enabling: false, since_ns };
                }
                // The target deletes every I/O queue (NVMe Base 2.0, 3.7.2); those not yet
                // connected it may never have seen, so the host closes them itself.
                for queue in self.io.iter_mut().flatten() {
                    if queue.state != QState::Live {
                        env.close_link(queue.link);
                    }
                    queue.state = QState::Closing;
                }
            }
            Kind::GetCsts => {
                expect_success(env, "Property Get CSTS");
                if result & 1 != 1 {
                    env.fail(format!("host {host}: CSTS {result:#x} is not ready after CC.EN = 1"));
                }
                match self.phase {
                    Phase::Starting => {
                        self.send_admin(env, Kind::SetQueues);
                    }
                    Phase::Resetting { .. } => {
                        env.stats.resets_done += 1;
                        self.phase = Phase::Running;
                    }
                    _ => {}
                }
            }
            Kind::SetQueues => {
                expect_success(env, "Set Features Number of Queues");
                let granted = (result & 0xffff) as u16 + 1;
                if granted < 1 || granted > self.config.io_queues.max(1) {
                    env.fail(format!("host {host}: granted {granted} I/O queues of {}", self.config.io_queues));
                }
                self.granted_queues = granted;
                self.send_admin(env, Kind::GetKato);
            }
            Kind::GetKato => {
                expect_success(env, "Get Features Keep Alive Timer");
                // The target rounds the timeout up to its granularity (KAS): keep to its value.
                let kato_ms = result as u32;
                if kato_ms < self.config.kato_ms || !kato_ms.is_multiple_of(100) {
                    env.fail(format!("host {host}: asked for KATO {} ms, got {kato_ms} ms", self.config.kato_ms));
                }
                self.kato_ms = kato_ms;
                self.send_admin(env, Kind::SetAec);
            }
            Kind::SetAec => {
                expect_success(env, "Set Features Asynchronous Event Configuration");
                self.phase = Phase::Running;
                self.aer = self.send_admin(env, Kind::Aer);
            }
            Kind::GetChangedLog => {
                expect_success(env, "Get Log Page Changed Namespace List");
                let known = |nsid: u32| nsid == 0 || nsid == u32::MAX || env.config.block_size(nsid) > 0;
                let listed =
                    cmd.data.chunks_exact(4).map(|word| u32::from_le_bytes([word[0], word[1], word[2], word[3]]));
                if cmd.data.len() != 4096 || !listed.clone().all(known) {
                    env.fail(format!(
                        "host {host}: Changed Namespace List of {} bytes names unknown namespaces",
                        cmd.data.len()
                    ));
                }
                env.stats.changed_logs += 1;
            }
            Kind::Identify => {
                expect_success(env, "Identify Controller");
                if cmd.data.len() != 4096 || le16(&cmd.data, 78) != self.cntlid {
                    env.fail(format!("host {host}: Identify Controller data is wrong ({} bytes)", cmd.data.len()));
                }
            }
            Kind::KeepAlive => expect_success(env, "Keep Alive"),
            Kind::Aer => {
                self.aer = None;
                if status == status::ABORTED_BY_REQUEST && cmd.abort_requested {
                    env.stats.aborts_of_aer += 1;
                } else if status == Status::SUCCESS && result == EVENT_NAMESPACE_CHANGED {
                    env.stats.events += 1;
                    self.send_admin(env, Kind::GetChangedLog);
                } else {
                    env.fail(format!("host {host}: AER {cid} completed with {status}, DW0 {result:#x}"));
                }
                if self.phase == Phase::Running {
                    self.aer = self.send_admin(env, Kind::Aer);
                }
            }
            Kind::Abort { link, sqid, cid: victim } => {
                expect_success(env, "Abort");
                let aborted = result & 1 == 0;
                env.stats.aborts_answered += 1;
                if aborted {
                    env.stats.aborts_hit += 1;
                }
                self.check_abort(env, link, sqid, victim, aborted);
            }
            ref other => env.fail(format!("host {host}: {} answered on the admin queue", other.name())),
        }
    }

    /// An Abort said whether it aborted `victim`: the victim's own answer must agree.
    fn check_abort(&mut self, env: &mut Env, link: usize, sqid: u16, victim: u16, aborted: bool) {
        let host = self.id;
        self.aborts_in_flight.remove(&(sqid, victim));
        for queue in self.queues_mut().filter(|queue| queue.qid == sqid) {
            queue.reserved.remove(&victim);
        }
        let Some(queue) = self.queues_mut().find(|queue| queue.link == link) else { return };
        queue.abort_pending.remove(&victim);
        if let Some(status) = queue.answered_under_abort.remove(&victim) {
            if aborted != (status == status::ABORTED_BY_REQUEST) {
                env.fail(format!(
                    "host {host}: Abort of SQ {sqid} cid {victim} said aborted={aborted}, but it completed with {status}"
                ));
            }
        } else if queue.cmds.contains_key(&victim) && aborted {
            // Answered as aborted, yet still outstanding: its abort answer must be on the way.
            queue.answered_under_abort.insert(victim, status::ABORTED_BY_REQUEST);
            queue.abort_pending.insert(victim);
            env.stats.aborts_before_victim += 1;
        }
    }

    fn on_io_event(&mut self, env: &mut Env, index: usize, event: Event) {
        let cntlid = self.cntlid;
        let (host, nqn) = (self.id, self.nqn.clone());
        let queue = self.io[index].as_mut().expect("an event comes from a queue");
        match event {
            Event::Ready => {
                let (qid, entries) = (queue.qid, queue.entries);
                queue.submit(
                    env,
                    Kind::Connect,
                    move |cid| {
                        SqeBuilder::fabrics(fctype::CONNECT, cid)
                            .u16_at(42, qid)
                            .u16_at(44, entries - 1)
                            .in_capsule(1024)
                            .build()
                    },
                    &connect_data(host, cntlid, &nqn),
                );
            }
            Event::Answered { cid, cmd, cqe } => {
                self.answered += 1;
                let status = cqe.map_or(Status::SUCCESS, |cqe| cqe.status);
                self.on_io_answer(env, index, cid, cmd, status);
            }
        }
    }

    fn on_io_answer(&mut self, env: &mut Env, index: usize, cid: u16, cmd: Cmd, status: Status) {
        let host = self.id;
        let resetting = matches!(self.phase, Phase::Resetting { .. } | Phase::TearingDown { .. });
        let queue = self.io[index].as_mut().expect("an answer comes from a queue");
        let qid = queue.qid;
        if status == status::ABORTED_BY_REQUEST && !cmd.abort_requested {
            env.fail(format!("host {host}: queue {qid} cid {cid} ({}) aborted without an Abort", cmd.kind.name()));
        }
        if let Some(claimed) = queue.answered_under_abort.get(&cid) {
            if *claimed == status::ABORTED_BY_REQUEST && !queue.abort_pending.contains(&cid) && status != *claimed {
                env.fail(format!(
                    "host {host}: queue {qid} cid {cid}: its Abort said aborted, but it completed with {status}"
                ));
            }
        }
        if cmd.abort_requested && !queue.abort_pending.contains(&cid) {
            queue.answered_under_abort.remove(&cid);
        }
        // A disabled controller runs no I/O (NVMe Base 2.0, 3.5.2): allowed while resetting.
        let sequence_error_allowed = resetting && status == status::COMMAND_SEQUENCE_ERROR;
        let seq = env.next_seq();
        match cmd.kind {
            Kind::Connect => {
                if status == Status::SUCCESS {
                    if queue.state == QState::Connecting {
                        queue.state = QState::Live;
                    }
                } else if status == status::CONNECT_INVALID_PARAMETERS || status == status::COMMAND_SEQUENCE_ERROR {
                    // The QID is still held by the queue this one replaces, until the target
                    // notices that queue's link is gone; or the controller is being reset.
                    env.stats.connects_refused += 1;
                    queue.state = QState::Closing;
                    env.close_link(queue.link);
                } else {
                    env.fail(format!("host {host}: Connect of I/O queue {qid} failed: {status}"));
                }
            }
            Kind::Disconnect => {
                if status != Status::SUCCESS {
                    env.fail(format!("host {host}: Disconnect of queue {qid} failed: {status}"));
                }
                env.stats.disconnects += 1;
            }
            Kind::Read { nsid, lba, blocks, bytes } => {
                env.model.read_done(cmd.sent_seq);
                if status == Status::SUCCESS {
                    env.stats.reads += 1;
                    env.stats.bytes_read += bytes as u64;
                    if cmd.data.len() != bytes {
                        env.fail(format!(
                            "host {host}: read cid {cid} succeeded with {} of {bytes} bytes",
                            cmd.data.len()
                        ));
                    }
                    let block_size = bytes / blocks as usize;
                    for (offset, block) in cmd.data.chunks_exact(block_size).enumerate() {
                        let lba = lba + offset as u64;
                        let checked = pattern::decode(block, nsid, lba)
                            .and_then(|stamp| env.model.check_read(nsid, lba, stamp, cmd.sent_seq, seq));
                        if let Err(why) = checked {
                            env.fail(format!("host {host}: queue {qid} read cid {cid}: {why}"));
                        }
                    }
                } else if !(status == status::ABORTED_BY_REQUEST
                    || status == Status::UNRECOVERED_READ_ERROR
                    || sequence_error_allowed)
                {
                    env.fail(format!("host {host}: read cid {cid} on queue {qid} failed: {status}"));
                } else {
                    env.stats.io_errors += 1;
                }
            }
            Kind::Write { stamp, in_capsule, blocks, nsid, .. } => {
                if status == Status::SUCCESS {
                    env.stats.writes += 1;
                    env.stats.bytes_written += blocks * env.config.block_size(nsid) as u64;
                    if in_capsule {
                        env.stats.in_capsule_writes += 1;
                    }
                    env.model.write_acked(stamp, seq);
                } else if status == status::ABORTED_BY_REQUEST {
                    env.stats.aborted_commands += 1;
                    env.model.write_aborted(stamp);
                } else if status == Status::WRITE_FAULT || sequence_error_allowed {
                    env.stats.io_errors += 1;
                    env.model.write_failed(stamp, seq);
                } else {
                    env.fail(format!("host {host}: write cid {cid} on queue {qid} failed: {status}"));
                }
            }
            Kind::WriteZeroes { stamp, .. } | Kind::Deallocate { stamp, .. } => {
                if status == Status::SUCCESS {
                    env.stats.zeroings += 1;
                    env.model.write_acked(stamp, seq);
                } else if status == status::ABORTED_BY_REQUEST {
                    env.stats.aborted_commands += 1;
                    env.model.write_aborted(stamp);
                } else if status == Status::INTERNAL_ERROR || sequence_error_allowed {
                    // The disk failed one of its I/Os: some ranges may be zeroed, some not.
                    env.stats.io_errors += 1;
                    env.model.write_failed(stamp, seq);
                } else {
                    env.fail(format!("host {host}: {} cid {cid} on queue {qid} failed: {status}", cmd.kind.name()));
                }
            }
            Kind::Flush => {
                if !(status == Status::SUCCESS || status == Status::INTERNAL_ERROR || sequence_error_allowed) {
                    env.fail(format!("host {host}: flush cid {cid} failed: {status}"));
                }
            }
            Kind::Invalid { expected } => {
                if status != expected && !sequence_error_allowed {
                    env.fail(format!("host {host}: an invalid command got {status}, not {expected}"));
                }
                env.stats.refused += 1;
            }
            ref other => env.fail(format!("host {host}: {} answered on I/O queue {qid}", other.name())),
        }
    }

    /// The unusual things a running host does now and then.
    fn act(&mut self, env: &mut Env) {
        let faults = self.config.faults;
        if self.silent_until_ns.is_some() {
            return;
        }
        if self.rng.chance(faults.silence_per_million) {
            // Silence long enough that keep-alive must fire (NVMe Base 2.0, 3.9.4).
            let kato_ns = u64::from(self.kato_ms) * 1_000_000;
            self.silent_until_ns = Some(env.now_ns + kato_ns + kato_ns / 2);
            self.next_keep_alive_ns = env.now_ns;
            env.stats.silences += 1;
            return;
        }
        if self.rng.chance(faults.reset_per_million) && self.admin.as_ref().is_some_and(Queue::has_room) {
            self.phase = Phase::Resetting { disabled: false, enabling: false, since_ns: env.now_ns };
            self.send_admin(env, Kind::SetCc { enable: false });
            env.stats.resets += 1;
            return;
        }
        if self.rng.chance(faults.identify_per_million) {
            self.send_admin(env, Kind::Identify);
        }
        if self.rng.chance(faults.disconnect_per_million) {
            let index = self.rng.below(self.io.len() as u64) as usize;
            if let Some(queue) = self.io[index].as_mut().filter(|queue| queue.is_live() && queue.has_room()) {
                queue.submit(env, Kind::Disconnect, |cid| SqeBuilder::fabrics(fctype::DISCONNECT, cid).build(), &[]);
                queue.state = QState::Closing;
            }
        }
        if self.rng.chance(faults.abort_per_million) {
            self.abort_something(env);
        }
        if self.rng.chance(faults.mangle_per_million) {
            let index = self.rng.below(self.io.len() as u64) as usize;
            if let Some(queue) = self.io[index].as_mut().filter(|queue| queue.is_live()) {
                // A common header of a type nobody defined (NVMe/TCP 1.0, 3.6.1, Figure 13).
                let mut bogus = [0u8; 24];
                bogus[0] = 0x0f;
                bogus[2] = 24;
                bogus[4] = 24;
                env.links[queue.link].host_mangled = true;
                env.send(queue.link, &bogus);
                queue.state = QState::Closing;
                env.stats.mangled += 1;
            }
        }
    }

    fn abort_something(&mut self, env: &mut Env) {
        if !self.admin.as_ref().is_some_and(Queue::has_room) {
            return;
        }
        // Now and then the held AER (the one admin command that waits), else an I/O command.
        let target = if self.rng.below(8) == 0 {
            self.aer.and_then(|aer| self.admin.as_mut().map(|queue| (queue, aer)))
        } else {
            let index = self.rng.below(self.io.len() as u64) as usize;
            let pick = self.rng.next_u64();
            self.io[index].as_mut().filter(|queue| queue.is_live()).and_then(|queue| {
                let candidates: Vec<u16> =
                    queue.cmds.iter().filter(|(_, cmd)| !cmd.abort_requested).map(|(cid, _)| *cid).collect();
                (!candidates.is_empty()).then(|| {
                    let cid = candidates[(pick % candidates.len() as u64) as usize];
                    (queue, cid)
                })
            })
        };
        let Some((link, sqid, victim)) = target.map(|(queue, victim)| (queue.link, queue.qid, victim)) else { return };
        if self.send_admin(env, Kind::Abort { link, sqid, cid: victim }).is_none() {
            return;
        }
        env.stats.aborts_sent += 1;
        self.aborts_in_flight.insert((sqid, victim));
        let queue = self.queues_mut().find(|queue| queue.link == link).expect("the victim's queue");
        if let Some(cmd) = queue.cmds.get_mut(&victim) {
            cmd.abort_requested = true;
            queue.abort_pending.insert(victim);
        }
    }

    /// Keeps the live I/O queues busy with reads and writes.
    fn issue_io(&mut self, env: &mut Env) {
        for index in 0..self.io.len() {
            let burst = self.rng.range(0, self.config.burst);
            for _ in 0..burst {
                let Some(queue) = self.io[index].as_mut().filter(|queue| queue.is_live() && queue.has_room()) else {
                    break;
                };
                submit_io(&mut self.rng, env, queue, self.config.faults.invalid_per_million);
            }
        }
    }

    /// Checks that nothing has waited too long for an answer on a working link.
    pub fn watchdog(&self, env: &mut Env) {
        for queue in self.admin.iter().chain(self.io.iter().flatten()) {
            if !env.links[queue.link].is_open() || queue.state == QState::Dead {
                continue;
            }
            for (cid, cmd) in &queue.cmds {
                if Some(*cid) == self.aer && queue.qid == 0 {
                    continue;
                }
                if env.now_ns - cmd.sent_ns > ANSWER_LIMIT_NS {
                    env.fail(format!(
                        "host {}: queue {} (link {}, conn {}) cid {cid} ({}) unanswered for {} ms",
                        self.id,
                        queue.qid,
                        queue.link,
                        queue.conn_id,
                        cmd.kind.name(),
                        (env.now_ns - cmd.sent_ns) / 1_000_000
                    ));
                }
            }
            if matches!(queue.state, QState::Handshake | QState::Connecting | QState::Closing)
                && env.now_ns - queue.opened_ns > 2 * ANSWER_LIMIT_NS
                && queue.cmds.is_empty()
            {
                env.fail(format!(
                    "host {}: queue {} (link {}) stuck in {:?}",
                    self.id, queue.qid, queue.link, queue.state
                ));
            }
        }
    }

    /// The host's queues as the world sees them, for failure messages.
    pub fn describe(&self, env: &Env) -> String {
        let mut text = format!("phase {:?}", self.phase);
        for queue in self.admin.iter().chain(self.io.iter().flatten()) {
            let link = &env.links[queue.link];
            text += &format!(
                "; qid {} link {} conn {} {:?} {} outstanding, link {:?} fin seen {} target shut {} unread {}, rx {:02x?}",
                queue.qid,
                queue.link,
                queue.conn_id,
                queue.state,
                queue.cmds.len(),
                link.state,
                link.host_saw_fin,
                link.peer.is_shut_down(),
                link.peer.unread(),
                &link.host_rx[..link.host_rx.len().min(32)]
            );
        }
        text
    }

    /// Winds down: no new I/O (the world stops it), and once nothing is outstanding, every
    /// link is closed.
    pub fn wind_down(&mut self, env: &mut Env) {
        if self.outstanding() == 0 && !matches!(self.phase, Phase::Idle { .. }) {
            self.phase = Phase::TearingDown { since_ns: env.now_ns };
        }
    }
}

/// Connect's data (NVMe-oF 1.1, Figure 20): host identifier, controller ID, NQNs.
fn connect_data(host: usize, cntlid: u16, hostnqn: &str) -> Vec<u8> {
    let mut data = vec![0u8; 1024];
    data[0] = host as u8 + 1;
    data[15] = 0x51;
    put16(&mut data, 16, cntlid);
    put_str(&mut data, 256, 256, NQN, 0);
    put_str(&mut data, 512, 256, hostnqn, 0);
    data
}

/// Starts one random I/O command on `queue`.
fn submit_io(rng: &mut Rng, env: &mut Env, queue: &mut Queue, invalid_per_million: u32) {
    let namespaces = env.config.namespaces.clone();
    let &(nsid, block_size, num_blocks) = rng.pick(&namespaces);
    let block_size = block_size as usize;
    let max_blocks = (env.config.max_io_size as u64 / block_size as u64).min(num_blocks);
    if rng.chance(invalid_per_million) {
        return submit_invalid(rng, env, queue, nsid, block_size, num_blocks);
    }
    // Mostly small, sometimes up to MDTS: large transfers cost the most to simulate.
    let blocks = match rng.below(10) {
        0..=5 => rng.range(1, max_blocks.min(8)),
        6..=8 => rng.range(1, max_blocks.min(64)),
        _ => rng.range(1, max_blocks),
    };
    // Half the I/O goes to a few hot blocks, so writes and reads overlap in flight.
    let hot = (num_blocks / 16).max(blocks);
    let span = if rng.coin() { hot } else { num_blocks };
    let lba = rng.below(span - blocks + 1);
    let bytes = blocks as usize * block_size;
    match rng.below(100) {
        0..=1 => {
            queue.submit(env, Kind::Flush, |cid| SqeBuilder::new(io::FLUSH, cid).nsid(nsid).build(), &[]);
        }
        2..=3 => {
            let stamp = env.next_stamp();
            let cid = queue.submit(
                env,
                Kind::WriteZeroes { stamp },
                |cid| SqeBuilder::new(io::WRITE_ZEROES, cid).rw(nsid, lba, blocks as u32).build(),
                &[],
            );
            let seq = queue.cmds[&cid].sent_seq;
            env.model.zeroes_sent(stamp, nsid, &[(lba, blocks)], seq);
        }
        4..=5 => submit_deallocate(rng, env, queue, nsid, num_blocks),
        6..=49 => {
            let cid = queue.submit(
                env,
                Kind::Read { nsid, lba, blocks, bytes },
                |cid| SqeBuilder::new(io::READ, cid).rw(nsid, lba, blocks as u32).transport_data(bytes as u32).build(),
                &[],
            );
            let seq = queue.cmds[&cid].sent_seq;
            env.model.read_sent(seq);
        }
        _ => {
            let stamp = env.next_stamp();
            let in_capsule = bytes <= env.config.in_capsule_bytes && rng.coin();
            let mut data = Vec::new();
            if in_capsule {
                data = vec![0u8; bytes];
                pattern::fill_blocks(&mut data, block_size, nsid, lba, stamp);
            }
            let cid = queue.submit(
                env,
                Kind::Write { nsid, lba, blocks, stamp, in_capsule },
                |cid| {
                    let sqe = SqeBuilder::new(io::WRITE, cid).rw(nsid, lba, blocks as u32);
                    if in_capsule { sqe.in_capsule(bytes as u32) } else { sqe.transport_data(bytes as u32) }.build()
                },
                &data,
            );
            let seq = queue.cmds[&cid].sent_seq;
            env.model.write_sent(stamp, nsid, lba, blocks, seq);
        }
    }
}

/// Dataset Management, Attribute Deallocate, over a few ranges (NVM Command Set 1.0,
/// 3.2.3): the range list in the capsule or fetched with R2T, as long as the ranges or a
/// whole 4 KiB as Linux sends it.
fn submit_deallocate(rng: &mut Rng, env: &mut Env, queue: &mut Queue, nsid: u32, num_blocks: u64) {
    const RANGE_BYTES: usize = 16;
    let count = rng.range(1, 4) as usize;
    let ranges: Vec<(u64, u64)> = (0..count)
        .map(|_| {
            let blocks = rng.range(1, num_blocks.min(64));
            (rng.below(num_blocks - blocks + 1), blocks)
        })
        .collect();
    let len = if rng.coin() { count * RANGE_BYTES } else { 4096 };
    let mut data = vec![0u8; len];
    for (index, (lba, blocks)) in ranges.iter().enumerate() {
        let at = index * RANGE_BYTES;
        data[at + 4..at + 8].copy_from_slice(&(*blocks as u32).to_le_bytes());
        data[at + 8..at + 16].copy_from_slice(&lba.to_le_bytes());
    }
    let in_capsule = len <= env.config.in_capsule_bytes && rng.coin();
    let stamp = env.next_stamp();
    let capsule = if in_capsule { data.clone() } else { Vec::new() };
    let kind = Kind::Deallocate { stamp, data, in_capsule };
    let cid = queue.submit(
        env,
        kind,
        |cid| {
            let sqe = SqeBuilder::new(io::DATASET_MANAGEMENT, cid).nsid(nsid).cdw(10, count as u32 - 1).cdw(11, 1 << 2);
            if in_capsule { sqe.in_capsule(len as u32) } else { sqe.transport_data(len as u32) }.build()
        },
        &capsule,
    );
    let seq = queue.cmds[&cid].sent_seq;
    env.model.zeroes_sent(stamp, nsid, &ranges, seq);
}

/// A command the target must refuse, with the status it must refuse it with.
fn submit_invalid(rng: &mut Rng, env: &mut Env, queue: &mut Queue, nsid: u32, block_size: usize, num_blocks: u64) {
    let bytes = block_size as u32;
    let (expected, sqe): (Status, Box<dyn FnOnce(u16) -> peerless_target::nvme::Sqe>) = match rng.below(4) {
        0 => (
            Status::LBA_OUT_OF_RANGE,
            Box::new(move |cid| SqeBuilder::new(io::READ, cid).rw(nsid, num_blocks, 1).transport_data(bytes).build()),
        ),
        1 => (
            Status::INVALID_NAMESPACE,
            Box::new(move |cid| SqeBuilder::new(io::READ, cid).rw(99, 0, 1).transport_data(bytes).build()),
        ),
        2 => (Status::INVALID_OPCODE, Box::new(move |cid| SqeBuilder::new(0x7e, cid).nsid(nsid).build())),
        _ => {
            // One block past MDTS.
            let blocks = (env.config.max_io_size as usize / block_size + 1).min(0x1_0000) as u32;
            let len = blocks * bytes;
            let expected =
                if u64::from(blocks) > num_blocks { Status::LBA_OUT_OF_RANGE } else { Status::INVALID_FIELD };
            (
                expected,
                Box::new(move |cid| SqeBuilder::new(io::READ, cid).rw(nsid, 0, blocks).transport_data(len).build()),
            )
        }
    };
    queue.submit(env, Kind::Invalid { expected }, sqe, &[]);
}
