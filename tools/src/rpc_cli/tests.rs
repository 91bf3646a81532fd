//! Command line -> wire mapping for every subcommand, through the real clap parser, no
//! server needed. Expected params are what SPDK's rpc.py sends for the same command line
//! (what rpc.py sends, from its dry runs), minus the default `false` flags we leave out.

use serde_json::{json, Value};

use super::config::{load_config, save_config, LoadError};
use super::run::{pretty, render, rpc_error_report};
use super::{Action, Cli, Output};
use crate::rpc_client::{ClientError, RpcFailure};
use clap::Parser;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("peerless-rpc").chain(args.iter().copied()))
}

fn action(args: &[&str]) -> Action {
    let cli = parse(args).unwrap_or_else(|err| panic!("{args:?} does not parse: {err}"));
    cli.command.action().unwrap_or_else(|err| panic!("{args:?}: {err}"))
}

/// `args` must become one call of `method` with exactly `params` (null: no params).
fn check(args: &[&str], method: &str, params: Value) {
    match action(args) {
        Action::Call(call) => {
            assert_eq!(call.method, method, "{args:?}");
            assert_eq!(call.params.unwrap_or(Value::Null), params, "{args:?}");
        }
        other => panic!("{args:?} became {other:?}"),
    }
}

/// `args` must be refused, by clap or by the mapping, with a message containing `needle`.
fn check_refused(args: &[&str], needle: &str) {
    let message = match parse(args) {
        Err(err) => err.to_string(),
        Ok(cli) => cli.command.action().expect_err(&format!("{args:?} should be refused")),
    };
    assert!(message.contains(needle), "{args:?}: {message}");
}

fn output(args: &[&str]) -> Output {
    match action(args) {
        Action::Call(call) => call.output,
        other => panic!("{args:?} became {other:?}"),
    }
}

#[test]
fn framework_and_log() {
    check(&["spdk_get_version"], "spdk_get_version", Value::Null);
    check(&["rpc_get_methods"], "rpc_get_methods", Value::Null);
    check(
        &["rpc_get_methods", "--current", "-i"],
        "rpc_get_methods",
        json!({"current": true, "include_aliases": true}),
    );
    check(&["rpc_get_methods", "-c"], "rpc_get_methods", json!({"current": true}));
    check(&["framework_wait_init"], "framework_wait_init", Value::Null);
    check(&["framework_start_init"], "framework_start_init", Value::Null);
    check(&["framework_get_subsystems"], "framework_get_subsystems", Value::Null);
    check(&["framework_get_config", "bdev"], "framework_get_config", json!({"name": "bdev"}));
    check(&["framework_get_reactors"], "framework_get_reactors", Value::Null);
    check(&["thread_get_stats"], "thread_get_stats", Value::Null);
    check(&["thread_get_pollers"], "thread_get_pollers", Value::Null);
    check(&["spdk_kill_instance", "SIGTERM"], "spdk_kill_instance", json!({"sig_name": "SIGTERM"}));
    check(&["mem_get_stats"], "mem_get_stats", Value::Null);
    check(&["log_set_flag", "nvmf_tcp"], "log_set_flag", json!({"flag": "nvmf_tcp"}));
    check(&["log_clear_flag", "all"], "log_clear_flag", json!({"flag": "all"}));
    check(
        &["keyring_file_add_key", "key0", "/etc/peerless/key0"],
        "keyring_file_add_key",
        json!({"name": "key0", "path": "/etc/peerless/key0"}),
    );
    check(&["keyring_file_remove_key", "key0"], "keyring_file_remove_key", json!({"name": "key0"}));
    check(&["keyring_get_keys"], "keyring_get_keys", Value::Null);
    check(
        &["sock_impl_set_options", "-i", "ssl", "--disable-ktls", "--tls-version", "13"],
        "sock_impl_set_options",
        json!({"impl_name": "ssl", "enable_ktls": false, "tls_version": 13}),
    );
    check(
        &["sock_impl_set_options", "-i", "ssl", "--enable-ktls"],
        "sock_impl_set_options",
        json!({"impl_name": "ssl", "enable_ktls": true}),
    );
    check(&["sock_impl_set_options", "-i", "ssl"], "sock_impl_set_options", json!({"impl_name": "ssl"}));
    check(
        &["sock_impl_set_options", "-i", "posix", "--enable-zerocopy-send-server", "--zerocopy-threshold", "65536"],
        "sock_impl_set_options",
        json!({"impl_name": "posix", "enable_zerocopy_send_server": true, "zerocopy_threshold": 65536}),
    );
    check(
        &["sock_impl_set_options", "-i", "uring", "--no-zerocopy-send-server"],
        "sock_impl_set_options",
        json!({"impl_name": "uring", "enable_zerocopy_send_server": false}),
    );
    // rpc.py 26's spellings.
    check(
        &["sock_impl_set_options", "-i", "ssl", "--no-ktls"],
        "sock_impl_set_options",
        json!({"impl_name": "ssl", "enable_ktls": false}),
    );
    check(
        &["sock_impl_set_options", "--impl", "ssl", "--ktls"],
        "sock_impl_set_options",
        json!({"impl_name": "ssl", "enable_ktls": true}),
    );
    check(&["sock_impl_get_options", "-i", "ssl"], "sock_impl_get_options", json!({"impl_name": "ssl"}));
    check_refused(&["sock_impl_set_options", "-i", "ssl", "--enable-ktls", "--disable-ktls"], "cannot be used with");
    check(&["log_get_flags"], "log_get_flags", Value::Null);
    check(&["log_set_level", "DEBUG"], "log_set_level", json!({"level": "DEBUG"}));
    check(&["log_get_level"], "log_get_level", Value::Null);
    check(&["log_set_print_level", "ERROR"], "log_set_print_level", json!({"level": "ERROR"}));
    check(&["log_get_print_level"], "log_get_print_level", Value::Null);
    check_refused(&["framework_get_config"], "<NAME>");
    check_refused(&["spdk_kill_instance"], "<SIG_NAME>");
}

