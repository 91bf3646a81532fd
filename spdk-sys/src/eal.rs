//! A safe layer over DPDK's Environment Abstraction Layer: start it once per process,
//! allocate and free its memory, translate virtual addresses to IOVAs, reserve memzones.
//!
//! DPDK allows one `rte_eal_init` per process, and no second one after
//! `rte_eal_cleanup`. [`init`] records the outcome: a second call with the same
//! arguments returns the running EAL, different arguments or a call after [`cleanup`]
//! are refused.

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::c_char;
use std::ptr::NonNull;

use crate::dpdk as sys;

/// How the EAL maps virtual addresses to what devices DMA to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IovaMode {
    /// IOVA = physical address (hugepages, as root, or no IOMMU).
    Pa,
    /// IOVA = virtual address (`--no-huge`, or an IOMMU via VFIO).
    Va,
}

impl fmt::Display for IovaMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IovaMode::Pa => "pa",
            IovaMode::Va => "va",
        })
    }
}

/// What a started EAL reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EalInfo {
    /// The arguments it was started with (argv[0] first).
    pub args: Vec<String>,
    pub iova_mode: IovaMode,
    pub has_hugepages: bool,
    pub has_pci: bool,
    pub main_lcore: u32,
    pub lcore_count: u32,
    /// Memory the EAL holds, in bytes (hugepages, or the `--no-huge` area).
    pub physmem_bytes: u64,
    pub vfio_enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EalError {
    /// `rte_eal_init` failed; DPDK does not allow a retry in the same process.
    InitFailed { args: Vec<String>, errno: i32, reason: String },
    /// The EAL already runs with other arguments.
    AlreadyRunning { running: Vec<String>, asked: Vec<String> },
    /// `rte_eal_cleanup` ran; DPDK cannot start again in this process.
    CleanedUp,
    /// [`cleanup`] before [`init`].
    NotRunning,
    /// An argument held a NUL byte.
    BadArgument(String),
    /// `rte_eal_cleanup` failed.
    CleanupFailed { errno: i32, reason: String },
    /// A memzone could not be reserved.
    Memzone { name: String, len: usize, errno: i32, reason: String },
}

impl fmt::Display for EalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EalError::InitFailed { args, errno, reason } => {
                write!(f, "DPDK EAL init with `{}` failed: {reason} (rte_errno {errno})", args.join(" "))
            }
            EalError::AlreadyRunning { running, asked } => write!(
                f,
                "the DPDK EAL already runs with `{}`; it starts once per process (asked: `{}`)",
                running.join(" "),
                asked.join(" ")
            ),
            EalError::CleanedUp => f.write_str("the DPDK EAL was cleaned up; it cannot start again in this process"),
            EalError::NotRunning => f.write_str("the DPDK EAL is not running"),
            EalError::BadArgument(arg) => write!(f, "EAL argument {arg:?} holds a NUL byte"),
            EalError::CleanupFailed { errno, reason } => {
                write!(f, "rte_eal_cleanup failed: {reason} (rte_errno {errno})")
            }
            EalError::Memzone { name, len, errno, reason } => {
                write!(f, "memzone {name:?} of {len} bytes: {reason} (rte_errno {errno})")
            }
        }
    }
}

impl std::error::Error for EalError {}

enum State {
    Idle,
    Running(EalInfo),
    Failed(EalError),
    CleanedUp,
}

/// Control plane only: start and stop.
static STATE: std::sync::Mutex<State> = std::sync::Mutex::new(State::Idle);

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The DPDK error message of the calling thread's `rte_errno`.
fn last_error() -> (i32, String) {
    // SAFETY: reads the calling thread's rte_errno; no arguments.
    let errno = unsafe { sys::peerless_rte_errno() };
    // SAFETY: rte_strerror returns a pointer to a NUL-terminated string that lives in a
    // static or thread-local buffer; it is copied before any other DPDK call.
    let reason = unsafe { CStr::from_ptr(sys::rte_strerror(errno)) }.to_string_lossy().into_owned();
    (errno, reason)
}

