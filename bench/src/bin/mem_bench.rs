//! Tagged memory and accel figures: crc32c GB/s on host memory against the `crc32c`
//! crate and through the IoMem path, copy GB/s between host and an emulated CMB, and Sgl
//! iteration cost per segment.
//!
//! Runs are interleaved A B B A ... so drift (turbo, other load on the machine) hits
//! both sides alike; each figure is the median of its runs.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::Instant;

use peerless_core::accel;
use peerless_core::mem::{self, CmbConfig, EmulatedCmb, SegRef, SgMiter, Sgl};

/// A/B pairs per comparison (each pair runs A B then B A).
const ROUNDS: usize = 8;
/// Bytes processed per timed run, so each run lasts a few milliseconds.
const RUN_BYTES: usize = 256 << 20;
const CRC_BUF_BYTES: usize = 64 << 10;
const COPY_BUF_BYTES: usize = 1 << 20;
const CMB_BYTES: usize = 4 << 20;
const ITER_SEGS: usize = mem::SGL_MAX_SEGS;
const ITER_RUNS: usize = 20_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// GB/s of `f` run over `bytes` per call until `RUN_BYTES` are done.
fn gbps(bytes: usize, mut f: impl FnMut()) -> f64 {
    let iters = (RUN_BYTES / bytes).max(1);
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    (iters * bytes) as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Medians of A and B over interleaved rounds.
fn ab(bytes: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    // Warm caches, tables and the CPU's clock.
    gbps(bytes, &mut a);
    gbps(bytes, &mut b);
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ra.push(gbps(bytes, &mut a));
        rb.push(gbps(bytes, &mut b));
        rb.push(gbps(bytes, &mut b));
        ra.push(gbps(bytes, &mut a));
    }
    (median(ra), median(rb))
}

