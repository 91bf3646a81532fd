#!/usr/bin/env bash
# SPDK's own Python clients against a release peerless-tgt: for each SPDK release below,
# a venv under build/ with PyPI's `spdk` package (spdk-rpc, spdk-cli, the spdk.rpc
# library) and configshell-fb, which spdk-cli imports but the package does not declare;
# then ci/spdk_clients.py drives every method through them (see its docstring).
#
# Usage: ci/spdk_clients.sh [SPDK_VERSION...]   (default: 25.5.1 26.9)
set -euo pipefail
cd "$(dirname "$0")/.."


target_dir="${CARGO_TARGET_DIR:-build}"
versions=("$@")
[ "${#versions[@]}" -gt 0 ] || versions=(25.5.1 26.9)
# spdk-cli's shell library and its parser, pinned so a new release cannot change the run.
cli_requirements=(configshell-fb==2.0.3 pyparsing==3.3.3)

cargo build --release --locked -p peerless-target -p peerless-tools --bin peerless-tgt --bin peerless-perf

status=0
for version in "${versions[@]}"; do
    venv="build/spdk-$version"
    if [ ! -x "$venv/bin/spdk-rpc" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "spdk==$version" "${cli_requirements[@]}"
    fi
    "$venv/bin/python" ci/spdk_clients.py --tgt "$target_dir/release/peerless-tgt" \
        --perf "$target_dir/release/peerless-perf" || status=1
done
exit "$status"
