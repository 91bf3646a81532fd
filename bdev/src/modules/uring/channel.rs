//! One thread's path into a uring bdev: its own ring, SQEs batched and handed to the
//! kernel once per poll, completions reaped by a poller on the same thread (woken by the
//! ring's eventfd in interrupt mode), and aligned staging for buffers O_DIRECT refuses.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use peerless_core::mem::{self, DmaBuf};
use peerless_core::reactor::{PollStatus, Poller, ThreadCtx};

use super::sys::{Op, Refused, Ring};
use super::Backing;
use crate::bdev::{BdevChannelOps, SubmitError};
use crate::io::{BdevIo, DataBuf, IoType};
use crate::status::IoStatus;

/// Slots (and SQ entries) per channel: the most I/O one thread keeps in flight on one
/// bdev before the layer queues the rest.
pub(super) const RING_ENTRIES: u32 = 128;
/// Completions handled per poll, so one busy ring cannot hold its thread forever.
const COMPLETIONS_PER_POLL: usize = 128;
/// Staging buffers one channel may hold for I/O whose buffers O_DIRECT cannot take.
const STAGING_BUFFERS_MAX: usize = 32;

/// What the ring gives back with an I/O.
struct Extra {
    /// The I/O's own buffers, when it ran through staging.
    original: Option<Vec<DataBuf>>,
    /// The reset epoch it was submitted in.
    epoch: u64,
}

pub(super) struct UringChannel {
    state: Rc<RefCell<State>>,
    /// Reaps the ring; goes with the channel.
    _poller: Poller,
}

struct State {
    backing: Arc<Backing>,
    ring: Ring<Extra>,
    /// Resets wait here until everything submitted before the first of them has
    /// finished (I/O submitted after it does not hold it back, so load cannot starve
    /// a reset; later resets of the same batch finish with the first).
    resets: VecDeque<Box<BdevIo>>,
    /// Bumped by a reset that finds no reset waiting; I/O carries the epoch it ran in.
    epoch: u64,
    /// In-flight I/O of epochs before the waiting resets.
    before_reset: usize,
    /// Free staging buffers, each a one-element buffer list ready to swap into an I/O.
    staging: Vec<Vec<DataBuf>>,
    staging_allocated: usize,
}

impl UringChannel {
    /// Builds the channel's ring and poller on `ctx`'s thread; an error if the kernel
    /// refuses a ring (the caller then fails this channel's I/O).
    pub(super) fn new(ctx: &mut ThreadCtx, backing: Arc<Backing>) -> std::io::Result<UringChannel> {
        let interrupt = ctx.app().options().interrupt_mode;
        let ring = Ring::new(backing.file.clone(), backing.block_size, RING_ENTRIES, interrupt)?;
        if let Some(eventfd) = ring.eventfd() {
            // The fd leaves the reactor's epoll set by itself when the ring's eventfd is
            // closed with the channel (the ring holds no file reference to it).
            ctx.watch_fd(eventfd)?;
        }
        let name = backing.name.clone();
        let state = Rc::new(RefCell::new(State {
            backing,
            ring,
            resets: VecDeque::new(),
            epoch: 0,
            before_reset: 0,
            staging: Vec::with_capacity(STAGING_BUFFERS_MAX),
            staging_allocated: 0,
        }));
        // The channel owns the poller, not the state, so the poller may hold the state.
        let polled = state.clone();
        let poller = ctx.poller(&format!("uring_{name}"), 0, move |_| polled.borrow_mut().poll());
        Ok(UringChannel { state, _poller: poller })
    }
}

impl BdevChannelOps for UringChannel {
    fn submit(&mut self, _ctx: &mut ThreadCtx, io: Box<BdevIo>) -> Result<(), SubmitError> {
        self.state.borrow_mut().submit(io)
    }
}

