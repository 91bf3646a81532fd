//! peerless-perf: NVMe-oF (TCP; RDMA with the `rdma` feature) benchmark and identify tool
//! with spdk_nvme_perf's flags.
//!
//! ```text
//! peerless-perf -r 'trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420' -q 128 -o 4096 -w randread -t 10
//! peerless-perf identify -r 'trtype:tcp traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2016-06.io.spdk:cnode1'
//! peerless-perf -r 'trtype:rdma traddr:10.0.2.15 trsvcid:4420 subnqn:nqn.2016-06.io.spdk:cnode1' -q 32 -o 4096 -w randrw -M 50 -t 5 --verify
//! peerless-perf -r 'trtype:PCIe traddr:0000:00:04.0' -q 32 -o 4096 -w randread -t 10
//! peerless-perf identify -r 'trtype:PCIe traddr:0000:00:04.0'
//! ```
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{ArgAction, Args, Parser, Subcommand};
use peerless_tools::initiator::auth::secret_argument;
use peerless_tools::initiator::{discover, subtype, Controller, Digests, HostAuth, HostTls, Options};
use peerless_tools::perf::{self, identify, parse_core_mask, pcie, Endpoint, PerfConfig, Workload};

/// Host NQN used when neither --hostnqn nor the transport ID names one.
const DEFAULT_HOSTNQN: &str = "nqn.2014-08.io.peerless:perf";
/// Keep Alive Timeout when --kato-ms is not given.
const DEFAULT_KATO_MS: u32 = 10_000;

#[derive(Parser)]
#[command(
    name = "peerless-perf",
    about = "NVMe benchmark over TCP, RDMA or local PCIe (spdk_nvme_perf's flags) and identify"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    perf: PerfArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print controller and namespace data like spdk_nvme_identify.
    Identify(IdentifyArgs),
}

#[derive(Args)]
struct IdentifyArgs {
    /// Transport ID: 'trtype:tcp|rdma adrfam:IPv4 traddr:A trsvcid:P [subnqn:N] [ns:N]'
    /// (rdma needs a build with the `rdma` feature), or 'trtype:PCIe traddr:0000:00:04.0 [ns:N]'
    /// for a local NVMe function bound to vfio-pci or uio_pci_generic.
    #[arg(short = 'r', long = "transport")]
    trid: String,
    #[arg(long)]
    hostnqn: Option<String>,
    /// Header digest.
    #[arg(short = 'H', long = "enable-tcp-hdgst")]
    header_digest: bool,
    /// Data digest.
    #[arg(short = 'I', long = "enable-tcp-ddgst")]
    data_digest: bool,
    #[command(flatten)]
    auth: AuthArgs,
}

#[derive(Args)]
struct PerfArgs {
    /// Transport ID: 'trtype:tcp|rdma adrfam:IPv4 traddr:A trsvcid:P [subnqn:N] [ns:N]'
    /// (rdma needs a build with the `rdma` feature), or 'trtype:PCIe traddr:0000:00:04.0 [ns:N]'
    /// for a local NVMe function bound to vfio-pci or uio_pci_generic.
    #[arg(short = 'r', long = "transport")]
    trid: Option<String>,
    /// I/O depth per namespace per core.
    #[arg(short = 'q', long = "io-depth")]
    queue_depth: Option<u16>,
    /// I/O size in bytes.
    #[arg(short = 'o', long = "io-size")]
    io_bytes: Option<usize>,
    /// read, write, randread, randwrite, rw, randrw.
    #[arg(short = 'w', long = "io-pattern")]
    workload: Option<String>,
    /// Read percentage of rw/randrw.
    #[arg(short = 'M', long = "rwmixread")]
    read_percent: Option<u8>,
    /// Run time in seconds.
    #[arg(short = 't', long = "time")]
    seconds: Option<u64>,
    /// Core mask (hex, or a list like [0,2-3]).
    #[arg(short = 'c', long = "core-mask", default_value = "0x1")]
    core_mask: String,
    /// Queues per namespace per core.
    #[arg(short = 'P', long = "num-qpairs", default_value_t = 1)]
    queues_per_ns: u16,
    /// Header digest.
    #[arg(short = 'H', long = "enable-tcp-hdgst")]
    header_digest: bool,
    /// Data digest.
    #[arg(short = 'I', long = "enable-tcp-ddgst")]
    data_digest: bool,
    /// Latency percentiles (-L) and the histogram too (-LL).
    #[arg(short = 'L', long = "enable-sw-latency-tracking", action = ArgAction::Count)]
    latency: u8,
    /// Write a pattern holding LBA and seed, read it back, count mismatched blocks.
    #[arg(long)]
    verify: bool,
    /// Print the summary as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Write the latency percentile curve as an SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long)]
    hostnqn: Option<String>,
    /// Seed for random offsets and the verify pattern (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep Alive Timeout in milliseconds (0 = off; default 10000). Fabrics only.
    #[arg(long)]
    kato_ms: Option<u32>,
    /// Start at most this many I/Os per second in all (shared over the cores), evenly
    /// spaced, as fio's rate_iops: a steady load instead of the most the target takes.
    #[arg(long = "rate-iops", value_name = "IOPS")]
    rate_iops: Option<u32>,
    #[command(flatten)]
    auth: AuthArgs,
}

