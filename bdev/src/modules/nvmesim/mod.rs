//! bdev_nvmesim: an emulated NVMe SSD with a Controller Memory Buffer, the P2P-capable
//! device. Its CMB is an emulated-CMB provider (strict by default: the CPU
//! mapping is PROT_NONE), offered as the bdev's `p2p_provider`; it accepts its own CMB's
//! domain, so the layer hands it CMB buffers as they are. Its DMA engine moves data
//! between those (or host) buffers and its media, RAM or a file (see `media`): CMB
//! bytes move only by the CMB's engine, never through a CPU mapping. Completions come
//! from a per-channel queue, optionally after a modelled latency and bandwidth.

mod channel;
mod media;
mod rpc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use peerless_core::mem::{CmbConfig, DomainId, EmulatedCmb, P2pProvider, CMB_MAX_BYTES};
use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::RpcError;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::bdev::{Bdev, BdevChannelOps, BdevInfo};
use crate::error::BdevError;
use crate::io::IoType;
use crate::manager::BdevManager;
use crate::modules::null::parse_uuid;
use channel::NvmesimChannel;
use media::Media;

pub use channel::{QUEUE_DEPTH, STAGING_BYTES};
pub use rpc::NvmesimModule;

pub const PRODUCT_NAME: &str = "NVMe simulated disk";
pub const MODULE_NAME: &str = "nvmesim";
/// CMB size when `cmb_size_mb` is not given.
pub const DEFAULT_CMB_SIZE_MB: u64 = 64;
/// RAM media is one mapping; beyond this the RPC refuses rather than fail in mmap.
pub const MAX_RAM_MEDIA_BYTES: u64 = 1 << 40;
/// Longest modelled command latency: beyond it an I/O looks lost rather than slow.
pub const MAX_LATENCY_US: u64 = 10_000_000;
const MIB: u64 = 1 << 20;

/// `bdev_nvmesim_create` parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    pub name: String,
    pub num_blocks: u64,
    pub block_size: u32,
    /// 0 makes a device without a CMB.
    #[serde(default = "default_cmb_size_mb")]
    pub cmb_size_mb: u64,
    /// A backing file (created or grown as needed); RAM when absent.
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
    /// Fixed latency added to every command; 0 leaves it unmodelled.
    #[serde(default)]
    pub latency_us: u64,
    /// Link bandwidth in MiB/s shared by a channel's commands; 0 leaves it unmodelled.
    #[serde(default)]
    pub bandwidth_mbps: u64,
    /// CPU mapping of the CMB PROT_NONE, so a stray dereference faults at once.
    #[serde(default = "default_strict")]
    pub cmb_strict: bool,
}

fn default_cmb_size_mb() -> u64 {
    DEFAULT_CMB_SIZE_MB
}

fn default_strict() -> bool {
    true
}

impl CreateParams {
    /// The minimal parameters; the rest take their RPC defaults.
    pub fn new(name: &str, num_blocks: u64, block_size: u32) -> CreateParams {
        CreateParams {
            name: name.into(),
            num_blocks,
            block_size,
            cmb_size_mb: DEFAULT_CMB_SIZE_MB,
            filename: None,
            uuid: None,
            latency_us: 0,
            bandwidth_mbps: 0,
            cmb_strict: true,
        }
    }
}

/// What every channel of one device shares.
pub(crate) struct Device {
    media: Media,
    block_size: u32,
    latency: Duration,
    bandwidth_bytes_per_sec: u64,
}

pub struct NvmesimBdev {
    info: BdevInfo,
    params: CreateParams,
    device: Arc<Device>,
    cmb: Option<EmulatedCmb>,
}

/// Builds the device (media, CMB) and registers it.
pub fn create(manager: &BdevManager, params: CreateParams) -> Result<Arc<NvmesimBdev>, RpcError> {
    let uuid = parse_uuid(params.uuid.as_deref())?;
    if manager.get(&params.name).is_ok() {
        return Err(BdevError::Exists(params.name).into());
    }
    if params.block_size < 512 || !params.block_size.is_power_of_two() {
        return Err(RpcError::invalid_params(format!("block_size {} is not a power of two >= 512", params.block_size)));
    }
    let bytes = params
        .num_blocks
        .checked_mul(u64::from(params.block_size))
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| RpcError::invalid_params("num_blocks * block_size must be 1 byte to 2^64 - 1"))?;
    if params.latency_us > MAX_LATENCY_US {
        return Err(RpcError::invalid_params(format!("latency_us is at most {MAX_LATENCY_US}")));
    }
    let cmb_bytes =
        params.cmb_size_mb.checked_mul(MIB).filter(|bytes| *bytes <= CMB_MAX_BYTES as u64).ok_or_else(|| {
            RpcError::invalid_params(format!("cmb_size_mb is at most {}", CMB_MAX_BYTES as u64 / MIB))
        })?;
    let media = match &params.filename {
        Some(path) => Media::file(PathBuf::from(path), bytes),
        None if bytes > MAX_RAM_MEDIA_BYTES => Err(format!("RAM media is at most {MAX_RAM_MEDIA_BYTES} bytes")),
        None => Media::ram(bytes),
    }
    .map_err(|why| RpcError::errno(nix::errno::Errno::EINVAL, why))?;
    let cmb = match cmb_bytes {
        0 => None,
        size => {
            let config = CmbConfig {
                strict: params.cmb_strict,
                ..CmbConfig::new(&format!("{}_cmb", params.name), size as usize)
            };
            Some(EmulatedCmb::new(config).map_err(|err| RpcError::errno(nix::errno::Errno::ENOMEM, err.to_string()))?)
        }
    };
    let device = Arc::new(Device {
        media,
        block_size: params.block_size,
        latency: Duration::from_micros(params.latency_us),
        bandwidth_bytes_per_sec: params.bandwidth_mbps.saturating_mul(MIB),
    });
    let info = BdevInfo {
        name: params.name.clone(),
        product_name: PRODUCT_NAME.into(),
        block_size: params.block_size,
        num_blocks: params.num_blocks,
        uuid,
        max_io_blocks: 0,
    };
    let bdev = Arc::new(NvmesimBdev { info, params, device, cmb });
    manager.register(bdev.clone())?;
    Ok(bdev)
}

