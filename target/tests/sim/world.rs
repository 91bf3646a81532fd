//! The simulated world around the real target: its configuration drawn from the seed,
//! the target itself (engine, NVMe/TCP driver, bdev layer) on a stepped app, the network,
//! the disks, the hosts, the clock, and the checks that run while it turns and at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use peerless_bdev::BdevManager;
use peerless_core::mem::{CmbConfig, EmulatedCmb, IoBufClass, CMB_GRANULE_BYTES};
use peerless_core::reactor::{AppOptions, SteppedApp, ThreadCtx, ThreadId};
use peerless_target::nvmf::buffers::DataPool;
use peerless_target::nvmf::error::NvmfError;
use peerless_target::nvmf::namespace::{NamespaceSpec, P2pPlacement};
use peerless_target::nvmf::poll_group;
use peerless_target::nvmf::subsystem::{Subsystem, SubsystemConfig};
use peerless_target::nvmf::transport::{SockImpl, Transport, TransportListener, TransportOptions, TransportPollGroup};
use peerless_target::nvmf::NvmfTarget;
use peerless_target::tcp::conn::Conn;
use peerless_target::tcp::options::TcpOptions;
use peerless_target::tcp::poll_group::TcpPollGroup;
use peerless_target::tcp::socket::MemSocket;
use serde_json::{json, Value};

use super::disk::{Disk, DiskFaults, SimDisk};
use super::host::{Host, HostConfig, HostFaults};
use super::model::Model;
use super::net::{Link, NetFaults};
use super::queue::{Cmd, Kind};
use super::rng::{mix, Rng};

pub const NQN: &str = "nqn.2016-06.io.peerless:sim";
/// Keep Alive Timeout floor: short, so that keep-alive expiry happens within a run.
const MIN_KATO_MS: u32 = 100;
/// The longest the clock jumps ahead when nothing is ready to happen.
const MAX_JUMP_NS: u64 = 1_000_000;
/// Simulated time the end of a run may take to answer everything outstanding.
const DRAIN_LIMIT_NS: u64 = 5_000_000_000;

/// Everything the seed decides before the run starts.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// (NSID, block size, blocks).
    pub namespaces: Vec<(u32, u32, u64)>,
    pub max_io_size: u32,
    pub io_unit_size: u32,
    pub in_capsule_bytes: usize,
    pub num_shared_buffers: u32,
    pub buf_cache_size: u32,
    pub max_queue_depth: u16,
    pub c2h_success: bool,
    pub hosts: Vec<HostConfig>,
    pub net: NetFaults,
    pub disk: DiskFaults,
    /// The network resets a link (per step, per million).
    pub link_reset_per_million: u32,
    /// A namespace of the subsystem changes (an event for every controller).
    pub ns_change_per_million: u32,
    /// Device memory (an emulated CMB) of the first namespace's disk, which the target
    /// places that namespace's command data in.
    pub p2p: Option<P2pConfig>,
}

#[derive(Clone, Copy, Debug)]
pub struct P2pConfig {
    pub size_bytes: usize,
    /// IoMem (reached through accessors) or Device memory (only by its DMA engine).
    pub cpu_mappable: bool,
}

