//! The emulated NVMe SSD on real reactors: every I/O type with data checks on RAM and
//! file media; CMB buffers of its own strict CMB moved by its DMA engine with no bounce
//! and no CPU mapping, directly and through passthru; foreign device memory bounced;
//! latency, bandwidth and queue depth modelled; hot-remove.

mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::*;
use peerless_bdev::modules::nvmesim::{self, CreateParams, NvmesimBdev, QUEUE_DEPTH};
use peerless_bdev::modules::{passthru, split};
use peerless_bdev::stat::IoStat;
use peerless_bdev::{Bdev, DataBuf, IoStatus, IoType};
use peerless_core::mem::{self, CmbConfig, EmulatedCmb, MemStats, P2pBuf};

const BLOCK: usize = 512;
const CMB_MB: u64 = 4;

fn nvmesim(harness: &Harness, params: CreateParams) -> Arc<NvmesimBdev> {
    nvmesim::create(&harness.bdevs, params).unwrap()
}

fn iostat(harness: &Harness, name: &str) -> IoStat {
    let bdevs = harness.bdevs.clone();
    let name = name.to_string();
    let rx = harness.on_thread(move |ctx| {
        let (tx, rx) = std::sync::mpsc::channel();
        bdevs.collect_iostat(ctx, vec![name], move |_, stats| {
            let _ = tx.send(stats);
        });
        rx
    });
    rx.recv_timeout(WAIT).unwrap().pop().unwrap().1
}

/// The memory counters of the reactor thread, where every I/O of the harness runs.
fn reactor_mem(harness: &Harness) -> MemStats {
    harness.on_thread(|_| mem::stats::thread_snapshot())
}

/// A CMB buffer holding `bytes`, written through the gate's accessors.
fn cmb_buffer(cmb: &EmulatedCmb, bytes: &[u8]) -> P2pBuf {
    let mut buf = cmb.alloc(bytes.len()).unwrap();
    mem::copy(&mut buf.sgl_mut(), &mem::Sgl::from_host(bytes).unwrap()).unwrap();
    buf
}

/// The bytes of a P2P buffer that came back, copied out through the gate.
fn cmb_bytes(done: &mut Done) -> Vec<u8> {
    let Some(DataBuf::P2p(buf)) = done.buffers.pop() else { panic!("the CMB buffer did not come back: {done:?}") };
    let mut out = vec![0u8; buf.len()];
    mem::copy(&mut mem::Sgl::from_host_mut(&mut out).unwrap(), &buf.sgl()).unwrap();
    out
}

fn every_io_type_keeps_data(harness: &Harness, name: &str) {
    let desc = harness.open(name, true);
    for (offset, blocks) in [(0, 1), (3, 300), (1023, 1), (500, 513)] {
        assert_ok(&harness.run_one(&desc, patterned_write(offset, blocks, BLOCK, 4)));
        let back = harness.run_one(&desc, read(offset, blocks, BLOCK));
        assert_ok(&back);
        assert!(back.bytes() == pattern(offset, blocks, BLOCK, 4), "{name} {offset}+{blocks}");
    }
    for io_type in [IoType::Unmap, IoType::WriteZeroes] {
        assert_ok(&harness.run_one(&desc, patterned_write(40, 8, BLOCK, 6)));
        assert_ok(&harness.run_one(&desc, Spec::new(io_type, 42, 4)));
        let back = harness.run_one(&desc, read(40, 8, BLOCK)).bytes();
        assert_eq!(back[..2 * BLOCK], pattern(40, 2, BLOCK, 6)[..], "{io_type:?} left the blocks before alone");
        assert!(back[2 * BLOCK..6 * BLOCK].iter().all(|byte| *byte == 0), "{io_type:?}");
        assert_eq!(back[6 * BLOCK..], pattern(46, 2, BLOCK, 6)[..]);
    }
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Flush, 0, 0)));
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Reset, 0, 0)));
    let compare = Spec::new(IoType::Compare, 0, 1).with(DataBuf::heap(BLOCK));
    assert_eq!(harness.run_one(&desc, compare).status, IoStatus::INVALID_OPCODE);
    assert_eq!(harness.run_one(&desc, read(1020, 8, BLOCK)).status, IoStatus::LBA_OUT_OF_RANGE);
}

#[test]
fn ram_media_keeps_data_for_every_io_type() {
    let harness = Harness::new();
    nvmesim(&harness, CreateParams { cmb_size_mb: CMB_MB, ..CreateParams::new("Nvme0", 1024, BLOCK as u32) });
    every_io_type_keeps_data(&harness, "Nvme0");
}

