//! The RDMA transport's options: the shared ones with the RDMA transport's defaults
//! where SPDK's differ from TCP's, and the RDMA-only ones, all with SPDK's names.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::nvmf::transport::TransportOptions;

/// SPDK's RDMA default `io_unit_size`: max_io_size split across the 16 SGL entries a
/// request may carry (`SPDK_NVMF_RDMA_MIN_IO_BUFFER_SIZE`).
pub const DEFAULT_IO_UNIT_SIZE: u32 = 8192;
/// SPDK's RDMA default `num_shared_buffers`.
pub const DEFAULT_NUM_SHARED_BUFFERS: u32 = 4095;
pub const DEFAULT_MAX_SRQ_DEPTH: u32 = 4096;
/// CQ entries per poll group when each queue pair has its own receive queue.
pub const DEFAULT_NUM_CQE: i32 = 4096;
pub const DEFAULT_ACCEPTOR_BACKLOG: i32 = 100;
/// Data buffers one command may span, and so the SGEs of one RDMA READ or WRITE.
pub const MAX_SGL_ENTRIES: u32 = 16;

/// Options only the RDMA transport has (`rdma_transport_opts` in SPDK).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RdmaOptions {
    /// CQ entries of a poll group without an SRQ (`no_srq`).
    #[serde(default = "default_num_cqe")]
    pub num_cqe: i32,
    /// Receive buffers of each poll group's shared receive queue, per device.
    #[serde(default = "default_max_srq_depth")]
    pub max_srq_depth: u32,
    /// Each queue pair posts its own receives instead of sharing its poll group's.
    #[serde(default)]
    pub no_srq: bool,
    /// Connect requests the RDMA CM queues per listener before it refuses more.
    #[serde(default = "default_acceptor_backlog")]
    pub acceptor_backlog: i32,
    /// Post each work request as it is made instead of a pass's worth at once.
    #[serde(default)]
    pub no_wr_batching: bool,
}

fn default_num_cqe() -> i32 {
    DEFAULT_NUM_CQE
}
fn default_max_srq_depth() -> u32 {
    DEFAULT_MAX_SRQ_DEPTH
}
fn default_acceptor_backlog() -> i32 {
    DEFAULT_ACCEPTOR_BACKLOG
}

impl Default for RdmaOptions {
    fn default() -> Self {
        RdmaOptions {
            num_cqe: DEFAULT_NUM_CQE,
            max_srq_depth: DEFAULT_MAX_SRQ_DEPTH,
            no_srq: false,
            acceptor_backlog: DEFAULT_ACCEPTOR_BACKLOG,
            no_wr_batching: false,
        }
    }
}

/// Keys of other transports that rpc.py sends whatever the type, each with the value
/// that means "not asked for"; another value asks for what RDMA does not have.
const FOREIGN_KEYS: [(&str, Value); 7] = [
    ("c2h_success", Value::Bool(true)),
    ("sock_priority", Value::Null),
    ("control_msg_num", Value::Null),
    ("disable_mappable_bar0", Value::Bool(false)),
    ("disable_adaptive_irq", Value::Bool(false)),
    ("disable_shadow_doorbells", Value::Bool(false)),
    ("zcopy", Value::Bool(false)),
];

impl RdmaOptions {
    /// Decodes the shared options (with the RDMA defaults where a key is absent) and the
    /// RDMA ones, refusing by name what this transport cannot honour.
    pub fn decode(params: &Value) -> Result<(TransportOptions, RdmaOptions), String> {
        let mut with_defaults = match params {
            Value::Object(map) => map.clone(),
            Value::Null => Map::new(),
            other => return Err(format!("parameters must be an object, not {other}")),
        };
        with_defaults.entry("io_unit_size").or_insert(DEFAULT_IO_UNIT_SIZE.into());
        with_defaults.entry("num_shared_buffers").or_insert(DEFAULT_NUM_SHARED_BUFFERS.into());
        for (key, unasked) in FOREIGN_KEYS {
            match with_defaults.get(key) {
                None | Some(Value::Null) => {}
                Some(value) if *value == unasked => {}
                Some(value) => {
                    return Err(format!("{key} ({value}) is not an option of the RDMA transport"));
                }
            }
        }
        let params = Value::Object(with_defaults);
        let shared: TransportOptions =
            peerless_core::rpc::decode_params(Some(params.clone())).map_err(|err| err.message)?;
        let rdma: RdmaOptions = peerless_core::rpc::decode_params(Some(params)).map_err(|err| err.message)?;
        Ok((shared, rdma))
    }

