//! The seam between the engine and the transports. A transport owns its wire codec,
//! its sockets or queue pairs, flow control and data placement; it never decides NVMe
//! semantics. The engine owns those, per queue, in [`super::qpair::Qpair`].
//!
//! The options every transport shares are SPDK's `spdk_nvmf_transport_opts`, with
//! SPDK's names and defaults; a transport decodes its own options from the same
//! `nvmf_create_transport` parameters.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use peerless_core::mem::IoBufCache;
use peerless_core::reactor::ThreadCtx;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::buffers::DataPool;
use super::poll_group::{NsTables, Retired};
use super::qpair::Qpair;
use super::NvmfTarget;

pub const DEFAULT_MAX_QUEUE_DEPTH: u16 = 128;
pub const DEFAULT_MAX_IO_QPAIRS_PER_CTRLR: u16 = 127;
pub const DEFAULT_IN_CAPSULE_DATA_SIZE: u32 = 4096;
pub const DEFAULT_MAX_IO_SIZE: u32 = 131_072;
pub const DEFAULT_IO_UNIT_SIZE: u32 = 131_072;
pub const DEFAULT_MAX_AQ_DEPTH: u32 = 128;
/// SPDK's NVMe/TCP default: the shared data buffers of a transport.
pub const DEFAULT_NUM_SHARED_BUFFERS: u32 = 511;
/// SPDK's "pick for me" value of `buf_cache_size`.
pub const BUF_CACHE_SIZE_AUTO: u32 = u32::MAX;
/// The per-poll-group cache `buf_cache_size` auto picks at most (SPDK's TCP default).
pub const DEFAULT_BUF_CACHE_SIZE: u32 = 32;
pub const DEFAULT_ABORT_TIMEOUT_SEC: u32 = 1;
pub const DEFAULT_ACCEPTOR_POLL_RATE_US: u32 = 10_000;
/// Keep Alive Support granularity in 100 ms units (SPDK: 10 s).
pub const DEFAULT_KAS: u16 = 100;
pub const DEFAULT_MIN_KATO_MS: u32 = 10_000;
/// The smallest page an NVMe controller may use; MDTS counts in these.
pub const MIN_PAGE_BYTES: u32 = 4096;
/// Largest in-capsule data SPDK accepts.
pub const MAX_IN_CAPSULE_DATA_SIZE: u32 = 131_072;
/// Shared buffers a transport may ask for: each class is carved at start-up.
pub const MAX_NUM_SHARED_BUFFERS: u32 = 65_536;

/// Options every transport shares (`spdk_nvmf_transport_opts`). Decoding is relaxed, as
/// SPDK's `nvmf_create_transport` is: rpc.py sends other transports' keys, and each
/// transport decodes its own from the same parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportOptions {
    pub trtype: String,
    #[serde(default = "default_queue_depth")]
    pub max_queue_depth: u16,
    #[serde(default = "default_qpairs")]
    pub max_io_qpairs_per_ctrlr: u16,
    #[serde(default = "default_icd")]
    pub in_capsule_data_size: u32,
    #[serde(default = "default_max_io")]
    pub max_io_size: u32,
    #[serde(default = "default_io_unit")]
    pub io_unit_size: u32,
    #[serde(default = "default_aq_depth")]
    pub max_aq_depth: u32,
    #[serde(default = "default_shared_buffers")]
    pub num_shared_buffers: u32,
    #[serde(default = "default_buf_cache")]
    pub buf_cache_size: u32,
    #[serde(default)]
    pub dif_insert_or_strip: bool,
    #[serde(default)]
    pub zcopy: bool,
    #[serde(default = "default_abort_timeout")]
    pub abort_timeout_sec: u32,
    #[serde(default = "default_acceptor_poll_rate")]
    pub acceptor_poll_rate: u32,
    #[serde(default)]
    pub disable_command_passthru: bool,
    #[serde(default = "default_kas")]
    pub kas: u16,
    #[serde(default = "default_min_kato")]
    pub min_kato: u32,
}

