//! The engine in-process: a real reactor thread, a malloc namespace, and queue pairs
//! driven by hand, one step per message so the bdev layer's pollers run in between.
//! No transport: the tests play it, feeding commands and data and reading actions.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use peerless_bdev::modules::malloc::MallocBdev;
use peerless_bdev::{BdevInfo, BdevManager, Uuid};
use peerless_core::mem::{CmbConfig, EmulatedCmb, IoBufCache, MemKind, P2pProvider};
use peerless_core::reactor::{App, AppOptions, CoreMask, ThreadCtx, ThreadHandle};

use super::{Action, Fault, NicReach, P2pReach, Qpair, QpairConfig};
use crate::nvme::cmd::SqeBuilder;
use crate::nvme::{fctype, io, put16, put_str, status, Cqe, Status};
use crate::nvmf::buffers::DataPool;
use crate::nvmf::io_cmd::SglBinding;
use crate::nvmf::namespace::{Namespace, P2pPlacement};
use crate::nvmf::poll_group::{NsTables, Retired};
use crate::nvmf::subsystem::{ListenAddress, SubsystemKind};
use crate::nvmf::transport::{GroupCtx, TransportOptions};
use crate::nvmf::NvmfTarget;

const NQN: &str = "nqn.2016-06.io.peerless:engine";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000e1";
const BLOCK: u32 = 512;
const WAIT: Duration = Duration::from_secs(10);

/// What lives on the reactor thread between steps.
struct World {
    qpairs: Vec<Qpair>,
    tables: NsTables,
    cache: IoBufCache<'static>,
    retired: Retired,
}

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

struct Fixture {
    _app: App,
    thread: ThreadHandle,
    target: NvmfTarget,
    pool: &'static DataPool,
    opts: Arc<TransportOptions>,
    addr: SocketAddr,
    /// What the transport played here can move data through.
    reach: P2pReach,
}

impl Fixture {
    fn new(opts: TransportOptions) -> Fixture {
        Fixture::with_provider(opts, None, P2pReach::Cpu)
    }

    /// The namespace's data placed in `provider` (its `p2pmem`), by a transport that
    /// reaches what `reach` says.
    fn with_provider(opts: TransportOptions, provider: Option<Arc<dyn P2pProvider>>, reach: P2pReach) -> Fixture {
        let options =
            AppOptions { cpumask: CoreMask::parse("0x1").unwrap(), interrupt_mode: true, ..AppOptions::default() };
        let app = App::start(options).unwrap();
        let thread = app.handle().spawn_thread("engine", None).unwrap();
        let bdevs = BdevManager::new();
        let info = BdevInfo {
            name: "Malloc0".into(),
            product_name: "Malloc disk".into(),
            block_size: BLOCK,
            num_blocks: 4096,
            uuid: Uuid([7; 16]),
            max_io_blocks: 0,
        };
        bdevs.register(Arc::new(MallocBdev::new(info).unwrap())).unwrap();
        let target = NvmfTarget::new(app.handle(), bdevs.clone());
        let subsystem = target.add_subsystem(NQN, SubsystemKind::Nvme);
        let addr: SocketAddr = "127.0.0.1:4420".parse().unwrap();
        let desc = bdevs.open("Malloc0", true, None, None).unwrap();
        {
            let mut state = subsystem.state.lock();
            state.allow_any_host = true;
            state.listeners.push(ListenAddress::new(addr, 0, crate::nvmf::ana::AnaState::Optimized));
            let ns = Namespace {
                nsid: 1,
                bdev_name: "Malloc0".into(),
                desc: Arc::new(desc),
                nguid: [1; 16],
                eui64: [0; 8],
                anagrpid: 1,
                uuid: [7; 16],
                p2pmem: if provider.is_some() { P2pPlacement::Auto } else { P2pPlacement::Off },
                provider,
            };
            state.namespaces.insert(1, Arc::new(ns));
        }
        let pool = DataPool::create(&opts, 1).unwrap();
        let fixture = Fixture { _app: app, thread, target, pool, opts: Arc::new(opts), addr, reach };
        fixture.on_thread(move |_| {
            let world = World {
                qpairs: Vec::new(),
                tables: NsTables::default(),
                cache: pool.cache(),
                retired: Retired::default(),
            };
            WORLD.with(|cell| *cell.borrow_mut() = Some(world));
        });
        fixture
    }