#[test]
fn bdev_create_and_delete() {
    check(
        &["bdev_malloc_create", "-b", "Malloc0", "64", "512"],
        "bdev_malloc_create",
        json!({"num_blocks": 131072, "block_size": 512, "name": "Malloc0"}),
    );
    check(
        &["bdev_malloc_create", "0.5", "4096", "-u", "u-1", "-p", "4096", "-o", "8", "-m", "8", "-i", "-t", "1", "-d"],
        "bdev_malloc_create",
        json!({"num_blocks": 128, "block_size": 4096, "physical_block_size": 4096, "uuid": "u-1",
               "optimal_io_boundary": 8, "md_size": 8, "md_interleave": true, "dif_type": 1, "dif_is_head_of_md": true}),
    );
    check(&["bdev_malloc_delete", "Malloc0"], "bdev_malloc_delete", json!({"name": "Malloc0"}));
    check(
        &["bdev_null_create", "Null0", "1024", "4096"],
        "bdev_null_create",
        json!({"num_blocks": 262144, "block_size": 4096, "name": "Null0"}),
    );
    check(
        &["bdev_null_create", "Null1", "8", "520", "-m", "8", "-t", "1", "-u", "u-2"],
        "bdev_null_create",
        json!({"num_blocks": 16131, "block_size": 520, "name": "Null1", "uuid": "u-2", "md_size": 8, "dif_type": 1}),
    );
    check(&["bdev_null_delete", "Null0"], "bdev_null_delete", json!({"name": "Null0"}));
    check(&["bdev_null_resize", "Null0", "128"], "bdev_null_resize", json!({"name": "Null0", "new_size": 128}));
    check(
        &["bdev_uring_create", "/dev/nvme0n1", "uring0", "4096"],
        "bdev_uring_create",
        json!({"filename": "/dev/nvme0n1", "name": "uring0", "block_size": 4096}),
    );
    check(&["bdev_uring_create", "/tmp/f", "u1"], "bdev_uring_create", json!({"filename": "/tmp/f", "name": "u1"}));
    check(&["bdev_uring_delete", "uring0"], "bdev_uring_delete", json!({"name": "uring0"}));
    check(
        &["bdev_nvmesim_create", "-b", "Sim0", "128", "4096"],
        "bdev_nvmesim_create",
        json!({"name": "Sim0", "num_blocks": 32768, "block_size": 4096, "cmb_size_mb": 64}),
    );
    check(
        &["bdev_nvmesim_create", "-b", "Sim1", "1", "512", "--cmb-size-mb", "16", "--filename", "/tmp/sim1"],
        "bdev_nvmesim_create",
        json!({"name": "Sim1", "num_blocks": 2048, "block_size": 512, "cmb_size_mb": 16, "filename": "/tmp/sim1"}),
    );
    check(&["bdev_nvmesim_delete", "Sim0"], "bdev_nvmesim_delete", json!({"name": "Sim0"}));
    check_refused(&["bdev_malloc_create", "64", "0"], "block size must be greater than 0");
    check_refused(&["bdev_malloc_create", "0", "512"], "positive number of MiB");
    check_refused(&["bdev_malloc_create", "0.0001", "4096"], "not a usable number");
    check_refused(&["bdev_null_create", "N", "1", "512", "-t", "1"], "--md-size must be > 0");
    check_refused(&["bdev_malloc_create", "64", "big"], "invalid value 'big'");
    check_refused(&["bdev_nvmesim_create", "64", "512"], "--name");
}

