//! Generates the bindings. With no feature it does nothing, so the workspace builds on
//! machines without DPDK, SPDK or libclang.
//!
//! - `dpdk`: `pkg-config libdpdk` gives the include and link flags (Debian:
//!   `libdpdk-dev`); bindgen (libclang, Debian: `libclang-dev`) reads `src/wrapper.h`
//!   through an allowlist; `cc` compiles `src/wrapper.c`, which turns DPDK's static
//!   inline functions into symbols Rust can call.
//! - `spdk`: the same for the SPDK install or build tree named by `SPDK_ROOT`.
//! - `rbd`: bindgen over Ceph's `rbd/librbd.h` and `rados/librados.h` (Debian:
//!   `librbd-dev`, which has no pkg-config file), linking `librbd` and `librados`.
//! - `rdma`: rdma-core's libibverbs and librdmacm, found by pkg-config (Debian:
//!   `libibverbs-dev`, `librdmacm-dev`); bindgen reads `src/rdma_wrapper.h` through an
//!   allowlist, and `cc` compiles `src/rdma_wrapper.c`, which gives verbs.h's static
//!   inline fast-path calls (post send/receive, poll and arm a CQ) real symbols.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "dpdk")]
    dpdk::generate();
    #[cfg(feature = "spdk")]
    spdk::generate();
    #[cfg(feature = "rbd")]
    rbd::generate();
    #[cfg(feature = "rdma")]
    rdma::generate();
}

#[cfg(feature = "rbd")]
mod rbd {
    use std::path::PathBuf;

    const HINT: &str = "the `rbd` feature needs Ceph's client headers and libraries \
        (Debian: apt-get install librbd-dev) and libclang for bindgen (libclang-dev)";

    pub fn generate() {
        println!("cargo:rerun-if-changed=src/rbd_wrapper.h");
        println!("cargo:rustc-link-lib=rbd");
        println!("cargo:rustc-link-lib=rados");
        let bindings = bindgen::Builder::default()
            .header("src/rbd_wrapper.h")
            .allowlist_function("rados_(create|conf_set|conf_read_file|connect|shutdown|ioctx_create|ioctx_destroy)")
            .allowlist_function("rbd_(open|close|get_size|resize|get_features|update_watch|update_unwatch|aio_.*)")
            .allowlist_var("RBD_FEATURE_.*")
            .generate_comments(false)
            .merge_extern_blocks(true)
            .layout_tests(false)
            .generate()
            .unwrap_or_else(|err| panic!("spdk-sys: bindgen over librbd's headers failed: {err}; {HINT}"));
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("rbd.rs");
        bindings.write_to_file(&out).unwrap_or_else(|err| panic!("spdk-sys: cannot write {}: {err}", out.display()));
    }
}

/// Runs `pkg-config` on `packages`; `extra_path` goes in front of `PKG_CONFIG_PATH`.
#[cfg(any(feature = "dpdk", feature = "rdma"))]
fn pkg_config(what: &str, packages: &[&str], extra_path: Option<&str>, hint: &str) -> Vec<String> {
    let mut command = std::process::Command::new("pkg-config");
    command.arg(what).args(packages);
    if let Some(extra) = extra_path {
        let old = std::env::var("PKG_CONFIG_PATH").unwrap_or_default();
        command.env("PKG_CONFIG_PATH", if old.is_empty() { extra.to_string() } else { format!("{extra}:{old}") });
    }
    let output = match command.output() {
        Ok(output) => output,
        Err(err) => panic!("spdk-sys: cannot run pkg-config ({err}); {hint}"),
    };
    if !output.status.success() {
        panic!(
            "spdk-sys: `pkg-config {what} {}` failed: {}{hint}",
            packages.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).split_whitespace().map(str::to_string).collect()
}

/// Compiles a C wrapper (static inlines and macros made into symbols) into the library
/// `name`, with the package's C flags and `defines`.
#[cfg(any(feature = "dpdk", feature = "rdma"))]
fn compile_wrapper(source: &str, name: &str, cflags: &[String], defines: &[&str]) {
    let mut build = cc::Build::new();
    build.file(source).include("src");
    for define in defines {
        build.define(define, None);
    }
    for flag in cflags {
        build.flag(flag);
    }
    build.compile(name);
}

/// Turns `pkg-config --libs` output into cargo link directives.
#[cfg(any(feature = "dpdk", feature = "rdma"))]
fn emit_link_flags(flags: &[String]) {
    for flag in flags {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib={lib}");
        } else if flag == "-Wl,--as-needed" || flag == "-pthread" {
            // rustc links with --as-needed and pthread on Linux already.
        } else if let Some(rest) = flag.strip_prefix("-Wl,") {
            for arg in rest.split(',') {
                println!("cargo:rustc-link-arg={arg}");
            }
        } else {
            println!("cargo:warning=spdk-sys: ignoring link flag {flag}");
        }
    }
}

