//! A mapped MMIO window (a PCI BAR): registers and doorbells read and written with single
//! volatile, naturally aligned accesses, and device memory behind the BAR (a CMB) copied
//! with the I/O accessors of [`crate::mem::io`].
//!
//! PCI memory space is little-endian (PCI Local Bus 3.0 §3.2.2); values are converted so
//! the same code is right on a big-endian host.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;

use super::super::io;
use super::super::map::{Mapping, Prot};
use super::super::{Error, Result};

/// A mapped PCI BAR (or any MMIO window). Volatile, naturally aligned accesses only.
#[derive(Debug)]
pub struct Mmio {
    map: Mapping,
}

impl Drop for Mmio {
    fn drop(&mut self) {
        super::sigbus::unguard(self.map.addr());
    }
}

impl Mmio {
    /// MAP_SHARED read/write of `len` bytes of `file` at `offset` (a sysfs `resourceN`
    /// file, or a VFIO device fd at its region offset). `offset` must be page-aligned.
    pub fn map_file(file: &File, offset: u64, len: usize) -> Result<Mmio> {
        let page = super::page_bytes() as u64;
        if len == 0 || !offset.is_multiple_of(page) {
            return Err(Error::File {
                path: fd_path(file),
                what: "MMIO window",
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{len} bytes at offset {offset:#x}: need a non-zero length at a {page}-byte aligned offset"
                    ),
                ),
            });
        }
        let map = Mapping::shared_file_at(file.as_fd(), offset, len, Prot::ReadWrite).map_err(|err| match err {
            Error::Os { source, .. } => Error::File { path: fd_path(file), what: "mmap of an MMIO window", source },
            other => other,
        })?;
        // A removed device's window reads all ones instead of ending the process.
        super::sigbus::guard(map.addr(), map.len());
        Ok(Mmio { map })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Where the window is mapped: registry regions over device memory behind it start here.
    pub(crate) fn base_addr(&self) -> usize {
        self.map.addr()
    }

    /// The address of `off..off + width`, or a panic naming the programmer error.
    fn at(&self, off: usize, width: usize) -> usize {
        assert!(
            off.is_multiple_of(width) && off.checked_add(width).is_some_and(|end| end <= self.len()),
            "Mmio: {}-bit access at {off:#x} is misaligned or outside the {:#x}-byte window",
            width * 8,
            self.len()
        );
        self.map.addr() + off
    }

    /// Panics (programmer error) if `off + 4 > len()` or `off % 4 != 0`; callers validate
    /// device-derived offsets against [`Mmio::len`] first.
    pub fn read32(&self, off: usize) -> u32 {
        let at = self.at(off, 4);
        // SAFETY: `at` is 4-aligned and `at..at + 4` lies in the live mapping (checked by
        // `at`); device memory is never reached through a Rust reference.
        u32::from_le(unsafe { std::ptr::read_volatile(at as *const u32) })
    }

    /// Stores made before it (a submission queue entry in DMA memory) are ordered
    /// before the register write (a doorbell), as Linux's `writel` orders them.
    pub fn write32(&self, off: usize, value: u32) {
        let at = self.at(off, 4);
        // A volatile store orders only against other volatile accesses; the fence keeps
        // the compiler (and weakly ordered CPUs) from sinking ordinary stores past it.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        // SAFETY: as in `read32`; the mapping is writable.
        unsafe { std::ptr::write_volatile(at as *mut u32, value.to_le()) };
    }

    /// A 64-bit register as two 32-bit accesses, low dword first: NVMe allows either
    /// (NVMe 2.0 base §3.1.4: "a 64-bit register may be accessed as two 32-bit accesses")
    /// and some devices only take 32-bit ones. `off` must be 8-aligned.
    pub fn read64(&self, off: usize) -> u64 {
        self.at(off, 8);
        let low = self.read32(off);
        let high = self.read32(off + 4);
        (u64::from(high) << 32) | u64::from(low)
    }

    pub fn write64(&self, off: usize, value: u64) {
        self.at(off, 8);
        self.write32(off, value as u32);
        self.write32(off + 4, (value >> 32) as u32);
    }

    fn range(&self, off: usize, len: usize) -> usize {
        assert!(
            off.checked_add(len).is_some_and(|end| end <= self.len()),
            "Mmio: copy of {len} bytes at {off:#x} runs outside the {:#x}-byte window",
            self.len()
        );
        self.map.addr() + off
    }

    /// Copies `src` into device memory at `off` (volatile, aligned words; a CMB).
    /// Panics (programmer error) when the range leaves the window.
    pub fn copy_to_device(&self, off: usize, src: &[u8]) {
        let at = self.range(off, src.len());
        // SAFETY: `at..at + src.len()` lies in this live, writable mapping (checked by
        // `range`), and no Rust reference to device memory exists.
        unsafe { io::write(at, src) };
    }

    /// Copies device memory at `off` into `dst`. Panics when the range leaves the window.
    pub fn copy_from_device(&self, off: usize, dst: &mut [u8]) {
        let at = self.range(off, dst.len());
        // SAFETY: as in `copy_to_device`.
        unsafe { io::read(at, dst) };
    }
}