impl SimConfig {
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut rng = Rng::new(seed).fork(0x5eed);
        let max_io_size = *rng.pick(&[4096u32, 8192, 16384, 32768, 65536, 131_072]);
        let unit_steps = (max_io_size / 4096).trailing_zeros();
        let io_unit_size = 4096 << rng.range(0, u64::from(unit_steps));
        let per_io = max_io_size / io_unit_size;
        // Few buffers, so that commands wait for them.
        let num_shared_buffers = rng.range(u64::from(per_io.max(2)), u64::from(per_io * 3 + 6)) as u32;
        let buf_cache_size = rng.range(0, u64::from(num_shared_buffers.min(4))) as u32;
        let max_queue_depth = *rng.pick(&[4u16, 8, 16, 32, 64, 128]);
        let mut namespaces = vec![(1, 512, rng.range(256, 4096))];
        if rng.below(4) != 0 {
            namespaces.push((2, 4096, rng.range(64, 512)));
        }
        if namespaces.len() > 1 && rng.below(4) == 0 {
            namespaces.remove(0);
        }
        let host_count = rng.range(1, 3) as usize;
        let hosts = (0..host_count)
            .map(|_| HostConfig {
                io_queues: rng.range(1, 3) as u16,
                admin_entries: rng.range(4, 16) as u16,
                io_entries: rng.range(2, u64::from(max_queue_depth)) as u16,
                kato_ms: rng.range(u64::from(MIN_KATO_MS), 400) as u32,
                burst: rng.range(1, 4),
                faults: HostFaults {
                    reset_per_million: rng.swarm_rate(100),
                    disconnect_per_million: rng.swarm_rate(1_000),
                    abort_per_million: rng.swarm_rate(20_000),
                    silence_per_million: rng.swarm_rate(5),
                    invalid_per_million: rng.swarm_rate(5_000),
                    identify_per_million: rng.swarm_rate(1_000),
                    keep_alive_per_million: rng.range(100, 2_000) as u32,
                    mangle_per_million: rng.swarm_rate(20),
                },
            })
            .collect();
        let min_latency_ns = rng.range(1_000, 5_000);
        let net = NetFaults {
            min_latency_ns,
            max_latency_ns: min_latency_ns + rng.range(0, 50_000),
            spike_per_million: rng.swarm_rate(2_000),
            spike_latency_ns: rng.range(200_000, 2_000_000),
            max_segment_bytes: *rng.pick(&[64u64, 1460, 9000, 65536]),
            max_drain_bytes: *rng.pick(&[16_384u64, 65536, 1 << 20]),
            max_send_window_bytes: *rng.pick(&[4096u64, 65536, 262_144]),
            corrupt_per_million: rng.swarm_rate(100),
        };
        let min_disk_ns = rng.range(1_000, 20_000);
        let disk = DiskFaults {
            min_latency_ns: min_disk_ns,
            max_latency_ns: min_disk_ns + rng.range(0, 200_000),
            slow_per_million: rng.swarm_rate(2_000),
            slow_latency_ns: rng.range(1_000_000, 5_000_000),
            error_per_million: rng.swarm_rate(5_000),
            nomem_per_million: rng.swarm_rate(50_000),
        };
        SimConfig {
            seed,
            namespaces,
            max_io_size,
            io_unit_size,
            in_capsule_bytes: *rng.pick(&[0usize, 512, 1024, 4096, 8192, 16384]),
            num_shared_buffers,
            buf_cache_size,
            max_queue_depth,
            c2h_success: rng.coin(),
            hosts,
            net,
            disk,
            link_reset_per_million: rng.swarm_rate(50),
            ns_change_per_million: rng.swarm_rate(100),
            p2p: (rng.below(3) == 0).then(|| P2pConfig {
                size_bytes: CMB_GRANULE_BYTES * rng.range(4, 256) as usize,
                cpu_mappable: rng.coin(),
            }),
        }
    }

    pub fn block_size(&self, nsid: u32) -> usize {
        self.namespaces.iter().find(|ns| ns.0 == nsid).map_or(0, |ns| ns.1 as usize)
    }
}

/// What the run counted; printed at the end, and the coverage checks read it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub sent: u64,
    pub commands: u64,
    pub reads: u64,
    pub writes: u64,
    pub in_capsule_writes: u64,
    /// Write Zeroes and deallocations acknowledged.
    pub zeroings: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub r2t: u64,
    pub io_errors: u64,
    pub refused: u64,
    pub lost: u64,
    pub keep_alives: u64,
    pub silences: u64,
    pub controllers_lost: u64,
    pub resets: u64,
    pub resets_done: u64,
    pub disconnects: u64,
    pub connects_refused: u64,
    pub aborts_sent: u64,
    pub aborts_answered: u64,
    pub aborts_hit: u64,
    pub aborts_of_aer: u64,
    pub aborts_before_victim: u64,
    pub aborted_commands: u64,
    pub link_resets: u64,
    pub links: u64,
    pub target_terminations: u64,
    pub host_terminations: u64,
    pub mangled: u64,
    pub events: u64,
    pub changed_logs: u64,
    /// The target's count of commands that waited for data buffers.
    pub buffer_waits: u64,
    /// The disks' count of I/O refused for lack of resources (the layer retried them).
    pub disk_nomem: u64,
    /// Commands whose namespace wanted P2P memory but got host memory (the CMB was full).
    pub p2p_fallbacks: u64,
    /// Payload bytes the target placed in device memory.
    pub device_bytes: u64,
}