#[cfg(feature = "rdma")]
mod rdma {
    use std::path::PathBuf;

    const HINT: &str = "the `rdma` feature needs rdma-core's development files \
        (Debian: apt-get install libibverbs-dev librdmacm-dev pkg-config) and libclang for bindgen (libclang-dev)";

    /// What an NVMe/RDMA target and initiator call: devices, protection domains, memory
    /// registration, completion channels and queues, shared receive queues, and the
    /// RDMA CM's connection life cycle. verbs.h's static inline calls are reached through
    /// `peerless_*` in `src/rdma_wrapper.c`, never by their own names (no symbol).
    const FUNCTIONS: &[&str] = &[
        "ibv_get_device_list",
        "ibv_free_device_list",
        "ibv_get_device_name",
        "ibv_get_device_guid",
        "ibv_open_device",
        "ibv_close_device",
        "ibv_query_device",
        "ibv_alloc_pd",
        "ibv_dealloc_pd",
        "ibv_reg_dmabuf_mr",
        "ibv_dereg_mr",
        "ibv_create_comp_channel",
        "ibv_destroy_comp_channel",
        "ibv_create_cq",
        "ibv_destroy_cq",
        "ibv_get_cq_event",
        "ibv_ack_cq_events",
        "ibv_create_srq",
        "ibv_destroy_srq",
        "ibv_wc_status_str",
        "ibv_get_async_event",
        "ibv_ack_async_event",
        "ibv_event_type_str",
        "ibv_port_state_str",
        "rdma_create_event_channel",
        "rdma_destroy_event_channel",
        "rdma_create_id",
        "rdma_destroy_id",
        "rdma_bind_addr",
        "rdma_listen",
        "rdma_resolve_addr",
        "rdma_resolve_route",
        "rdma_create_qp",
        "rdma_destroy_qp",
        "rdma_connect",
        "rdma_accept",
        "rdma_reject",
        "rdma_disconnect",
        "rdma_get_cm_event",
        "rdma_ack_cm_event",
        "rdma_event_str",
        "rdma_get_devices",
        "rdma_free_devices",
        "rdma_get_src_port",
        "rdma_get_dst_port",
        "peerless_.*",
    ];
    const TYPES: &[&str] = &[
        "ibv_context",
        "ibv_device",
        "ibv_device_attr",
        "ibv_port_attr",
        "ibv_pd",
        "ibv_mr",
        "ibv_cq",
        "ibv_comp_channel",
        "ibv_srq",
        "ibv_srq_init_attr",
        "ibv_qp",
        "ibv_qp_init_attr",
        "ibv_send_wr",
        "ibv_recv_wr",
        "ibv_sge",
        "ibv_wc",
        "ibv_access_flags",
        "ibv_send_flags",
        "ibv_wc_flags",
        "ibv_wr_opcode",
        "ibv_wc_opcode",
        "ibv_wc_status",
        "ibv_qp_type",
        "ibv_port_state",
        "ibv_async_event",
        "ibv_event_type",
        "rdma_cm_id",
        "rdma_cm_event",
        "rdma_cm_event_type",
        "rdma_conn_param",
        "rdma_event_channel",
        "rdma_port_space",
    ];

