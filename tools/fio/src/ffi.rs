//! The extern "C" functions `shim.c` calls. Each takes plain values and the engine as an
//! opaque pointer (`Box<Box<dyn Engine>>`, created by a setup function and freed by
//! `peerless_cleanup`). Panics never cross into fio: each entry catches them.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::bdev::BdevEngine;
use crate::engine::{Engine, Event as EngineEvent, Op, Queued, Request};
use crate::iou::IoBuf;
use crate::nvmf::NvmfEngine;

/// `struct peerless_event` in shim.c.
#[repr(C)]
pub struct Event {
    pub io_u: *mut c_void,
    pub error: i32,
}

/// `peerless_queue` results besides a negative errno (shim.c's PEERLESS_QUEUED/BUSY).
const QUEUED: c_int = 0;
const BUSY: c_int = 1;

/// What the opaque pointer holds: the engine, and its event list kept across calls so
/// getevents allocates nothing.
struct Handle {
    engine: Box<dyn Engine>,
    events: Vec<EngineEvent>,
}

/// Borrows a C string option; None for NULL.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string valid for the call.
unsafe fn opt_str<'a>(text: *const c_char) -> Option<&'a str> {
    // SAFETY: per this function's contract.
    (!text.is_null()).then(|| unsafe { CStr::from_ptr(text) }.to_str().unwrap_or(""))
}

/// Writes `message` into fio's error buffer, cut to fit and NUL-terminated.
///
/// # Safety
/// `err` is NULL or valid for writes of `len` bytes.
unsafe fn put_err(err: *mut c_char, len: usize, message: &str) {
    if err.is_null() || len == 0 {
        return;
    }
    let bytes = message.as_bytes();
    let count = bytes.len().min(len - 1);
    // SAFETY: `err` holds `len` bytes and `count + 1 <= len`.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), err.cast::<u8>(), count);
        *err.add(count) = 0;
    }
}

fn guarded<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
        eprintln!("peerless-fio: internal panic; failing the operation");
        fallback
    })
}

/// # Safety
/// `engine` came from a setup function and was not cleaned up; fio calls one op at a
/// time per thread_data, so the engine is not aliased.
unsafe fn engine<'a>(engine: *mut c_void) -> &'a mut Handle {
    assert!(!engine.is_null(), "a NULL engine");
    // SAFETY: per this function's contract.
    unsafe { &mut *engine.cast::<Handle>() }
}

fn into_raw(engine: Box<dyn Engine>) -> *mut c_void {
    Box::into_raw(Box::new(Handle { engine, events: Vec::new() })).cast()
}

/// # Safety
/// Strings are NULL or NUL-terminated; `err` holds `err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn peerless_nvmf_setup(
    hostnqn: *const c_char,
    digest_enable: *const c_char,
    dhchap_key: *const c_char,
    dhchap_ctrlr_key: *const c_char,
    psk: *const c_char,
    err: *mut c_char,
    err_len: usize,
) -> *mut c_void {
    // SAFETY: the caller's contract covers the strings.
    let (hostnqn, digest) = unsafe { (opt_str(hostnqn), opt_str(digest_enable)) };
    // SAFETY: as above.
    let (key, ctrlr_key) = unsafe { (opt_str(dhchap_key), opt_str(dhchap_ctrlr_key)) };
    // SAFETY: as above.
    let psk = unsafe { opt_str(psk) };
    match guarded(Err("panic".into()), || NvmfEngine::new(hostnqn, digest, key, ctrlr_key, psk)) {
        Ok(engine) => into_raw(Box::new(engine)),
        Err(message) => {
            // SAFETY: the caller's contract covers `err`.
            unsafe { put_err(err, err_len, &message) };
            std::ptr::null_mut()
        }
    }
}

/// # Safety
/// As `peerless_nvmf_setup`; `json_conf` is not NULL.
#[no_mangle]
pub unsafe extern "C" fn peerless_bdev_setup(
    json_conf: *const c_char,
    err: *mut c_char,
    err_len: usize,
) -> *mut c_void {
    // SAFETY: the caller's contract covers the string.
    let conf = unsafe { opt_str(json_conf) }.unwrap_or("");
    match guarded(Err("panic".into()), || BdevEngine::new(conf)) {
        Ok(engine) => into_raw(Box::new(engine)),
        Err(message) => {
            // SAFETY: the caller's contract covers `err`.
            unsafe { put_err(err, err_len, &message) };
            std::ptr::null_mut()
        }
    }
}

