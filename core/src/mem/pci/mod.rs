//! The low-level pieces of a user-space PCI driver (the bdev module `nvme`), behind safe
//! functions: MMIO windows over BARs ([`Mmio`]), VFIO containers and devices
//! ([`VfioContainer`], [`VfioDevice`]), physical addresses for uio_pci_generic
//! ([`virt_to_phys`], [`PhysTable`]), and notifications of Host memory coming and going
//! ([`watch_host_memory`]) that keep an IOMMU or a physical-address table in step with the
//! iobuf pools and DMA buffers.
//!
//! A driver using VFIO opens a container and its devices, then subscribes either the
//! container itself (`watch_host_memory(container.clone())`: every registered Host region
//! mapped at IOVA = VA, the bus address the registry already gives plain DMA memory; needs
//! an IOMMU at least 47 bits wide) or an [`IovaTable`] (IOVAs from a window below 2^39,
//! for narrower IOMMUs such as QEMU's default intel-iommu; PRPs from
//! [`IovaTable::translate`]). A driver using uio_pci_generic subscribes a [`PhysTable`]
//! and builds PRPs from [`PhysTable::translate`].

mod bar_memory;
mod iova_table;
mod mmio;
mod page_table;
mod pagemap;
mod phys_table;
mod sigbus;
mod sysfs;
mod vfio;
mod vfio_irq;
mod vfio_sys;
pub(crate) mod watch;

pub use bar_memory::{is_bar_memory, BarMemory, BAR_MEMORY_GRANULE_BYTES};
pub use iova_table::{IovaTable, IOVA_WINDOW_END, IOVA_WINDOW_START};
pub use mmio::Mmio;
pub use pagemap::virt_to_phys;
pub use phys_table::PhysTable;
pub use sigbus::replaced_windows;
pub use vfio::{VfioContainer, VfioDevice};
pub use vfio_irq::eventfd;
pub use watch::{watch_host_memory, HostMemListener, HostMemWatch};

/// The system page size (4096 on x86-64).
pub(crate) fn page_bytes() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf reads a constant of the running system.
    *PAGE.get_or_init(|| usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver shares these across reactor threads (a BAR's doorbells, one container
    /// for all controllers, one physical-address table).
    #[test]
    fn shared_handles_are_send_and_sync() {
        fn shared<T: Send + Sync>() -> &'static str {
            std::any::type_name::<T>()
        }
        for name in [
            shared::<Mmio>(),
            shared::<VfioContainer>(),
            shared::<VfioDevice>(),
            shared::<PhysTable>(),
            shared::<IovaTable>(),
        ] {
            assert!(name.contains("pci"), "{name}");
        }
    }
}
