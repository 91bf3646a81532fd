//! The passthru bdev on real reactors: every I/O type forwarded unchanged to its base,
//! the base claimed while it lives and released by its delete, hot-remove of its own
//! descriptors.

mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use harness::*;
use peerless_bdev::modules::malloc::MallocBdev;
use peerless_bdev::modules::passthru::{self, CreateParams, PassthruBdev};
use peerless_bdev::{Bdev, BdevError, BdevInfo, ClaimType, DataBuf, IoStatus, IoType, Uuid};

const BLOCK: usize = 512;

fn malloc(harness: &Harness, name: &str, num_blocks: u64) {
    let info = BdevInfo {
        name: name.into(),
        product_name: "Malloc disk".into(),
        block_size: BLOCK as u32,
        num_blocks,
        uuid: Uuid::random(),
        max_io_blocks: 0,
    };
    harness.bdevs.register(Arc::new(MallocBdev::new(info).unwrap())).unwrap();
}

fn passthru(harness: &Harness, name: &str, base: &str) -> Result<Arc<PassthruBdev>, String> {
    let params = CreateParams { name: name.into(), base_bdev_name: base.into(), uuid: None };
    passthru::create(&harness.bdevs, params).map_err(|err| format!("{err:?}"))
}

#[test]
fn every_io_type_reaches_the_base_unchanged() {
    let harness = Harness::new();
    malloc(&harness, "Malloc0", 1024);
    passthru(&harness, "PT0", "Malloc0").unwrap();
    let desc = harness.open("PT0", true);
    // The base is claimed, but a read-only descriptor may still look at it.
    let base = harness.open("Malloc0", false);
    for (offset, blocks) in [(0, 1), (17, 100), (1023, 1)] {
        assert_ok(&harness.run_one(&desc, patterned_write(offset, blocks, BLOCK, 2)));
        let through = harness.run_one(&desc, read(offset, blocks, BLOCK));
        let direct = harness.run_one(&base, read(offset, blocks, BLOCK));
        assert!(through.bytes() == pattern(offset, blocks, BLOCK, 2), "{offset}+{blocks} through passthru");
        assert!(direct.bytes() == through.bytes(), "{offset}+{blocks} landed at the same blocks of the base");
    }
    let compare = Spec::new(IoType::Compare, 17, 1).with(DataBuf::Heap(pattern(17, 1, BLOCK, 2).into_boxed_slice()));
    assert_ok(&harness.run_one(&desc, compare));
    for io_type in [IoType::Unmap, IoType::WriteZeroes] {
        assert_ok(&harness.run_one(&desc, patterned_write(200, 4, BLOCK, 3)));
        assert_ok(&harness.run_one(&desc, Spec::new(io_type, 200, 4)));
        assert!(harness.run_one(&base, read(200, 4, BLOCK)).bytes().iter().all(|byte| *byte == 0), "{io_type:?}");
    }
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Flush, 0, 1024)));
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Reset, 0, 0)));
    assert_eq!(harness.run_one(&desc, Spec::new(IoType::Flush, 1000, 25)).status, IoStatus::LBA_OUT_OF_RANGE);
    assert_eq!(harness.run_one(&desc, read(1020, 8, BLOCK)).status, IoStatus::LBA_OUT_OF_RANGE);
    // Many at once, all forwarded and all handed back.
    let done = harness.run(&desc, (0..64).map(|index| read(index * 16, 16, BLOCK)).collect());
    assert!(done.len() == 64 && done.iter().all(|(_, done)| done.status == IoStatus::SUCCESS));
}

#[test]
fn the_base_stays_claimed_until_the_passthru_is_deleted() {
    let harness = Harness::new();
    malloc(&harness, "Malloc0", 64);
    let pt = passthru(&harness, "PT0", "Malloc0").unwrap();
    assert_eq!(harness.bdevs.claim_of("Malloc0"), Some((ClaimType::ExclusiveWrite, "bdev_passthru PT0".into())));
    let err = harness.bdevs.open("Malloc0", true, None, None).err().expect("a second writer is refused");
    assert!(matches!(err, BdevError::Claimed { .. }), "{err}");
    let second = passthru(&harness, "PT1", "Malloc0").err().expect("one passthru per base");
    assert!(second.contains("claimed"), "{second}");
    assert!(passthru(&harness, "PT0", "Malloc0").is_err(), "names are unique");
    assert!(passthru(&harness, "PT2", "Nothing").is_err());
    let refused = harness.bdevs.unregister(None, "Malloc0").unwrap_err();
    assert!(matches!(&refused, BdevError::Claimed { by, .. } if by.contains("PT0")), "{refused}");
    assert_eq!(harness.bdevs.get("PT0").unwrap().base_bdevs(), vec!["Malloc0".to_string()]);
    let config = pt.config_entry().unwrap();
    assert_eq!(config["method"], "bdev_passthru_create");
    assert_eq!(config["params"]["base_bdev_name"], "Malloc0");
    assert_eq!(pt.driver_specific()["passthru"]["base_bdev_name"], "Malloc0");

    harness.bdevs.unregister_by_name(None, "PT0", passthru::MODULE_NAME).unwrap();
    assert_eq!(harness.bdevs.claim_of("Malloc0"), None, "deleting the passthru releases its base");
    let writer = harness.open("Malloc0", true);
    assert_ok(&harness.run_one(&writer, patterned_write(0, 1, BLOCK, 0)));
    drop(writer);
    harness.bdevs.unregister(None, "Malloc0").unwrap();
}

#[test]
fn deleting_the_passthru_reaches_its_descriptors_and_fails_new_io() {
    let harness = Harness::new();
    malloc(&harness, "Malloc0", 64);
    passthru(&harness, "PT0", "Malloc0").unwrap();
    let heard = Arc::new(AtomicBool::new(false));
    let flag = heard.clone();
    let on_remove = Box::new(move |_: &mut peerless_core::reactor::ThreadCtx| flag.store(true, Ordering::SeqCst));
    let desc = Arc::new(harness.bdevs.open("PT0", true, Some(harness.thread.clone()), Some(on_remove)).unwrap());
    assert_ok(&harness.run_one(&desc, patterned_write(0, 1, BLOCK, 0)));
    harness.bdevs.unregister_by_name(None, "PT0", passthru::MODULE_NAME).unwrap();
    let deadline = Instant::now() + WAIT;
    while !heard.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(heard.load(Ordering::SeqCst), "the hot-remove event did not reach the descriptor");
    assert_eq!(harness.run_one(&desc, read(0, 1, BLOCK)).status, IoStatus::INVALID_NAMESPACE);
    // The base outlives it, free and intact.
    let base = harness.open("Malloc0", true);
    assert!(harness.run_one(&base, read(0, 1, BLOCK)).bytes() == pattern(0, 1, BLOCK, 0));
}
