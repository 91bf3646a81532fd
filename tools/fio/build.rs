//! Compiles `shim.c` against fio's own headers when `FIO_SRC` names a configured fio
//! source tree (`tools/fio/build.sh` prepares one). Without it the crate builds its
//! pure-Rust parts only, so `cargo build --workspace` works where fio's sources are not.
//!
//! The shim's object is linked into the cdylib only (`rustc-cdylib-link-arg`): it calls
//! fio's `register_ioengine` and `log_err`, which exist only inside the fio executable, so
//! the crate's test binaries must not carry it.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=FIO_SRC");
    println!("cargo:rerun-if-changed=shim.c");
    let Some(fio_src) = std::env::var_os("FIO_SRC").map(PathBuf::from) else {
        println!(
            "cargo:warning=FIO_SRC is not set: building peerless-fio without its fio shim (no engines); \
             run tools/fio/build.sh for a loadable plugin"
        );
        return;
    };
    for header in ["fio.h", "config-host.h"] {
        if !fio_src.join(header).is_file() {
            panic!("FIO_SRC={}: no {header} (run fio's ./configure there, or tools/fio/build.sh)", fio_src.display());
        }
    }
    println!("cargo:rerun-if-changed={}", fio_src.join("config-host.h").display());
    let objects = cc::Build::new()
        .file("shim.c")
        .include(&fio_src)
        // fio's own Makefile compiles with these (not FIO_INTERNAL: that is fio's private API).
        .define("_GNU_SOURCE", None)
        .define("_LARGEFILE_SOURCE", None)
        .define("_FILE_OFFSET_BITS", "64")
        .define("FIO_INC_DEBUG", None)
        .flag("-std=gnu99")
        .pic(true)
        .warnings(false)
        .compile_intermediates();
    for object in &objects {
        println!("cargo:rustc-cdylib-link-arg={}", Path::new(object).display());
    }
}
