//! One fio file of `peerless_nvmf`: a namespace, its I/O queue, and the io_us on it.
//! An io_u larger than one command may carry is split into pieces; pieces wait in a
//! software queue while the NVMe queue is full (as SPDK's NVMe driver queues requests),
//! so fio never hears BUSY: its requeue after BUSY does not sit well with verify.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use peerless_target::nvme::cmd::SqeBuilder;
use peerless_target::nvme::io;
use peerless_tools::initiator::{Completion, Controller, Error, IoQueue, Trtype, Xfer};

use crate::engine::{blocks, Event, Op, Token};
use crate::iou::IoBuf;

/// One Dataset Management range (NVMe Base 2.0, Figure 310): context attributes, NLB, SLBA.
const DSM_RANGE_BYTES: usize = 16;
/// DSM CDW11 bit 2: Attribute - Deallocate.
const DSM_DEALLOCATE: u32 = 1 << 2;
/// READ/WRITE NLB is a 0's based 16-bit field.
pub const MAX_BLOCKS_PER_COMMAND: usize = 0x1_0000;

/// One command's worth of an io_u.
struct Piece {
    token: Token,
    op: Op,
    offset: u64,
    len: usize,
    /// Where this piece starts in the io_u's buffer.
    at: usize,
}

/// An io_u in flight.
struct Parent {
    /// The io_u's data: the source of a write, the destination of a read.
    buf: Option<IoBuf>,
    pieces_left: usize,
    /// An errno a piece met (0: none).
    error: i32,
}

pub struct File {
    pub trtype: Trtype,
    pub addr: SocketAddr,
    pub subnqn: String,
    /// Connected from open to close only (see `NvmfEngine::add_file`).
    pub controller: Option<Controller>,
    pub nsid: u32,
    pub block_size: u32,
    pub size_bytes: u64,
    pub queue: Option<IoQueue>,
    /// Most bytes one command carries (MDTS, and 64Ki blocks), a whole number of blocks.
    pub chunk_bytes: usize,
    waiting: VecDeque<Piece>,
    /// Submitted pieces by CID.
    inflight: HashMap<u16, Piece>,
    parents: HashMap<Token, Parent>,
}

impl File {
    pub fn new(trtype: Trtype, addr: SocketAddr, subnqn: String, nsid: u32, block_size: u32, size_bytes: u64) -> File {
        File {
            trtype,
            addr,
            subnqn,
            controller: None,
            nsid,
            block_size,
            size_bytes,
            queue: None,
            chunk_bytes: 0,
            waiting: VecDeque::new(),
            inflight: HashMap::new(),
            parents: HashMap::new(),
        }
    }

    pub fn busy(&self) -> bool {
        !self.parents.is_empty()
    }

    /// Takes an io_u: checks its range, splits it, and sends what the queue has room for.
    pub fn queue(&mut self, op: Op, offset: u64, len: usize, buf: Option<IoBuf>, token: Token) -> Result<(), i32> {
        if self.queue.is_none() {
            return Err(libc::EIO);
        }
        if op != Op::Flush {
            blocks(offset, len, self.block_size, self.size_bytes)?;
        }
        assert!(self.chunk_bytes > 0, "a queue without a transfer size");
        let pieces = match op {
            Op::Read | Op::Write => len.div_ceil(self.chunk_bytes),
            Op::Trim | Op::Flush => 1,
        };
        for index in 0..pieces {
            let at = index * self.chunk_bytes;
            let piece_len = if pieces == 1 { len } else { self.chunk_bytes.min(len - at) };
            self.waiting.push_back(Piece { token, op, offset: offset + at as u64, len: piece_len, at });
        }
        let previous = self.parents.insert(token, Parent { buf, pieces_left: pieces, error: 0 });
        assert!(previous.is_none(), "io_u {token:#x} queued twice");
        Ok(())
    }

