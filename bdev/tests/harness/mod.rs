//! Drives bdev I/O on real reactors: submit on a lightweight thread, drain the
//! completion queue with a poller there, hand results back to the test.

#![allow(dead_code)]

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use peerless_bdev::{completion_queue, BdevIo, BdevManager, DataBuf, Desc, IoStatus, IoType};
use peerless_core::reactor::{App, AppOptions, CoreMask, PollStatus, ThreadCtx, ThreadHandle};

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Harness {
    pub app: Option<App>,
    pub thread: ThreadHandle,
    pub bdevs: BdevManager,
}

impl Harness {
    pub fn new() -> Harness {
        let options =
            AppOptions { cpumask: CoreMask::parse("0x1").unwrap(), interrupt_mode: true, ..AppOptions::default() };
        let app = App::start(options).unwrap();
        let thread = app.handle().spawn_thread("io", None).unwrap();
        Harness { app: Some(app), thread, bdevs: BdevManager::new() }
    }

    /// Runs `work` on the I/O thread and returns its result.
    pub fn on_thread<R: Send + 'static>(&self, work: impl FnOnce(&mut ThreadCtx) -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        self.thread
            .send_blocking(move |ctx| {
                let _ = tx.send(work(ctx));
            })
            .unwrap();
        rx.recv_timeout(WAIT).expect("I/O thread did not answer")
    }

    /// Submits every I/O at once through `desc` and waits for all of them; results come
    /// back in completion order with the index they were given. I/O objects are built and
    /// finished on the I/O thread: they never cross threads (they are `!Send`).
    pub fn run(&self, desc: &Arc<Desc>, specs: Vec<Spec>) -> Vec<(usize, Done)> {
        let count = specs.len();
        let desc = desc.clone();
        let (tx, rx) = mpsc::channel();
        self.thread
            .send_blocking(move |ctx| {
                let handle = desc.channel(ctx);
                let queue = completion_queue(count);
                for (index, spec) in specs.into_iter().enumerate() {
                    let mut io = BdevIo::new(spec.io_type, spec.offset_blocks, spec.num_blocks);
                    io.buffers = spec.buffers;
                    handle.submit(ctx, io, &queue, index as u64);
                }
                let mut done = Vec::new();
                let slot: std::rc::Rc<std::cell::Cell<Option<peerless_core::reactor::PollerId>>> = Default::default();
                let own = slot.clone();
                let mut tx = Some(tx);
                let id = ctx.register_poller("test-drain", move |ctx| {
                    let _keep = &handle;
                    while let Some(mut io) = queue.borrow_mut().pop_front() {
                        let buffers = std::mem::take(&mut io.buffers);
                        done.push((io.tag as usize, Done { status: io.status, buffers }));
                    }
                    if done.len() == count {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(std::mem::take(&mut done));
                        }
                        if let Some(id) = own.get() {
                            ctx.unregister_poller(id);
                        }
                    }
                    PollStatus::Idle
                });
                slot.set(Some(id));
            })
            .unwrap();
        rx.recv_timeout(WAIT).expect("I/O did not complete")
    }

    pub fn run_one(&self, desc: &Arc<Desc>, spec: Spec) -> Done {
        self.run(desc, vec![spec]).pop().map(|(_, done)| done).expect("one completion")
    }

    /// Keeps `depth` I/O in flight for `duration` (closed loop, as a host would), built by
    /// `make(sequence)`; returns how many completed inside the window, and their statuses.
    pub fn run_for(
        &self,
        desc: &Arc<Desc>,
        duration: Duration,
        depth: usize,
        make: impl Fn(u64) -> Spec + Send + 'static,
    ) -> (u64, Vec<IoStatus>) {
        let desc = desc.clone();
        let (tx, rx) = mpsc::channel();
        self.thread
            .send_blocking(move |ctx| {
                let handle = desc.channel(ctx);
                let queue = completion_queue(depth);
                let deadline = std::time::Instant::now() + duration;
                let mut sequence = 0u64;
                let mut completed = 0u64;
                let mut statuses = Vec::new();
                let mut outstanding = 0usize;
                let slot: std::rc::Rc<std::cell::Cell<Option<peerless_core::reactor::PollerId>>> = Default::default();
                let own = slot.clone();
                let mut tx = Some(tx);
                let id = ctx.register_poller("test-load", move |ctx| {
                    let now = std::time::Instant::now();
                    while let Some(io) = queue.borrow_mut().pop_front() {
                        outstanding -= 1;
                        if now <= deadline {
                            completed += 1;
                        }
                        if !statuses.contains(&io.status) {
                            statuses.push(io.status);
                        }
                    }
                    if now < deadline {
                        while outstanding < depth {
                            let spec = make(sequence);
                            let mut io = BdevIo::new(spec.io_type, spec.offset_blocks, spec.num_blocks);
                            io.buffers = spec.buffers;
                            handle.submit(ctx, io, &queue, sequence);
                            sequence += 1;
                            outstanding += 1;
                        }
                    } else if outstanding == 0 {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send((completed, std::mem::take(&mut statuses)));
                        }
                        if let Some(id) = own.get() {
                            ctx.unregister_poller(id);
                        }
                    }
                    PollStatus::Busy
                });
                slot.set(Some(id));
            })
            .unwrap();
        rx.recv_timeout(WAIT + duration).expect("load did not finish")
    }

    pub fn open(&self, name: &str, write: bool) -> Arc<Desc> {
        Arc::new(self.bdevs.open(name, write, None, None).unwrap())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            app.handle().stop();
            app.wait();
        }
    }
}

/// An I/O to build on the I/O thread.
pub struct Spec {
    pub io_type: IoType,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    pub buffers: Vec<DataBuf>,
}

impl Spec {
    pub fn new(io_type: IoType, offset_blocks: u64, num_blocks: u64) -> Spec {
        Spec { io_type, offset_blocks, num_blocks, buffers: Vec::new() }
    }

    pub fn with(mut self, buffer: DataBuf) -> Spec {
        self.buffers.push(buffer);
        self
    }
}

/// What came back: the status and the buffers, returned to their owner.
#[derive(Debug)]
pub struct Done {
    pub status: IoStatus,
    pub buffers: Vec<DataBuf>,
}

impl Done {
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for buffer in &self.buffers {
            match buffer {
                DataBuf::Heap(bytes) => out.extend_from_slice(bytes),
                other => panic!("bytes() of a non-heap buffer {other:?}"),
            }
        }
        out
    }
}

/// A write of `blocks` blocks whose bytes encode their block number and `seed`.
pub fn patterned_write(offset: u64, blocks: u64, block_size: usize, seed: u8) -> Spec {
    Spec::new(IoType::Write, offset, blocks)
        .with(DataBuf::Heap(pattern(offset, blocks, block_size, seed).into_boxed_slice()))
}

pub fn pattern(offset: u64, blocks: u64, block_size: usize, seed: u8) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(blocks as usize * block_size);
    for block in offset..offset + blocks {
        for index in 0..block_size {
            bytes.push((block as u8).wrapping_mul(31).wrapping_add(index as u8).wrapping_add(seed));
        }
    }
    bytes
}

pub fn read(offset: u64, blocks: u64, block_size: usize) -> Spec {
    Spec::new(IoType::Read, offset, blocks).with(DataBuf::heap(blocks as usize * block_size))
}

pub fn assert_ok(done: &Done) {
    assert_eq!(done.status, IoStatus::SUCCESS, "{done:?}");
}
