//! `sock_impl_set_options` and `sock_impl_get_options` with SPDK's names, and the `sock`
//! framework subsystem whose saved config replays them.
//!
//! The `ssl` implementation (the NVMe/TCP secure channel) takes `enable_ktls` and
//! `tls_version`; `posix` and `uring` take `enable_zerocopy_send_server` and
//! `zerocopy_threshold` (MSG_ZEROCOPY sends of C2HData, `zerocopy.rs`). Their other
//! socket settings come from `nvmf_create_transport`, so SPDK's other options are refused
//! by name rather than accepted and ignored.

use serde::Deserialize;
use serde_json::{json, Value};

use peerless_core::reactor::{Subsystem, ThreadCtx};
use peerless_core::rpc::registry::{Registry, StateMask};
use peerless_core::rpc::RpcError;

use super::tls::ktls;
use super::zerocopy;
use crate::nvmf::transport::SockImpl;

/// The one TLS version the secure channel speaks (NVMe/TCP 1.0, 3.6.1.1: TLS 1.3).
const TLS_VERSION: u32 = 13;
const SSL: &str = "ssl";
/// SPDK's options that no implementation here has, and why.
const UNSUPPORTED: [(&str, &str); 6] = [
    ("recv_buf_size", "socket buffer sizes follow the kernel's autotuning"),
    ("send_buf_size", "socket buffer sizes follow the kernel's autotuning"),
    ("enable_recv_pipe", "each connection reads into its own receive buffer"),
    ("enable_quickack", "not offered"),
    ("enable_placement_id", "poll groups are chosen round-robin, as nvmf_create_transport says"),
    ("enable_zerocopy_send_client", "it is the initiator's setting: the target only accepts connections"),
];
const SSL_FIELDS: [&str; 2] = ["enable_ktls", "tls_version"];
const ZEROCOPY_FIELDS: [&str; 2] = ["enable_zerocopy_send_server", "zerocopy_threshold"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetOptions {
    impl_name: String,
}

/// The ssl implementation's options; anything else in the call is refused by name.
#[derive(Deserialize, Default)]
struct SslOptions {
    #[serde(default)]
    enable_ktls: Option<bool>,
    #[serde(default)]
    tls_version: Option<u32>,
}

/// The posix and uring implementations' options.
#[derive(Deserialize, Default)]
struct PlainOptions {
    #[serde(default)]
    enable_zerocopy_send_server: Option<bool>,
    #[serde(default)]
    zerocopy_threshold: Option<u32>,
}

/// An implementation with options: the secure channel, or a plain TCP one.
enum Impl {
    Ssl,
    Plain(SockImpl),
}

fn check_impl(name: &str) -> Result<Impl, RpcError> {
    if name == SSL {
        return Ok(Impl::Ssl);
    }
    SockImpl::parse(name).map(Impl::Plain).ok_or_else(|| {
        RpcError::invalid_params(format!(
            "no sock implementation named '{name}'; the implementations are posix, uring and ssl"
        ))
    })
}

fn set_options(params: Value) -> Result<(), RpcError> {
    let Value::Object(mut fields) = params else {
        return Err(RpcError::invalid_params("sock_impl_set_options takes an object with impl_name"));
    };
    let name = match fields.remove("impl_name") {
        Some(Value::String(name)) => name,
        Some(other) => return Err(RpcError::invalid_params(format!("impl_name must be a string, not {other}"))),
        None => return Err(RpcError::invalid_params("impl_name is required (posix, uring or ssl)")),
    };
    let implementation = check_impl(&name)?;
    if let Some((field, why)) = UNSUPPORTED.iter().find(|(field, _)| fields.contains_key(*field)) {
        return Err(RpcError::invalid_params(format!("{field} is not supported for '{name}': {why}")));
    }
    let (known, other, why): (&[&str], &[&str], &str) = match implementation {
        Impl::Ssl => {
            (&SSL_FIELDS, &ZEROCOPY_FIELDS, "TLS records are built before the socket sees them: nothing to lend")
        }
        Impl::Plain(_) => (&ZEROCOPY_FIELDS, &SSL_FIELDS, "it is an option of the ssl implementation"),
    };
    if let Some(field) = other.iter().find(|field| fields.contains_key(**field)) {
        return Err(RpcError::invalid_params(format!("{field} is not supported for '{name}': {why}")));
    }
    if let Some(unknown) = fields.keys().find(|key| !known.contains(&key.as_str())) {
        return Err(RpcError::invalid_params(format!("unknown option '{unknown}' for sock implementation '{name}'")));
    }
    match implementation {
        Impl::Ssl => set_ssl_options(fields),
        Impl::Plain(sock_impl) => {
            let options: PlainOptions = serde_json::from_value(Value::Object(fields))
                .map_err(|err| RpcError::invalid_params(err.to_string()))?;
            if let Some(threshold) = options.zerocopy_threshold {
                zerocopy::set_threshold(sock_impl, threshold);
            }
            if let Some(enable) = options.enable_zerocopy_send_server {
                zerocopy::set_enabled(sock_impl, enable);
                peerless_core::log_info!(
                    "sock: zero-copy sends for '{name}' {} (connections accepted from now on)",
                    if enable { "on" } else { "off" }
                );
            }
            Ok(())
        }
    }
}

fn set_ssl_options(fields: serde_json::Map<String, Value>) -> Result<(), RpcError> {
    let options: SslOptions =
        serde_json::from_value(Value::Object(fields)).map_err(|err| RpcError::invalid_params(err.to_string()))?;
    // 0 is SPDK's "the implementation's default".
    if let Some(version) = options.tls_version.filter(|version| ![0, TLS_VERSION].contains(version)) {
        return Err(RpcError::invalid_params(format!(
            "tls_version {version}: the NVMe/TCP secure channel is TLS 1.3 only (13, or 0 for the default)"
        )));
    }
    if let Some(enable) = options.enable_ktls {
        ktls::set_enabled(enable);
        peerless_core::log_info!("sock: kTLS for the ssl implementation {}", if enable { "on" } else { "off" });
    }
    Ok(())
}

fn options(implementation: &Impl) -> Value {
    match implementation {
        Impl::Ssl => json!({"enable_ktls": ktls::enabled(), "tls_version": TLS_VERSION}),
        Impl::Plain(sock_impl) => json!({
            "enable_zerocopy_send_server": zerocopy::enabled(*sock_impl),
            "zerocopy_threshold": zerocopy::threshold(*sock_impl),
        }),
    }
}

pub fn register(registry: &mut Registry) {
    registry.method("sock_impl_set_options", StateMask::ANY, |_, params: Value, responder| match set_options(params) {
        Ok(()) => responder.ok_true(),
        Err(err) => responder.err(err),
    });
    registry.method("sock_impl_get_options", StateMask::ANY, |_, params: GetOptions, responder| {
        match check_impl(&params.impl_name) {
            Ok(implementation) => responder.ok(options(&implementation)),
            Err(err) => responder.err(err),
        }
    });
}

/// The `sock` subsystem: nothing to start; its saved config restores every
/// implementation's options before any listener is made.
pub struct SockSubsystem;

impl Subsystem for SockSubsystem {
    fn name(&self) -> &'static str {
        "sock"
    }

    fn config(&self, _ctx: &mut ThreadCtx) -> Vec<Value> {
        saved_config()
    }
}

