#!/usr/bin/env bash
# The project's test command (README.md). Installs what it needs on a fresh Debian 12
# machine, then: format check, clippy, build, every test (unit, end-to-end, tidy), fio
# with the plugin's engines, SPDK's own Python clients, the Debian package, DPDK memory,
# Ceph RBD against a one-node cluster, and Linux's NVMe/TCP host against the target in a
# QEMU guest (ci/guest), alone, with native multipath over two targets on one RBD image,
# and authenticating with DH-HMAC-CHAP on Debian 12's 6.12 kernel; and the target run
# inside that guest, beside its soft-RoCE and kernel TLS.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=ci/lib.sh
source ci/lib.sh

step "disk space"
# A fresh clone's build dir, both guest images and the tests' scratch take about 12 GiB.
require_free_space 16384 "${CARGO_TARGET_DIR:-build}" "${TMPDIR:-/tmp}"

step "packages"
ensure_packages $(ci_packages)

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build"
# End-to-end tests run the binaries of other packages, so build them all first.
cargo build --workspace --all-targets --locked

step "cargo test"
cargo test --workspace --locked

step "simulation (release, 1M commands)"
# The deterministic simulation (target/tests/sim.rs) at length: 8 seeds of 125k commands
# from a fixed base seed, so a landing is judged on the same worlds every time; set
# SIM_BASE_SEED to explore others (bench/ or by hand). `cargo test` above ran the short
# fixed seeds. A failing seed prints the SIM_SEED=... line that reproduces it exactly.
SIM_BASE_SEED="${SIM_BASE_SEED:-20261205}"
echo "SIM_BASE_SEED=$SIM_BASE_SEED"
SIM_BASE_SEED="$SIM_BASE_SEED" SIM_SEEDS="${SIM_SEEDS:-8}" SIM_COMMANDS="${SIM_COMMANDS:-125000}" \
    cargo test --release --locked -p peerless-target --test sim -- swarm --nocapture

step "fio plugin"
# Fetches fio's sources once (cached under build/fio-src), builds the release plugin, then
# runs fio with both engines and verify=crc32c; the test finds the .so in the same target dir.
bash tools/fio/build.sh
cargo test --locked -p peerless-fio --test fio_e2e -- --nocapture

step "spdk clients"
# SPDK's own spdk-rpc and spdk-cli from PyPI (releases 25.5.1 and 26.9, a venv each under
# build/) drive every method a release peerless-tgt lists, save_config -> restart ->
# the same config, load_config, 26.x batches.
bash ci/spdk_clients.sh

step "debian package"
# Build the .deb with cargo-deb, dpkg -i it, systemd-analyze verify the unit, run its ExecStart,
# NVMe/TCP to it, SIGTERM, clean exit, remove and purge.
bash ci/deb.sh

# DPDK memory: bindgen over Debian's DPDK, the EAL started with
# --no-huge --no-pci --no-shconf (DPDK 22.11 refuses --in-memory with --no-huge).
# Needs no hugepages and no root.
step "dpdk: clippy with --features dpdk"
cargo clippy --locked -p spdk-sys -p peerless-core -p peerless-bdev -p peerless-target -p peerless-tools \
    --all-targets --features peerless-tools/dpdk,peerless-bdev/dpdk -- -D warnings

step "dpdk: tests with --features dpdk"
# The NVMe/TCP test runs the peerless-tgt binary, so it is built with DPDK first.
cargo build --locked -p peerless-target --features dpdk --bin peerless-tgt
cargo test --locked -p spdk-sys -p peerless-core --features peerless-core/dpdk
cargo test --locked -p peerless-bdev --features dpdk --test dpdk
cargo test --locked -p peerless-tools --features dpdk --test dpdk_e2e

step "rbd: clippy and tests with --features rbd"
# The Ceph RBD bdev (librbd through bindgen) against real one-node clusters that
# ci/ceph.sh starts (one monitor, one OSD on memstore): RPC refusals, verified I/O at
# 4 KiB to 1 MiB, peerless-perf --verify, fio's verify through the plugin built above,
# the OSD frozen and marked down under I/O then back, the op-timeout policy, save_config replayed.
cargo clippy --locked -p spdk-sys -p peerless-bdev -p peerless-target -p peerless-tools \
    --all-targets --features peerless-tools/rbd,peerless-bdev/rbd -- -D warnings
cargo build --locked -p peerless-target --features rbd --bin peerless-tgt
cargo test --locked -p peerless-bdev --features rbd --lib rbd
cargo test --locked -p peerless-tools --features rbd --test rbd_e2e -- --nocapture

