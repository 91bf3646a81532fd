//! bdev_nvme over PCIe: a user-space NVMe driver. The function is reached through VFIO
//! or uio_pci_generic (`pci`), the controller brought up and its namespaces identified
//! (`controller`), and each namespace becomes a bdev `NAMEnNSID` whose channels each own
//! an I/O queue pair polled by their thread (`channel`, `queue`). Commands carry PRPs
//! (`prp`) built from the I/O's buffers, or SGLs (`sgl`) for buffer lists of several
//! segments when the controller takes them. Asynchronous events (`async_event`, `aer`)
//! add, remove and resize namespace bdevs as the controller's namespaces change;
//! `send_cmd` passes an admin command through from an RPC.

mod admin;
mod aer;
mod async_event;
mod channel;
mod controller;
mod health;
mod interrupts;
mod options;
mod pci;
mod prp;
mod queue;
mod registers;
mod reset;
mod rpc;
mod send_cmd;
mod sgl;
mod spec;
mod timeout;

use std::sync::Arc;

use peerless_core::mem::{DomainId, P2pProvider};
use peerless_core::reactor::ThreadCtx;
use serde_json::{json, Value};

use crate::bdev::{Bdev, BdevChannelOps, BdevInfo, Uuid};
use crate::io::IoType;
use channel::NvmeChannel;
pub use controller::Controller;
pub use options::config_entry as options_config_entry;
pub use pci::canonical_bdf;
pub use reset::reset_controller;
pub use rpc::NvmeModule;
pub use timeout::{TimeoutAction, Timeouts};

pub const MODULE_NAME: &str = "nvme";

/// One namespace of an attached controller.
pub struct NvmeBdev {
    info: BdevInfo,
    ctrlr_name: String,
    ctrlr: Arc<Controller>,
    nsid: u32,
    controllers: rpc::Controllers,
}

impl NvmeBdev {
    fn new(
        ctrlr_name: &str,
        ctrlr: Arc<Controller>,
        ns: &controller::Namespace,
        controllers: rpc::Controllers,
    ) -> Result<NvmeBdev, String> {
        if ns.id.metadata_bytes != 0 {
            return Err(format!(
                "namespace {} has {} bytes of metadata per block, which the driver does not serve",
                ns.nsid, ns.id.metadata_bytes
            ));
        }
        let uuid = if ns.id.nguid == [0; 16] { Uuid::random() } else { Uuid(ns.id.nguid) };
        let info = BdevInfo {
            name: format!("{ctrlr_name}n{}", ns.nsid),
            product_name: "NVMe disk".into(),
            block_size: ns.id.block_size,
            num_blocks: ns.id.size_blocks,
            uuid,
            max_io_blocks: (ctrlr.max_transfer_bytes() / ns.id.block_size as usize).min(u32::MAX as usize) as u32,
        };
        Ok(NvmeBdev { info, ctrlr_name: ctrlr_name.into(), nsid: ns.nsid, ctrlr, controllers })
    }
}

impl Bdev for NvmeBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn module_name(&self) -> &'static str {
        MODULE_NAME
    }

    fn supports(&self, io_type: IoType) -> bool {
        let id = self.ctrlr.identity();
        match io_type {
            IoType::Read | IoType::Write | IoType::Flush => true,
            IoType::Unmap => id.supports_dataset_management(),
            IoType::WriteZeroes => id.supports_write_zeroes(),
            IoType::Reset | IoType::Compare => false,
        }
    }

    /// Its controller's CMB, and another SSD's where the controller reaches it peer to
    /// peer; any other device memory is bounced by the layer.
    fn accepts_domain(&self, domain: DomainId) -> bool {
        self.ctrlr.reaches(domain)
    }

    fn p2p_provider(&self) -> Option<Arc<dyn P2pProvider>> {
        self.ctrlr.cmb_provider()
    }

    fn create_channel(&self, ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps> {
        Box::new(NvmeChannel::new(ctx, &self.info.name, self.ctrlr.clone(), self.nsid, self.info.block_size))
    }

    fn driver_specific(&self) -> Value {
        let id = self.ctrlr.identity();
        let pci = self.ctrlr.pci();
        json!({"nvme": [{
            "pci_address": pci.bdf(),
            "trid": {"trtype": "PCIe", "traddr": pci.bdf()},
            "ctrlr_data": {
                "cntlid": id.cntlid,
                "vendor_id": format!("{:#06x}", id.vid),
                "model_number": id.model,
                "serial_number": id.serial,
                "firmware_revision": id.firmware,
                "oacs": {},
            },
            "vs": {"nvme_version": format!("{}.{}", id.version >> 16, id.version >> 8 & 0xff)},
            "ns_data": {"id": self.nsid},
            "route": pci.route().as_str(),
            "max_transfer_bytes": self.ctrlr.max_transfer_bytes(),
            "bounced_commands": self.ctrlr.bounced_commands(),
            "sgl": self.ctrlr.identity().sgl_support().as_str(),
            "sgl_commands": self.ctrlr.sgl_commands(),
            "cmb": self.ctrlr.cmb().map(|cmb| json!({
                "size": cmb.size_bytes(),
                "free": cmb.available_bytes(),
                "bus_address": format!("{:#x}", cmb.bus_base()),
            })),
        }]})
    }

    fn destruct(&self) {
        rpc::forget_bdev(&self.controllers, &self.ctrlr_name, &self.info.name);
    }

    /// The controller's attach call recreates every namespace: only the first one writes it.
    fn config_entry(&self) -> Option<Value> {
        let first = self.ctrlr.namespaces().iter().map(|ns| ns.nsid).min();
        (first == Some(self.nsid)).then(|| {
            json!({"method": "bdev_nvme_attach_controller", "params": {
                "name": self.ctrlr_name, "trtype": "PCIe", "traddr": self.ctrlr.pci().bdf(),
            }})
        })
    }
}
