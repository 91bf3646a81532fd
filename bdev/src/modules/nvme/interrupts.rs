//! Completion interrupts for reactors that sleep (interrupt and adaptive mode). Over
//! VFIO each I/O completion queue gets an MSI-X vector of its own, created with interrupts
//! enabled (NVMe Base 2.0 §5.3, Create I/O Completion Queue: IEN and IV), and each vector
//! signals an eventfd the queue's reactor watches. I/O queue N takes vector N; vector 0
//! belongs to the admin queue, which is polled and signals nothing. A queue beyond the
//! vectors the device has, and every queue over uio (INTx only, one line shared by every
//! queue, so one thread could clear another's wake), stays polled and keeps its reactor
//! awake while it has commands in flight.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use super::pci::PciFunction;

pub struct CompletionInterrupts {
    /// Indexed by vector; vector 0 (the admin queue's) has none.
    eventfds: Vec<Option<File>>,
    /// Wakes that found a vector signalled, for the controller's statistics.
    signalled: AtomicU64,
}

impl CompletionInterrupts {
    /// Switches MSI-X on with one eventfd per I/O queue the controller granted, as far as
    /// the device's vectors go. None over uio, or when the device has no vector to spare.
    pub fn enable(pci: &PciFunction, io_queues: u16) -> Result<Option<CompletionInterrupts>, String> {
        let Some(device) = pci.vfio_device() else { return Ok(None) };
        let available = device.msix_vectors().map_err(|err| err.to_string())?;
        let vectors = usize::try_from(available).unwrap_or(usize::MAX).min(usize::from(io_queues) + 1);
        if vectors < 2 {
            return Ok(None);
        }
        let mut eventfds = vec![None];
        for _ in 1..vectors {
            let fd: OwnedFd = peerless_core::mem::pci::eventfd(pci.bdf()).map_err(|err| err.to_string())?;
            eventfds.push(Some(File::from(fd)));
        }
        let borrowed: Vec<_> = eventfds.iter().map(|fd| fd.as_ref().map(File::as_fd)).collect();
        device.enable_msix(&borrowed).map_err(|err| err.to_string())?;
        Ok(Some(CompletionInterrupts { eventfds, signalled: AtomicU64::new(0) }))
    }

    /// The vector I/O queue `qid` raises, with the eventfd it signals, if it has one.
    pub fn for_queue(&self, qid: u16) -> Option<(u16, &File)> {
        self.eventfds.get(usize::from(qid))?.as_ref().map(|fd| (qid, fd))
    }

    /// Vectors in use, the admin queue's included.
    pub fn vectors(&self) -> usize {
        self.eventfds.len()
    }

    pub fn signalled(&self) -> u64 {
        self.signalled.load(Ordering::Relaxed)
    }

    /// Clears `qid`'s eventfd; true when it had been signalled since the last clear.
    pub fn clear(&self, qid: u16) -> bool {
        let Some((_, mut fd)) = self.for_queue(qid) else { return false };
        let mut count = [0u8; 8];
        // Nonblocking: WouldBlock means no interrupt since the last read.
        let signalled = matches!(fd.read(&mut count), Ok(8));
        if signalled {
            self.signalled.fetch_add(1, Ordering::Relaxed);
        }
        signalled
    }

    /// MSI-X off, before the device is closed or handed back.
    pub fn disable(&self, pci: &PciFunction) {
        if let Some(device) = pci.vfio_device() {
            if let Err(err) = device.disable_msix() {
                peerless_core::log_warn!("nvme {}: {err}", pci.bdf());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_eventfds(vectors: usize) -> CompletionInterrupts {
        let mut eventfds = vec![None];
        for _ in 1..vectors {
            eventfds.push(Some(File::from(peerless_core::mem::pci::eventfd("test").unwrap())));
        }
        CompletionInterrupts { eventfds, signalled: AtomicU64::new(0) }
    }

    #[test]
    fn queue_n_takes_vector_n_and_the_admin_vector_is_nobody_s() {
        let interrupts = with_eventfds(3);
        assert!(interrupts.for_queue(0).is_none());
        assert_eq!(interrupts.for_queue(1).map(|(vector, _)| vector), Some(1));
        assert_eq!(interrupts.for_queue(2).map(|(vector, _)| vector), Some(2));
        // Past the vectors: polled.
        assert!(interrupts.for_queue(3).is_none());
        assert_eq!(interrupts.vectors(), 3);
    }

    #[test]
    fn clearing_reports_a_signal_once_and_counts_it() {
        use std::io::Write;
        let interrupts = with_eventfds(2);
        assert!(!interrupts.clear(1), "nothing signalled yet");
        let (_, mut fd) = interrupts.for_queue(1).unwrap();
        // Two interrupts before the reactor looks: one wake, one clear.
        fd.write_all(&1u64.to_ne_bytes()).unwrap();
        fd.write_all(&1u64.to_ne_bytes()).unwrap();
        assert!(interrupts.clear(1));
        assert!(!interrupts.clear(1), "the clear left the eventfd signalled");
        assert_eq!(interrupts.signalled(), 1);
        assert!(!interrupts.clear(0) && !interrupts.clear(7), "queues without a vector have nothing to clear");
    }
}
