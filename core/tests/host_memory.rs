//! Host-memory notifications (`mem::pci::watch_host_memory`) and the uio
//! physical-address table. Listeners are process-wide, so these tests run in a process
//! of their own: no other test's allocations (the DPDK tests' EAL heap) meet them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use peerless_core::mem::pci::{virt_to_phys, watch_host_memory, HostMemListener, PhysTable};
use peerless_core::mem::{DmaBuf, Error, IoBufClass, IoBufPool, PoolConfig, Result, HUGEPAGE_BYTES};

const PAGE: usize = 4096;

/// Records what it is told (tests run concurrently, so each checks only the regions it
/// owns, recognised by size).
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

fn watch(recorder: &Arc<Recorder>) -> Result<peerless_core::mem::pci::HostMemWatch> {
    watch_host_memory(Arc::clone(recorder) as Arc<dyn HostMemListener>)
}

#[test]
fn existing_new_and_freed_regions_reach_the_listener_until_the_watch_drops() {
    // A plain buffer's region is its length rounded up to a page.
    let before = DmaBuf::alloc(5 * PAGE + 1).expect("dma");
    let before_len = 6 * PAGE;
    let recorder = Arc::new(Recorder::default());
    let watch = watch(&recorder).expect("watch");
    assert_eq!(recorder.events_for(before.addr(), before_len), [true], "an existing region is announced at watch time");

    let after = DmaBuf::alloc(7 * PAGE).expect("dma");
    let start = after.addr();
    assert!(recorder.live.lock().contains(&(start, 7 * PAGE)), "announced before alloc returned");
    drop(after);
    assert_eq!(recorder.events_for(start, 7 * PAGE), [true, false], "withdrawn on drop");

    drop(watch);
    let later = DmaBuf::alloc(9 * PAGE).expect("dma");
    assert!(recorder.events_for(later.addr(), 9 * PAGE).is_empty(), "nothing after the watch dropped");
    let before_addr = before.addr();
    drop(before);
    assert_eq!(recorder.events_for(before_addr, before_len), [true], "no withdrawal after the watch dropped");
}

#[test]
fn a_refused_region_fails_its_allocation_and_stays_unregistered() {
    let recorder = Arc::new(Recorder { refuse_len: Some(37 * PAGE), ..Recorder::default() });
    let _watch = watch(&recorder).expect("watch");
    let err = DmaBuf::alloc(37 * PAGE).expect_err("refused").to_string();
    assert!(err.contains("refused 151552"), "{err}");
    let fine = DmaBuf::alloc(39 * PAGE).expect("other sizes pass");
    assert!(recorder.live.lock().contains(&(fine.addr(), 39 * PAGE)));
}

#[test]
fn a_listener_refusing_an_existing_region_is_not_subscribed() {
    let existing = DmaBuf::alloc(41 * PAGE).expect("dma");
    let recorder = Arc::new(Recorder { refuse_len: Some(41 * PAGE), ..Recorder::default() });
    let err = watch(&recorder).expect_err("refused");
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(recorder.live.lock().is_empty(), "everything it took was withdrawn");
    let start = existing.addr();
    drop(existing);
    assert!(recorder.events_for(start, 41 * PAGE).is_empty());
}

/// Regions announced while other threads allocate and free: each one is announced once
/// and withdrawn once, in that order, whichever side of the watch it was allocated on.
#[test]
fn concurrent_allocations_are_announced_and_withdrawn_exactly_once() {
    let recorder = Arc::new(Recorder::default());
    let threads: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(|| {
                for i in 0..200 {
                    drop(DmaBuf::alloc_plain(PAGE * (1 + i % 4)).expect("dma"));
                }
            })
        })
        .collect();
    let watch = watch(&recorder).expect("watch");
    for thread in threads {
        thread.join().expect("an allocating thread");
    }
    drop(watch);
    // The Recorder's own asserts check the once-each rule; here, the order.
    let mut state = HashMap::new();
    for &(added, start, len) in recorder.events.lock().iter() {
        let live = state.entry((start, len)).or_insert(false);
        assert_ne!(*live, added, "{start:#x}+{len}: announced twice or withdrawn unannounced");
        *live = added;
    }
}

/// A listener that allocates from its callback would wait on the lock it runs under:
/// it panics with the explanation instead.
#[test]
fn allocating_from_a_callback_panics_instead_of_deadlocking() {
    struct Allocator;
    impl HostMemListener for Allocator {
        fn host_region_added(&self, _start: usize, len: usize) -> Result<()> {
            if len == 43 * PAGE {
                drop(DmaBuf::alloc(PAGE));
            }
            Ok(())
        }
        fn host_region_removed(&self, _start: usize, _len: usize) {}
    }
    let _watch = watch_host_memory(Arc::new(Allocator)).expect("watch");
    let panicked = std::thread::spawn(|| drop(DmaBuf::alloc(43 * PAGE))).join().expect_err("re-entry panics");
    let msg = panicked
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panicked.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(msg.contains("from its callback"), "{msg}");
    drop(DmaBuf::alloc(PAGE).expect("the lock is free again"));
}

#[test]
fn the_phys_table_agrees_with_pagemap_for_every_page_of_a_fresh_buffer() {
    let table = PhysTable::new();
    let _watch = watch_host_memory(Arc::clone(&table) as Arc<dyn HostMemListener>).expect("root reads frames");
    for len in [PAGE, 5 * PAGE + 100, HUGEPAGE_BYTES + PAGE] {
        let buf = DmaBuf::alloc(len).expect("dma");
        for off in (0..len).step_by(PAGE).chain([len - 1, 17]) {
            let va = buf.addr() + off;
            assert_eq!(table.translate(va), Some(virt_to_phys(va).expect("frame")), "{len} bytes, offset {off}");
        }
        let addr = buf.addr();
        drop(buf);
        assert_eq!(table.translate(addr), None, "withdrawn with its buffer");
    }
}

#[test]
fn the_phys_table_knows_nothing_of_unregistered_memory() {
    let table = PhysTable::new();
    let registered = DmaBuf::alloc(3 * PAGE).expect("dma");
    let _watch = watch_host_memory(Arc::clone(&table) as Arc<dyn HostMemListener>).expect("watch");
    assert!(table.translate(registered.addr() + PAGE).is_some(), "registered before the watch: replayed");
    let heap = vec![0u8; 3 * PAGE];
    assert_eq!(table.translate(heap.as_ptr() as usize + PAGE), None, "heap memory is not registered");
    assert_eq!(table.translate(0), None);
}

/// The iobuf pools register their memory like any DMA buffer: a table subscribed after
/// the pool was made translates every buffer a cache hands out.
#[test]
fn iobuf_pool_memory_is_announced_too() {
    let cfg = PoolConfig { small_count: 8, large_count: 2, small_cache: 2, large_cache: 1, ..PoolConfig::default() };
    let pool = IoBufPool::new(cfg).expect("pool");
    let table = PhysTable::new();
    let _watch = watch_host_memory(Arc::clone(&table) as Arc<dyn HostMemListener>).expect("watch");
    let mut cache = pool.cache();
    for class in IoBufClass::ALL {
        let buf = cache.get(class).expect("a buffer");
        let seg = buf.seg_ref().seg();
        for off in (0..buf.len()).step_by(PAGE) {
            let va = seg.addr() + off;
            assert_eq!(table.translate(va), Some(virt_to_phys(va).expect("frame")), "{class:?} offset {off}");
        }
        cache.put(buf);
    }
}
