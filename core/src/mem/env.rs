//! Where DMA memory comes from: the plain backend (mlock'ed anonymous mappings, IOVA =
//! VA; the default, needs nothing) or DPDK's EAL (`rte_malloc`, IOVA from DPDK, on
//! hugepages unless `--no-huge`). The choice is made once at start-up by [`start`]
//! and read by every [`super::DmaBuf::alloc`]; the DPDK half exists only when
//! `peerless-core` is built with its `dpdk` feature.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use super::{Error, Result};

/// Whether this build can use DPDK memory.
pub const DPDK_BUILT: bool = cfg!(feature = "dpdk");

/// The memory environment (`peerless-tgt --env`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum MemEnv {
    /// Anonymous mappings, hugepages when the system has them (`DmaBuf`'s own).
    #[default]
    Plain = 0,
    /// DPDK's EAL heap.
    Dpdk = 1,
}

impl FromStr for MemEnv {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<MemEnv, String> {
        match s {
            "plain" => Ok(MemEnv::Plain),
            "dpdk" => Ok(MemEnv::Dpdk),
            other => Err(format!("unknown environment {other:?}: expected plain or dpdk")),
        }
    }
}

impl fmt::Display for MemEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemEnv::Plain => "plain",
            MemEnv::Dpdk => "dpdk",
        })
    }
}

/// What devices see as the address of DMA memory (DPDK's `--iova-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IovaMode {
    /// Physical addresses: hugepages, as root (reads /proc/self/pagemap).
    Pa,
    /// Virtual addresses: `--no-huge`, or an IOMMU through VFIO.
    Va,
}

impl FromStr for IovaMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<IovaMode, String> {
        match s {
            "pa" => Ok(IovaMode::Pa),
            "va" => Ok(IovaMode::Va),
            other => Err(format!("unknown IOVA mode {other:?}: expected pa or va")),
        }
    }
}

impl fmt::Display for IovaMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IovaMode::Pa => "pa",
            IovaMode::Va => "va",
        })
    }
}

/// Largest `-s` accepted, in MiB (1 TiB): a typo guard, not a DPDK limit.
pub const MEM_SIZE_MB_MAX: u32 = 1 << 20;

/// Start-up options of the memory environment (SPDK's `-s`, `--no-huge`, `--iova-mode`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvOptions {
    pub env: MemEnv,
    /// EAL memory in MiB (`-m`); DPDK's default when `None` (all free hugepages, or
    /// 64 MiB with `--no-huge`).
    pub mem_size_mb: Option<u32>,
    /// Anonymous 4 KiB pages instead of hugetlbfs (IOVA as VA).
    pub no_huge: bool,
    pub iova_mode: Option<IovaMode>,
    /// The CPU of the EAL's main lcore (the first reactor core).
    pub main_core: u32,
    /// Extra EAL arguments, appended last (e.g. `--log-level=lib.eal:debug`).
    pub extra_args: Vec<String>,
}

impl EnvOptions {
    /// Checks values that came from flags.
    pub fn validate(&self) -> Result<()> {
        if self.env == MemEnv::Plain
            && (self.mem_size_mb.is_some() || self.no_huge || self.iova_mode.is_some() || !self.extra_args.is_empty())
        {
            return Err(Error::Config("-s, --no-huge and --iova-mode apply to --env dpdk only".into()));
        }
        if let Some(mb) = self.mem_size_mb {
            if mb == 0 || mb > MEM_SIZE_MB_MAX {
                return Err(Error::Config(format!("-s {mb}: memory size must be 1..={MEM_SIZE_MB_MAX} MiB")));
            }
        }
        if self.no_huge && self.iova_mode == Some(IovaMode::Pa) {
            return Err(Error::Config("--no-huge memory has no stable physical addresses: use --iova-mode va".into()));
        }
        Ok(())
    }

    /// The EAL command line for these options (`argv[0]` first). PCI stays off until a
    /// user-space driver needs it; no shared config files are written (`--in-memory`
    /// with hugepages; DPDK 22.11 refuses it with `--no-huge`, so `--no-shconf` there).
    pub fn eal_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["peerless".into(), "-l".into(), self.main_core.to_string()];
        args.extend(["--no-pci", "--no-telemetry"].map(String::from));
        args.push(if self.no_huge { "--no-shconf" } else { "--in-memory" }.into());
        if self.no_huge {
            args.push("--no-huge".into());
        }
        if let Some(mb) = self.mem_size_mb {
            args.extend(["-m".into(), mb.to_string()]);
        }
        if let Some(mode) = self.iova_mode {
            args.push(format!("--iova-mode={mode}"));
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// What [`start`] set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvInfo {
    pub env: MemEnv,
    /// The EAL's IOVA mode (plain memory is always IOVA as VA).
    pub iova_mode: IovaMode,
    pub hugepages: bool,
    /// Memory the EAL holds, in bytes (0 for plain).
    pub mem_bytes: u64,
    /// The EAL arguments used (empty for plain).
    pub eal_args: Vec<String>,
}

impl fmt::Display for EnvInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.env {
            MemEnv::Plain => f.write_str("plain DMA memory (IOVA = VA)"),
            MemEnv::Dpdk => write!(
                f,
                "DPDK EAL: {} MiB on {}, IOVA as {} ({})",
                self.mem_bytes >> 20,
                if self.hugepages { "hugepages" } else { "4 KiB pages (--no-huge)" },
                self.iova_mode.to_string().to_uppercase(),
                self.eal_args.join(" ")
            ),
        }
    }
}