/// Starts the EAL with `args` (`args[0]` is the program name, as in `argv`), or returns
/// the running one when it was started with the same arguments.
///
/// The calling thread becomes the EAL's main lcore. DPDK pins it to that lcore's CPU;
/// this function restores the thread's previous CPU affinity afterwards, so threads it
/// spawns later (reactors pin themselves) inherit no accidental mask.
pub fn init(args: &[String]) -> Result<EalInfo, EalError> {
    let mut state = state();
    match &*state {
        State::Running(info) if info.args == args => return Ok(info.clone()),
        State::Running(info) => {
            return Err(EalError::AlreadyRunning { running: info.args.clone(), asked: args.to_vec() });
        }
        State::Failed(err) => return Err(err.clone()),
        State::CleanedUp => return Err(EalError::CleanedUp),
        State::Idle => {}
    }
    assert!(!args.is_empty(), "EAL arguments start with the program name");
    let owned: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()).map_err(|_| EalError::BadArgument(a.clone())))
        .collect::<Result<_, _>>()?;
    // DPDK may keep pointers into argv (it saves them for telemetry), and getopt permutes
    // the array: both the strings and the array live for the rest of the process.
    let strings: &'static mut [CString] = Box::leak(owned.into_boxed_slice());
    let argv: &'static mut [*mut c_char] =
        Box::leak(strings.iter_mut().map(|s| s.as_ptr().cast_mut()).collect::<Vec<_>>().into_boxed_slice());
    let argc = i32::try_from(argv.len()).expect("fewer than 2^31 EAL arguments");

    let affinity = current_affinity();
    // SAFETY: argv holds argc valid NUL-terminated strings that outlive the process;
    // the state lock makes this the only rte_eal_init of the process.
    let rc = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
    if let Some(set) = affinity {
        restore_affinity(&set);
    }
    if rc < 0 {
        let (errno, reason) = last_error();
        let err = EalError::InitFailed { args: args.to_vec(), errno, reason };
        *state = State::Failed(err.clone());
        return Err(err);
    }
    let info = collect_info(args.to_vec());
    *state = State::Running(info.clone());
    Ok(info)
}

fn collect_info(args: Vec<String>) -> EalInfo {
    let vfio = c"vfio";
    // SAFETY: each call only reads EAL configuration, which init has set up; `vfio` is a
    // NUL-terminated module name.
    unsafe {
        EalInfo {
            args,
            iova_mode: if sys::rte_eal_iova_mode() == sys::rte_iova_mode::RTE_IOVA_PA {
                IovaMode::Pa
            } else {
                IovaMode::Va
            },
            has_hugepages: sys::rte_eal_has_hugepages() != 0,
            has_pci: sys::rte_eal_has_pci() != 0,
            main_lcore: sys::rte_get_main_lcore(),
            lcore_count: sys::rte_lcore_count(),
            physmem_bytes: sys::rte_eal_get_physmem_size(),
            vfio_enabled: sys::rte_vfio_is_enabled(vfio.as_ptr()) != 0,
        }
    }
}

/// The running EAL, if any.
pub fn info() -> Option<EalInfo> {
    match &*state() {
        State::Running(info) => Some(info.clone()),
        _ => None,
    }
}

/// Stops the EAL and releases all its memory.
///
/// # Safety
/// No DPDK memory (from [`malloc`], [`Memzone`], or anything built on them) may be in
/// use, now or later: `rte_eal_cleanup` unmaps it all.
pub unsafe fn cleanup() -> Result<(), EalError> {
    let mut state = state();
    match &*state {
        State::Running(_) => {}
        State::CleanedUp => return Err(EalError::CleanedUp),
        State::Idle | State::Failed(_) => return Err(EalError::NotRunning),
    }
    // SAFETY: the EAL runs (checked under the lock) and the caller vouches that none of
    // its memory is in use.
    let rc = unsafe { sys::rte_eal_cleanup() };
    *state = State::CleanedUp;
    if rc < 0 {
        let (errno, reason) = last_error();
        return Err(EalError::CleanupFailed { errno, reason });
    }
    Ok(())
}

fn running() -> bool {
    matches!(&*state(), State::Running(_))
}

fn current_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain bits; zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    (rc == 0).then_some(set)
}

fn restore_affinity(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid cpu_set_t read by sched_getaffinity on this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    debug_assert_eq!(rc, 0, "restoring the thread's own affinity failed");
}

/// `len` bytes of EAL memory aligned to `align` (a power of two, 0 for a cache line),
/// zeroed when `zero`; `None` when the EAL does not run or its heap is exhausted.
/// Free with [`free`].
pub fn malloc(len: usize, align: u32, zero: bool) -> Option<NonNull<u8>> {
    assert!(align == 0 || align.is_power_of_two(), "alignment {align} is not a power of two");
    if len == 0 || !running() {
        return None;
    }
    let kind = c"peerless";
    // SAFETY: the EAL runs; rte_malloc may be called from any thread and returns null or
    // a block of at least `len` bytes owned by the caller.
    let ptr = unsafe {
        if zero {
            sys::rte_zmalloc(kind.as_ptr(), len, align)
        } else {
            sys::rte_malloc(kind.as_ptr(), len, align)
        }
    };
    NonNull::new(ptr.cast())
}

/// Returns a block to the EAL heap.
///
/// # Safety
/// `ptr` came from [`malloc`], is freed once, and nothing uses it afterwards.
pub unsafe fn free(ptr: NonNull<u8>) {
    // SAFETY: per this function's contract.
    unsafe { sys::rte_free(ptr.as_ptr().cast()) }
}