/// DH-HMAC-CHAP secrets, as SPDK's perf takes them: key files (`DHHC-1:...` inside, as
/// `nvme gen-dhchap-key` writes); the secret text itself is taken too, for a quick test,
/// though it then shows in the process list.
#[derive(Args)]
struct AuthArgs {
    /// DH-HMAC-CHAP key file (or secret): authenticate when the target asks.
    #[arg(long = "dhchap-key", value_name = "FILE")]
    dhchap_key: Option<String>,
    /// DH-HMAC-CHAP controller key file (or secret): authenticate the target too.
    #[arg(long = "dhchap-ctrlr-key", value_name = "FILE", requires = "dhchap_key")]
    dhchap_ctrlr_key: Option<String>,
    /// TLS PSK file (`NVMeTLSkey-1:01:...:`, as `nvme gen-tls-key` prints): connect over
    /// TLS 1.3 to a secure_channel listener.
    #[arg(long = "psk", value_name = "FILE")]
    psk: Option<PathBuf>,
    /// The PSK identity version to present: 0 (`NVMe0R..`) or 1 (`NVMe1R.. <digest>`,
    /// which binds the identity to the key).
    #[arg(long = "psk-identity-version", value_name = "0|1", default_value_t = 0, requires = "psk")]
    psk_identity_version: u8,
}

impl AuthArgs {
    fn given(&self) -> Option<&'static str> {
        [("--dhchap-key", self.dhchap_key.is_some()), ("--psk", self.psk.is_some())]
            .into_iter()
            .find_map(|(flag, given)| given.then_some(flag))
    }

    fn host_auth(&self) -> Result<Option<HostAuth>, String> {
        let Some(key) = &self.dhchap_key else { return Ok(None) };
        let secret = secret_argument(key).map_err(|e| e.to_string())?;
        let ctrlr = self.dhchap_ctrlr_key.as_deref().map(secret_argument).transpose().map_err(|e| e.to_string())?;
        HostAuth::new(&secret, ctrlr.as_deref()).map(Some).map_err(|e| e.to_string())
    }

    fn host_tls(&self) -> Result<Option<HostTls>, String> {
        let Some(path) = self.psk.as_deref() else { return Ok(None) };
        let tls = HostTls::from_file(path).and_then(|tls| tls.with_identity_version(self.psk_identity_version));
        tls.map(Some).map_err(|e| e.to_string())
    }
}

fn required<T>(value: Option<T>, flag: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("{flag} is required"))
}

