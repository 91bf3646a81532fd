//! Socket readiness through io_uring: a multishot poll per watched descriptor posts a
//! completion each time it becomes readable, and finding out which are ready is a look at
//! the completion ring in shared memory, with no system call. An epoll answers the same
//! question with an `epoll_wait` per look, which a busy reactor pays every few
//! microseconds. SPDK's `uring` sock implementation polls its sockets the same way.
//!
//! With `unsafe` (the crate's second place for it, beside `mem`): pushing an SQE is
//! unsafe because the kernel may read memory the entry points at after the push returns.
//! The entries pushed here point at none: a poll names a descriptor and event mask, a
//! poll removal names the poll by its user data.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// User data of the removal requests themselves; their completions are not events.
const REMOVAL: u64 = u64::MAX;

/// What a look at the ring found for one watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// The descriptor of the watch with this token is readable (or hung up).
    Ready(u64),
    /// The kernel ended the watch with this token (it was removed, or the poll failed or
    /// its completions overflowed): the owner watches again if it still wants events.
    Ended(u64),
}

/// A set of watched descriptors, each under a token of the caller's choice (not
/// `u64::MAX`), unique among the watches alive at once.
pub struct PollRing {
    ring: IoUring,
    /// SQEs pushed and not yet handed to the kernel.
    unsubmitted: usize,
    eventfd: Option<EventFd>,
}

impl PollRing {
    /// A ring with room for `entries` requests at once (rounded up to a power of two by
    /// the kernel); with `notify`, an eventfd becomes readable when completions arrive,
    /// for a reactor that sleeps in epoll.
    pub fn new(entries: u32, notify: bool) -> io::Result<PollRing> {
        // A completion ring larger than the request ring: a burst of readiness on every
        // watched socket at once must fit before the owner looks.
        //
        // A poll's completion is made by task work on this thread, and by default the
        // kernel interrupts the thread to run it, which a busy-polling reactor would pay
        // for on every packet. Without `notify` (a reactor that never sleeps) the ring
        // runs tasks cooperatively: the kernel raises a flag in shared memory and the
        // completion is made at this thread's next system call, which `ready` makes only
        // when the flag is up. A reactor asleep in epoll must be interrupted, or the
        // completion, and the eventfd that wakes it, would wait for its next timer (and
        // with deferred task running the kernel here does not signal the eventfd).
        let mut builder = IoUring::builder();
        builder.setup_cqsize(entries.saturating_mul(4).max(64));
        if !notify {
            builder.setup_coop_taskrun().setup_taskrun_flag();
        }
        let ring = builder.build(entries)?;
        let eventfd = if notify {
            let eventfd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
            ring.submitter().register_eventfd(eventfd.as_fd().as_raw_fd())?;
            Some(eventfd)
        } else {
            None
        };
        Ok(PollRing { ring, unsubmitted: 0, eventfd })
    }

