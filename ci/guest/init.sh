#!/bin/bash
# PID 1 of the guest (installed as /sbin/peerless-init by ci/guest/build.sh): mounts the
# 9p share "job" at /job (and, when run.sh offers it, the read-only share "peerless" of
# release binaries at /peerless), brings up QEMU's user network, runs /job/job.sh with its
# output in /job/out, records the exit status, and powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
for fd in 0 1 2; do ln -sf /proc/self/fd/$fd /dev/$(echo stdin stdout stderr | cut -d' ' -f$((fd + 1))); done
ln -sf /proc/self/fd /dev/fd
mount -t tmpfs tmpfs /run
hostname peerless-guest

echo "peerless-init: kernel $(uname -r)"
modprobe -a 9pnet_virtio 9p virtio_net
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 job /job; then
    echo "peerless-init: cannot mount the job share"
    echo o >/proc/sysrq-trigger
fi
mkdir -p /job/out
# The binaries share exists only in run.sh's PEERLESS_GUEST_TARGET=guest mode; each virtio
# 9p device names its tag in sysfs (NUL-terminated).
if cat /sys/bus/virtio/drivers/9pnet_virtio/virtio*/mount_tag 2>/dev/null | tr '\0' '\n' | grep -qx peerless; then
    mkdir -p /peerless
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro peerless /peerless ||
        echo "peerless-init: cannot mount the binaries share at /peerless"
fi

# QEMU user networking: the guest is 10.0.2.15, the host's forwards appear at 10.0.2.100.
ip link set lo up
dev=$(ls /sys/class/net | grep -v '^lo$' | head -1)
ip link set "$dev" up
ip addr add 10.0.2.15/24 dev "$dev"
ip route add default via 10.0.2.2

echo "peerless-init: running job"
start=$(date +%s)
cd /job
bash /job/job.sh >/job/out/job.log 2>&1
rc=$?
echo "peerless-init: job exited $rc after $(($(date +%s) - start)) s"
# Keep the job's output on the console too, so the console log alone tells the story.
sed 's/^/job| /' /job/out/job.log
echo "$rc" >/job/out/rc
sync
echo o >/proc/sysrq-trigger
sleep 10
