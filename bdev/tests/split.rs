//! The split bdev on real reactors: parts translate offsets onto their base, refuse
//! what crosses their end, share one claim on the base, and go together on delete.

mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use harness::*;
use peerless_bdev::modules::malloc::MallocBdev;
use peerless_bdev::modules::passthru;
use peerless_bdev::modules::split::{self, CreateParams, SplitPart};
use peerless_bdev::{Bdev, BdevError, BdevInfo, ClaimType, IoStatus, IoType, Uuid};

const BLOCK: usize = 512;
const BASE_BLOCKS: u64 = 1003;
/// Four parts of 1003 blocks: 250 each, the last 3 blocks unused as in SPDK.
const PART_BLOCKS: u64 = 250;

fn setup(harness: &Harness) -> Vec<Arc<SplitPart>> {
    let info = BdevInfo {
        name: "Malloc0".into(),
        product_name: "Malloc disk".into(),
        block_size: BLOCK as u32,
        num_blocks: BASE_BLOCKS,
        uuid: Uuid::random(),
        max_io_blocks: 0,
    };
    harness.bdevs.register(Arc::new(MallocBdev::new(info).unwrap())).unwrap();
    split::create(&harness.bdevs, CreateParams { base_bdev: "Malloc0".into(), split_count: 4, split_size_mb: 0 })
        .unwrap()
}

#[test]
fn parts_translate_offsets_onto_the_base() {
    let harness = Harness::new();
    let parts = setup(&harness);
    let names: Vec<String> = parts.iter().map(|part| part.name()).collect();
    assert_eq!(names, ["Malloc0p0", "Malloc0p1", "Malloc0p2", "Malloc0p3"]);
    assert!(parts.iter().all(|part| part.info().num_blocks == PART_BLOCKS));
    let base = harness.open("Malloc0", false);
    for (index, name) in names.iter().enumerate() {
        let desc = harness.open(name, true);
        let seed = index as u8;
        assert_ok(&harness.run_one(&desc, patterned_write(5, 10, BLOCK, seed)));
        let on_base = harness.run_one(&base, read(index as u64 * PART_BLOCKS + 5, 10, BLOCK));
        assert!(on_base.bytes() == pattern(5, 10, BLOCK, seed), "{name} wrote at its offset on the base");
        let back = harness.run_one(&desc, read(5, 10, BLOCK));
        assert!(back.bytes() == pattern(5, 10, BLOCK, seed), "{name} reads its own blocks");
    }
    let p1 = harness.open("Malloc0p1", true);
    for io_type in [IoType::Unmap, IoType::WriteZeroes] {
        assert_ok(&harness.run_one(&p1, patterned_write(0, 4, BLOCK, 9)));
        assert_ok(&harness.run_one(&p1, Spec::new(io_type, 0, 4)));
        let on_base = harness.run_one(&base, read(PART_BLOCKS, 4, BLOCK)).bytes();
        assert!(on_base.iter().all(|byte| *byte == 0), "{io_type:?} reached the base at the part's offset");
        let neighbour = harness.run_one(&base, read(PART_BLOCKS - 1, 1, BLOCK));
        assert!(neighbour.bytes() == vec![0u8; BLOCK], "part 0's last block is untouched");
    }
    assert_ok(&harness.run_one(&p1, Spec::new(IoType::Flush, 0, PART_BLOCKS)));
    assert_ok(&harness.run_one(&p1, Spec::new(IoType::Reset, 0, 0)));
    // Nothing crosses into the neighbour: the layer refuses data I/O, the part a flush.
    assert_eq!(harness.run_one(&p1, read(PART_BLOCKS - 1, 2, BLOCK)).status, IoStatus::LBA_OUT_OF_RANGE);
    assert_eq!(harness.run_one(&p1, Spec::new(IoType::Flush, 200, 51)).status, IoStatus::LBA_OUT_OF_RANGE);
    let p2 = harness.open("Malloc0p2", false);
    assert!(harness.run_one(&p2, read(5, 10, BLOCK)).bytes() == pattern(5, 10, BLOCK, 2), "part 2 is unchanged");
}

#[test]
fn parts_share_one_claim_and_are_deleted_together() {
    let harness = Harness::new();
    let parts = setup(&harness);
    assert_eq!(harness.bdevs.claim_of("Malloc0"), Some((ClaimType::ExclusiveWrite, "bdev_split Malloc0".into())));
    assert!(matches!(harness.bdevs.open("Malloc0", true, None, None), Err(BdevError::Claimed { .. })));
    assert!(matches!(harness.bdevs.unregister(None, "Malloc0"), Err(BdevError::Claimed { .. })));
    let again =
        split::create(&harness.bdevs, CreateParams { base_bdev: "Malloc0".into(), split_count: 2, split_size_mb: 0 });
    assert!(again.is_err(), "a split base cannot be split twice");
    let entries: Vec<_> = parts.iter().filter_map(|part| part.config_entry()).collect();
    assert_eq!(entries.len(), 1, "one bdev_split_create recreates every part");
    assert_eq!(entries[0]["params"]["split_count"], 4);

    // A part built upon blocks the delete, and nothing is removed.
    passthru::create(
        &harness.bdevs,
        passthru::CreateParams { name: "PT0".into(), base_bdev_name: "Malloc0p3".into(), uuid: None },
    )
    .unwrap();
    assert!(matches!(split::delete(None, &harness.bdevs, "Malloc0"), Err(BdevError::Claimed { .. })));
    assert!(parts.iter().all(|part| harness.bdevs.get(&part.name()).is_ok()));
    harness.bdevs.unregister_by_name(None, "PT0", passthru::MODULE_NAME).unwrap();

    let heard = Arc::new(AtomicBool::new(false));
    let flag = heard.clone();
    let on_remove = Box::new(move |_: &mut peerless_core::reactor::ThreadCtx| flag.store(true, Ordering::SeqCst));
    let desc = Arc::new(harness.bdevs.open("Malloc0p2", true, Some(harness.thread.clone()), Some(on_remove)).unwrap());
    split::delete(None, &harness.bdevs, "Malloc0").unwrap();
    let deadline = Instant::now() + WAIT;
    while !heard.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(heard.load(Ordering::SeqCst), "the hot-remove event did not reach the part's descriptor");
    assert_eq!(harness.run_one(&desc, read(0, 1, BLOCK)).status, IoStatus::INVALID_NAMESPACE);
    assert!(parts.iter().all(|part| harness.bdevs.get(&part.name()).is_err()));
    assert_eq!(harness.bdevs.claim_of("Malloc0"), None, "deleting the split releases its base");
    harness.bdevs.unregister(None, "Malloc0").unwrap();
}

#[test]
fn a_fixed_part_size_clamps_the_count() {
    let harness = Harness::new();
    let info = BdevInfo {
        name: "Big".into(),
        product_name: "Malloc disk".into(),
        block_size: 4096,
        num_blocks: 2560,
        uuid: Uuid::random(),
        max_io_blocks: 0,
    };
    harness.bdevs.register(Arc::new(MallocBdev::new(info).unwrap())).unwrap();
    // 10 MiB cut in 4 MiB parts: two fit.
    let parts =
        split::create(&harness.bdevs, CreateParams { base_bdev: "Big".into(), split_count: 3, split_size_mb: 4 })
            .unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1].offset_blocks(), 1024);
    assert_eq!(parts[0].config_entry().unwrap()["params"]["split_size_mb"], 4);
}