#[test]
fn bdev_queries_and_virtual_bdevs() {
    check(&["bdev_get_bdevs"], "bdev_get_bdevs", Value::Null);
    check(
        &["bdev_get_bdevs", "-b", "Malloc0", "-t", "500"],
        "bdev_get_bdevs",
        json!({"name": "Malloc0", "timeout": 500}),
    );
    check(&["bdev_get_iostat"], "bdev_get_iostat", Value::Null);
    check(&["bdev_get_iostat", "-b", "Malloc0"], "bdev_get_iostat", json!({"name": "Malloc0"}));
    check(
        &["bdev_get_iostat", "--names", "Malloc0, Null0", "-c", "--reset-mode", "maxmin"],
        "bdev_get_iostat",
        json!({"names": ["Malloc0", "Null0"], "per_channel": true, "reset_mode": "maxmin"}),
    );
    check_refused(&["bdev_get_iostat", "-b", "a", "--names", "b"], "cannot be used with");
    check_refused(&["bdev_get_iostat", "--reset-mode", "error"], "invalid value 'error'");
    check(
        &["bdev_delay_create", "-b", "Malloc0", "-d", "Delay0", "-r", "100", "-t", "200", "-w", "100", "-n", "200"],
        "bdev_delay_create",
        json!({"base_bdev_name": "Malloc0", "name": "Delay0", "avg_read_latency": 100, "p99_read_latency": 200,
               "avg_write_latency": 100, "p99_write_latency": 200}),
    );
    check(&["bdev_delay_delete", "Delay0"], "bdev_delay_delete", json!({"name": "Delay0"}));
    check(
        &["bdev_delay_update_latency", "Delay0", "p99_read", "500"],
        "bdev_delay_update_latency",
        json!({"delay_bdev_name": "Delay0", "latency_type": "p99_read", "latency_us": 500}),
    );
    check(&["bdev_error_create", "Malloc0"], "bdev_error_create", json!({"base_name": "Malloc0"}));
    check(&["bdev_error_delete", "EE_Malloc0"], "bdev_error_delete", json!({"name": "EE_Malloc0"}));
    check(
        &["bdev_error_inject_error", "EE_Malloc0", "read", "failure", "-n", "10"],
        "bdev_error_inject_error",
        json!({"name": "EE_Malloc0", "io_type": "read", "error_type": "failure", "num": 10}),
    );
    check(
        &["bdev_error_inject_error", "EE_Malloc0", "write", "corrupt_data", "-q", "4", "-o", "16", "-v", "255"],
        "bdev_error_inject_error",
        json!({"name": "EE_Malloc0", "io_type": "write", "error_type": "corrupt_data", "queue_depth": 4,
               "corrupt_offset": 16, "corrupt_value": 255}),
    );
    check(
        &["bdev_passthru_create", "-b", "Malloc0", "-p", "PT0"],
        "bdev_passthru_create",
        json!({"base_bdev_name": "Malloc0", "name": "PT0"}),
    );
    check(&["bdev_passthru_delete", "PT0"], "bdev_passthru_delete", json!({"name": "PT0"}));
    check(
        &["bdev_split_create", "Malloc0", "4"],
        "bdev_split_create",
        json!({"base_bdev": "Malloc0", "split_count": 4}),
    );
    check(
        &["bdev_split_create", "Malloc0", "2", "-s", "16"],
        "bdev_split_create",
        json!({"base_bdev": "Malloc0", "split_count": 2, "split_size_mb": 16}),
    );
    check(&["bdev_split_delete", "Malloc0"], "bdev_split_delete", json!({"base_bdev": "Malloc0"}));
    check(
        &["bdev_nvme_attach_controller", "-b", "Nvme0", "-t", "PCIe", "-a", "0000:00:04.0", "--num-io-queues", "4"],
        "bdev_nvme_attach_controller",
        json!({"name": "Nvme0", "trtype": "PCIe", "traddr": "0000:00:04.0", "num_io_queues": 4}),
    );
    check(&["bdev_nvme_detach_controller", "Nvme0"], "bdev_nvme_detach_controller", json!({"name": "Nvme0"}));
    check(
        &["bdev_nvme_set_options", "-t", "2000000", "-a", "reset"],
        "bdev_nvme_set_options",
        json!({"timeout_us": 2000000, "action_on_timeout": "reset"}),
    );
    check(&["bdev_nvme_get_controllers", "-n", "Nvme0"], "bdev_nvme_get_controllers", json!({"name": "Nvme0"}));
    check(&["bdev_nvme_reset_controller", "Nvme0"], "bdev_nvme_reset_controller", json!({"name": "Nvme0"}));
    check(
        &["bdev_nvme_reset_controller", "Nvme0", "-c", "1"],
        "bdev_nvme_reset_controller",
        json!({"name": "Nvme0", "cntlid": 1}),
    );
    check(
        &["bdev_nvme_send_cmd", "-n", "Nvme0", "-t", "admin", "-r", "c2h", "-c", "BgAA", "-D", "4096", "-T", "500"],
        "bdev_nvme_send_cmd",
        json!({"name": "Nvme0", "cmd_type": "admin", "data_direction": "c2h", "cmdbuf": "BgAA", "data_len": 4096,
            "timeout_ms": 500}),
    );
    check(
        &["bdev_nvme_send_cmd", "--nvme-name", "Nvme0", "-t", "admin", "-r", "h2c", "-c", "FQ", "-d", "AQA"],
        "bdev_nvme_send_cmd",
        json!({"name": "Nvme0", "cmd_type": "admin", "data_direction": "h2c", "cmdbuf": "FQ", "data": "AQA"}),
    );
    check(
        &["bdev_set_qos_limit", "Malloc0", "--rw-ios-per-sec", "20000", "--r_mbytes_per_sec", "100"],
        "bdev_set_qos_limit",
        json!({"name": "Malloc0", "rw_ios_per_sec": 20000, "r_mbytes_per_sec": 100}),
    );
    check(
        &["bdev_set_qos_limit", "Malloc0", "--rw-mbytes-per-sec", "0", "--w-mbytes-per-sec", "5"],
        "bdev_set_qos_limit",
        json!({"name": "Malloc0", "rw_mbytes_per_sec": 0, "w_mbytes_per_sec": 5}),
    );
}

