//! `peerless_bdev`: fio files are bdevs of an in-process Peerless framework
//! (`framework.rs`). Each open file gets a lightweight thread on the framework's reactor
//! whose poller owns the bdev channel: fio's `queue` sends the request over a channel
//! and `getevents` waits on another for the answers.
//!
//! The cost, against SPDK's plugin which polls its spdk_thread from the fio thread itself:
//! every I/O crosses threads twice (a channel send each way) and data is copied between
//! the io_u buffer and a recycled heap buffer that the BdevIo owns. The reactor is woken
//! by a message only when its poller has gone idle, so a busy queue costs no wake-ups.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerless_bdev::{completion_queue, BdevHandle, BdevIo, CompletionQueue, DataBuf, Desc, IoStatus, IoType};
use peerless_core::reactor::{PollStatus, ThreadCtx, ThreadHandle};

use crate::engine::{blocks, Engine, Event, Op, Queued, Request, Token};
use crate::framework::Framework;
use crate::iou::IoBuf;

/// How long open and close wait for the lightweight thread to answer.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long getevents waits for any completion before failing what is outstanding.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One I/O on its way to the lightweight thread.
struct Submission {
    token: Token,
    io_type: IoType,
    offset_blocks: u64,
    num_blocks: u64,
    data: Option<Box<[u8]>>,
}

/// One I/O on its way back.
struct Done {
    token: Token,
    ok: bool,
    data: Option<Box<[u8]>>,
}

/// A file's lightweight thread and the way to it.
struct Lane {
    thread: ThreadHandle,
    requests: Sender<Submission>,
    /// The poller found nothing to do and the reactor may sleep: wake it with a message.
    idle: Arc<AtomicBool>,
}

struct File {
    desc: Arc<Desc>,
    block_size: u32,
    size_bytes: u64,
    lane: Option<Lane>,
}

pub struct BdevEngine {
    // Files first: their lanes and descriptors go before the framework they belong to.
    files: HashMap<u32, File>,
    /// Outstanding I/O by token; reads keep the io_u buffer to fill.
    inflight: HashMap<Token, Option<IoBuf>>,
    /// io_us failed for want of an answer, handed out by the next getevents.
    expired: VecDeque<Event>,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    spare: Vec<Box<[u8]>>,
    framework: Framework,
}

impl BdevEngine {
    pub fn new(json_conf: &str) -> Result<BdevEngine, String> {
        let framework = Framework::acquire(Path::new(json_conf))?;
        let (done_tx, done_rx) = mpsc::channel();
        Ok(BdevEngine {
            files: HashMap::new(),
            inflight: HashMap::new(),
            expired: VecDeque::new(),
            done_tx,
            done_rx,
            spare: Vec::new(),
            framework,
        })
    }

    fn buffer(&mut self, len: usize) -> Box<[u8]> {
        match self.spare.iter().position(|buf| buf.len() == len) {
            Some(at) => self.spare.swap_remove(at),
            None => vec![0u8; len].into_boxed_slice(),
        }
    }

    /// Fails every outstanding io_u with ETIMEDOUT; a completion that comes later finds
    /// no io_u to touch and is dropped.
    fn abandon_inflight(&mut self) {
        eprintln!("peerless_bdev: no completion in {IO_TIMEOUT:?}; failing {} I/O", self.inflight.len());
        self.expired.extend(self.inflight.drain().map(|(token, _)| Event { token, error: libc::ETIMEDOUT }));
    }

    fn finish(&mut self, done: Done, out: &mut Vec<Event>) {
        let Some(read_into) = self.inflight.remove(&done.token) else { return };
        if let (true, Some(mut dest), Some(data)) = (done.ok, read_into, done.data.as_deref()) {
            dest.fill(data);
        }
        if let Some(data) = done.data {
            self.spare.push(data);
        }
        out.push(Event { token: done.token, error: if done.ok { 0 } else { libc::EIO } });
    }
}