    /// Submits waiting pieces while the queue has free slots; a piece that cannot be
    /// submitted fails its io_u (whose event may land in `ready`).
    pub fn pump(&mut self, spare: &mut Vec<Vec<u8>>, ready: &mut VecDeque<Event>) {
        while self.queue.as_ref().is_some_and(|queue| queue.free_slots() > 0) {
            let Some(piece) = self.waiting.pop_front() else { return };
            let Some(parent) = self.parents.get(&piece.token) else { continue };
            let mut data = spare.pop().unwrap_or_default();
            data.clear();
            match piece.op {
                Op::Write => {
                    let source = parent.buf.as_ref().map_or(&[][..], IoBuf::bytes);
                    data.extend_from_slice(&source[piece.at..piece.at + piece.len]);
                }
                Op::Read => data.resize(piece.len, 0),
                Op::Trim => data.resize(DSM_RANGE_BYTES, 0),
                Op::Flush => {}
            }
            let submitted = match (self.command(&piece, &mut data), self.queue.as_mut()) {
                (Ok((sqe, xfer)), Some(queue)) => queue.submit(sqe, xfer, data).map_err(|err| match err {
                    // Larger than the controller takes: fio's bs is wrong for this target.
                    Error::Invalid(_) => libc::EINVAL,
                    _ => libc::EIO,
                }),
                (Err(errno), _) => Err(errno),
                (_, None) => Err(libc::EIO),
            };
            match submitted {
                Ok(cid) => {
                    self.inflight.insert(cid, piece);
                }
                Err(errno) => ready.extend(self.piece_done(piece, errno, &[])),
            }
        }
    }

    /// The command for one piece; fills a trim's range into `data`.
    fn command(&self, piece: &Piece, data: &mut [u8]) -> Result<(SqeBuilder, Xfer), i32> {
        let nsid = self.nsid;
        if piece.op == Op::Flush {
            return Ok((SqeBuilder::new(io::FLUSH, 0).nsid(nsid), Xfer::None));
        }
        let (slba, nlb) = blocks(piece.offset, piece.len, self.block_size, self.size_bytes)?;
        let nlb = u32::try_from(nlb).map_err(|_| libc::EINVAL)?;
        Ok(match piece.op {
            Op::Read => (SqeBuilder::new(io::READ, 0).rw(nsid, slba, nlb), Xfer::FromController),
            Op::Write => (SqeBuilder::new(io::WRITE, 0).rw(nsid, slba, nlb), Xfer::ToController),
            _ => {
                // One range: context attributes (0), length in blocks, starting LBA.
                data[4..8].copy_from_slice(&nlb.to_le_bytes());
                data[8..16].copy_from_slice(&slba.to_le_bytes());
                // CDW10 NR is 0's based: one range.
                let sqe = SqeBuilder::new(io::DATASET_MANAGEMENT, 0).nsid(nsid).cdw(10, 0).cdw(11, DSM_DEALLOCATE);
                (sqe, Xfer::ToController)
            }
        })
    }

    /// Accounts a completion; returns the io_u's event once its last piece is in.
    pub fn complete(&mut self, completion: &Completion) -> Option<Event> {
        let piece = self.inflight.remove(&completion.cid)?;
        let error = if completion.is_ok() { 0 } else { libc::EIO };
        self.piece_done(piece, error, &completion.buf)
    }

    fn piece_done(&mut self, piece: Piece, error: i32, data: &[u8]) -> Option<Event> {
        let parent = self.parents.get_mut(&piece.token)?;
        match (&mut parent.buf, error) {
            (Some(dest), 0) if piece.op == Op::Read => dest.fill_at(piece.at, data),
            (_, 0) => {}
            _ => parent.error = error,
        }
        parent.pieces_left -= 1;
        if parent.pieces_left > 0 {
            return None;
        }
        let parent = self.parents.remove(&piece.token)?;
        Some(Event { token: piece.token, error: parent.error })
    }

    /// Fails every io_u on this file with `errno` and drops the queue they were on.
    pub fn fail_all(&mut self, errno: i32) -> impl Iterator<Item = Event> + '_ {
        self.queue = None;
        self.waiting.clear();
        self.inflight.clear();
        self.parents.drain().map(move |(token, _)| Event { token, error: errno })
    }
}