/// Options that only mean something to a fabric, refused by name for trtype PCIe
/// rather than ignored.
fn refuse_fabric_flags(trid: &Endpoint, flags: &[(&'static str, bool)], auth: &AuthArgs) -> Result<(), String> {
    if let Endpoint::Pcie(pcie) = trid {
        let given = flags.iter().find_map(|(flag, given)| given.then_some(*flag)).or(auth.given());
        if let Some(flag) = given {
            return Err(format!("{flag} applies to fabrics (tcp, rdma), not to trtype PCIe {}", pcie.bdf));
        }
    }
    Ok(())
}

fn perf_config(args: PerfArgs) -> Result<PerfConfig, String> {
    let trid = Endpoint::parse(&required(args.trid, "-r")?)?;
    let fabric_flags = [
        ("-H", args.header_digest),
        ("-I", args.data_digest),
        ("--hostnqn", args.hostnqn.is_some()),
        ("--kato-ms", args.kato_ms.is_some()),
    ];
    refuse_fabric_flags(&trid, &fabric_flags, &args.auth)?;
    let trid_hostnqn = match &trid {
        Endpoint::Fabric(fabric) => fabric.hostnqn.clone(),
        Endpoint::Pcie(_) => None,
    };
    let hostnqn = args.hostnqn.or(trid_hostnqn).unwrap_or_else(|| DEFAULT_HOSTNQN.into());
    let clock_seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    Ok(PerfConfig {
        hostnqn,
        queue_depth: required(args.queue_depth, "-q")?,
        io_bytes: required(args.io_bytes, "-o")?,
        workload: Workload::parse(&required(args.workload, "-w")?, args.read_percent)?,
        duration: Duration::from_secs(required(args.seconds, "-t")?),
        cores: parse_core_mask(&args.core_mask)?,
        queues_per_ns: args.queues_per_ns,
        digests: Digests { header: args.header_digest, data: args.data_digest },
        latency_detail: args.latency,
        verify: args.verify,
        json: args.json,
        plot: args.plot,
        seed: args.seed.unwrap_or(clock_seed),
        kato_ms: args.kato_ms.unwrap_or(DEFAULT_KATO_MS),
        rate_iops: args.rate_iops,
        auth: args.auth.host_auth()?,
        tls: args.auth.host_tls()?,
        trid,
    })
}

fn run_perf(args: PerfArgs) -> Result<(), String> {
    let config = perf_config(args)?;
    let summary = if config.json {
        perf::run(&config, &mut std::io::stderr())
    } else {
        perf::run(&config, &mut std::io::stdout())
    }
    .map_err(|e| e.to_string())?;
    if config.json {
        let text = serde_json::to_string(&summary).map_err(|e| e.to_string())?;
        println!("{text}");
    }
    if summary.errors > 0 || summary.mismatches > 0 {
        return Err(format!("{} I/O errors, {} mismatched blocks", summary.errors, summary.mismatches));
    }
    Ok(())
}

fn run_identify(args: IdentifyArgs) -> Result<(), String> {
    let endpoint = Endpoint::parse(&args.trid)?;
    let fabric_flags = [("-H", args.header_digest), ("-I", args.data_digest), ("--hostnqn", args.hostnqn.is_some())];
    refuse_fabric_flags(&endpoint, &fabric_flags, &args.auth)?;
    let trid = match endpoint {
        Endpoint::Fabric(trid) => trid,
        Endpoint::Pcie(address) => {
            let mut out = std::io::stdout().lock();
            pcie::identify(&address, &mut out).map_err(|e| e.to_string())?;
            return out.flush().map_err(|e| e.to_string());
        }
    };
    let addr = trid.socket_addr()?;
    let hostnqn = args.hostnqn.or(trid.hostnqn.clone()).unwrap_or_else(|| DEFAULT_HOSTNQN.into());
    let options = Options {
        trtype: trid.trtype,
        digests: Digests { header: args.header_digest, data: args.data_digest },
        auth: args.auth.host_auth()?,
        tls: args.auth.host_tls()?,
        ..Options::default()
    };
    let mut out = std::io::stdout().lock();
    let subnqns = match &trid.subnqn {
        Some(subnqn) => vec![subnqn.clone()],
        None => {
            // As spdk_nvme_identify does without a subsystem: the discovery log, then each subsystem.
            let log = discover(addr, &hostnqn, &options).map_err(|e| e.to_string())?;
            identify::print_discovery(&log, &mut out).map_err(|e| e.to_string())?;
            log.entries.into_iter().filter(|e| e.subtype == subtype::NVME).map(|e| e.subnqn).collect()
        }
    };
    for subnqn in subnqns {
        let mut ctrl = Controller::connect(addr, &subnqn, &hostnqn, &options).map_err(|e| format!("{subnqn}: {e}"))?;
        identify::identify(&mut ctrl, trid.nsid, &mut out).map_err(|e| format!("{subnqn}: {e}"))?;
    }
    out.flush().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Identify(args)) => run_identify(args),
        None => run_perf(cli.perf),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("peerless-perf: {message}");
            ExitCode::FAILURE
        }
    }
}
