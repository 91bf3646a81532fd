//! Bdev I/O objects. An I/O owns its data buffers while it travels (submitter -> layer
//! -> module -> back), the way io_uring's owned-buffer APIs do, and lends out a tagged
//! `Sgl` whenever someone needs to move its bytes. Completion is a push onto the
//! submitter's `CompletionQueue`, never a call back into it, so a module that completes
//! inline cannot re-enter its caller.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;

use peerless_core::mem::{self, DmaBuf, IoBuf, P2pBuf, SegRef, Sgl};

use crate::status::IoStatus;

/// The operations of SPDK's `supported_io_types` this layer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoType {
    Read,
    Write,
    Flush,
    Unmap,
    WriteZeroes,
    Reset,
    Compare,
}

impl IoType {
    pub const ALL: [IoType; 7] = [
        IoType::Read,
        IoType::Write,
        IoType::Flush,
        IoType::Unmap,
        IoType::WriteZeroes,
        IoType::Reset,
        IoType::Compare,
    ];

    /// SPDK's key in `supported_io_types`.
    pub fn as_str(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::Flush => "flush",
            IoType::Unmap => "unmap",
            IoType::WriteZeroes => "write_zeroes",
            IoType::Reset => "reset",
            IoType::Compare => "compare",
        }
    }

    /// Whether the I/O moves payload bytes (and so carries buffers).
    pub fn has_data(self) -> bool {
        matches!(self, IoType::Read | IoType::Write | IoType::Compare)
    }

    /// Whether data flows from the bdev into the I/O's buffers.
    pub fn fills_buffers(self) -> bool {
        self == IoType::Read
    }
}

/// A buffer an I/O owns. Every variant knows its memory tag, so the gate applies to all.
pub enum DataBuf {
    /// Plain heap memory: host memory the CPU may touch (tests, tools).
    Heap(Box<[u8]>),
    /// DMA-capable host memory.
    Dma(DmaBuf),
    /// A buffer from an iobuf pool that lives as long as the process.
    Pool(IoBuf<'static>),
    /// Device memory of a P2P provider (a CMB).
    P2p(P2pBuf),
}

impl DataBuf {
    pub fn heap(len: usize) -> DataBuf {
        DataBuf::Heap(vec![0u8; len].into_boxed_slice())
    }

    pub fn len(&self) -> usize {
        match self {
            DataBuf::Heap(bytes) => bytes.len(),
            DataBuf::Dma(buf) => buf.len(),
            DataBuf::Pool(buf) => buf.len(),
            DataBuf::P2p(buf) => buf.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole buffer as a tagged list (read-only view).
    pub fn sgl(&self) -> mem::Result<Sgl<'_>> {
        Sgl::from_ref(self.seg_ref()?)
    }

    /// The whole buffer's bytes when it is host memory the CPU may read as it is (heap
    /// and pool buffers); None for DMA and device memory, which go through [`sgl`].
    ///
    /// [`sgl`]: DataBuf::sgl
    pub fn host_bytes(&self) -> Option<&[u8]> {
        match self {
            DataBuf::Heap(bytes) => Some(bytes),
            DataBuf::Pool(buf) => Some(buf.bytes()),
            DataBuf::Dma(_) | DataBuf::P2p(_) => None,
        }
    }

    /// The whole buffer's bytes, writable, when it is host memory as [`host_bytes`] says.
    ///
    /// [`host_bytes`]: DataBuf::host_bytes
    pub fn host_bytes_mut(&mut self) -> Option<&mut [u8]> {
        match self {
            DataBuf::Heap(bytes) => Some(bytes),
            DataBuf::Pool(buf) => Some(buf.bytes_mut()),
            DataBuf::Dma(_) | DataBuf::P2p(_) => None,
        }
    }

    /// The whole buffer as a writable tagged list.
    pub fn sgl_mut(&mut self) -> mem::Result<Sgl<'_>> {
        Sgl::from_ref(self.seg_ref_mut()?)
    }

    fn seg_ref(&self) -> mem::Result<SegRef<'_>> {
        match self {
            DataBuf::Heap(bytes) => SegRef::host(bytes),
            DataBuf::Dma(buf) => buf.seg_ref(0, buf.len()),
            DataBuf::Pool(buf) => Ok(buf.seg_ref()),
            DataBuf::P2p(buf) => Ok(buf.seg_ref()),
        }
    }

    fn seg_ref_mut(&mut self) -> mem::Result<SegRef<'_>> {
        match self {
            DataBuf::Heap(bytes) => SegRef::host_mut(bytes),
            DataBuf::Dma(buf) => {
                let len = buf.len();
                buf.seg_ref_mut(0, len)
            }
            DataBuf::Pool(buf) => Ok(buf.seg_ref_mut()),
            DataBuf::P2p(buf) => Ok(buf.seg_ref_mut()),
        }
    }
}

impl fmt::Debug for DataBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            DataBuf::Heap(_) => "heap",
            DataBuf::Dma(_) => "dma",
            DataBuf::Pool(_) => "pool",
            DataBuf::P2p(_) => "p2p",
        };
        write!(f, "DataBuf::{kind}({} bytes)", self.len())
    }
}

