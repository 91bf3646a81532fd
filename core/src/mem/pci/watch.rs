//! Notifications of Host memory coming and going, the way `spdk_mem_register` notifies
//! its memory maps: a VFIO container maps each region into the IOMMU, a uio driver's
//! [`super::PhysTable`] records its physical pages.
//!
//! Ordering, which is the whole contract:
//! - A region is announced after it entered the registry and before `register` returns,
//!   so before any buffer carved from it can be handed out. If a listener refuses it,
//!   the listeners that took it are told it is gone, it leaves the registry and the
//!   allocation fails with the listener's error.
//! - A region is withdrawn after it left the registry and before its memory is unmapped
//!   (owners drop their registration first, see `dma::Backing`).
//! - Announcements, withdrawals and [`watch_host_memory`] are serialised by one mutex,
//!   held while listeners run (not the registry's lock: listeners may look things up),
//!   so a new listener sees every region exactly once: either in its initial replay or
//!   as a later announcement, never both, never neither.
//! - A listener must not allocate or free registered memory, nor drop a
//!   [`HostMemWatch`], from its callbacks: that would wait on the mutex it runs under.
//!   The attempt panics with that explanation instead of deadlocking.
//!
//! The tests live in `core/tests/host_memory.rs`: listeners are process-wide, and a
//! process of its own keeps them away from the DPDK tests' EAL memory.

use std::cell::Cell;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use super::super::Result;

/// Called for every Host region in `core::mem`'s registry: the ones already registered
/// when added, and each one registered or unregistered later.
pub trait HostMemListener: Send + Sync {
    /// `start..start + len` is registered Host memory, mapped and resident. An error
    /// refuses the region: its registration (the allocation) fails with this error.
    fn host_region_added(&self, start: usize, len: usize) -> Result<()>;
    /// The region is leaving; it is still mapped during the call.
    fn host_region_removed(&self, start: usize, len: usize);
}

struct Watchers {
    next_id: u64,
    listeners: Vec<(u64, Arc<dyn HostMemListener>)>,
}

static WATCHERS: Mutex<Watchers> = Mutex::new(Watchers { next_id: 1, listeners: Vec::new() });

thread_local! {
    /// Set while this thread runs listener callbacks, to turn re-entry into a clear panic.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Keeps a listener subscribed; dropping it stops the notifications (no final
/// withdrawals are sent).
#[must_use = "dropping the watch stops the notifications at once"]
pub struct HostMemWatch {
    id: u64,
}

impl std::fmt::Debug for HostMemWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostMemWatch({})", self.id)
    }
}

/// The notification lock; panics on re-entry from a callback instead of deadlocking.
pub(crate) fn lock() -> NotifyGuard {
    let reentered = IN_CALLBACK.try_with(Cell::get).unwrap_or(false);
    assert!(
        !reentered,
        "a HostMemListener allocated or freed registered memory (or dropped a HostMemWatch) \
         from its callback; do that outside the callback"
    );
    NotifyGuard { watchers: WATCHERS.lock() }
}

/// Holds the notification lock: the registry changes Host regions and tells listeners
/// under it.
pub(crate) struct NotifyGuard {
    watchers: MutexGuard<'static, Watchers>,
}

/// Marks this thread as inside callbacks for its lifetime.
struct CallbackScope;

impl CallbackScope {
    fn enter() -> CallbackScope {
        let _ = IN_CALLBACK.try_with(|flag| flag.set(true));
        CallbackScope
    }
}

impl Drop for CallbackScope {
    fn drop(&mut self) {
        let _ = IN_CALLBACK.try_with(|flag| flag.set(false));
    }
}

impl NotifyGuard {
    /// Announces a region; on a refusal, withdraws it from those that took it.
    pub(crate) fn added(&self, start: usize, len: usize) -> Result<()> {
        let _scope = CallbackScope::enter();
        for (done, (_, listener)) in self.watchers.listeners.iter().enumerate() {
            if let Err(err) = listener.host_region_added(start, len) {
                for (_, took) in &self.watchers.listeners[..done] {
                    took.host_region_removed(start, len);
                }
                return Err(err);
            }
        }
        Ok(())
    }

    pub(crate) fn removed(&self, start: usize, len: usize) {
        let _scope = CallbackScope::enter();
        for (_, listener) in &self.watchers.listeners {
            listener.host_region_removed(start, len);
        }
    }
}

/// Subscribes `listener`: it is told of every Host region registered now (before this
/// returns) and of each one registered or unregistered until the handle is dropped. If it
/// refuses a region registered now, the regions it took are withdrawn from it and its
/// error returned.
pub fn watch_host_memory(listener: Arc<dyn HostMemListener>) -> Result<HostMemWatch> {
    let mut guard = lock();
    let existing = super::super::registry::host_regions();
    {
        let _scope = CallbackScope::enter();
        for (done, &(start, len)) in existing.iter().enumerate() {
            if let Err(err) = listener.host_region_added(start, len) {
                for &(start, len) in &existing[..done] {
                    listener.host_region_removed(start, len);
                }
                return Err(err);
            }
        }
    }
    let id = guard.watchers.next_id;
    guard.watchers.next_id += 1;
    guard.watchers.listeners.push((id, listener));
    Ok(HostMemWatch { id })
}

impl Drop for HostMemWatch {
    fn drop(&mut self) {
        let mut guard = lock();
        let before = guard.watchers.listeners.len();
        guard.watchers.listeners.retain(|(id, _)| *id != self.id);
        debug_assert_eq!(guard.watchers.listeners.len() + 1, before, "a watch is subscribed exactly once");
    }
}