    fn on_thread<R: Send + 'static>(&self, work: impl FnOnce(&mut ThreadCtx) -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        self.thread
            .send_blocking(move |ctx| {
                let _ = tx.send(work(ctx));
            })
            .unwrap();
        rx.recv_timeout(WAIT).expect("the engine thread did not answer")
    }

    /// Runs `work` on queue pair `index` with the group's context.
    fn step<R: Send + 'static>(
        &self,
        index: usize,
        work: impl FnOnce(&mut Qpair, &mut ThreadCtx, &mut GroupCtx<'_>) -> R + Send + 'static,
    ) -> R {
        self.on_thread(move |ctx| {
            WORLD.with(|cell| {
                let mut world = cell.borrow_mut();
                let World { qpairs, tables, cache, retired } = world.as_mut().expect("world set up");
                let mut group = GroupCtx { tables, buffers: cache, now_ns: ctx.now_ns(), retired };
                work(&mut qpairs[index], ctx, &mut group)
            })
        })
    }

    /// A new, unconnected queue pair; returns its index.
    fn qpair(&self) -> usize {
        self.qpair_with(SglBinding::Tcp)
    }

    /// A new, unconnected queue pair whose commands name data as `sgl` says.
    fn qpair_with(&self, sgl: SglBinding) -> usize {
        let (target, opts, pool, addr) = (self.target.clone(), self.opts.clone(), self.pool, self.addr);
        let p2p_reach = self.reach.clone();
        self.on_thread(move |_| {
            WORLD.with(|cell| {
                let mut world = cell.borrow_mut();
                let world = world.as_mut().expect("world set up");
                let id = world.qpairs.len() as u64 + 1;
                let data_completes = sgl == SglBinding::Tcp;
                let config = QpairConfig { data_completes, admin_in_capsule_bytes: 8192, sgl, p2p_reach };
                world.qpairs.push(Qpair::new(id, target, opts, pool, config, addr, addr));
                world.qpairs.len() - 1
            })
        })
    }

    /// Polls queue `index` until it has an action, and returns them all.
    fn actions(&self, index: usize) -> Vec<Action> {
        let deadline = Instant::now() + WAIT;
        loop {
            let actions = self.step(index, |qpair, ctx, group| {
                qpair.poll(ctx, group, group.now_ns);
                std::iter::from_fn(|| qpair.next_action()).collect::<Vec<_>>()
            });
            if !actions.is_empty() {
                return actions;
            }
            assert!(Instant::now() < deadline, "queue {index} produced nothing in {WAIT:?}");
        }
    }

    fn command(&self, index: usize, sqe: SqeBuilder, data: Vec<u8>) -> Result<(), Fault> {
        self.step(index, move |qpair, ctx, group| qpair.on_command(ctx, group, sqe.build(), &data))
    }

    fn only_completion(&self, index: usize) -> Cqe {
        match self.actions(index).as_slice() {
            [Action::Complete(cqe)] => *cqe,
            other => panic!("expected one completion, got {other:?}"),
        }
    }

    /// Connects queue `qid` of controller `cntlid` (0xFFFF: a new one); the CQE.
    fn connect(&self, index: usize, qid: u16, cntlid: u16, entries: u16) -> Cqe {
        let mut data = vec![0u8; 1024];
        put16(&mut data, 16, cntlid);
        put_str(&mut data, 256, 256, NQN, 0);
        put_str(&mut data, 512, 256, HOSTNQN, 0);
        let sqe = SqeBuilder::fabrics(fctype::CONNECT, 1)
            .u16_at(42, qid)
            .u16_at(44, entries - 1)
            .u32_at(48, 10_000)
            .in_capsule(1024);
        self.command(index, sqe, data).unwrap();
        self.only_completion(index)
    }

    /// An admin queue with an enabled controller and one I/O queue of `entries`;
    /// returns the I/O queue's index.
    fn io_queue(&self, entries: u16) -> usize {
        self.io_queue_with(entries, SglBinding::Tcp)
    }

    fn io_queue_with(&self, entries: u16, sgl: SglBinding) -> usize {
        let admin_queue = self.qpair_with(sgl);
        let cqe = self.connect(admin_queue, 0, 0xffff, 32);
        assert!(cqe.status.is_success(), "{cqe:?}");
        let cntlid = cqe.result as u16;
        let enable =
            SqeBuilder::fabrics(fctype::PROPERTY_SET, 2).u32_at(44, 0x14).u64_at(48, 1 | (6 << 16) | (4 << 20));
        self.command(admin_queue, enable, Vec::new()).unwrap();
        assert!(self.only_completion(admin_queue).status.is_success());
        let io_queue = self.qpair_with(sgl);
        let cqe = self.connect(io_queue, 1, cntlid, entries);
        assert!(cqe.status.is_success(), "{cqe:?}");
        io_queue
    }
}