    /// Checks ranges, on top of the shared options' own checks; the message names the
    /// option and its range.
    pub fn validate(&self, shared: &TransportOptions) -> Result<(), String> {
        if self.max_srq_depth < 2 || self.max_srq_depth > u32::from(u16::MAX) {
            return Err(format!("max_srq_depth {} must be 2 to 65535", self.max_srq_depth));
        }
        if self.num_cqe < 1 {
            return Err(format!("num_cqe {} must be at least 1", self.num_cqe));
        }
        if self.acceptor_backlog < 1 {
            return Err(format!("acceptor_backlog {} must be at least 1", self.acceptor_backlog));
        }
        // One command's buffers are the SGEs of one RDMA READ or WRITE.
        let units = shared.max_io_size.div_ceil(shared.io_unit_size);
        if units > MAX_SGL_ENTRIES {
            return Err(format!(
                "io_unit_size {} must be at least max_io_size / {MAX_SGL_ENTRIES} ({}): one I/O spans at most \
                 {MAX_SGL_ENTRIES} buffers",
                shared.io_unit_size,
                shared.max_io_size / MAX_SGL_ENTRIES
            ));
        }
        // So a command that waits for buffers cannot hold back every other one forever.
        if shared.num_shared_buffers < 2 * MAX_SGL_ENTRIES {
            return Err(format!(
                "num_shared_buffers {} must be at least {} (two I/Os of {MAX_SGL_ENTRIES} buffers)",
                shared.num_shared_buffers,
                2 * MAX_SGL_ENTRIES
            ));
        }
        if shared.max_queue_depth > 4096 {
            return Err(format!(
                "max_queue_depth {} must be 2 to 4096 for RDMA (the work requests of one queue pair)",
                shared.max_queue_depth
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rpc_py_requests_decode_with_the_rdma_defaults() {
        // What `rpc.py nvmf_create_transport -t RDMA` sends (it always adds the booleans).
        let sent = json!({"trtype": "RDMA", "no_srq": false, "c2h_success": true, "zcopy": false,
            "dif_insert_or_strip": false, "no_wr_batching": false, "disable_mappable_bar0": false,
            "disable_adaptive_irq": false, "disable_shadow_doorbells": false, "disable_command_passthru": false});
        let (shared, rdma) = RdmaOptions::decode(&sent).unwrap();
        assert_eq!(rdma, RdmaOptions::default());
        assert_eq!((shared.max_queue_depth, shared.max_io_qpairs_per_ctrlr, shared.max_aq_depth), (128, 127, 128));
        assert_eq!((shared.in_capsule_data_size, shared.max_io_size), (4096, 131_072));
        assert_eq!((shared.io_unit_size, shared.num_shared_buffers), (8192, 4095));
        shared.validate(2).unwrap();
        rdma.validate(&shared).unwrap();
    }

    #[test]
    fn rdma_options_decode_and_are_checked() {
        let sent = json!({"trtype": "rdma", "max_srq_depth": 256, "no_srq": true, "num_cqe": 512,
            "acceptor_backlog": 8, "no_wr_batching": true, "io_unit_size": 16384, "num_shared_buffers": 64});
        let (shared, rdma) = RdmaOptions::decode(&sent).unwrap();
        assert_eq!(
            rdma,
            RdmaOptions { num_cqe: 512, max_srq_depth: 256, no_srq: true, acceptor_backlog: 8, no_wr_batching: true }
        );
        assert_eq!((shared.io_unit_size, shared.num_shared_buffers), (16384, 64));
        rdma.validate(&shared).unwrap();
        for (field, value, named) in [
            ("max_srq_depth", json!(1), "max_srq_depth 1 must be 2 to 65535"),
            ("acceptor_backlog", json!(0), "acceptor_backlog 0 must be at least 1"),
            ("num_cqe", json!(-1), "num_cqe -1 must be at least 1"),
            ("io_unit_size", json!(4096), "io_unit_size 4096 must be at least max_io_size / 16 (8192)"),
            ("num_shared_buffers", json!(31), "num_shared_buffers 31 must be at least 32"),
            ("max_queue_depth", json!(8192), "max_queue_depth 8192 must be 2 to 4096 for RDMA"),
        ] {
            let mut params = json!({"trtype": "RDMA"});
            params[field] = value;
            let (shared, rdma) = RdmaOptions::decode(&params).unwrap();
            let err = rdma.validate(&shared).unwrap_err();
            assert!(err.starts_with(named), "{field}: {err}");
        }
    }

    #[test]
    fn what_rdma_cannot_honour_is_refused_by_name() {
        for (key, value) in [
            ("c2h_success", json!(false)),
            ("sock_priority", json!(3)),
            ("zcopy", json!(true)),
            ("disable_mappable_bar0", json!(true)),
        ] {
            let mut params = json!({"trtype": "RDMA"});
            params[key] = value;
            let err = RdmaOptions::decode(&params).unwrap_err();
            assert!(err.starts_with(key) && err.contains("not an option of the RDMA transport"), "{err}");
        }
        // A wrong type names its field.
        let err = RdmaOptions::decode(&json!({"trtype": "RDMA", "no_srq": "yes"})).unwrap_err();
        assert!(err.contains("no_srq"), "{err}");
    }
}
