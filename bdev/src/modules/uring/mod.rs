//! bdev_uring: files and block devices through io_uring, opened with O_DIRECT (buffered,
//! with a warning, where the filesystem refuses it), one ring per thread. The same engine
//! answers SPDK's `bdev_aio_create`, so SPDK configs written for the aio module load
//! unchanged (DESIGN.md: file I/O goes through io_uring, a reactor never blocks).
//!
//! Every buffer goes through plain (non-fixed) readv/writev: registered buffers would
//! pin pool memory long-term, which the kernel refuses for P2P pages anyway; the bdev
//! accepts host memory only, so the layer bounces anything else before it gets here.

mod channel;
#[allow(unsafe_code)]
mod sys;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::sync::Arc;

use peerless_core::reactor::ThreadCtx;
use peerless_core::rpc::{Registry, RpcError, StateMask};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::bdev::{Bdev, BdevChannelOps, BdevInfo};
use crate::error::BdevError;
use crate::io::IoType;
use crate::manager::BdevManager;
use crate::modules::null::parse_uuid;
use crate::modules::BdevModule;

pub const URING_PRODUCT_NAME: &str = "URING bdev";
pub const AIO_PRODUCT_NAME: &str = "AIO disk";
/// Block size of a regular file when the caller names none (SPDK's default).
const FILE_DEFAULT_BLOCK_BYTES: u32 = 512;
/// Logical block size assumed when sysfs cannot tell a device's.
const SECTOR_BYTES: u32 = 512;

pub struct UringModule;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UringCreate {
    filename: String,
    name: String,
    #[serde(default)]
    block_size: u32,
    #[serde(default)]
    uuid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AioCreate {
    name: String,
    filename: String,
    #[serde(default)]
    block_size: u32,
    #[serde(default)]
    readonly: bool,
    #[serde(default)]
    fallocate: bool,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    nowait: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

/// How the bdev was asked for, which decides its RPC names, product name and features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Uring,
    /// SPDK's aio options: `fallocate` enables unmap and write_zeroes, `nowait` is
    /// recorded (and saved) but I/O is not issued with RWF_NOWAIT.
    Aio {
        readonly: bool,
        fallocate: bool,
        nowait: bool,
    },
}

/// What `bdev_uring_create` / `bdev_aio_create` ask for.
#[derive(Clone, Debug)]
pub struct UringConfig {
    pub name: String,
    pub filename: String,
    /// 0: the device's logical block size, or 512 for a regular file.
    pub block_size: u32,
    pub uuid: Option<String>,
    pub flavor: Flavor,
}

pub struct UringBdev {
    info: BdevInfo,
    file: Arc<File>,
    filename: String,
    /// O_DIRECT's alignment for buffer addresses and lengths; None when buffered.
    direct_align: Option<usize>,
    block_size_override: bool,
    flavor: Flavor,
}

impl BdevModule for UringModule {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn register_rpcs(&self, registry: &mut Registry, manager: &BdevManager) {
        let bdevs = manager.clone();
        registry.method("bdev_uring_create", StateMask::RUNTIME, move |_, params: UringCreate, responder| {
            let config = UringConfig {
                name: params.name,
                filename: params.filename,
                block_size: params.block_size,
                uuid: params.uuid,
                flavor: Flavor::Uring,
            };
            match create(&bdevs, config) {
                Ok(name) => responder.ok(name),
                Err(err) => responder.err(err),
            }
        });
        let bdevs = manager.clone();
        registry.method("bdev_aio_create", StateMask::RUNTIME, move |_, params: AioCreate, responder| {
            let config = UringConfig {
                name: params.name,
                filename: params.filename,
                block_size: params.block_size,
                uuid: params.uuid,
                flavor: Flavor::Aio { readonly: params.readonly, fallocate: params.fallocate, nowait: params.nowait },
            };
            match create(&bdevs, config) {
                Ok(name) => responder.ok(name),
                Err(err) => responder.err(err),
            }
        });
        for (method, product) in [("bdev_uring_delete", URING_PRODUCT_NAME), ("bdev_aio_delete", AIO_PRODUCT_NAME)] {
            let bdevs = manager.clone();
            registry.method(method, StateMask::RUNTIME, move |ctx: &mut ThreadCtx, params: NameParams, responder| {
                match bdevs.get(&params.name) {
                    Ok(bdev) if bdev.info().product_name == product => {
                        match bdevs.unregister(Some(ctx), &params.name) {
                            Ok(()) => responder.ok_true(),
                            Err(err) => responder.err(err.into()),
                        }
                    }
                    Ok(_) => responder.err(RpcError::no_such_device(format!("'{}' is not a {product}", params.name))),
                    Err(err) => responder.err(err.into()),
                }
            });
        }
    }
}

fn os_error(what: &str, filename: &str, err: &std::io::Error) -> RpcError {
    let errno = nix::errno::Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO));
    RpcError::errno(errno, format!("{what} '{filename}': {err}"))
}

