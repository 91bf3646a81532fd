//! Owned memory mappings: the one place that calls mmap/munmap.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::{Error, Result};

/// A live `mmap` region, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    addr: usize,
    len: usize,
}

/// Protection of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prot {
    ReadWrite,
    /// Any CPU access faults: what strict-mode device memory looks like to the CPU.
    None,
}

impl Prot {
    fn bits(self) -> libc::c_int {
        match self {
            Prot::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
            Prot::None => libc::PROT_NONE,
        }
    }
}

impl Mapping {
    /// Private anonymous memory; `extra_flags` adds e.g. `MAP_HUGETLB`.
    pub(crate) fn anonymous(len: usize, extra_flags: libc::c_int) -> Result<Mapping> {
        assert!(len > 0, "empty mapping");
        // SAFETY: a fresh anonymous mapping at a kernel-chosen address aliases nothing.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(Error::last_os("mmap anonymous"));
        }
        Ok(Mapping { addr: addr as usize, len })
    }

    /// A shared mapping of `len` bytes of `fd` from offset 0.
    pub(crate) fn shared_file(fd: BorrowedFd<'_>, len: usize, prot: Prot) -> Result<Mapping> {
        Mapping::shared_file_at(fd, 0, len, prot)
    }

    /// A shared mapping of `len` bytes of `fd` from `offset`, which mmap wants page-aligned
    /// (VFIO region offsets and sysfs resource files are).
    pub(crate) fn shared_file_at(fd: BorrowedFd<'_>, offset: u64, len: usize, prot: Prot) -> Result<Mapping> {
        assert!(len > 0, "empty mapping");
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| Error::Config(format!("mmap offset {offset:#x} does not fit off_t")))?;
        // SAFETY: a new shared mapping at a kernel-chosen address; the file's pages are
        // only reached through this module's accessors, which bound-check every access.
        let addr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, prot.bits(), libc::MAP_SHARED, fd.as_raw_fd(), offset) };
        if addr == libc::MAP_FAILED {
            return Err(Error::last_os("mmap shared file"));
        }
        Ok(Mapping { addr: addr as usize, len })
    }

    pub(crate) fn addr(&self) -> usize {
        self.addr
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Pins the pages so DMA addresses stay valid; false when the limit refuses.
    pub(crate) fn lock(&self) -> bool {
        // SAFETY: the range is this mapping, alive for the call.
        unsafe { libc::mlock(self.addr as *const libc::c_void, self.len) == 0 }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: this mapping owns the range; every borrow of it (segments, views) is
        // tied to an owner that holds this mapping, so none outlives it.
        let rc = unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
        debug_assert_eq!(rc, 0, "munmap of an owned mapping failed");
    }
}
