#!/usr/bin/env bash
# The project's test command (README.md). Installs what it needs on a fresh Debian 12
# machine, then: format check, clippy, build, every test (unit, end-to-end, tidy), and
# Linux's NVMe/TCP host against the target in a QEMU guest (ci/guest).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=ci/lib.sh
source ci/lib.sh

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

step "linux host interop"
# Linux's own NVMe/TCP host (nvme-tcp + nvme-cli in a QEMU guest) against a release
# peerless-tgt on loopback (ci/guest/README.md). The images are cached in build/guest.
cargo build --release --locked -p peerless-target
bash ci/guest/build.sh
bash ci/guest/run.sh ci/guest/jobs/interop.sh

step "done"