impl NvmesimBdev {
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The device's CMB, for tests and tools that allocate buffers in it.
    pub fn cmb(&self) -> Option<&EmulatedCmb> {
        self.cmb.as_ref()
    }
}

impl Bdev for NvmesimBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn module_name(&self) -> &'static str {
        MODULE_NAME
    }

    fn supports(&self, io_type: IoType) -> bool {
        io_type != IoType::Compare
    }

    /// Its own CMB, which its DMA engine reaches; any other device memory is bounced.
    fn accepts_domain(&self, domain: DomainId) -> bool {
        self.cmb.as_ref().is_some_and(|cmb| cmb.domain() == domain)
    }

    fn p2p_provider(&self) -> Option<Arc<dyn P2pProvider>> {
        self.cmb.as_ref().map(EmulatedCmb::provider)
    }

    fn create_channel(&self, ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps> {
        Box::new(NvmesimChannel::new(ctx, &self.info.name, self.device.clone()))
    }

    fn driver_specific(&self) -> Value {
        let (size, free) = self.cmb.as_ref().map_or((0, 0), |cmb| (cmb.size_bytes(), cmb.available_bytes()));
        json!({"nvmesim": {
            "cmb_size": size,
            "cmb_free": free,
            "cmb_strict": self.cmb.as_ref().is_some_and(EmulatedCmb::is_strict),
            "filename": self.device.media.path().map(|path| path.display().to_string()),
            "latency_us": self.params.latency_us,
            "bandwidth_mbps": self.params.bandwidth_mbps,
        }})
    }

    fn config_entry(&self) -> Option<Value> {
        let params = &self.params;
        let mut entry = json!({
            "name": self.info.name, "num_blocks": self.info.num_blocks, "block_size": self.info.block_size,
            "cmb_size_mb": params.cmb_size_mb, "uuid": self.info.uuid.to_string(),
            "latency_us": params.latency_us, "bandwidth_mbps": params.bandwidth_mbps, "cmb_strict": params.cmb_strict,
        });
        if let Some(filename) = &params.filename {
            entry["filename"] = json!(filename);
        }
        Some(json!({"method": "bdev_nvmesim_create", "params": entry}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_take_defaults_and_refuse_unknown_keys() {
        let params: CreateParams =
            serde_json::from_value(json!({"name": "Nvme0", "num_blocks": 8, "block_size": 512})).unwrap();
        assert_eq!((params.cmb_size_mb, params.cmb_strict, params.latency_us), (DEFAULT_CMB_SIZE_MB, true, 0));
        assert!(serde_json::from_value::<CreateParams>(
            json!({"name": "x", "num_blocks": 8, "block_size": 512, "cmb": 1})
        )
        .is_err());
    }

    #[test]
    fn create_checks_sizes_and_reports_its_cmb() {
        let manager = BdevManager::new();
        let refuse = |params: CreateParams| assert!(create(&manager, params).is_err());
        refuse(CreateParams { block_size: 1000, ..CreateParams::new("Bad", 8, 512) });
        refuse(CreateParams::new("Bad", u64::MAX, 4096));
        refuse(CreateParams { cmb_size_mb: u64::MAX, ..CreateParams::new("Bad", 8, 512) });
        refuse(CreateParams { latency_us: MAX_LATENCY_US + 1, ..CreateParams::new("Bad", 8, 512) });
        let bdev = create(&manager, CreateParams { cmb_size_mb: 2, ..CreateParams::new("Nvme0", 64, 512) }).unwrap();
        let cmb = bdev.cmb().unwrap();
        assert!(cmb.is_strict());
        assert!(bdev.accepts_domain(cmb.domain()));
        assert_eq!(bdev.driver_specific()["nvmesim"]["cmb_size"], 2 * MIB);
        assert_eq!(bdev.config_entry().unwrap()["params"]["cmb_size_mb"], 2);
        refuse(CreateParams::new("Nvme0", 64, 512));
        let plain = create(&manager, CreateParams { cmb_size_mb: 0, ..CreateParams::new("Nvme1", 64, 512) }).unwrap();
        assert!(plain.p2p_provider().is_none());
        assert!(!plain.accepts_domain(cmb.domain()), "another device's CMB is not reachable");
        manager.unregister_by_name(None, "Nvme0", MODULE_NAME).unwrap();
        assert!(manager.unregister_by_name(None, "Nvme0", MODULE_NAME).is_err());
    }
}