fn opts(shared_buffers: u32) -> TransportOptions {
    TransportOptions {
        num_shared_buffers: shared_buffers,
        buf_cache_size: 0,
        in_capsule_data_size: 4096,
        ..TransportOptions::defaults("TCP")
    }
}

fn write(cid: u16, slba: u64, blocks: u32, in_capsule: bool) -> SqeBuilder {
    let len = blocks * BLOCK;
    let sqe = SqeBuilder::new(io::WRITE, cid).rw(1, slba, blocks);
    if in_capsule {
        sqe.in_capsule(len)
    } else {
        sqe.transport_data(len)
    }
}

#[test]
fn connect_write_and_read_back() {
    let fixture = Fixture::new(opts(16));
    let queue = fixture.io_queue(8);
    let data: Vec<u8> = (0..2048u32).map(|i| (i * 7) as u8).collect();
    // In the capsule: the write runs at once and completes.
    fixture.command(queue, write(3, 10, 4, true), data.clone()).unwrap();
    let cqe = fixture.only_completion(queue);
    assert_eq!((cqe.cid, cqe.status, cqe.sqid), (3, Status::SUCCESS, 1));
    // A read: the data goes out and completes the command by itself (no CQE follows).
    let read = SqeBuilder::new(io::READ, 4).rw(1, 10, 4).transport_data(2048);
    fixture.command(queue, read, Vec::new()).unwrap();
    let actions = fixture.actions(queue);
    let [Action::SendData { slot, cid: 4, len: 2048, completes: true }] = actions[..] else {
        panic!("expected the read's data, got {actions:?}");
    };
    let back = fixture.step(queue, move |qpair, _, group| {
        let mut back = vec![0u8; 2048];
        let sgl = qpair.data(slot).unwrap();
        peerless_core::mem::ChunkReader::new(&sgl).read(&mut back).unwrap();
        drop(sgl);
        qpair.data_sent(group.buffers, slot, Ok(()));
        assert!(qpair.next_action().is_none(), "the data completed the read");
        back
    });
    assert_eq!(back, data);
}

