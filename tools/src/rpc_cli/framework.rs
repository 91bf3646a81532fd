//! Framework, thread, app, log and keyring subcommands
//! (rpc.py's app.py, log.py and keyring.py).

use clap::Subcommand;

use super::{call, Action, Output, Params};

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Get the version the target reports
    #[command(name = "spdk_get_version")]
    SpdkGetVersion,
    /// List the RPC methods the target supports
    #[command(name = "rpc_get_methods")]
    RpcGetMethods {
        /// Only the methods callable in the current state
        #[arg(short = 'c', long)]
        current: bool,
        /// Include deprecated aliases
        #[arg(short = 'i', long)]
        include_aliases: bool,
    },
    /// Wait until the subsystems have been initialized
    #[command(name = "framework_wait_init")]
    FrameworkWaitInit,
    /// Initialize the subsystems of a target started with --wait-for-rpc
    #[command(name = "framework_start_init")]
    FrameworkStartInit,
    /// List the subsystems and their dependencies
    #[command(name = "framework_get_subsystems")]
    FrameworkGetSubsystems,
    /// Print the configuration of one subsystem
    #[command(name = "framework_get_config")]
    FrameworkGetConfig {
        /// Subsystem name (bdev, nvmf, ...)
        name: String,
    },
    /// Display the reactors and their lightweight threads
    #[command(name = "framework_get_reactors")]
    FrameworkGetReactors,
    /// Display the busy and idle time of every thread
    #[command(name = "thread_get_stats")]
    ThreadGetStats,
    /// Display the pollers of every thread
    #[command(name = "thread_get_pollers")]
    ThreadGetPollers,
    /// Send a signal to the target (SIGTERM stops it cleanly)
    #[command(name = "spdk_kill_instance")]
    SpdkKillInstance {
        /// SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGKILL or SIGUSR1
        sig_name: String,
    },
    /// Display memory statistics (buffer pools, DMA and P2P memory)
    #[command(name = "mem_get_stats")]
    MemGetStats,
    /// Enable a log flag (a component's debug log)
    #[command(name = "log_set_flag")]
    LogSetFlag {
        /// Log flag, e.g. nvmf, nvmf_tcp, bdev, all
        flag: String,
    },
    /// Disable a log flag
    #[command(name = "log_clear_flag")]
    LogClearFlag {
        /// Log flag, e.g. nvmf, nvmf_tcp, bdev, all
        flag: String,
    },
    /// Display every log flag and whether it is enabled
    #[command(name = "log_get_flags")]
    LogGetFlags,
    /// Set the level of messages logged
    #[command(name = "log_set_level")]
    LogSetLevel {
        /// ERROR, WARNING, NOTICE, INFO or DEBUG
        level: String,
    },
    /// Get the level of messages logged
    #[command(name = "log_get_level")]
    LogGetLevel,
    /// Set the level of messages printed to stderr
    #[command(name = "log_set_print_level")]
    LogSetPrintLevel {
        /// ERROR, WARNING, NOTICE, INFO or DEBUG
        level: String,
    },
    /// Get the level of messages printed to stderr
    #[command(name = "log_get_print_level")]
    LogGetPrintLevel,
    /// Add a key from a file: an absolute path to a regular file owned by the target's
    /// user, mode 0600 or stricter
    #[command(name = "keyring_file_add_key")]
    KeyringFileAddKey {
        /// Name of the key
        name: String,
        /// Path to the file holding the key
        path: String,
    },
    /// Remove a key added with keyring_file_add_key
    #[command(name = "keyring_file_remove_key")]
    KeyringFileRemoveKey {
        /// Name of the key
        name: String,
    },
    /// List the keys: names, paths and use, never their contents
    #[command(name = "keyring_get_keys")]
    KeyringGetKeys,
    /// Set options of a sock implementation (ssl: kTLS and the TLS version; posix and
    /// uring: zero-copy sends)
    #[command(name = "sock_impl_set_options")]
    SockImplSetOptions {
        /// Name of the sock implementation, e.g. ssl
        #[arg(short = 'i', long = "impl")]
        impl_name: String,
        /// TLS protocol version (13; 0 for the default)
        #[arg(long = "tls-version")]
        tls_version: Option<u32>,
        /// Hand TLS records to the kernel after the handshake, where it has kTLS
        /// (rpc.py 26 spells it --ktls)
        #[arg(long = "enable-ktls", visible_alias = "ktls", conflicts_with = "disable_ktls")]
        enable_ktls: bool,
        /// Keep TLS records in user space (rpc.py 26: --no-ktls)
        #[arg(long = "disable-ktls", visible_alias = "no-ktls")]
        disable_ktls: bool,
        /// Send C2HData with MSG_ZEROCOPY on connections accepted from now on (posix,
        /// uring; rpc.py 26: --zerocopy-send-server)
        #[arg(
            long = "enable-zerocopy-send-server",
            visible_alias = "zerocopy-send-server",
            conflicts_with = "disable_zerocopy_send_server"
        )]
        enable_zerocopy_send_server: bool,
        /// Copy every send (rpc.py 26: --no-zerocopy-send-server)
        #[arg(long = "disable-zerocopy-send-server", visible_alias = "no-zerocopy-send-server")]
        disable_zerocopy_send_server: bool,
        /// Sends carrying fewer data bytes than this copy (posix, uring)
        #[arg(long = "zerocopy-threshold")]
        zerocopy_threshold: Option<u32>,
    },
    /// Show options of a sock implementation
    #[command(name = "sock_impl_get_options")]
    SockImplGetOptions {
        /// Name of the sock implementation, e.g. ssl
        #[arg(short = 'i', long = "impl")]
        impl_name: String,
    },
}

