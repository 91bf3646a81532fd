#!/usr/bin/env bash
# Builds the fio ioengine (libpeerless_fio.so) on a fresh Debian 12 machine:
#   1. installs fio and the build tools when missing (apt);
#   2. fetches fio's own sources, the same version as the installed fio, with
#      `apt-get source` through a private sources list (no system file changes);
#   3. configures that tree once, for config-host.h (cached);
#   4. FIO_SRC=<tree> cargo build --release -p peerless-fio, with this script's arguments
#      (e.g. `--features rdma` for trtype=rdma filenames).
# A second run does only step 4, which cargo makes quick.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# 1. fio itself (its headers must match this binary exactly) and the tools to build.
missing=()
for package in fio dpkg-dev gcc make; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "build.sh: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# `fio --version` prints "fio-3.33"; the Debian package version (3.33-3) names the source.
fio_version="$(fio --version | sed 's/^fio-//')"
package_version="$(dpkg-query -W -f='${Version}' fio)"
case "$package_version" in
    "$fio_version"-*) ;;
    *) echo "build.sh: fio --version says $fio_version but the package is $package_version" >&2; exit 1 ;;
esac

# 2. Sources, through a private list and lists directory under build/fio-src.
src_root="$repo/build/fio-src"
tree="$src_root/fio-$fio_version"
if [ ! -f "$tree/fio.h" ]; then
    mkdir -p "$src_root/lists/partial"
    echo "deb-src http://deb.debian.org/debian bookworm main" > "$src_root/sources.list"
    apt_private=(-o "Dir::Etc::SourceList=$src_root/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$src_root/lists" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
    echo "build.sh: fetching fio $package_version sources into $src_root"
    apt-get "${apt_private[@]}" update -qq
    # --download-only then dpkg-source: no build-dependency checks, no build. apt has
    # checked the files against the signed Release file; dpkg-source would look for the
    # uploader's key, which is not installed, and only warn.
    (cd "$src_root" && apt-get "${apt_private[@]}" source -qq --download-only "fio=$package_version")
    (cd "$src_root" && rm -rf "$tree" && dpkg-source --no-check -x "fio_${package_version}.dsc" "$tree" >/dev/null)
fi

# 3. config-host.h, once. fio's configure only probes the compiler; nothing is built.
if [ ! -f "$tree/config-host.h" ]; then
    echo "build.sh: configuring $tree"
    (cd "$tree" && ./configure > "$src_root/configure.log" 2>&1) || {
        echo "build.sh: fio's configure failed; see $src_root/configure.log" >&2
        exit 1
    }
fi

# 4. The plugin.
export FIO_SRC="$tree"
cargo build --release --locked -p peerless-fio "$@"
target_dir="${CARGO_TARGET_DIR:-$repo/build}"
so="$target_dir/release/libpeerless_fio.so"
[ -f "$so" ] || { echo "build.sh: $so was not produced" >&2; exit 1; }
echo "build.sh: built $so"
echo "build.sh: run e.g. LD_PRELOAD=$so fio --ioengine=peerless_nvmf --thread=1 ..."
