//! TCP transport options with SPDK's names and defaults (RPC.md 4.2). Decoding is
//! relaxed, as SPDK's `nvmf_create_transport` is: rpc.py sends other transports' keys.

use serde::{Deserialize, Serialize};

pub const DEFAULT_MAX_QUEUE_DEPTH: u16 = 128;
pub const DEFAULT_MAX_IO_QPAIRS_PER_CTRLR: u16 = 127;
pub const DEFAULT_IN_CAPSULE_DATA_SIZE: u32 = 4096;
pub const DEFAULT_MAX_IO_SIZE: u32 = 131_072;
pub const DEFAULT_IO_UNIT_SIZE: u32 = 131_072;
pub const DEFAULT_MAX_AQ_DEPTH: u32 = 128;
pub const DEFAULT_ABORT_TIMEOUT_SEC: u32 = 1;
pub const DEFAULT_ACCEPTOR_POLL_RATE_US: u32 = 10_000;
/// Keep Alive Support granularity in 100 ms units (SPDK: 10 s).
pub const DEFAULT_KAS: u16 = 100;
pub const DEFAULT_MIN_KATO_MS: u32 = 10_000;
/// The smallest page an NVMe controller may use; MDTS counts in these.
pub const MIN_PAGE_BYTES: u32 = 4096;
/// Largest in-capsule data SPDK accepts.
pub const MAX_IN_CAPSULE_DATA_SIZE: u32 = 131_072;

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
    #[serde(default = "default_true")]
    pub c2h_success: bool,
    #[serde(default)]
    pub dif_insert_or_strip: bool,
    #[serde(default)]
    pub zcopy: bool,
    #[serde(default)]
    pub sock_priority: u32,
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
    /// Connections a listener accepts before refusing new ones (our own limit).
    #[serde(default = "default_max_connections")]
    pub max_connections_per_listener: u32,
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
fn default_true() -> bool {
    true
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
fn default_max_connections() -> u32 {
    1024
}

impl TransportOptions {
    pub fn tcp_defaults() -> Self {
        serde_json::from_value(serde_json::json!({"trtype": "TCP"})).unwrap_or_else(|_| unreachable!("defaults decode"))
    }

    /// Checks ranges; the message names the option and its range.
    pub fn validate(&self) -> Result<(), String> {
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(format!("transport type '{}' is not supported; use TCP", self.trtype));
        }
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
        if self.max_io_qpairs_per_ctrlr == 0 {
            return Err("max_io_qpairs_per_ctrlr must be at least 1".into());
        }
        if self.sock_priority > 16 {
            return Err(format!("sock_priority {} must be 0 to 16", self.sock_priority));
        }
        Ok(())
    }

    /// MDTS: log2 of max_io_size in units of the minimum page.
    pub fn mdts(&self) -> u8 {
        (self.max_io_size / MIN_PAGE_BYTES).trailing_zeros() as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rpc_py_requests_decode_with_foreign_keys() {
        // What `rpc.py nvmf_create_transport -t TCP -u 16384 -m 8 -c 8192` sends.
        let sent = json!({"no_srq":false,"c2h_success":true,"trtype":"TCP","max_io_qpairs_per_ctrlr":8,
            "in_capsule_data_size":8192,"io_unit_size":16384,"zcopy":false,"dif_insert_or_strip":false,
            "no_wr_batching":false,"disable_mappable_bar0":false,"disable_adaptive_irq":false,
            "disable_shadow_doorbells":false,"disable_command_passthru":false});
        let options: TransportOptions = serde_json::from_value(sent).unwrap();
        assert_eq!((options.max_io_qpairs_per_ctrlr, options.in_capsule_data_size), (8, 8192));
        assert_eq!((options.max_queue_depth, options.max_io_size), (128, 131_072));
        options.validate().unwrap();
        assert_eq!(options.mdts(), 5);
    }

    #[test]
    fn ranges_are_checked() {
        let mut options = TransportOptions::tcp_defaults();
        options.trtype = "RDMA".into();
        assert!(options.validate().unwrap_err().contains("not supported"));
        let mut options = TransportOptions::tcp_defaults();
        options.max_io_size = 1000;
        assert!(options.validate().unwrap_err().contains("max_io_size"));
    }
}
