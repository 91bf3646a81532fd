//! Drives bdev I/O on real reactors: submit on a lightweight thread, drain the
//! completion queue with a poller there, hand results back to the test.

#![allow(dead_code)]

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use peerless_bdev::{completion_queue, BdevIo, BdevManager, DataBuf, Desc, IoStatus, IoType};
use peerless_core::mem::{self, DmaBuf, IOBUF_LARGE_BYTES, IOBUF_SMALL_BYTES};
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
                let mut tx = Some(tx);
                ctx.poller("test-drain", 0, move |_| {
                    let _keep = &handle;
                    while let Some(mut io) = queue.borrow_mut().pop_front() {
                        let buffers = std::mem::take(&mut io.buffers);
                        done.push((io.tag as usize, Done { status: io.status, buffers }));
                    }
                    if done.len() == count {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(std::mem::take(&mut done));
                        }
                        return PollStatus::Done;
                    }
                    PollStatus::Idle
                })
                .detach();
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
                let mut tx = Some(tx);
                ctx.poller("test-load", 0, move |ctx| {
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
                        return PollStatus::Done;
                    }
                    PollStatus::Busy
                })
                .detach();
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
                DataBuf::Dma(buf) => out.extend(buf.sgl().unwrap().cpu_view().unwrap().to_vec()),
                other => panic!("bytes() of a buffer the CPU may not read {other:?}"),
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

/// Host memory an I/O's buffer is made of.
#[derive(Clone, Copy, Debug)]
pub enum Memory {
    /// 4 KiB-aligned DMA memory, as an iobuf pool buffer is: O_DIRECT takes it as it is.
    Dma,
    /// The heap, not sector aligned: O_DIRECT needs it staged.
    Heap,
}

/// A buffer of `size` bytes of `memory` holding `payload` at its start and `filler` after it.
pub fn buffer(memory: Memory, size: usize, payload: &[u8], filler: u8) -> DataBuf {
    let mut bytes = vec![filler; size];
    bytes[..payload.len()].copy_from_slice(payload);
    match memory {
        Memory::Heap => DataBuf::Heap(bytes.into_boxed_slice()),
        Memory::Dma => {
            let mut buf = DmaBuf::alloc(size).unwrap();
            mem::copy(&mut buf.sgl_mut().unwrap(), &mem::Sgl::from_host(&bytes).unwrap()).unwrap();
            DataBuf::Dma(buf)
        }
    }
}

/// Checks that reads and writes whose buffers are larger than the I/O (as the NVMe/TCP
/// target hands them over: an iobuf pool buffer of 8 KiB or 132 KiB whatever the I/O's
/// length) succeed and move exactly the I/O's blocks: a write lands in its blocks and not
/// in the block after them, a read fills the I/O's length of its buffer and leaves the
/// rest as it was. `media(offset_bytes, len)` reads the bytes behind the bdev directly
/// where the test can (a file), else returns None. Uses blocks 16 to 16 + 9 of the bdev.
pub fn check_buffers_larger_than_the_io(
    harness: &Harness,
    desc: &Arc<Desc>,
    memories: &[Memory],
    media: &dyn Fn(u64, usize) -> Option<Vec<u8>>,
) {
    const GUARD_SEED: u8 = 0x5c;
    const FILLER: u8 = 0xee;
    let block = desc.bdev().info().block_size as usize;
    let offset = 16;
    // One block and several: 512 B and 4 KiB of 512-byte blocks, 4 KiB and 8 KiB of 4 KiB ones.
    let several = (4096 / block).max(2) as u64;
    for &memory in memories {
        for buffer_bytes in [IOBUF_SMALL_BYTES, IOBUF_LARGE_BYTES] {
            for (seed, blocks) in [(1u8, 1u64), (2, several)] {
                let len = blocks as usize * block;
                let case = format!("{block}-byte blocks, {len} bytes in a {buffer_bytes}-byte {memory:?} buffer");
                // The I/O's blocks and the one after them start out as a known guard.
                let guard = pattern(offset, blocks + 1, block, GUARD_SEED);
                let exact = Spec::new(IoType::Write, offset, blocks + 1).with(DataBuf::Heap(guard.clone().into()));
                assert_ok(&harness.run_one(desc, exact));

                let payload = pattern(offset, blocks, block, seed);
                let write =
                    Spec::new(IoType::Write, offset, blocks).with(buffer(memory, buffer_bytes, &payload, FILLER));
                let done = harness.run_one(desc, write);
                assert_eq!(done.status, IoStatus::SUCCESS, "write: {case}");
                let back = harness.run_one(desc, read(offset, blocks + 1, block));
                assert_ok(&back);
                let back = back.bytes();
                assert!(back[..len] == payload[..], "the write's blocks read back: {case}");
                assert!(back[len..] == guard[len..], "the block after the write was written: {case}");
                if let Some(stored) = media(offset * block as u64, len + block) {
                    assert!(stored[..len] == payload[..], "the write's blocks on the media: {case}");
                    assert!(stored[len..] == guard[len..], "the block after the write on the media: {case}");
                }

                let into = Spec::new(IoType::Read, offset, blocks).with(buffer(memory, buffer_bytes, &[], FILLER));
                let done = harness.run_one(desc, into);
                assert_eq!(done.status, IoStatus::SUCCESS, "read: {case}");
                let bytes = done.bytes();
                assert_eq!(bytes.len(), buffer_bytes, "the buffer came back whole: {case}");
                assert!(bytes[..len] == payload[..], "the read's blocks: {case}");
                assert!(bytes[len..].iter().all(|byte| *byte == FILLER), "the read filled past its end: {case}");
            }
        }
    }
}
