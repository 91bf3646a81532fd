//! io devices and io channels, SPDK's per-thread context of a shared object: a device
//! is registered once; each thread that uses it gets its own channel, created on first
//! get, shared by reference count on that thread, destroyed on that same thread when the
//! last reference drops. A channel is `!Send` by construction, so no other thread can
//! ever touch or drop it.

use std::any::Any;
use std::cell::{Ref, RefCell, RefMut};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::thread::{ThreadCtx, ThreadHandle};

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

type CreateFn<T> = dyn Fn(&mut ThreadCtx) -> T + Send + Sync;

struct DeviceInner<T> {
    id: u64,
    name: String,
    create: Box<CreateFn<T>>,
    /// Threads that currently hold a channel; control plane only (channel create and
    /// destroy, `for_each_channel`), never touched per I/O.
    holders: Mutex<Vec<ThreadHandle>>,
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
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
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
