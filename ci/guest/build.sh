#!/usr/bin/env bash
# Builds, once, what ci/guest/run.sh boots: QEMU (Debian's qemu-system-x86, unpacked), a
# Debian 6.1 kernel with its modules, a busybox initramfs that loads the root disk's
# modules and switches root, and an ext4 root image (debootstrap minbase + nvme-cli, fio,
# and what a peerless-tgt run inside the guest needs: OpenSSL 3, soft-RoCE's user space).
#
# Everything goes under $PEERLESS_GUEST_DIR (default: build/guest; relative to the checkout). Each
# part has a stamp file holding its inputs; a part whose stamp matches is not rebuilt, so a
# second run takes seconds. Needs root (debootstrap, mkfs.ext4 -d keeping ownership) and
# the Debian packages in ci/packages.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
out=$(realpath -m "${PEERLESS_GUEST_DIR:-$repo/build/guest}")
mirror=${PEERLESS_GUEST_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
# libssl3: the release binaries link libssl.so.3/libcrypto.so.3 (run.sh's
# PEERLESS_GUEST_TARGET=guest runs them here); libibverbs1 and librdmacm1 for a build
# with the NVMe/RDMA transport. rdma-core .. perftest: soft-RoCE (rdma_rxe) and its checks,
# ibv_devices, rping, ib_write_bw; iproute2 brings the `rdma` tool.
guest_pkgs=nvme-cli,fio,kmod,iproute2,busybox-static,util-linux,libssl3,libibverbs1,librdmacm1,rdma-core,ibverbs-providers,ibverbs-utils,rdmacm-utils,perftest
# Module folders left out of the image: graphics, sound, wireless, media, input and RDMA
# hardware drivers are half the modules and the guest has none of those devices.
# drivers/infiniband/{core,sw,ulp} stay: ib_core, rdma_cm, ib_uverbs, rdma_ucm, rdma_rxe.
drop_modules="drivers/gpu drivers/media drivers/net/wireless sound drivers/infiniband/hw drivers/staging drivers/iio drivers/input drivers/hid drivers/bluetooth net/bluetooth net/wireless net/mac80211"
mkdir -p "$out"

log() { printf '[guest-build %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# stamp_ok NAME INPUTS: true when $out/NAME.stamp holds exactly INPUTS.
stamp_ok() { [ -f "$out/$1.stamp" ] && [ "$(cat "$out/$1.stamp")" = "$2" ]; }
stamp_set() { printf '%s' "$2" >"$out/$1.stamp"; }

# --- QEMU: `apt-get install qemu-system-x86` fails here (qemu-utils 10 from backports
# conflicts with qemu-system-common 7.2), so unpack the binary and its data; the shared
# libraries, seabios and ipxe-qemu come from ci/packages. The firmware folders go to -L,
# the accelerator module folder (qemu-system-common) to QEMU_MODULE_DIR.
qemu_ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
[ -n "$qemu_ver" ] && [ "$qemu_ver" != "(none)" ] || { echo "no qemu-system-x86 candidate (apt-get update?)" >&2; exit 1; }
if ! stamp_ok qemu "$qemu_ver+common" || [ ! -f "$out/qemu/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so" ]; then
    log "qemu $qemu_ver: download and unpack"
    rm -rf "$out/qemu" "$out/debs-qemu" && mkdir -p "$out/debs-qemu" "$out/qemu"
    (cd "$out/debs-qemu" && apt-get download -q "qemu-system-x86=$qemu_ver" "qemu-system-common=$qemu_ver" qemu-system-data 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    for deb in "$out"/debs-qemu/*.deb; do dpkg -x "$deb" "$out/qemu"; done
    "$out/qemu/usr/bin/qemu-system-x86_64" --version | head -1
    stamp_set qemu "$qemu_ver+common"
fi

# --- Kernel: the newest Debian 6.1 image package (linux-image-6.1.0-N-amd64).
kpkg=${PEERLESS_GUEST_KERNEL_PKG:-$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -1)}
[ -n "$kpkg" ] || { echo "no linux-image-6.1.0-*-amd64 package found (apt-get update?)" >&2; exit 1; }
kpkg_ver=$(apt-cache policy "$kpkg" | awk '/Candidate:/ {print $2}')
kver=${kpkg#linux-image-}
if ! stamp_ok kernel "$kpkg=$kpkg_ver" || [ ! -f "$out/kernel/boot/vmlinuz-$kver" ]; then
    log "kernel $kpkg $kpkg_ver: download, unpack, depmod"
    rm -rf "$out/kernel" "$out/debs-kernel" && mkdir -p "$out/debs-kernel" "$out/kernel"
    (cd "$out/debs-kernel" && apt-get download -q "$kpkg=$kpkg_ver" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    dpkg -x "$out"/debs-kernel/*.deb "$out/kernel"
    depmod -b "$out/kernel" "$kver"
    stamp_set kernel "$kpkg=$kpkg_ver"
fi
printf '%s\n' "$kver" >"$out/kernel.version"

# --- Root tree: debootstrap minbase with the host tools the jobs use.
tree_inputs="$suite $mirror $guest_pkgs"
if ! stamp_ok rootfs-tree "$tree_inputs" || [ ! -x "$out/rootfs/usr/sbin/nvme" ]; then
    log "debootstrap --variant=minbase $suite (+ $guest_pkgs): a few minutes"
    rm -rf "$out/rootfs"
    debootstrap --variant=minbase --include="$guest_pkgs" "$suite" "$out/rootfs" "$mirror" >"$out/debootstrap.log" 2>&1 ||
        { tail -30 "$out/debootstrap.log" >&2; echo "debootstrap failed: $out/debootstrap.log" >&2; exit 1; }
    rm -rf "$out/rootfs/var/cache/apt/archives/"*.deb "$out/rootfs/var/lib/apt/lists/"*
    stamp_set rootfs-tree "$tree_inputs"
fi

# --- Root image: the tree + the kernel's modules + our init, as ext4 (mkfs.ext4 -d: no
# loop mount). Rebuilt when the tree, the kernel or the init changes (seconds).
init_sum=$(sha256sum ci/guest/init.sh | cut -d' ' -f1)
img_inputs="$tree_inputs|$kpkg=$kpkg_ver|$init_sum|$drop_modules"
if ! stamp_ok rootfs-img "$img_inputs" || [ ! -f "$out/rootfs.img" ]; then
    log "root image: ext4 from the tree"
    rm -rf "$out/rootfs/lib/modules" && mkdir -p "$out/rootfs/lib/modules"
    cp -a "$out/kernel/lib/modules/$kver" "$out/rootfs/lib/modules/"
    for d in $drop_modules; do
        rm -rf "$out/rootfs/lib/modules/$kver/kernel/$d"
    done
    depmod -b "$out/rootfs" "$kver"
    install -m 0755 ci/guest/init.sh "$out/rootfs/sbin/peerless-init"
    mkdir -p "$out/rootfs/job" "$out/rootfs/peerless"
    echo peerless-guest >"$out/rootfs/etc/hostname"
    size_mb=$(($(du -sm "$out/rootfs" | cut -f1) * 13 / 10 + 256))
    rm -f "$out/rootfs.img.tmp"
    mkfs.ext4 -q -F -L peerless-root -d "$out/rootfs" "$out/rootfs.img.tmp" "${size_mb}M"
    mv "$out/rootfs.img.tmp" "$out/rootfs.img"
    stamp_set rootfs-img "$img_inputs"
fi

# --- Initramfs: static busybox (from the root tree) and the modules the root disk needs,
# in dependency order, uncompressed so busybox insmod takes them.
initrd_inputs="$kpkg=$kpkg_ver|$tree_inputs|$(sha256sum "$0" | cut -d' ' -f1)"
if ! stamp_ok initrd "$initrd_inputs" || [ ! -f "$out/initrd.cpio.gz" ]; then
    log "initramfs"
    ir="$out/initramfs"
    rm -rf "$ir" && mkdir -p "$ir"/{bin,dev,proc,sys,newroot,modules}
    cp "$out/rootfs/bin/busybox" "$ir/bin/busybox"
    n=0
    declare -A seen=()
    for m in crc32c_generic virtio_pci virtio_blk ext4; do
        while read -r verb path _; do
            [ "$verb" = insmod ] || continue
            [ -z "${seen[$path]:-}" ] || continue
            seen[$path]=1
            n=$((n + 1))
            base=$(basename "$path")
            base=${base%.xz}
            base=${base%.zst}
            dest="$ir/modules/$(printf '%02d' "$n")-$base"
            case "$path" in
            *.xz) xz -dc "$path" >"$dest" ;;
            *.zst) zstd -qdc "$path" >"$dest" ;;
            *) cp "$path" "$dest" ;;
            esac
        done < <(modprobe -d "$out/kernel" -S "$kver" --show-depends "$m")
    done
    cat >"$ir/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /modules/*.ko; do insmod "$m" 2>/dev/null || echo "initramfs: insmod $m failed"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
    echo "initramfs: cannot mount /dev/vda"; poweroff -f
fi
umount /proc /sys
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /sbin/peerless-init
EOF
    chmod 0755 "$ir/init"
    (cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1 >"$out/initrd.cpio.gz.tmp")
    mv "$out/initrd.cpio.gz.tmp" "$out/initrd.cpio.gz"
    stamp_set initrd "$initrd_inputs"
fi

ln -sf "kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
log "ready: $out (kernel $kver, qemu $qemu_ver)"