/// # Safety
/// `engine` as in `engine()`; `name` NUL-terminated; `size` writable; `err` as above.
#[no_mangle]
pub unsafe extern "C" fn peerless_add_file(
    engine_ptr: *mut c_void,
    fileno: c_uint,
    name: *const c_char,
    size: *mut u64,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    // SAFETY: the caller's contract.
    let (engine, name) = unsafe { (engine(engine_ptr), opt_str(name).unwrap_or("")) };
    match guarded(Err("panic".into()), || engine.engine.add_file(fileno, name)) {
        Ok(bytes) => {
            // SAFETY: `size` is writable per the contract.
            unsafe { *size = bytes };
            0
        }
        Err(message) => {
            // SAFETY: the caller's contract covers `err`.
            unsafe { put_err(err, err_len, &message) };
            -1
        }
    }
}

/// # Safety
/// As `peerless_add_file`.
#[no_mangle]
pub unsafe extern "C" fn peerless_open_file(
    engine_ptr: *mut c_void,
    fileno: c_uint,
    depth: c_uint,
    max_bs: u64,
    err: *mut c_char,
    err_len: usize,
) -> c_int {
    // SAFETY: the caller's contract.
    let engine = unsafe { engine(engine_ptr) };
    match guarded(Err("panic".into()), || engine.engine.open_file(fileno, depth, max_bs)) {
        Ok(()) => 0,
        Err(message) => {
            // SAFETY: the caller's contract covers `err`.
            unsafe { put_err(err, err_len, &message) };
            -1
        }
    }
}

/// # Safety
/// `engine` as in `engine()`.
#[no_mangle]
pub unsafe extern "C" fn peerless_close_file(engine_ptr: *mut c_void, fileno: c_uint) {
    // SAFETY: the caller's contract.
    let engine = unsafe { engine(engine_ptr) };
    guarded((), || engine.engine.close_file(fileno));
}

/// Returns QUEUED, BUSY or a negative errno.
///
/// # Safety
/// `engine` as in `engine()`; `buf` valid for `len` bytes until `io_u` comes back from
/// `peerless_getevents` (fio's io_u contract).
#[no_mangle]
pub unsafe extern "C" fn peerless_queue(
    engine_ptr: *mut c_void,
    fileno: c_uint,
    op: c_int,
    offset: u64,
    len: u64,
    buf: *mut c_void,
    io_u: *mut c_void,
) -> c_int {
    // SAFETY: the caller's contract.
    let engine = unsafe { engine(engine_ptr) };
    let (Some(op), Ok(len)) = (Op::from_raw(op), usize::try_from(len)) else { return -libc::EINVAL };
    let buf = match op {
        Op::Read | Op::Write if buf.is_null() => return -libc::EINVAL,
        // SAFETY: the caller lends `buf` for `len` bytes until the io_u completes.
        Op::Read | Op::Write => Some(unsafe { IoBuf::new(buf.cast(), len) }),
        // Trims and flushes carry no data.
        Op::Trim | Op::Flush => None,
    };
    let request = Request { op, offset, len, buf, token: io_u as usize };
    match guarded(Queued::Failed(libc::EIO), || engine.engine.queue(fileno, request)) {
        Queued::Queued => QUEUED,
        Queued::Busy(_) => BUSY,
        Queued::Failed(errno) => -errno,
    }
}

/// Fills `out` (room for `max`) and returns how many; waits per fio's getevents.
///
/// # Safety
/// `engine` as in `engine()`; `out` valid for writes of `max` events.
#[no_mangle]
pub unsafe extern "C" fn peerless_getevents(
    engine_ptr: *mut c_void,
    min: c_uint,
    max: c_uint,
    timeout_ns: i64,
    out: *mut Event,
) -> c_int {
    // SAFETY: the caller's contract.
    let engine = unsafe { engine(engine_ptr) };
    let (min, max) = (min as usize, max as usize);
    let timeout = u64::try_from(timeout_ns).ok().map(Duration::from_nanos);
    let Handle { engine, events } = engine;
    events.clear();
    guarded((), || engine.getevents(min.min(max), max, timeout, events));
    assert!(events.len() <= max, "{} events for room of {max}", events.len());
    for (index, event) in events.iter().enumerate() {
        // SAFETY: `out` holds `max` events and `index < events.len() <= max`.
        unsafe { out.add(index).write(Event { io_u: event.token as *mut c_void, error: event.error }) };
    }
    events.len() as c_int
}

/// # Safety
/// `engine` came from a setup function; it is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn peerless_cleanup(engine_ptr: *mut c_void) {
    if engine_ptr.is_null() {
        return;
    }
    // SAFETY: made by `into_raw` and, per the contract, never used again.
    let engine = unsafe { Box::from_raw(engine_ptr.cast::<Handle>()) };
    guarded((), || drop(engine));
}