/// Opens the file, sizes it and registers the bdev; returns its name.
pub fn create(manager: &BdevManager, config: UringConfig) -> Result<String, RpcError> {
    if manager.get(&config.name).is_ok() {
        return Err(BdevError::Exists(config.name).into());
    }
    let bdev = UringBdev::open(config)?;
    let name = bdev.info.name.clone();
    manager.register(Arc::new(bdev))?;
    Ok(name)
}

impl UringBdev {
    /// Opens and sizes the file, without registering the bdev.
    pub fn open(config: UringConfig) -> Result<UringBdev, RpcError> {
        let uuid = parse_uuid(config.uuid.as_deref())?;
        let readonly = matches!(config.flavor, Flavor::Aio { readonly: true, .. });
        let open = |direct: bool| {
            let mut options = OpenOptions::new();
            options.read(true).write(!readonly);
            if direct {
                options.custom_flags(libc::O_DIRECT);
            }
            options.open(&config.filename)
        };
        let (file, mut direct) = match open(true) {
            Ok(file) => (file, true),
            // tmpfs and some FUSE filesystems refuse O_DIRECT at open.
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                (open(false).map_err(|err| os_error("cannot open", &config.filename, &err))?, false)
            }
            Err(err) => return Err(os_error("cannot open", &config.filename, &err)),
        };
        let metadata = file.metadata().map_err(|err| os_error("cannot stat", &config.filename, &err))?;
        let is_block_device = metadata.file_type().is_block_device();
        if !is_block_device && !metadata.is_file() {
            return Err(RpcError::invalid_params(format!(
                "'{}' is neither a file nor a block device",
                config.filename
            )));
        }
        // O_DIRECT needs buffers and lengths aligned to the logical block size of the device
        // that holds the data: the device itself, or the filesystem's device for a file.
        let device_block = logical_block_size(if is_block_device { metadata.rdev() } else { metadata.dev() });
        let block_size = match (config.block_size, is_block_device) {
            (0, true) => device_block,
            (0, false) => FILE_DEFAULT_BLOCK_BYTES,
            (given, _) => given,
        };
        if is_block_device && block_size < device_block {
            return Err(RpcError::invalid_params(format!(
                "block_size {block_size} is smaller than the device's logical block size {device_block}"
            )));
        }
        let mut file = file;
        if direct && block_size < device_block {
            peerless_core::log_warn!(
                "uring '{}': block size {block_size} is below {device_block}, the alignment O_DIRECT needs on '{}'; \
             using buffered I/O",
                config.name,
                config.filename
            );
            file = open(false).map_err(|err| os_error("cannot open", &config.filename, &err))?;
            direct = false;
        } else if !direct {
            peerless_core::log_warn!(
                "uring '{}': '{}' refuses O_DIRECT; using buffered I/O (the page cache sits in the data path)",
                config.name,
                config.filename
            );
        }
        let size_bytes = if is_block_device {
            file.seek(SeekFrom::End(0)).map_err(|err| os_error("cannot size", &config.filename, &err))?
        } else {
            metadata.len()
        };
        let num_blocks = size_bytes / u64::from(block_size.max(1));
        let product_name = match config.flavor {
            Flavor::Uring => URING_PRODUCT_NAME,
            Flavor::Aio { .. } => AIO_PRODUCT_NAME,
        };
        let info = BdevInfo {
            name: config.name.clone(),
            product_name: product_name.into(),
            block_size,
            num_blocks,
            uuid,
            max_io_blocks: 0,
        };
        let bdev = UringBdev {
            info,
            file: Arc::new(file),
            filename: config.filename.clone(),
            direct_align: direct.then_some(device_block as usize),
            block_size_override: config.block_size != 0,
            flavor: config.flavor,
        };
        peerless_core::log_info!(
            "uring '{}' on '{}': {size_bytes} bytes, {}",
            config.name,
            config.filename,
            if direct { "O_DIRECT" } else { "buffered" }
        );
        Ok(bdev)
    }
}

