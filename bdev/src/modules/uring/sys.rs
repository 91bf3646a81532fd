//! The io_uring wrapper: the one file of peerless-bdev allowed `unsafe`
//! (checked by core's tidy test).
//!
//! The kernel reads and writes an I/O's buffers after `io_uring_enter` returns, so the
//! contract every push must keep is "the memory named by this SQE stays valid and
//! untouched until its CQE is reaped". `Ring` keeps it by construction: it takes the
//! `BdevIo` (which owns its buffers) into a slot when the SQE is pushed and gives it back
//! only from `reap`, and the iovec array an SQE points at lives in that same slot. Dropping
//! a ring with I/O in flight waits for the kernel first.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::io::BdevIo;

/// Iovecs each slot keeps room for up front; an I/O with more segments grows its slot's
/// array once, and the slot keeps that capacity (no allocation per I/O in steady state).
const IOVECS_PER_SLOT: usize = 16;

/// What a slot asks the kernel to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// readv into the I/O's buffers at its offset.
    Read,
    /// writev from the I/O's buffers at its offset.
    Write,
    /// fdatasync.
    Flush,
    /// fallocate over the I/O's block range with these mode flags.
    Fallocate { mode: i32 },
}

/// Why `start` did not take an I/O.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// Every slot is in flight: the caller reports "no resources" and the layer retries.
    Full,
    /// The buffers hold memory the CPU cannot name by address (the layer bounces
    /// non-host memory for this bdev, so this is a bug upstream, not an expected state).
    NotHost,
    /// The buffers hold fewer bytes than the I/O's blocks (the layer refuses such I/O,
    /// so this too is a bug upstream).
    Short,
}

struct Slot<T> {
    io: Option<(Box<BdevIo>, T)>,
    iovecs: Vec<libc::iovec>,
}

/// One thread's ring on one file. `T` is what the caller wants back with each I/O.
pub(super) struct Ring<T> {
    uring: IoUring,
    file: Arc<File>,
    block_size: u64,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// SQEs pushed since the last `flush`.
    unsubmitted: usize,
    in_flight: usize,
    /// Signalled by the kernel on every CQE when the reactor runs in interrupt mode.
    eventfd: Option<EventFd>,
}

impl<T> Ring<T> {
    /// A ring of `entries` slots (a power of two) on `file`, with an eventfd the kernel
    /// signals on each completion when `notify` is set.
    pub(super) fn new(file: Arc<File>, block_size: u32, entries: u32, notify: bool) -> io::Result<Ring<T>> {
        assert!(entries.is_power_of_two() && entries > 0, "ring size {entries} must be a power of two");
        let uring = IoUring::new(entries)?;
        // The CQ holds at least as many entries as there are slots, so it cannot overflow.
        debug_assert!(uring.params().cq_entries() >= entries);
        let eventfd = if notify {
            let eventfd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
            uring.submitter().register_eventfd(eventfd.as_fd().as_raw_fd())?;
            Some(eventfd)
        } else {
            None
        };
        let slots = (0..entries).map(|_| Slot { io: None, iovecs: Vec::with_capacity(IOVECS_PER_SLOT) }).collect();
        Ok(Ring {
            uring,
            file,
            block_size: u64::from(block_size),
            slots,
            free: (0..entries).rev().collect(),
            unsubmitted: 0,
            in_flight: 0,
            eventfd,
        })
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(super) fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    pub(super) fn eventfd(&self) -> Option<BorrowedFd<'_>> {
        self.eventfd.as_ref().map(AsFd::as_fd)
    }

