#!/usr/bin/env bash
# Starts peerless-tgt on the embedded default (examples/quickstart.json: a 256 MiB RAM
# namespace, nqn.2016-06.io.peerless:quickstart, over NVMe/TCP on 127.0.0.1:4420) on a
# fresh Debian or Ubuntu machine. It first installs what the build needs and is missing
# (a C toolchain, pkg-config and OpenSSL 3's headers with apt-get, Rust with rustup),
# then builds and runs the target in the foreground; Ctrl-C stops it. The RPC socket is
# $PEERLESS_RPC_SOCK (default /tmp/peerless.sock); extra arguments go to peerless-tgt.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v pkg-config >/dev/null || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "installing ${missing[*]}" >&2
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
    if [ ! -x "$HOME/.cargo/bin/cargo" ]; then
        echo "installing Rust (rustup, minimal profile)" >&2
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    fi
    export PATH="$HOME/.cargo/bin:$PATH"
fi
exec cargo run --release -p peerless-target --bin peerless-tgt -- \
    -c examples/quickstart.json -r "${PEERLESS_RPC_SOCK:-/tmp/peerless.sock}" "$@"
