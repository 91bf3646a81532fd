//! A safe layer over Ceph's client libraries: a librados cluster connection, an open
//! librbd image, and a queue of asynchronous image I/O whose completions librbd's own
//! threads post to a lock-free queue and an eventfd, so the owning reactor reaps them
//! on its own thread and never waits on librbd.
//!
//! Connecting, opening, resizing and closing block (network round trips to the monitor
//! and the OSDs); they are for control-plane threads. An `Image` closes on a thread of
//! its own when dropped, so dropping the last reference on a reactor does not block it.

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::raw::{c_char, c_void};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use crate::rbd_sys as sys;

/// A librados or librbd call that failed, with the errno it returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// What was being done ("rados_connect", "open image rbd/disk0").
    pub op: String,
    /// The positive errno.
    pub errno: i32,
}

impl Error {
    fn new(op: impl Into<String>, ret: i32) -> Error {
        Error { op: op.into(), errno: ret.saturating_abs() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, std::io::Error::from_raw_os_error(self.errno))
    }
}

impl std::error::Error for Error {}

fn c_string(what: &str, value: &str) -> Result<CString, Error> {
    CString::new(value).map_err(|_| Error::new(format!("{what} holds a NUL byte"), libc::EINVAL))
}

/// How to reach a cluster: SPDK's `bdev_rbd_register_cluster` parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The client id without `client.` (librados's default: `admin`).
    pub user_id: Option<String>,
    /// A ceph.conf; without it librados searches its default places, unless `params`
    /// name the monitors (`mon_host`).
    pub config_file: Option<String>,
    /// A keyring file (cephx).
    pub key_file: Option<String>,
    /// Options set after the file, in order (`mon_host`, `key`, `rados_osd_op_timeout`).
    pub params: Vec<(String, String)>,
}

/// A connected librados cluster handle. librados handles are safe to use from any
/// thread, and every image of the cluster shares this one connection.
pub struct Cluster {
    raw: sys::rados_t,
}

// SAFETY: librados documents its cluster handle as usable from several threads at once;
// nothing here hands out interior state.
unsafe impl Send for Cluster {}
// SAFETY: as above; every use goes through librados's own locking.
unsafe impl Sync for Cluster {}

impl Cluster {
    /// Creates the handle, applies `config` and connects. Blocks for the monitor's
    /// answer (bounded by librados's `client_mount_timeout`, which `params` may set).
    pub fn connect(config: &ClusterConfig) -> Result<Arc<Cluster>, Error> {
        let user = config.user_id.as_deref().map(|id| c_string("user_id", id)).transpose()?;
        let mut raw: sys::rados_t = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; `user` outlives the call (librados copies it).
        let ret = unsafe { sys::rados_create(&mut raw, user.as_ref().map_or(std::ptr::null(), |id| id.as_ptr())) };
        if ret < 0 {
            return Err(Error::new("rados_create", ret));
        }
        // From here `cluster`'s Drop shuts the handle down on every error path.
        let cluster = Cluster { raw };
        match &config.config_file {
            Some(path) => {
                let path = c_string("config_file", path)?;
                // SAFETY: a live, unconnected handle and a NUL-terminated path.
                let ret = unsafe { sys::rados_conf_read_file(cluster.raw, path.as_ptr()) };
                if ret < 0 {
                    return Err(Error::new(format!("read config file {}", path.to_string_lossy()), ret));
                }
            }
            // Without a file or monitors, the default search (/etc/ceph/ceph.conf, ...).
            None if !config.params.iter().any(|(key, _)| is_mon_host(key)) => {
                // SAFETY: a live, unconnected handle; NULL asks for the default search.
                let ret = unsafe { sys::rados_conf_read_file(cluster.raw, std::ptr::null()) };
                if ret < 0 {
                    return Err(Error::new("read the default ceph.conf", ret));
                }
            }
            None => {}
        }
        if let Some(key_file) = &config.key_file {
            cluster.set("keyring", key_file)?;
        }
        for (key, value) in &config.params {
            cluster.set(key, value)?;
        }
        // SAFETY: a live, configured, unconnected handle.
        let ret = unsafe { sys::rados_connect(cluster.raw) };
        if ret < 0 {
            return Err(Error::new("rados_connect", ret));
        }
        Ok(Arc::new(cluster))
    }

