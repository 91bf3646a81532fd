//! bdev_uring (and bdev_aio on the same engine) on real reactors in interrupt mode,
//! against files under /var/tmp (a disk filesystem, so O_DIRECT holds): data paths with
//! aligned and unaligned buffers, the bytes on disk, flush/unmap/write_zeroes/reset,
//! more I/O than ring slots, hot-remove, claims, and the RPC methods.

mod harness;
mod poll_mode;
mod rpc_client;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::*;
use peerless_bdev::modules::uring::{Flavor, UringBdev, UringConfig};
use peerless_bdev::{BdevError, ClaimType, DataBuf, IoStatus, IoType};
use peerless_core::mem::{self, DmaBuf};
use rpc_client::Rpc;
use serde_json::json;

const BLOCK: usize = 512;
const FILE_BYTES: u64 = 4 << 20;
/// Opening a directory for writing fails in the kernel with EISDIR, before any check of ours.
const EISDIR: i32 = 21;

/// A file of `FILE_BYTES` under /var/tmp, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> TempFile {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let path = PathBuf::from(format!("/var/tmp/peerless-uring-{}-{tag}-{nanos}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(FILE_BYTES).unwrap();
        TempFile(path)
    }

    fn name(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let all = std::fs::read(&self.0).unwrap();
        all[offset as usize..offset as usize + len].to_vec()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn config(name: &str, file: &TempFile) -> UringConfig {
    UringConfig { name: name.into(), filename: file.name(), block_size: 0, uuid: None, flavor: Flavor::Uring }
}

fn uring(harness: &Harness, name: &str, file: &TempFile) {
    let bdev = UringBdev::open(config(name, file)).unwrap();
    assert!(bdev.is_direct(), "/var/tmp is a disk filesystem: O_DIRECT must hold");
    harness.bdevs.register(Arc::new(bdev)).unwrap();
}

/// A write whose payload sits in page-aligned DMA memory: O_DIRECT takes it as it is.
fn aligned_write(offset: u64, blocks: u64, seed: u8) -> Spec {
    let bytes = pattern(offset, blocks, BLOCK, seed);
    let mut buf = DmaBuf::alloc(bytes.len()).unwrap();
    mem::copy(&mut buf.sgl_mut().unwrap(), &mem::Sgl::from_host(&bytes).unwrap()).unwrap();
    Spec::new(IoType::Write, offset, blocks).with(DataBuf::Dma(buf))
}

fn dma_bytes(done: &Done) -> Vec<u8> {
    let mut out = Vec::new();
    for buffer in &done.buffers {
        match buffer {
            DataBuf::Dma(buf) => out.extend(buf.sgl().unwrap().cpu_view().unwrap().to_vec()),
            DataBuf::Heap(bytes) => out.extend_from_slice(bytes),
            other => panic!("unexpected buffer {other:?}"),
        }
    }
    out
}

#[test]
fn writes_reach_the_file_and_read_back_with_aligned_and_unaligned_buffers() {
    let file = TempFile::new("data");
    let harness = Harness::new();
    uring(&harness, "Uring0", &file);
    let desc = harness.open("Uring0", true);
    assert_eq!(desc.bdev().info().num_blocks, FILE_BYTES / BLOCK as u64);
    // Aligned DMA buffers go straight to the kernel.
    for (offset, blocks) in [(0, 8), (64, 1), (1000, 256)] {
        assert_ok(&harness.run_one(&desc, aligned_write(offset, blocks, 1)));
        let back = harness.run_one(
            &desc,
            Spec::new(IoType::Read, offset, blocks).with(DataBuf::Dma(DmaBuf::alloc(blocks as usize * BLOCK).unwrap())),
        );
        assert_ok(&back);
        assert_eq!(dma_bytes(&back), pattern(offset, blocks, BLOCK, 1), "{offset}+{blocks}");
        assert_eq!(file.bytes(offset * BLOCK as u64, blocks as usize * BLOCK), pattern(offset, blocks, BLOCK, 1));
    }
    // Heap buffers (not sector aligned, several segments) go through staging.
    let split = Spec::new(IoType::Write, 300, 3)
        .with(DataBuf::Heap(pattern(300, 1, BLOCK, 9).into_boxed_slice()))
        .with(DataBuf::Heap(pattern(301, 2, BLOCK, 9).into_boxed_slice()));
    assert_ok(&harness.run_one(&desc, split));
    for (offset, blocks) in [(2000, 1), (2001, 17), (4095, 1)] {
        assert_ok(&harness.run_one(&desc, patterned_write(offset, blocks, BLOCK, 5)));
    }
    let back = harness.run_one(&desc, read(300, 3, BLOCK));
    assert_ok(&back);
    let mut expected = pattern(300, 1, BLOCK, 9);
    expected.extend(pattern(301, 2, BLOCK, 9));
    assert_eq!(back.bytes(), expected);
    assert_eq!(file.bytes(300 * BLOCK as u64, 3 * BLOCK), expected, "the bytes on disk");
    for (offset, blocks) in [(2000, 1), (2001, 17), (4095, 1)] {
        let back = harness.run_one(&desc, read(offset, blocks, BLOCK));
        assert_eq!(back.bytes(), pattern(offset, blocks, BLOCK, 5), "{offset}+{blocks}");
    }
    assert_eq!(file.bytes(2001 * BLOCK as u64, 17 * BLOCK), pattern(2001, 17, BLOCK, 5));
}

#[test]
fn buffers_larger_than_the_io_move_only_its_blocks_with_o_direct() {
    let harness = Harness::new();
    let mut files = Vec::new();
    for block_size in [512u32, 4096] {
        let file = TempFile::new(&format!("oversized-{block_size}"));
        let name = format!("Uring{block_size}");
        let bdev = UringBdev::open(UringConfig { block_size, ..config(&name, &file) }).unwrap();
        assert!(bdev.is_direct(), "/var/tmp is a disk filesystem: O_DIRECT must hold");
        harness.bdevs.register(Arc::new(bdev)).unwrap();
        let desc = harness.open(&name, true);
        // Aligned DMA memory goes to the kernel as it is; heap memory through staging.
        let media = |offset, len| Some(file.bytes(offset, len));
        check_buffers_larger_than_the_io(&harness, &desc, &[Memory::Dma, Memory::Heap], &media);
        files.push(file);
    }
}

#[test]
fn more_io_than_ring_slots_all_complete() {
    let file = TempFile::new("depth");
    let harness = Harness::new();
    uring(&harness, "Uring0", &file);
    let desc = harness.open("Uring0", true);
    // 512 at once against 128 slots: the rest wait for "no resources" retries.
    let writes: Vec<_> = (0..512).map(|index| patterned_write(index * 8, 8, BLOCK, 3)).collect();
    let done = harness.run(&desc, writes);
    assert_eq!(done.len(), 512);
    assert!(done.iter().all(|(_, io)| io.status == IoStatus::SUCCESS));
    let reads: Vec<_> = (0..512).map(|index| read(index * 8, 8, BLOCK)).collect();
    for (index, io) in harness.run(&desc, reads) {
        assert_eq!(io.bytes(), pattern(index as u64 * 8, 8, BLOCK, 3), "read {index}");
    }
    // Everything came back on one thread: nothing is left in flight.
    let in_flight = harness.on_thread({
        let desc = desc.clone();
        move |ctx| desc.channel(ctx).in_flight()
    });
    assert_eq!(in_flight, 0);
}

#[test]
fn flush_unmap_write_zeroes_and_reset() {
    let file = TempFile::new("ops");
    let harness = Harness::new();
    uring(&harness, "Uring0", &file);
    let desc = harness.open("Uring0", true);
    for io_type in [IoType::Unmap, IoType::WriteZeroes] {
        assert_ok(&harness.run_one(&desc, patterned_write(16, 16, BLOCK, 7)));
        assert_ok(&harness.run_one(&desc, Spec::new(io_type, 16, 16)));
        assert!(harness.run_one(&desc, read(16, 16, BLOCK)).bytes().iter().all(|b| *b == 0), "{io_type:?}");
        assert!(file.bytes(16 * BLOCK as u64, 16 * BLOCK).iter().all(|b| *b == 0), "{io_type:?} on disk");
    }
    assert_ok(&harness.run_one(&desc, patterned_write(40, 4, BLOCK, 2)));
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Flush, 0, 0)));
    // A reset sent with writes completes, and after them.
    let mut batch: Vec<_> = (0..8).map(|index| patterned_write(100 + index, 1, BLOCK, 4)).collect();
    batch.push(Spec::new(IoType::Reset, 0, 0));
    let done = harness.run(&desc, batch);
    assert!(done.iter().all(|(_, io)| io.status == IoStatus::SUCCESS));
    assert_eq!(done.last().map(|(tag, _)| *tag), Some(8), "the reset finished last");
    // I/O sent after a reset does not hold it back, but what came before it does.
    let mut batch: Vec<_> = (0..4).map(|index| patterned_write(200 + index, 1, BLOCK, 4)).collect();
    batch.push(Spec::new(IoType::Reset, 0, 0));
    batch.extend((0..4).map(|index| patterned_write(300 + index, 1, BLOCK, 4)));
    let done = harness.run(&desc, batch);
    assert!(done.iter().all(|(_, io)| io.status == IoStatus::SUCCESS));
    let reset_at = done.iter().position(|(tag, _)| *tag == 4).unwrap();
    assert!(done[..reset_at].iter().filter(|(tag, _)| *tag < 4).count() == 4, "the reset overtook earlier writes");
    let compare = Spec::new(IoType::Compare, 0, 1).with(DataBuf::heap(BLOCK));
    assert_eq!(harness.run_one(&desc, compare).status, IoStatus::INVALID_OPCODE);
    assert_eq!(harness.run_one(&desc, read(8192, 1, BLOCK)).status, IoStatus::LBA_OUT_OF_RANGE);
}

