//! Linux's udmabuf: a dma-buf over the pages of a memfd. The emulated CMB's bytes live in
//! a memfd, so it exports them as a real dma-buf, the same kind of handle a VFIO device
//! gives for a BAR; a NIC's driver then decides whether it can import it.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// The control device; absent unless the kernel has CONFIG_UDMABUF.
const UDMABUF_DEVICE: &str = "/dev/udmabuf";
/// `struct udmabuf_create` of linux/udmabuf.h.
#[repr(C)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}
const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;
/// `_IOW('u', 0x42, struct udmabuf_create)`.
const UDMABUF_CREATE: libc::c_ulong =
    (1 << 30) | ((size_of::<UdmabufCreate>() as libc::c_ulong) << 16) | (0x75 << 8) | 0x42;

/// The seals udmabuf demands of a memfd: it must not shrink under the exported pages.
pub(crate) const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_SHRINK;

/// Exports `len` bytes from offset 0 of `memfd` (sealed with [`REQUIRED_SEALS`]).
pub(crate) fn export(memfd: BorrowedFd<'_>, len: usize) -> Result<OwnedFd, String> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(UDMABUF_DEVICE)
        .map_err(|err| format!("{UDMABUF_DEVICE}: {err} (a kernel without CONFIG_UDMABUF has none)"))?;
    let memfd = u32::try_from(memfd.as_raw_fd()).map_err(|_| "a negative memfd".to_string())?;
    let request = UdmabufCreate { memfd, flags: UDMABUF_FLAGS_CLOEXEC, offset: 0, size: len as u64 };
    // SAFETY: UDMABUF_CREATE reads one `struct udmabuf_create`, which `request` is and
    // outlives the call; on success it returns a new descriptor nothing else owns.
    let raw = unsafe { libc::ioctl(control.as_raw_fd(), UDMABUF_CREATE as _, &request as *const UdmabufCreate) };
    if raw < 0 {
        return Err(format!("UDMABUF_CREATE of {len} bytes: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is the fresh dma-buf descriptor the ioctl returned.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_code_is_the_kernels() {
        // linux/udmabuf.h: #define UDMABUF_CREATE _IOW('u', 0x42, struct udmabuf_create)
        assert_eq!(size_of::<UdmabufCreate>(), 24);
        assert_eq!(UDMABUF_CREATE, 0x4018_7542);
    }
}
