//! NVMe-oF subcommands (rpc.py's nvmf.py).

use clap::{ArgGroup, Args, Subcommand};
use serde_json::Value;

use super::{call, Action, Output, Params};

/// rpc.py accepts `discovery` for the well-known discovery NQN in listener commands.
const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
const ONCS: [&str; 5] = ["nvmcmps", "nvmdsmsv", "nvmwzsv", "reservs", "nvmcpys"];
const FUSES: [&str; 1] = ["fcws"];

/// Options of nvmf_create_transport; most apply to one transport type only, and the
/// server ignores those of other types.
#[derive(Args, Debug)]
pub struct TransportArgs {
    /// Transport type (TCP, RDMA)
    #[arg(short = 't', long)]
    trtype: String,
    #[arg(short = 'g', long)]
    tgt_name: Option<String>,
    /// Outstanding I/Os per queue
    #[arg(short = 'q', long)]
    max_queue_depth: Option<u16>,
    #[arg(short = 'm', long)]
    max_io_qpairs_per_ctrlr: Option<u16>,
    /// In-capsule data bytes
    #[arg(short = 'c', long)]
    in_capsule_data_size: Option<u32>,
    /// Largest I/O in bytes
    #[arg(short = 'i', long)]
    max_io_size: Option<u32>,
    /// I/O unit size in bytes (deprecated in SPDK 26)
    #[arg(short = 'u', long)]
    io_unit_size: Option<u32>,
    #[arg(short = 'a', long)]
    max_aq_depth: Option<u32>,
    #[arg(short = 'n', long)]
    num_shared_buffers: Option<u32>,
    #[arg(short = 'b', long, conflicts_with = "iobuf_small_cache_size")]
    buf_cache_size: Option<u32>,
    #[arg(long)]
    iobuf_small_cache_size: Option<u32>,
    #[arg(long)]
    iobuf_large_cache_size: Option<u32>,
    /// Use zero-copy bdev I/O
    #[arg(short = 'z', long)]
    zcopy: bool,
    #[arg(short = 'd', long)]
    num_cqe: Option<i32>,
    #[arg(short = 's', long)]
    max_srq_depth: Option<u32>,
    #[arg(short = 'r', long)]
    no_srq: bool,
    /// Disable the C2H success optimization (TCP; rpc.py's flag name)
    #[arg(short = 'o', long = "c2h-success")]
    disable_c2h_success: bool,
    #[arg(short = 'f', long)]
    dif_insert_or_strip: bool,
    /// SO_PRIORITY of the transport's sockets (TCP)
    #[arg(short = 'y', long)]
    sock_priority: Option<u32>,
    #[arg(short = 'l', long)]
    acceptor_backlog: Option<i32>,
    #[arg(short = 'x', long)]
    abort_timeout_sec: Option<u32>,
    #[arg(short = 'w', long)]
    no_wr_batching: bool,
    #[arg(short = 'e', long)]
    control_msg_num: Option<u16>,
    #[arg(short = 'M', long)]
    disable_mappable_bar0: bool,
    #[arg(short = 'I', long)]
    disable_adaptive_irq: bool,
    #[arg(short = 'S', long)]
    disable_shadow_doorbells: bool,
    #[arg(long)]
    acceptor_poll_rate: Option<u32>,
    #[arg(long)]
    ack_timeout: Option<u32>,
    #[arg(long)]
    data_wr_pool_size: Option<u32>,
    #[arg(long)]
    disable_command_passthru: bool,
    /// Keep-alive granularity in 100 ms units
    #[arg(long)]
    kas: Option<u16>,
    #[arg(long)]
    min_kato: Option<u32>,
    /// Comma-separated ONCS features to hide: all, nvmcmps, nvmdsmsv, nvmwzsv, reservs, nvmcpys
    #[arg(long)]
    masked_oncs: Option<String>,
    /// Comma-separated fused operations to hide: all, fcws
    #[arg(long)]
    masked_fuses: Option<String>,
}

/// Where a listener listens (rpc.py groups these as `listen_address`).
#[derive(Args, Debug)]
pub struct ListenerArgs {
    /// Subsystem NQN ('discovery' for the discovery subsystem)
    nqn: String,
    /// Transport type, e.g. tcp
    #[arg(short = 't', long)]
    trtype: String,
    /// Transport address, e.g. an IP address
    #[arg(short = 'a', long)]
    traddr: String,
    #[arg(short = 'p', long)]
    tgt_name: Option<String>,
    /// Address family: ipv4, ipv6, ib, fc, intra_host
    #[arg(short = 'f', long)]
    adrfam: Option<String>,
    /// Service id, e.g. a port number
    #[arg(short = 's', long)]
    trsvcid: Option<String>,
}