fn default_queue_depth() -> u16 {
    DEFAULT_MAX_QUEUE_DEPTH
}
fn default_qpairs() -> u16 {
    DEFAULT_MAX_IO_QPAIRS_PER_CTRLR
}
fn default_icd() -> u32 {
    DEFAULT_IN_CAPSULE_DATA_SIZE
}
fn default_max_io() -> u32 {
    DEFAULT_MAX_IO_SIZE
}
fn default_io_unit() -> u32 {
    DEFAULT_IO_UNIT_SIZE
}
fn default_aq_depth() -> u32 {
    DEFAULT_MAX_AQ_DEPTH
}
fn default_shared_buffers() -> u32 {
    DEFAULT_NUM_SHARED_BUFFERS
}
fn default_buf_cache() -> u32 {
    BUF_CACHE_SIZE_AUTO
}
fn default_abort_timeout() -> u32 {
    DEFAULT_ABORT_TIMEOUT_SEC
}
fn default_acceptor_poll_rate() -> u32 {
    DEFAULT_ACCEPTOR_POLL_RATE_US
}
fn default_kas() -> u16 {
    DEFAULT_KAS
}
fn default_min_kato() -> u32 {
    DEFAULT_MIN_KATO_MS
}

impl TransportOptions {
    /// The defaults of a transport type.
    pub fn defaults(trtype: &str) -> TransportOptions {
        serde_json::from_value(serde_json::json!({"trtype": trtype}))
            .unwrap_or_else(|_| unreachable!("the defaults decode"))
    }

    /// Checks ranges against the number of poll groups that will share the buffers; the
    /// message names the option and its range.
    pub fn validate(&self, poll_groups: usize) -> Result<(), String> {
        if self.max_queue_depth < 2 {
            return Err(format!("max_queue_depth {} must be 2 to 65535", self.max_queue_depth));
        }
        if !(2..=4096).contains(&self.max_aq_depth) {
            return Err(format!("max_aq_depth {} must be 2 to 4096", self.max_aq_depth));
        }
        if self.max_io_size < MIN_PAGE_BYTES || !self.max_io_size.is_power_of_two() {
            return Err(format!(
                "max_io_size {} must be a power of two of at least {MIN_PAGE_BYTES}",
                self.max_io_size
            ));
        }
        if self.in_capsule_data_size > MAX_IN_CAPSULE_DATA_SIZE || !self.in_capsule_data_size.is_multiple_of(16) {
            return Err(format!(
                "in_capsule_data_size {} must be a multiple of 16 up to {MAX_IN_CAPSULE_DATA_SIZE}",
                self.in_capsule_data_size
            ));
        }
        if self.io_unit_size < MIN_PAGE_BYTES || self.io_unit_size > self.max_io_size {
            return Err(format!(
                "io_unit_size {} must be {MIN_PAGE_BYTES} to max_io_size ({})",
                self.io_unit_size, self.max_io_size
            ));
        }
        if self.max_io_qpairs_per_ctrlr == 0 {
            return Err("max_io_qpairs_per_ctrlr must be at least 1".into());
        }
        let per_io = self.max_io_size.div_ceil(self.io_unit_size);
        if self.num_shared_buffers < per_io || self.num_shared_buffers > MAX_NUM_SHARED_BUFFERS {
            return Err(format!(
                "num_shared_buffers {} must be {per_io} (one I/O of max_io_size in io_unit_size buffers) to \
                 {MAX_NUM_SHARED_BUFFERS}",
                self.num_shared_buffers
            ));
        }
        let cache = self.buf_cache(poll_groups);
        if cache as u64 * poll_groups as u64 > u64::from(self.num_shared_buffers) {
            return Err(format!(
                "buf_cache_size {cache} x {poll_groups} poll groups exceeds num_shared_buffers {}: raise \
                 num_shared_buffers or lower buf_cache_size",
                self.num_shared_buffers
            ));
        }
        if self.dif_insert_or_strip {
            return Err("dif_insert_or_strip is not supported: namespaces carry no protection information".into());
        }
        if self.zcopy {
            return Err("zcopy is not supported: no bdev module offers zero-copy start/end".into());
        }
        if self.abort_timeout_sec == 0 {
            return Err("abort_timeout_sec must be at least 1".into());
        }
        if self.kas == 0 {
            return Err("kas must be at least 1 (units of 100 ms)".into());
        }
        Ok(())
    }

