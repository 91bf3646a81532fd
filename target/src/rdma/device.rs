//! RDMA devices as the transport uses them: the RDMA CM's event channel and device list
//! (opened at the first listen, so a transport can be created on a host without RDMA),
//! and per device one protection domain holding the data buffer pool, registered once.
//!
//! P2P: the NIC places data in device memory itself when that memory is registered with
//! it. A namespace's provider is probed once per device, at the first command that would
//! use it: its dma-buf export, then `ibv_reg_dmabuf_mr`. Each outcome is logged; a
//! provider the device cannot register gets host memory for its commands on that device
//! (counted as a P2P fallback), never a copy through the CPU.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use peerless_core::mem::{DomainId, P2pProvider, Seg};
use spdk_sys::rdma::{Access, CmDevices, CmId, Context, DeviceAttr, EventChannel, Mr, Pd, Sge};

use crate::nvmf::buffers::DataPool;
use crate::nvmf::qpair::NicReach;

/// What probing a P2P provider on a device found.
struct P2pRegistration {
    domain: DomainId,
    /// Dead once the provider is gone: its addresses may then be reused by other memory,
    /// so its region must no longer match any segment.
    provider: Weak<dyn P2pProvider>,
    /// The provider's memory as the NIC reaches it; None when it cannot.
    mr: Option<Mr>,
}

/// One RDMA device: its protection domain and the pool's memory registered in it.
pub struct Device {
    pub context: Context,
    pub pd: Arc<Pd>,
    pub attr: DeviceAttr,
    /// The pool's regions (small and large buffers), registered when the device opened.
    pool_mrs: Vec<Mr>,
    /// P2P providers probed so far, each once.
    p2p: Mutex<Vec<P2pRegistration>>,
}

impl Device {
    fn open(context: Context, pool: &'static DataPool) -> Result<Device, String> {
        let name = context.name();
        let attr = context.query_device().map_err(|err| format!("{name}: {err}"))?;
        let pd = Pd::new(&context).map_err(|err| format!("{name}: {err}"))?;
        // The host's data lands in pool buffers by RDMA READ (local write) and leaves them
        // by RDMA WRITE (local read, always allowed); the host never reaches them itself.
        let mut pool_mrs = Vec::new();
        for region in pool.rdma_regions() {
            let mr = pd.register(Arc::new(region), Access::LOCAL_WRITE).map_err(|err| format!("{name}: {err}"))?;
            pool_mrs.push(mr);
        }
        let registered: usize = pool_mrs.iter().map(Mr::len).sum();
        peerless_core::log_notice!(
            "RDMA device {name}: {} MiB of data buffers registered ({} regions)",
            registered >> 20,
            pool_mrs.len()
        );
        Ok(Device { context, pd, attr, pool_mrs, p2p: Mutex::new(Vec::new()) })
    }

    pub fn name(&self) -> String {
        self.context.name()
    }

    /// The scatter-gather entry for a segment of a pool buffer; None for memory the
    /// device was not given (an admin command's reply, P2P memory), which the caller
    /// bounces through pool buffers.
    pub fn sge(&self, seg: &Seg) -> Option<Sge> {
        let (addr, len) = (seg.addr() as u64, u32::try_from(seg.len()).ok()?);
        let covers = |mr: &&Mr| addr >= mr.addr() && addr + u64::from(len) <= mr.addr() + mr.len() as u64;
        if let Some(mr) = self.pool_mrs.iter().find(covers) {
            return Some(Sge { addr, len, lkey: mr.lkey() });
        }
        // Only commands of a P2P namespace get here; host buffers matched above.
        let p2p = self.p2p.lock();
        p2p.iter()
            .filter(|probed| probed.provider.strong_count() > 0)
            .filter_map(|probed| probed.mr.as_ref())
            .find(covers)
            .map(|mr| Sge { addr, len, lkey: mr.lkey() })
    }

    /// Registers a provider's memory with this device if it can be, and says what
    /// happened, for the log.
    fn probe(&self, provider: &dyn P2pProvider) -> (Option<Mr>, String) {
        let export = match provider.export_dma_buf() {
            Ok(export) => export,
            Err(why) => return (None, format!("no dma-buf: {why}")),
        };
        let len = export.len;
        // The NIC names the memory by the addresses segments use, so an SGE is a segment.
        match self.pd.register_dmabuf(export.fd, 0, len, export.seg_base as u64, Access::LOCAL_WRITE) {
            Ok(mr) => (Some(mr), format!("its dma-buf ({} MiB) registered", len >> 20)),
            Err(err) => (None, format!("a dma-buf of {} MiB, which the device cannot register: {err}", len >> 20)),
        }
    }
}

impl NicReach for Device {
    fn reaches(&self, provider: &Arc<dyn P2pProvider>) -> bool {
        let mut probed = self.p2p.lock();
        probed.retain(|known| known.provider.strong_count() > 0);
        if let Some(known) = probed.iter().find(|known| known.domain == provider.domain()) {
            return known.mr.is_some();
        }
        let (mr, outcome) = self.probe(provider.as_ref());
        let placement = if mr.is_some() {
            "the NIC places its namespaces' data there"
        } else {
            "its namespaces' data over this device goes to host memory (counted in p2p_fallbacks)"
        };
        peerless_core::log_notice!(
            "RDMA device {}, P2P provider '{}': {outcome}; {placement}",
            self.name(),
            provider.name()
        );
        let reaches = mr.is_some();
        probed.push(P2pRegistration { domain: provider.domain(), provider: Arc::downgrade(provider), mr });
        reaches
    }
}

/// What the first listener opens and every later one shares.
pub struct Cm {
    pub channel: Arc<EventChannel>,
    pub devices: Arc<CmDevices>,
    /// Devices by name: a protection domain is made (and the pool registered in it) once
    /// per device, for all poll groups.
    opened: Mutex<Vec<Arc<Device>>>,
    pool: &'static DataPool,
}

impl Cm {
    pub fn open(pool: &'static DataPool) -> Result<Cm, String> {
        let channel = EventChannel::new().map_err(|err| err.to_string())?;
        let devices = CmDevices::open().map_err(|err| err.to_string())?;
        if devices.is_empty() {
            return Err("no RDMA device (ibv_devices lists none)".into());
        }
        // Every device's protection domain gets the pool now, before any connection.
        let mut opened = Vec::new();
        for context in devices.contexts() {
            opened.push(Arc::new(Device::open(context, pool)?));
        }
        Ok(Cm { channel, devices, opened: Mutex::new(opened), pool })
    }

    /// The device a connection's id is on, opened at its first connection.
    pub fn device_of(&self, id: &CmId) -> Result<Arc<Device>, String> {
        let context = id.context(&self.devices).map_err(|err| err.to_string())?;
        let name = context.name();
        let mut opened = self.opened.lock();
        if let Some(device) = opened.iter().find(|device| device.name() == name) {
            return Ok(device.clone());
        }
        let device = Arc::new(Device::open(context, self.pool)?);
        opened.push(device.clone());
        Ok(device)
    }

    /// Devices opened so far (for `nvmf_get_stats`).
    pub fn opened(&self) -> Vec<Arc<Device>> {
        self.opened.lock().clone()
    }
}