impl ListenerArgs {
    fn params(&self) -> Params {
        let nqn = if self.nqn == "discovery" { DISCOVERY_NQN } else { self.nqn.as_str() };
        let address = Params::new()
            .set("trtype", self.trtype.as_str())
            .set("traddr", self.traddr.as_str())
            .opt("trsvcid", self.trsvcid.clone())
            .opt("adrfam", self.adrfam.clone());
        Params::new().set("nqn", nqn).opt("tgt_name", self.tgt_name.clone()).object("listen_address", address)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an NVMe-oF transport
    #[command(name = "nvmf_create_transport")]
    NvmfCreateTransport(TransportArgs),
    /// Display the transports
    #[command(name = "nvmf_get_transports")]
    NvmfGetTransports {
        #[arg(long)]
        trtype: Option<String>,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Create an NVMe-oF subsystem
    #[command(name = "nvmf_create_subsystem")]
    NvmfCreateSubsystem {
        nqn: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
        #[arg(short = 's', long)]
        serial_number: Option<String>,
        #[arg(short = 'd', long)]
        model_number: Option<String>,
        /// Allow any host to connect
        #[arg(short = 'a', long)]
        allow_any_host: bool,
        #[arg(short = 'm', long)]
        max_namespaces: Option<u32>,
        #[arg(short = 'r', long)]
        ana_reporting: bool,
        #[arg(short = 'i', long)]
        min_cntlid: Option<u16>,
        #[arg(short = 'I', long)]
        max_cntlid: Option<u16>,
        #[arg(long)]
        dmrsl: Option<u32>,
        #[arg(long)]
        wzsl: Option<u8>,
        #[arg(short = 'p', long)]
        passthrough: bool,
        #[arg(short = 'n', long)]
        enable_nssr: bool,
    },
    /// Delete an NVMe-oF subsystem
    #[command(name = "nvmf_delete_subsystem")]
    NvmfDeleteSubsystem {
        nqn: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Add a listener to a subsystem
    #[command(name = "nvmf_subsystem_add_listener")]
    NvmfSubsystemAddListener {
        #[command(flatten)]
        listener: ListenerArgs,
        /// Require a secure channel (TLS)
        #[arg(short = 'k', long)]
        secure_channel: bool,
        #[arg(short = 'n', long, value_parser = ["optimized", "non_optimized", "inaccessible"])]
        ana_state: Option<String>,
        #[arg(short = 'S', long)]
        sock_impl: Option<String>,
    },
    /// Remove a listener from a subsystem
    #[command(name = "nvmf_subsystem_remove_listener")]
    NvmfSubsystemRemoveListener {
        #[command(flatten)]
        listener: ListenerArgs,
    },
    /// Set the ANA state of a listener of a subsystem, for one ANA group or all
    #[command(name = "nvmf_subsystem_listener_set_ana_state")]
    NvmfSubsystemListenerSetAnaState {
        #[command(flatten)]
        listener: ListenerArgs,
        #[arg(short = 'n', long, required = true, value_parser = ["optimized", "non_optimized", "inaccessible"])]
        ana_state: String,
        /// ANA group ID (default: every group)
        #[arg(short = 'g', long)]
        anagrpid: Option<u32>,
    },
    /// Add a namespace to a subsystem; prints its NSID
    #[command(name = "nvmf_subsystem_add_ns")]
    NvmfSubsystemAddNs {
        nqn: String,
        bdev_name: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
        #[arg(short = 'p', long)]
        ptpl_file: Option<String>,
        /// Namespace ID (default: the lowest free)
        #[arg(short = 'n', long)]
        nsid: Option<u32>,
        /// 16-byte NGUID in hex
        #[arg(short = 'g', long)]
        nguid: Option<String>,
        /// 8-byte EUI-64 in hex
        #[arg(short = 'e', long)]
        eui64: Option<String>,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
        #[arg(short = 'a', long)]
        anagrpid: Option<u32>,
        #[arg(short = 'i', long)]
        no_auto_visible: bool,
        #[arg(short = 'N', long)]
        hide_metadata: bool,
        /// Peer-to-peer data buffers: off, auto, or a provider name (Peerless)
        #[arg(long)]
        p2pmem: Option<String>,
    },
    /// Remove a namespace from a subsystem
    #[command(name = "nvmf_subsystem_remove_ns")]
    NvmfSubsystemRemoveNs {
        nqn: String,
        nsid: u32,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Allow a host NQN to connect to a subsystem
    #[command(name = "nvmf_subsystem_add_host")]
    NvmfSubsystemAddHost {
        nqn: String,
        host: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
        #[arg(long)]
        psk: Option<String>,
        #[arg(long)]
        dhchap_key: Option<String>,
        #[arg(long)]
        dhchap_ctrlr_key: Option<String>,
    },
    /// Set (or clear) the DH-HMAC-CHAP keys a listed host authenticates with
    #[command(name = "nvmf_subsystem_set_keys")]
    NvmfSubsystemSetKeys {
        nqn: String,
        host: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
        #[arg(long)]
        dhchap_key: Option<String>,
        #[arg(long)]
        dhchap_ctrlr_key: Option<String>,
    },
    /// Set NVMf target config: the DH-HMAC-CHAP digests and DH groups hosts may use
    #[command(name = "nvmf_set_config")]
    NvmfSetConfig {
        /// Comma-separated: sha256, sha384, sha512
        #[arg(long)]
        dhchap_digests: Option<String>,
        /// Comma-separated: null, ffdhe2048, ffdhe3072, ffdhe4096, ffdhe6144, ffdhe8192
        #[arg(long)]
        dhchap_dhgroups: Option<String>,
    },
    /// Remove a host NQN from a subsystem
    #[command(name = "nvmf_subsystem_remove_host")]
    NvmfSubsystemRemoveHost {
        nqn: String,
        host: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
        #[arg(short = 'T', long)]
        timeout_ms: Option<u64>,
    },
    /// Allow any host (-e) or only listed hosts (-d) to connect
    #[command(name = "nvmf_subsystem_allow_any_host")]
    #[command(group(ArgGroup::new("mode").required(true).args(["enable", "disable"])))]
    NvmfSubsystemAllowAnyHost {
        nqn: String,
        /// Allow any host (SPDK 26 spells it --allow-any-host)
        #[arg(short = 'e', long, visible_alias = "allow-any-host")]
        enable: bool,
        /// Enforce the host list (SPDK 26 spells it --no-allow-any-host)
        #[arg(short = 'd', long, visible_alias = "no-allow-any-host")]
        disable: bool,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Display all subsystems, or one
    #[command(name = "nvmf_get_subsystems")]
    NvmfGetSubsystems {
        nqn: Option<String>,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Display the controllers of a subsystem
    #[command(name = "nvmf_subsystem_get_controllers")]
    NvmfSubsystemGetControllers {
        nqn: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Display the queue pairs of a subsystem
    #[command(name = "nvmf_subsystem_get_qpairs")]
    NvmfSubsystemGetQpairs {
        nqn: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Display the listeners of a subsystem
    #[command(name = "nvmf_subsystem_get_listeners")]
    NvmfSubsystemGetListeners {
        nqn: String,
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
    /// Display poll group statistics
    #[command(name = "nvmf_get_stats")]
    NvmfGetStats {
        #[arg(short = 't', long)]
        tgt_name: Option<String>,
    },
}

/// Splits a comma list and checks it against `known`; `all` stands for every entry.
fn feature_list(flag: &str, text: &str, known: &[&str]) -> Result<Vec<String>, String> {
    let items: Vec<&str> = text.split(',').map(str::trim).filter(|item| !item.is_empty()).collect();
    if items.contains(&"all") {
        return Ok(known.iter().map(|item| item.to_string()).collect());
    }
    match items.iter().find(|item| !known.contains(item)) {
        Some(bad) => Err(format!("{flag}: unknown '{bad}'; use all, {}", known.join(", "))),
        None => Ok(items.into_iter().map(String::from).collect()),
    }
}

impl TransportArgs {
    fn params(&self) -> Result<Params, String> {
        let oncs = self.masked_oncs.as_deref().map(|text| feature_list("--masked-oncs", text, &ONCS)).transpose()?;
        let fuses =
            self.masked_fuses.as_deref().map(|text| feature_list("--masked-fuses", text, &FUSES)).transpose()?;
        Ok(Params::new()
            .set("trtype", self.trtype.as_str())
            .opt("tgt_name", self.tgt_name.clone())
            .opt("max_queue_depth", self.max_queue_depth)
            .opt("max_io_qpairs_per_ctrlr", self.max_io_qpairs_per_ctrlr)
            .opt("in_capsule_data_size", self.in_capsule_data_size)
            .opt("max_io_size", self.max_io_size)
            .opt("io_unit_size", self.io_unit_size)
            .opt("max_aq_depth", self.max_aq_depth)
            .opt("num_shared_buffers", self.num_shared_buffers)
            .opt("buf_cache_size", self.buf_cache_size)
            .opt("iobuf_small_cache_size", self.iobuf_small_cache_size)
            .opt("iobuf_large_cache_size", self.iobuf_large_cache_size)
            .flag("zcopy", self.zcopy)
            .opt("num_cqe", self.num_cqe)
            .opt("max_srq_depth", self.max_srq_depth)
            .flag("no_srq", self.no_srq)
            .opt("c2h_success", self.disable_c2h_success.then_some(false))
            .flag("dif_insert_or_strip", self.dif_insert_or_strip)
            .opt("sock_priority", self.sock_priority)
            .opt("acceptor_backlog", self.acceptor_backlog)
            .opt("abort_timeout_sec", self.abort_timeout_sec)
            .flag("no_wr_batching", self.no_wr_batching)
            .opt("control_msg_num", self.control_msg_num)
            .flag("disable_mappable_bar0", self.disable_mappable_bar0)
            .flag("disable_adaptive_irq", self.disable_adaptive_irq)
            .flag("disable_shadow_doorbells", self.disable_shadow_doorbells)
            .opt("acceptor_poll_rate", self.acceptor_poll_rate)
            .opt("ack_timeout", self.ack_timeout)
            .opt("data_wr_pool_size", self.data_wr_pool_size)
            .flag("disable_command_passthru", self.disable_command_passthru)
            .opt("kas", self.kas)
            .opt("min_kato", self.min_kato)
            .opt("masked_oncs", oncs)
            .opt("masked_fuses", fuses))
    }
}

impl Command {
    pub fn action(&self) -> Result<Action, String> {
        use Output::{Json, Nothing};
        let p = Params::new;
        let by_nqn = |method: &str, nqn: &str, tgt: &Option<String>, output| {
            call(method, p().set("nqn", nqn).opt("tgt_name", tgt.clone()), output)
        };
        Ok(match self {
            Command::NvmfCreateTransport(args) => call("nvmf_create_transport", args.params()?, Nothing),
            Command::NvmfGetTransports { trtype, tgt_name } => {
                call("nvmf_get_transports", p().opt("trtype", trtype.clone()).opt("tgt_name", tgt_name.clone()), Json)
            }
            Command::NvmfCreateSubsystem {
                nqn,
                tgt_name,
                serial_number,
                model_number,
                allow_any_host,
                max_namespaces,
                ana_reporting,
                min_cntlid,
                max_cntlid,
                dmrsl,
                wzsl,
                passthrough,
                enable_nssr,
            } => {
                let params = p()
                    .set("nqn", nqn.as_str())
                    .opt("tgt_name", tgt_name.clone())
                    .opt("serial_number", serial_number.clone())
                    .opt("model_number", model_number.clone())
                    .flag("allow_any_host", *allow_any_host)
                    .opt("max_namespaces", *max_namespaces)
                    .flag("ana_reporting", *ana_reporting)
                    .opt("min_cntlid", *min_cntlid)
                    .opt("max_cntlid", *max_cntlid)
                    .opt("dmrsl", *dmrsl)
                    .opt("wzsl", *wzsl)
                    .flag("passthrough", *passthrough)
                    .flag("enable_nssr", *enable_nssr);
                call("nvmf_create_subsystem", params, Nothing)
            }
            Command::NvmfDeleteSubsystem { nqn, tgt_name } => by_nqn("nvmf_delete_subsystem", nqn, tgt_name, Nothing),
            Command::NvmfSubsystemAddListener { listener, secure_channel, ana_state, sock_impl } => {
                let params = listener
                    .params()
                    .flag("secure_channel", *secure_channel)
                    .opt("ana_state", ana_state.clone())
                    .opt("sock_impl", sock_impl.clone());
                call("nvmf_subsystem_add_listener", params, Nothing)
            }
            Command::NvmfSubsystemRemoveListener { listener } => {
                call("nvmf_subsystem_remove_listener", listener.params(), Nothing)
            }
            Command::NvmfSubsystemListenerSetAnaState { listener, ana_state, anagrpid } => {
                let params = listener.params().set("ana_state", ana_state.as_str()).opt("anagrpid", *anagrpid);
                call("nvmf_subsystem_listener_set_ana_state", params, Nothing)
            }
            Command::NvmfSubsystemAddNs {
                nqn,
                bdev_name,
                tgt_name,
                ptpl_file,
                nsid,
                nguid,
                eui64,
                uuid,
                anagrpid,
                no_auto_visible,
                hide_metadata,
                p2pmem,
            } => {
                let namespace = p()
                    .set("bdev_name", bdev_name.as_str())
                    .opt("nsid", *nsid)
                    .opt("nguid", nguid.clone())
                    .opt("eui64", eui64.clone())
                    .opt("uuid", uuid.clone())
                    .opt("ptpl_file", ptpl_file.clone())
                    .opt("anagrpid", *anagrpid)
                    .flag("no_auto_visible", *no_auto_visible)
                    .flag("hide_metadata", *hide_metadata)
                    .opt("p2pmem", p2pmem.clone());
                let params =
                    p().set("nqn", nqn.as_str()).object("namespace", namespace).opt("tgt_name", tgt_name.clone());
                call("nvmf_subsystem_add_ns", params, Json)
            }
            Command::NvmfSubsystemRemoveNs { nqn, nsid, tgt_name } => {
                let params = p().set("nqn", nqn.as_str()).set("nsid", *nsid).opt("tgt_name", tgt_name.clone());
                call("nvmf_subsystem_remove_ns", params, Nothing)
            }
            Command::NvmfSubsystemAddHost { nqn, host, tgt_name, psk, dhchap_key, dhchap_ctrlr_key } => {
                let params = p()
                    .set("nqn", nqn.as_str())
                    .set("host", host.as_str())
                    .opt("tgt_name", tgt_name.clone())
                    .opt("psk", psk.clone())
                    .opt("dhchap_key", dhchap_key.clone())
                    .opt("dhchap_ctrlr_key", dhchap_ctrlr_key.clone());
                call("nvmf_subsystem_add_host", params, Nothing)
            }
            Command::NvmfSubsystemSetKeys { nqn, host, tgt_name, dhchap_key, dhchap_ctrlr_key } => {
                let params = p()
                    .set("nqn", nqn.as_str())
                    .set("host", host.as_str())
                    .opt("tgt_name", tgt_name.clone())
                    .opt("dhchap_key", dhchap_key.clone())
                    .opt("dhchap_ctrlr_key", dhchap_ctrlr_key.clone());
                call("nvmf_subsystem_set_keys", params, Nothing)
            }
            Command::NvmfSetConfig { dhchap_digests, dhchap_dhgroups } => {
                // rpc.py splits these at commas and sends lists; the target checks the names.
                let list = |text: &Option<String>| {
                    text.as_deref().map(|text| {
                        Value::from(text.split(',').map(str::trim).filter(|n| !n.is_empty()).collect::<Vec<_>>())
                    })
                };
                let params =
                    p().opt("dhchap_digests", list(dhchap_digests)).opt("dhchap_dhgroups", list(dhchap_dhgroups));
                call("nvmf_set_config", params, Nothing)
            }
            Command::NvmfSubsystemRemoveHost { nqn, host, tgt_name, timeout_ms } => {
                let params = p()
                    .set("nqn", nqn.as_str())
                    .set("host", host.as_str())
                    .opt("tgt_name", tgt_name.clone())
                    .opt("timeout_ms", *timeout_ms);
                call("nvmf_subsystem_remove_host", params, Nothing)
            }
            Command::NvmfSubsystemAllowAnyHost { nqn, enable, disable, tgt_name } => {
                // The group makes exactly one of the two present.
                debug_assert!(enable != disable);
                let params =
                    p().set("nqn", nqn.as_str()).set("allow_any_host", *enable).opt("tgt_name", tgt_name.clone());
                call("nvmf_subsystem_allow_any_host", params, Nothing)
            }
            Command::NvmfGetSubsystems { nqn, tgt_name } => {
                call("nvmf_get_subsystems", p().opt("nqn", nqn.clone()).opt("tgt_name", tgt_name.clone()), Json)
            }
            Command::NvmfSubsystemGetControllers { nqn, tgt_name } => {
                by_nqn("nvmf_subsystem_get_controllers", nqn, tgt_name, Json)
            }
            Command::NvmfSubsystemGetQpairs { nqn, tgt_name } => {
                by_nqn("nvmf_subsystem_get_qpairs", nqn, tgt_name, Json)
            }
            Command::NvmfSubsystemGetListeners { nqn, tgt_name } => {
                by_nqn("nvmf_subsystem_get_listeners", nqn, tgt_name, Json)
            }
            Command::NvmfGetStats { tgt_name } => call("nvmf_get_stats", p().opt("tgt_name", tgt_name.clone()), Json),
        })
    }
}
