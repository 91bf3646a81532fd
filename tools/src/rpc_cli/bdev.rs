//! Block device subcommands (rpc.py's bdev.py). Sizes given in MiB on
//! the command line travel as block counts, as rpc.py computes them.

use clap::Subcommand;

use super::{blocks_from_mib, call, Action, Output, Params};

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a RAM-backed bdev
    #[command(name = "bdev_malloc_create")]
    BdevMallocCreate {
        /// Bdev name (default: the target picks MallocN)
        #[arg(short = 'b', long)]
        name: Option<String>,
        /// UUID of the bdev
        #[arg(short = 'u', long)]
        uuid: Option<String>,
        /// Size in MiB (a decimal number > 0)
        total_size: f64,
        /// Data block size in bytes
        block_size: u32,
        /// Physical block size in bytes
        #[arg(short = 'p', long)]
        physical_block_size: Option<u32>,
        /// Split I/O on this boundary, in blocks (0: off)
        #[arg(short = 'o', long)]
        optimal_io_boundary: Option<u32>,
        /// Metadata size per block (0, 8, 16, 32, 64 or 128)
        #[arg(short = 'm', long)]
        md_size: Option<u32>,
        /// Interleave metadata with data
        #[arg(short = 'i', long)]
        md_interleave: bool,
        /// Protection information type (0-3)
        #[arg(short = 't', long)]
        dif_type: Option<u8>,
        /// Protection information in the first bytes of metadata
        #[arg(short = 'd', long)]
        dif_is_head_of_md: bool,
    },
    /// Delete a malloc bdev
    #[command(name = "bdev_malloc_delete")]
    BdevMallocDelete { name: String },
    /// Create a bdev that discards writes and reads zeroes
    #[command(name = "bdev_null_create")]
    BdevNullCreate {
        name: String,
        /// Size in MiB (data blocks only)
        total_size: f64,
        /// Block size in bytes (data plus metadata when --md-size is set)
        block_size: u32,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
        #[arg(short = 'p', long)]
        physical_block_size: Option<u32>,
        #[arg(short = 'm', long)]
        md_size: Option<u32>,
        #[arg(short = 't', long)]
        dif_type: Option<u8>,
        #[arg(short = 'd', long)]
        dif_is_head_of_md: bool,
    },
    /// Delete a null bdev
    #[command(name = "bdev_null_delete")]
    BdevNullDelete { name: String },
    /// Grow a null bdev
    #[command(name = "bdev_null_resize")]
    BdevNullResize {
        name: String,
        /// The new size in MiB (not less than now)
        new_size: u64,
    },
    /// Create a bdev on a file or block device through io_uring
    #[command(name = "bdev_uring_create")]
    BdevUringCreate {
        /// Path to the file or device (e.g. /dev/nvme0n1)
        filename: String,
        name: String,
        /// Block size in bytes (default: the device's)
        block_size: Option<u32>,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
    },
    /// Delete a uring bdev
    #[command(name = "bdev_uring_delete")]
    BdevUringDelete { name: String },
    /// Display all bdevs, or one
    #[command(name = "bdev_get_bdevs")]
    BdevGetBdevs {
        /// Bdev name, alias or UUID
        #[arg(short = 'b', long)]
        name: Option<String>,
        /// Milliseconds to wait for the bdev to appear (with -b)
        #[arg(short = 't', long = "timeout-ms")]
        timeout_ms: Option<u64>,
    },
    /// Display I/O statistics of all bdevs, or of some
    #[command(name = "bdev_get_iostat")]
    BdevGetIostat {
        /// One bdev (sent as `name`, which every SPDK release accepts)
        #[arg(short = 'b', long, conflicts_with = "names")]
        name: Option<String>,
        /// Comma-separated bdev names (sent as `names`, SPDK 26.01 and later)
        #[arg(long)]
        names: Option<String>,
        /// Per-channel statistics
        #[arg(short = 'c', long)]
        per_channel: bool,
        /// Reset the statistics after reading them
        #[arg(long, value_parser = ["all", "maxmin", "none"])]
        reset_mode: Option<String>,
    },
    /// Create a bdev that delays I/O to a base bdev
    #[command(name = "bdev_delay_create")]
    BdevDelayCreate {
        #[arg(short = 'b', long)]
        base_bdev_name: String,
        #[arg(short = 'd', long)]
        name: String,
        /// Average read latency in µs
        #[arg(short = 'r', long)]
        avg_read_latency: u64,
        /// p99 read latency in µs
        #[arg(short = 't', long)]
        nine_nine_read_latency: u64,
        /// Average write latency in µs
        #[arg(short = 'w', long)]
        avg_write_latency: u64,
        /// p99 write latency in µs
        #[arg(short = 'n', long)]
        nine_nine_write_latency: u64,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
    },
    /// Delete a delay bdev
    #[command(name = "bdev_delay_delete")]
    BdevDelayDelete { name: String },
    /// Change one latency of a delay bdev
    #[command(name = "bdev_delay_update_latency")]
    BdevDelayUpdateLatency {
        delay_bdev_name: String,
        /// avg_read, avg_write, p99_read or p99_write
        latency_type: String,
        latency_us: u64,
    },
    /// Create an error-injection bdev EE_<base_name>
    #[command(name = "bdev_error_create")]
    BdevErrorCreate {
        base_name: String,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
    },
    /// Delete an error-injection bdev
    #[command(name = "bdev_error_delete")]
    BdevErrorDelete { name: String },
    /// Inject errors into an error-injection bdev
    #[command(name = "bdev_error_inject_error")]
    BdevErrorInjectError {
        name: String,
        /// clear, read, write, unmap, flush or all
        io_type: String,
        /// failure, pending, corrupt_data, nomem or nvme_failure
        error_type: String,
        /// How many commands fail (server default 1)
        #[arg(short = 'n', long)]
        num: Option<u32>,
        /// Queue depth at which to start failing
        #[arg(short = 'q', long)]
        queue_depth: Option<u64>,
        /// Byte offset to corrupt (corrupt_data)
        #[arg(short = 'o', long)]
        corrupt_offset: Option<u64>,
        /// XOR value for corruption (1-255)
        #[arg(short = 'v', long)]
        corrupt_value: Option<u8>,
    },
    /// Create a pass-through bdev on a base bdev
    #[command(name = "bdev_passthru_create")]
    BdevPassthruCreate {
        #[arg(short = 'b', long)]
        base_bdev_name: String,
        #[arg(short = 'p', long)]
        name: String,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
    },
    /// Delete a pass-through bdev
    #[command(name = "bdev_passthru_delete")]
    BdevPassthruDelete { name: String },
    /// Split a bdev into <base>p0..p(N-1)
    #[command(name = "bdev_split_create")]
    BdevSplitCreate {
        base_bdev: String,
        split_count: u32,
        /// Size of each split in MiB (default: equal parts)
        #[arg(short = 's', long)]
        split_size_mb: Option<u64>,
    },
    /// Delete the splits of a bdev
    #[command(name = "bdev_split_delete")]
    BdevSplitDelete { base_bdev: String },
    /// Set QoS rate limits on a bdev (0: unlimited)
    #[command(name = "bdev_set_qos_limit")]
    BdevSetQosLimit {
        name: String,
        /// I/Os per second, a multiple of 1000
        #[arg(long, alias = "rw_ios_per_sec")]
        rw_ios_per_sec: Option<u64>,
        #[arg(long, alias = "rw_mbytes_per_sec")]
        rw_mbytes_per_sec: Option<u64>,
        #[arg(long, alias = "r_mbytes_per_sec")]
        r_mbytes_per_sec: Option<u64>,
        #[arg(long, alias = "w_mbytes_per_sec")]
        w_mbytes_per_sec: Option<u64>,
    },
    /// Create an emulated NVMe SSD with a controller memory buffer (P2P-capable)
    #[command(name = "bdev_nvmesim_create")]
    BdevNvmesimCreate {
        #[arg(short = 'b', long)]
        name: String,
        /// Size in MiB
        size_mb: f64,
        block_size: u32,
        /// CMB size in MiB
        #[arg(long, default_value_t = 64)]
        cmb_size_mb: u64,
        /// Back the media with this file instead of memory
        #[arg(long)]
        filename: Option<String>,
    },
    /// Delete an emulated NVMe SSD
    #[command(name = "bdev_nvmesim_delete")]
    BdevNvmesimDelete { name: String },
}