/// Where a finished I/O goes: a queue its submitter drains from a poller.
pub type CompletionQueue = Rc<RefCell<VecDeque<Box<BdevIo>>>>;

pub fn completion_queue(capacity: usize) -> CompletionQueue {
    Rc::new(RefCell::new(VecDeque::with_capacity(capacity)))
}

/// One I/O against one bdev.
pub struct BdevIo {
    pub io_type: IoType,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    /// The payload, in the order the bytes appear on the media.
    pub buffers: Vec<DataBuf>,
    pub status: IoStatus,
    /// The tag of whoever receives the I/O from a completion queue: set from the
    /// completion stack when the I/O is delivered.
    pub tag: u64,
    /// Who hears the completion, innermost last: each layer or stacked module that wants
    /// to see the I/O on its way back pushes itself; `complete` pops one entry per hop.
    completions: Vec<(CompletionQueue, u64)>,
    /// When the layer accepted it, on the thread's nanosecond clock (0: not yet).
    pub(crate) submitted_ns: u64,
    /// Host buffers the layer substituted for buffers the bdev cannot DMA from.
    pub(crate) bounced: Option<Vec<DataBuf>>,
    /// Payload bytes, set by the layer from the block count: buffers may be larger (pool
    /// buffers come in fixed sizes) and `sgl()` lends exactly this much of them.
    pub(crate) data_len: usize,
    /// Times a driver took it back at a controller reset and submitted it again: the
    /// driver gives up past a bound, or a controller that cannot finish it in time would
    /// be reset for it forever.
    pub(crate) resubmissions: u8,
}

/// Completion hops an I/O object keeps room for without reallocating.
const COMPLETION_DEPTH: usize = 4;

impl BdevIo {
    pub fn new(io_type: IoType, offset_blocks: u64, num_blocks: u64) -> Box<BdevIo> {
        Box::new(BdevIo {
            io_type,
            offset_blocks,
            num_blocks,
            buffers: Vec::new(),
            status: IoStatus::SUCCESS,
            tag: 0,
            completions: Vec::with_capacity(COMPLETION_DEPTH),
            submitted_ns: 0,
            bounced: None,
            data_len: 0,
            resubmissions: 0,
        })
    }

    /// Reuses a finished I/O object for a new request, keeping its allocations.
    pub fn reset(&mut self, io_type: IoType, offset_blocks: u64, num_blocks: u64) {
        debug_assert!(self.completions.is_empty(), "reset of an I/O that is still in flight");
        self.io_type = io_type;
        self.offset_blocks = offset_blocks;
        self.num_blocks = num_blocks;
        self.buffers.clear();
        self.status = IoStatus::SUCCESS;
        self.tag = 0;
        self.submitted_ns = 0;
        self.bounced = None;
        self.resubmissions = 0;
        self.data_len = 0;
    }

    pub fn buffer_bytes(&self) -> usize {
        match self.buffers.as_slice() {
            [only] => only.len(),
            many => many.iter().map(DataBuf::len).sum(),
        }
    }

    /// The payload as a tagged list (read-only view), exactly the I/O's length once the
    /// layer has accepted it.
    pub fn sgl(&self) -> mem::Result<Sgl<'_>> {
        let mut sgl = Sgl::new();
        for buf in &self.buffers {
            sgl.push(buf.seg_ref()?)?;
        }
        if self.data_len > 0 {
            sgl.truncate(self.data_len);
        }
        Ok(sgl)
    }

    /// The payload as a writable tagged list, exactly the I/O's length.
    pub fn sgl_mut(&mut self) -> mem::Result<Sgl<'_>> {
        let data_len = self.data_len;
        let mut sgl = Sgl::new();
        for buf in &mut self.buffers {
            sgl.push(buf.seg_ref_mut()?)?;
        }
        if data_len > 0 {
            sgl.truncate(data_len);
        }
        Ok(sgl)
    }

    /// Payload bytes the layer accepted this I/O with (0 before it did).
    pub fn data_len(&self) -> usize {
        self.data_len
    }

    /// Asks to receive this I/O on `queue`, with `tag`, when it completes.
    pub fn push_completion(&mut self, queue: &CompletionQueue, tag: u64) {
        self.completions.push((queue.clone(), tag));
    }

    /// Whether anyone still waits for this I/O.
    pub fn in_flight(&self) -> bool {
        !self.completions.is_empty()
    }

    /// Sets the status and hands the I/O to the innermost waiter.
    pub fn complete(mut self: Box<Self>, status: IoStatus) {
        self.status = status;
        self.pass_up();
    }

    /// Hands the I/O, status unchanged, to the next waiter out.
    pub fn pass_up(mut self: Box<Self>) {
        match self.completions.pop() {
            Some((queue, tag)) => {
                self.tag = tag;
                queue.borrow_mut().push_back(self);
            }
            None => debug_assert!(false, "completed an I/O that nobody waits for: {self:?}"),
        }
    }
}

impl fmt::Debug for BdevIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BdevIo({:?} {}+{} blocks, {} bytes, {:?})",
            self.io_type,
            self.offset_blocks,
            self.num_blocks,
            self.buffer_bytes(),
            self.status
        )
    }
}
