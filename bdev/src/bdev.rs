//! What a bdev module implements: `Bdev` describes one block device, makes per-thread
//! channels and cleans up after itself when unregistered; `BdevChannelOps` is one
//! thread's way to submit I/O to it.

use std::any::Any;
use std::sync::Arc;

use peerless_core::mem::DomainId;
use peerless_core::reactor::ThreadCtx;
use serde_json::Value;

use crate::io::{BdevIo, IoType};

/// The fixed description of a bdev, in the terms `bdev_get_bdevs` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BdevInfo {
    pub name: String,
    pub product_name: String,
    pub block_size: u32,
    pub num_blocks: u64,
    pub uuid: Uuid,
    /// Largest I/O the module takes in one piece, in blocks; 0 means no limit.
    pub max_io_blocks: u32,
}

impl BdevInfo {
    pub fn size_bytes(&self) -> u64 {
        self.num_blocks * u64::from(self.block_size)
    }
}

/// A 128-bit UUID, printed in the canonical 8-4-4-4-12 form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// A random version-4 UUID from the kernel's random source.
    pub fn random() -> Uuid {
        use std::io::Read;
        let mut bytes = [0u8; 16];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut bytes));
        if read.is_err() {
            // /dev/urandom is always there on Linux; without it, time and a counter
            // still keep UUIDs of one process distinct.
            static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let unique = now.as_nanos() ^ u128::from(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            bytes.copy_from_slice(&unique.to_le_bytes());
        }
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Uuid(bytes)
    }

    pub fn parse(text: &str) -> Option<Uuid> {
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || text.len() != 36 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?;
        }
        Some(Uuid(bytes))
    }
}

impl std::fmt::Display for Uuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, byte) in self.0.iter().enumerate() {
            if matches!(index, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Uuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Uuid({self})")
    }
}

/// Hands a module its own bdev type back from the registry (`BdevManager::get_as`).
/// Implemented for every `Bdev`; modules never implement it themselves.
pub trait AsAny: Any + Send + Sync {
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl<T: Bdev> AsAny for T {
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// A block device as a module provides it. Created and destroyed on the app thread;
/// shared read-only with every thread that opens a channel.
pub trait Bdev: AsAny + Send + Sync + 'static {
    fn info(&self) -> &BdevInfo;

    /// The module that made this bdev, as its RPC methods name it (`malloc` for
    /// `bdev_malloc_delete`): a module's delete method removes only its own bdevs.
    fn module_name(&self) -> &'static str;

    fn supports(&self, io_type: IoType) -> bool;

    /// Device memory domains this bdev can DMA to and from directly. Host memory is
    /// always accepted; buffers in any other domain are bounced through host memory by
    /// the layer (and counted).
    fn accepts_domain(&self, _domain: DomainId) -> bool {
        false
    }

    /// The module's own P2P provider, if the device has memory a peer may DMA into
    /// (an NVMe CMB): the target's `p2pmem: "auto"` picks it.
    fn p2p_provider(&self) -> Option<std::sync::Arc<dyn peerless_core::mem::P2pProvider>> {
        None
    }

    /// Builds this thread's channel; runs on that thread.
    fn create_channel(&self, ctx: &mut ThreadCtx) -> Box<dyn BdevChannelOps>;

    /// Module-specific details for `bdev_get_bdevs` (`driver_specific`).
    fn driver_specific(&self) -> Value {
        Value::Object(Default::default())
    }

    /// The RPC call that recreates this bdev (`save_config`), if it has one: bdevs
    /// created by another (split parts) return None.
    fn config_entry(&self) -> Option<Value>;

    /// Names of bdevs this one is built on; they are claimed for as long as it lives.
    fn base_bdevs(&self) -> Vec<String> {
        Vec::new()
    }

    /// SPDK's `fn_table->destruct`: the module's cleanup when the bdev leaves the
    /// registry (its delete method, or shutdown), such as releasing the claim on a base.
    /// The manager calls it exactly once, after the bdev's openers were sent the
    /// hot-remove event. Channels still open keep this object alive, so what they need
    /// (memory, a device's CMB) is freed by `Drop` once they are gone, not here; they
    /// must cope with what this released (a stacked bdev's channels then fail new I/O).
    fn destruct(&self) {}
}

/// `bdev` as its module's own type, if it is one.
pub fn downcast<T: Bdev>(bdev: Arc<dyn Bdev>) -> Option<Arc<T>> {
    bdev.into_any().downcast::<T>().ok()
}

/// Why a submit did not start.
#[derive(Debug)]
pub enum SubmitError {
    /// Out of a resource (queue slots, staging memory): an expected state. The layer
    /// queues the I/O and retries it when the channel completes something.
    NoResources(Box<BdevIo>),
}

/// One thread's submission path into a bdev. Completes I/O by `BdevIo::complete`, inline
/// or later from a poller the channel registered on its thread.
pub trait BdevChannelOps {
    fn submit(&mut self, ctx: &mut ThreadCtx, io: Box<BdevIo>) -> Result<(), SubmitError>;
}