    /// The per-poll-group cache of each buffer class: `buf_cache_size`, or for "auto" an
    /// even share of a quarter of the pool, at most SPDK's default.
    pub fn buf_cache(&self, poll_groups: usize) -> u32 {
        if self.buf_cache_size != BUF_CACHE_SIZE_AUTO {
            return self.buf_cache_size;
        }
        let share = self.num_shared_buffers / 4 / poll_groups.max(1) as u32;
        share.min(DEFAULT_BUF_CACHE_SIZE)
    }

    /// MDTS: log2 of max_io_size in units of the minimum page.
    pub fn mdts(&self) -> u8 {
        (self.max_io_size / MIN_PAGE_BYTES).trailing_zeros() as u8
    }
}

/// Creates a transport from `nvmf_create_transport`'s parameters for a target with
/// `poll_groups` poll groups; the message of an error names the offending parameter.
pub type TransportFactory = fn(params: &Value, poll_groups: usize) -> Result<Arc<dyn Transport>, String>;

/// A registered transport type: TCP, RDMA, ...
pub trait Transport: Send + Sync + 'static {
    /// SPDK's name of the type, upper case.
    fn trtype(&self) -> &'static str;

    fn opts(&self) -> &Arc<TransportOptions>;

    /// The data buffers every poll group of this transport shares.
    fn pool(&self) -> &'static DataPool;

    /// What `nvmf_get_transports` and `save_config` show.
    fn to_json(&self) -> Value;

    /// Starts listening on `addr` from the calling (app) thread, watching its
    /// connections' sockets the way `sock_impl` says.
    fn listen(
        &self,
        ctx: &mut ThreadCtx,
        target: &NvmfTarget,
        addr: SocketAddr,
        sock_impl: SockImpl,
        secure: bool,
    ) -> Result<Box<dyn TransportListener>, String>;

    /// This transport's state in the poll group of the calling thread.
    fn create_poll_group(&self, ctx: &mut ThreadCtx) -> Box<dyn TransportPollGroup>;
}

/// How a listener's connections learn that their sockets have data (SPDK's `sock_impl`
/// names): an epoll per poll group, or io_uring multishot polls, which a busy reactor
/// reads from shared memory without a system call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SockImpl {
    #[default]
    Posix,
    Uring,
}

impl SockImpl {
    pub const NAMES: [&'static str; 2] = ["posix", "uring"];

    pub fn parse(name: &str) -> Option<SockImpl> {
        match name {
            "posix" => Some(SockImpl::Posix),
            "uring" => Some(SockImpl::Uring),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SockImpl::Posix => "posix",
            SockImpl::Uring => "uring",
        }
    }
}

/// A listening address of a transport; dropping it does not stop it, `stop` does.
pub trait TransportListener: Send {
    fn addr(&self) -> SocketAddr;
    /// How it watches its connections' sockets.
    fn sock_impl(&self) -> SockImpl {
        SockImpl::Posix
    }
    /// Whether its connections speak TLS 1.3 first (`secure_channel`).
    fn secure(&self) -> bool {
        false
    }
    fn stop(self: Box<Self>, ctx: &mut ThreadCtx);
}

/// What the engine lends a transport's poll group each timeslice: the thread's view of
/// namespaces and its cache of the transport's data buffers.
pub struct GroupCtx<'g> {
    pub tables: &'g mut NsTables,
    pub buffers: &'g mut IoBufCache<'static>,
    /// The thread's clock for this timeslice (injected, so a simulation can run it).
    pub now_ns: u64,
    /// Where a transport leaves the counters of the queue pairs it drops.
    pub retired: &'g mut Retired,
}

/// A transport's part of one poll group: its connections, each carrying a [`Qpair`].
pub trait TransportPollGroup {
    /// One timeslice over every connection; returns whether anything moved.
    fn poll(&mut self, ctx: &mut ThreadCtx, group: &mut GroupCtx<'_>) -> bool;

    /// Visits every queue pair this group serves.
    fn for_each_qpair(&mut self, visit: &mut dyn FnMut(&mut Qpair));

    /// Connections, established or not, this group holds (queue pair or not).
    fn connection_count(&self) -> usize;

    /// The transport's own fields of this group's `transports` entry in `nvmf_get_stats`
    /// (SPDK's `poll_group_dump_stat`), an object; none by default.
    fn dump_stats(&self) -> Value {
        Value::Object(serde_json::Map::new())
    }

    /// For the transport's own messages to its groups (new connections, ...).
    fn as_any_mut(&mut self) -> &mut dyn Any;
}