    fn set(&self, key: &str, value: &str) -> Result<(), Error> {
        let ckey = c_string("config key", key)?;
        let cvalue = c_string("config value", value)?;
        // SAFETY: a live, unconnected handle; both strings outlive the call.
        let ret = unsafe { sys::rados_conf_set(self.raw, ckey.as_ptr(), cvalue.as_ptr()) };
        if ret < 0 {
            return Err(Error::new(format!("config {key}={value}"), ret));
        }
        Ok(())
    }
}

fn is_mon_host(key: &str) -> bool {
    matches!(key.replace(['-', ' '], "_").as_str(), "mon_host" | "mon_addr")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: the handle is live and, this being the last reference, no image or
        // ioctx of it remains (each holds an `Arc<Cluster>`).
        unsafe { sys::rados_shutdown(self.raw) };
    }
}

/// What librbd reports about an open image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageFacts {
    pub size_bytes: u64,
    /// `RBD_FEATURE_*` bits.
    pub features: u64,
}

/// `RBD_FEATURE_EXCLUSIVE_LOCK`.
pub const FEATURE_EXCLUSIVE_LOCK: u64 = sys::RBD_FEATURE_EXCLUSIVE_LOCK as u64;

/// An open RBD image. librbd's image handle is thread-safe.
pub struct Image {
    raw: sys::rbd_image_t,
    ioctx: sys::rados_ioctx_t,
    cluster: Option<Arc<Cluster>>,
    /// The header watch `watch_updates` set up, if any.
    watch: std::sync::Mutex<Option<UpdateWatch>>,
    /// "pool/image", for errors.
    spec: String,
}

// SAFETY: librbd's image handle may be used from any thread; librbd serialises inside.
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

/// What is called when an image's header changes (a resize by any client).
type UpdateCallback = Box<dyn Fn() + Send + Sync>;

/// A registered header watch: librbd's handle and the callback it was given, which
/// lives until the watch is gone.
struct UpdateWatch {
    handle: u64,
    callback: *mut UpdateCallback,
}

/// librbd's trampoline into an `UpdateCallback`; runs on one of librbd's threads.
extern "C" fn on_image_update(arg: *mut c_void) {
    // SAFETY: `arg` is the `*mut UpdateCallback` `watch_updates` registered; it is freed
    // only after rbd_update_unwatch returned, which waits for running callbacks.
    let callback = unsafe { &*(arg as *const UpdateCallback) };
    callback();
}

/// A raw image and context on their way to be closed on another thread.
struct Closing {
    raw: sys::rbd_image_t,
    ioctx: sys::rados_ioctx_t,
    cluster: Option<Arc<Cluster>>,
    watch: Option<UpdateWatch>,
}

// SAFETY: moved whole to the closing thread, used there alone.
unsafe impl Send for Closing {}

impl Closing {
    fn close(self) {
        if let Some(watch) = self.watch {
            // SAFETY: the watch was registered on this live image; unwatching waits for
            // a callback already running, so the callback can be freed afterwards.
            let ret = unsafe { sys::rbd_update_unwatch(self.raw, watch.handle) };
            if ret < 0 {
                // Still registered: the callback must outlive the image, so it leaks.
                eprintln!("rbd: rbd_update_unwatch failed ({}); its callback is leaked", strerror(-ret));
            } else {
                // SAFETY: made by Box::into_raw in watch_updates, and librbd holds it no more.
                drop(unsafe { Box::from_raw(watch.callback) });
            }
        }
        // SAFETY: the image and ioctx are live and nothing else refers to them any more
        // (the `Image` that owned them is gone); rbd_close waits for librbd's in-flight
        // I/O, whose buffers their owners keep (`AioQueue` never frees an I/O in flight).
        unsafe {
            sys::rbd_close(self.raw);
            sys::rados_ioctx_destroy(self.ioctx);
        }
        drop(self.cluster);
    }
}