impl Engine for BdevEngine {
    fn add_file(&mut self, fileno: u32, name: &str) -> Result<u64, String> {
        let desc =
            self.framework.bdevs.open(name, true, None, None).map_err(|err| format!("open bdev {name}: {err}"))?;
        let info = desc.bdev().info().clone();
        let file =
            File { desc: Arc::new(desc), block_size: info.block_size, size_bytes: info.size_bytes(), lane: None };
        self.files.insert(fileno, file);
        Ok(info.size_bytes())
    }

    fn open_file(&mut self, fileno: u32, depth: u32, _max_bs: u64) -> Result<(), String> {
        let file = self.files.get_mut(&fileno).ok_or_else(|| format!("file {fileno} was not set up"))?;
        if file.lane.is_some() {
            return Ok(());
        }
        let name = format!("fio-{}-{fileno}", file.desc.name());
        let thread = self.framework.app.spawn_thread(&name, None).map_err(|err| format!("thread {name}: {err}"))?;
        let (requests, request_rx) = mpsc::channel();
        let idle = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (desc, done_tx, poller_idle) = (file.desc.clone(), self.done_tx.clone(), idle.clone());
        thread
            .send_blocking(move |ctx| {
                start_lane(ctx, &desc, request_rx, done_tx, poller_idle, depth as usize);
                let _ = ready_tx.send(());
            })
            .map_err(|err| format!("thread {name}: {err:?}"))?;
        ready_rx.recv_timeout(CONTROL_TIMEOUT).map_err(|_| format!("thread {name} did not start"))?;
        file.lane = Some(Lane { thread, requests, idle });
        Ok(())
    }

