//! The byte stream under an NVMe/TCP connection. The driver (`Conn`) needs little of it:
//! non-blocking reads and writes, shutdown, the two addresses, and a file descriptor that
//! interrupt mode can watch. `TcpStream` is the real one. `MemSocket` keeps both
//! directions in memory and hands its far end to whoever plays the network (a unit test,
//! the deterministic simulation), so the real driver runs with no kernel underneath.
//!
//! `Conn` is generic over the socket: the data path calls these methods directly, with
//! no dynamic dispatch and no allocation.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::rc::Rc;

/// What the NVMe/TCP driver needs of a connected stream socket.
pub trait Socket {
    /// Sets up an accepted stream for the data path: non-blocking, no Nagle delay, and
    /// SO_PRIORITY when `priority` is not 0.
    fn prepare(&mut self, priority: u32) -> io::Result<()>;

    /// Reads what has arrived; `WouldBlock` when nothing has, Ok(0) at end of stream.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;

    /// Writes what the socket takes now of `bufs` in order, in one call (writev).
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Ends both directions. A socket that is already down stays down: nothing to report.
    fn shutdown(&mut self);

    fn peer_addr(&self) -> io::Result<SocketAddr>;

    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// The descriptor interrupt mode waits on; None for a socket that has none.
    fn fd(&self) -> Option<BorrowedFd<'_>>;

    /// Whether input waits in the socket's own buffers, where the descriptor's readiness
    /// does not show it (TLS records decrypted but not yet read).
    fn has_buffered_input(&self) -> bool {
        false
    }

    /// Lets sends pin the memory they send (SO_ZEROCOPY); Unsupported for a socket that
    /// has no such sends.
    fn enable_zerocopy(&mut self) -> io::Result<()> {
        Err(ErrorKind::Unsupported.into())
    }

    /// Like `write_vectored`, with MSG_ZEROCOPY: the memory behind `bufs` stays lent to
    /// the kernel until a notification read by `zerocopy_notifications` names this send.
    /// Only called once `enable_zerocopy` succeeded.
    fn write_vectored_zerocopy(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_vectored(bufs)
    }

    /// Reads the zero-copy notifications waiting on the error queue, each an inclusive
    /// range of send numbers and whether the kernel copied after all.
    fn zerocopy_notifications(&mut self, _found: &mut dyn FnMut(u32, u32, bool)) -> io::Result<()> {
        Ok(())
    }

    /// Who a TLS handshake proved the peer to be; None for plain TCP.
    fn tls_peer(&self) -> Option<crate::nvmf::connect::TlsPeer> {
        None
    }
}