    /// Queues `op` for `io`; the SQE reaches the kernel at the next `flush`.
    pub(super) fn start(&mut self, op: Op, mut io: Box<BdevIo>, extra: T) -> Result<(), (Refused, Box<BdevIo>, T)> {
        let Some(slot_id) = self.free.pop() else { return Err((Refused::Full, io, extra)) };
        let slot = &mut self.slots[slot_id as usize];
        debug_assert!(slot.io.is_none(), "free slot {slot_id} still holds an I/O");
        slot.iovecs.clear();
        let fd = types::Fd(self.file.as_raw_fd());
        let offset = io.offset_blocks * self.block_size;
        // The iovecs cover the I/O's blocks and not its whole buffers: a buffer may be
        // larger than the I/O (a pool buffer has a fixed size whatever the length), and
        // the bytes past the I/O's end must neither reach the file nor be read into.
        let payload = usize::try_from(io.num_blocks.saturating_mul(self.block_size)).unwrap_or(usize::MAX);
        let described = match op {
            Op::Read => io.sgl_mut().map_err(|_| Refused::NotHost).and_then(|mut sgl| {
                if sgl.len() < payload {
                    return Err(Refused::Short);
                }
                sgl.truncate(payload);
                let mut view = sgl.cpu_view_mut().map_err(|_| Refused::NotHost)?;
                for bytes in view.slices_mut() {
                    slot.iovecs.push(libc::iovec { iov_base: bytes.as_mut_ptr().cast(), iov_len: bytes.len() });
                }
                Ok(())
            }),
            Op::Write => io.sgl().map_err(|_| Refused::NotHost).and_then(|mut sgl| {
                if sgl.len() < payload {
                    return Err(Refused::Short);
                }
                sgl.truncate(payload);
                for bytes in sgl.cpu_view().map_err(|_| Refused::NotHost)?.slices() {
                    // writev only reads through this pointer; iovec's field is `*mut` by C's API.
                    slot.iovecs.push(libc::iovec { iov_base: bytes.as_ptr().cast_mut().cast(), iov_len: bytes.len() });
                }
                Ok(())
            }),
            Op::Flush | Op::Fallocate { .. } => Ok(()),
        };
        if let Err(refused) = described {
            self.free.push(slot_id);
            return Err((refused, io, extra));
        }
        debug_assert!(
            !matches!(op, Op::Read | Op::Write)
                || slot.iovecs.iter().map(|iovec| iovec.iov_len).sum::<usize>() == payload,
            "the iovecs of {io:?} do not cover exactly its blocks"
        );
        let iovec_count = slot.iovecs.len() as u32;
        let entry = match op {
            Op::Read => opcode::Readv::new(fd, slot.iovecs.as_ptr(), iovec_count).offset(offset).build(),
            Op::Write => opcode::Writev::new(fd, slot.iovecs.as_ptr(), iovec_count).offset(offset).build(),
            Op::Flush => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
            Op::Fallocate { mode } => {
                opcode::Fallocate::new(fd, io.num_blocks * self.block_size).offset(offset).mode(mode).build()
            }
        }
        .user_data(u64::from(slot_id));
        // SAFETY: the SQE names (a) the iovec array in `slot`, which is not touched again
        // until this slot is reaped and freed, and (b) through it the buffers owned by
        // `io`, which moves into the same slot below (moving the Box moves no buffer
        // bytes) and leaves it only in `reap`, after the kernel's CQE; `Drop` waits for
        // every in-flight CQE before anything is freed. The file stays open: the ring
        // holds an `Arc` of it and is dropped (drained) before it.
        let pushed = unsafe { self.uring.submission().push(&entry) };
        if pushed.is_err() {
            // Cannot happen while the SQ is as large as the slot table and flushed every
            // poll; treat it as a full ring all the same.
            self.free.push(slot_id);
            return Err((Refused::Full, io, extra));
        }
        slot.io = Some((io, extra));
        self.unsubmitted += 1;
        self.in_flight += 1;
        Ok(())
    }

