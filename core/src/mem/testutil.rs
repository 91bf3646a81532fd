//! Test fixtures: one provider of each kind and helpers to build and read lists.

use super::cmb::{CmbConfig, EmulatedCmb};
use super::provider::P2pBuf;
use super::sgl::{SegRef, Sgl};
use super::tag::MemKind;
use super::{copy, fill};

const KIT_CMB_BYTES: usize = 1 << 20;

/// Providers for every kind: a strict IoMem CMB, two Device CMBs in separate domains,
/// and a Device CMB without a DMA engine.
pub(crate) struct Kit {
    pub(crate) iomem: EmulatedCmb,
    pub(crate) device: EmulatedCmb,
    pub(crate) device2: EmulatedCmb,
    pub(crate) no_dma: EmulatedCmb,
}

/// A buffer of some kind, owned by the test.
pub(crate) enum Buf {
    Host(Vec<u8>),
    P2p(P2pBuf),
}

impl Kit {
    pub(crate) fn new() -> Kit {
        let device_cfg = |name: &str, dma: bool| CmbConfig {
            cpu_mappable: false,
            dma_engine: dma,
            ..CmbConfig::new(name, KIT_CMB_BYTES)
        };
        Kit {
            iomem: EmulatedCmb::new(CmbConfig::new("kit-iomem", KIT_CMB_BYTES)).expect("cmb"),
            device: EmulatedCmb::new(device_cfg("kit-device", true)).expect("cmb"),
            device2: EmulatedCmb::new(device_cfg("kit-device2", true)).expect("cmb"),
            no_dma: EmulatedCmb::new(device_cfg("kit-nodma", false)).expect("cmb"),
        }
    }

    /// One zeroed buffer of `len` bytes per kind listed.
    pub(crate) fn buffers(&self, kinds: &[MemKind], len: usize) -> Vec<Buf> {
        kinds
            .iter()
            .map(|k| match k {
                MemKind::Host => Buf::Host(vec![0; len]),
                MemKind::IoMem | MemKind::Device => {
                    let cmb = if *k == MemKind::IoMem { &self.iomem } else { &self.device };
                    let mut b = cmb.alloc(len).expect("kit cmb room");
                    fill(&mut b.sgl_mut(), 0).expect("zero");
                    Buf::P2p(b)
                }
            })
            .collect()
    }

    /// Lists of kinds that each hold at least one non-Host segment (one device domain).
    pub(crate) fn non_host_combinations(&self) -> Vec<Vec<MemKind>> {
        use MemKind::{Device, Host, IoMem};
        vec![
            vec![IoMem],
            vec![Device],
            vec![Host, IoMem],
            vec![IoMem, Host],
            vec![Host, Device, Host],
            vec![Device, Device],
            vec![Host, Host, Host, Host, IoMem],
        ]
    }

    pub(crate) fn sgl(bufs: &[Buf]) -> Sgl<'_> {
        let mut sgl = Sgl::new();
        for b in bufs {
            let seg = match b {
                Buf::Host(v) => SegRef::host(v).expect("small"),
                Buf::P2p(p) => p.seg_ref(),
            };
            sgl.push(seg).expect("one domain");
        }
        sgl
    }

    pub(crate) fn sgl_mut(bufs: &mut [Buf]) -> Sgl<'_> {
        let mut sgl = Sgl::new();
        for b in bufs {
            let seg = match b {
                Buf::Host(v) => SegRef::host_mut(v).expect("small"),
                Buf::P2p(p) => p.seg_ref_mut(),
            };
            sgl.push(seg).expect("one domain");
        }
        sgl
    }

    fn pattern(i: usize, seed: u8) -> u8 {
        (i.wrapping_mul(31) ^ (i >> 8)).wrapping_add(seed as usize * 7) as u8
    }

    /// What [`Kit::fill_pattern`] writes into buffers of these kinds and length.
    pub(crate) fn expected_pattern(kinds: &[MemKind], len: usize, seed: u8) -> Vec<u8> {
        (0..kinds.len() * len).map(|i| Self::pattern(i, seed)).collect()
    }

    /// Writes a position-dependent pattern across all buffers, through `mem::copy`.
    pub(crate) fn fill_pattern(bufs: &mut [Buf], seed: u8) {
        let total: usize = bufs.iter().map(Buf::len).sum();
        let data: Vec<u8> = (0..total).map(|i| Self::pattern(i, seed)).collect();
        let mut sgl = Self::sgl_mut(bufs);
        copy(&mut sgl, &Sgl::from_host(&data).expect("host")).expect("fill pattern");
    }

    /// Every byte of the buffers, read back through `mem::copy`.
    pub(crate) fn read_all(bufs: &[Buf]) -> Vec<u8> {
        let sgl = Self::sgl(bufs);
        let mut out = vec![0u8; sgl.len()];
        copy(&mut Sgl::from_host_mut(&mut out).expect("host"), &sgl).expect("read back");
        out
    }
}

impl Buf {
    pub(crate) fn len(&self) -> usize {
        match self {
            Buf::Host(v) => v.len(),
            Buf::P2p(p) => p.len(),
        }
    }
}
