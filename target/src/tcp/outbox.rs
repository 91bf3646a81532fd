//! What a connection has queued for its socket: PDU headers and small payloads in one
//! byte buffer, and C2HData payloads left where they are, in the command's pool buffers,
//! until the socket has taken them. One gathered write (writev) per poll sends all of it,
//! so read data is never copied into a send buffer by the CPU, only once by the kernel.
//!
//! With zero-copy sends on (`enable_zerocopy`), a write carrying at least the threshold of
//! command data goes with MSG_ZEROCOPY and the kernel pins what it gathered: the slots
//! whose data it carried are handed back only once the error queue says the kernel let
//! go (`reap_notifications`), and the byte buffer it gathered headers from is retired
//! whole, never written, grown or reused until then.
//!
//! Only Host memory is gathered in place: the gate (`Sgl::cpu_view`) refuses IoMem and
//! device memory, whose data `send.rs` stages through the byte buffer instead.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, IoSlice};

use peerless_bdev::DataBuf;
use peerless_core::mem::{IoBufCache, Sgl};

use super::socket::Socket;
use super::zerocopy::{self, Notifications};
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
    /// Zero-copy sends and what they hold; None when the socket copies every send.
    zerocopy: Option<ZeroCopySends>,
}

/// At most this many zero-copy sends wait for their notifications; past it, sends copy
/// rather than lend more memory (the kernel's option memory, optmem, bounds the
/// notifications it can queue too: it answers ENOBUFS, and the send copies).
const MAX_OUTSTANDING_ZEROCOPY_SENDS: usize = 1024;
/// Retired byte buffers kept, with their capacity, for reuse once the kernel lets go of
/// them: about as many as flushes wait for notifications at a busy queue depth, so a
/// fresh buffer seldom starts empty and grows again.
const SPARE_BYTE_BUFFERS: usize = 64;

impl Drop for ZeroCopySends {
    /// Only a connection dropped at shutdown goes with slots still held.
    fn drop(&mut self) {
        zerocopy::count_held(-(self.held.len() as i64));
    }
}

