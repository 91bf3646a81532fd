//! What a connection has queued for its socket: PDU headers and small payloads in one
//! byte buffer, and C2HData payloads left where they are, in the command's pool buffers,
//! until the socket has taken them. One gathered write (writev) per poll sends all of it,
//! so read data is never copied into a send buffer by the CPU, only once by the kernel.
//!
//! Only Host memory is gathered in place: the gate (`Sgl::cpu_view`) refuses IoMem and
//! device memory, whose data `send.rs` stages through the byte buffer instead.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, IoSlice};

use peerless_core::mem::{IoBufCache, Sgl};

use super::socket::Socket;
use crate::nvme::Status;
use crate::nvmf::qpair::Qpair;

/// Linux takes at most this many buffers per writev (UIO_MAXIOV).
const MAX_IOV: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Segment {
    /// `bytes[start..end]`.
    Bytes { start: usize, end: usize },
    /// The first `len` bytes of command slot `slot`'s data, sent in place; the slot is
    /// handed back to the engine once the socket has taken all of them.
    Data { slot: u16, len: usize },
}

impl Segment {
    fn len(&self) -> usize {
        match *self {
            Segment::Bytes { start, end } => end - start,
            Segment::Data { len, .. } => len,
        }
    }
}

#[derive(Default)]
pub(super) struct Outbox {
    bytes: Vec<u8>,
    segments: VecDeque<Segment>,
    /// Bytes of the first segment already written.
    front_written: usize,
    /// Bytes queued and not yet written.
    pending: usize,
    /// The memory of the lists each writev is gathered from, kept empty between writes
    /// so that a write allocates nothing once these have grown to the usual size.
    gather: GatherStorage,
}

#[derive(Default)]
struct GatherStorage {
    lists: Vec<Queued<'static>>,
    iov: Vec<IoSlice<'static>>,
}