impl Stats {
    /// Adds another run's counts (a swarm's totals).
    pub fn add(&mut self, other: &Stats) {
        self.sent += other.sent;
        self.commands += other.commands;
        self.reads += other.reads;
        self.writes += other.writes;
        self.in_capsule_writes += other.in_capsule_writes;
        self.zeroings += other.zeroings;
        self.bytes_read += other.bytes_read;
        self.bytes_written += other.bytes_written;
        self.r2t += other.r2t;
        self.io_errors += other.io_errors;
        self.refused += other.refused;
        self.lost += other.lost;
        self.keep_alives += other.keep_alives;
        self.silences += other.silences;
        self.controllers_lost += other.controllers_lost;
        self.resets += other.resets;
        self.resets_done += other.resets_done;
        self.disconnects += other.disconnects;
        self.connects_refused += other.connects_refused;
        self.aborts_sent += other.aborts_sent;
        self.aborts_answered += other.aborts_answered;
        self.aborts_hit += other.aborts_hit;
        self.aborts_of_aer += other.aborts_of_aer;
        self.aborts_before_victim += other.aborts_before_victim;
        self.aborted_commands += other.aborted_commands;
        self.link_resets += other.link_resets;
        self.links += other.links;
        self.target_terminations += other.target_terminations;
        self.host_terminations += other.host_terminations;
        self.mangled += other.mangled;
        self.events += other.events;
        self.changed_logs += other.changed_logs;
        self.buffer_waits += other.buffer_waits;
        self.disk_nomem += other.disk_nomem;
        self.p2p_fallbacks += other.p2p_fallbacks;
        self.device_bytes += other.device_bytes;
    }
}

/// The TCP transport of the simulation: the real one's options and buffers, with poll
/// groups whose connections run over in-memory sockets.
struct SimTransport {
    opts: Arc<TransportOptions>,
    pool: &'static DataPool,
}

impl Transport for SimTransport {
    fn trtype(&self) -> &'static str {
        "TCP"
    }

    fn opts(&self) -> &Arc<TransportOptions> {
        &self.opts
    }

    fn pool(&self) -> &'static DataPool {
        self.pool
    }

    fn to_json(&self) -> Value {
        json!({"trtype": "TCP"})
    }

    fn listen(
        &self,
        _: &mut ThreadCtx,
        _: &NvmfTarget,
        addr: SocketAddr,
        _: SockImpl,
        secure: bool,
    ) -> Result<Box<dyn TransportListener>, String> {
        if secure {
            return Err("this transport has no TLS: secure_channel is for the TCP transport".into());
        }
        // No socket: the world makes each connection itself.
        Ok(Box::new(SimListener { addr }))
    }

    fn create_poll_group(&self, _ctx: &mut ThreadCtx) -> Box<dyn TransportPollGroup> {
        Box::new(TcpPollGroup::<MemSocket>::default())
    }
}

struct SimListener {
    addr: SocketAddr,
}

impl TransportListener for SimListener {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn stop(self: Box<Self>, _: &mut ThreadCtx) {}
}

/// Everything but the hosts: what a host's step may touch.
pub struct Env {
    pub config: SimConfig,
    pub now_ns: u64,
    seq: u64,
    stamp: u64,
    /// For choices hosts make about bytes on the wire (how to split H2CData).
    pub rng: Rng,
    net_rng: Rng,
    pub links: Vec<Link>,
    pub model: Model,
    pub stats: Stats,
    trace: u64,
    /// Writes lost with their connection, by the target connection that had them.
    lost_writes: BTreeMap<u64, Vec<u64>>,
    /// No new I/O and no faults: the run is ending.
    pub draining: bool,
    /// No new connections either.
    pub finished: bool,
    app: SteppedApp,
    thread: ThreadId,
    target: NvmfTarget,
    transport: Arc<dyn Transport>,
    pool: &'static DataPool,
    tcp: TcpOptions,
    local: SocketAddr,
    subsystem: Arc<Subsystem>,
    pub disks: Vec<Disk>,
    cmb: Option<EmulatedCmb>,
}

impl Env {
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn next_stamp(&mut self) -> u64 {
        self.stamp += 1;
        self.stamp
    }

    /// Folds an event into the run's trace hash.
    pub fn trace(&mut self, words: &[u64]) {
        for word in words {
            self.trace = mix(self.trace ^ word.wrapping_add(self.now_ns));
        }
    }

