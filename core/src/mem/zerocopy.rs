//! Lending Host memory to the kernel's network stack: the one socket option MSG_ZEROCOPY
//! needs (SO_ZEROCOPY, Linux 4.14), which `nix` does not wrap. With it set, a send flagged
//! MSG_ZEROCOPY pins the pages of the sent buffers instead of copying them, so the memory
//! stays lent until the socket's error queue says the kernel let go (the caller's
//! bookkeeping; see the NVMe/TCP outbox). The send and the error queue read go through
//! `nix`'s safe `sendmsg`/`recvmsg`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `SO_ZEROCOPY` (asm-generic/socket.h; the same on x86 and arm64).
const SO_ZEROCOPY: libc::c_int = 60;

/// Lets sends on `socket` flagged MSG_ZEROCOPY pin their pages rather than copy them.
/// A kernel or socket that cannot answers an error; sends then stay copying.
pub fn enable_send_zerocopy(socket: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: SO_ZEROCOPY reads one int, which `on` is and outlives the call; `socket` is
    // a descriptor the borrow keeps open for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ZEROCOPY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_tcp_socket_takes_the_option_and_a_file_refuses_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        enable_send_zerocopy(stream.as_fd()).unwrap();
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert_eq!(enable_send_zerocopy(file.as_fd()).unwrap_err().raw_os_error(), Some(libc::ENOTSOCK));
    }
}
