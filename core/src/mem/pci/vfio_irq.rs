//! A VFIO device's MSI-X vectors as eventfds (Linux Documentation/driver-api/vfio.rst,
//! `VFIO_DEVICE_SET_IRQS`): the kernel's handler for a vector signals its eventfd, which a
//! reactor sleeping in epoll wakes on. Over uio_pci_generic there is only INTx, shared
//! by every queue, so that route stays polled.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::super::{Error, Result};
use super::vfio::VfioDevice;
use super::vfio_sys::*;

/// A nonblocking eventfd; read it to clear it. `bdf` names the device in an error.
pub fn eventfd(bdf: &str) -> Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a fresh descriptor.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(Error::Pci(format!("{bdf}: eventfd: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: `raw` is the descriptor eventfd just returned; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

impl VfioDevice {
    /// How many MSI-X vectors the device has (0 when it has no MSI-X capability).
    pub fn msix_vectors(&self) -> Result<u32> {
        let mut info =
            VfioIrqInfo { argsz: argsz::<VfioIrqInfo>(), index: VFIO_PCI_MSIX_IRQ_INDEX, ..Default::default() };
        // SAFETY: GET_IRQ_INFO writes at most argsz bytes of `vfio_irq_info`.
        unsafe { ioctl_ptr(self.fd.as_fd(), VFIO_DEVICE_GET_IRQ_INFO, &mut info) }
            .map_err(|e| Error::Pci(format!("{}: VFIO_DEVICE_GET_IRQ_INFO (MSI-X): {e}", self.bdf)))?;
        Ok(info.count)
    }

    /// Switches MSI-X on with one entry of `eventfds` per vector from 0: vector N signals
    /// the Nth eventfd, or nothing where that is None. Linux 6.1 sizes the vector table
    /// when MSI-X is switched on, so every vector the driver will use is named here.
    pub fn enable_msix(&self, eventfds: &[Option<BorrowedFd<'_>>]) -> Result<()> {
        let count = u32::try_from(eventfds.len()).map_err(|_| Error::Pci(format!("{}: too many vectors", self.bdf)))?;
        if count == 0 {
            return Err(Error::Pci(format!("{}: MSI-X with no vectors", self.bdf)));
        }
        // The header, then one i32 per vector: built in u32 words so the header is aligned.
        let header_words = size_of::<VfioIrqSetHeader>() / 4;
        let mut words = vec![0u32; header_words + eventfds.len()];
        let header = VfioIrqSetHeader {
            argsz: (words.len() * 4) as u32,
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index: VFIO_PCI_MSIX_IRQ_INDEX,
            start: 0,
            count,
        };
        words[..header_words].copy_from_slice(&[header.argsz, header.flags, header.index, header.start, header.count]);
        for (word, fd) in words[header_words..].iter_mut().zip(eventfds) {
            // -1 leaves the vector without a trigger.
            *word = fd.map_or(-1, |fd| fd.as_raw_fd()) as u32;
        }
        // SAFETY: SET_IRQS reads argsz bytes: the header and `count` eventfds, all of them
        // in `words`, which is exactly argsz long.
        unsafe { ioctl_ptr(self.fd.as_fd(), VFIO_DEVICE_SET_IRQS, words.as_mut_slice()) }
            .map_err(|e| Error::Pci(format!("{}: VFIO_DEVICE_SET_IRQS (MSI-X, {count} vectors): {e}", self.bdf)))?;
        Ok(())
    }

    /// Switches MSI-X off; its eventfds are signalled no more.
    pub fn disable_msix(&self) -> Result<()> {
        let mut header = VfioIrqSetHeader {
            argsz: argsz::<VfioIrqSetHeader>(),
            flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            index: VFIO_PCI_MSIX_IRQ_INDEX,
            start: 0,
            count: 0,
        };
        // SAFETY: SET_IRQS with DATA_NONE and count 0 reads only the header, argsz bytes.
        unsafe { ioctl_ptr(self.fd.as_fd(), VFIO_DEVICE_SET_IRQS, &mut header) }
            .map_err(|e| Error::Pci(format!("{}: VFIO_DEVICE_SET_IRQS (MSI-X off): {e}", self.bdf)))?;
        Ok(())
    }
}
