#!/bin/bash
# Guest job (ci/guest/run.sh runs it as PID 1's child): Linux's own NVMe/TCP host (the
# nvme-tcp driver and nvme-cli) against peerless-tgt on the host, reached at
# $TGT_ADDR:$TGT_PORT. Every step must pass; the first failure ends the job non-zero.
# /job/env (written by run.sh from the target's config) names what Linux must find.
set -euo pipefail
source /job/env
addr=$TGT_ADDR
port=$TGT_PORT
nqn=$TGT_NQN
want_bytes=$((TGT_NUM_BLOCKS * TGT_BLOCK_SIZE))
t0=$(date +%s)

step() { printf '\n=== %s (+%ss)\n' "$*" "$(($(date +%s) - t0))"; }
fail() {
    echo "FAIL: $*"
    echo "--- kernel log (nvme)"
    dmesg | grep -i -E 'nvme|tcp' | tail -40 || true
    exit 1
}
trap 'fail "line $LINENO: $BASH_COMMAND exited $?"' ERR
trim() { sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//'; }
# field FILE NAME: the value of "NAME : value" in nvme-cli's normal output.
field() { awk -F: -v k="$2" '{ key=$1; gsub(/[ \t]+/, "", key) } key == k { sub(/^[^:]*:[ \t]*/, ""); print; exit }' "$1" | trim; }
expect_eq() { [ "$2" = "$3" ] || fail "$1: Linux sees '$2', the target configured '$3'"; echo "ok: $1 = '$2'"; }

ctrl="" dev=""
wait_connected() {
    ctrl="" dev=""
    local i c
    for i in $(seq 100); do
        for c in /sys/class/nvme/nvme*; do
            [ -e "$c/subsysnqn" ] || continue
            [ "$(cat "$c/subsysnqn")" = "$nqn" ] || continue
            [ "$(cat "$c/state")" = live ] || continue
            ctrl=/dev/$(basename "$c")
        done
        dev=$(ls /dev/nvme*n1 2>/dev/null | grep -E '^/dev/nvme[0-9]+n1$' | head -1 || true)
        [ -n "$ctrl" ] && [ -n "$dev" ] && [ -b "$dev" ] && return 0
        sleep 0.2
    done
    fail "no live controller for $nqn with a namespace after 20 s (ctrl='$ctrl' dev='$dev')"
}

disconnect() {
    step "nvme disconnect -n $nqn"
    nvme disconnect -n "$nqn" | tee /tmp/disc.out
    grep -q 'disconnected 1 controller' /tmp/disc.out || fail "disconnect did not report one controller"
    local i
    for i in $(seq 50); do [ -e "$dev" ] || return 0; sleep 0.2; done
    fail "$dev still present 10 s after disconnect"
}

# Reads COUNT MiB at MiB offset SKIP of the namespace and prints their sha256.
sha_of() { dd if="$dev" bs=1M skip="$1" count="$2" iflag=direct status=none | sha256sum | cut -d' ' -f1; }

step "host identity and nvme-tcp"
mkdir -p /etc/nvme
# QEMU's DMI product UUID is all zeros unless set, so make the host identity unique here.
hostid=$(cat /proc/sys/kernel/random/uuid)
echo "nqn.2014-08.org.nvmexpress:uuid:$hostid" >/etc/nvme/hostnqn
echo "$hostid" >/etc/nvme/hostid
cat /etc/nvme/hostnqn
nvme version
modprobe nvme-tcp
lsmod | grep -E '^nvme_tcp'

step "nvme discover -t tcp -a $addr -s $port"
nvme discover -t tcp -a "$addr" -s "$port" | tee /tmp/discover.out
grep -q "subnqn: *$nqn\$" /tmp/discover.out || fail "discovery log does not list $nqn"
grep -q 'trtype: *tcp' /tmp/discover.out || fail "discovery log entry is not trtype tcp"

pattern_sha=""
for round in plain digests; do
    opts=()
    [ "$round" = digests ] && opts=(--hdr-digest --data-digest)
    step "round '$round': nvme connect -t tcp -a $addr -s $port -n $nqn ${opts[*]}"
    nvme connect -t tcp -a "$addr" -s "$port" -n "$nqn" "${opts[@]}" | tee /tmp/connect.out
    wait_connected
    echo "controller $ctrl, namespace $dev"
    sysfs=/sys/class/nvme/$(basename "$ctrl")
    for f in transport address state serial model firmware_rev subsysnqn queue_count sqsize kato cntlid; do
        printf '%-14s %s\n' "$f" "$(cat "$sysfs/$f" 2>/dev/null || echo -)"
    done
    expect_eq "sysfs transport" "$(cat "$sysfs/transport")" tcp
    # The run folder is /job, so the target's log (-L nvmf_tcp) says what it negotiated.
    if grep -q 'ICReq, digests' /job/target.log 2>/dev/null; then
        want='header: false, data: false'
        [ "$round" = digests ] && want='header: true, data: true'
        got=$(grep 'ICReq, digests' /job/target.log | tail -3)
        echo "$got"
        [ "$(echo "$got" | grep -c "$want")" -eq 3 ] || fail "the target did not negotiate digests '$want' on all 3 queues"
        echo "ok: target negotiated '$want' on the admin and both I/O queues"
    fi

    step "nvme list"
    nvme list | tee /tmp/list.out
    grep -q "$dev" /tmp/list.out || fail "nvme list does not show $dev"

    step "nvme id-ctrl $ctrl"
    nvme id-ctrl "$ctrl" >/tmp/id-ctrl.out
    grep -E '^(vid|ssvid|sn|mn|fr|ver|cntlid|mdts|oncs|sgls|subnqn|ioccsz|iorcsz|icdoff|kas|maxcmd|nn|vwc|fuses|acl|aerl|elpe|lpa) ' /tmp/id-ctrl.out
    expect_eq "id-ctrl sn" "$(field /tmp/id-ctrl.out sn)" "$TGT_SERIAL"
    expect_eq "id-ctrl mn" "$(field /tmp/id-ctrl.out mn)" "$TGT_MODEL"
    expect_eq "id-ctrl subnqn" "$(field /tmp/id-ctrl.out subnqn)" "$nqn"
    oncs=$(($(field /tmp/id-ctrl.out oncs)))
    nn=$(($(field /tmp/id-ctrl.out nn)))
    [ "$nn" -ge 1 ] || fail "id-ctrl nn = $nn"

    step "nvme id-ns $dev"
    nvme id-ns "$dev" >/tmp/id-ns.out
    grep -E '^(nsze|ncap|nuse|nsfeat|nlbaf|flbas|dlfeat|nmic|nguid|eui64|lbaf +0) ' /tmp/id-ns.out
    expect_eq "id-ns nsze" "$(($(field /tmp/id-ns.out nsze)))" "$TGT_NUM_BLOCKS"
    expect_eq "id-ns ncap" "$(($(field /tmp/id-ns.out ncap)))" "$TGT_NUM_BLOCKS"
    flbas=$(($(field /tmp/id-ns.out flbas) & 0xf))
    lbads=$(grep -E "^lbaf +$flbas " /tmp/id-ns.out | sed -n 's/.*lbads:\([0-9]*\).*/\1/p')
    expect_eq "id-ns block size (lbaf $flbas)" "$((1 << lbads))" "$TGT_BLOCK_SIZE"
    dlfeat=$(($(field /tmp/id-ns.out dlfeat)))
    nvme ns-descs "$dev" || fail "ns-descs (Identify CNS 3) failed"

    step "the block device"
    b=/sys/block/$(basename "$dev")
    expect_eq "/sys/block size (512-byte sectors)" "$(cat "$b/size")" "$((want_bytes / 512))"
    expect_eq "logical_block_size" "$(cat "$b/queue/logical_block_size")" "$TGT_BLOCK_SIZE"
    expect_eq "blockdev --getsize64" "$(blockdev --getsize64 "$dev")" "$want_bytes"
    for f in max_hw_sectors_kb max_segments nr_requests write_cache discard_max_bytes write_zeroes_max_bytes; do
        printf '%-24s %s\n' "$f" "$(cat "$b/queue/$f" 2>/dev/null || echo -)"
    done

    if [ "$round" = plain ]; then
        step "a pattern written now, read back after a reconnect"
        # 8 MiB of random data at 64 MiB, past the region fio uses.
        head -c $((8 << 20)) /dev/urandom >/tmp/pattern
        dd if=/tmp/pattern of="$dev" bs=1M seek=64 oflag=direct conv=fsync status=none
        pattern_sha=$(sha256sum /tmp/pattern | cut -d' ' -f1)
        expect_eq "pattern read back on this connection" "$(sha_of 64 8)" "$pattern_sha"
        # The tail block of the namespace, a sub-MiB write through the page cache-less path.
        head -c 4096 /dev/urandom >/tmp/tail
        dd if=/tmp/tail of="$dev" bs=4096 seek=$((want_bytes / 4096 - 1)) oflag=direct status=none
        expect_eq "last 4 KiB read back" \
            "$(dd if="$dev" bs=4096 skip=$((want_bytes / 4096 - 1)) iflag=direct status=none | sha256sum | cut -d' ' -f1)" \
            "$(sha256sum /tmp/tail | cut -d' ' -f1)"
        if dd if=/dev/zero of="$dev" bs=4096 seek=$((want_bytes / 4096)) count=1 oflag=direct status=none 2>/tmp/dd-past.err; then
            fail "a write past the end of the namespace succeeded"
        fi
        echo "ok: write past the end refused: $(cat /tmp/dd-past.err | head -1)"
    else
        expect_eq "pattern written on the first connection" "$(sha_of 64 8)" "$pattern_sha"
    fi

    step "fio: random writes, bs 4k..128k, verify=crc32c"
    fio --name="verify-$round" --filename="$dev" --direct=1 --ioengine=libaio --iodepth=16 \
        --rw=randwrite --bssplit=4k/40:16k/25:64k/20:128k/15 --offset=0 --size=32M \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_dump=1 \
        --numjobs=1 --group_reporting --output=/tmp/fio.out ||
        { cat /tmp/fio.out; fail "fio verify failed"; }
    grep -E 'write:|read:|err=' /tmp/fio.out
    grep -q 'err= 0' /tmp/fio.out || { cat /tmp/fio.out; fail "fio reported an error"; }

    step "fio: mixed random read/write, psync, 2 jobs, verify=crc32c"
    fio --name="mixed-$round" --filename="$dev" --direct=1 --ioengine=psync --rw=randrw \
        --bssplit=4k/50:32k/30:128k/20 --offset=32M --size=4M --numjobs=2 --offset_increment=8M \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --group_reporting --output=/tmp/fio2.out ||
        { cat /tmp/fio2.out; fail "fio mixed verify failed"; }
    grep -E 'write:|read:|err=' /tmp/fio2.out
    expect_eq "pattern still intact after fio" "$(sha_of 64 8)" "$pattern_sha"

    step "nvme flush"
    nvme flush "$dev"

    step "write zeroes"
    if [ $((oncs & 0x8)) -ne 0 ]; then
        # LBAs 2048..2303 (128 KiB at 1 MiB): fill, zero through nvme-cli, read back zeros.
        dd if=/dev/urandom of="$dev" bs=4096 seek=256 count=32 oflag=direct status=none
        nvme write-zeroes "$dev" --start-block=$((1048576 / TGT_BLOCK_SIZE)) --block-count=$((131072 / TGT_BLOCK_SIZE - 1))
        cmp <(dd if="$dev" bs=4096 skip=256 count=32 iflag=direct status=none) <(head -c 131072 /dev/zero) ||
            fail "write-zeroes range does not read back as zeros"
        echo "ok: nvme write-zeroes reads back zeros"
        # And the kernel's own REQ_OP_WRITE_ZEROES (BLKZEROOUT).
        dd if=/dev/urandom of="$dev" bs=1M seek=2 count=2 oflag=direct status=none
        blkdiscard -z -o $((2 << 20)) -l $((2 << 20)) "$dev"
        cmp <(dd if="$dev" bs=1M skip=2 count=2 iflag=direct status=none) <(head -c $((2 << 20)) /dev/zero) ||
            fail "blkdiscard -z range does not read back as zeros"
        echo "ok: blkdiscard -z reads back zeros"
    else
        echo "SKIP: the controller does not advertise Write Zeroes (oncs=$(printf 0x%x "$oncs"))"
    fi

    step "deallocate (DSM) through blkdiscard"
    if [ $((oncs & 0x4)) -ne 0 ]; then
        blkdiscard -o $((4 << 20)) -l $((4 << 20)) "$dev"
        if [ $((dlfeat & 0x7)) -eq 1 ]; then
            cmp <(dd if="$dev" bs=1M skip=4 count=4 iflag=direct status=none) <(head -c $((4 << 20)) /dev/zero) ||
                fail "dlfeat says deallocated blocks read zero, but they do not"
            echo "ok: deallocated range reads zeros (dlfeat=$dlfeat)"
        fi
        expect_eq "pattern intact after discards elsewhere" "$(sha_of 64 8)" "$pattern_sha"
    else
        echo "SKIP: the controller does not advertise Dataset Management (oncs=$(printf 0x%x "$oncs"))"
    fi

    step "log pages"
    nvme smart-log "$ctrl" | tee /tmp/smart.out
    nvme error-log "$ctrl" -e 4 >/tmp/error.out && head -20 /tmp/error.out
    nvme get-log "$ctrl" --log-id=2 --log-len=512 >/dev/null
    nvme get-feature "$ctrl" -f 7 -H || fail "get-feature Number of Queues failed"

    step "idle past the keep-alive timeout, controller stays live"
    kato=$(cat "$sysfs/kato" 2>/dev/null || echo 5)
    sleep $((kato * 2 + 2))
    expect_eq "controller state after $((kato * 2 + 2)) s idle" "$(cat "$sysfs/state")" live
    expect_eq "pattern after idling" "$(sha_of 64 8)" "$pattern_sha"

    step "kernel log has no nvme errors, resets or timeouts"
    dmesg | grep -i nvme | tail -30
    if dmesg | grep -i nvme | grep -i -E 'error|timeout|reset|reconnect|failed|abort|invalid'; then
        fail "the kernel logged nvme trouble (above)"
    fi

    disconnect
done

step "all checks passed in $(($(date +%s) - t0)) s"
