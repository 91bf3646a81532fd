//! NVMe/TCP exports on a running target: a transport, a subsystem, a namespace over a
//! malloc or null bdev, and a listener on a free loopback port.

use std::net::{SocketAddr, TcpListener};

use serde_json::{json, Value};

use crate::Target;

/// The identity [`Target::create_subsystem`] gives a subsystem, so tests can check what
/// Identify Controller reports.
pub const SERIAL_NUMBER: &str = "PEERLESS-E2E";
pub const MODEL_NUMBER: &str = "Peerless e2e";

/// Keep-alive timeouts below SPDK's default minimum, so keep-alive tests need not wait
/// seconds for a silent host to be dropped.
const MIN_KATO_MS: u32 = 100;
/// How many free ports [`Target::listen`] tries: another process may take a port
/// between the moment the kernel names it free and the target's bind.
const LISTEN_ATTEMPTS: usize = 5;

/// A TCP port that was free on loopback a moment ago (the kernel picks it; the probe
/// socket is closed at once, so it is a good guess, not a reservation).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|err| panic!("no free TCP port on 127.0.0.1: {err}"))
}

impl Target {
    /// The TCP transport with `options` merged over `trtype` and a short `min_kato`.
    #[track_caller]
    pub fn create_tcp_transport(&self, options: Value) {
        let mut merged = json!({"trtype": "TCP", "min_kato": MIN_KATO_MS});
        let extra = options.as_object().unwrap_or_else(|| panic!("transport options must be an object: {options}"));
        merged.as_object_mut().expect("an object").extend(extra.clone());
        self.call("nvmf_create_transport", Some(merged));
    }

    /// A subsystem that allows any host, with [`SERIAL_NUMBER`] and [`MODEL_NUMBER`].
    #[track_caller]
    pub fn create_subsystem(&self, nqn: &str) {
        self.call(
            "nvmf_create_subsystem",
            Some(json!({"nqn": nqn, "allow_any_host": true, "serial_number": SERIAL_NUMBER, "model_number": MODEL_NUMBER})),
        );
    }

    /// A malloc bdev `name` exported as a namespace of `nqn`; returns its NSID.
    #[track_caller]
    pub fn add_malloc_namespace(&self, nqn: &str, name: &str, blocks: u64, block_size: u32) -> u32 {
        self.call("bdev_malloc_create", Some(json!({"name": name, "num_blocks": blocks, "block_size": block_size})));
        self.add_namespace(nqn, name)
    }

    /// A null bdev `name` (reads return zeroes, writes go nowhere) exported as a
    /// namespace of `nqn`; returns its NSID.
    #[track_caller]
    pub fn add_null_namespace(&self, nqn: &str, name: &str, blocks: u64, block_size: u32) -> u32 {
        self.call("bdev_null_create", Some(json!({"name": name, "num_blocks": blocks, "block_size": block_size})));
        self.add_namespace(nqn, name)
    }

    /// The existing bdev `bdev` as a namespace of `nqn`; returns its NSID.
    #[track_caller]
    pub fn add_namespace(&self, nqn: &str, bdev: &str) -> u32 {
        let nsid = self.call("nvmf_subsystem_add_ns", Some(json!({"nqn": nqn, "namespace": {"bdev_name": bdev}})));
        nsid.as_u64().and_then(|nsid| u32::try_from(nsid).ok()).unwrap_or_else(|| panic!("an NSID, not {nsid}"))
    }

    /// A TCP listener for `nqn` on a free loopback port; returns its address.
    #[track_caller]
    pub fn listen(&self, nqn: &str) -> SocketAddr {
        self.listen_with(nqn, json!({}))
    }

    /// As [`Target::listen`], with `extra` parameters of `nvmf_subsystem_add_listener`
    /// (such as `sock_impl`) merged in.
    #[track_caller]
    pub fn listen_with(&self, nqn: &str, extra: Value) -> SocketAddr {
        let mut refusals = Vec::new();
        for _ in 0..LISTEN_ATTEMPTS {
            let port = free_port();
            let mut params = json!({"nqn": nqn, "listen_address":
                {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}});
            if let (Some(params), Some(extra)) = (params.as_object_mut(), extra.as_object()) {
                params.extend(extra.clone());
            }
            let answer = self.client().call_raw("nvmf_subsystem_add_listener", Some(params));
            match answer.get("error") {
                None => return SocketAddr::from(([127, 0, 0, 1], port)),
                // The port was taken after free_port() saw it free: try another.
                Some(error) if error["message"].as_str().is_some_and(|text| text.contains("cannot listen")) => {
                    refusals.push(error.to_string())
                }
                Some(error) => panic!("nvmf_subsystem_add_listener {nqn} on port {port}: {error}"),
            }
        }
        panic!("no free port for {nqn} in {LISTEN_ATTEMPTS} attempts: {refusals:?}")
    }

    /// A TCP transport (with `transport` options merged in), one subsystem `nqn` open to
    /// any host, a malloc namespace `Malloc0` and a listener on a free port. Returns the
    /// listener's address.
    #[track_caller]
    pub fn serve_malloc(&self, nqn: &str, blocks: u64, block_size: u32, transport: Value) -> SocketAddr {
        self.create_tcp_transport(transport);
        self.create_subsystem(nqn);
        self.add_malloc_namespace(nqn, "Malloc0", blocks, block_size);
        self.listen(nqn)
    }

    /// As [`Target::serve_malloc`], over a null bdev `Null0`.
    #[track_caller]
    pub fn serve_null(&self, nqn: &str, blocks: u64, block_size: u32, transport: Value) -> SocketAddr {
        self.create_tcp_transport(transport);
        self.create_subsystem(nqn);
        self.add_null_namespace(nqn, "Null0", blocks, block_size);
        self.listen(nqn)
    }
}