    /// Hands every queued SQE to the kernel in one `io_uring_enter`; returns how many.
    pub(super) fn flush(&mut self) -> io::Result<usize> {
        if self.unsubmitted == 0 {
            return Ok(0);
        }
        match self.uring.submit() {
            Ok(taken) => {
                self.unsubmitted = self.unsubmitted.saturating_sub(taken);
                Ok(taken)
            }
            // The kernel is short of room for completions or memory: try again next poll.
            Err(err) if matches!(err.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)) => Ok(0),
            Err(err) => Err(err),
        }
    }

    /// Gives back up to `budget` finished I/O with their extra and the kernel's result
    /// (bytes moved, or a negated errno).
    pub(super) fn reap(&mut self, budget: usize, mut done: impl FnMut(Box<BdevIo>, T, i32)) -> usize {
        let mut reaped = 0;
        let mut completion = self.uring.completion();
        while reaped < budget {
            let Some(cqe) = completion.next() else { break };
            let slot_id = cqe.user_data() as usize;
            let Some(slot) = self.slots.get_mut(slot_id) else {
                debug_assert!(false, "CQE for unknown slot {slot_id}");
                continue;
            };
            let Some((io, extra)) = slot.io.take() else {
                debug_assert!(false, "CQE for empty slot {slot_id}");
                continue;
            };
            self.free.push(slot_id as u32);
            self.in_flight -= 1;
            reaped += 1;
            done(io, extra, cqe.result());
        }
        reaped
    }

    /// Whether the kernel has posted completions not yet reaped.
    pub(super) fn has_completions(&mut self) -> bool {
        !self.uring.completion().is_empty()
    }

    /// Consumes the eventfd's count so a level-triggered epoll stops reporting it. Call
    /// before a final look at the CQ: a completion after this read signals it again.
    pub(super) fn clear_eventfd(&self) {
        if let Some(eventfd) = &self.eventfd {
            // EAGAIN: nothing was signalled since the last read.
            let _ = eventfd.read();
        }
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // The kernel may still write into buffers of in-flight reads: they must outlive
        // it. This blocks the reactor, but only when a channel is torn down with I/O
        // outstanding, and for no longer than the device takes to finish it.
        while self.in_flight > 0 {
            match self.uring.submit_and_wait(1) {
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
                Err(err) => {
                    peerless_core::log_error!(
                        "uring: cannot wait for {} in-flight I/O at teardown ({err}); leaking their buffers",
                        self.in_flight
                    );
                    for slot in &mut self.slots {
                        if let Some(held) = slot.io.take() {
                            std::mem::forget(held);
                        }
                    }
                    return;
                }
            }
            self.reap(usize::MAX, |io, _, _| drop(io));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};

    use peerless_core::mem::{CmbConfig, EmulatedCmb};

    use super::*;
    use crate::io::{DataBuf, IoType};

    const BLOCK: usize = 512;
    const SLOTS: u32 = 4;

    /// A buffered scratch file under /var/tmp, removed when dropped.
    struct Scratch(std::path::PathBuf, Arc<File>);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let path = std::path::PathBuf::from(format!("/var/tmp/peerless-ring-{}-{tag}-{nanos}", std::process::id()));
            let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
            file.set_len(64 * BLOCK as u64).unwrap();
            Scratch(path, Arc::new(file))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn write_io(block: u64, byte: u8) -> Box<BdevIo> {
        let mut io = BdevIo::new(IoType::Write, block, 1);
        io.buffers.push(DataBuf::Heap(vec![byte; BLOCK].into_boxed_slice()));
        io
    }

    /// Flushes and reaps until `count` I/O came back, or a deadline passes.
    fn reap_all(ring: &mut Ring<u32>, count: usize) -> Vec<(Box<BdevIo>, u32, i32)> {
        let mut done = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.len() < count && Instant::now() < deadline {
            ring.flush().unwrap();
            ring.reap(usize::MAX, |io, extra, result| done.push((io, extra, result)));
        }
        done
    }

    #[test]
    fn slots_bound_what_is_in_flight_and_each_io_comes_back_once() {
        let scratch = Scratch::new("slots");
        let mut ring: Ring<u32> = Ring::new(scratch.1.clone(), BLOCK as u32, SLOTS, false).unwrap();
        for index in 0..SLOTS {
            ring.start(Op::Write, write_io(u64::from(index), index as u8 + 1), index).unwrap();
        }
        assert!(!ring.has_room());
        let (refused, _, extra) = ring.start(Op::Write, write_io(9, 9), 99).unwrap_err();
        assert_eq!((refused, extra), (Refused::Full, 99));
        let mut done = reap_all(&mut ring, SLOTS as usize);
        done.sort_by_key(|(_, extra, _)| *extra);
        assert_eq!(
            done.iter().map(|(_, extra, result)| (*extra, *result)).collect::<Vec<_>>(),
            [(0, BLOCK as i32), (1, BLOCK as i32), (2, BLOCK as i32), (3, BLOCK as i32)]
        );
        assert_eq!(ring.in_flight(), 0);
        let mut block = [0u8; BLOCK];
        scratch.1.read_exact_at(&mut block, 2 * BLOCK as u64).unwrap();
        assert!(block.iter().all(|byte| *byte == 3));
    }

    #[test]
    fn only_the_blocks_of_an_io_move_whatever_its_buffer_size() {
        let scratch = Scratch::new("oversized");
        let mut ring: Ring<u32> = Ring::new(scratch.1.clone(), BLOCK as u32, SLOTS, false).unwrap();
        // An 8 KiB buffer (a small pool buffer) carrying a one-block write.
        let mut write = BdevIo::new(IoType::Write, 5, 1);
        write.buffers.push(DataBuf::Heap(vec![0x77; 8 * 1024].into_boxed_slice()));
        ring.start(Op::Write, write, 0).unwrap();
        let done = reap_all(&mut ring, 1);
        assert_eq!(done[0].2, BLOCK as i32, "writev moved one block, not the buffer");
        let mut disk = vec![0u8; 3 * BLOCK];
        scratch.1.read_exact_at(&mut disk, 4 * BLOCK as u64).unwrap();
        assert!(disk[BLOCK..2 * BLOCK].iter().all(|byte| *byte == 0x77));
        assert!(disk[2 * BLOCK..].iter().all(|byte| *byte == 0), "the block after the write is untouched");

        let mut read = BdevIo::new(IoType::Read, 5, 1);
        read.buffers.push(DataBuf::Heap(vec![0xee; 8 * 1024].into_boxed_slice()));
        ring.start(Op::Read, read, 1).unwrap();
        let (read, _, result) = reap_all(&mut ring, 1).pop().unwrap();
        assert_eq!(result, BLOCK as i32, "readv moved one block, not the buffer");
        let bytes = read.sgl().unwrap().cpu_view().unwrap().to_vec();
        assert!(bytes[..BLOCK].iter().all(|byte| *byte == 0x77));
        assert!(bytes[BLOCK..].iter().all(|byte| *byte == 0xee), "nothing was read past the I/O's end");
    }

    #[test]
    fn a_buffer_shorter_than_the_blocks_is_refused() {
        let scratch = Scratch::new("short");
        let mut ring: Ring<u32> = Ring::new(scratch.1.clone(), BLOCK as u32, SLOTS, false).unwrap();
        let mut io = BdevIo::new(IoType::Write, 0, 2);
        io.buffers.push(DataBuf::heap(BLOCK));
        let (refused, _, _) = ring.start(Op::Write, io, 0).unwrap_err();
        assert_eq!(refused, Refused::Short);
        assert!(ring.has_room() && ring.in_flight() == 0, "a refused I/O holds no slot");
    }

    #[test]
    fn dropping_a_ring_waits_for_what_the_kernel_still_owns() {
        let scratch = Scratch::new("drop");
        let mut ring: Ring<u32> = Ring::new(scratch.1.clone(), BLOCK as u32, SLOTS, false).unwrap();
        for index in 0..SLOTS {
            ring.start(Op::Write, write_io(u64::from(index) + 8, 0x5a), index).unwrap();
        }
        ring.flush().unwrap();
        assert_eq!(ring.in_flight(), SLOTS as usize);
        drop(ring);
        let mut written = vec![0u8; SLOTS as usize * BLOCK];
        scratch.1.read_exact_at(&mut written, 8 * BLOCK as u64).unwrap();
        assert!(written.iter().all(|byte| *byte == 0x5a), "every write finished before the drop returned");
    }

    #[test]
    fn device_memory_is_refused_before_the_kernel_sees_it() {
        let scratch = Scratch::new("p2p");
        let mut ring: Ring<u32> = Ring::new(scratch.1.clone(), BLOCK as u32, SLOTS, false).unwrap();
        let cmb = EmulatedCmb::new(CmbConfig::new("ring-test", 4 << 20)).unwrap();
        let mut io = BdevIo::new(IoType::Read, 0, 1);
        io.buffers.push(DataBuf::P2p(cmb.alloc(BLOCK).unwrap()));
        let (refused, _, _) = ring.start(Op::Read, io, 0).unwrap_err();
        assert_eq!(refused, Refused::NotHost);
        assert!(ring.has_room() && ring.in_flight() == 0, "a refused I/O holds no slot");
    }
}