impl Socket for TcpStream {
    fn prepare(&mut self, priority: u32) -> io::Result<()> {
        self.set_nonblocking(true)?;
        self.set_nodelay(true)?;
        if priority > 0 {
            nix::sys::socket::setsockopt(&*self, nix::sys::socket::sockopt::Priority, &(priority as i32))
                .map_err(io::Error::from)?;
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(self, buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Write::write_vectored(self, bufs)
    }

    fn shutdown(&mut self) {
        let _ = TcpStream::shutdown(self, Shutdown::Both);
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::peer_addr(self)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::local_addr(self)
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }

    fn enable_zerocopy(&mut self) -> io::Result<()> {
        peerless_core::mem::zerocopy::enable_send_zerocopy(self.as_fd())
    }

    fn write_vectored_zerocopy(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        use nix::sys::socket::{sendmsg, MsgFlags};
        let flags =
            MsgFlags::from_bits_retain(nix::libc::MSG_ZEROCOPY) | MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        sendmsg::<()>(self.as_raw_fd(), bufs, &[], flags, None).map_err(io::Error::from)
    }

    fn zerocopy_notifications(&mut self, found: &mut dyn FnMut(u32, u32, bool)) -> io::Result<()> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        loop {
            let mut space = nix::cmsg_space!(nix::libc::sock_extended_err, nix::libc::sockaddr_in6);
            let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
            let message = match recvmsg::<()>(self.as_raw_fd(), &mut [], Some(&mut space), flags) {
                Ok(message) => message,
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return Err(err.into()),
            };
            for control in message.cmsgs().map_err(io::Error::from)? {
                let error = match control {
                    ControlMessageOwned::Ipv4RecvErr(error, _) | ControlMessageOwned::Ipv6RecvErr(error, _) => error,
                    _ => continue,
                };
                if error.ee_errno == 0 && error.ee_origin == SO_EE_ORIGIN_ZEROCOPY {
                    found(error.ee_info, error.ee_data, error.ee_code & SO_EE_CODE_ZEROCOPY_COPIED != 0);
                }
            }
        }
    }
}

/// linux/errqueue.h: a zero-copy completion, and its "the kernel copied" code.
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;

/// The state both ends of an in-memory socket share.
#[derive(Debug)]
struct Pipe {
    /// Bytes on their way to the socket's owner.
    inbound: VecDeque<u8>,
    /// Bytes the owner wrote that the far end has not taken yet.
    outbound: VecDeque<u8>,
    /// How many bytes `outbound` holds at most: the send buffer. A full one makes writes
    /// take part of what they are given, or nothing (`WouldBlock`).
    send_window: usize,
    /// The far end sent FIN: the owner reads end of stream once `inbound` is empty.
    far_closed: bool,
    /// The connection was reset: the owner's reads and writes fail from now on.
    reset: bool,
    /// The owner shut the socket down.
    shut_down: bool,
    /// Zero-copy sends, as the kernel numbers them: on, the next number, how many more
    /// to refuse (ENOBUFS), and the notifications waiting on the error queue.
    zerocopy: bool,
    next_zerocopy_send: u32,
    zerocopy_refusals: usize,
    notifications: VecDeque<(u32, u32, bool)>,
}

/// One end of an in-memory stream; its far end is a [`MemPeer`]. Single-threaded: both
/// ends live on the thread that runs the connection (a simulation steps everything on one).
pub struct MemSocket {
    pipe: Rc<RefCell<Pipe>>,
    peer: SocketAddr,
    local: SocketAddr,
}

/// The far end of a [`MemSocket`]: what the network (or a test) does to the stream.
#[derive(Clone)]
pub struct MemPeer {
    pipe: Rc<RefCell<Pipe>>,
}

/// A send buffer as large as Linux's default for a TCP socket (tcp_wmem).
pub const DEFAULT_SEND_WINDOW_BYTES: usize = 16 * 1024 * 1024;

impl MemSocket {
    /// A connected socket between `local` (this end) and `peer`, and its far end.
    pub fn pair(local: SocketAddr, peer: SocketAddr) -> (MemSocket, MemPeer) {
        let pipe = Rc::new(RefCell::new(Pipe {
            inbound: VecDeque::new(),
            outbound: VecDeque::new(),
            send_window: DEFAULT_SEND_WINDOW_BYTES,
            far_closed: false,
            reset: false,
            shut_down: false,
            zerocopy: false,
            next_zerocopy_send: 0,
            zerocopy_refusals: 0,
            notifications: VecDeque::new(),
        }));
        (MemSocket { pipe: pipe.clone(), peer, local }, MemPeer { pipe })
    }
}

impl Socket for MemSocket {
    fn prepare(&mut self, _priority: u32) -> io::Result<()> {
        // Always non-blocking and never delayed; there is no priority to set in memory.
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut pipe = self.pipe.borrow_mut();
        if pipe.reset {
            return Err(ErrorKind::ConnectionReset.into());
        }
        if pipe.inbound.is_empty() {
            return if pipe.far_closed || pipe.shut_down { Ok(0) } else { Err(ErrorKind::WouldBlock.into()) };
        }
        let count = buf.len().min(pipe.inbound.len());
        copy_front(&mut pipe.inbound, &mut buf[..count]);
        Ok(count)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut pipe = self.pipe.borrow_mut();
        if pipe.reset || pipe.shut_down {
            return Err(ErrorKind::BrokenPipe.into());
        }
        let room = pipe.send_window.saturating_sub(pipe.outbound.len());
        if room == 0 && !buf.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        let count = buf.len().min(room);
        pipe.outbound.extend(&buf[..count]);
        Ok(count)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut total = 0;
        for buf in bufs.iter().filter(|buf| !buf.is_empty()) {
            match self.write(buf) {
                Ok(written) => {
                    total += written;
                    if written < buf.len() {
                        break;
                    }
                }
                Err(err) if total == 0 => return Err(err),
                Err(_) => break,
            }
        }
        Ok(total)
    }

