//! The EAL's life in one process: start once, allocate, translate, free, memzones,
//! clean up, and no second start. One test, because DPDK allows one EAL per process
//! and cleanup ends it.
#![cfg(feature = "dpdk")]

use spdk_sys::eal::{self, EalError, IovaMode};

fn args(extra: &[&str]) -> Vec<String> {
    let base = ["spdk-sys-test", "--no-huge", "--no-pci", "--no-shconf", "--no-telemetry", "-l", "0", "-m", "64"];
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

#[test]
fn eal_starts_once_allocates_translates_and_cleans_up() {
    let args = args(&["--log-level=lib.eal:error"]);
    assert!(eal::info().is_none());
    assert_eq!(eal::malloc(4096, 4096, false), None, "no EAL, no memory");
    let info = eal::init(&args).expect("EAL starts with --no-huge");
    eprintln!("EAL: {info:?}");
    assert_eq!(info.iova_mode, IovaMode::Va, "--no-huge means IOVA as VA");
    assert!(!info.has_hugepages && !info.has_pci);
    assert!(info.physmem_bytes >= 64 << 20);
    assert_eq!(eal::init(&args), Ok(info.clone()), "same arguments: the running EAL");
    assert!(matches!(eal::init(&self::args(&[])), Err(EalError::AlreadyRunning { .. })));
    assert_eq!(eal::lcore_id(), Some(info.main_lcore), "the init thread is the main lcore");
    assert_eq!(std::thread::spawn(eal::lcore_id).join().expect("thread"), None);

    for (len, align) in [(1usize, 64u32), (4096, 4096), (100_000, 4096), (3 << 20, 2 << 20)] {
        let ptr = eal::malloc(len, align, true).expect("EAL heap");
        let addr = ptr.as_ptr() as usize;
        assert_eq!(addr % align as usize, 0, "{len} bytes aligned to {align}");
        // SAFETY: `ptr` is a live block from eal::malloc.
        let iova = unsafe { eal::malloc_virt2iova(ptr) }.expect("IOVA");
        assert_eq!(iova, addr as u64, "IOVA as VA");
        assert_eq!(eal::mem_virt2iova(addr + len - 1), Some(iova + len as u64 - 1));
        assert_eq!(eal::page_size_of(addr), Some(4096));
        // SAFETY: freed once, not used after.
        unsafe { eal::free(ptr) };
    }
    let stack = 0u8;
    assert_eq!(eal::page_size_of(&stack as *const u8 as usize), None, "not EAL memory");

    let zone = eal::Memzone::reserve("peerless-test", 1 << 20, 4096, true).expect("memzone");
    assert_eq!((zone.len(), zone.addr() % 4096), (1 << 20, 0));
    assert_eq!(zone.iova(), zone.addr() as u64);
    assert!(eal::Memzone::reserve("peerless-test", 4096, 64, false).is_err(), "names are unique");
    drop(zone);
    let again = eal::Memzone::reserve("peerless-test", 4096, 64, false).expect("name free after drop");
    drop(again);

    // SAFETY: every block and zone above was freed.
    unsafe { eal::cleanup() }.expect("cleanup");
    assert!(eal::info().is_none());
    assert_eq!(eal::init(&args), Err(EalError::CleanedUp), "one EAL per process");
    // SAFETY: nothing is in use; the EAL is gone anyway.
    assert_eq!(unsafe { eal::cleanup() }, Err(EalError::CleanedUp));
}