step "rdma: clippy and tests with --features rdma"
# The NVMe/RDMA bindings (spdk-sys::rdma: bindgen over rdma-core, a C wrapper for verbs.h's
# inline calls, the safe layer). This machine has no RDMA device: the tests check the
# wrappers, the NVMe/RDMA private data, and that no device means empty lists and clear
# errors; the rdma_loopback example (run in a soft-RoCE guest) is built and its --help run.
# The NVMe/RDMA transport's options and work request ids, and `nvmf_create_transport -t
# RDMA` against a real peerless-tgt (no device: its listener is refused with the reason).
# The initiator's NVMe/RDMA side: its keyed SGL, private data, layout and refusals, and
# trtype rdma in perf's transport IDs and the fio engine's filenames.
cargo clippy --locked -p spdk-sys -p peerless-target -p peerless-tools -p peerless-fio --all-targets \
    --features peerless-tools/rdma,peerless-fio/rdma -- -D warnings
cargo test --locked -p spdk-sys --features rdma
cargo test --locked -p peerless-tools --features rdma --lib
cargo test --locked -p peerless-fio --features rdma --lib spec::
cargo test --locked -p peerless-target --features rdma --lib rdma::
cargo test --locked -p peerless-target --features rdma --test rdma_e2e
cargo build --locked -p spdk-sys --features rdma --example rdma_loopback
"${CARGO_TARGET_DIR:-build}/debug/examples/rdma_loopback" --help >/dev/null

step "fuzz (bounded)"
# Each cargo-fuzz target for a short bounded time; bench/fuzz.sh runs them long.
bench/fuzz.sh "${FUZZ_SECONDS:-15}"

step "guest lab: the NVMe byte pattern checker"
# ci/guest/nvme_pattern.py writes and checks the self-identifying pattern the NVMe PCIe
# guest jobs compare on the emulated SSDs' backing files (ci/guest/README.md). Seconds.
python3 -m unittest discover -s ci/guest -p 'test_*.py'

step "linux host interop"
# Linux's own NVMe/TCP host (nvme-tcp + nvme-cli in a QEMU guest) against a release
# peerless-tgt on loopback (ci/guest/README.md). The images are cached in build/guest.
cargo build --release --locked -p peerless-target
bash ci/guest/build.sh
bash ci/guest/run.sh ci/guest/jobs/interop.sh

step "peerless-tgt inside the guest: NVMe/TCP, soft-RoCE, kernel TLS"
# The release binaries shared read-only into the same guest image (run.sh's
# PEERLESS_GUEST_TARGET=guest): peerless-tgt runs there, peerless-perf --verify against it
# over the guest's eth0 address and loopback, and over TLS with the records in the guest
# kernel's tls.ko (kTLS) and then without; SIGTERM and a clean exit; then the kernel's
# soft-RoCE (rdma_rxe: rping and ib_write_bw over RDMA CM, then spdk-sys's verbs layer
# through its rdma_loopback example) for the coming NVMe/RDMA transport
# (ci/guest/README.md). About a minute.
cargo build --release --locked -p peerless-target -p peerless-tools --bin peerless-tgt --bin peerless-perf --bin peerless-rpc
cargo build --release --locked -p spdk-sys --features rdma --example rdma_loopback
PEERLESS_GUEST_TARGET=guest bash ci/guest/run.sh ci/guest/jobs/in-guest.sh

step "quickstart"
# README's first command (examples/quickstart.sh), started, used and stopped as a user would.
bash ci/quickstart.sh

step "linux host multipath over one RBD image"
# Two peerless-tgt (the rbd build above) export one Ceph RBD image as one namespace with
# ANA; Linux's native multipath in the guest sees two paths, the ANA states set over RPC,
# and fio verify carrying on while one target is SIGKILLed and restarted
# (ci/guest/README.md). About 2 minutes.
cargo build --locked -p peerless-target --features rbd --bin peerless-tgt
PEERLESS_GUEST_HOST=ci/guest/jobs/multipath.host.sh PEERLESS_TGT="${CARGO_TARGET_DIR:-build}/debug/peerless-tgt" \
    bash ci/guest/run.sh ci/guest/jobs/multipath.sh

step "linux host DH-HMAC-CHAP (bookworm's 6.12 kernel)"
# Debian 12's 6.1 kernel has no NVMe in-band authentication (CONFIG_NVME_HOST_AUTH);
# its 6.12 kernel package has. A second guest image boots that kernel, and nvme-cli
# connects with a host key and a controller key, both ways, and is refused with wrong
# or missing keys (ci/guest/auth.sh). About 3 minutes, most of it the image.
kernel_612=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9.]+\+deb12-amd64$' | awk '{print $1}' | sort -V | tail -1)
[ -n "$kernel_612" ] || { echo "no linux-image-6.12.*+deb12-amd64 package (apt-get update?)" >&2; exit 1; }
PEERLESS_GUEST_DIR=build/guest-6.12 PEERLESS_GUEST_KERNEL_PKG=$kernel_612 bash ci/guest/build.sh
PEERLESS_GUEST_DIR=build/guest-6.12 bash ci/guest/auth.sh

