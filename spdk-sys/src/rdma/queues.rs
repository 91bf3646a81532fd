//! Completion queues (with their channels, for interrupt mode) and shared receive queues.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use super::verbs::{Context, Pd};
use super::wr::{Completion, PostError, RecvWr};
use super::Error;
use crate::rdma_sys as sys;

/// A completion queue, with its own completion channel when made for interrupt mode.
/// Events are read and acknowledged together ([`Cq::drain_events`]), so none is left
/// unacknowledged when it is destroyed.
pub struct Cq {
    raw: NonNull<sys::ibv_cq>,
    channel: Option<NonNull<sys::ibv_comp_channel>>,
    capacity: u32,
    context: Context,
}

// SAFETY: verbs on a CQ (poll, arm, events) are thread-safe in libibverbs.
unsafe impl Send for Cq {}
// SAFETY: as above.
unsafe impl Sync for Cq {}

impl Cq {
    /// A CQ of at least `entries` entries; with `interrupts`, a completion channel whose
    /// descriptor ([`Cq::event_fd`]) is readable after [`Cq::arm`] once a completion arrives.
    pub fn new(context: &Context, entries: u32, interrupts: bool) -> Result<Arc<Cq>, Error> {
        let entries =
            i32::try_from(entries).map_err(|_| Error::new("ibv_create_cq: too many entries", libc::EINVAL))?;
        let channel = if interrupts {
            // SAFETY: live context.
            let channel = unsafe { sys::ibv_create_comp_channel(context.raw()) };
            let channel = NonNull::new(channel).ok_or_else(|| Error::last("ibv_create_comp_channel"))?;
            // SAFETY: the channel's fd is open while the channel lives.
            let fd = unsafe { channel.as_ref() }.fd;
            if let Err(err) = set_nonblocking(fd) {
                // SAFETY: just created, no CQ on it.
                unsafe { sys::ibv_destroy_comp_channel(channel.as_ptr()) };
                return Err(err);
            }
            Some(channel)
        } else {
            None
        };
        let channel_ptr = channel.map_or(std::ptr::null_mut(), |c| c.as_ptr());
        // SAFETY: live context; the channel (if any) is live and outlives the CQ (Drop order).
        let raw = unsafe { sys::ibv_create_cq(context.raw(), entries, std::ptr::null_mut(), channel_ptr, 0) };
        let Some(raw) = NonNull::new(raw) else {
            let err = Error::last(format!("ibv_create_cq of {entries} entries"));
            if let Some(channel) = channel {
                // SAFETY: no CQ was made on it.
                unsafe { sys::ibv_destroy_comp_channel(channel.as_ptr()) };
            }
            return Err(err);
        };
        // SAFETY: live CQ; `cqe` is the size the provider granted.
        let capacity = unsafe { raw.as_ref() }.cqe.max(0) as u32;
        Ok(Arc::new(Cq { raw, channel, capacity, context: context.clone() }))
    }

    pub(crate) fn raw(&self) -> *mut sys::ibv_cq {
        self.raw.as_ptr()
    }

    pub(crate) fn context_raw(&self) -> *mut sys::ibv_context {
        self.context.raw()
    }

    /// Entries the provider granted (at least the number asked for).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Takes up to `out.len()` completions; returns how many were written.
    pub fn poll(&self, out: &mut [Completion]) -> Result<usize, Error> {
        let max = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: live CQ; `Completion` is a transparent ibv_wc and `out` holds `max` of them.
        let n = unsafe { sys::peerless_ibv_poll_cq(self.raw(), max, out.as_mut_ptr().cast()) };
        if n < 0 {
            return Err(Error::new("ibv_poll_cq", if n == -1 { libc::EIO } else { n }));
        }
        Ok(n as usize)
    }

    /// Asks for one event on the channel at the next completion. Poll the CQ once more
    /// after arming: a completion that arrived in between raises no event.
    pub fn arm(&self) -> Result<(), Error> {
        if self.channel.is_none() {
            return Err(Error::new("ibv_req_notify_cq: this CQ has no completion channel", libc::EINVAL));
        }
        // SAFETY: live CQ.
        let ret = unsafe { sys::peerless_ibv_req_notify_cq(self.raw(), 0) };
        if ret != 0 {
            return Err(Error::from_ret("ibv_req_notify_cq", ret));
        }
        Ok(())
    }

    /// The completion channel's descriptor (non-blocking), for epoll; None without one.
    pub fn event_fd(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: the channel and its fd live as long as self.
        self.channel.map(|c| unsafe { BorrowedFd::borrow_raw(c.as_ref().fd) })
    }