    fn close_file(&mut self, fileno: u32) {
        let Some(lane) = self.files.get_mut(&fileno).and_then(|file| file.lane.take()) else { return };
        // Exiting drops the poller, and with it the bdev channel, on its own thread.
        let _ = lane.thread.send_blocking(|ctx| ctx.exit());
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        while !lane.thread.has_exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn queue(&mut self, fileno: u32, request: Request) -> Queued {
        let Some(file) = self.files.get(&fileno) else { return Queued::Failed(libc::EBADF) };
        let (block_size, size_bytes) = (file.block_size, file.size_bytes);
        let (io_type, range) = match request.op {
            Op::Read => (IoType::Read, blocks(request.offset, request.len, block_size, size_bytes)),
            Op::Write => (IoType::Write, blocks(request.offset, request.len, block_size, size_bytes)),
            Op::Trim => (IoType::Unmap, blocks(request.offset, request.len, block_size, size_bytes)),
            Op::Flush => (IoType::Flush, Ok((0, size_bytes / u64::from(block_size.max(1))))),
        };
        let (offset_blocks, num_blocks) = match range {
            Ok(range) => range,
            Err(errno) => return Queued::Failed(errno),
        };
        let data = match request.op {
            Op::Read => Some(self.buffer(request.len)),
            Op::Write => {
                let mut data = self.buffer(request.len);
                data.copy_from_slice(request.buf.as_ref().map_or(&[][..], IoBuf::bytes));
                Some(data)
            }
            Op::Trim | Op::Flush => None,
        };
        let Some(lane) = self.files.get(&fileno).and_then(|file| file.lane.as_ref()) else {
            return Queued::Failed(libc::EBADF);
        };
        let submission = Submission { token: request.token, io_type, offset_blocks, num_blocks, data };
        if lane.requests.send(submission).is_err() {
            return Queued::Failed(libc::EIO);
        }
        // After the send: a poller that went idle before it will see our flag cleared
        // and a message on its way (see `start_lane`).
        if lane.idle.swap(false, Ordering::SeqCst) && lane.thread.send(|_| {}).is_err() {
            eprintln!("peerless_bdev: cannot wake the thread of file {fileno}");
        }
        let read_into = if request.op == Op::Read { request.buf } else { None };
        self.inflight.insert(request.token, read_into);
        Queued::Queued
    }

    fn getevents(&mut self, min: usize, max: usize, timeout: Option<Duration>, out: &mut Vec<Event>) {
        debug_assert!(min <= max, "min {min} > max {max}");
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        while out.len() < max {
            if let Some(event) = self.expired.pop_front() {
                out.push(event);
                continue;
            }
            let received = if out.len() >= min {
                self.done_rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                // fio may wait without a timeout; a bdev that stopped answering must not
                // hang it forever.
                let wait = deadline.map_or(IO_TIMEOUT, |deadline| deadline.saturating_duration_since(Instant::now()));
                self.done_rx.recv_timeout(wait)
            };
            match received {
                Ok(done) => self.finish(done, out),
                Err(_) if deadline.is_none() && out.len() < min && !self.inflight.is_empty() => self.abandon_inflight(),
                Err(_) => break,
            }
        }
    }
}

/// On the lane's lightweight thread: a poller that owns the bdev channel, submits what
/// arrives on `requests` and sends completions back on `done`.
fn start_lane(
    ctx: &mut ThreadCtx,
    desc: &Arc<Desc>,
    requests: Receiver<Submission>,
    done: Sender<Done>,
    idle: Arc<AtomicBool>,
    depth: usize,
) {
    let mut lane = LaneState {
        handle: desc.channel(ctx),
        queue: completion_queue(depth),
        free: Vec::with_capacity(depth),
        requests,
        done,
        idle,
    };
    // Runs until the lane's thread exits, which drops the lane and its channel with it.
    ctx.poller("fio-lane", 0, move |ctx| lane.poll(ctx)).detach();
}

/// What the lane's poller owns; lives and dies on the lane's thread.
struct LaneState {
    handle: BdevHandle,
    queue: CompletionQueue,
    /// Finished I/O objects, reused rather than reallocated. Boxed because the layer
    /// takes and returns them boxed.
    #[allow(clippy::vec_box)]
    free: Vec<Box<BdevIo>>,
    requests: Receiver<Submission>,
    done: Sender<Done>,
    idle: Arc<AtomicBool>,
}

impl LaneState {
    fn poll(&mut self, ctx: &mut ThreadCtx) -> PollStatus {
        let mut busy = false;
        while let Ok(submission) = self.requests.try_recv() {
            self.submit(ctx, submission);
            busy = true;
        }
        loop {
            let Some(mut io) = self.queue.borrow_mut().pop_front() else { break };
            let data = match io.buffers.pop() {
                Some(DataBuf::Heap(data)) => Some(data),
                _ => None,
            };
            // The fio side may be gone only after its own cleanup, when nothing is in flight.
            let _ = self.done.send(Done { token: io.tag as Token, ok: io.status == IoStatus::SUCCESS, data });
            self.free.push(io);
            busy = true;
        }
        if busy {
            return PollStatus::Busy;
        }
        // Dekker-style hand-off with `queue`: announce idleness, then look once more, so
        // a request sent between the drain above and the flag is never left unseen.
        self.idle.store(true, Ordering::SeqCst);
        match self.requests.try_recv() {
            Ok(submission) => {
                self.idle.store(false, Ordering::SeqCst);
                self.submit(ctx, submission);
                PollStatus::Busy
            }
            Err(_) => PollStatus::Idle,
        }
    }

    fn submit(&mut self, ctx: &mut ThreadCtx, submission: Submission) {
        let Submission { token, io_type, offset_blocks, num_blocks, data } = submission;
        let mut io = match self.free.pop() {
            Some(mut io) => {
                io.reset(io_type, offset_blocks, num_blocks);
                io
            }
            None => BdevIo::new(io_type, offset_blocks, num_blocks),
        };
        io.buffers.clear();
        io.buffers.extend(data.map(DataBuf::Heap));
        // The token rides in the tag and comes back with the completion.
        self.handle.submit(ctx, io, &self.queue, token as u64);
    }
}
