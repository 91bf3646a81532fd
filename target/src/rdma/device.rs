//! RDMA devices as the transport uses them: the RDMA CM's event channel and device list
//! (opened at the first listen, so a transport can be created on a host without RDMA),
//! and per device one protection domain holding the data buffer pool, registered once.

use std::sync::Arc;

use parking_lot::Mutex;
use peerless_core::mem::Seg;
use spdk_sys::rdma::{Access, CmDevices, CmId, Context, DeviceAttr, EventChannel, Mr, Pd, Sge};

use crate::nvmf::buffers::DataPool;

/// One RDMA device: its protection domain and the pool's memory registered in it.
pub struct Device {
    pub context: Context,
    pub pd: Arc<Pd>,
    pub attr: DeviceAttr,
    /// The pool's regions (small and large buffers), registered when the device opened.
    pool_mrs: Vec<Mr>,
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
        Ok(Device { context, pd, attr, pool_mrs })
    }

    pub fn name(&self) -> String {
        self.context.name()
    }

    /// The scatter-gather entry for a segment of a pool buffer; None for memory the
    /// device was not given (an admin command's reply, P2P memory), which the caller
    /// bounces through pool buffers.
    pub fn sge(&self, seg: &Seg) -> Option<Sge> {
        let (addr, len) = (seg.addr() as u64, u32::try_from(seg.len()).ok()?);
        self.pool_mrs
            .iter()
            .find(|mr| addr >= mr.addr() && addr + u64::from(len) <= mr.addr() + mr.len() as u64)
            .map(|mr| Sge { addr, len, lkey: mr.lkey() })
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