    /// Ends the run: the message says what broke, and the context how to find it again.
    pub fn fail(&self, why: String) -> ! {
        panic!("{why}\n  at {} ns, event {}, seed {}", self.now_ns, self.seq, self.config.seed);
    }

    pub fn send(&mut self, link: usize, bytes: &[u8]) {
        let faults = self.config.net;
        self.links[link].send(&faults, self.now_ns, bytes);
    }

    pub fn close_link(&mut self, link: usize) {
        let faults = self.config.net;
        self.links[link].host_close(&faults, self.now_ns);
    }

    /// A new connection from `host`: the target's end is a real NVMe/TCP connection in the
    /// poll group; the host's is a link. Returns (link, target connection ID).
    pub fn open_link(&mut self, host: usize, _corruptible: bool) -> (usize, u64) {
        let conn_id = self.target.next_conn_id();
        let peer: SocketAddr = format!("10.0.{}.{}:{}", host / 250, host % 250 + 2, 40_000 + self.links.len() % 20_000)
            .parse()
            .expect("a simulated address");
        let (socket, far_end) = MemSocket::pair(self.local, peer);
        let (target, transport, tcp) = (self.target.clone(), self.transport.clone(), self.tcp.clone());
        self.app.run_on(self.thread, move |ctx| {
            let conn = Conn::new(conn_id, socket, &target, &transport, &tcp).expect("a connection");
            poll_group::with(&target, ctx, |group, ctx| {
                let tcp = group.transport_group(ctx, &transport);
                let tcp = tcp.as_any_mut().downcast_mut::<TcpPollGroup<MemSocket>>().expect("the sim's poll group");
                tcp.add_conn(ctx, conn, None, SockImpl::Posix);
            });
        });
        let faults = self.config.net;
        let rng = self.net_rng.fork(self.links.len() as u64);
        self.links.push(Link::new(far_end, rng, &faults));
        self.stats.links += 1;
        (self.links.len() - 1, conn_id)
    }

    /// A command was lost with its connection.
    pub fn lose(&mut self, conn_id: u64, cmd: &Cmd) {
        self.stats.lost += 1;
        match cmd.kind {
            Kind::Read { .. } => self.model.read_done(cmd.sent_seq),
            // It may still reach the media, until the target lets the connection go.
            Kind::Write { stamp, .. } | Kind::WriteZeroes { stamp, .. } | Kind::Deallocate { stamp, .. } => {
                self.lost_writes.entry(conn_id).or_default().push(stamp)
            }
            _ => {}
        }
    }

    /// The target's connections, and its poll group's cached buffers (small, large).
    fn target_view(&mut self) -> (BTreeMap<u64, (usize, bool)>, (usize, usize)) {
        let (target, transport) = (self.target.clone(), self.transport.clone());
        self.app
            .run_on(self.thread, move |ctx| {
                poll_group::with(&target, ctx, |group, ctx| {
                    group.with_transport(ctx, &transport, |tcp, _, group| {
                        let mut conns = BTreeMap::new();
                        tcp.for_each_qpair(&mut |qpair| {
                            conns.insert(qpair.id, (qpair.slots_in_use(), qpair.is_closing()));
                        });
                        let cached = (group.buffers.cached(IoBufClass::Small), group.buffers.cached(IoBufClass::Large));
                        (conns, cached)
                    })
                })
            })
            .expect("the app thread")
    }
}

pub struct World {
    pub env: Env,
    hosts: Vec<Host>,
    rng: Rng,
    pub steps: u64,
    /// The target had work in the last step: it may have more.
    target_busy: bool,
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub steps: u64,
    pub sim_ns: u64,
    pub trace: u64,
    pub stats: Stats,
}

