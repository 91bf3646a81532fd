//! Register-level steps of bring-up and reset: disabling the controller and waiting on
//! CSTS.RDY (NVMe Base 2.0 §3.5.1, §3.1.3.6), and the Controller Memory Buffer's window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use peerless_core::mem::pci::BarMemory;

use super::pci::PciFunction;
use super::spec::{cc, cmbmsc, csts, reg, Cap, CmbLayout};

/// Finds the Controller Memory Buffer, turns its memory space on at the BAR's own bus
/// address and registers it as P2P memory (NVMe Base 2.0 §8.2.1). A controller takes
/// PRPs as CMB addresses only when they fall in CBA's window: given any other address
/// for its own BAR (an IOMMU mapping of it, say) it DMAs to host memory instead and the
/// data is silently wrong, so the bus address written here is the one PRPs carry.
pub(super) fn enable_cmb(pci: &PciFunction, cap: Cap) -> Result<Option<BarMemory>, String> {
    let bar = pci.bar0();
    if cap.cmb_gated() {
        // High dword first: the controller latches CBA when the low dword sets CMSE.
        bar.write32(reg::CMBMSC + 4, 0);
        bar.write32(reg::CMBMSC, cmbmsc::CRE as u32);
    }
    let Some(layout) = CmbLayout::decode(bar.read32(reg::CMBLOC), bar.read32(reg::CMBSZ)) else {
        return Ok(None);
    };
    let name = format!("cmb {}", pci.bdf());
    if !layout.data {
        peerless_core::log_notice!("nvme {}: its CMB cannot hold data (CMBSZ lacks RDS and WDS); not used", pci.bdf());
        return Ok(None);
    }
    let mapping = if layout.bar == 0 { pci.bar0().clone() } else { Arc::new(pci.map_bar(layout.bar)?) };
    let bar_bus = pci.bar_bus_address(u64::from(layout.bar))?;
    let cba = bar_bus + layout.offset;
    if cap.cmb_gated() {
        let value = cba | cmbmsc::CMSE | cmbmsc::CRE;
        bar.write32(reg::CMBMSC + 4, (value >> 32) as u32);
        bar.write32(reg::CMBMSC, value as u32);
        if bar.read32(reg::CMBSTS) & 1 != 0 {
            return Err(format!("{}: the controller refused CMB address {cba:#x} (CMBSTS.CBAI)", pci.bdf()));
        }
    }
    let (offset, size) = (layout.offset as usize, layout.size as usize);
    let memory =
        BarMemory::register(&name, mapping, offset, size, cba).map_err(|err| format!("{}: CMB: {err}", pci.bdf()))?;
    peerless_core::log_notice!(
        "nvme {}: CMB of {} MiB in BAR{} at bus address {cba:#x}, a P2P provider",
        pci.bdf(),
        size >> 20,
        layout.bar
    );
    Ok(Some(memory))
}

pub(super) fn disable(pci: &PciFunction, cap: Cap) -> Result<(), String> {
    let bar = pci.bar0();
    let cc_value = bar.read32(reg::CC);
    if cc_value & cc::EN != 0 {
        bar.write32(reg::CC, cc_value & !cc::EN);
    }
    wait_ready(pci, cap, false)
}

/// Waits for CSTS.RDY to equal `ready`, as long as CAP.TO allows.
pub(super) fn wait_ready(pci: &PciFunction, cap: Cap, ready: bool) -> Result<(), String> {
    let bar = pci.bar0();
    let timeout = Duration::from_millis(cap.ready_timeout_ms().max(500));
    let deadline = Instant::now() + timeout;
    loop {
        let status = bar.read32(reg::CSTS);
        if status == u32::MAX {
            return Err(format!("{}: the device is gone (CSTS reads all ones)", pci.bdf()));
        }
        if ready && status & csts::CFS != 0 {
            return Err(format!("{}: controller fatal status while enabling", pci.bdf()));
        }
        if (status & csts::RDY != 0) == ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            let what = if ready { "ready" } else { "disabled" };
            return Err(format!("{}: the controller did not become {what} within {timeout:?} (CAP.TO)", pci.bdf()));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}
