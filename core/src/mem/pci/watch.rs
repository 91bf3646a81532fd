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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::super::{DmaBuf, Error};
    use super::*;

    /// Records what it is told about the regions of interest (other tests allocate
    /// concurrently, so only the addresses a test owns are checked).
    #[derive(Default)]
    struct Recorder {
        live: Mutex<BTreeSet<(usize, usize)>>,
        events: Mutex<Vec<(bool, usize, usize)>>,
        refuse_len: Option<usize>,
    }

    impl HostMemListener for Recorder {
        fn host_region_added(&self, start: usize, len: usize) -> Result<()> {
            if Some(len) == self.refuse_len {
                return Err(Error::Config(format!("refused {len}")));
            }
            assert!(self.live.lock().insert((start, len)), "announced twice: {start:#x}+{len}");
            self.events.lock().push((true, start, len));
            Ok(())
        }

        fn host_region_removed(&self, start: usize, len: usize) {
            assert!(self.live.lock().remove(&(start, len)), "withdrawn but never announced: {start:#x}+{len}");
            self.events.lock().push((false, start, len));
        }
    }

    impl Recorder {
        fn events_for(&self, start: usize, len: usize) -> Vec<bool> {
            self.events.lock().iter().filter(|e| (e.1, e.2) == (start, len)).map(|e| e.0).collect()
        }
    }

    #[test]
    fn existing_new_and_freed_regions_reach_the_listener_until_the_watch_drops() {
        // Sizes no other test uses, so the regions are recognisably these (a plain buffer's
        // region is its length rounded up to a page).
        let before = DmaBuf::alloc(5 * 4096 + 1).expect("dma");
        let before_len = 6 * 4096;
        let recorder = Arc::new(Recorder::default());
        let watch = watch_host_memory(Arc::clone(&recorder) as Arc<dyn HostMemListener>).expect("watch");
        assert_eq!(
            recorder.events_for(before.addr(), before_len),
            [true],
            "an existing region is announced at watch time"
        );

        let after = DmaBuf::alloc(7 * 4096).expect("dma");
        let start = after.addr();
        assert!(recorder.live.lock().contains(&(start, 7 * 4096)), "announced before alloc returned");
        drop(after);
        assert_eq!(recorder.events_for(start, 7 * 4096), [true, false], "withdrawn on drop");

        drop(watch);
        let later = DmaBuf::alloc(9 * 4096).expect("dma");
        assert!(recorder.events_for(later.addr(), 9 * 4096).is_empty(), "nothing after the watch dropped");
        let before_addr = before.addr();
        drop(before);
        assert_eq!(recorder.events_for(before_addr, before_len), [true], "no withdrawal after the watch dropped");
    }

    #[test]
    fn a_refused_region_fails_its_allocation_and_stays_unregistered() {
        let recorder = Arc::new(Recorder { refuse_len: Some(37 * 4096), ..Recorder::default() });
        let _watch = watch_host_memory(Arc::clone(&recorder) as Arc<dyn HostMemListener>).expect("watch");
        let err = DmaBuf::alloc(37 * 4096).expect_err("refused").to_string();
        assert!(err.contains("refused 151552"), "{err}");
        let fine = DmaBuf::alloc(39 * 4096).expect("other sizes pass");
        assert!(recorder.live.lock().contains(&(fine.addr(), 39 * 4096)));
    }

    #[test]
    fn a_listener_refusing_an_existing_region_is_not_subscribed() {
        let existing = DmaBuf::alloc(41 * 4096).expect("dma");
        let recorder = Arc::new(Recorder { refuse_len: Some(41 * 4096), ..Recorder::default() });
        let err = watch_host_memory(Arc::clone(&recorder) as Arc<dyn HostMemListener>).expect_err("refused");
        assert!(err.to_string().contains("refused"), "{err}");
        assert!(recorder.live.lock().is_empty(), "everything it took was withdrawn");
        let start = existing.addr();
        drop(existing);
        assert!(recorder.events_for(start, 41 * 4096).is_empty());
    }

    /// Regions announced while other threads allocate and free: each one the listener
    /// hears of is announced once and withdrawn once, in that order.
    #[test]
    fn concurrent_allocations_are_announced_and_withdrawn_exactly_once() {
        let recorder = Arc::new(Recorder::default());
        let threads: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(|| {
                    for i in 0..200 {
                        drop(DmaBuf::alloc_plain(4096 * (1 + i % 4)).expect("dma"));
                    }
                })
            })
            .collect();
        let watch = watch_host_memory(Arc::clone(&recorder) as Arc<dyn HostMemListener>).expect("watch");
        for thread in threads {
            thread.join().expect("an allocating thread");
        }
        drop(watch);
        // The Recorder's own asserts check the once-each rule; here, the order.
        let events = recorder.events.lock();
        let mut seen = std::collections::HashMap::new();
        for &(added, start, len) in events.iter() {
            let state = seen.entry((start, len)).or_insert(false);
            assert_ne!(*state, added, "{start:#x}+{len}: announced twice or withdrawn unannounced");
            *state = added;
        }
    }
}
