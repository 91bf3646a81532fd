//! NVMe controller subcommands (rpc.py's bdev_nvme_* in bdev.py), with rpc.py's flags.
//! Peerless attaches PCIe controllers; the fabric flags are passed on, and the target
//! refuses them by name.

use clap::Subcommand;

use super::{call, Action, Output, Params};

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach an NVMe controller; prints the bdevs of its namespaces
    #[command(name = "bdev_nvme_attach_controller")]
    BdevNvmeAttachController {
        /// Controller name; its namespaces become bdevs NAMEn1, NAMEn2, ...
        #[arg(short = 'b', long)]
        name: String,
        /// Transport type: PCIe
        #[arg(short = 't', long)]
        trtype: String,
        /// Transport address: the PCI address, e.g. 0000:00:04.0
        #[arg(short = 'a', long)]
        traddr: String,
        #[arg(short = 'f', long)]
        adrfam: Option<String>,
        #[arg(short = 's', long)]
        trsvcid: Option<String>,
        #[arg(short = 'n', long)]
        subnqn: Option<String>,
        #[arg(short = 'q', long)]
        hostnqn: Option<String>,
        /// I/O queue pairs to ask the controller for
        #[arg(long)]
        num_io_queues: Option<u32>,
        /// Most bdevs to create
        #[arg(short = 'm', long)]
        max_bdevs: Option<u32>,
    },
    /// Detach an NVMe controller and delete its bdevs
    #[command(name = "bdev_nvme_detach_controller")]
    BdevNvmeDetachController {
        name: String,
        #[arg(short = 't', long)]
        trtype: Option<String>,
        #[arg(short = 'a', long)]
        traddr: Option<String>,
    },
    /// Reset an NVMe controller: its I/O queues are created again and what was in flight
    /// is submitted again
    #[command(name = "bdev_nvme_reset_controller")]
    BdevNvmeResetController {
        /// Controller name
        name: String,
        /// Which of its controllers (by controller ID)
        #[arg(short = 'c', long)]
        cntlid: Option<u16>,
    },
    /// Set the driver's options for controllers attached afterwards
    #[command(name = "bdev_nvme_set_options")]
    BdevNvmeSetOptions {
        /// What to do when a command times out: none, abort or reset
        #[arg(short = 'a', long)]
        action_on_timeout: Option<String>,
        /// Command timeout in microseconds (0: none)
        #[arg(short = 't', long)]
        timeout_us: Option<u64>,
    },
    /// Send an admin command to a controller and print its completion (and data), all
    /// base64 (URL-safe) as rpc.py's are
    #[command(name = "bdev_nvme_send_cmd")]
    BdevNvmeSendCmd {
        /// Controller name
        #[arg(short = 'n', long = "nvme-name")]
        name: String,
        /// admin (io is refused: I/O goes through the bdev)
        #[arg(short = 't', long)]
        cmd_type: String,
        /// c2h (data comes back) or h2c (data goes to the controller)
        #[arg(short = 'r', long)]
        data_direction: String,
        /// The 64-byte submission queue entry, base64
        #[arg(short = 'c', long)]
        cmdbuf: String,
        /// Data for the controller (h2c), base64, up to 4096 bytes
        #[arg(short = 'd', long)]
        data: Option<String>,
        /// Metadata (refused: the driver serves none)
        #[arg(short = 'm', long)]
        metadata: Option<String>,
        /// Bytes of data to read back (c2h)
        #[arg(short = 'D', long = "data-length")]
        data_len: Option<u32>,
        /// Metadata bytes (refused)
        #[arg(short = 'M', long = "metadata-length")]
        metadata_len: Option<u32>,
        /// How long the command may take (0 or none: 30 s)
        #[arg(short = 'T', long)]
        timeout_ms: Option<u32>,
    },
    /// List NVMe controllers
    #[command(name = "bdev_nvme_get_controllers")]
    BdevNvmeGetControllers {
        #[arg(short = 'n', long)]
        name: Option<String>,
    },
}

impl Command {
    pub fn action(&self) -> Result<Action, String> {
        let p = Params::new;
        Ok(match self {
            Command::BdevNvmeAttachController {
                name,
                trtype,
                traddr,
                adrfam,
                trsvcid,
                subnqn,
                hostnqn,
                num_io_queues,
                max_bdevs,
            } => {
                let params = p()
                    .set("name", name.as_str())
                    .set("trtype", trtype.as_str())
                    .set("traddr", traddr.as_str())
                    .opt("adrfam", adrfam.clone())
                    .opt("trsvcid", trsvcid.clone())
                    .opt("subnqn", subnqn.clone())
                    .opt("hostnqn", hostnqn.clone())
                    .opt("num_io_queues", *num_io_queues)
                    .opt("max_bdevs", *max_bdevs);
                call("bdev_nvme_attach_controller", params, Output::Words)
            }
            Command::BdevNvmeDetachController { name, trtype, traddr } => {
                let params = p().set("name", name.as_str()).opt("trtype", trtype.clone()).opt("traddr", traddr.clone());
                call("bdev_nvme_detach_controller", params, Output::Nothing)
            }
            Command::BdevNvmeResetController { name, cntlid } => call(
                "bdev_nvme_reset_controller",
                p().set("name", name.as_str()).opt("cntlid", *cntlid),
                Output::Nothing,
            ),
            Command::BdevNvmeSetOptions { action_on_timeout, timeout_us } => {
                let params = p().opt("action_on_timeout", action_on_timeout.clone()).opt("timeout_us", *timeout_us);
                call("bdev_nvme_set_options", params, Output::Nothing)
            }
            Command::BdevNvmeSendCmd {
                name,
                cmd_type,
                data_direction,
                cmdbuf,
                data,
                metadata,
                data_len,
                metadata_len,
                timeout_ms,
            } => {
                let params = p()
                    .set("name", name.as_str())
                    .set("cmd_type", cmd_type.as_str())
                    .set("data_direction", data_direction.as_str())
                    .set("cmdbuf", cmdbuf.as_str())
                    .opt("data", data.clone())
                    .opt("metadata", metadata.clone())
                    .opt("data_len", *data_len)
                    .opt("metadata_len", *metadata_len)
                    .opt("timeout_ms", *timeout_ms);
                call("bdev_nvme_send_cmd", params, Output::Json)
            }
            Command::BdevNvmeGetControllers { name } => {
                call("bdev_nvme_get_controllers", p().opt("name", name.clone()), Output::Json)
            }
        })
    }
}