impl Image {
    /// Opens `pool/name` (the head, no snapshot). Blocks on the OSDs.
    pub fn open(cluster: &Arc<Cluster>, pool: &str, name: &str) -> Result<Image, Error> {
        let spec = format!("{pool}/{name}");
        let cpool = c_string("pool_name", pool)?;
        let cname = c_string("rbd_name", name)?;
        let mut ioctx: sys::rados_ioctx_t = std::ptr::null_mut();
        // SAFETY: a connected cluster, a NUL-terminated pool name, a valid out-pointer.
        let ret = unsafe { sys::rados_ioctx_create(cluster.raw, cpool.as_ptr(), &mut ioctx) };
        if ret < 0 {
            return Err(Error::new(format!("open pool {pool}"), ret));
        }
        let mut raw: sys::rbd_image_t = std::ptr::null_mut();
        // SAFETY: a live ioctx, a NUL-terminated name, a valid out-pointer, no snapshot.
        let ret = unsafe { sys::rbd_open(ioctx, cname.as_ptr(), &mut raw, std::ptr::null()) };
        if ret < 0 {
            // SAFETY: the ioctx is live and has no image.
            unsafe { sys::rados_ioctx_destroy(ioctx) };
            return Err(Error::new(format!("open image {spec}"), ret));
        }
        Ok(Image { raw, ioctx, cluster: Some(cluster.clone()), spec, watch: std::sync::Mutex::new(None) })
    }

    /// Size and features as librbd knows them now (it refreshes after a resize
    /// elsewhere once it notices the header change).
    pub fn facts(&self) -> Result<ImageFacts, Error> {
        let mut size_bytes = 0u64;
        let mut features = 0u64;
        // SAFETY: a live image and valid out-pointers.
        let ret = unsafe { sys::rbd_get_size(self.raw, &mut size_bytes) };
        if ret < 0 {
            return Err(Error::new(format!("size of {}", self.spec), ret));
        }
        // SAFETY: as above.
        let ret = unsafe { sys::rbd_get_features(self.raw, &mut features) };
        if ret < 0 {
            return Err(Error::new(format!("features of {}", self.spec), ret));
        }
        Ok(ImageFacts { size_bytes, features })
    }

    /// Grows or shrinks the image. Blocks.
    pub fn resize(&self, size_bytes: u64) -> Result<(), Error> {
        // SAFETY: a live image.
        let ret = unsafe { sys::rbd_resize(self.raw, size_bytes) };
        if ret < 0 {
            return Err(Error::new(format!("resize {}", self.spec), ret));
        }
        Ok(())
    }

    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Calls `callback` on a librbd thread whenever the image's header changes, as it
    /// does when any client resizes it; `facts` then returns the new size. One watch
    /// per image: a second call replaces nothing and fails with EEXIST.
    pub fn watch_updates(&self, callback: impl Fn() + Send + Sync + 'static) -> Result<(), Error> {
        let mut watch = self.watch.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if watch.is_some() {
            return Err(Error::new(format!("watch {}", self.spec), -libc::EEXIST));
        }
        let boxed: UpdateCallback = Box::new(callback);
        let callback = Box::into_raw(Box::new(boxed));
        let mut handle = 0u64;
        // SAFETY: a live image, a valid out-pointer, and a callback pointer that stays
        // valid until the watch is removed in `Closing::close`.
        let ret = unsafe { sys::rbd_update_watch(self.raw, &mut handle, Some(on_image_update), callback.cast()) };
        if ret < 0 {
            // SAFETY: librbd refused it, so it holds no copy of the pointer.
            drop(unsafe { Box::from_raw(callback) });
            return Err(Error::new(format!("watch {}", self.spec), ret));
        }
        *watch = Some(UpdateWatch { handle, callback });
        Ok(())
    }
}

/// Image closes still running on their own threads, so a process can let them finish
/// before it exits (`wait_for_closes`): an exit in the middle leaves the image's watch
/// and exclusive lock to time out at the OSDs, and every other client of the image waits
/// for that.
static CLOSING: (std::sync::Mutex<usize>, std::sync::Condvar) = (std::sync::Mutex::new(0), std::sync::Condvar::new());

fn closing_count() -> std::sync::MutexGuard<'static, usize> {
    CLOSING.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn close_done() {
    *closing_count() -= 1;
    CLOSING.1.notify_all();
}

/// Waits up to `timeout` for the images dropped so far to be closed; returns how many
/// are still closing then.
pub fn wait_for_closes(timeout: std::time::Duration) -> usize {
    let guard = closing_count();
    let (guard, _) = CLOSING
        .1
        .wait_timeout_while(guard, timeout, |pending| *pending > 0)
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *guard
}