    /// Reports `fd` readable under `token` from now on, until `unwatch`. The kernel holds
    /// the descriptor's file while the watch lives: a socket closed by its owner stays
    /// open until the watch is removed.
    pub fn watch(&mut self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        debug_assert_ne!(token, REMOVAL);
        let mask = (libc::POLLIN | libc::POLLRDHUP) as u32;
        let entry = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), mask).multi(true).build().user_data(token);
        self.push(&entry)?;
        // Submitted at once: events before the first look must not be missed, and
        // watches are rare (one per connection).
        self.submit()
    }

    /// Ends the watch under `token`; its last completion (`Ended`) may still arrive.
    /// Submitted at once, so the kernel lets go of the descriptor's file promptly.
    pub fn unwatch(&mut self, token: u64) -> io::Result<()> {
        let entry = opcode::PollRemove::new(token).build().user_data(REMOVAL);
        self.push(&entry)?;
        self.submit()
    }

    /// Passes what the kernel has posted to `each`, without a system call unless a
    /// request still waits to be submitted or the kernel has completions to make (its
    /// task-run flag). Returns how many events it passed.
    pub fn ready(&mut self, mut each: impl FnMut(Readiness)) -> usize {
        if self.unsubmitted > 0 || self.ring.submission().taskrun() {
            let _ = self.submit();
        }
        let mut passed = 0;
        for cqe in self.ring.completion() {
            let token = cqe.user_data();
            if token == REMOVAL {
                continue;
            }
            // A poll reports readiness with a positive event mask; its last completion,
            // without F_MORE, ends it whatever it reports.
            if cqe.result() > 0 {
                each(Readiness::Ready(token));
                passed += 1;
            }
            if !cqueue::more(cqe.flags()) {
                each(Readiness::Ended(token));
                passed += 1;
            }
        }
        passed
    }

    /// The eventfd a sleeping reactor watches, with `notify`.
    pub fn eventfd(&self) -> Option<BorrowedFd<'_>> {
        self.eventfd.as_ref().map(AsFd::as_fd)
    }

    /// Consumes the eventfd's count so a level-triggered epoll stops reporting it; call
    /// before looking at the ring, so that a completion after the look signals again.
    pub fn clear_eventfd(&self) {
        if let Some(eventfd) = &self.eventfd {
            // EAGAIN: nothing was signalled since the last read.
            let _ = eventfd.read();
        }
    }

    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the entry is a poll or a poll removal, which point at no memory
            // the kernel could read or write after the push (see the module comment).
            let pushed = unsafe { self.ring.submission().push(entry) };
            if pushed.is_ok() {
                self.unsubmitted += 1;
                return Ok(());
            }
            // The request ring is full: hand it to the kernel and try again.
            if self.submit_now()? == 0 {
                return Err(io::Error::other("io_uring submission queue full and the kernel takes none"));
            }
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        self.submit_now().map(|_| ())
    }

    fn submit_now(&mut self) -> io::Result<usize> {
        match self.ring.submit() {
            Ok(taken) => {
                self.unsubmitted = self.unsubmitted.saturating_sub(taken);
                Ok(taken)
            }
            // The kernel is short of room or memory for now: submitted at the next look.
            Err(err) if matches!(err.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)) => Ok(0),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    /// Looks until `want` shows up or a second passes; everything seen, in order.
    fn look_for(ring: &mut PollRing, want: Readiness) -> Vec<Readiness> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(1);
        while !seen.contains(&want) && Instant::now() < deadline {
            ring.ready(|event| seen.push(event));
            std::thread::sleep(Duration::from_millis(1));
        }
        seen
    }

    #[test]
    fn a_watched_socket_is_reported_each_time_it_becomes_readable_and_only_then() {
        let mut ring = PollRing::new(8, false).expect("io_uring");
        let (mut client, server) = pair();
        ring.watch(server.as_fd(), 7).expect("watch");
        std::thread::sleep(Duration::from_millis(20));
        let mut quiet = Vec::new();
        ring.ready(|event| quiet.push(event));
        assert!(quiet.is_empty(), "nothing was sent yet: {quiet:?}");
        for round in 0..3 {
            client.write_all(&[round]).expect("send");
            assert!(look_for(&mut ring, Readiness::Ready(7)).contains(&Readiness::Ready(7)), "round {round}");
            let mut byte = [0u8; 1];
            std::io::Read::read_exact(&mut &server, &mut byte).expect("read");
        }
    }

    #[test]
    fn an_unwatched_socket_ends_its_watch_and_tokens_stay_apart() {
        let mut ring = PollRing::new(8, true).expect("io_uring");
        let (mut first_client, first) = pair();
        let (mut second_client, second) = pair();
        ring.watch(first.as_fd(), 1).expect("watch");
        ring.watch(second.as_fd(), 2).expect("watch");
        ring.unwatch(1).expect("unwatch");
        assert!(look_for(&mut ring, Readiness::Ended(1)).contains(&Readiness::Ended(1)));
        first_client.write_all(b"x").expect("send");
        second_client.write_all(b"y").expect("send");
        let seen = look_for(&mut ring, Readiness::Ready(2));
        assert!(seen.contains(&Readiness::Ready(2)), "{seen:?}");
        assert!(!seen.contains(&Readiness::Ready(1)), "an ended watch still reported: {seen:?}");
        // The eventfd told a sleeper about the completions; clearing it leaves it quiet.
        ring.clear_eventfd();
        let mut buf = [0u8; 8];
        let fd = ring.eventfd().expect("notify ring has an eventfd");
        assert!(nix::unistd::read(fd.as_raw_fd(), &mut buf).is_err(), "cleared eventfd still readable");
    }

    #[test]
    fn a_peer_hanging_up_is_reported_as_readable() {
        let mut ring = PollRing::new(8, false).expect("io_uring");
        let (client, server) = pair();
        ring.watch(server.as_fd(), 3).expect("watch");
        drop(client);
        assert!(look_for(&mut ring, Readiness::Ready(3)).contains(&Readiness::Ready(3)));
    }
}