fn saved_config() -> Vec<Value> {
    [(SSL, Impl::Ssl), ("posix", Impl::Plain(SockImpl::Posix)), ("uring", Impl::Plain(SockImpl::Uring))]
        .into_iter()
        .map(|(name, implementation)| {
            let mut params = options(&implementation);
            params["impl_name"] = json!(name);
            json!({"method": "sock_impl_set_options", "params": params})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(params: Value) -> String {
        set_options(params).unwrap_err().to_string()
    }

    #[test]
    fn only_ssl_takes_options_and_each_refusal_names_the_field() {
        assert!(refused(json!({"impl_name": "posix", "enable_ktls": true}))
            .contains("enable_ktls is not supported for 'posix'"));
        assert!(refused(json!({"impl_name": "ssl", "zerocopy_threshold": 0}))
            .contains("zerocopy_threshold is not supported for 'ssl'"));
        assert!(
            refused(json!({"impl_name": "uring", "enable_zerocopy_send_client": true})).contains("initiator's setting")
        );
        assert!(refused(json!({"impl_name": "posix", "zerocopy_threshold": -1})).contains("invalid value"));
        assert!(refused(json!({"impl_name": "posix", "tls_version": 13})).contains("tls_version is not supported"));
        assert!(refused(json!({"impl_name": "vpp"})).contains("no sock implementation named 'vpp'"));
        assert!(refused(json!({"enable_ktls": true})).contains("impl_name is required"));
        assert!(refused(json!({"impl_name": 7})).contains("impl_name must be a string"));
        assert!(refused(json!({"impl_name": "ssl", "recv_buf_size": 4096})).contains("recv_buf_size is not supported"));
        assert!(refused(json!({"impl_name": "ssl", "colour": "blue"})).contains("unknown option 'colour'"));
        assert!(refused(json!({"impl_name": "ssl", "tls_version": 12})).contains("TLS 1.3 only"));
        assert!(refused(json!({"impl_name": "ssl", "enable_ktls": "yes"})).contains("invalid type"));
        assert!(refused(json!(["ssl"])).contains("takes an object"));
    }

    #[test]
    fn ktls_is_switched_and_reported() {
        let before = ktls::enabled();
        set_options(json!({"impl_name": "ssl", "enable_ktls": false, "tls_version": 13})).unwrap();
        assert_eq!(options(&Impl::Ssl), json!({"enable_ktls": false, "tls_version": 13}));
        set_options(json!({"impl_name": "ssl", "enable_ktls": true, "tls_version": 0})).unwrap();
        assert!(ktls::enabled());
        let saved = saved_config();
        assert_eq!(saved[0]["params"], json!({"impl_name": "ssl", "enable_ktls": true, "tls_version": 13}));
        ktls::set_enabled(before);
    }

    #[test]
    fn zerocopy_is_set_per_implementation_reported_and_saved() {
        set_options(json!({"impl_name": "uring", "enable_zerocopy_send_server": true, "zerocopy_threshold": 65536}))
            .unwrap();
        assert_eq!(
            options(&Impl::Plain(SockImpl::Uring)),
            json!({"enable_zerocopy_send_server": true, "zerocopy_threshold": 65536})
        );
        assert_eq!(zerocopy::threshold_for(SockImpl::Uring), Some(65536));
        assert_eq!(zerocopy::threshold_for(SockImpl::Posix), None, "posix keeps its own setting");
        let saved = saved_config();
        assert_eq!(
            saved[2]["params"],
            json!({"impl_name": "uring", "enable_zerocopy_send_server": true, "zerocopy_threshold": 65536})
        );
        assert_eq!(saved[1]["params"]["impl_name"], "posix");
        set_options(json!({"impl_name": "uring", "enable_zerocopy_send_server": false, "zerocopy_threshold": 0}))
            .unwrap();
        assert_eq!(zerocopy::threshold_for(SockImpl::Uring), None);
    }
}