impl World {
    pub fn new(config: SimConfig) -> World {
        let seed = config.seed;
        let mut rng = Rng::new(seed);
        let options = AppOptions { name: format!("sim-{seed}"), ..AppOptions::default() };
        let mut app = SteppedApp::new(options).expect("a stepped app");
        let handle = app.handle();
        let thread = handle.app_thread();
        app.step(0);

        let cmb = config.p2p.map(|p2p| {
            let cmb_config = CmbConfig {
                cpu_mappable: p2p.cpu_mappable,
                ..CmbConfig::new(&format!("simcmb{seed}"), p2p.size_bytes)
            };
            EmulatedCmb::new(cmb_config).expect("an emulated CMB")
        });
        let p2p_nsid = config.namespaces[0].0;
        let bdevs = BdevManager::new();
        let mut disks = Vec::new();
        for &(nsid, block_size, blocks) in &config.namespaces {
            let own_cmb = cmb.as_ref().filter(|_| nsid == p2p_nsid).map(EmulatedCmb::provider);
            let (disk, state) = SimDisk::new(
                &format!("Sim{nsid}"),
                nsid,
                block_size,
                blocks,
                rng.fork(0xd15c + u64::from(nsid)),
                config.disk,
                own_cmb,
            );
            bdevs.register(Arc::new(disk)).expect("register a simulated disk");
            disks.push(state);
        }
        let target = NvmfTarget::new(handle, bdevs.clone());
        let local: SocketAddr = "10.0.0.1:4420".parse().expect("an address");
        let opts = TransportOptions {
            max_queue_depth: config.max_queue_depth,
            max_io_qpairs_per_ctrlr: 4,
            in_capsule_data_size: config.in_capsule_bytes as u32,
            max_io_size: config.max_io_size,
            io_unit_size: config.io_unit_size,
            num_shared_buffers: config.num_shared_buffers,
            buf_cache_size: config.buf_cache_size,
            min_kato: MIN_KATO_MS,
            ..TransportOptions::defaults("TCP")
        };
        opts.validate(1).unwrap_or_else(|why| panic!("seed {seed}: transport options: {why}"));
        let pool = DataPool::create(&opts, 1).expect("the transport's buffers");
        let transport: Arc<dyn Transport> = Arc::new(SimTransport { opts: Arc::new(opts), pool });
        target.0.transports.lock().push(transport.clone());
        *target.0.poll_groups.lock() = vec![thread.clone()];
        // The subsystem through the target's own control plane, as RPCs would set it up.
        let subsystem_config = SubsystemConfig { allow_any_host: true, ..SubsystemConfig::new(NQN) };
        let subsystem = target.create_subsystem(&subsystem_config).expect("the subsystem");
        let set_up = app.run_on(thread.id(), |ctx| {
            target.add_listener(
                ctx,
                NQN,
                "TCP",
                local,
                peerless_target::nvmf::ana::AnaState::Optimized,
                None,
                false,
            )?;
            for &(nsid, _, _) in &config.namespaces {
                let p2pmem = if cmb.is_some() && nsid == p2p_nsid { P2pPlacement::Auto } else { P2pPlacement::Off };
                let spec = NamespaceSpec { nsid: Some(nsid), p2pmem, ..NamespaceSpec::new(&format!("Sim{nsid}")) };
                target.add_namespace(ctx, NQN, spec)?;
            }
            Ok::<(), NvmfError>(())
        });
        if let Some(Err(why)) = set_up {
            panic!("seed {seed}: setting up the subsystem: {why}");
        }

        let model = Model::new(&config.namespaces.iter().map(|ns| (ns.0, ns.2)).collect::<Vec<_>>());
        let hosts = config
            .hosts
            .iter()
            .enumerate()
            .map(|(id, host)| Host::new(id, rng.fork(0x4057 + id as u64), *host))
            .collect();
        let env = Env {
            tcp: TcpOptions { c2h_success: config.c2h_success, ..TcpOptions::default() },
            config,
            now_ns: 0,
            seq: 0,
            stamp: 0,
            rng: rng.fork(0xe4),
            net_rng: rng.fork(0x4e7),
            links: Vec::new(),
            model,
            stats: Stats::default(),
            trace: seed,
            lost_writes: BTreeMap::new(),
            draining: false,
            finished: false,
            app,
            thread: thread.id(),
            target,
            transport,
            pool,
            local,
            subsystem,
            disks,
            cmb,
        };
        World { env, hosts, rng: rng.fork(0x3071d), steps: 0, target_busy: true }
    }

    fn answered(&self) -> u64 {
        self.hosts.iter().map(|host| host.answered).sum()
    }