#[test]
fn file_media_keeps_data_across_a_recreate() {
    let harness = Harness::new();
    let path = std::env::temp_dir().join(format!("nvmesim-test-{}.img", std::process::id()));
    let params = CreateParams {
        filename: Some(path.display().to_string()),
        cmb_size_mb: CMB_MB,
        ..CreateParams::new("Nvme0", 1024, BLOCK as u32)
    };
    let bdev = nvmesim(&harness, params.clone());
    assert_eq!(bdev.driver_specific()["nvmesim"]["filename"], path.display().to_string());
    every_io_type_keeps_data(&harness, "Nvme0");
    // The file is reached through the device's staging memory, CMB bytes by its engine.
    cmb_round_trip(&harness, &bdev, "Nvme0");
    harness.bdevs.unregister_by_name(None, "Nvme0", nvmesim::MODULE_NAME).unwrap();
    drop(bdev);
    nvmesim(&harness, params);
    let desc = harness.open("Nvme0", false);
    assert!(
        harness.run_one(&desc, read(500, 513, BLOCK)).bytes() == pattern(500, 513, BLOCK, 4),
        "the file kept the data"
    );
    std::fs::remove_file(path).unwrap();
}

/// Writes from one buffer of the device's own strict CMB and reads into another through
/// `name`; the layer must not bounce and the CPU must never map the CMB.
fn cmb_round_trip(harness: &Harness, bdev: &NvmesimBdev, name: &str) {
    let desc = harness.open(name, true);
    let cmb = bdev.cmb().unwrap();
    assert!(cmb.is_strict(), "a CPU dereference of this CMB would fault");
    let blocks = 64u64;
    let len = blocks as usize * BLOCK;
    let expected = pattern(100, blocks, BLOCK, 8);
    let source = cmb_buffer(cmb, &expected);
    let before = reactor_mem(harness);
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Write, 100, blocks).with(DataBuf::P2p(source))));
    let target = cmb.alloc(len).unwrap();
    let mut back = harness.run_one(&desc, Spec::new(IoType::Read, 100, blocks).with(DataBuf::P2p(target)));
    assert_ok(&back);
    let moved = reactor_mem(harness).since(&before);
    assert!(cmb_bytes(&mut back) == expected, "the CMB read back what was written");
    assert_eq!(moved.cpu_io_accessor_bytes, 0, "the CPU reached the CMB: {moved:?}");
    assert_eq!(moved.cpu_bounce_bytes, 0, "{moved:?}");
    assert_eq!((moved.host_bytes, moved.cpu_direct_bytes), (0, 0), "no payload byte in host memory: {moved:?}");
    assert_eq!(moved.iomem_bytes, 2 * len as u64, "{moved:?}");
    assert_eq!(moved.dma_bytes, 2 * len as u64, "the device's engine moved every CMB byte: {moved:?}");
    // A host buffer into the same device still works, on the host path.
    let host = harness.run_one(&desc, read(100, blocks, BLOCK));
    assert!(host.bytes() == expected, "a host read sees the CMB write");
    assert_eq!(iostat(harness, name).bounced_ios, 0);
    assert_eq!(iostat(harness, bdev.name()).bounced_ios, 0);
}

#[test]
fn own_cmb_buffers_move_by_dma_without_bounce_or_cpu_mapping() {
    let harness = Harness::new();
    let bdev =
        nvmesim(&harness, CreateParams { cmb_size_mb: CMB_MB, ..CreateParams::new("Nvme0", 1024, BLOCK as u32) });
    cmb_round_trip(&harness, &bdev, "Nvme0");
    assert_eq!(bdev.cmb().unwrap().available_bytes(), (CMB_MB << 20) as usize, "every CMB buffer came back");
}

#[test]
fn own_cmb_buffers_pass_through_passthru_without_bounce() {
    let harness = Harness::new();
    let bdev =
        nvmesim(&harness, CreateParams { cmb_size_mb: CMB_MB, ..CreateParams::new("Nvme0", 1024, BLOCK as u32) });
    let params = passthru::CreateParams { name: "PT0".into(), base_bdev_name: "Nvme0".into(), uuid: None };
    passthru::create(&harness.bdevs, params).unwrap();
    let provider = harness.bdevs.get("PT0").unwrap().p2p_provider().expect("passthru offers its base's CMB");
    assert_eq!(provider.domain(), bdev.cmb().unwrap().domain());
    cmb_round_trip(&harness, &bdev, "PT0");
    harness.bdevs.unregister_by_name(None, "PT0", passthru::MODULE_NAME).unwrap();
}