#[test]
fn a_reset_waits_for_writes_the_ring_had_no_staging_for() {
    let file = TempFile::new("reset-retry");
    let harness = Harness::new();
    uring(&harness, "Uring0", &file);
    let desc = harness.open("Uring0", true);
    // Each write's block in two half-block buffers, which O_DIRECT cannot take: every
    // write needs a staging buffer, a channel holds 32, so the rest wait for retry in
    // the layer. The reset behind them must finish after them all.
    let writes = 48u64;
    let mut batch: Vec<_> = (0..writes)
        .map(|block| {
            let bytes = pattern(block, 1, BLOCK, 6);
            Spec::new(IoType::Write, block, 1)
                .with(DataBuf::Heap(bytes[..BLOCK / 2].into()))
                .with(DataBuf::Heap(bytes[BLOCK / 2..].into()))
        })
        .collect();
    batch.push(Spec::new(IoType::Reset, 0, 0));
    let done = harness.run(&desc, batch);
    assert!(done.iter().all(|(_, io)| io.status == IoStatus::SUCCESS), "{done:?}");
    assert_eq!(done.last().map(|(tag, _)| *tag), Some(writes as usize), "the reset finished before a write");
    assert_eq!(file.bytes(0, writes as usize * BLOCK), pattern(0, writes, BLOCK, 6));
}