impl Drop for Image {
    fn drop(&mut self) {
        let watch = self.watch.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        let closing = Closing { raw: self.raw, ioctx: self.ioctx, cluster: self.cluster.take(), watch };
        // rbd_close waits for the OSDs: never on the dropping thread, which may be a reactor.
        *closing_count() += 1;
        let spawned = std::thread::Builder::new().name("rbd-close".into()).spawn(move || {
            closing.close();
            close_done();
        });
        if let Err(err) = spawned {
            close_done();
            // The closure went with the error, unclosed: the handle leaks (librbd's watch
            // on it times out at the OSDs) rather than blocking a reactor here.
            eprintln!("rbd: no thread to close {} ({err}); its handle is leaked", self.spec);
        }
    }
}

/// One asynchronous image operation. Offsets and lengths are in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AioOp {
    Read { offset: u64 },
    Write { offset: u64 },
    Flush,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64 },
}

/// Why `AioQueue::submit` gave the owner back.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Every slot is in flight.
    Full,
    /// librbd refused the call at once (negative errno).
    Errno(i32),
}

/// What a completion callback finds through its argument: where to post, and which slot.
struct SlotArg {
    shared: *const Shared,
    index: u32,
}

/// What librbd's threads and the owning thread share.
struct Shared {
    /// (slot, librbd's return value), posted by librbd's threads.
    done: ArrayQueue<(u32, i64)>,
    eventfd: OwnedFd,
    args: Box<[SlotArg]>,
}

// SAFETY: `SlotArg::shared` points at the `Shared` that holds the argument itself and
// is only read; the queue is lock-free and the eventfd is written with write(2).
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

struct Slot<T> {
    owner: Option<T>,
    completion: sys::rbd_completion_t,
    iov: Vec<libc::iovec>,
}

/// One thread's asynchronous I/O on one image: `depth` slots, each holding the owner of
/// an in-flight operation's memory until librbd completes it. librbd's callback posts the
/// slot to a lock-free queue and bumps an eventfd; the owning thread reaps with
/// [`AioQueue::reap`]. Nothing allocates per I/O here once the slots' vectors have grown
/// to the longest I/O vector seen (librbd allocates its completion object itself).
pub struct AioQueue<T> {
    image: Arc<Image>,
    shared: Arc<Shared>,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
}

extern "C" fn on_complete(completion: sys::rbd_completion_t, arg: *mut c_void) {
    // SAFETY: `arg` is the `SlotArg` of the submission, inside a `Shared` kept alive by
    // the strong count `submit` added for it; `completion` is live until the owning
    // thread releases it, after it has seen this post.
    unsafe {
        let slot = &*(arg as *const SlotArg);
        let shared = slot.shared;
        let ret = sys::rbd_aio_get_return_value(completion) as i64;
        // At most `depth` operations are in flight, and the queue holds `depth`.
        let _ = (*shared).done.push((slot.index, ret));
        let one: u64 = 1;
        // A full counter (never, at 2^64-2) or EAGAIN would still leave it readable.
        libc::write((*shared).eventfd.as_raw_fd(), (&one as *const u64).cast::<c_void>(), 8);
        Arc::decrement_strong_count(shared);
    }
}