impl State {
    fn submit(&mut self, mut io: Box<BdevIo>) -> Result<(), SubmitError> {
        let op = match io.io_type {
            IoType::Read => Op::Read,
            IoType::Write => Op::Write,
            IoType::Flush => Op::Flush,
            // Both leave the range reading as zeroes. A punched hole does it in a file
            // and is a discard on a block device; write_zeroes on a block device asks
            // for zeroing instead, which the kernel falls back to writing out where the
            // device cannot discard with zeroes (tmpfs, by contrast, has no ZERO_RANGE).
            IoType::Unmap => Op::Fallocate { mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE },
            IoType::WriteZeroes if self.backing.is_block_device => {
                Op::Fallocate { mode: libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE }
            }
            IoType::WriteZeroes => Op::Fallocate { mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE },
            IoType::Reset => {
                // Nothing in the kernel to abort: a reset completes once what came
                // before it has.
                if self.resets.is_empty() {
                    self.epoch += 1;
                    self.before_reset = self.ring.in_flight();
                }
                self.resets.push_back(io);
                return Ok(());
            }
            IoType::Compare => {
                io.complete(IoStatus::INVALID_OPCODE);
                return Ok(());
            }
        };
        if !self.ring.has_room() {
            return Err(SubmitError::NoResources(io));
        }
        let original = if io.io_type.has_data() && self.needs_staging(&io) {
            match self.stage(&mut io) {
                Ok(original) => Some(original),
                Err(Staging::NoBuffer) => return Err(SubmitError::NoResources(io)),
                Err(Staging::Failed(status)) => {
                    io.complete(status);
                    return Ok(());
                }
            }
        } else {
            None
        };
        match self.ring.start(op, io, Extra { original, epoch: self.epoch }) {
            Ok(()) => Ok(()),
            Err((refused, mut io, Extra { original, .. })) => {
                if let Some(original) = original {
                    let staged = std::mem::replace(&mut io.buffers, original);
                    self.staging.push(staged);
                }
                match refused {
                    Refused::Full => Err(SubmitError::NoResources(io)),
                    Refused::NotHost => {
                        peerless_core::log_error!(
                            "uring '{}': I/O with non-host buffers reached the module",
                            self.backing.name
                        );
                        io.complete(IoStatus::DATA_TRANSFER_ERROR);
                        Ok(())
                    }
                    Refused::Short => {
                        peerless_core::log_error!(
                            "uring '{}': {io:?} reached the module with buffers shorter than its blocks",
                            self.backing.name
                        );
                        io.complete(IoStatus::INVALID_FIELD);
                        Ok(())
                    }
                }
            }
        }
    }

    /// Whether O_DIRECT would refuse this I/O's buffers (an address or a length off the
    /// device's alignment) over the bytes it moves; buffered files take anything.
    fn needs_staging(&self, io: &BdevIo) -> bool {
        let Some(align) = self.backing.direct_align else { return false };
        match io.sgl() {
            Ok(mut sgl) => {
                sgl.truncate(payload_bytes(io, self.backing.block_size));
                sgl.iter().any(|seg| seg.addr() % align != 0 || seg.len() % align != 0)
            }
            Err(_) => false,
        }
    }

    /// Swaps the I/O's buffers for an aligned staging buffer of the I/O's length (not its
    /// buffers', which may be larger), copying a write's payload in through the gate.
    /// Buffers of a size already seen are reused, so a steady workload allocates nothing.
    fn stage(&mut self, io: &mut BdevIo) -> Result<Vec<DataBuf>, Staging> {
        let len = payload_bytes(io, self.backing.block_size);
        let reuse = self.staging.iter().position(|staged| staged.first().is_some_and(|buf| buf.len() == len));
        let mut staged = match reuse {
            Some(index) => self.staging.swap_remove(index),
            None if self.staging_allocated < STAGING_BUFFERS_MAX => self.alloc_staging(len)?,
            // At the limit: give up a free buffer of another size for one of this size.
            None if !self.staging.is_empty() => {
                self.staging.pop();
                self.staging_allocated -= 1;
                self.alloc_staging(len)?
            }
            None => return Err(Staging::NoBuffer),
        };
        if io.io_type == IoType::Write {
            let copied = match (io.sgl(), staged.first_mut()) {
                (Ok(mut src), Some(DataBuf::Dma(buf))) => {
                    src.truncate(len);
                    buf.sgl_mut().and_then(|mut dst| mem::copy(&mut dst, &src))
                }
                _ => Err(mem::Error::Config("staging buffer is not DMA memory".into())),
            };
            if let Err(err) = copied {
                self.staging.push(staged);
                peerless_core::log_error!("uring '{}': staging a write failed: {err}", self.backing.name);
                return Err(Staging::Failed(IoStatus::DATA_TRANSFER_ERROR));
            }
        }
        std::mem::swap(&mut io.buffers, &mut staged);
        Ok(staged)
    }

