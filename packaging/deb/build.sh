#!/usr/bin/env bash
# Builds the Debian package of Peerless with cargo-deb (configured in
# target/Cargo.toml, [package.metadata.deb]): peerless-tgt, peerless-rpc and
# peerless-perf in /usr/bin, the quickstart config as /etc/peerless/peerless-tgt.json
# (a conffile), the systemd unit peerless-tgt.service (this folder) with Debian's
# standard maintainer scripts, and the SPDK rpc.py plugin for Peerless's own methods.
#
# Usage: packaging/deb/build.sh [OUTPUT_DIR]    (default: build/)
# Installs cargo-deb (pinned) when missing, builds the release binaries, and prints the
# path of the .deb. Needs dpkg-dev (dpkg-shlibdeps) and binutils (strip, objcopy).
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo_deb_version=3.8.0
out_dir="${1:-build}"

if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
    cargo install --locked --quiet cargo-deb --version "$cargo_deb_version" >&2
fi
# The package takes binaries of two crates, so they are built here and cargo-deb only
# packs them.
cargo build --release --locked -p peerless-target -p peerless-tools \
    --bin peerless-tgt --bin peerless-rpc --bin peerless-perf >&2
mkdir -p "$out_dir"
# --strip: the release profile keeps line tables for profiling; the package does not.
cargo deb --locked -p peerless-target --no-build --strip --output "$out_dir" --quiet