#[test]
fn host_data_is_fetched_checked_and_written() {
    let fixture = Fixture::new(opts(16));
    let queue = fixture.io_queue(8);
    fixture.command(queue, write(9, 0, 16, false), Vec::new()).unwrap();
    let [Action::FetchData { slot, cid: 9, len: 8192 }] = fixture.actions(queue)[..] else { panic!("no R2T") };
    let chunk = vec![0xabu8; 4096];
    let faults = fixture.step(queue, move |qpair, ctx, group| {
        [
            qpair.data_received(ctx, group, slot + 1, 9, 0, &chunk),
            qpair.data_received(ctx, group, slot, 8, 0, &chunk),
            qpair.data_received(ctx, group, slot, 9, 4096, &chunk),
            qpair.data_received(ctx, group, slot, 9, 0, &chunk),
            qpair.data_received(ctx, group, slot, 9, 4096, &[0u8; 8192]),
            qpair.data_received(ctx, group, slot, 9, 4096, &chunk),
        ]
    });
    assert_eq!(
        faults,
        [
            Err(Fault::UnknownTransfer),
            Err(Fault::WrongCommand),
            Err(Fault::OutOfRange),
            Ok(()),
            Err(Fault::OutOfRange),
            Ok(())
        ]
    );
    assert!(fixture.only_completion(queue).status.is_success());
}

#[test]
fn commands_wait_for_buffers_in_order_and_can_be_aborted() {
    // One buffer of each class: the second and third writes wait behind the first.
    let fixture = Fixture::new(opts(1));
    let queue = fixture.io_queue(8);
    for cid in 1..=3 {
        fixture.command(queue, write(cid, u64::from(cid) * 16, 16, false), Vec::new()).unwrap();
    }
    let [Action::FetchData { slot, cid: 1, .. }] = fixture.actions(queue)[..] else { panic!("first R2T") };
    let aborted = fixture.step(queue, |qpair, _, _| qpair.abort_waiting(2));
    assert!(aborted, "a command waiting for a buffer can be aborted");
    let cqe = fixture.only_completion(queue);
    assert_eq!((cqe.cid, cqe.status), (2, status::ABORTED_BY_REQUEST));
    assert!(!fixture.step(queue, |qpair, _, _| qpair.abort_waiting(1)), "one with its buffer is not waiting");
    // The first write's data arrives and it runs; its buffer goes to the third.
    fixture.step(queue, move |qpair, ctx, group| qpair.data_received(ctx, group, slot, 1, 0, &[1u8; 8192])).unwrap();
    let mut seen = fixture.actions(queue);
    if seen.len() == 1 {
        seen.extend(fixture.actions(queue));
    }
    assert!(matches!(seen[0], Action::Complete(Cqe { cid: 1, .. })), "{seen:?}");
    assert!(matches!(seen[1], Action::FetchData { cid: 3, .. }), "{seen:?}");
}

#[test]
fn conflicting_ids_and_overruns() {
    let fixture = Fixture::new(opts(1));
    let queue = fixture.io_queue(2);
    fixture.command(queue, write(5, 0, 16, false), Vec::new()).unwrap();
    assert!(matches!(fixture.actions(queue)[..], [Action::FetchData { cid: 5, .. }]));
    // The same CID while the first is outstanding (NVMe Base 2.0, 3.3.1).
    fixture.command(queue, write(5, 16, 1, true), vec![0u8; 512]).unwrap();
    assert_eq!(fixture.only_completion(queue).status, status::COMMAND_ID_CONFLICT);
    fixture.command(queue, write(6, 16, 16, false), Vec::new()).unwrap();
    // Two entries, two outstanding: a third is a transport error, not a status.
    assert_eq!(fixture.command(queue, write(7, 32, 1, true), vec![0u8; 512]), Err(Fault::QueueOverrun));
}

#[test]
fn closing_ends_waiting_commands_and_drains() {
    let fixture = Fixture::new(opts(1));
    let queue = fixture.io_queue(8);
    fixture.command(queue, write(1, 0, 16, false), Vec::new()).unwrap();
    fixture.command(queue, write(2, 16, 16, false), Vec::new()).unwrap();
    assert!(matches!(fixture.actions(queue)[..], [Action::FetchData { cid: 1, .. }]));
    let drained = fixture.step(queue, |qpair, ctx, group| {
        qpair.close("test");
        qpair.poll(ctx, group, group.now_ns);
        (qpair.is_drained(), qpair.next_action())
    });
    assert_eq!(drained, (true, None), "nothing ran, nothing is answered");
    // Both buffers are back in the shared pool.
    assert_eq!(fixture.pool.available(), (1, 1));
}