    fn alloc_staging(&mut self, len: usize) -> Result<Vec<DataBuf>, Staging> {
        match DmaBuf::alloc(len) {
            Ok(buf) => {
                self.staging_allocated += 1;
                Ok(vec![DataBuf::Dma(buf)])
            }
            Err(err) => {
                peerless_core::log_warn!("uring '{}': no staging memory for {len} bytes: {err}", self.backing.name);
                Err(Staging::NoBuffer)
            }
        }
    }

    /// Hands queued SQEs to the kernel, finishes what it completed, releases resets.
    fn poll(&mut self) -> PollStatus {
        let mut did_work = false;
        match self.ring.flush() {
            Ok(taken) => did_work |= taken > 0,
            Err(err) => peerless_core::log_error!("uring '{}': io_uring_enter failed: {err}", self.backing.name),
        }
        did_work |= self.reap() > 0;
        if !did_work && self.ring.eventfd().is_some() {
            // About to report idle, and the reactor may then sleep: clear the eventfd,
            // then look once more, so a completion between the two is not slept through.
            self.ring.clear_eventfd();
            if self.ring.has_completions() {
                did_work |= self.reap() > 0;
            }
        }
        if !self.resets.is_empty() && self.before_reset == 0 {
            for reset in self.resets.drain(..) {
                reset.complete(IoStatus::SUCCESS);
            }
            did_work = true;
        }
        PollStatus::from_work(did_work)
    }

    fn reap(&mut self) -> usize {
        let State { ring, staging, backing, resets, epoch, before_reset, .. } = self;
        let waiting_resets = !resets.is_empty();
        let block_size = backing.block_size;
        ring.reap(COMPLETIONS_PER_POLL, |mut io, Extra { original, epoch: submitted_in }, result| {
            if waiting_resets && submitted_in < *epoch {
                debug_assert!(*before_reset > 0, "more pre-reset completions than pre-reset I/O");
                *before_reset -= 1;
            }
            let mut status = status_of(&io, block_size, result);
            if let Some(original) = original {
                let staged = std::mem::replace(&mut io.buffers, original);
                if io.io_type == IoType::Read
                    && status.is_success()
                    && unstage_read(&mut io, &staged, block_size).is_err()
                {
                    status = IoStatus::DATA_TRANSFER_ERROR;
                }
                staging.push(staged);
            }
            if !status.is_success() {
                peerless_core::log_error!(
                    "uring '{}': {:?} at block {} failed: result {result}, status {status}",
                    backing.name,
                    io.io_type,
                    io.offset_blocks
                );
            }
            io.complete(status);
        })
    }
}

enum Staging {
    /// No staging buffer now: retry when I/O completes.
    NoBuffer,
    Failed(IoStatus),
}

/// Copies a staged read's data into the I/O's own buffers, through the gate: the I/O's
/// length only, so what lies past it in a larger buffer stays as it was.
fn unstage_read(io: &mut BdevIo, staged: &[DataBuf], block_size: u32) -> mem::Result<usize> {
    let [DataBuf::Dma(buf)] = staged else {
        return Err(mem::Error::Config("staging buffer is not DMA memory".into()));
    };
    let len = payload_bytes(io, block_size);
    let mut src = buf.sgl()?;
    src.truncate(len);
    let mut dst = io.sgl_mut()?;
    dst.truncate(len);
    mem::copy(&mut dst, &src)
}

