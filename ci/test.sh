#!/usr/bin/env bash
# The project's test command (README.md). Installs what it needs on a fresh Debian 12
# machine, then: format check, clippy, build, every test (unit, end-to-end, tidy).
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

step "fuzz (bounded)"
# Each cargo-fuzz target for a short bounded time; bench/fuzz.sh runs them long.
bench/fuzz.sh "${FUZZ_SECONDS:-15}"

step "done"