    /// Reads and acknowledges every pending channel event; returns how many there were.
    pub fn drain_events(&self) -> Result<u32, Error> {
        let Some(channel) = self.channel else { return Ok(0) };
        let mut count = 0u32;
        loop {
            let mut cq = std::ptr::null_mut();
            let mut cq_context = std::ptr::null_mut();
            // SAFETY: live channel (non-blocking), valid out-pointers.
            let ret = unsafe { sys::ibv_get_cq_event(channel.as_ptr(), &mut cq, &mut cq_context) };
            if ret != 0 {
                let err = Error::last("ibv_get_cq_event");
                if err.errno == libc::EAGAIN {
                    break;
                }
                self.ack(count);
                return Err(err);
            }
            // The channel serves this CQ only, so `cq` is self.
            count += 1;
        }
        self.ack(count);
        Ok(count)
    }

    /// Waits up to `timeout` for the channel to fire, then reads and acknowledges its
    /// events; returns how many there were (0: timed out, or no channel). For tools and
    /// tests: a reactor watches [`Cq::event_fd`] instead.
    pub fn wait_event(&self, timeout: std::time::Duration) -> Result<u32, Error> {
        let Some(fd) = self.event_fd() else { return Ok(0) };
        let mut pollfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pollfd, 1, ms) } < 0 {
            return Err(Error::last("poll on a completion channel"));
        }
        self.drain_events()
    }

    fn ack(&self, count: u32) {
        if count > 0 {
            // SAFETY: live CQ; `count` events were read from its channel.
            unsafe { sys::ibv_ack_cq_events(self.raw(), count) };
        }
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: every QP using this CQ holds an Arc to it, so all are destroyed; every
        // event read was acknowledged in drain_events. The channel goes after its CQ.
        unsafe {
            sys::ibv_destroy_cq(self.raw.as_ptr());
            if let Some(channel) = self.channel {
                sys::ibv_destroy_comp_channel(channel.as_ptr());
            }
        }
    }
}

pub(crate) fn set_nonblocking(fd: i32) -> Result<(), Error> {
    // SAFETY: fcntl on a descriptor the caller owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(Error::last("fcntl O_NONBLOCK"));
    }
    Ok(())
}

/// A shared receive queue: one pool of posted receives for every queue pair of a poll
/// group, so receive buffers scale with the group, not with its connections.
pub struct Srq {
    raw: NonNull<sys::ibv_srq>,
    max_wr: u32,
    pd: Arc<Pd>,
}

// SAFETY: posting to and destroying an SRQ are thread-safe verbs.
unsafe impl Send for Srq {}
// SAFETY: as above.
unsafe impl Sync for Srq {}

impl Srq {
    /// An SRQ of `max_wr` receives of up to `max_sge` entries each.
    pub fn new(pd: &Arc<Pd>, max_wr: u32, max_sge: u32) -> Result<Arc<Srq>, Error> {
        let mut attr = sys::ibv_srq_init_attr::default();
        attr.attr.max_wr = max_wr;
        attr.attr.max_sge = max_sge;
        // SAFETY: live PD, valid attributes.
        let raw = unsafe { sys::ibv_create_srq(pd.raw(), &mut attr) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last(format!("ibv_create_srq of {max_wr} entries")))?;
        Ok(Arc::new(Srq { raw, max_wr: attr.attr.max_wr, pd: pd.clone() }))
    }

    pub(crate) fn raw(&self) -> *mut sys::ibv_srq {
        self.raw.as_ptr()
    }

    /// Receives the provider granted.
    pub fn max_wr(&self) -> u32 {
        self.max_wr
    }

    /// The domain it was made in.
    pub fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }

    /// Posts `wrs` in order; on failure, those before `PostError::index` were posted.
    pub fn post_recv(&self, wrs: &mut [RecvWr]) -> Result<(), PostError> {
        let Some(first) = super::wr::link_recv(wrs) else { return Ok(()) };
        let mut bad = std::ptr::null_mut();
        // SAFETY: live SRQ; `wrs` is linked and its entries' SGE arrays stay in place for
        // the call (the provider copies them).
        let ret = unsafe { sys::peerless_ibv_post_srq_recv(self.raw(), first, &mut bad) };
        super::wr::post_result("ibv_post_srq_recv", ret, wrs, bad)
    }
}

impl Drop for Srq {
    fn drop(&mut self) {
        // SAFETY: every QP attached to it holds an Arc, so all are destroyed.
        unsafe { sys::ibv_destroy_srq(self.raw.as_ptr()) };
    }
}