#[derive(Default)]
struct ZeroCopySends {
    /// Writes carrying fewer command data bytes than this copy.
    threshold: usize,
    notifications: Notifications,
    /// The data buffers of commands whose data went, at least in part, in zero-copy
    /// sends, each with the last such send, in send order. The commands themselves are
    /// complete: the host may reuse their CIDs once it has the data.
    held: VecDeque<(u32, DataBuf)>,
    /// Byte buffers zero-copy sends gathered from, with the last send that did.
    retired: VecDeque<(u32, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
    /// The last zero-copy send that carried part of the front segment, written in part.
    front: Option<u32>,
    /// A zero-copy send gathered from the current byte buffer.
    bytes_lent: bool,
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
        if let Some(zerocopy) = self.zerocopy.as_mut() {
            zerocopy.spare = Vec::new();
        }
        if self.is_empty() && !self.awaiting_notifications() {
            self.bytes = Vec::new();
            self.segments = VecDeque::new();
            self.front_written = 0;
            self.gather = GatherStorage::default();
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Sends writes carrying at least `threshold` bytes of command data with MSG_ZEROCOPY
    /// (the socket's `enable_zerocopy` succeeded).
    pub(super) fn enable_zerocopy(&mut self, threshold: usize) {
        let mut sends = ZeroCopySends::default();
        sends.threshold = threshold;
        self.zerocopy = Some(sends);
    }

    /// How many data buffers zero-copy sends hold.
    #[cfg(test)]
    pub(super) fn lent_buffers(&self) -> usize {
        self.zerocopy.as_ref().map_or(0, |zc| zc.held.len())
    }

    /// Whether zero-copy sends still hold slots or byte buffers.
    pub(super) fn awaiting_notifications(&self) -> bool {
        self.zerocopy.as_ref().is_some_and(|zc| !zc.held.is_empty() || !zc.retired.is_empty())
    }

    /// Reads the socket's zero-copy notifications and hands back the slots and buffers
    /// the kernel let go of; whether any were.
    pub(super) fn reap_notifications<S: Socket>(
        &mut self,
        stream: &mut S,
        buffers: &mut IoBufCache<'static>,
    ) -> io::Result<bool> {
        let Some(zc) = self.zerocopy.as_mut() else { return Ok(false) };
        // Buffers may be held for a send already released: the rest of a segment that
        // send carried in part went later, by copy or not at all (a broken connection).
        let read = if zc.notifications.is_idle() {
            Ok(())
        } else {
            let notifications = &mut zc.notifications;
            stream.zerocopy_notifications(&mut |first, last, copied| notifications.complete(first, last, copied))
        };
        let mut released = false;
        while zc.held.front().is_some_and(|&(number, _)| zc.notifications.released_through(number)) {
            if let Some((_, DataBuf::Pool(buffer))) = zc.held.pop_front() {
                buffers.put(buffer);
            }
            zerocopy::count_held(-1);
            released = true;
        }
        while zc.retired.front().is_some_and(|&(number, _)| zc.notifications.released_through(number)) {
            if let Some((_, mut buffer)) = zc.retired.pop_front() {
                buffer.clear();
                if zc.spare.len() < SPARE_BYTE_BUFFERS {
                    zc.spare.push(buffer);
                }
            }
        }
        read.map(|()| released)
    }

    /// After zero-copy sends gathered from the byte buffer, it is set aside until the
    /// kernel lets go and what is still unsent moves to a fresh one: writing, growing or
    /// clearing the lent one would change bytes the kernel may not have sent yet.
    fn retire_lent_bytes(&mut self) {
        let Some(zc) = self.zerocopy.as_mut() else { return };
        let Some(number) = zc.notifications.last().filter(|_| zc.bytes_lent) else {
            if self.pending == 0 {
                self.bytes.clear();
            }
            return;
        };
        zc.bytes_lent = false;
        let mut fresh = zc.spare.pop().unwrap_or_default();
        let unsent_from = self.segments.iter().find_map(|segment| match *segment {
            Segment::Bytes { start, .. } => Some(start),
            Segment::Data { .. } => None,
        });
        if let Some(base) = unsent_from {
            fresh.extend_from_slice(&self.bytes[base..]);
            for segment in self.segments.iter_mut() {
                if let Segment::Bytes { start, end } = segment {
                    *start -= base;
                    *end -= base;
                }
            }
        }
        zc.retired.push_back((number, std::mem::replace(&mut self.bytes, fresh)));
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
            let (written, zerocopy_send) = match self.write_once(stream, qpair) {
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
            self.consume(written, zerocopy_send, qpair, buffers);
        }
        if self.zerocopy.is_some() {
            self.retire_lent_bytes();
        } else if self.is_empty() {
            self.bytes.clear();
        }
        Flushed::Wrote(total)
    }

    /// Whether the next write goes zero-copy: it carries at least the threshold of
    /// command data (and some), and not too many sends are waiting already.
    fn next_write_is_zerocopy(&self) -> bool {
        let Some(zc) = self.zerocopy.as_ref() else { return false };
        if zc.notifications.outstanding() >= MAX_OUTSTANDING_ZEROCOPY_SENDS {
            return false;
        }
        let mut data = 0;
        for (index, segment) in self.segments.iter().take(MAX_IOV).enumerate() {
            if let Segment::Data { len, .. } = *segment {
                data += if index == 0 { len - self.front_written } else { len };
            }
        }
        data > 0 && data >= zc.threshold
    }

    /// One writev of the queued segments (up to `MAX_IOV` buffers): the bytes written,
    /// and the number of the zero-copy send when it was one.
    fn write_once<S: Socket>(&mut self, stream: &mut S, qpair: &Qpair) -> io::Result<(usize, Option<u32>)> {
        let zerocopy = self.next_write_is_zerocopy();
        let mut lists: Vec<Queued<'_>> = recycled(std::mem::take(&mut self.gather.lists));
        let mut iov: Vec<IoSlice<'_>> = recycled(std::mem::take(&mut self.gather.iov));
        let gathered = gather(&self.bytes, &self.segments, self.front_written, qpair, &mut lists, &mut iov);
        let result = gathered.and_then(|()| {
            if !zerocopy {
                return stream.write_vectored(&iov).map(|written| (written, false));
            }
            match stream.write_vectored_zerocopy(&iov) {
                // The kernel could not lend (ENOBUFS: optmem spent on notifications) or
                // lends only on an established connection (EINVAL: the host half-closed,
                // CLOSE_WAIT): copy.
                Err(err) if matches!(err.raw_os_error(), Some(nix::libc::ENOBUFS | nix::libc::EINVAL)) => {
                    zerocopy::count_fallback();
                    stream.write_vectored(&iov).map(|written| (written, false))
                }
                other => other.map(|written| (written, true)),
            }
        });
        self.gather.iov = recycled(iov);
        self.gather.lists = recycled(lists);
        let (written, lent) = result?;
        let number = match self.zerocopy.as_mut() {
            Some(zc) if lent && written > 0 => {
                zc.bytes_lent = true;
                Some(zc.notifications.sent())
            }
            _ => None,
        };
        Ok((written, number))
    }

    /// Drops `written` bytes from the front; hands back the slots fully sent, or holds
    /// them until the kernel lets go when a zero-copy send (`zerocopy_send`, or an
    /// earlier one for the front segment) carried their data.
    fn consume(
        &mut self,
        mut written: usize,
        zerocopy_send: Option<u32>,
        qpair: &mut Qpair,
        buffers: &mut IoBufCache<'static>,
    ) {
        self.pending -= written;
        while written > 0 {
            // A socket cannot take more than it was offered; if one claims to, stop here
            // rather than trust the count.
            let Some(&front) = self.segments.front() else { return };
            let left = front.len() - self.front_written;
            if written < left {
                self.front_written += written;
                if let (Some(zc), Some(number)) = (self.zerocopy.as_mut(), zerocopy_send) {
                    zc.front = Some(number);
                }
                return;
            }
            written -= left;
            self.front_written = 0;
            self.segments.pop_front();
            let lent = self.zerocopy.as_mut().and_then(|zc| zc.front.take()).or(zerocopy_send);
            if let Segment::Data { slot, .. } = front {
                self.data_sent(qpair, buffers, slot, Ok(()), lent);
            }
        }
    }

    /// Ends a slot's transfer; when zero-copy send `lent` carried its data, its buffers
    /// stay held until the kernel lets go of that send.
    fn data_sent(
        &mut self,
        qpair: &mut Qpair,
        buffers: &mut IoBufCache<'static>,
        slot: u16,
        sent: Result<(), Status>,
        lent: Option<u32>,
    ) {
        match (lent, self.zerocopy.as_mut()) {
            (Some(number), Some(zc)) => {
                let held = &mut zc.held;
                let mut hold = |buffer: DataBuf| {
                    zerocopy::count_held(1);
                    held.push_back((number, buffer));
                };
                qpair.data_sent_lending(buffers, slot, sent, Some(&mut hold));
            }
            _ => qpair.data_sent(buffers, slot, sent),
        }
    }

    /// Lets everything queued go (the host is gone): the slots still sending end with a
    /// transfer error.
    /// Slots and bytes a zero-copy send carried stay held until the kernel lets go.
    pub(super) fn discard(&mut self, qpair: &mut Qpair, buffers: &mut IoBufCache<'static>) {
        let mut lent_front = self.zerocopy.as_mut().and_then(|zc| zc.front.take());
        for segment in std::mem::take(&mut self.segments) {
            let lent = lent_front.take();
            if let Segment::Data { slot, .. } = segment {
                self.data_sent(qpair, buffers, slot, Err(Status::DATA_TRANSFER_ERROR), lent);
            }
        }
        self.pending = 0;
        self.retire_lent_bytes();
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