/// What a descriptor names, for error messages.
fn fd_path(file: &File) -> PathBuf {
    use std::os::fd::AsRawFd;
    let link = format!("/proc/self/fd/{}", file.as_raw_fd());
    std::fs::read_link(&link).unwrap_or_else(|_| PathBuf::from(link))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom};

    use super::*;

    fn window(len: usize) -> (File, Mmio) {
        let mut file = tempfile();
        file.set_len(len as u64).expect("size the file");
        let mmio = Mmio::map_file(&file, 0, len).expect("map");
        file.seek(SeekFrom::Start(0)).expect("seek");
        (file, mmio)
    }

    fn tempfile() -> File {
        let path = std::env::temp_dir().join(format!(
            "peerless-mmio-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("tmp file");
        std::fs::remove_file(&path).expect("unlink");
        file
    }

    fn file_bytes(file: &mut File, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        file.seek(SeekFrom::Start(0)).expect("seek");
        file.read_exact(&mut bytes).expect("read back");
        bytes
    }

    /// A window whose backing goes away (here the file shrinks under a shared mapping, as
    /// a removed device's BAR is zapped) reads all ones instead of killing the process.
    #[test]
    fn a_window_that_loses_its_backing_reads_all_ones() {
        let (file, mmio) = window(8192);
        mmio.write32(0x1004, 0x1234_5678);
        assert_eq!(mmio.read32(0x1004), 0x1234_5678);
        let before = super::super::sigbus::replaced_windows();
        file.set_len(0).unwrap();
        assert_eq!(mmio.read32(0x1004), u32::MAX);
        assert_eq!(mmio.read64(0), u64::MAX);
        mmio.write32(0, 7);
        assert_eq!(super::super::sigbus::replaced_windows(), before + 1);
    }

    #[test]
    fn registers_round_trip_and_land_little_endian() {
        let (mut file, mmio) = window(8192);
        assert_eq!(mmio.len(), 8192);
        mmio.write32(0x14, 0x4655_0001);
        assert_eq!(mmio.read32(0x14), 0x4655_0001);
        mmio.write64(0x28, 0x1122_3344_5566_7788);
        assert_eq!(mmio.read64(0x28), 0x1122_3344_5566_7788);
        mmio.write32(8188, 0xdead_beef);
        assert_eq!(mmio.read32(8188), 0xdead_beef, "last dword");
        let bytes = file_bytes(&mut file, 8192);
        assert_eq!(&bytes[0x14..0x18], &[0x01, 0x00, 0x55, 0x46]);
        assert_eq!(&bytes[0x28..0x30], &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&bytes[8188..], &[0xef, 0xbe, 0xad, 0xde]);
        assert!(bytes[..0x14].iter().all(|&b| b == 0), "nothing else written");
    }

    #[test]
    fn device_memory_copies_round_trip_at_any_alignment() {
        let (mut file, mmio) = window(4096);
        for (off, len) in [(0, 64), (3, 61), (4000, 96), (4095, 1), (17, 0)] {
            let src: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(off as u8)).collect();
            mmio.copy_to_device(off, &src);
            let mut back = vec![0u8; len];
            mmio.copy_from_device(off, &mut back);
            assert_eq!(back, src, "off {off} len {len}");
            assert_eq!(&file_bytes(&mut file, 4096)[off..off + len], &src[..]);
        }
    }

    /// The panic message of `f`, which must panic.
    fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let err = std::panic::catch_unwind(f).expect_err("a programmer error panics");
        err.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn misaligned_or_outside_accesses_panic_with_the_offset() {
        let (_file, mmio) = window(4096);
        let mmio = std::sync::Arc::new(mmio);
        let check = |f: Box<dyn FnOnce(&Mmio) + std::panic::UnwindSafe>, expected: &str| {
            let m = std::sync::Arc::clone(&mmio);
            let msg = panic_message(move || f(&m));
            assert!(msg.contains(expected), "{msg:?} should contain {expected:?}");
        };
        check(
            Box::new(|m| {
                m.read32(2);
            }),
            "32-bit access at 0x2 is misaligned",
        );
        check(Box::new(|m| m.write32(4096, 0)), "32-bit access at 0x1000");
        check(
            Box::new(|m| {
                m.read32(usize::MAX - 3);
            }),
            "outside the 0x1000-byte window",
        );
        check(
            Box::new(|m| {
                m.read64(4);
            }),
            "64-bit access at 0x4",
        );
        check(Box::new(|m| m.write64(4092, 0)), "64-bit access at 0xffc");
        check(Box::new(|m| m.copy_to_device(4000, &[0; 97])), "copy of 97 bytes at 0xfa0");
        check(Box::new(|m| m.copy_from_device(usize::MAX, &mut [0; 2])), "runs outside");
    }

    #[test]
    fn bad_windows_are_refused_with_the_file_named() {
        let file = tempfile();
        file.set_len(8192).expect("size");
        let err = Mmio::map_file(&file, 100, 4096).expect_err("unaligned offset").to_string();
        assert!(err.contains("peerless-mmio") && err.contains("0x64"), "{err}");
        let err = Mmio::map_file(&file, 0, 0).expect_err("empty").to_string();
        assert!(err.contains("non-zero length"), "{err}");
        let read_only = std::fs::File::open("/proc/self/status").expect("open");
        let err = Mmio::map_file(&read_only, 0, 4096).expect_err("not mappable").to_string();
        assert!(err.contains("/proc/") && err.contains("mmap"), "{err}");
    }
}
