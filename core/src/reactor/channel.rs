//! io devices and io channels, SPDK's per-thread context of a shared object: a device
//! is registered once; each thread that uses it gets its own channel, created on first
//! get, shared by reference count on that thread, destroyed on that same thread when the
//! last reference drops. A channel is `!Send` by construction, so no other thread can
//! ever touch or drop it. A channel's own destroy step is its value's `Drop`; the
//! device's is the callback given to `IoDevice::unregister`, run once every channel of
//! it is gone (SPDK's `spdk_io_device_unregister`).

use std::any::Any;
use std::cell::{Ref, RefCell, RefMut};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::poller::PollStatus;
use super::thread::{ThreadCtx, ThreadHandle};

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

/// How often an unregistered device looks for its last channel to be gone. Control
/// plane only, and only while an unregistration waits.
pub const UNREGISTER_POLL_US: u64 = 1_000;

type CreateFn<T> = dyn Fn(&mut ThreadCtx) -> T + Send + Sync;

struct DeviceInner<T> {
    id: u64,
    name: String,
    create: Box<CreateFn<T>>,
    /// Threads that currently hold a channel; control plane only (channel create and
    /// destroy, `for_each_channel`), never touched per I/O.
    holders: Mutex<Vec<ThreadHandle>>,
    unregistered: AtomicBool,
}

/// A shared object with a per-thread context of type `T`.
pub struct IoDevice<T: 'static> {
    inner: Arc<DeviceInner<T>>,
}

impl<T: 'static> Clone for IoDevice<T> {
    fn clone(&self) -> Self {
        IoDevice { inner: self.inner.clone() }
    }
}

impl<T: 'static> IoDevice<T> {
    /// `create` builds a thread's channel context; it runs on that thread.
    pub fn new(name: &str, create: impl Fn(&mut ThreadCtx) -> T + Send + Sync + 'static) -> Self {
        let id = NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed);
        IoDevice {
            inner: Arc::new(DeviceInner {
                id,
                name: name.to_string(),
                create: Box::new(create),
                holders: Mutex::new(Vec::new()),
                unregistered: AtomicBool::new(false),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Unregisters the device: `done` runs on the calling thread once no thread holds a
    /// channel of it any more (at the earliest on a later poll, never inline). Users
    /// are expected to have stopped getting channels; one got after this delays `done`
    /// until it is released too. If the calling thread exits first, `done` is dropped
    /// unrun with the thread's other pollers.
    pub fn unregister(&self, ctx: &mut ThreadCtx, done: impl FnOnce(&mut ThreadCtx) + 'static) {
        self.inner.unregistered.store(true, Ordering::Release);
        let inner = self.inner.clone();
        let mut done = Some(done);
        let name = format!("io_device_unregister_{}", self.inner.name);
        ctx.poller(&name, UNREGISTER_POLL_US, move |ctx| {
            if !inner.holders.lock().is_empty() {
                return PollStatus::Idle;
            }
            if let Some(done) = done.take() {
                done(ctx);
            }
            PollStatus::Done
        })
        .detach();
    }

    pub fn is_unregistered(&self) -> bool {
        self.inner.unregistered.load(Ordering::Acquire)
    }

    /// Threads holding a channel of this device right now.
    pub fn holders(&self) -> Vec<ThreadHandle> {
        self.inner.holders.lock().clone()
    }

    /// Visits every thread that holds a channel of this device, one after another, with
    /// that thread's channel; then runs `done` back on the calling thread.
    pub fn for_each_channel(
        &self,
        ctx: &mut ThreadCtx,
        visit: impl Fn(&mut ThreadCtx, &mut T) + Send + Sync + 'static,
        done: impl FnOnce(&mut ThreadCtx) + Send + 'static,
    ) {
        let device = SendableDevice(self.inner.clone());
        super::app::walk_threads(
            ctx,
            self.holders(),
            move |ctx| {
                // A holder whose channel went since the snapshot is passed by.
                if let Some(channel) = lookup::<T>(ctx, device.0.id) {
                    visit(ctx, &mut channel.borrow_mut());
                }
            },
            done,
        );
    }
}

/// An `IoDevice` moved between threads inside a walk; `DeviceInner` is Send + Sync
/// because its only non-Sync state sits behind a mutex.
struct SendableDevice<T>(Arc<DeviceInner<T>>);

struct ChannelInner<T: 'static> {
    value: RefCell<T>,
    device: Arc<DeviceInner<T>>,
    thread: ThreadHandle,
}

impl<T: 'static> Drop for ChannelInner<T> {
    fn drop(&mut self) {
        let mut holders = self.device.holders.lock();
        if let Some(position) = holders.iter().position(|holder| *holder == self.thread) {
            holders.swap_remove(position);
        }
    }
}

/// A thread's reference to its channel of a device.
pub struct IoChannel<T: 'static> {
    inner: Rc<ChannelInner<T>>,
}