#[test]
fn delete_while_open_reaches_the_descriptor_and_claims_conflict() {
    let file = TempFile::new("remove");
    let harness = Harness::new();
    uring(&harness, "Uring0", &file);
    let owner = harness.bdevs.open("Uring0", true, None, None).unwrap();
    owner.claim(ClaimType::ExclusiveWrite, "test owner").unwrap();
    let refused = harness.bdevs.open("Uring0", true, None, None).err().expect("claimed");
    assert!(matches!(refused, BdevError::Claimed { .. }), "{refused}");
    drop(owner);
    let heard = Arc::new(AtomicBool::new(false));
    let flag = heard.clone();
    let on_remove = Box::new(move |_: &mut peerless_core::reactor::ThreadCtx| flag.store(true, Ordering::SeqCst));
    let desc = Arc::new(harness.bdevs.open("Uring0", true, Some(harness.thread.clone()), Some(on_remove)).unwrap());
    assert_ok(&harness.run_one(&desc, patterned_write(0, 1, BLOCK, 0)));
    harness.bdevs.unregister(None, "Uring0").unwrap();
    let deadline = Instant::now() + WAIT;
    while !heard.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(heard.load(Ordering::SeqCst), "the hot-remove event did not reach the descriptor");
    assert_eq!(harness.run_one(&desc, read(0, 1, BLOCK)).status, IoStatus::INVALID_NAMESPACE);
}

