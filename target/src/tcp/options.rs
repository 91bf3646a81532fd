//! Options only the TCP transport has, with SPDK's names and defaults,
//! decoded from the same `nvmf_create_transport` parameters as the shared ones.

use serde::{Deserialize, Serialize};

/// Established connections one listener holds before it refuses more (our own limit).
pub const DEFAULT_MAX_CONNECTIONS_PER_LISTENER: u32 = 1024;
/// Connections one listener holds that have not finished ICReq, Connect and (for an
/// admin queue) CC.EN; past it the oldest of them is closed for the newcomer.
pub const DEFAULT_MAX_UNESTABLISHED_CONNECTIONS_PER_LISTENER: u32 = 128;
/// A host sends ICReq as soon as its socket connects (NVMe/TCP 1.0, 3.3): seconds are
/// generous even across a slow network.
pub const DEFAULT_ICREQ_TIMEOUT_MS: u32 = 5_000;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u32 = 5_000;
/// From the admin queue's Connect to CC.EN = 1: a host reads CAP and VS first.
pub const DEFAULT_ENABLE_TIMEOUT_MS: u32 = 10_000;
/// The longest deadline accepted for any step: an hour.
pub const MAX_STEP_TIMEOUT_MS: u32 = 3_600_000;
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
    /// Established connections; a connection past it is closed unanswered.
    #[serde(default = "default_max_connections")]
    pub max_connections_per_listener: u32,
    #[serde(default = "default_max_unestablished")]
    pub max_unestablished_connections_per_listener: u32,
    /// Deadlines of the steps to an established connection; 0 turns one off.
    #[serde(default = "default_icreq_timeout")]
    pub icreq_timeout_ms: u32,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u32,
    #[serde(default = "default_enable_timeout")]
    pub enable_timeout_ms: u32,
}

fn default_true() -> bool {
    true
}
fn default_max_connections() -> u32 {
    DEFAULT_MAX_CONNECTIONS_PER_LISTENER
}
fn default_max_unestablished() -> u32 {
    DEFAULT_MAX_UNESTABLISHED_CONNECTIONS_PER_LISTENER
}
fn default_icreq_timeout() -> u32 {
    DEFAULT_ICREQ_TIMEOUT_MS
}
fn default_connect_timeout() -> u32 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_enable_timeout() -> u32 {
    DEFAULT_ENABLE_TIMEOUT_MS
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            c2h_success: true,
            sock_priority: 0,
            max_connections_per_listener: DEFAULT_MAX_CONNECTIONS_PER_LISTENER,
            max_unestablished_connections_per_listener: DEFAULT_MAX_UNESTABLISHED_CONNECTIONS_PER_LISTENER,
            icreq_timeout_ms: DEFAULT_ICREQ_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            enable_timeout_ms: DEFAULT_ENABLE_TIMEOUT_MS,
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
        if self.max_unestablished_connections_per_listener == 0 {
            return Err("max_unestablished_connections_per_listener must be at least 1".into());
        }
        for (name, value) in [
            ("icreq_timeout_ms", self.icreq_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("enable_timeout_ms", self.enable_timeout_ms),
        ] {
            if value > MAX_STEP_TIMEOUT_MS {
                return Err(format!("{name} {value} must be 0 (no deadline) to {MAX_STEP_TIMEOUT_MS}"));
            }
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

    #[test]
    fn connection_limits_and_deadlines_are_checked() {
        let decoded: TcpOptions = serde_json::from_value(json!({"trtype": "TCP", "icreq_timeout_ms": 0,
            "connect_timeout_ms": 250, "enable_timeout_ms": 3_600_000,
            "max_unestablished_connections_per_listener": 16}))
        .unwrap();
        decoded.validate().unwrap();
        assert_eq!((decoded.icreq_timeout_ms, decoded.connect_timeout_ms), (0, 250));
        assert_eq!(decoded.max_unestablished_connections_per_listener, 16);
        let none = TcpOptions { max_unestablished_connections_per_listener: 0, ..TcpOptions::default() };
        assert!(none.validate().unwrap_err().contains("max_unestablished_connections_per_listener"));
        for (name, options) in [
            ("icreq_timeout_ms", TcpOptions { icreq_timeout_ms: 3_600_001, ..TcpOptions::default() }),
            ("connect_timeout_ms", TcpOptions { connect_timeout_ms: u32::MAX, ..TcpOptions::default() }),
            ("enable_timeout_ms", TcpOptions { enable_timeout_ms: 3_600_001, ..TcpOptions::default() }),
        ] {
            let err = options.validate().unwrap_err();
            assert!(err.starts_with(name) && err.contains("0 (no deadline) to 3600000"), "{err}");
        }
        // A negative or fractional value is a decode error naming nothing silently.
        assert!(serde_json::from_value::<TcpOptions>(json!({"icreq_timeout_ms": -1})).is_err());
    }
}
