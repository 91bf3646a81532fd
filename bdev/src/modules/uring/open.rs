//! Opening the file behind a uring bdev: O_DIRECT where the filesystem and the block size
//! allow it, buffered (with a warning) where not; the size, the block size and the
//! alignment O_DIRECT needs.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::sync::Arc;

use peerless_core::rpc::RpcError;

use super::{Backing, Flavor, UringBdev, UringConfig, AIO_PRODUCT_NAME, URING_PRODUCT_NAME};
use crate::bdev::BdevInfo;
use crate::error::BdevError;
use crate::manager::BdevManager;
use crate::modules::null::parse_uuid;

/// Block size of a regular file when the caller names none (SPDK's default).
const FILE_DEFAULT_BLOCK_BYTES: u32 = 512;
/// Logical block size assumed when sysfs cannot tell a device's.
const SECTOR_BYTES: u32 = 512;

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

fn os_error(what: &str, filename: &str, err: &std::io::Error) -> RpcError {
    let errno = nix::errno::Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO));
    RpcError::errno(errno, format!("{what} '{filename}': {err}"))
}

fn open_file(filename: &str, readonly: bool, direct: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(!readonly);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(filename)
}

impl UringBdev {
    /// Opens and sizes the file, without registering the bdev.
    pub fn open(config: UringConfig) -> Result<UringBdev, RpcError> {
        let uuid = parse_uuid(config.uuid.as_deref())?;
        let filename = config.filename.as_str();
        let readonly = matches!(config.flavor, Flavor::Aio { readonly: true, .. });
        let (mut file, mut direct) = match open_file(filename, readonly, true) {
            Ok(file) => (file, true),
            // tmpfs before Linux 6.6 and some FUSE filesystems refuse O_DIRECT at open.
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                (open_file(filename, readonly, false).map_err(|err| os_error("cannot open", filename, &err))?, false)
            }
            Err(err) => return Err(os_error("cannot open", filename, &err)),
        };
        let metadata = file.metadata().map_err(|err| os_error("cannot stat", filename, &err))?;
        let is_block_device = metadata.file_type().is_block_device();
        if !is_block_device && !metadata.is_file() {
            return Err(RpcError::invalid_params(format!("'{filename}' is neither a file nor a block device")));
        }
        // O_DIRECT needs buffers and lengths aligned to the logical block size of the
        // device that holds the data: the device itself, or the filesystem's for a file.
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
        if direct && block_size < device_block {
            peerless_core::log_warn!(
                "uring '{}': block size {block_size} is below {device_block}, the alignment O_DIRECT needs on \
                 '{filename}'; using buffered I/O",
                config.name
            );
            file = open_file(filename, readonly, false).map_err(|err| os_error("cannot open", filename, &err))?;
            direct = false;
        } else if !direct {
            peerless_core::log_warn!(
                "uring '{}': '{filename}' refuses O_DIRECT; using buffered I/O (the page cache sits in the data path)",
                config.name
            );
        }
        let size_bytes = if is_block_device {
            file.seek(SeekFrom::End(0)).map_err(|err| os_error("cannot size", filename, &err))?
        } else {
            metadata.len()
        };
        debug_assert!(block_size > 0, "a block size of 0 was replaced by a default above");
        let num_blocks = size_bytes / u64::from(block_size);
        let product_name = match config.flavor {
            Flavor::Uring => URING_PRODUCT_NAME,
            Flavor::Aio { .. } => AIO_PRODUCT_NAME,
        };
        peerless_core::log_info!(
            "uring '{}' on '{filename}': {size_bytes} bytes, {}",
            config.name,
            if direct { "O_DIRECT" } else { "buffered" }
        );
        let info = BdevInfo {
            name: config.name.clone(),
            product_name: product_name.into(),
            block_size,
            num_blocks,
            uuid,
            max_io_blocks: 0,
        };
        let backing = Backing {
            file: Arc::new(file),
            name: config.name,
            block_size,
            direct_align: direct.then_some(device_block as usize),
            is_block_device,
        };
        Ok(UringBdev {
            info,
            backing: Arc::new(backing),
            filename: config.filename,
            block_size_override: config.block_size != 0,
            flavor: config.flavor,
        })
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