#[test]
fn rpc_creates_saves_and_deletes_uring_and_aio_bdevs() {
    let file = TempFile::new("rpc");
    let harness = Harness::new();
    let rpc = Rpc::new(&harness);
    let created = rpc.call(&harness, "bdev_uring_create", json!({"filename": file.name(), "name": "Uring0"}));
    assert_eq!(created.unwrap(), json!("Uring0"));
    let bdev = harness.bdevs.get("Uring0").unwrap();
    assert_eq!(bdev.info().product_name, "URING bdev");
    assert_eq!(bdev.info().block_size, 512, "a file defaults to 512-byte blocks");
    assert_eq!(bdev.driver_specific(), json!({"uring": {"filename": file.name()}}));
    let saved = bdev.config_entry().unwrap();
    assert_eq!(saved["method"], "bdev_uring_create");
    assert_eq!(saved["params"]["filename"], json!(file.name()));

    let duplicate = rpc.call(&harness, "bdev_uring_create", json!({"filename": file.name(), "name": "Uring0"}));
    assert_eq!(duplicate.unwrap_err().code, -17);
    let missing = rpc.call(&harness, "bdev_uring_create", json!({"filename": "/var/tmp/no/such", "name": "U1"}));
    assert_eq!(missing.unwrap_err().code, -2, "ENOENT");
    let unknown = rpc.call(&harness, "bdev_uring_create", json!({"filename": file.name(), "name": "U1", "x": 1}));
    assert_eq!(unknown.unwrap_err().code, -32602);
    assert!(rpc.call(&harness, "bdev_aio_delete", json!({"name": "Uring0"})).is_err(), "not an aio bdev");
    assert_eq!(rpc.call(&harness, "bdev_uring_delete", json!({"name": "Uring0"})).unwrap(), json!(true));

    // SPDK's aio parameters, as rpc.py sends them; read-only refuses writes.
    let params = json!({"name": "Aio0", "filename": file.name(), "block_size": 4096,
        "readonly": true, "fallocate": false, "nowait": false});
    assert_eq!(rpc.call(&harness, "bdev_aio_create", params).unwrap(), json!("Aio0"));
    let aio = harness.bdevs.get("Aio0").unwrap();
    assert_eq!((aio.info().product_name.as_str(), aio.info().block_size), ("AIO disk", 4096));
    assert_eq!(aio.config_entry().unwrap()["params"]["readonly"], json!(true));
    let desc = harness.open("Aio0", true);
    let write = Spec::new(IoType::Write, 0, 1).with(DataBuf::heap(4096));
    assert_eq!(harness.run_one(&desc, write).status, IoStatus::INVALID_OPCODE);
    assert_eq!(harness.run_one(&desc, Spec::new(IoType::Unmap, 0, 1)).status, IoStatus::INVALID_OPCODE);
    assert_ok(&harness.run_one(&desc, read(0, 1, 4096)));
    drop(desc);
    assert_eq!(rpc.call(&harness, "bdev_aio_delete", json!({"name": "Aio0"})).unwrap(), json!(true));
}