/// The bytes an I/O moves: its blocks, whatever the size of the buffers that carry them
/// (the layer accepts buffers larger than the I/O, never smaller).
fn payload_bytes(io: &BdevIo, block_size: u32) -> usize {
    if !io.io_type.has_data() {
        return 0;
    }
    usize::try_from(io.num_blocks.saturating_mul(u64::from(block_size))).unwrap_or(usize::MAX)
}

/// The NVMe status for a CQE result: the byte count must be the whole I/O, its blocks
/// and not its buffers (as SPDK's uring module requires), and errno values map to the
/// closest NVMe status.
pub(super) fn status_of(io: &BdevIo, block_size: u32, result: i32) -> IoStatus {
    if result < 0 {
        return match (-result, io.io_type) {
            (libc::EIO | libc::EILSEQ, IoType::Read) => IoStatus::UNRECOVERED_READ_ERROR,
            (libc::EIO | libc::ENOSPC | libc::EDQUOT, IoType::Write | IoType::WriteZeroes | IoType::Unmap) => {
                IoStatus::WRITE_FAULT
            }
            (libc::EOPNOTSUPP, _) => IoStatus::INVALID_OPCODE,
            _ => IoStatus::INTERNAL_ERROR,
        };
    }
    if io.io_type.has_data() && result as usize != payload_bytes(io, block_size) {
        // A short transfer: the file ended early or the device gave up part way.
        return IoStatus::DATA_TRANSFER_ERROR;
    }
    IoStatus::SUCCESS
}

/// A channel whose ring the kernel refused: every I/O fails (why was logged when the
/// channel was made).
pub(super) struct FailedChannel;

impl BdevChannelOps for FailedChannel {
    fn submit(&mut self, _ctx: &mut ThreadCtx, io: Box<BdevIo>) -> Result<(), SubmitError> {
        io.complete(IoStatus::INTERNAL_ERROR);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::io::completion_queue;

    /// The status of a one-block I/O of 4 KiB blocks whose buffer holds `buffer_bytes`.
    fn check(io_type: IoType, buffer_bytes: usize, result: i32, expected: IoStatus) {
        let mut io = BdevIo::new(io_type, 0, 1);
        if buffer_bytes > 0 {
            io.buffers.push(DataBuf::heap(buffer_bytes));
        }
        assert_eq!(status_of(&io, 4096, result), expected, "{io_type:?} {result}");
    }

    #[test]
    fn results_map_to_nvme_statuses() {
        check(IoType::Read, 4096, 4096, IoStatus::SUCCESS);
        check(IoType::Read, 4096, 512, IoStatus::DATA_TRANSFER_ERROR);
        check(IoType::Read, 4096, -libc::EIO, IoStatus::UNRECOVERED_READ_ERROR);
        check(IoType::Write, 4096, -libc::EIO, IoStatus::WRITE_FAULT);
        check(IoType::Write, 4096, -libc::ENOSPC, IoStatus::WRITE_FAULT);
        check(IoType::Unmap, 0, -libc::EOPNOTSUPP, IoStatus::INVALID_OPCODE);
        check(IoType::Flush, 0, 0, IoStatus::SUCCESS);
        check(IoType::Read, 4096, -libc::EINVAL, IoStatus::INTERNAL_ERROR);
    }

    #[test]
    fn the_count_is_checked_against_the_blocks_not_the_buffer() {
        // A pool buffer is 8 KiB or 132 KiB whatever the I/O's length.
        for buffer_bytes in [8 * 1024, 132 * 1024] {
            check(IoType::Write, buffer_bytes, 4096, IoStatus::SUCCESS);
            check(IoType::Read, buffer_bytes, 4096, IoStatus::SUCCESS);
            check(IoType::Read, buffer_bytes, buffer_bytes as i32, IoStatus::DATA_TRANSFER_ERROR);
        }
    }

    /// A channel's state on a scratch file under /var/tmp opened without O_DIRECT, which
    /// `bdev_uring_create` only falls back to where the filesystem or the block size
    /// refuse it; removed when dropped.
    struct Buffered {
        path: std::path::PathBuf,
        file: Arc<File>,
        state: State,
    }

    impl Buffered {
        fn new(block_size: u32) -> Buffered {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let path = std::path::PathBuf::from(format!(
                "/var/tmp/peerless-uring-buffered-{}-{block_size}-{nanos}",
                std::process::id()
            ));
            let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
            file.set_len(1 << 20).unwrap();
            let file = Arc::new(file);
            let backing = Arc::new(Backing {
                file: file.clone(),
                name: "buffered".into(),
                block_size,
                direct_align: None,
                is_block_device: false,
            });
            let state = State {
                backing,
                ring: Ring::new(file.clone(), block_size, RING_ENTRIES, false).unwrap(),
                resets: VecDeque::new(),
                epoch: 0,
                before_reset: 0,
                staging: Vec::new(),
                staging_allocated: 0,
            };
            Buffered { path, file, state }
        }

        /// Submits one I/O and polls until it completes.
        fn run(&mut self, mut io: Box<BdevIo>) -> Box<BdevIo> {
            let queue = completion_queue(1);
            io.push_completion(&queue, 0);
            self.state.submit(io).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                self.state.poll();
                if let Some(io) = queue.borrow_mut().pop_front() {
                    return io;
                }
                assert!(Instant::now() < deadline, "the I/O did not complete");
            }
        }
    }