    pub fn generate() {
        let cflags = super::pkg_config("--cflags", &["libibverbs", "librdmacm"], None, HINT);
        let libs = super::pkg_config("--libs", &["libibverbs", "librdmacm"], None, HINT);
        println!("cargo:rerun-if-changed=src/rdma_wrapper.h");
        println!("cargo:rerun-if-changed=src/rdma_wrapper.c");
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

        super::compile_wrapper("src/rdma_wrapper.c", "peerless_rdma_wrapper", &cflags, &[]);
        super::emit_link_flags(&libs);

        let mut builder = bindgen::Builder::default()
            .header("src/rdma_wrapper.h")
            .clang_args(&cflags)
            // Newtypes, never Rust enums: a value the library returns that this build does
            // not know (a newer rdma-core) must not be undefined behaviour.
            .newtype_enum("ibv_.*_flags|ibv_event_type|ibv_wc_status|ibv_wc_opcode|ibv_wr_opcode|ibv_qp_type|ibv_port_state|rdma_cm_event_type|rdma_port_space")
            .derive_default(true)
            // rdma-core's comments are not Rust docs.
            .generate_comments(false)
            .merge_extern_blocks(true)
            .layout_tests(false)
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
        for f in FUNCTIONS {
            builder = builder.allowlist_function(f);
        }
        for t in TYPES {
            builder = builder.allowlist_type(t);
        }
        let bindings = builder
            .generate()
            .unwrap_or_else(|err| panic!("spdk-sys: bindgen over rdma-core's headers failed: {err}; {HINT}"));
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("rdma.rs");
        bindings.write_to_file(&out).unwrap_or_else(|err| panic!("spdk-sys: cannot write {}: {err}", out.display()));
    }
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::path::PathBuf;

    const HINT: &str = "install DPDK's development files (Debian: apt-get install libdpdk-dev pkg-config) \
                        or point PKG_CONFIG_PATH at a DPDK install's lib/pkgconfig";

    /// The DPDK functions Rust sees: EAL life cycle and facts, memory, memzones,
    /// lcores, and the VFIO/PCI basics a user-space NVMe driver starts from.
    const FUNCTIONS: &[&str] = &[
        "rte_eal_init",
        "rte_eal_cleanup",
        "rte_eal_iova_mode",
        "rte_eal_has_hugepages",
        "rte_eal_has_pci",
        "rte_eal_process_type",
        "rte_eal_get_physmem_size",
        "rte_malloc",
        "rte_zmalloc",
        "rte_malloc_socket",
        "rte_zmalloc_socket",
        "rte_free",
        "rte_malloc_virt2iova",
        "rte_mem_virt2iova",
        "rte_mem_virt2phy",
        "rte_mem_virt2memseg",
        "rte_mem_virt2memseg_list",
        "rte_mem_lock_page",
        "rte_memzone_.*",
        "rte_socket_id",
        "rte_lcore_count",
        "rte_get_main_lcore",
        "rte_lcore_to_socket_id",
        "rte_strerror",
        "rte_vfio_is_enabled",
        "rte_vfio_noiommu_is_enabled",
        "rte_vfio_setup_device",
        "rte_vfio_release_device",
        "rte_vfio_get_container_fd",
        "rte_vfio_get_group_num",
        "rte_vfio_container_dma_map",
        "rte_vfio_container_dma_unmap",
        "rte_pci_addr_parse",
        "rte_pci_addr_cmp",
        "rte_pci_device_name",
        "rte_pci_map_device",
        "rte_pci_unmap_device",
        "rte_pci_read_config",
        "rte_pci_write_config",
        "rte_pci_set_bus_master",
        "rte_bus_find_by_name",
        "rte_bus_scan",
        "rte_bus_probe",
        "rte_dev_probe",
        "rte_dev_remove",
        "rte_log_set_global_level",
        "peerless_.*",
    ];
    const TYPES: &[&str] =
        &["rte_iova_mode", "rte_proc_type_t", "rte_memzone", "rte_memseg", "rte_memseg_list", "rte_pci_addr"];
    const VARS: &[&str] = &["RTE_MEMZONE_.*", "SOCKET_ID_ANY", "RTE_PCI_.*_FMT", "RTE_LOG_.*", "RTE_MAX_LCORE"];