#[test]
fn nvmf_transports_and_subsystems() {
    check(
        &["nvmf_create_transport", "-t", "TCP", "-u", "16384", "-m", "8", "-c", "8192"],
        "nvmf_create_transport",
        json!({"trtype": "TCP", "max_io_qpairs_per_ctrlr": 8, "in_capsule_data_size": 8192, "io_unit_size": 16384}),
    );
    check(
        &[
            "nvmf_create_transport",
            "-t",
            "tcp",
            "-q",
            "256",
            "-o",
            "-z",
            "-y",
            "3",
            "--kas",
            "10",
            "--masked-oncs",
            "reservs,nvmcpys",
            "--masked-fuses",
            "all",
        ],
        "nvmf_create_transport",
        json!({"trtype": "tcp", "max_queue_depth": 256, "zcopy": true, "c2h_success": false, "sock_priority": 3,
               "kas": 10, "masked_oncs": ["reservs", "nvmcpys"], "masked_fuses": ["fcws"]}),
    );
    check_refused(&["nvmf_create_transport", "-t", "TCP", "--masked-oncs", "bogus"], "unknown 'bogus'");
    check_refused(&["nvmf_create_transport", "-u", "8192"], "--trtype");
    check_refused(&["nvmf_create_transport", "-t", "TCP", "-q", "70000"], "invalid value '70000'");
    check(&["nvmf_get_transports"], "nvmf_get_transports", Value::Null);
    check(&["nvmf_get_transports", "--trtype", "TCP"], "nvmf_get_transports", json!({"trtype": "TCP"}));
    let nqn = "nqn.2016-06.io.spdk:cnode1";
    check(
        &["nvmf_create_subsystem", nqn, "-a", "-s", "SPDK00000000000001", "-d", "SPDK_Controller1"],
        "nvmf_create_subsystem",
        json!({"nqn": nqn, "serial_number": "SPDK00000000000001", "model_number": "SPDK_Controller1",
               "allow_any_host": true}),
    );
    check(
        &["nvmf_create_subsystem", nqn, "-m", "8", "-r", "-i", "1", "-I", "100", "-p", "-n", "-t", "t1"],
        "nvmf_create_subsystem",
        json!({"nqn": nqn, "tgt_name": "t1", "max_namespaces": 8, "ana_reporting": true, "min_cntlid": 1,
               "max_cntlid": 100, "passthrough": true, "enable_nssr": true}),
    );
    check(&["nvmf_delete_subsystem", nqn], "nvmf_delete_subsystem", json!({"nqn": nqn}));
    check(&["nvmf_get_subsystems"], "nvmf_get_subsystems", Value::Null);
    check(&["nvmf_get_subsystems", nqn], "nvmf_get_subsystems", json!({"nqn": nqn}));
    check(&["nvmf_subsystem_get_controllers", nqn], "nvmf_subsystem_get_controllers", json!({"nqn": nqn}));
    check(
        &["nvmf_subsystem_get_qpairs", nqn, "-t", "t1"],
        "nvmf_subsystem_get_qpairs",
        json!({"nqn": nqn, "tgt_name": "t1"}),
    );
    check(&["nvmf_subsystem_get_listeners", nqn], "nvmf_subsystem_get_listeners", json!({"nqn": nqn}));
    check(&["nvmf_get_stats"], "nvmf_get_stats", Value::Null);
}