impl<T> AioQueue<T> {
    /// A queue of `depth` slots on `image`, with its eventfd (non-blocking).
    pub fn new(image: Arc<Image>, depth: u32) -> std::io::Result<AioQueue<T>> {
        assert!(depth > 0, "an AioQueue needs at least one slot");
        // SAFETY: eventfd(2) with valid flags; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let shared = Arc::new_cyclic(|weak| Shared {
            done: ArrayQueue::new(depth as usize),
            eventfd,
            args: (0..depth).map(|index| SlotArg { shared: weak.as_ptr(), index }).collect(),
        });
        let slots =
            (0..depth).map(|_| Slot { owner: None, completion: std::ptr::null_mut(), iov: Vec::new() }).collect();
        Ok(AioQueue { image, shared, slots, free: (0..depth).rev().collect() })
    }

    /// Readable while completions wait to be reaped (for the reactor's epoll).
    pub fn eventfd(&self) -> BorrowedFd<'_> {
        self.shared.eventfd.as_fd()
    }

    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn has_completions(&self) -> bool {
        !self.shared.done.is_empty()
    }

    /// Empties the eventfd's counter (before reporting idle).
    pub fn clear_eventfd(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer from our own non-blocking eventfd.
        unsafe { libc::read(self.shared.eventfd.as_raw_fd(), count.as_mut_ptr().cast::<c_void>(), 8) };
    }

    /// Starts `op`. For reads and writes, `segments` gives the (address, length) pieces
    /// of the data; they must lie in memory `owner` owns, which the queue keeps, unmoved
    /// and untouched, until the completion is reaped (so librbd's threads may read or
    /// write it until then). On refusal the owner comes back.
    pub fn submit(&mut self, op: AioOp, owner: T, segments: &[(usize, usize)]) -> Result<(), (Refused, T)> {
        let Some(index) = self.free.pop() else { return Err((Refused::Full, owner)) };
        let slot = &mut self.slots[index as usize];
        slot.iov.clear();
        slot.iov
            .extend(segments.iter().map(|&(addr, len)| libc::iovec { iov_base: addr as *mut c_void, iov_len: len }));
        let arg = &self.shared.args[index as usize] as *const SlotArg as *mut c_void;
        let mut completion: sys::rbd_completion_t = std::ptr::null_mut();
        // SAFETY: `arg` stays valid while the strong count taken below is held; the
        // callback matches librbd's `rbd_callback_t`.
        let ret = unsafe { sys::rbd_aio_create_completion(arg, Some(on_complete), &mut completion) };
        if ret < 0 {
            self.free.push(index);
            return Err((Refused::Errno(-ret), owner));
        }
        // The callback gives this count back.
        // SAFETY: `shared` is a live Arc; the callback decrements exactly once.
        unsafe { Arc::increment_strong_count(Arc::as_ptr(&self.shared)) };
        let image = self.image.raw;
        let iov = slot.iov.as_ptr().cast::<sys::iovec>();
        let iovcnt = slot.iov.len() as i32;
        // SAFETY: a live image and completion; the I/O vector lives in the slot and the
        // memory it names in `owner`, both kept until the completion is reaped.
        let ret = unsafe {
            match op {
                AioOp::Read { offset } => sys::rbd_aio_readv(image, iov, iovcnt, offset, completion),
                AioOp::Write { offset } => sys::rbd_aio_writev(image, iov, iovcnt, offset, completion),
                AioOp::Flush => sys::rbd_aio_flush(image, completion),
                AioOp::Discard { offset, len } => sys::rbd_aio_discard(image, offset, len, completion),
                AioOp::WriteZeroes { offset, len } => {
                    sys::rbd_aio_write_zeroes(image, offset, len as usize, completion, 0, 0)
                }
            }
        };
        if ret < 0 {
            // Refused before dispatch: librbd will not call back.
            // SAFETY: the completion is ours and was never handed to librbd's I/O path;
            // the strong count taken above is given back here instead of by the callback.
            unsafe {
                sys::rbd_aio_release(completion);
                Arc::decrement_strong_count(Arc::as_ptr(&self.shared));
            }
            self.free.push(index);
            return Err((Refused::Errno(-ret), owner));
        }
        slot.completion = completion;
        slot.owner = Some(owner);
        Ok(())
    }

    /// Hands every completed operation's owner and librbd's return value (bytes or a
    /// negative errno) to `done`, up to `max`; returns how many.
    pub fn reap(&mut self, max: usize, mut done: impl FnMut(T, i64)) -> usize {
        let mut reaped = 0;
        while reaped < max {
            let Some((index, ret)) = self.shared.done.pop() else { break };
            let slot = &mut self.slots[index as usize];
            // SAFETY: librbd has called back for this completion and will not touch it again.
            unsafe { sys::rbd_aio_release(slot.completion) };
            slot.completion = std::ptr::null_mut();
            let owner = slot.owner.take();
            self.free.push(index);
            reaped += 1;
            match owner {
                Some(owner) => done(owner, ret),
                None => debug_assert!(false, "a completion for slot {index}, which held nothing"),
            }
        }
        reaped
    }
}

impl<T> Drop for AioQueue<T> {
    fn drop(&mut self) {
        // Operations still in flight may yet write into their owners' memory: those
        // owners are leaked rather than freed under librbd. Their callbacks still find
        // `Shared`, kept alive by the counts they hold.
        for slot in &mut self.slots {
            if let Some(owner) = slot.owner.take() {
                std::mem::forget(owner);
            }
        }
    }
}

/// The text of an errno, for logs.
pub fn strerror(errno: i32) -> String {
    // SAFETY: strerror returns a pointer to a static or thread-local NUL-terminated string.
    unsafe { CStr::from_ptr(libc::strerror(errno) as *const c_char) }.to_string_lossy().into_owned()
}