/// The IOVA of a block from [`malloc`] (`rte_malloc_virt2iova`), `None` when DPDK knows
/// none.
///
/// # Safety
/// `ptr` is the start of a live block from [`malloc`]: DPDK reads the heap element
/// header in front of it.
pub unsafe fn malloc_virt2iova(ptr: NonNull<u8>) -> Option<u64> {
    // SAFETY: per this function's contract.
    let iova = unsafe { sys::rte_malloc_virt2iova(ptr.as_ptr().cast()) };
    (iova != sys::RTE_BAD_IOVA).then_some(iova)
}

/// The IOVA of any address (`rte_mem_virt2iova`): EAL memory is looked up in its memory
/// segments; other memory is VA in IOVA-as-VA mode and its physical address in PA mode.
pub fn mem_virt2iova(addr: usize) -> Option<u64> {
    if !running() {
        return None;
    }
    // SAFETY: rte_mem_virt2iova only looks the address up (memseg tables, or
    // /proc/self/pagemap in PA mode); it never dereferences it.
    let iova = unsafe { sys::rte_mem_virt2iova(addr as *const std::ffi::c_void) };
    (iova != sys::RTE_BAD_IOVA).then_some(iova)
}

/// The page size of the EAL memory holding `addr` (4 KiB with `--no-huge`, the
/// hugepage size otherwise), `None` for memory the EAL does not own.
pub fn page_size_of(addr: usize) -> Option<u64> {
    if !running() {
        return None;
    }
    // SAFETY: rte_mem_virt2memseg_list only searches the memseg lists for the address.
    let msl = unsafe { sys::rte_mem_virt2memseg_list(addr as *const std::ffi::c_void) };
    // SAFETY: a non-null result points at an EAL memseg list, which lives as long as the
    // EAL; only its page size is read.
    (!msl.is_null()).then(|| unsafe { (*msl).page_sz })
}

/// The calling thread's lcore id, `None` on a thread that is no EAL lcore.
pub fn lcore_id() -> Option<u32> {
    // SAFETY: reads the calling thread's per-lcore variable.
    let id = unsafe { sys::peerless_rte_lcore_id() };
    (id != sys::LCORE_ID_ANY).then_some(id)
}

/// The NUMA socket of the calling thread (`SOCKET_ID_ANY` off EAL lcores).
pub fn socket_id() -> i32 {
    // SAFETY: reads the calling thread's per-lcore variable.
    unsafe { sys::rte_socket_id() as i32 }
}

/// A reserved memzone: named, IOVA-contiguous when asked, freed on drop.
#[derive(Debug)]
pub struct Memzone {
    zone: NonNull<sys::rte_memzone>,
}

// SAFETY: a memzone descriptor is immutable after reservation and DPDK's memzone calls
// lock internally; freeing from another thread is allowed.
unsafe impl Send for Memzone {}
// SAFETY: only immutable fields are read through `&Memzone`.
unsafe impl Sync for Memzone {}

impl Memzone {
    /// Reserves `len` bytes named `name` (at most 31 bytes), aligned to `align`;
    /// `iova_contig` asks for memory one DMA descriptor can name.
    pub fn reserve(name: &str, len: usize, align: u32, iova_contig: bool) -> Result<Memzone, EalError> {
        let memzone_error = |errno: i32, reason: String| EalError::Memzone { name: name.into(), len, errno, reason };
        if !running() {
            return Err(memzone_error(0, "the EAL is not running".into()));
        }
        let cname = CString::new(name).map_err(|_| EalError::BadArgument(name.into()))?;
        let flags = if iova_contig { sys::RTE_MEMZONE_IOVA_CONTIG } else { 0 };
        // SAFETY: the EAL runs; `cname` is NUL-terminated and copied by DPDK.
        let zone = unsafe { sys::rte_memzone_reserve_aligned(cname.as_ptr(), len, sys::SOCKET_ID_ANY, flags, align) };
        match NonNull::new(zone.cast_mut()) {
            Some(zone) => Ok(Memzone { zone }),
            None => {
                let (errno, reason) = last_error();
                Err(memzone_error(errno, reason))
            }
        }
    }

    fn zone(&self) -> &sys::rte_memzone {
        // SAFETY: the descriptor stays valid until rte_memzone_free in drop.
        unsafe { self.zone.as_ref() }
    }

    pub fn addr(&self) -> usize {
        // SAFETY: `addr` is the union member DPDK fills in; both members are 64 bits.
        unsafe { self.zone().__bindgen_anon_1.addr as usize }
    }

    pub fn len(&self) -> usize {
        self.zone().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iova(&self) -> u64 {
        self.zone().iova
    }

    pub fn page_size(&self) -> u64 {
        self.zone().hugepage_sz
    }
}

impl Drop for Memzone {
    fn drop(&mut self) {
        // SAFETY: the zone was reserved by this value and is freed once.
        let rc = unsafe { sys::rte_memzone_free(self.zone.as_ptr()) };
        debug_assert_eq!(rc, 0, "rte_memzone_free of an owned zone failed");
    }
}