/// What one queued segment's slices come from in a gather.
// The list is held inline (its segments too): boxing it would allocate on every send of
// one, and the vector of these is kept from gather to gather.
#[allow(clippy::large_enum_variant)]
enum Queued<'q> {
    /// Bytes of the outbox's own buffer.
    Own,
    /// A command's data that is one host buffer: its bytes, with no list to build.
    Bytes(&'q [u8]),
    /// Any other command data: its tagged list, read through the CPU view it allows.
    List(Sgl<'q>),
}

/// An emptied vector's allocation, re-typed for elements of the same layout (here, the
/// same type with another lifetime). The standard library collects a vector's own
/// iterator in place when layouts match, so no memory moves; the unit tests check that.
fn recycled<T, U>(mut vector: Vec<T>) -> Vec<U> {
    vector.clear();
    vector.into_iter().filter_map(|_| None).collect()
}

/// What a flush did.
pub(super) enum Flushed {
    /// The socket took this many bytes (maybe 0: it is full).
    Wrote(usize),
    /// The socket failed: everything queued was let go.
    Broken(io::Error),
}

impl Outbox {
    pub(super) fn pending(&self) -> usize {
        self.pending
    }

    /// Gives the buffers' memory back when nothing is queued, for a connection gone idle;
    /// the next response allocates again.
    pub(super) fn release_capacity(&mut self) {
        if self.is_empty() {
            self.bytes = Vec::new();
            self.segments = VecDeque::new();
            self.front_written = 0;
            self.gather = GatherStorage::default();
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pending == 0
    }

    pub(super) fn push_bytes(&mut self, bytes: &[u8]) {
        self.extend_with(bytes.len(), |buffer| buffer.extend_from_slice(bytes));
    }

    pub(super) fn push_zeros(&mut self, count: usize) {
        self.extend_with(count, |buffer| buffer.resize(buffer.len() + count, 0));
    }

    /// Appends `count` bytes that `fill` writes at the end of the byte buffer.
    pub(super) fn extend_with(&mut self, count: usize, fill: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        fill(&mut self.bytes);
        debug_assert_eq!(self.bytes.len(), start + count);
        let end = self.bytes.len();
        if end == start {
            return;
        }
        match self.segments.back_mut() {
            Some(Segment::Bytes { end: last_end, .. }) if *last_end == start => *last_end = end,
            _ => self.segments.push_back(Segment::Bytes { start, end }),
        }
        self.pending += end - start;
    }

    /// Undoes appends back to `mark` (a `bytes_len` taken before them), when a PDU
    /// could not be completed.
    pub(super) fn truncate_bytes(&mut self, mark: usize) {
        while let Some(Segment::Bytes { start, end }) = self.segments.back_mut() {
            if *end <= mark {
                break;
            }
            let cut = *end - mark.max(*start);
            self.pending -= cut;
            if *start >= mark {
                self.segments.pop_back();
            } else {
                *end = mark;
            }
        }
        self.bytes.truncate(mark);
    }

    /// `f` of the byte buffer from `start` to its end.
    pub(super) fn with_bytes_from<T>(&self, start: usize, f: impl FnOnce(&[u8]) -> T) -> T {
        f(&self.bytes[start..])
    }

    pub(super) fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    /// Queues slot `slot`'s first `len` data bytes, sent from where they are.
    pub(super) fn push_data(&mut self, slot: u16, len: usize) {
        if len > 0 {
            self.segments.push_back(Segment::Data { slot, len });
            self.pending += len;
        }
    }

    /// Writes as much as the socket takes with gathered writes; each slot whose data the
    /// socket has taken goes back to the engine with `data_sent`.
    pub(super) fn flush<S: Socket>(
        &mut self,
        stream: &mut S,
        qpair: &mut Qpair,
        buffers: &mut IoBufCache<'static>,
    ) -> Flushed {
        let mut total = 0;
        while !self.is_empty() {
            let written = match self.write_once(stream, qpair) {
                Ok(written) => written,
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => {
                    self.discard(qpair, buffers);
                    return Flushed::Broken(err);
                }
            };
            if written == 0 {
                break;
            }
            total += written;
            self.consume(written, qpair, buffers);
        }
        if self.is_empty() {
            self.bytes.clear();
        }
        Flushed::Wrote(total)
    }

    /// One writev of the queued segments (up to `MAX_IOV` buffers).
    fn write_once<S: Socket>(&mut self, stream: &mut S, qpair: &Qpair) -> io::Result<usize> {
        let mut lists: Vec<Queued<'_>> = recycled(std::mem::take(&mut self.gather.lists));
        let mut iov: Vec<IoSlice<'_>> = recycled(std::mem::take(&mut self.gather.iov));
        let gathered = gather(&self.bytes, &self.segments, self.front_written, qpair, &mut lists, &mut iov);
        let result = gathered.and_then(|()| stream.write_vectored(&iov));
        self.gather.iov = recycled(iov);
        self.gather.lists = recycled(lists);
        result
    }

    /// Drops `written` bytes from the front; hands back the slots fully sent.
    fn consume(&mut self, mut written: usize, qpair: &mut Qpair, buffers: &mut IoBufCache<'static>) {
        self.pending -= written;
        while written > 0 {
            // A socket cannot take more than it was offered; if one claims to, stop here
            // rather than trust the count.
            let Some(&front) = self.segments.front() else { return };
            let left = front.len() - self.front_written;
            if written < left {
                self.front_written += written;
                return;
            }
            written -= left;
            self.front_written = 0;
            self.segments.pop_front();
            if let Segment::Data { slot, .. } = front {
                qpair.data_sent(buffers, slot, Ok(()));
            }
        }
    }

    /// Lets everything queued go (the host is gone): the slots still sending end with a
    /// transfer error.
    pub(super) fn discard(&mut self, qpair: &mut Qpair, buffers: &mut IoBufCache<'static>) {
        for segment in std::mem::take(&mut self.segments) {
            if let Segment::Data { slot, .. } = segment {
                qpair.data_sent(buffers, slot, Err(Status::DATA_TRANSFER_ERROR));
            }
        }
        self.bytes.clear();
        self.front_written = 0;
        self.pending = 0;
    }
}

/// Fills `iov` with the queued bytes from `skip` bytes into the first segment, up to
/// `MAX_IOV` buffers; `lists` holds the data lists the slices borrow from.
fn gather<'q, 'l>(
    bytes: &'l [u8],
    segments: &VecDeque<Segment>,
    mut skip: usize,
    qpair: &'q Qpair,
    lists: &'l mut Vec<Queued<'q>>,
    iov: &mut Vec<IoSlice<'l>>,
) -> io::Result<()> {
    for segment in segments.iter().take(MAX_IOV) {
        lists.push(match *segment {
            Segment::Bytes { .. } => Queued::Own,
            Segment::Data { slot, .. } => match qpair.data_bytes(slot) {
                Some(bytes) => Queued::Bytes(bytes),
                None => Queued::List(
                    qpair.data(slot).map_err(|_| io::Error::other("queued data of a slot no longer sending"))?,
                ),
            },
        });
    }
    let lists: &'l [Queued<'q>] = lists;
    'segments: for (segment, list) in segments.iter().zip(lists) {
        let mut remaining = segment.len();
        let view;
        let slices: &mut dyn Iterator<Item = &'l [u8]> = match (*segment, list) {
            (Segment::Bytes { start, end }, _) => {
                let slice = &bytes[start + skip..end];
                skip = 0;
                if iov.len() == MAX_IOV {
                    break 'segments;
                }
                iov.push(IoSlice::new(slice));
                continue;
            }
            (Segment::Data { .. }, Queued::Bytes(data)) => &mut std::iter::once(*data),
            (Segment::Data { .. }, Queued::List(list)) => {
                view = list.cpu_view().map_err(|err| io::Error::other(err.to_string()))?;
                &mut view.slices()
            }
            (Segment::Data { .. }, Queued::Own) => {
                return Err(io::Error::other("a queued data segment without its data"));
            }
        };
        for slice in slices {
            if remaining == 0 {
                break;
            }
            let slice = &slice[..slice.len().min(remaining)];
            remaining -= slice.len();
            if skip >= slice.len() {
                skip -= slice.len();
                continue;
            }
            if iov.len() == MAX_IOV {
                break 'segments;
            }
            iov.push(IoSlice::new(&slice[skip..]));
            skip = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_vector_keeps_its_memory_across_lifetimes() {
        let bytes = [7u8; 64];
        let mut storage: Vec<IoSlice<'static>> = Vec::with_capacity(32);
        let address = storage.as_ptr() as usize;
        for round in 0..3 {
            let mut iov: Vec<IoSlice<'_>> = recycled(std::mem::take(&mut storage));
            assert_eq!((iov.as_ptr() as usize, iov.capacity()), (address, 32), "round {round} moved the memory");
            assert!(iov.is_empty());
            iov.extend(bytes.chunks(8).map(IoSlice::new));
            storage = recycled(iov);
            assert_eq!((storage.as_ptr() as usize, storage.capacity(), storage.len()), (address, 32, 0));
        }
    }
}