static BACKEND: AtomicU8 = AtomicU8::new(MemEnv::Plain as u8);

/// The backend [`super::DmaBuf::alloc`] uses now.
pub fn backend() -> MemEnv {
    // Set once at start-up, before buffers are allocated: a relaxed read suffices.
    if BACKEND.load(Ordering::Relaxed) == MemEnv::Dpdk as u8 {
        MemEnv::Dpdk
    } else {
        MemEnv::Plain
    }
}

#[cfg(feature = "dpdk")]
pub(crate) fn set_backend(env: MemEnv) {
    BACKEND.store(env as u8, Ordering::Relaxed);
}

/// Sets up the memory environment, before any DMA memory is allocated: for `dpdk`,
/// starts the EAL (once per process) and makes it the backend of every later
/// [`super::DmaBuf::alloc`].
pub fn start(options: &EnvOptions) -> Result<EnvInfo> {
    options.validate()?;
    match options.env {
        MemEnv::Plain => Ok(EnvInfo {
            env: MemEnv::Plain,
            iova_mode: IovaMode::Va,
            hugepages: false,
            mem_bytes: 0,
            eal_args: Vec::new(),
        }),
        MemEnv::Dpdk => start_dpdk(options),
    }
}

#[cfg(feature = "dpdk")]
fn start_dpdk(options: &EnvOptions) -> Result<EnvInfo> {
    let info = super::dpdk::start(&options.eal_args())?;
    set_backend(MemEnv::Dpdk);
    Ok(info)
}

#[cfg(not(feature = "dpdk"))]
fn start_dpdk(_options: &EnvOptions) -> Result<EnvInfo> {
    Err(Error::Config(
        "--env dpdk: this binary was built without DPDK support; rebuild with \
         `cargo build --features peerless-core/dpdk` (needs libdpdk-dev, libclang-dev, pkg-config)"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(options: EnvOptions, expected: &str) {
        options.validate().expect("valid");
        assert_eq!(options.eal_args().join(" "), expected);
    }

    #[test]
    fn flags_become_eal_arguments() {
        let dpdk = EnvOptions { env: MemEnv::Dpdk, ..EnvOptions::default() };
        check(dpdk.clone(), "peerless -l 0 --no-pci --no-telemetry --in-memory");
        check(
            EnvOptions { no_huge: true, mem_size_mb: Some(256), main_core: 1, ..dpdk.clone() },
            "peerless -l 1 --no-pci --no-telemetry --no-shconf --no-huge -m 256",
        );
        check(
            EnvOptions { iova_mode: Some(IovaMode::Pa), ..dpdk.clone() },
            "peerless -l 0 --no-pci --no-telemetry --in-memory --iova-mode=pa",
        );
        assert!(EnvOptions { no_huge: true, iova_mode: Some(IovaMode::Pa), ..dpdk.clone() }.validate().is_err());
        assert!(EnvOptions { mem_size_mb: Some(0), ..dpdk }.validate().is_err());
        assert!(EnvOptions { no_huge: true, ..EnvOptions::default() }.validate().is_err(), "plain takes no EAL flags");
        assert_eq!("dpdk".parse(), Ok(MemEnv::Dpdk));
        assert!("spdk".parse::<MemEnv>().is_err());
        assert_eq!("va".parse(), Ok(IovaMode::Va));
    }

    #[test]
    fn plain_is_the_default_and_needs_nothing() {
        assert_eq!(backend(), MemEnv::Plain);
        let info = start(&EnvOptions::default()).expect("plain");
        assert_eq!(info.env, MemEnv::Plain);
        assert_eq!(backend(), MemEnv::Plain);
    }

    #[cfg(not(feature = "dpdk"))]
    #[test]
    fn dpdk_without_the_feature_says_how_to_build_it() {
        let err = start(&EnvOptions { env: MemEnv::Dpdk, ..EnvOptions::default() }).expect_err("no dpdk");
        assert!(err.to_string().contains("--features peerless-core/dpdk"), "{err}");
    }
}