#[test]
fn own_cmb_buffers_reach_the_device_through_a_split_part_without_bounce() {
    let harness = Harness::new();
    let bdev =
        nvmesim(&harness, CreateParams { cmb_size_mb: CMB_MB, ..CreateParams::new("Nvme0", 1024, BLOCK as u32) });
    let params = split::CreateParams { base_bdev: "Nvme0".into(), split_count: 2, split_size_mb: 0 };
    split::create(&harness.bdevs, params).unwrap();
    cmb_round_trip(&harness, &bdev, "Nvme0p1");
    // Part 1 starts at block 512: its block 100 is the device's 612.
    let base = harness.open("Nvme0", false);
    let on_base = harness.run_one(&base, read(612, 64, BLOCK));
    assert!(on_base.bytes() == pattern(100, 64, BLOCK, 8), "the part wrote at its offset on the device");
    split::delete(None, &harness.bdevs, "Nvme0").unwrap();
}

#[test]
fn another_providers_memory_is_bounced_and_still_correct() {
    let harness = Harness::new();
    nvmesim(&harness, CreateParams { cmb_size_mb: CMB_MB, ..CreateParams::new("Nvme0", 1024, BLOCK as u32) });
    let desc = harness.open("Nvme0", true);
    let foreign = EmulatedCmb::new(CmbConfig::new("foreign", 1 << 20)).unwrap();
    let expected = pattern(7, 8, BLOCK, 2);
    let write = Spec::new(IoType::Write, 7, 8).with(DataBuf::P2p(cmb_buffer(&foreign, &expected)));
    assert_ok(&harness.run_one(&desc, write));
    let mut back =
        harness.run_one(&desc, Spec::new(IoType::Read, 7, 8).with(DataBuf::P2p(foreign.alloc(8 * BLOCK).unwrap())));
    assert_ok(&back);
    assert!(cmb_bytes(&mut back) == expected, "the CMB read back what was written");
    assert_eq!(iostat(&harness, "Nvme0").bounced_ios, 2, "a CMB the device cannot reach goes through the gate");
}

#[test]
fn latency_and_bandwidth_are_modelled() {
    let harness = Harness::new();
    const LATENCY_US: u64 = 5_000;
    nvmesim(&harness, CreateParams { latency_us: LATENCY_US, ..CreateParams::new("Slow", 1024, BLOCK as u32) });
    let desc = harness.open("Slow", true);
    let started = Instant::now();
    assert_ok(&harness.run_one(&desc, read(0, 1, BLOCK)));
    assert!(started.elapsed() >= Duration::from_micros(LATENCY_US), "{:?}", started.elapsed());

    // 1 MiB at 50 MiB/s takes at least 20 ms on one channel's link.
    nvmesim(&harness, CreateParams { bandwidth_mbps: 50, ..CreateParams::new("Narrow", 4096, BLOCK as u32) });
    let desc = harness.open("Narrow", true);
    let started = Instant::now();
    let done = harness.run(&desc, (0..16).map(|index| read(index * 128, 128, BLOCK)).collect());
    assert!(done.iter().all(|(_, done)| done.status == IoStatus::SUCCESS));
    assert!(started.elapsed() >= Duration::from_millis(20), "{:?}", started.elapsed());
}

