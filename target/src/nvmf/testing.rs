//! A target for unit tests of the control plane: real reactors (one core, interrupt
//! mode), malloc bdevs registered directly, and a transport whose listeners open no
//! socket (the target's own list shows which are open). No RPC.

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use peerless_bdev::modules::malloc::MallocBdev;
use peerless_bdev::{BdevInfo, BdevManager, Uuid};
use peerless_core::reactor::{App, AppOptions, CoreMask, ThreadCtx};
use serde_json::{json, Value};

use super::buffers::DataPool;
use super::transport::{SockImpl, Transport, TransportListener, TransportOptions, TransportPollGroup};
use super::NvmfTarget;

const WAIT: Duration = Duration::from_secs(10);
pub const TRTYPE: &str = "LOOP";
/// A second transport type, registered (not created), for listeners of two transports
/// at one address.
pub const OTHER_TRTYPE: &str = "LOOPB";

pub struct World {
    app: Option<App>,
    pub target: NvmfTarget,
    pub bdevs: BdevManager,
}

impl World {
    /// A target with the test transport created.
    pub fn new() -> World {
        let options = AppOptions {
            name: "nvmf-test".into(),
            cpumask: CoreMask::parse("0x1").expect("a mask"),
            interrupt_mode: true,
            ..AppOptions::default()
        };
        let app = App::start(options).expect("start an app");
        let bdevs = BdevManager::new();
        let target = NvmfTarget::new(app.handle(), bdevs.clone());
        target.register_transport_type(TRTYPE, LoopTransport::create);
        target.register_transport_type(OTHER_TRTYPE, LoopTransport::create_other);
        target.create_transport(TRTYPE, &json!({"trtype": TRTYPE}), 1).expect("the test transport");
        World { app: Some(app), target, bdevs }
    }

    /// Runs `work` on the app thread, as RPC methods run, and returns its result.
    pub fn on_app<R: Send + 'static>(&self, work: impl FnOnce(&mut ThreadCtx, &NvmfTarget) -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let target = self.target.clone();
        self.target
            .0
            .app
            .app_thread()
            .send_blocking(move |ctx| {
                let _ = tx.send(work(ctx, &target));
            })
            .expect("the app thread takes messages");
        rx.recv_timeout(WAIT).expect("the app thread answered")
    }

    /// The addresses the target has a listener open on.
    pub fn open_listeners(&self) -> Vec<SocketAddr> {
        self.target.0.listeners.lock().iter().map(|(_, listener)| listener.addr()).collect()
    }

    /// The listeners the target has open, with their transports.
    pub fn open_listeners_by_transport(&self) -> Vec<(&'static str, SocketAddr)> {
        self.target.0.listeners.lock().iter().map(|(trtype, listener)| (*trtype, listener.addr())).collect()
    }

    /// A malloc bdev of 64 blocks of 512 bytes.
    pub fn malloc(&self, name: &str) {
        let info = BdevInfo {
            name: name.into(),
            product_name: "Malloc disk".into(),
            block_size: 512,
            num_blocks: 64,
            uuid: Uuid::random(),
            max_io_blocks: 0,
        };
        self.bdevs.register(Arc::new(MallocBdev::new(info).expect("memory"))).expect("a new name");
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            app.handle().stop();
            app.wait();
        }
    }
}

struct LoopTransport {
    trtype: &'static str,
    opts: Arc<TransportOptions>,
    pool: &'static DataPool,
}

impl LoopTransport {
    fn create(params: &Value, poll_groups: usize) -> Result<Arc<dyn Transport>, String> {
        LoopTransport::create_as(TRTYPE, params, poll_groups)
    }

    fn create_other(params: &Value, poll_groups: usize) -> Result<Arc<dyn Transport>, String> {
        LoopTransport::create_as(OTHER_TRTYPE, params, poll_groups)
    }

    fn create_as(trtype: &'static str, params: &Value, poll_groups: usize) -> Result<Arc<dyn Transport>, String> {
        let mut opts: TransportOptions = serde_json::from_value(params.clone()).map_err(|err| err.to_string())?;
        // The smallest pool there is: no command ever runs here.
        opts.max_io_size = 4096;
        opts.io_unit_size = 4096;
        opts.num_shared_buffers = 2;
        opts.buf_cache_size = 0;
        let pool = DataPool::create(&opts, poll_groups)?;
        Ok(Arc::new(LoopTransport { trtype, opts: Arc::new(opts), pool }))
    }
}

impl Transport for LoopTransport {
    fn trtype(&self) -> &'static str {
        self.trtype
    }

    fn opts(&self) -> &Arc<TransportOptions> {
        &self.opts
    }

    fn pool(&self) -> &'static DataPool {
        self.pool
    }

    fn to_json(&self) -> Value {
        json!({"trtype": self.trtype})
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
        // Port 1 stands for an address the system refuses.
        if addr.port() == 1 {
            return Err(format!("cannot listen on {addr}: refused by the test transport"));
        }
        Ok(Box::new(LoopListener { addr }))
    }

    fn create_poll_group(&self, _: &mut ThreadCtx) -> Box<dyn TransportPollGroup> {
        Box::new(NoConnections)
    }
}

struct LoopListener {
    addr: SocketAddr,
}

impl TransportListener for LoopListener {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn stop(self: Box<Self>, _: &mut ThreadCtx) {}
}

struct NoConnections;

impl TransportPollGroup for NoConnections {
    fn poll(&mut self, _: &mut ThreadCtx, _: &mut super::transport::GroupCtx<'_>) -> bool {
        false
    }

    fn for_each_qpair(&mut self, _: &mut dyn FnMut(&mut super::qpair::Qpair)) {}

    fn connection_count(&self) -> usize {
        0
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