impl Command {
    pub fn action(&self) -> Action {
        use Output::{Json, Nothing};
        let none = Params::new;
        match self {
            Command::SpdkGetVersion => call("spdk_get_version", none(), Json),
            Command::RpcGetMethods { current, include_aliases } => call(
                "rpc_get_methods",
                none().flag("current", *current).flag("include_aliases", *include_aliases),
                Json,
            ),
            Command::FrameworkWaitInit => call("framework_wait_init", none(), Nothing),
            Command::FrameworkStartInit => call("framework_start_init", none(), Nothing),
            Command::FrameworkGetSubsystems => call("framework_get_subsystems", none(), Json),
            Command::FrameworkGetConfig { name } => {
                call("framework_get_config", none().set("name", name.as_str()), Json)
            }
            Command::FrameworkGetReactors => call("framework_get_reactors", none(), Json),
            Command::ThreadGetStats => call("thread_get_stats", none(), Json),
            Command::ThreadGetPollers => call("thread_get_pollers", none(), Json),
            Command::SpdkKillInstance { sig_name } => {
                call("spdk_kill_instance", none().set("sig_name", sig_name.as_str()), Nothing)
            }
            Command::MemGetStats => call("mem_get_stats", none(), Json),
            Command::LogSetFlag { flag } => call("log_set_flag", none().set("flag", flag.as_str()), Nothing),
            Command::LogClearFlag { flag } => call("log_clear_flag", none().set("flag", flag.as_str()), Nothing),
            Command::LogGetFlags => call("log_get_flags", none(), Json),
            Command::LogSetLevel { level } => call("log_set_level", none().set("level", level.as_str()), Nothing),
            Command::LogGetLevel => call("log_get_level", none(), Json),
            Command::LogSetPrintLevel { level } => {
                call("log_set_print_level", none().set("level", level.as_str()), Nothing)
            }
            Command::LogGetPrintLevel => call("log_get_print_level", none(), Json),
            Command::KeyringFileAddKey { name, path } => {
                call("keyring_file_add_key", none().set("name", name.as_str()).set("path", path.as_str()), Nothing)
            }
            Command::KeyringFileRemoveKey { name } => {
                call("keyring_file_remove_key", none().set("name", name.as_str()), Nothing)
            }
            Command::KeyringGetKeys => call("keyring_get_keys", none(), Json),
            Command::SockImplSetOptions {
                impl_name,
                tls_version,
                enable_ktls,
                disable_ktls,
                enable_zerocopy_send_server,
                disable_zerocopy_send_server,
                zerocopy_threshold,
            } => {
                let ktls = (*enable_ktls || *disable_ktls).then_some(*enable_ktls);
                let zerocopy = (*enable_zerocopy_send_server || *disable_zerocopy_send_server)
                    .then_some(*enable_zerocopy_send_server);
                let params = none().set("impl_name", impl_name.as_str()).opt("tls_version", *tls_version);
                let params = params
                    .opt("enable_ktls", ktls)
                    .opt("enable_zerocopy_send_server", zerocopy)
                    .opt("zerocopy_threshold", *zerocopy_threshold);
                call("sock_impl_set_options", params, Nothing)
            }
            Command::SockImplGetOptions { impl_name } => {
                call("sock_impl_get_options", none().set("impl_name", impl_name.as_str()), Json)
            }
        }
    }
}