#[test]
fn io_before_enable_and_after_reset_is_refused() {
    let fixture = Fixture::new(opts(4));
    let queue = fixture.io_queue(8);
    let admin_queue = 0;
    let disable = SqeBuilder::fabrics(fctype::PROPERTY_SET, 8).u32_at(44, 0x14).u64_at(48, 0);
    fixture.command(admin_queue, disable, Vec::new()).unwrap();
    assert!(fixture.only_completion(admin_queue).status.is_success());
    let read = SqeBuilder::new(io::READ, 4).rw(1, 0, 1).transport_data(512);
    fixture.command(queue, read, Vec::new()).unwrap();
    // The reset closes the queue on its thread; until then it refuses I/O.
    let done = fixture.step(queue, |qpair, _, _| (qpair.is_closing(), qpair.next_action()));
    match done {
        (true, None) => {}
        (_, Some(Action::Complete(cqe))) => assert_eq!(cqe.status, status::COMMAND_SEQUENCE_ERROR),
        other => panic!("I/O ran on a disabled controller: {other:?}"),
    }
    // A second Connect for QID 1 is allowed at once: the reset freed it.
    let cntlid = fixture.step(admin_queue, |qpair, _, _| qpair.controller().map(|c| c.cntlid)).unwrap();
    let enable = SqeBuilder::fabrics(fctype::PROPERTY_SET, 9).u32_at(44, 0x14).u64_at(48, 1 | (6 << 16) | (4 << 20));
    fixture.command(admin_queue, enable, Vec::new()).unwrap();
    assert!(fixture.only_completion(admin_queue).status.is_success());
    let again = fixture.qpair();
    assert!(fixture.connect(again, 1, cntlid, 8).status.is_success());
}

/// A keyed write of `blocks` at `slba` (the RDMA binding: the transport reads the host's
/// memory into the command's buffers).
fn keyed_write(cid: u16, slba: u64, blocks: u32) -> SqeBuilder {
    SqeBuilder::new(io::WRITE, cid).rw(1, slba, blocks).keyed(0x7f00_0000_0000, blocks * BLOCK, 0x1234, true)
}

#[test]
fn data_the_transport_places_itself_runs_and_reads_back() {
    let fixture = Fixture::new(opts(16));
    let queue = fixture.io_queue_with(8, SglBinding::Rdma);
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 13 + 1) as u8).collect();
    fixture.command(queue, keyed_write(3, 32, 16), Vec::new()).unwrap();
    let [Action::FetchData { slot, cid: 3, len: 8192 }] = fixture.actions(queue)[..] else { panic!("no fetch") };
    // The transport (a NIC's RDMA READ here played by a copy) fills the buffers it is
    // lent, then says so; a wrong command identifier is a fault, as for TCP.
    let sent = data.clone();
    let placed = fixture.step(queue, move |qpair, ctx, group| {
        {
            let mut into = qpair.fetch_buffers(slot).unwrap();
            assert_eq!(into.len(), 8192);
            let src = peerless_core::mem::Sgl::from_host(&sent).unwrap();
            assert_eq!(peerless_core::mem::copy(&mut into, &src).unwrap(), 8192);
        }
        [qpair.data_placed(ctx, group, slot, 4, Ok(())), qpair.data_placed(ctx, group, slot, 3, Ok(()))]
    });
    assert_eq!(placed, [Err(Fault::WrongCommand), Ok(())]);
    assert!(fixture.only_completion(queue).status.is_success());
    // Read back: the data goes out, and with RDMA a completion always follows it.
    let read = SqeBuilder::new(io::READ, 4).rw(1, 32, 16).keyed(0x7f00_0001_0000, 8192, 0x99, false);
    fixture.command(queue, read, Vec::new()).unwrap();
    let [Action::SendData { slot, cid: 4, len: 8192, completes: false }] = fixture.actions(queue)[..] else {
        panic!("no data to send")
    };
    let back = fixture.step(queue, move |qpair, _, group| {
        let mut back = vec![0u8; 8192];
        peerless_core::mem::ChunkReader::new(&qpair.data(slot).unwrap()).read(&mut back).unwrap();
        qpair.data_sent(group.buffers, slot, Ok(()));
        back
    });
    assert_eq!(back, data);
    let cqe = fixture.only_completion(queue);
    assert_eq!((cqe.cid, cqe.status), (4, Status::SUCCESS));
    // A failed placement (the READ completed in error) ends the command with its status.
    fixture.command(queue, keyed_write(5, 0, 1), Vec::new()).unwrap();
    let [Action::FetchData { slot, cid: 5, .. }] = fixture.actions(queue)[..] else { panic!("no fetch") };
    fixture
        .step(queue, move |qpair, ctx, group| qpair.data_placed(ctx, group, slot, 5, Err(Status::DATA_TRANSFER_ERROR)))
        .unwrap();
    assert_eq!(fixture.only_completion(queue).status, Status::DATA_TRANSFER_ERROR);
}

