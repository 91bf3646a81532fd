//! What both engines implement, in the terms `shim.c` forwards: files by fio's file
//! number, one request per io_u, and events that hand io_us back with an errno.

use std::time::Duration;

use crate::iou::IoBuf;

/// An operation, as `shim.c` maps fio's `io_u->ddir`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    /// Deallocate (NVMe Dataset Management, bdev unmap).
    Trim,
    /// fio's sync, datasync and sync_file_range.
    Flush,
}

impl Op {
    pub fn from_raw(raw: i32) -> Option<Op> {
        match raw {
            0 => Some(Op::Read),
            1 => Some(Op::Write),
            2 => Some(Op::Trim),
            3 => Some(Op::Flush),
            _ => None,
        }
    }
}

/// fio's io_u, opaque: handed back in the event that completes it.
pub type Token = usize;

pub struct Request {
    pub op: Op,
    pub offset: u64,
    pub len: usize,
    /// The io_u's data, for reads and writes.
    pub buf: Option<IoBuf>,
    pub token: Token,
}

/// What `queue` did with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Queued {
    Queued,
    /// No room: fio reaps completions and tries again.
    Busy(Request),
    /// Failed at once with this errno.
    Failed(i32),
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} at {} of {} bytes", self.op, self.offset, self.len)
    }
}

impl PartialEq for Request {
    fn eq(&self, other: &Request) -> bool {
        self.token == other.token
    }
}

impl Eq for Request {}

/// A finished io_u: `error` is 0 or an errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub token: Token,
    pub error: i32,
}

/// One engine instance per fio thread (fio's `td`).
pub trait Engine: Send {
    /// Binds fio file `fileno` to `name`; returns its size in bytes. Runs in fio's setup.
    fn add_file(&mut self, fileno: u32, name: &str) -> Result<u64, String>;
    /// Prepares I/O to the file from the job's thread: `depth` requests deep, none larger
    /// than `max_bs` bytes.
    fn open_file(&mut self, fileno: u32, depth: u32, max_bs: u64) -> Result<(), String>;
    fn close_file(&mut self, fileno: u32);
    fn queue(&mut self, fileno: u32, request: Request) -> Queued;
    /// Waits for at least `min` completions (fewer if `timeout` passes), at most `max`.
    fn getevents(&mut self, min: usize, max: usize, timeout: Option<Duration>, out: &mut Vec<Event>);
}

/// Checks an I/O's offset and length against the block size and size of its target;
/// returns (first block, block count).
pub fn blocks(offset: u64, len: usize, block_size: u32, size_bytes: u64) -> Result<(u64, u64), i32> {
    let block = u64::from(block_size);
    let len = len as u64;
    if block == 0 || !offset.is_multiple_of(block) || !len.is_multiple_of(block) || len == 0 {
        return Err(libc::EINVAL);
    }
    match offset.checked_add(len) {
        Some(end) if end <= size_bytes => Ok((offset / block, len / block)),
        _ => Err(libc::EINVAL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_aligned_io_inside_the_target() {
        assert_eq!(blocks(8192, 4096, 512, 1 << 20), Ok((16, 8)));
        assert_eq!(blocks((1 << 20) - 4096, 4096, 4096, 1 << 20), Ok((255, 1)));
    }

    #[test]
    fn blocks_refuse_misaligned_empty_and_past_the_end() {
        assert_eq!(blocks(100, 4096, 512, 1 << 20), Err(libc::EINVAL));
        assert_eq!(blocks(0, 1000, 512, 1 << 20), Err(libc::EINVAL));
        assert_eq!(blocks(0, 0, 512, 1 << 20), Err(libc::EINVAL));
        assert_eq!(blocks(1 << 20, 512, 512, 1 << 20), Err(libc::EINVAL));
        assert_eq!(blocks(u64::MAX - 511, 512, 512, u64::MAX), Err(libc::EINVAL));
    }
}
