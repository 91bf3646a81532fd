//! Options only the TCP transport has, with SPDK's names and defaults,
//! decoded from the same `nvmf_create_transport` parameters as the shared ones.

use serde::{Deserialize, Serialize};

/// Connections one listener holds before it refuses more (our own limit).
pub const DEFAULT_MAX_CONNECTIONS_PER_LISTENER: u32 = 1024;
/// SO_PRIORITY values Linux lets a process set without CAP_NET_ADMIN go to 6; SPDK
/// accepts 0 to 16.
pub const MAX_SOCK_PRIORITY: u32 = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpOptions {
    /// A read's last C2HData completes it: no CapsuleResp follows (NVMe/TCP 1.0, 3.6.2.8).
    #[serde(default = "default_true")]
    pub c2h_success: bool,
    /// SO_PRIORITY of every connection's socket.
    #[serde(default)]
    pub sock_priority: u32,
    #[serde(default = "default_max_connections")]
    pub max_connections_per_listener: u32,
}

fn default_true() -> bool {
    true
}
fn default_max_connections() -> u32 {
    DEFAULT_MAX_CONNECTIONS_PER_LISTENER
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            c2h_success: true,
            sock_priority: 0,
            max_connections_per_listener: DEFAULT_MAX_CONNECTIONS_PER_LISTENER,
        }
    }
}

impl TcpOptions {
    /// Checks ranges; the message names the option and its range.
    pub fn validate(&self) -> Result<(), String> {
        if self.sock_priority > MAX_SOCK_PRIORITY {
            return Err(format!("sock_priority {} must be 0 to {MAX_SOCK_PRIORITY}", self.sock_priority));
        }
        if self.max_connections_per_listener == 0 {
            return Err("max_connections_per_listener must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvmf::transport::TransportOptions;
    use serde_json::json;

    #[test]
    fn rpc_py_requests_decode_with_foreign_keys() {
        // What `rpc.py nvmf_create_transport -t TCP -u 16384 -m 8 -c 8192` sends.
        let sent = json!({"no_srq":false,"c2h_success":true,"trtype":"TCP","max_io_qpairs_per_ctrlr":8,
            "in_capsule_data_size":8192,"io_unit_size":16384,"zcopy":false,"dif_insert_or_strip":false,
            "no_wr_batching":false,"disable_mappable_bar0":false,"disable_adaptive_irq":false,
            "disable_shadow_doorbells":false,"disable_command_passthru":false});
        let shared: TransportOptions = serde_json::from_value(sent.clone()).unwrap();
        assert_eq!((shared.max_io_qpairs_per_ctrlr, shared.in_capsule_data_size), (8, 8192));
        assert_eq!((shared.max_queue_depth, shared.max_io_size, shared.io_unit_size), (128, 131_072, 16384));
        shared.validate(1).unwrap();
        assert_eq!(shared.mdts(), 5);
        let tcp: TcpOptions = serde_json::from_value(sent).unwrap();
        assert_eq!(tcp, TcpOptions::default());
        tcp.validate().unwrap();
    }

    #[test]
    fn ranges_are_checked() {
        let tcp = TcpOptions { sock_priority: 17, ..TcpOptions::default() };
        assert!(tcp.validate().unwrap_err().contains("sock_priority"));
        let mut shared = TransportOptions::defaults("TCP");
        shared.max_io_size = 1000;
        assert!(shared.validate(1).unwrap_err().contains("max_io_size"));
        let shared =
            TransportOptions { num_shared_buffers: 64, buf_cache_size: 32, ..TransportOptions::defaults("TCP") };
        assert!(shared.validate(4).unwrap_err().contains("buf_cache_size 32 x 4 poll groups"));
        let shared = TransportOptions { zcopy: true, ..TransportOptions::defaults("TCP") };
        assert!(shared.validate(1).unwrap_err().contains("zcopy"));
        let shared = TransportOptions { io_unit_size: 262_144, ..TransportOptions::defaults("TCP") };
        assert!(shared.validate(1).unwrap_err().contains("io_unit_size"));
    }
}