/// A NIC that reaches P2P memory or not, and counts how often it was asked.
struct PlayedNic {
    reaches: bool,
    asked: std::sync::atomic::AtomicUsize,
}

impl NicReach for PlayedNic {
    fn reaches(&self, _: &Arc<dyn P2pProvider>) -> bool {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.reaches
    }
}

#[test]
fn p2p_memory_only_where_the_nic_reaches_it_else_host_memory_counted() {
    for reaches in [false, true] {
        let cmb = EmulatedCmb::new(CmbConfig::new("nic-reach", 1 << 20)).unwrap();
        let nic = Arc::new(PlayedNic { reaches, asked: Default::default() });
        let fixture = Fixture::with_provider(opts(16), Some(cmb.provider()), P2pReach::Nic(nic.clone()));
        let queue = fixture.io_queue_with(8, SglBinding::Rdma);
        fixture.command(queue, keyed_write(3, 32, 16), Vec::new()).unwrap();
        let [Action::FetchData { slot, cid: 3, len: 8192 }] = fixture.actions(queue)[..] else { panic!("no fetch") };
        let (kinds, fallbacks) = fixture.step(queue, move |qpair, _, _| {
            let kinds = qpair.fetch_buffers(slot).unwrap().iter().map(|seg| seg.tag().kind()).collect::<Vec<_>>();
            (kinds, qpair.stats.p2p_fallbacks)
        });
        let (want, in_cmb) = if reaches { (MemKind::IoMem, 8192) } else { (MemKind::Host, 0) };
        assert!(kinds.iter().all(|kind| *kind == want), "reaches {reaches}: {kinds:?}");
        assert_eq!(fallbacks, u64::from(!reaches), "reaches {reaches}");
        assert_eq!(cmb.size_bytes() - cmb.available_bytes(), in_cmb, "reaches {reaches}");
        assert_eq!(nic.asked.load(std::sync::atomic::Ordering::Relaxed), 1);
        // The queue remembers the answer: a second command does not ask again.
        fixture.command(queue, keyed_write(4, 64, 16), Vec::new()).unwrap();
        let [Action::FetchData { cid: 4, .. }] = fixture.actions(queue)[..] else { panic!("no second fetch") };
        assert_eq!(nic.asked.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}

#[test]
fn closing_keeps_buffers_a_nic_may_still_write() {
    let fixture = Fixture::new(opts(2));
    let queue = fixture.io_queue_with(8, SglBinding::Rdma);
    // 16 KiB: one large buffer (the small ones hold 8 KiB).
    fixture.command(queue, keyed_write(1, 0, 32), Vec::new()).unwrap();
    let [Action::FetchData { slot, cid: 1, .. }] = fixture.actions(queue)[..] else { panic!("no fetch") };
    // The queue closes while its RDMA READ may still be writing: the buffer stays the
    // command's, and the queue is not drained, until the transport says the read ended.
    let held = fixture.step(queue, |qpair, ctx, group| {
        qpair.close("test");
        qpair.poll(ctx, group, group.now_ns);
        qpair.is_drained()
    });
    assert!(!held, "a closing queue with a read in flight is not drained");
    assert_eq!(fixture.pool.available(), (2, 1), "the large buffer is still lent");
    let drained = fixture.step(queue, move |qpair, ctx, group| {
        // A read that completed after all does not run the write on a closing queue.
        qpair.data_placed(ctx, group, slot, 1, Ok(())).unwrap();
        qpair.poll(ctx, group, group.now_ns);
        (qpair.is_drained(), qpair.next_action())
    });
    assert_eq!(drained, (true, None));
    assert_eq!(fixture.pool.available(), (2, 2), "every buffer is back");
}

#[test]
fn a_transport_takes_sent_data_until_its_nic_is_done() {
    let fixture = Fixture::new(opts(2));
    let queue = fixture.io_queue_with(8, SglBinding::Rdma);
    let read = SqeBuilder::new(io::READ, 7).rw(1, 0, 32).keyed(0x7f00_0000_0000, 16384, 0x99, false);
    fixture.command(queue, read, Vec::new()).unwrap();
    let [Action::SendData { slot, cid: 7, len: 16384, .. }] = fixture.actions(queue)[..] else { panic!("no data") };
    // The transport takes the buffers (an RDMA WRITE still to read them), then says the
    // data went: the completion follows at once, and the buffer is the transport's.
    let taken = fixture.step(queue, move |qpair, _, group| {
        let mut taken = Vec::with_capacity(4);
        qpair.move_data_buffers(slot, &mut taken).unwrap();
        qpair.data_sent(group.buffers, slot, Ok(()));
        (taken, qpair.move_data_buffers(slot, &mut Vec::new()).is_err())
    });
    let (mut taken, second_take_refused) = taken;
    assert!(second_take_refused, "the command is done: nothing more to take");
    assert_eq!(taken.len(), 1, "16 KiB: one large buffer");
    assert!(taken[0].len() >= 16384);
    let cqe = fixture.only_completion(queue);
    assert_eq!((cqe.cid, cqe.status), (7, Status::SUCCESS));
    assert_eq!(fixture.pool.available(), (2, 1), "the large buffer is still lent to the transport");
    // Its SEND completed: the transport gives the buffers back.
    fixture.step(queue, move |_, _, group| crate::nvmf::buffers::give_back(group.buffers, &mut taken));
    assert_eq!(fixture.pool.available(), (2, 2));
}

#[test]
fn a_command_the_transport_refuses_is_answered_with_its_status() {
    let fixture = Fixture::new(opts(2));
    let queue = fixture.io_queue_with(4, SglBinding::Rdma);
    for (cid, refusal) in [(1, status::SGL_DESCRIPTOR_COUNT_INVALID), (2, status::SGL_OFFSET_INVALID)] {
        let sqe = SqeBuilder::new(io::WRITE, cid).rw(1, 0, 1).build();
        fixture.step(queue, move |qpair, _, group| qpair.refuse_command(group, sqe, refusal)).unwrap();
        let cqe = fixture.only_completion(queue);
        assert_eq!((cqe.cid, cqe.status), (cid, refusal));
    }
    // The queue goes on: its slots came back and the next command runs.
    fixture.command(queue, keyed_write(3, 0, 1), Vec::new()).unwrap();
    assert!(matches!(fixture.actions(queue)[..], [Action::FetchData { cid: 3, .. }]));
}