    /// One turn of the world: time moves, the network delivers, hosts act, the target runs.
    fn step(&mut self) {
        self.steps += 1;
        let env = &mut self.env;
        // Small steps while anything is ready to move; otherwise on to the next arrival or
        // completion (at most a millisecond, so hosts' timers keep their pace).
        let step_ns = self.rng.range(500, 4_000);
        let dt = if self.target_busy || env.links.iter().any(Link::has_work) {
            step_ns
        } else {
            let next_disk = env.disks.iter().map(|disk| disk.lock().next_due_ns).min().unwrap_or(u64::MAX);
            let next_link = env.links.iter().filter_map(Link::next_arrival_ns).min().unwrap_or(u64::MAX);
            let next = next_disk.min(next_link);
            if next == u64::MAX {
                self.rng.range(20_000, 100_000)
            } else {
                next.saturating_sub(env.now_ns).clamp(step_ns, MAX_JUMP_NS)
            }
        };
        env.now_ns += dt;
        let faults = env.config.net;
        for link in env.links.iter_mut() {
            link.tick(&faults, env.now_ns);
        }
        if !env.draining && self.rng.chance(env.config.link_reset_per_million) {
            let open: Vec<usize> = (0..env.links.len()).filter(|index| env.links[*index].is_open()).collect();
            if !open.is_empty() {
                let index = open[self.rng.below(open.len() as u64) as usize];
                env.links[index].reset();
                env.stats.link_resets += 1;
            }
        }
        if !env.draining && self.rng.chance(env.config.ns_change_per_million) {
            // As if a namespace had been resized or re-attached: poll groups look it up
            // afresh, and every controller gets a notice (NVMe Base 2.0, 5.2).
            let namespaces = env.config.namespaces.clone();
            let nsid = self.rng.pick(&namespaces).0;
            let (target, subsystem) = (env.target.clone(), env.subsystem.clone());
            env.app.run_on(env.thread, move |ctx| target.namespace_changed(ctx, &subsystem, nsid));
        }
        for host in self.hosts.iter_mut() {
            host.step(env);
        }
        self.target_busy = env.app.step(env.now_ns);
        if self.steps.is_multiple_of(1024) {
            self.audit();
        }
    }

    /// The slower checks: commands waiting too long, slots the target holds that no host
    /// command accounts for, writes lost with connections the target has let go.
    fn audit(&mut self) {
        for host in &self.hosts {
            host.watchdog(&mut self.env);
        }
        let (conns, _) = self.env.target_view();
        let mut outstanding: BTreeMap<u64, usize> = BTreeMap::new();
        for host in &self.hosts {
            for queue in host.admin.iter().chain(host.io.iter().flatten()) {
                if self.env.links[queue.link].is_open() {
                    outstanding.insert(queue.conn_id, queue.cmds.len());
                }
            }
        }
        for (conn, (in_use, closing)) in &conns {
            let Some(sent) = outstanding.get(conn) else { continue };
            // A slot is taken by a command received and not yet answered; the host counts
            // that command outstanding until the answer arrives. More slots than that leak.
            if !closing && in_use > sent {
                self.env.fail(format!("target connection {conn} holds {in_use} command slots for {sent} commands"));
            }
        }
        self.settle_lost_writes(&conns.keys().copied().collect());
    }

    /// Writes lost with a connection the target has dropped are finished: a connection
    /// goes only once the bdev layer has given back all it ran.
    fn settle_lost_writes(&mut self, live: &BTreeSet<u64>) {
        let gone: Vec<u64> = self.env.lost_writes.keys().filter(|conn| !live.contains(conn)).copied().collect();
        for conn in gone {
            for stamp in self.env.lost_writes.remove(&conn).unwrap_or_default() {
                let seq = self.env.next_seq();
                self.env.model.write_finished(stamp, seq);
            }
        }
    }

    /// Runs until `commands` have been answered (or lost), then drains and checks.
    pub fn run(self, commands: u64) -> Report {
        // A failed check unwinds through here: the world must not be dropped then, with
        // I/O still in flight in the target (a connection dropped so asserts), only leaked.
        let mut world = std::mem::ManuallyDrop::new(self);
        let report = world.run_to_end(commands);
        drop(std::mem::ManuallyDrop::into_inner(world));
        report
    }

    fn run_to_end(&mut self, commands: u64) -> Report {
        while self.answered() < commands {
            self.step();
            if self.env.now_ns > 3_600_000_000_000 {
                self.env.fail(format!("an hour of simulated time for {} of {commands} commands", self.answered()));
            }
        }
        self.drain();
        Report {
            seed: self.env.config.seed,
            steps: self.steps,
            sim_ns: self.env.now_ns,
            trace: self.env.trace,
            stats: self.env.stats,
        }
    }