#[test]
fn poll_mode_reaps_without_an_eventfd() {
    let file = TempFile::new("poll");
    let harness = poll_mode::harness();
    uring(&harness, "Uring0", &file);
    let desc = harness.open("Uring0", true);
    let writes: Vec<_> = (0..200).map(|index| patterned_write(index * 2, 2, BLOCK, 11)).collect();
    assert!(harness.run(&desc, writes).iter().all(|(_, io)| io.status == IoStatus::SUCCESS));
    assert_ok(&harness.run_one(&desc, aligned_write(1000, 8, 12)));
    assert_ok(&harness.run_one(&desc, Spec::new(IoType::Flush, 0, 0)));
    assert_eq!(file.bytes(0, 400 * BLOCK), pattern(0, 400, BLOCK, 11));
    assert_eq!(file.bytes(1000 * BLOCK as u64, 8 * BLOCK), pattern(1000, 8, BLOCK, 12));
}

#[test]
fn tmpfs_files_work_direct_or_buffered() {
    // tmpfs refused O_DIRECT at open before Linux 6.6 (the module then falls back to
    // buffered I/O); newer kernels accept it. Either way the data must be right.
    let path = PathBuf::from(format!("/dev/shm/peerless-uring-{}-buffered", std::process::id()));
    if std::fs::File::create(&path).and_then(|file| file.set_len(1 << 20)).is_err() {
        // No tmpfs here: the fallback cannot be exercised, and the O_DIRECT tests cover the rest.
        return;
    }
    let file = TempFile(path);
    let bdev = UringBdev::open(config("Shm0", &file)).unwrap();
    let harness = Harness::new();
    harness.bdevs.register(Arc::new(bdev)).unwrap();
    let desc = harness.open("Shm0", true);
    assert_ok(&harness.run_one(&desc, patterned_write(5, 3, BLOCK, 1)));
    assert_eq!(harness.run_one(&desc, read(5, 3, BLOCK)).bytes(), pattern(5, 3, BLOCK, 1));
    assert_eq!(file.bytes(5 * BLOCK as u64, 3 * BLOCK), pattern(5, 3, BLOCK, 1));
}

#[test]
fn tmpfs_files_move_only_the_io_length_of_larger_buffers() {
    // Direct or buffered as the kernel allows (see above); the module's unit tests cover a
    // buffered file whatever the kernel.
    let path = PathBuf::from(format!("/dev/shm/peerless-uring-{}-oversized", std::process::id()));
    if std::fs::File::create(&path).and_then(|file| file.set_len(1 << 20)).is_err() {
        return;
    }
    let file = TempFile(path);
    let harness = Harness::new();
    harness.bdevs.register(Arc::new(UringBdev::open(config("Shm0", &file)).unwrap())).unwrap();
    let desc = harness.open("Shm0", true);
    let media = |offset, len| Some(file.bytes(offset, len));
    check_buffers_larger_than_the_io(&harness, &desc, &[Memory::Dma, Memory::Heap], &media);
}

#[test]
fn create_refuses_what_is_not_a_usable_file() {
    let directory = UringConfig { filename: "/var/tmp".into(), ..config("Dir0", &TempFile::new("cfg")) };
    assert_eq!(UringBdev::open(directory).err().map(|err| err.code), Some(-EISDIR));
    let tiny = TempFile::new("tiny");
    std::fs::File::options().write(true).open(&tiny.0).unwrap().set_len(100).unwrap();
    let harness = Harness::new();
    let refused = peerless_bdev::modules::uring::create(&harness.bdevs, config("Tiny0", &tiny));
    assert!(refused.is_err(), "a file smaller than one block makes no bdev");
    let bad_uuid = UringConfig { uuid: Some("not-a-uuid".into()), ..config("U0", &tiny) };
    assert_eq!(UringBdev::open(bad_uuid).err().map(|err| err.code), Some(-32602));
}
