//! Bdev I/O on DPDK memory: with the DPDK environment started, a malloc bdev's media
//! and the I/O's data buffers all come from the EAL heap, and data written through one
//! comes back through the other. This process switches the backend for all its tests.
#![cfg(feature = "dpdk")]

mod harness;

use std::sync::{Arc, Once};

use harness::*;
use peerless_bdev::modules::malloc::MallocBdev;
use peerless_bdev::{BdevInfo, DataBuf, IoStatus, IoType, Uuid};
use peerless_core::mem::env::{self, EnvOptions, MemEnv};
use peerless_core::mem::{self, dpdk, registry, DmaBuf, MemTag, Sgl};

const BLOCK: usize = 512;

/// EAL as CI runs it: no hugepages, no PCI, no shared files.
fn dpdk_env() {
    static START: Once = Once::new();
    START.call_once(|| {
        let options = EnvOptions {
            env: MemEnv::Dpdk,
            no_huge: true,
            mem_size_mb: Some(256),
            extra_args: vec!["--log-level=lib.eal:error".into()],
            ..EnvOptions::default()
        };
        let info = env::start(&options).expect("EAL starts with --no-huge");
        assert_eq!(env::backend(), MemEnv::Dpdk);
        eprintln!("{info}");
    });
}

fn dma(bytes: &[u8]) -> DataBuf {
    let mut buf = DmaBuf::alloc(bytes.len()).expect("EAL heap");
    assert_eq!(buf.backend(), MemEnv::Dpdk);
    mem::copy(&mut buf.sgl_mut().expect("sgl"), &Sgl::from_host(bytes).expect("sgl")).expect("fill");
    DataBuf::Dma(buf)
}

fn bytes_of(buf: &DataBuf) -> Vec<u8> {
    let DataBuf::Dma(buf) = buf else { panic!("not a DMA buffer: {buf:?}") };
    let mut out = vec![0u8; buf.len()];
    mem::copy(&mut Sgl::from_host_mut(&mut out).expect("sgl"), &buf.sgl().expect("sgl")).expect("copy out");
    out
}

#[test]
fn dpdk_buffers_flow_through_a_malloc_bdev() {
    dpdk_env();
    let live = dpdk::live_buffers();
    let harness = Harness::new();
    let info = BdevInfo {
        name: "Malloc0".into(),
        product_name: "test".into(),
        block_size: BLOCK as u32,
        num_blocks: 8192,
        uuid: Uuid::random(),
        max_io_blocks: 0,
    };
    harness.bdevs.register(Arc::new(MallocBdev::new(info).expect("media"))).expect("register");
    assert!(dpdk::live_buffers() > live, "the bdev's media is DPDK memory");
    let desc = harness.open("Malloc0", true);
    for (offset, blocks) in [(0u64, 1u64), (7, 8), (100, 256), (4096, 2048)] {
        let data = pattern(offset, blocks, BLOCK, 9);
        let write = harness.run_one(&desc, Spec::new(IoType::Write, offset, blocks).with(dma(&data)));
        assert_eq!(write.status, IoStatus::SUCCESS, "write {offset}+{blocks}");
        let empty = vec![0u8; data.len()];
        let read = harness.run_one(&desc, Spec::new(IoType::Read, offset, blocks).with(dma(&empty)));
        assert_eq!(read.status, IoStatus::SUCCESS, "read {offset}+{blocks}");
        let DataBuf::Dma(buf) = &read.buffers[0] else { panic!("the read's buffer did not come back") };
        let seg = buf.seg_ref(0, buf.len()).expect("seg").seg();
        assert_eq!(registry::classify(seg.addr()), Some(MemTag::HOST));
        assert!(registry::translate(&seg).is_ok(), "the read landed in memory with a bus address");
        assert_eq!(bytes_of(&read.buffers[0]), data, "{offset}+{blocks}");
    }
}