    /// The end of a run: answer everything, close everything, and check that nothing
    /// leaked and the media holds what the hosts may expect.
    fn drain(&mut self) {
        self.env.draining = true;
        let start = self.env.now_ns;
        while self.hosts.iter().any(|host| host.outstanding() > 0) {
            self.step();
            if self.env.now_ns - start > DRAIN_LIMIT_NS {
                self.audit();
                self.env.fail("commands still unanswered at the end".into());
            }
        }
        self.env.finished = true;
        let start = self.env.now_ns;
        loop {
            for host in self.hosts.iter_mut() {
                host.wind_down(&mut self.env);
            }
            self.step();
            let (conns, _) = self.env.target_view();
            if conns.is_empty() && self.hosts.iter().all(Host::is_quiet) {
                break;
            }
            if self.env.now_ns - start > DRAIN_LIMIT_NS {
                self.env.fail(format!("the target still holds connections {:?} at the end", conns));
            }
        }
        let (_, cached) = self.env.target_view();
        let target = self.env.target.clone();
        let stats = self
            .env
            .app
            .run_on(self.env.thread, move |ctx| {
                poll_group::with(&target, ctx, |group, ctx| group.stats(ctx.stats().busy_ns))
            })
            .expect("the app thread");
        self.env.stats.buffer_waits = stats.buffer_waits;
        self.env.stats.p2p_fallbacks = stats.p2p_fallbacks;
        self.env.stats.device_bytes = stats.placed_bytes[1] + stats.placed_bytes[2];
        self.env.stats.disk_nomem = self.env.disks.iter().map(|disk| disk.lock().stats.nomem).sum();
        self.env.stats.commands = self.answered();
        let stats = self.env.stats;
        if stats.sent != stats.commands {
            self.env.fail(format!("{} commands sent, {} answered or lost", stats.sent, stats.commands));
        }
        self.settle_lost_writes(&BTreeSet::new());
        self.check_buffers(cached);
        self.check_media();
        self.stop();
    }

    /// With every connection gone, every data buffer is back: in the pool or in the poll
    /// group's cache.
    fn check_buffers(&mut self, cached: (usize, usize)) {
        let pool = self.env.pool;
        let (small, large) = pool.available();
        let capacity = pool.capacity();
        if small + cached.0 != capacity || large + cached.1 != capacity {
            self.env.fail(format!(
                "buffers leaked: {small} small and {large} large in the pool, {cached:?} cached, of {capacity} each"
            ));
        }
        if let Some(cmb) = &self.env.cmb {
            let provider = cmb.provider();
            if provider.available_bytes() != provider.capacity_bytes() {
                self.env.fail(format!(
                    "P2P buffers leaked: {} of {} bytes of the CMB free",
                    provider.available_bytes(),
                    provider.capacity_bytes()
                ));
            }
        }
    }

    /// At rest, each block holds a version the model allows.
    fn check_media(&mut self) {
        if self.env.model.pending_writes() != 0 || self.env.model.reads_in_flight() != 0 {
            self.env.fail(format!(
                "the model still has {} writes and {} reads in flight at rest",
                self.env.model.pending_writes(),
                self.env.model.reads_in_flight()
            ));
        }
        for disk in self.env.disks.clone() {
            let disk = disk.lock();
            if disk.in_flight != 0 {
                self.env.fail(format!("disk {} has {} I/O in flight at rest", disk.nsid, disk.in_flight));
            }
            for (lba, block) in disk.media.chunks_exact(disk.block_size).enumerate() {
                let checked = super::pattern::decode(block, disk.nsid, lba as u64)
                    .and_then(|stamp| self.env.model.check_rest(disk.nsid, lba as u64, stamp));
                if let Err(why) = checked {
                    self.env.fail(format!("at rest: {why}"));
                }
            }
        }
    }

    /// Stops the app: its threads exit, the poll group's cache goes back to the pool.
    fn stop(&mut self) {
        self.env.app.handle().stop();
        let mut steps = 0;
        while !self.env.app.is_finished() {
            steps += 1;
            self.env.now_ns += 1_000;
            self.env.app.step(self.env.now_ns);
            if steps > 1_000 {
                self.env.fail("the app did not stop".into());
            }
        }
        let (small, large) = self.env.pool.available();
        let capacity = self.env.pool.capacity();
        if small != capacity || large != capacity {
            self.env.fail(format!("after stopping, the pool has {small} small and {large} large of {capacity}"));
        }
    }
}