#[test]
fn nvmf_listeners_namespaces_and_hosts() {
    let nqn = "nqn.2016-06.io.spdk:cnode1";
    check(
        &["nvmf_subsystem_add_listener", nqn, "-t", "tcp", "-a", "127.0.0.1", "-s", "4420"],
        "nvmf_subsystem_add_listener",
        json!({"nqn": nqn, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "4420"}}),
    );
    check(
        &[
            "nvmf_subsystem_add_listener",
            "discovery",
            "-t",
            "tcp",
            "-a",
            "::1",
            "-s",
            "8009",
            "-f",
            "ipv6",
            "-k",
            "-n",
            "optimized",
        ],
        "nvmf_subsystem_add_listener",
        json!({"nqn": "nqn.2014-08.org.nvmexpress.discovery",
               "listen_address": {"trtype": "tcp", "traddr": "::1", "trsvcid": "8009", "adrfam": "ipv6"},
               "secure_channel": true, "ana_state": "optimized"}),
    );
    check(
        &["nvmf_subsystem_remove_listener", nqn, "-t", "tcp", "-a", "127.0.0.1", "-s", "4420", "-p", "t1"],
        "nvmf_subsystem_remove_listener",
        json!({"nqn": nqn, "tgt_name": "t1",
               "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "4420"}}),
    );
    check_refused(&["nvmf_subsystem_add_listener", nqn, "-t", "tcp"], "--traddr");
    check(
        &[
            "nvmf_subsystem_listener_set_ana_state",
            nqn,
            "-n",
            "inaccessible",
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            "4420",
            "-g",
            "3",
        ],
        "nvmf_subsystem_listener_set_ana_state",
        json!({"nqn": nqn, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "4420"},
               "ana_state": "inaccessible", "anagrpid": 3}),
    );
    check_refused(&["nvmf_subsystem_listener_set_ana_state", nqn, "-t", "tcp", "-a", "::1"], "--ana-state");
    check_refused(&["nvmf_subsystem_listener_set_ana_state", nqn, "-n", "change", "-t", "tcp", "-a", "::1"], "change");
    check(
        &["nvmf_subsystem_add_ns", nqn, "Malloc0"],
        "nvmf_subsystem_add_ns",
        json!({"nqn": nqn, "namespace": {"bdev_name": "Malloc0"}}),
    );
    check(
        &[
            "nvmf_subsystem_add_ns",
            nqn,
            "Sim0",
            "-n",
            "3",
            "-g",
            "00112233445566778899aabbccddeeff",
            "-e",
            "0011223344556677",
            "-u",
            "ceccf520-691e-4b46-9546-34af789907c5",
            "-i",
            "--p2pmem",
            "auto",
        ],
        "nvmf_subsystem_add_ns",
        json!({"nqn": nqn, "namespace": {"bdev_name": "Sim0", "nsid": 3, "nguid": "00112233445566778899aabbccddeeff",
               "eui64": "0011223344556677", "uuid": "ceccf520-691e-4b46-9546-34af789907c5",
               "no_auto_visible": true, "p2pmem": "auto"}}),
    );
    check(&["nvmf_subsystem_remove_ns", nqn, "3"], "nvmf_subsystem_remove_ns", json!({"nqn": nqn, "nsid": 3}));
    check_refused(&["nvmf_subsystem_remove_ns", nqn, "x"], "invalid value 'x'");
    let host = "nqn.2014-08.org.nvmexpress:uuid:1";
    check(&["nvmf_subsystem_add_host", nqn, host], "nvmf_subsystem_add_host", json!({"nqn": nqn, "host": host}));
    check(
        &["nvmf_subsystem_add_host", nqn, host, "--psk", "key0"],
        "nvmf_subsystem_add_host",
        json!({"nqn": nqn, "host": host, "psk": "key0"}),
    );
    check(&["nvmf_subsystem_remove_host", nqn, host], "nvmf_subsystem_remove_host", json!({"nqn": nqn, "host": host}));
    check(
        &["nvmf_subsystem_add_host", nqn, host, "--dhchap-key", "key0", "--dhchap-ctrlr-key", "ckey0"],
        "nvmf_subsystem_add_host",
        json!({"nqn": nqn, "host": host, "dhchap_key": "key0", "dhchap_ctrlr_key": "ckey0"}),
    );
    check(
        &["nvmf_subsystem_set_keys", nqn, host, "--dhchap-key", "key1"],
        "nvmf_subsystem_set_keys",
        json!({"nqn": nqn, "host": host, "dhchap_key": "key1"}),
    );
    check(
        &["nvmf_set_config", "--dhchap-digests", "sha384,sha512", "--dhchap-dhgroups", "null,ffdhe2048"],
        "nvmf_set_config",
        json!({"dhchap_digests": ["sha384", "sha512"], "dhchap_dhgroups": ["null", "ffdhe2048"]}),
    );
    for (flag, allow) in
        [("-e", true), ("--enable", true), ("--allow-any-host", true), ("-d", false), ("--no-allow-any-host", false)]
    {
        check(
            &["nvmf_subsystem_allow_any_host", nqn, flag],
            "nvmf_subsystem_allow_any_host",
            json!({"nqn": nqn, "allow_any_host": allow}),
        );
    }
    check_refused(&["nvmf_subsystem_allow_any_host", nqn], "required");
    check_refused(&["nvmf_subsystem_allow_any_host", nqn, "-e", "-d"], "cannot be used with");
}