impl Command {
    pub fn action(&self) -> Result<Action, String> {
        use Output::{Json, Nothing, Words};
        let p = Params::new;
        let named = |method: &str, name: &str| call(method, p().set("name", name), Nothing);
        Ok(match self {
            Command::BdevMallocCreate {
                name,
                uuid,
                total_size,
                block_size,
                physical_block_size,
                optimal_io_boundary,
                md_size,
                md_interleave,
                dif_type,
                dif_is_head_of_md,
            } => {
                let params = p()
                    .set("num_blocks", blocks_from_mib(*total_size, *block_size)?)
                    .set("block_size", *block_size)
                    .opt("physical_block_size", *physical_block_size)
                    .opt("name", name.clone())
                    .opt("uuid", uuid.clone())
                    .opt("optimal_io_boundary", *optimal_io_boundary)
                    .opt("md_size", *md_size)
                    .flag("md_interleave", *md_interleave)
                    .opt("dif_type", *dif_type)
                    .flag("dif_is_head_of_md", *dif_is_head_of_md);
                call("bdev_malloc_create", params, Json)
            }
            Command::BdevMallocDelete { name } => named("bdev_malloc_delete", name),
            Command::BdevNullCreate {
                name,
                total_size,
                block_size,
                uuid,
                physical_block_size,
                md_size,
                dif_type,
                dif_is_head_of_md,
            } => {
                if dif_type.is_some_and(|kind| kind > 0) && md_size.unwrap_or(0) == 0 {
                    return Err("--md-size must be > 0 when --dif-type is > 0".into());
                }
                let params = p()
                    .set("num_blocks", blocks_from_mib(*total_size, *block_size)?)
                    .set("block_size", *block_size)
                    .opt("physical_block_size", *physical_block_size)
                    .set("name", name.as_str())
                    .opt("uuid", uuid.clone())
                    .opt("md_size", *md_size)
                    .opt("dif_type", *dif_type)
                    .flag("dif_is_head_of_md", *dif_is_head_of_md);
                call("bdev_null_create", params, Json)
            }
            Command::BdevNullDelete { name } => named("bdev_null_delete", name),
            Command::BdevNullResize { name, new_size } => {
                let params = p().set("name", name.as_str()).set("new_size", *new_size);
                call("bdev_null_resize", params, Json)
            }
            Command::BdevUringCreate { filename, name, block_size, uuid } => {
                let params = p()
                    .set("filename", filename.as_str())
                    .set("name", name.as_str())
                    .opt("block_size", *block_size)
                    .opt("uuid", uuid.clone());
                call("bdev_uring_create", params, Json)
            }
            Command::BdevUringDelete { name } => named("bdev_uring_delete", name),
            Command::BdevGetBdevs { name, timeout_ms } => {
                call("bdev_get_bdevs", p().opt("name", name.clone()).opt("timeout", *timeout_ms), Json)
            }
            Command::BdevGetIostat { name, names, per_channel, reset_mode } => {
                let names: Option<Vec<String>> = names
                    .as_ref()
                    .map(|list| list.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect());
                let params = p()
                    .opt("name", name.clone())
                    .opt("names", names)
                    .flag("per_channel", *per_channel)
                    .opt("reset_mode", reset_mode.clone());
                call("bdev_get_iostat", params, Json)
            }
            Command::BdevDelayCreate {
                base_bdev_name,
                name,
                avg_read_latency,
                nine_nine_read_latency,
                avg_write_latency,
                nine_nine_write_latency,
                uuid,
            } => {
                let params = p()
                    .set("base_bdev_name", base_bdev_name.as_str())
                    .set("name", name.as_str())
                    .set("avg_read_latency", *avg_read_latency)
                    .set("p99_read_latency", *nine_nine_read_latency)
                    .set("avg_write_latency", *avg_write_latency)
                    .set("p99_write_latency", *nine_nine_write_latency)
                    .opt("uuid", uuid.clone());
                call("bdev_delay_create", params, Json)
            }
            Command::BdevDelayDelete { name } => named("bdev_delay_delete", name),
            Command::BdevDelayUpdateLatency { delay_bdev_name, latency_type, latency_us } => {
                let params = p()
                    .set("delay_bdev_name", delay_bdev_name.as_str())
                    .set("latency_type", latency_type.as_str())
                    .set("latency_us", *latency_us);
                call("bdev_delay_update_latency", params, Json)
            }
            Command::BdevErrorCreate { base_name, uuid } => {
                call("bdev_error_create", p().set("base_name", base_name.as_str()).opt("uuid", uuid.clone()), Json)
            }
            Command::BdevErrorDelete { name } => named("bdev_error_delete", name),
            Command::BdevErrorInjectError {
                name,
                io_type,
                error_type,
                num,
                queue_depth,
                corrupt_offset,
                corrupt_value,
            } => {
                let params = p()
                    .set("name", name.as_str())
                    .set("io_type", io_type.as_str())
                    .set("error_type", error_type.as_str())
                    .opt("num", *num)
                    .opt("queue_depth", *queue_depth)
                    .opt("corrupt_offset", *corrupt_offset)
                    .opt("corrupt_value", *corrupt_value);
                call("bdev_error_inject_error", params, Nothing)
            }
            Command::BdevPassthruCreate { base_bdev_name, name, uuid } => {
                let params = p()
                    .set("base_bdev_name", base_bdev_name.as_str())
                    .set("name", name.as_str())
                    .opt("uuid", uuid.clone());
                call("bdev_passthru_create", params, Json)
            }
            Command::BdevPassthruDelete { name } => named("bdev_passthru_delete", name),
            Command::BdevSplitCreate { base_bdev, split_count, split_size_mb } => {
                let params = p()
                    .set("base_bdev", base_bdev.as_str())
                    .set("split_count", *split_count)
                    .opt("split_size_mb", *split_size_mb);
                call("bdev_split_create", params, Words)
            }
            Command::BdevSplitDelete { base_bdev } => {
                call("bdev_split_delete", p().set("base_bdev", base_bdev.as_str()), Nothing)
            }
            Command::BdevSetQosLimit {
                name,
                rw_ios_per_sec,
                rw_mbytes_per_sec,
                r_mbytes_per_sec,
                w_mbytes_per_sec,
            } => {
                let params = p()
                    .set("name", name.as_str())
                    .opt("rw_ios_per_sec", *rw_ios_per_sec)
                    .opt("rw_mbytes_per_sec", *rw_mbytes_per_sec)
                    .opt("r_mbytes_per_sec", *r_mbytes_per_sec)
                    .opt("w_mbytes_per_sec", *w_mbytes_per_sec);
                call("bdev_set_qos_limit", params, Nothing)
            }
            Command::BdevNvmesimCreate { name, size_mb, block_size, cmb_size_mb, filename } => {
                let params = p()
                    .set("name", name.as_str())
                    .set("num_blocks", blocks_from_mib(*size_mb, *block_size)?)
                    .set("block_size", *block_size)
                    .set("cmb_size_mb", *cmb_size_mb)
                    .opt("filename", filename.clone());
                call("bdev_nvmesim_create", params, Json)
            }
            Command::BdevNvmesimDelete { name } => named("bdev_nvmesim_delete", name),
        })
    }
}