    impl Drop for Buffered {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn a_buffered_file_moves_only_the_io_length_of_larger_buffers() {
        const GUARD: u8 = 0x11;
        const FILLER: u8 = 0xee;
        for block_size in [512u32, 4096] {
            let mut scratch = Buffered::new(block_size);
            let block = block_size as usize;
            // One block and several (4 KiB of 512-byte blocks, 8 KiB of 4 KiB blocks), each
            // in buffers of a small and a large pool buffer's size.
            let several = (4096 / block).max(2);
            let cases = [1, several].into_iter().flat_map(|blocks| [(blocks, 8 * 1024), (blocks, 132 * 1024)]);
            for (num_blocks, buffer_bytes) in cases {
                let offset_blocks = 16;
                let at = offset_blocks * block as u64;
                let len = num_blocks * block;
                let case = format!("{block_size}-byte blocks, {num_blocks} blocks in {buffer_bytes} bytes");
                scratch.file.write_all_at(&vec![GUARD; len + block], at).unwrap();
                let payload = bytes(len, num_blocks as u8);

                let mut sent = vec![FILLER; buffer_bytes];
                sent[..len].copy_from_slice(&payload);
                let mut write = BdevIo::new(IoType::Write, offset_blocks, num_blocks as u64);
                write.buffers.push(DataBuf::Heap(sent.into_boxed_slice()));
                assert_eq!(scratch.run(write).status, IoStatus::SUCCESS, "write: {case}");
                let mut disk = vec![0u8; len + block];
                scratch.file.read_exact_at(&mut disk, at).unwrap();
                assert!(disk[..len] == payload[..], "the write's blocks: {case}");
                assert!(disk[len..].iter().all(|byte| *byte == GUARD), "the block after the write: {case}");

                let mut read = BdevIo::new(IoType::Read, offset_blocks, num_blocks as u64);
                read.buffers.push(DataBuf::Heap(vec![FILLER; buffer_bytes].into_boxed_slice()));
                let read = scratch.run(read);
                assert_eq!(read.status, IoStatus::SUCCESS, "read: {case}");
                let back = read.sgl().unwrap().cpu_view().unwrap().to_vec();
                assert!(back[..len] == payload[..], "the read's blocks: {case}");
                assert!(back[len..].iter().all(|byte| *byte == FILLER), "nothing read past the I/O: {case}");
            }
        }
    }
}
