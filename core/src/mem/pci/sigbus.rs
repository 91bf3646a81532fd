//! Surviving a device's surprise removal under a sysfs BAR mapping. When a PCI function
//! is removed, the kernel zaps every mapping of its `resourceN` files, and the next
//! access to one raises SIGBUS, which would end the process. As SPDK's PCI layer does, a
//! SIGBUS handler puts anonymous memory filled with ones over the whole window the
//! faulting address lies in, and the access is retried: reads return all ones, what a
//! removed device reads as on PCIe, so the driver sees it gone through its usual check
//! (CSTS all ones, NVMe Base 2.0 §3.1.3) and writes go nowhere. A fault outside every
//! guarded window goes to the handler that was there before (Rust's stack-overflow one).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Windows guarded at once: a few BARs per controller.
const SLOTS: usize = 64;

struct Window {
    /// 0: the slot is free. Written last when a window is guarded, first when it is not.
    start: AtomicUsize,
    len: AtomicUsize,
}

static WINDOWS: [Window; SLOTS] = [const { Window { start: AtomicUsize::new(0), len: AtomicUsize::new(0) } }; SLOTS];
/// Serialises guarding and unguarding; the handler reads the slots without it.
static SLOT_LOCK: Mutex<()> = Mutex::new(());
static REPLACED: AtomicU64 = AtomicU64::new(0);

struct Previous(libc::sigaction);
// SAFETY: written once before the handler can run, then only read.
unsafe impl Sync for Previous {}
// SAFETY: as above; a plain C struct of a handler address, a mask and flags.
unsafe impl Send for Previous {}
static PREVIOUS: OnceLock<Result<Previous, i32>> = OnceLock::new();

/// Windows replaced by ones since the process started.
pub fn replaced_windows() -> u64 {
    REPLACED.load(Ordering::Relaxed)
}

fn install() -> Result<(), i32> {
    let previous = PREVIOUS.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid empty one; the handler has the
        // SA_SIGINFO signature and only touches atomics and async-signal-safe calls.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &action, &mut old) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            Ok(Previous(old))
        }
    });
    previous.as_ref().map(|_| ()).map_err(|errno| *errno)
}

/// Guards `start..start + len` (a mapped window) until `unguard(start)`. Best effort: with
/// every slot taken or no handler, the window goes unguarded and a removal ends the
/// process as it would have before.
pub(crate) fn guard(start: usize, len: usize) -> bool {
    if install().is_err() || start == 0 || len == 0 {
        return false;
    }
    let _held = SLOT_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for window in &WINDOWS {
        if window.start.load(Ordering::Acquire) == 0 {
            window.len.store(len, Ordering::Release);
            window.start.store(start, Ordering::Release);
            return true;
        }
    }
    false
}

pub(crate) fn unguard(start: usize) {
    let _held = SLOT_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for window in &WINDOWS {
        if start != 0 && window.start.load(Ordering::Acquire) == start {
            window.start.store(0, Ordering::Release);
        }
    }
}

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for window in &WINDOWS {
        let start = window.start.load(Ordering::Acquire);
        let len = window.len.load(Ordering::Acquire);
        if start == 0 || addr < start || addr >= start + len {
            continue;
        }
        // SAFETY: `start..start + len` is a window this process mapped and still owns
        // (it is unguarded before it is unmapped); MAP_FIXED replaces it in place, and
        // mmap and memset are async-signal-safe in practice (SPDK's handler does the same).
        let filled = unsafe {
            let mapped = libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if mapped == libc::MAP_FAILED {
                false
            } else {
                libc::memset(mapped, 0xff, len);
                true
            }
        };
        if filled {
            REPLACED.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    // Not ours: the handler that was there before decides.
    if let Some(Ok(Previous(old))) = PREVIOUS.get() {
        if old.sa_flags & libc::SA_SIGINFO != 0 && old.sa_sigaction > libc::SIG_IGN {
            // SAFETY: the previous SA_SIGINFO handler, called as the kernel would have.
            let previous: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(old.sa_sigaction) };
            previous(signal, info, context);
            return;
        }
    }
    // SAFETY: back to the default action; returning retries the access, which then ends
    // the process with SIGBUS as it would have without this handler.
    unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
}