    pub fn generate() {
        let cflags = super::pkg_config("--cflags", &["libdpdk"], None, HINT);
        let libs = super::pkg_config("--libs", &["libdpdk"], None, HINT);
        println!("cargo:rerun-if-changed=src/wrapper.h");
        println!("cargo:rerun-if-changed=src/wrapper.c");
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

        super::compile_wrapper("src/wrapper.c", "peerless_dpdk_wrapper", &cflags, &["ALLOW_EXPERIMENTAL_API"]);
        super::emit_link_flags(&libs);

        let mut builder = bindgen::Builder::default()
            .header("src/wrapper.h")
            .clang_args(&cflags)
            .clang_arg("-DALLOW_EXPERIMENTAL_API")
            .newtype_enum("rte_iova_mode|rte_proc_type_t")
            .derive_default(true)
            // DPDK's comments are not Rust docs: their indented text would run as doctests.
            .generate_comments(false)
            .merge_extern_blocks(true)
            .layout_tests(false)
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
        for f in FUNCTIONS {
            builder = builder.allowlist_function(f);
        }
        for t in TYPES {
            builder = builder.allowlist_type(t);
        }
        for v in VARS {
            builder = builder.allowlist_var(v);
        }
        let bindings = builder.generate().unwrap_or_else(|err| {
            panic!("spdk-sys: bindgen over DPDK's headers failed: {err} (bindgen needs libclang: apt-get install libclang-dev)")
        });
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("dpdk.rs");
        bindings.write_to_file(&out).unwrap_or_else(|err| panic!("spdk-sys: cannot write {}: {err}", out.display()));
    }
}

#[cfg(feature = "spdk")]
mod spdk {
    use std::path::{Path, PathBuf};

    const HOW_TO: &str = "spdk-sys: the `spdk` feature binds an SPDK build, which no package registry \
        here provides. Build SPDK (git clone https://github.com/spdk/spdk --recursive; \
        cd spdk; ./configure --with-shared; make), then name its tree or install prefix: \
        SPDK_ROOT=/path/to/spdk cargo build --features spdk-sys/spdk. Without SPDK, build \
        with `--features dpdk` (DPDK only) or with no feature.";

    /// The SPDK libraries the bindings cover: the env layer and the NVMe driver.
    const PACKAGES: &[&str] = &["spdk_env_dpdk", "spdk_nvme"];

    pub fn generate() {
        println!("cargo:rerun-if-env-changed=SPDK_ROOT");
        let Some(root) = std::env::var_os("SPDK_ROOT").map(PathBuf::from) else {
            panic!("SPDK_ROOT is not set. {HOW_TO}");
        };
        let include = root.join("include");
        if !include.join("spdk/env.h").is_file() {
            panic!("SPDK_ROOT={} holds no include/spdk/env.h. {HOW_TO}", root.display());
        }
        // A build tree keeps its .pc files in build/lib/pkgconfig, an install in lib/pkgconfig.
        let pc_dirs: Vec<String> = ["build/lib/pkgconfig", "lib/pkgconfig"]
            .iter()
            .map(|d| root.join(d))
            .filter(|d| d.is_dir())
            .map(|d| d.display().to_string())
            .collect();
        let pc_path = pc_dirs.join(":");
        let libs = super::pkg_config("--libs", PACKAGES, Some(&pc_path), HOW_TO);
        super::emit_link_flags(&libs);
        let header = write_header(&include);
        let bindings = bindgen::Builder::default()
            .header(header.display().to_string())
            .clang_arg(format!("-I{}", include.display()))
            .allowlist_function("spdk_env_.*|spdk_dma_.*|spdk_zmalloc|spdk_free|spdk_vtophys|spdk_nvme_probe|spdk_nvme_transport_id_parse|spdk_nvme_detach")
            .allowlist_type("spdk_env_opts|spdk_nvme_transport_id")
            .derive_default(true)
            .generate_comments(false)
            .layout_tests(false)
            .generate()
            .unwrap_or_else(|err| panic!("spdk-sys: bindgen over SPDK's headers failed: {err}"));
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("spdk.rs");
        bindings.write_to_file(&out).unwrap_or_else(|err| panic!("spdk-sys: cannot write {}: {err}", out.display()));
    }

    fn write_header(include: &Path) -> PathBuf {
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("spdk_wrapper.h");
        let text = "#include <spdk/stdinc.h>\n#include <spdk/env.h>\n#include <spdk/nvme.h>\n";
        std::fs::write(&out, text).unwrap_or_else(|err| panic!("spdk-sys: cannot write {}: {err}", out.display()));
        println!("cargo:rerun-if-changed={}", include.join("spdk/env.h").display());
        out
    }
}