impl<T: 'static> Clone for IoChannel<T> {
    fn clone(&self) -> Self {
        IoChannel { inner: self.inner.clone() }
    }
}

impl<T: 'static> IoChannel<T> {
    pub fn borrow(&self) -> Ref<'_, T> {
        self.inner.value.borrow()
    }

    pub fn borrow_mut(&self) -> RefMut<'_, T> {
        self.inner.value.borrow_mut()
    }

    pub fn device_name(&self) -> &str {
        &self.inner.device.name
    }

    /// References to this channel on this thread.
    pub fn ref_count(&self) -> usize {
        Rc::strong_count(&self.inner)
    }
}

/// A reference that does not keep the channel alive: a poller that serves a channel
/// holds one, so the channel still dies when its last user lets go.
pub struct WeakIoChannel<T: 'static> {
    inner: std::rc::Weak<ChannelInner<T>>,
}

impl<T: 'static> IoChannel<T> {
    pub fn downgrade(&self) -> WeakIoChannel<T> {
        WeakIoChannel { inner: Rc::downgrade(&self.inner) }
    }
}

impl<T: 'static> WeakIoChannel<T> {
    pub fn upgrade(&self) -> Option<IoChannel<T>> {
        self.inner.upgrade().map(|inner| IoChannel { inner })
    }
}

fn lookup<T: 'static>(ctx: &ThreadCtx, device_id: u64) -> Option<IoChannel<T>> {
    let any = ctx.channels.get(&device_id)?.upgrade()?;
    any.downcast::<ChannelInner<T>>().ok().map(|inner| IoChannel { inner })
}

impl ThreadCtx {
    /// This thread's channel of `device`, created on first use.
    pub fn get_io_channel<T: 'static>(&mut self, device: &IoDevice<T>) -> IoChannel<T> {
        if let Some(channel) = lookup::<T>(self, device.inner.id) {
            return channel;
        }
        if device.is_unregistered() {
            crate::log_warn!("io device '{}': a channel was got after the device was unregistered", device.name());
        }
        let value = (device.inner.create)(self);
        let inner =
            Rc::new(ChannelInner { value: RefCell::new(value), device: device.inner.clone(), thread: self.handle() });
        device.inner.holders.lock().push(self.handle());
        let erased: Rc<dyn Any> = inner.clone();
        self.channels.insert(device.inner.id, Rc::downgrade(&erased));
        IoChannel { inner }
    }

    /// Live io channels on this thread. Entries of destroyed channels are swept here.
    pub fn io_channel_count(&mut self) -> usize {
        self.channels.retain(|_, weak| weak.strong_count() > 0);
        self.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::super::tests::{run_on, start, stop, WAIT};
    use super::*;

    thread_local! {
        static HELD: RefCell<Vec<IoChannel<u32>>> = const { RefCell::new(Vec::new()) };
    }

    #[test]
    fn unregister_runs_done_on_the_caller_once_the_last_channel_is_gone() {
        let app = start("0x3", true);
        let worker = app.handle().spawn_thread("worker", Some(1)).unwrap();
        let caller = app.handle().app_thread();
        let device = IoDevice::new("unregistered", |_| 7u32);
        let held = device.clone();
        run_on(&worker, move |ctx| HELD.with(|channels| channels.borrow_mut().push(ctx.get_io_channel(&held))));

        let (tx, rx) = mpsc::channel();
        let unregistered = device.clone();
        let caller_id = caller.id();
        run_on(&caller, move |ctx| {
            unregistered.unregister(ctx, move |ctx| tx.send(ctx.id()).unwrap());
        });
        assert!(device.is_unregistered());
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "done ran while a channel was still held");

        run_on(&worker, |_| {
            let channels = HELD.with(|channels| std::mem::take(&mut *channels.borrow_mut()));
            drop(channels);
        });
        assert_eq!(rx.recv_timeout(WAIT).expect("done never ran"), caller_id, "done runs on the unregistering thread");
        assert!(rx.recv_timeout(Duration::from_millis(20)).is_err(), "done ran twice");
        let left = run_on(&caller, |ctx| ctx.poller_stats());
        assert!(left.iter().all(|stat| !stat.name.starts_with("io_device_unregister")), "{left:?}");
        stop(app);
    }

    #[test]
    fn unregister_without_channels_completes_on_a_later_poll() {
        let app = start("0x1", true);
        let caller = app.handle().app_thread();
        let device = IoDevice::new("never_used", |_| ());
        let (tx, rx) = mpsc::channel();
        let ran_inline = run_on(&caller, move |ctx| {
            let ran = std::rc::Rc::new(std::cell::Cell::new(false));
            let flag = ran.clone();
            device.unregister(ctx, move |_| {
                flag.set(true);
                tx.send(()).unwrap();
            });
            ran.get()
        });
        assert!(!ran_inline, "done must not run inside unregister");
        rx.recv_timeout(WAIT).expect("done never ran");
        stop(app);
    }
}