step "NVMe/RDMA over soft-RoCE: Linux's nvme-rdma host, then Peerless's own"
# Last, since it rebuilds the release binaries with the rdma feature: peerless-tgt's
# NVMe/RDMA transport in the guest (rxe0), Linux's nvme-rdma host discovering, connecting,
# writing and reading back with dd and fio verify at QD1 and QD32, a P2P namespace probed
# and falling back to host memory, ext4 across a remount, disconnecting; the pools full
# again; the target restarted under the host, which reconnects; a disconnect in the
# middle of fio; a second run with no_srq, stopped by SIGTERM under load; a clean kernel
# log (ci/guest/README.md). Then Peerless's own NVMe/RDMA host against it: peerless-perf
# identify (with and without discovery), --verify at 4 KiB and 128 KiB, QD1 and QD32,
# a refused connect, the fio engine (rebuilt with trtype=rdma) with verify=crc32c, a
# host frozen until its keep-alive expires and a host killed mid-write (queues and
# buffers all come back). About three minutes with the builds.
cargo build --release --locked -p peerless-target -p peerless-tools --features peerless-tools/rdma \
    --bin peerless-tgt --bin peerless-perf --bin peerless-rpc
PEERLESS_GUEST_TARGET=guest bash ci/guest/run.sh ci/guest/jobs/rdma.sh
bash tools/fio/build.sh --features rdma
PEERLESS_GUEST_TARGET=guest bash ci/guest/run.sh ci/guest/jobs/rdma-host.sh

step "the user-space NVMe PCIe driver on emulated SSDs"
# The same guest with two emulated SSDs (the first with a 64 MiB CMB) and a virtual IOMMU
# (ci/guest/README.md). First the lab itself: both SSDs bound to uio_pci_generic and
# vfio-pci, registers and the CMB read from user space, DMA on both routes by the lab's own
# small host (nvme_dma.py), and the CMB pitfall reproduced on purpose. Then peerless-tgt's
# driver: attach refusals, attach over both routes, NVMe/TCP in front with peerless-perf
# --verify from 4 KiB to 1 MiB (commands split at the SSDs' 512 KiB MDTS), Linux's nvme-tcp
# host writing a self-identifying pattern and reading it back, detach and re-attach, a
# namespace with its data in cmb0's CMB and one whose SSD reaches that CMB peer to peer
# (no payload byte in host memory), save_config replayed, SIGTERM with both controllers
# shut down, fio's peerless_bdev engine on the driver; after power-off the backing files
# are compared with what was written. Then peerless-perf driving the SSDs itself (trtype
# PCIe, in process): identify and --verify at 4 KiB, 128 KiB and 1 MiB over both routes,
# two cores, and its refusals. Last, since the fio engine is built for the RDMA step above.
# About four minutes.
lab_nvme=(PEERLESS_GUEST_TARGET=guest PEERLESS_GUEST_NVME="cmb0:cmb=64 peer0" PEERLESS_GUEST_IOMMU=1)
env "${lab_nvme[@]}" bash ci/guest/run.sh ci/guest/jobs/nvme-pcie.sh
# The driver's VFIO route maps DMA memory at IOVAs of its own: it runs on QEMU's default
# 39-bit IOMMU, too narrow for IOVA = VA.
env "${lab_nvme[@]}" PEERLESS_GUEST_IOMMU_AW_BITS=39 bash ci/guest/run.sh ci/guest/jobs/nvme-driver.sh
env "${lab_nvme[@]}" PEERLESS_GUEST_IOMMU_AW_BITS=39 bash ci/guest/run.sh ci/guest/jobs/nvme-perf.sh
# Its recovery: 12 controller resets under verified I/O, then each SSD removed from the bus
# under I/O (uio: gone from sysfs; VFIO: the kernel's device request). About a minute.
env "${lab_nvme[@]}" PEERLESS_GUEST_IOMMU_AW_BITS=39 bash ci/guest/run.sh ci/guest/jobs/nvme-faults.sh
# Command deadlines on an SSD QEMU throttles to 10 I/Os a second: overdue commands reset
# the controller (each I/O resubmitted at most 3 times) or are aborted, and with no
# deadline every I/O completes, verified. About a minute.
env PEERLESS_GUEST_TARGET=guest PEERLESS_GUEST_NVME="slow0:iops=10" PEERLESS_GUEST_IOMMU=1 PEERLESS_GUEST_IOMMU_AW_BITS=39 \
    bash ci/guest/run.sh ci/guest/jobs/nvme-timeout.sh
# Namespace changes through asynchronous events: an SSD in an NVM subsystem of its own with
# a second, detached namespace, attached and detached through bdev_nvme_send_cmd (Namespace
# Attachment) under verified I/O, the bdev appearing and going; again after a reset; and a
# SMART temperature warning logged. Under a minute.
env PEERLESS_GUEST_TARGET=guest PEERLESS_GUEST_NVME="aer0:ns=2" PEERLESS_GUEST_IOMMU=1 PEERLESS_GUEST_IOMMU_AW_BITS=39 \
    bash ci/guest/run.sh ci/guest/jobs/nvme-aer.sh

step "done"