#[test]
fn ram_and_file_media_move_only_the_io_length_of_larger_buffers() {
    let harness = Harness::new();
    let mut paths = Vec::new();
    for block_size in [512u32, 4096] {
        let ram = format!("Ram{block_size}");
        nvmesim(&harness, CreateParams { cmb_size_mb: 0, ..CreateParams::new(&ram, 64, block_size) });
        let desc = harness.open(&ram, true);
        check_buffers_larger_than_the_io(&harness, &desc, &[Memory::Dma, Memory::Heap], &|_, _| None);

        let path = std::env::temp_dir().join(format!("nvmesim-oversized-{}-{block_size}.img", std::process::id()));
        let filed = format!("File{block_size}");
        let params = CreateParams {
            filename: Some(path.display().to_string()),
            cmb_size_mb: 0,
            ..CreateParams::new(&filed, 64, block_size)
        };
        nvmesim(&harness, params);
        let desc = harness.open(&filed, true);
        let media = |offset: u64, len: usize| {
            let all = std::fs::read(&path).unwrap();
            Some(all[offset as usize..offset as usize + len].to_vec())
        };
        check_buffers_larger_than_the_io(&harness, &desc, &[Memory::Heap], &media);
        paths.push(path);
    }
    for path in paths {
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn the_bandwidth_model_charges_the_io_length_not_the_buffer() {
    let harness = Harness::new();
    // At 1 MiB/s, 16 one-block reads carry 8 KiB (8 ms); their 132 KiB buffers would be
    // 2 MiB, two seconds.
    nvmesim(&harness, CreateParams { bandwidth_mbps: 1, ..CreateParams::new("Narrow", 1024, BLOCK as u32) });
    let desc = harness.open("Narrow", false);
    let reads =
        (0..16).map(|index| Spec::new(IoType::Read, index, 1).with(DataBuf::heap(mem::IOBUF_LARGE_BYTES))).collect();
    let started = Instant::now();
    let done = harness.run(&desc, reads);
    let elapsed = started.elapsed();
    assert!(done.iter().all(|(_, done)| done.status == IoStatus::SUCCESS));
    assert!(elapsed >= Duration::from_millis(7), "the link was not modelled at all: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "the link carried the whole buffers: {elapsed:?}");
}

#[test]
fn a_full_queue_makes_the_layer_retry_without_losing_io() {
    let harness = Harness::new();
    nvmesim(&harness, CreateParams { latency_us: 1_000, ..CreateParams::new("Nvme0", 4096, BLOCK as u32) });
    let desc = harness.open("Nvme0", false);
    let count = QUEUE_DEPTH + 100;
    let done = harness.run(&desc, (0..count).map(|index| read(index as u64 % 4096, 1, BLOCK)).collect());
    assert_eq!(done.len(), count);
    assert!(done.iter().all(|(_, done)| done.status == IoStatus::SUCCESS));
    let stats = iostat(&harness, "Nvme0");
    assert_eq!(stats.read.ops, count as u64);
    assert!(stats.nomem_retries >= 100, "{stats:?}");
}

#[test]
fn deleting_an_open_nvmesim_reaches_its_descriptors() {
    let harness = Harness::new();
    nvmesim(&harness, CreateParams::new("Nvme0", 64, BLOCK as u32));
    let heard = Arc::new(AtomicBool::new(false));
    let flag = heard.clone();
    let on_remove = Box::new(move |_: &mut peerless_core::reactor::ThreadCtx| flag.store(true, Ordering::SeqCst));
    let desc = Arc::new(harness.bdevs.open("Nvme0", true, Some(harness.thread.clone()), Some(on_remove)).unwrap());
    assert_ok(&harness.run_one(&desc, patterned_write(0, 1, BLOCK, 0)));
    assert!(harness.bdevs.unregister_by_name(None, "Nvme0", nvmesim::MODULE_NAME).is_ok());
    let deadline = Instant::now() + WAIT;
    while !heard.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(heard.load(Ordering::SeqCst), "the hot-remove event did not reach the descriptor");
    assert_eq!(harness.run_one(&desc, read(0, 1, BLOCK)).status, IoStatus::INVALID_NAMESPACE);
}

#[test]
fn a_closed_channel_finishes_what_it_posted_then_its_poller_ends() {
    let harness = Harness::new();
    nvmesim(&harness, CreateParams { latency_us: 20_000, ..CreateParams::new("Nvme0", 64, BLOCK as u32) });
    let desc = harness.open("Nvme0", false);
    let pollers = |harness: &Harness| -> Vec<String> {
        harness.on_thread(|ctx| ctx.poller_stats().into_iter().map(|stat| stat.name).collect())
    };
    let after_close = harness.on_thread(move |ctx| {
        let handle = desc.channel(ctx);
        let queue = peerless_bdev::completion_queue(1);
        let mut io = peerless_bdev::BdevIo::new(IoType::Read, 0, 1);
        io.buffers.push(DataBuf::heap(BLOCK));
        handle.submit(ctx, io, &queue, 0);
        // Closes the layer channel and, with it, the device's queue pair while the read
        // is still posted for its modelled latency.
        drop(handle);
        ctx.poller_stats().into_iter().map(|stat| stat.name).collect::<Vec<_>>()
    });
    assert!(!after_close.contains(&"bdev_Nvme0".to_string()), "the layer channel's poller outlived it");
    assert!(after_close.contains(&"nvmesim_Nvme0".to_string()), "the posted read lost its poller: {after_close:?}");
    let deadline = Instant::now() + WAIT;
    while pollers(&harness).contains(&"nvmesim_Nvme0".to_string()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!pollers(&harness).contains(&"nvmesim_Nvme0".to_string()), "the detached poller never finished");
}