#[test]
fn composites_and_call() {
    assert_eq!(action(&["save_config"]), Action::SaveConfig { indent: 2 });
    assert_eq!(action(&["save_config", "-i", "-1"]), Action::SaveConfig { indent: -1 });
    assert_eq!(action(&["load_config"]), Action::LoadConfig { file: None, include_aliases: false });
    assert_eq!(
        action(&["load_config", "-j", "/tmp/c.json", "-i"]),
        Action::LoadConfig { file: Some("/tmp/c.json".into()), include_aliases: true }
    );
    check(&["call", "thread_get_io_channels"], "thread_get_io_channels", Value::Null);
    check(&["call", "bdev_get_bdevs", r#"{"name": "Malloc0"}"#], "bdev_get_bdevs", json!({"name": "Malloc0"}));
    check_refused(&["call", "x", "{oops"], "not valid JSON");
    check_refused(&["call", "x", "3"], "must be a JSON object or array");
}

#[test]
fn global_options_come_before_the_subcommand() {
    let cli = parse(&["-s", "/tmp/t.sock", "-t", "2.5", "-r", "3", "-v", "--dry-run", "spdk_get_version"]).unwrap();
    assert_eq!(
        (cli.server.as_str(), cli.timeout, cli.conn_retries, cli.verbose, cli.dry_run),
        ("/tmp/t.sock", 2.5, 3, true, true)
    );
    let defaults = parse(&["spdk_get_version"]).unwrap();
    assert_eq!((defaults.server.as_str(), defaults.port, defaults.timeout), ("/var/tmp/spdk.sock", 5260, 60.0));
    check_refused(&["no_such_command"], "unrecognized subcommand");
}

#[test]
fn output_follows_rpc_py() {
    assert_eq!(output(&["bdev_malloc_create", "64", "512"]), Output::Json);
    assert_eq!(output(&["bdev_split_create", "M", "2"]), Output::Words);
    assert_eq!(output(&["bdev_malloc_delete", "M"]), Output::Nothing);
    assert_eq!(render(&json!("Malloc0"), Output::Json).as_deref(), Some("Malloc0"));
    assert_eq!(render(&json!(1), Output::Json).as_deref(), Some("1"));
    assert_eq!(render(&json!(true), Output::Nothing), None);
    assert_eq!(render(&json!(["Malloc0p0", "Malloc0p1"]), Output::Words).as_deref(), Some("Malloc0p0 Malloc0p1"));
    assert_eq!(render(&json!(["a b", "it's"]), Output::Words).as_deref(), Some(r#"'a b' 'it'"'"'s'"#));
    assert_eq!(
        render(&json!({"a": [1, 2], "b": {}}), Output::Json).unwrap(),
        "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}"
    );
    assert_eq!(pretty(&json!({"a": 1}), -1), r#"{"a":1}"#);
    assert_eq!(pretty(&json!({"a": 1}), 4), "{\n    \"a\": 1\n}");
    let report = rpc_error_report("nope", 1, &None, &json!({"code": -32601, "message": "Method not found"}));
    assert_eq!(
        report,
        "request:\n{\n  \"method\": \"nope\",\n  \"req_id\": 1\n}\nGot JSON-RPC error response\nresponse:\n{\n  \"code\": -32601,\n  \"message\": \"Method not found\"\n}"
    );
}

/// A target in memory: STARTUP until framework_start_init, with one STARTUP-only
/// method, one RUNTIME-only method and one allowed in both.
struct SimTarget {
    runtime: bool,
    calls: Vec<String>,
}

impl SimTarget {
    fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        self.calls.push(match &params {
            Some(params) => format!("{method} {params}"),
            None => method.to_string(),
        });
        let startup = ["framework_start_init", "sock_set_default_impl"];
        let runtime = ["bdev_malloc_create", "framework_get_reactors"];
        let always = ["rpc_get_methods", "framework_get_subsystems", "framework_get_config", "log_set_flag"];
        match method {
            "rpc_get_methods" => {
                let current = params.as_ref().and_then(|p| p.get("current")).is_some();
                let mut names: Vec<&str> = always.to_vec();
                if !current || !self.runtime {
                    names.extend(startup);
                }
                if !current || self.runtime {
                    names.extend(runtime);
                }
                Ok(json!(names))
            }
            "framework_start_init" => {
                self.runtime = true;
                Ok(json!(true))
            }
            "framework_get_subsystems" => {
                Ok(json!([{"subsystem": "sock", "depends_on": []}, {"subsystem": "bdev", "depends_on": ["sock"]}]))
            }
            "framework_get_config" => Ok(
                json!([{"method": format!("{}_x", params.unwrap_or_default()["name"].as_str().unwrap_or("")), "params": {}}]),
            ),
            _ if startup.contains(&method) && !self.runtime => Ok(json!(true)),
            _ if runtime.contains(&method) && self.runtime => Ok(json!("ok")),
            _ if always.contains(&method) => Ok(json!(true)),
            _ => Err(ClientError::Rpc(Box::new(RpcFailure {
                method: method.into(),
                id: 0,
                params,
                code: -1,
                message: "wrong state".into(),
                error: json!({"code": -1, "message": "wrong state"}),
            }))),
        }
    }
}

#[test]
fn save_config_asks_every_subsystem() {
    let mut target = SimTarget { runtime: true, calls: Vec::new() };
    let saved = save_config(&mut |method: &str, params: Option<Value>| target.call(method, params)).unwrap();
    assert_eq!(
        saved,
        json!({"subsystems": [
            {"subsystem": "sock", "config": [{"method": "sock_x", "params": {}}]},
            {"subsystem": "bdev", "config": [{"method": "bdev_x", "params": {}}]}]})
    );
    assert_eq!(
        target.calls,
        [
            "framework_get_subsystems",
            r#"framework_get_config {"name":"sock"}"#,
            r#"framework_get_config {"name":"bdev"}"#
        ]
    );
}

#[test]
fn load_config_replays_startup_then_runtime() {
    let config = json!({"subsystems": [
        {"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {"name": "M", "num_blocks": 8, "block_size": 512}}]},
        {"subsystem": "sock", "config": [{"method": "sock_set_default_impl", "params": {"impl_name": "posix"}}, {"method": "log_set_flag", "params": {"flag": "bdev"}}]},
        {"subsystem": "empty", "config": []}]});
    let mut target = SimTarget { runtime: false, calls: Vec::new() };
    let skipped =
        load_config(&mut |method: &str, params: Option<Value>| target.call(method, params), &config, false).unwrap();
    assert_eq!(skipped, 0);
    assert_eq!(
        target.calls,
        [
            "rpc_get_methods",
            r#"rpc_get_methods {"current":true}"#,
            r#"sock_set_default_impl {"impl_name":"posix"}"#,
            r#"log_set_flag {"flag":"bdev"}"#,
            "framework_start_init",
            r#"rpc_get_methods {"current":true}"#,
            r#"bdev_malloc_create {"name":"M","num_blocks":8,"block_size":512}"#,
        ]
    );

    // Against a target already running, STARTUP entries are skipped and counted.
    let mut running = SimTarget { runtime: true, calls: Vec::new() };
    let skipped =
        load_config(&mut |method: &str, params: Option<Value>| running.call(method, params), &config, false).unwrap();
    assert_eq!(skipped, 1);
    assert!(!running.calls.iter().any(|call| call == "framework_start_init"));

    // An empty config on a waiting target just starts it.
    let mut waiting = SimTarget { runtime: false, calls: Vec::new() };
    load_config(
        &mut |method: &str, params: Option<Value>| waiting.call(method, params),
        &json!({"subsystems": []}),
        true,
    )
    .unwrap();
    assert_eq!(waiting.calls, [r#"rpc_get_methods {"current":true,"include_aliases":true}"#, "framework_start_init"]);
    let mut started = SimTarget { runtime: true, calls: Vec::new() };
    load_config(
        &mut |method: &str, params: Option<Value>| started.call(method, params),
        &json!({"subsystems": []}),
        false,
    )
    .unwrap();
    assert_eq!(started.calls, [r#"rpc_get_methods {"current":true}"#], "a running target is left alone");
}

#[test]
fn load_config_refuses_unknown_methods_and_bad_files() {
    let mut target = SimTarget { runtime: false, calls: Vec::new() };
    let mut caller = |method: &str, params: Option<Value>| target.call(method, params);
    let unknown = json!({"subsystems": [{"subsystem": "x", "config": [{"method": "vhost_create_blk_controller"}]}]});
    match load_config(&mut caller, &unknown, false) {
        Err(LoadError::UnknownMethods(names)) => assert_eq!(names, "vhost_create_blk_controller"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(load_config(&mut caller, &json!({"config": []}), false), Err(LoadError::Invalid(_))));
    let no_method = json!({"subsystems": [{"subsystem": "x", "config": [{"params": {}}]}]});
    assert!(matches!(load_config(&mut caller, &no_method, false), Err(LoadError::Invalid(_))));
}
