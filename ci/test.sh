#!/usr/bin/env bash
# The project's test command (README.md). Installs what it needs on a fresh Debian 12
# machine, then: format check, clippy, build, every test (unit, end-to-end, tidy), and fio
# with the plugin's engines.
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

step "fio plugin"
# Fetches fio's sources once (cached under build/fio-src), builds the release plugin, then
# runs fio with both engines and verify=crc32c; the test finds the .so in the same target dir.
bash tools/fio/build.sh
cargo test --locked -p peerless-fio --test fio_e2e -- --nocapture

step "done"