/// A block device's logical block size from sysfs (partitions inherit their disk's).
fn logical_block_size(device: u64) -> u32 {
    let (major, minor) = (nix::sys::stat::major(device), nix::sys::stat::minor(device));
    let base = format!("/sys/dev/block/{major}:{minor}");
    [format!("{base}/queue/logical_block_size"), format!("{base}/../queue/logical_block_size")]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok()?.trim().parse::<u32>().ok())
        .filter(|size| size.is_power_of_two() && *size >= SECTOR_BYTES)
        .unwrap_or(SECTOR_BYTES)
}

impl UringBdev {
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct_align.is_some()
    }
}

impl Bdev for UringBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn supports(&self, io_type: IoType) -> bool {
        let (readonly, fallocate) = match self.flavor {
            Flavor::Uring => (false, true),
            Flavor::Aio { readonly, fallocate, .. } => (readonly, fallocate),
        };
        match io_type {
            IoType::Read | IoType::Flush | IoType::Reset => true,
            IoType::Write => !readonly,
            IoType::Unmap | IoType::WriteZeroes => !readonly && fallocate,
            IoType::Compare => false,
        }
    }

    fn create_channel(&self, ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps> {
        let me = Arc::new(self.clone_for_channel());
        match channel::UringChannel::new(ctx, me) {
            Ok(channel) => Box::new(channel),
            Err(err) => {
                peerless_core::log_error!(
                    "uring '{}': no io_uring on thread '{}' ({err}); its I/O will fail",
                    self.info.name,
                    ctx.name()
                );
                Box::new(channel::FailedChannel)
            }
        }
    }

    fn driver_specific(&self) -> Value {
        match self.flavor {
            Flavor::Uring => json!({"uring": {"filename": self.filename}}),
            Flavor::Aio { readonly, fallocate, .. } => json!({"aio": {
                "filename": self.filename, "block_size_override": self.block_size_override,
                "readonly": readonly, "fallocate": fallocate,
            }}),
        }
    }

    fn config_entry(&self) -> Option<Value> {
        let uuid = self.info.uuid.to_string();
        Some(match self.flavor {
            Flavor::Uring => json!({"method": "bdev_uring_create", "params": {
                "filename": self.filename, "name": self.info.name,
                "block_size": self.info.block_size, "uuid": uuid,
            }}),
            Flavor::Aio { readonly, fallocate, nowait } => json!({"method": "bdev_aio_create", "params": {
                "name": self.info.name, "filename": self.filename, "block_size": self.info.block_size,
                "readonly": readonly, "fallocate": fallocate, "uuid": uuid, "nowait": nowait,
            }}),
        })
    }
}

impl UringBdev {
    /// The channel's view of the bdev: the same open file, shared.
    fn clone_for_channel(&self) -> UringBdev {
        UringBdev {
            info: self.info.clone(),
            file: self.file.clone(),
            filename: self.filename.clone(),
            direct_align: self.direct_align,
            block_size_override: self.block_size_override,
            flavor: self.flavor,
        }
    }
}