    fn shutdown(&mut self) {
        self.pipe.borrow_mut().shut_down = true;
    }

    fn enable_zerocopy(&mut self) -> io::Result<()> {
        self.pipe.borrow_mut().zerocopy = true;
        Ok(())
    }

    /// Copies like every write here, but numbers the send as the kernel would; the far
    /// end says when it is released (`MemPeer::notify`).
    fn write_vectored_zerocopy(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        {
            let mut pipe = self.pipe.borrow_mut();
            if pipe.zerocopy_refusals > 0 {
                pipe.zerocopy_refusals -= 1;
                return Err(io::Error::from_raw_os_error(nix::libc::ENOBUFS));
            }
        }
        let written = self.write_vectored(bufs)?;
        if written > 0 {
            let mut pipe = self.pipe.borrow_mut();
            pipe.next_zerocopy_send = pipe.next_zerocopy_send.wrapping_add(1);
        }
        Ok(written)
    }

    fn zerocopy_notifications(&mut self, found: &mut dyn FnMut(u32, u32, bool)) -> io::Result<()> {
        let waiting = std::mem::take(&mut self.pipe.borrow_mut().notifications);
        for (first, last, copied) in waiting {
            found(first, last, copied);
        }
        Ok(())
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

impl MemPeer {
    /// Bytes arrive at the socket. After a reset or the owner's shutdown they are lost,
    /// as a kernel drops data for a closed socket.
    pub fn deliver(&self, bytes: &[u8]) {
        let mut pipe = self.pipe.borrow_mut();
        if !pipe.reset && !pipe.shut_down {
            pipe.inbound.extend(bytes);
        }
    }

    /// Moves up to `max` bytes the owner wrote to the end of `into`; returns how many.
    pub fn take(&self, max: usize, into: &mut Vec<u8>) -> usize {
        let mut pipe = self.pipe.borrow_mut();
        let count = max.min(pipe.outbound.len());
        let start = into.len();
        into.resize(start + count, 0);
        copy_front(&mut pipe.outbound, &mut into[start..]);
        count
    }

    /// Bytes the owner wrote that have not been taken.
    pub fn pending(&self) -> usize {
        self.pipe.borrow().outbound.len()
    }

    /// Bytes delivered that the owner has not read.
    pub fn unread(&self) -> usize {
        self.pipe.borrow().inbound.len()
    }

    /// The far end is done sending (FIN): the owner reads end of stream after the rest.
    pub fn close(&self) {
        self.pipe.borrow_mut().far_closed = true;
    }

    /// The connection breaks (RST): what was in flight either way is lost, and the
    /// owner's next read or write fails.
    pub fn reset(&self) {
        let mut pipe = self.pipe.borrow_mut();
        pipe.reset = true;
        pipe.inbound.clear();
        pipe.outbound.clear();
    }

    /// Whether the owner shut the socket down (the far end sees FIN once it has taken
    /// what is pending).
    pub fn is_shut_down(&self) -> bool {
        self.pipe.borrow().shut_down
    }

    pub fn is_reset(&self) -> bool {
        self.pipe.borrow().reset
    }

    /// How many zero-copy sends the owner has made.
    pub fn zerocopy_sends(&self) -> u32 {
        self.pipe.borrow().next_zerocopy_send
    }

    /// The kernel lets go of zero-copy sends `first..=last`.
    pub fn notify(&self, first: u32, last: u32, copied: bool) {
        self.pipe.borrow_mut().notifications.push_back((first, last, copied));
    }

    /// The next `count` zero-copy sends fail with ENOBUFS (optmem spent).
    pub fn refuse_zerocopy(&self, count: usize) {
        self.pipe.borrow_mut().zerocopy_refusals = count;
    }

    /// Sets the send buffer the owner's writes fill; 0 stops them all.
    pub fn set_send_window(&self, bytes: usize) {
        self.pipe.borrow_mut().send_window = bytes;
    }
}

/// Moves the first `dst.len()` bytes of `queue` into `dst`, a slice copy per half of the
/// ring rather than a byte at a time.
fn copy_front(queue: &mut VecDeque<u8>, dst: &mut [u8]) {
    debug_assert!(dst.len() <= queue.len());
    let (front, back) = queue.as_slices();
    let first = dst.len().min(front.len());
    let rest = dst.len() - first;
    dst[..first].copy_from_slice(&front[..first]);
    dst[first..].copy_from_slice(&back[..rest]);
    queue.drain(..dst.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (MemSocket, MemPeer) {
        MemSocket::pair("127.0.0.1:4420".parse().unwrap(), "127.0.0.1:50000".parse().unwrap())
    }

    #[test]
    fn bytes_flow_both_ways_in_order() {
        let (mut socket, peer) = pair();
        let mut buf = [0u8; 8];
        assert_eq!(socket.read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
        peer.deliver(b"hello ");
        peer.deliver(b"world");
        assert_eq!(socket.read(&mut buf).unwrap(), 8);
        assert_eq!(&buf, b"hello wo");
        assert_eq!(socket.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"rld");
        assert_eq!(socket.write(b"answer").unwrap(), 6);
        let mut out = Vec::new();
        assert_eq!(peer.take(4, &mut out), 4);
        assert_eq!(peer.take(100, &mut out), 2);
        assert_eq!(out, b"answer");
        assert_eq!(socket.peer_addr().unwrap().port(), 50000);
        assert!(socket.fd().is_none());
    }

    #[test]
    fn a_full_send_window_takes_part_then_nothing() {
        let (mut socket, peer) = pair();
        peer.set_send_window(5);
        assert_eq!(socket.write(b"abcdefgh").unwrap(), 5);
        assert_eq!(socket.write(b"fgh").unwrap_err().kind(), ErrorKind::WouldBlock);
        let mut out = Vec::new();
        peer.take(2, &mut out);
        assert_eq!(socket.write(b"fgh").unwrap(), 2);
        assert_eq!(peer.pending(), 5);
    }

    #[test]
    fn fin_reads_as_end_of_stream_after_the_data_and_reset_fails_both_ways() {
        let (mut socket, peer) = pair();
        peer.deliver(b"last");
        peer.close();
        let mut buf = [0u8; 8];
        assert_eq!(socket.read(&mut buf).unwrap(), 4);
        assert_eq!(socket.read(&mut buf).unwrap(), 0, "end of stream");
        assert_eq!(socket.write(b"still sending").unwrap(), 13, "half-closed: this way still works");
        peer.reset();
        assert_eq!(peer.pending(), 0, "a reset loses what was in flight");
        assert_eq!(socket.read(&mut buf).unwrap_err().kind(), ErrorKind::ConnectionReset);
        assert_eq!(socket.write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
        peer.deliver(b"too late");
        assert_eq!(peer.unread(), 0);
    }

    #[test]
    fn shutdown_is_seen_by_the_far_end_and_stops_writes() {
        let (mut socket, peer) = pair();
        assert!(!peer.is_shut_down());
        socket.shutdown();
        assert!(peer.is_shut_down());
        assert_eq!(socket.write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
        let mut buf = [0u8; 1];
        assert_eq!(socket.read(&mut buf).unwrap(), 0);
        socket.shutdown();
        assert!(!peer.is_reset());
    }
}
