//! An io_u's data buffer as the engines see it: a pointer and a length owned by fio.

/// fio's `io_u->xfer_buf` for `io_u->xfer_buflen` bytes.
///
/// Invariant (set by `IoBuf::new`'s caller): the memory stays valid, and nobody else
/// touches it, from `queue` until the engine hands the io_u back through `getevents`.
/// That is fio's contract with an engine for an io_u it has queued.
#[derive(Debug)]
pub struct IoBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is fio's, lent to the engine for one I/O; with thread=1 the engine
// may be set up on fio's main thread and used on the job's thread, never both at once.
unsafe impl Send for IoBuf {}

impl IoBuf {
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes, and not otherwise used,
    /// until the I/O it belongs to completes (fio's io_u contract).
    pub unsafe fn new(ptr: *mut u8, len: usize) -> IoBuf {
        assert!(!ptr.is_null() || len == 0, "a null buffer of {len} bytes");
        IoBuf { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes to write.
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: valid for `len` bytes and not mutated elsewhere while lent (see `new`).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Fills the buffer with what a read returned; `data` must be exactly as long.
    pub fn fill(&mut self, data: &[u8]) {
        assert_eq!(data.len(), self.len, "read data and io_u buffer differ in length");
        self.fill_at(0, data);
    }

    /// Fills `data.len()` bytes from `at` (one piece of a split read).
    pub fn fill_at(&mut self, at: usize, data: &[u8]) {
        let end = at.checked_add(data.len()).expect("a piece's end overflows");
        assert!(end <= self.len, "piece {at}..{end} outside an io_u buffer of {} bytes", self.len);
        if data.is_empty() {
            return;
        }
        // SAFETY: valid for writes of `len` bytes, exclusively ours while lent (see `new`),
        // and `at..end` lies inside them (asserted above).
        let dest = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), data.len()) };
        dest.copy_from_slice(data);
    }
}