fn row(what: &str, a_name: &str, a: f64, b_name: &str, b: f64) {
    println!("{what:<34} {a_name:>22} {a:>7.2} GB/s   {b_name:>22} {b:>7.2} GB/s   ratio {:.3}", a / b);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data: Vec<u8> = (0..COPY_BUF_BYTES).map(|i| (i * 131 + i / 251) as u8).collect();
    let crc_data = &data[..CRC_BUF_BYTES];
    if accel::crc32c_bytes(crc_data, 0) != crc32c::crc32c(crc_data) {
        return Err("peerless and the crc32c crate disagree".into());
    }
    println!("mem_bench: medians of {} interleaved runs each (A B B A)", 2 * ROUNDS);
    println!();

    // crc32c on host memory.
    let (ours, theirs) = ab(
        CRC_BUF_BYTES,
        || {
            black_box(accel::crc32c_bytes(black_box(crc_data), 0));
        },
        || {
            black_box(crc32c::crc32c(black_box(crc_data)));
        },
    );
    row("crc32c host 64 KiB", "peerless", ours, "crc32c crate", theirs);
    let small = &data[..4096];
    let (ours4k, theirs4k) = ab(
        small.len(),
        || {
            black_box(accel::crc32c_bytes(black_box(small), 0));
        },
        || {
            black_box(crc32c::crc32c(black_box(small)));
        },
    );
    row("crc32c host 4 KiB", "peerless", ours4k, "crc32c crate", theirs4k);

    // crc32c through the gate: a host Sgl versus the same bytes in a strict CMB.
    let cmb = EmulatedCmb::new(CmbConfig::new("bench-cmb", CMB_BYTES))?;
    let mut cmb_buf = cmb.alloc(COPY_BUF_BYTES)?;
    mem::copy(&mut cmb_buf.sgl_mut(), &Sgl::from_host(&data)?)?;
    let host_sgl = Sgl::from_host(crc_data)?;
    let cmb_sgl_all = cmb_buf.sgl();
    let cmb_sgl = cmb_sgl_all.sub(0, CRC_BUF_BYTES)?;
    let mut cmb_dst = cmb.alloc(COPY_BUF_BYTES)?;
    let expect = accel::crc32c(&host_sgl, 0)?;
    if accel::crc32c(&cmb_sgl, 0)? != expect {
        return Err("IoMem crc32c disagrees with host".into());
    }
    let (iomem, host) = ab(
        CRC_BUF_BYTES,
        || {
            black_box(accel::crc32c(&cmb_sgl, 0).ok());
        },
        || {
            black_box(accel::crc32c(&host_sgl, 0).ok());
        },
    );
    row("crc32c Sgl 64 KiB", "IoMem (accessors)", iomem, "Host", host);
    println!();

    // Copies: host->host against a plain slice copy, then to and from the CMB.
    let mut dst = vec![0u8; COPY_BUF_BYTES];
    let (sgl_copy, slice_copy) = {
        let src = Sgl::from_host(&data)?;
        let mut other = vec![0u8; COPY_BUF_BYTES];
        ab(
            COPY_BUF_BYTES,
            || {
                let mut d = Sgl::from_host_mut(&mut dst).expect("1 MiB fits one segment");
                black_box(mem::copy(&mut d, &src).ok());
            },
            || {
                other.copy_from_slice(black_box(&data));
                black_box(&other);
            },
        )
    };
    row("copy host->host 1 MiB", "mem::copy", sgl_copy, "copy_from_slice", slice_copy);
    let src = Sgl::from_host(&data)?;
    let (to_cmb, from_cmb) = ab(
        COPY_BUF_BYTES,
        || {
            black_box(mem::copy(&mut cmb_dst.sgl_mut(), &src).ok());
        },
        || {
            let mut d = Sgl::from_host_mut(&mut dst).expect("1 MiB fits one segment");
            black_box(mem::copy(&mut d, &cmb_sgl_all).ok());
        },
    );
    drop(cmb_sgl);
    row("copy host<->CMB 1 MiB", "host->CMB", to_cmb, "CMB->host", from_cmb);
    println!(
        "{:<34} host->CMB / host->host {:.3}, CMB->host / host->host {:.3}",
        "",
        to_cmb / sgl_copy,
        from_cmb / sgl_copy
    );
    println!();

    // Sgl iteration: segments of 512 bytes, not adjacent so they do not merge.
    let backing = vec![0u8; ITER_SEGS * 1024];
    let mut sgl = Sgl::new();
    for piece in backing.chunks(1024) {
        sgl.push(SegRef::host(&piece[..512])?)?;
    }
    let run = |f: &dyn Fn(&Sgl<'_>) -> usize| {
        let start = Instant::now();
        let mut total = 0;
        for _ in 0..ITER_RUNS {
            total += f(black_box(&sgl));
        }
        black_box(total);
        start.elapsed().as_nanos() as f64 / (ITER_RUNS * ITER_SEGS) as f64
    };
    let mut desc = Vec::new();
    let mut miter = Vec::new();
    let mut view = Vec::new();
    for _ in 0..ROUNDS {
        desc.push(run(&|s| s.iter().map(|g| g.len()).sum()));
        miter.push(run(&|s| SgMiter::new(s).filter_map(|c| c.ok()).map(|c| c.len()).sum()));
        view.push(run(&|s| s.cpu_view().map(|v| v.slices().map(<[u8]>::len).sum()).unwrap_or(0)));
    }
    println!(
        "Sgl iteration ({ITER_SEGS} segs)  descriptors {:.2} ns/seg   SgMiter {:.2} ns/seg   CpuView slices {:.2} ns/seg",
        median(desc),
        median(miter),
        median(view)
    );
    let stats = mem::stats::snapshot();
    println!();
    println!(
        "stats: host {} MB, iomem {} MB, cpu direct {} MB, io_accessor {} MB, bounce {} MB, dma {} MB, refusals {}",
        stats.host_bytes >> 20,
        stats.iomem_bytes >> 20,
        stats.cpu_direct_bytes >> 20,
        stats.cpu_io_accessor_bytes >> 20,
        stats.cpu_bounce_bytes >> 20,
        stats.dma_bytes >> 20,
        stats.refusals
    );
    Ok(())
}
