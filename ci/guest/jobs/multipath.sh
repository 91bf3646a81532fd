#!/bin/bash
# Guest job: Linux's native NVMe multipath over two peerless-tgt processes, A and B, that
# export one Ceph RBD image as the same namespace of the same subsystem (run with
# PEERLESS_GUEST_HOST=ci/guest/jobs/multipath.host.sh, which starts Ceph and both targets
# and answers this job's requests). Checks: two paths in one subsystem; the ANA states
# set over RPC as `nvme ana-log` and the kernel see them, change notices included; fio
# verify running while A is SIGKILLed, carrying on through B without a verify error, and
# A, restarted, optimized again and carrying the I/O again.
set -euo pipefail
source /job/env
t0=$(date +%s)

step() { printf '\n=== %s (+%ss)\n' "$*" "$(($(date +%s) - t0))"; }
fail() {
    echo "FAIL: $*"
    echo "--- kernel log (nvme)"
    dmesg | grep -i -E 'nvme' | tail -60 || true
    exit 1
}
trap 'fail "line $LINENO: $BASH_COMMAND exited $?"' ERR

# ctl REQUEST...: asks the host side (see multipath.host.sh); its answer is left in $reply
# and printed. Not to be called in a subshell: the request counter must advance.
requests=0
reply=""
ctl() {
    requests=$((requests + 1))
    local dir=/job/out/ctl n=$requests
    echo "$*" >"$dir/$n.tmp"
    mv "$dir/$n.tmp" "$dir/$n.cmd"
    for _ in $(seq 600); do
        if [ -f "$dir/$n.rc" ]; then
            reply=$(cat "$dir/$n.out")
            echo "host: $* -> $reply"
            return "$(cat "$dir/$n.rc")"
        fi
        sleep 0.1
    done
    fail "the host did not answer '$*' in 60 s"
}

# The controller (nvmeN) connected to port $1, and its path's block device under the
# multipath head (nvmeScNn1, where S is the subsystem's instance and N the controller's).
ctrl_of() {
    local c
    for c in /sys/class/nvme/nvme*; do
        [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$TGT_NQN" ] || continue
        grep -q "trsvcid=$1" "$c/address" 2>/dev/null && basename "$c" && return 0
    done
    return 1
}
path_of() {
    local p
    for p in /sys/block/nvme*c"${1#nvme}"n1; do [ -e "$p" ] && echo "$p" && return 0; done
    return 1
}
# wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds.
wait_for() {
    local what=$1 seconds=$2
    shift 2
    for _ in $(seq $((seconds * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    fail "$what: not within ${seconds} s"
}
ana_is() { [ "$(cat "$(path_of "$1")/ana_state" 2>/dev/null)" = "$2" ]; }
state_is() { [ "$(cat "/sys/class/nvme/$1/state" 2>/dev/null)" = "$2" ]; }

step "host identity, nvme-tcp with native multipath"
mkdir -p /etc/nvme
hostid=$(cat /proc/sys/kernel/random/uuid)
echo "nqn.2014-08.org.nvmexpress:uuid:$hostid" >/etc/nvme/hostnqn
echo "$hostid" >/etc/nvme/hostid
modprobe nvme-tcp
[ "$(cat /sys/module/nvme_core/parameters/multipath)" = Y ] || fail "nvme_core.multipath is off"

step "connect to A ($TGT_ADDR:$TGT_PORT_A) and B ($TGT_ADDR:$TGT_PORT_B)"
for port in "$TGT_PORT_A" "$TGT_PORT_B"; do
    # Reconnect every second for up to 2 minutes: A comes back after being killed.
    nvme connect -t tcp -a "$TGT_ADDR" -s "$port" -n "$TGT_NQN" --reconnect-delay=1 --ctrl-loss-tmo=120
done
wait_for "controller on A" 20 ctrl_of "$TGT_PORT_A"
wait_for "controller on B" 20 ctrl_of "$TGT_PORT_B"
ctrl_a=$(ctrl_of "$TGT_PORT_A")
ctrl_b=$(ctrl_of "$TGT_PORT_B")
wait_for "$ctrl_a live" 20 state_is "$ctrl_a" live
wait_for "$ctrl_b live" 20 state_is "$ctrl_b" live
dev=""
for head in /sys/class/nvme-subsystem/nvme-subsys*/nvme*n1; do
    [[ $(basename "$head") =~ ^nvme[0-9]+n1$ ]] && dev=/dev/$(basename "$head")
done
[ -n "$dev" ] && [ -b "$dev" ] || fail "no multipath head device"
echo "A: $ctrl_a ($(path_of "$ctrl_a")), B: $ctrl_b ($(path_of "$ctrl_b")), head: $dev"
[ "$(blockdev --getsize64 "$dev")" = "$TGT_SIZE" ] || fail "$dev is $(blockdev --getsize64 "$dev") bytes, not $TGT_SIZE"

step "nvme list-subsys: one subsystem, two live paths"
nvme list-subsys | tee /tmp/subsys.out
[ "$(grep -c "$TGT_NQN" /tmp/subsys.out)" = 1 ] || fail "the NQN is not one subsystem"
grep -E "trsvcid=$TGT_PORT_A.* live" /tmp/subsys.out || fail "no live path to A"
grep -E "trsvcid=$TGT_PORT_B.* live" /tmp/subsys.out || fail "no live path to B"
nvme list-subsys "$dev" | tee /tmp/subsys-ns.out
grep -E "trsvcid=$TGT_PORT_A.* live optimized" /tmp/subsys-ns.out || fail "A's path is not optimized"
grep -E "trsvcid=$TGT_PORT_B.* live non-optimized" /tmp/subsys-ns.out || fail "B's path is not non-optimized"

step "ANA: id-ctrl and the ANA log page of each controller"
nvme id-ctrl "/dev/$ctrl_a" | grep -E '^(cmic|oaes|anatt|anacap|anagrpmax|nanagrpid|mnan|cntlid) '
nvme ana-log "/dev/$ctrl_a" | tee /tmp/ana-a.out
nvme ana-log "/dev/$ctrl_b" | tee /tmp/ana-b.out
grep -E 'state\s*:\s*optimized' /tmp/ana-a.out || fail "A's ANA log does not say optimized"
grep -E 'state\s*:\s*non-optimized' /tmp/ana-b.out || fail "B's ANA log does not say non-optimized"

step "ANA: B set inaccessible over RPC; the notice reaches Linux"
ctl ana b inaccessible
wait_for "B's path inaccessible" 20 ana_is "$ctrl_b" inaccessible
nvme ana-log "/dev/$ctrl_b" | tee /tmp/ana-b.out
grep -E 'state\s*:\s*inaccessible' /tmp/ana-b.out || fail "B's ANA log does not say inaccessible"
ana_is "$ctrl_a" optimized || fail "A's path changed too"
ctl ana b non_optimized
wait_for "B's path non-optimized" 20 ana_is "$ctrl_b" non-optimized

step "fio verify through the multipath device; A is killed and restarted under it"
# Writes with their checksums read back while writing (verify_backlog), then all of it
# verified at the end; any mismatch is fatal.
fio --name=failover --filename="$dev" --direct=1 --ioengine=libaio --iodepth=8 --rw=randwrite \
    --bs=4k --size=32M --time_based --runtime=45 --verify=crc32c --verify_backlog=128 \
    --verify_fatal=1 --do_verify=1 --output=/tmp/fio.out &
fio_pid=$!
sleep 8
ctl writes a
writes_a=$reply
ctl writes b
writes_b=$reply
echo "writes so far: A $writes_a, B $writes_b"
[ "$writes_a" -gt 0 ] || fail "no I/O went through A, the optimized path"
[ "$writes_b" = 0 ] || fail "I/O went through B while A was optimized"
ctl kill a
wait_for "$ctrl_a leaving live" 20 bash -c "! grep -qx live /sys/class/nvme/$ctrl_a/state"
echo "$ctrl_a: $(cat "/sys/class/nvme/$ctrl_a/state")"
# B takes over once the dead A's RBD lock is broken (the OSD drops A's watch first).
for _ in $(seq 40); do
    ctl writes b
    writes_b=$reply
    [ "$writes_b" -gt 0 ] && break
    sleep 1
done
echo "writes through B after A died: $writes_b"
[ "$writes_b" -gt 0 ] || fail "no I/O went through B after A died"
kill -0 "$fio_pid" || fail "fio ended while A was down"
ctl start a
wait_for "$ctrl_a live again" 60 state_is "$ctrl_a" live
wait_for "A's path optimized again" 30 ana_is "$ctrl_a" optimized
echo "$ctrl_a: live, $(cat "$(path_of "$ctrl_a")/ana_state")"
wait "$fio_pid" || { cat /tmp/fio.out; fail "fio failed"; }
cat /tmp/fio.out
grep -q 'err= 0' /tmp/fio.out || fail "fio reported an error"
grep -i -q 'verify.*fail\|bad magic\|crc32c.*mismatch' /tmp/fio.out && fail "fio saw a verify failure"

step "I/O goes through A again"
ctl writes a
writes_a=$reply
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 status=none
dd if=/tmp/pattern of="$dev" bs=1M seek=100 oflag=direct status=none
dd if="$dev" of=/tmp/back bs=1M skip=100 count=4 iflag=direct status=none
cmp /tmp/pattern /tmp/back || fail "4 MiB written after the failback read back different"
ctl writes a
after=$reply
echo "A's writes: $writes_a before, $after after"
[ "$after" -gt "$writes_a" ] || fail "the restarted A, optimized, carried no I/O"
nvme list-subsys "$dev"

step "the image grows by RPC on B; A sees it through Ceph, and Linux through both paths"
grown=$((TGT_SIZE + (64 << 20)))
size_is() { [ "$(blockdev --getsize64 "$1")" = "$2" ]; }
ctl resize b $((grown >> 20))
ctl blocks b
[ "$reply" = $((grown / 4096)) ] || fail "B's bdev has $reply blocks after the resize, not $((grown / 4096))"
# A was not asked: its watch on the image tells it.
for _ in $(seq 150); do
    ctl blocks a
    [ "$reply" = $((grown / 4096)) ] && break
    sleep 0.2
done
[ "$reply" = $((grown / 4096)) ] || fail "A's bdev still has $reply blocks, not $((grown / 4096))"
wait_for "$dev at $grown bytes" 30 size_is "$dev" "$grown"
# Each path's disk is hidden (no /dev node); sysfs gives its size in 512-byte sectors.
path_size_is() { [ "$(cat "$(path_of "$1")/size")" = $(($2 / 512)) ]; }
for ctrl in "$ctrl_a" "$ctrl_b"; do
    wait_for "$ctrl's path at $grown bytes" 30 path_size_is "$ctrl" "$grown"
done
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 status=none
dd if=/tmp/pattern of="$dev" bs=1M seek=$(((grown >> 20) - 4)) oflag=direct status=none
dd if="$dev" of=/tmp/back bs=1M skip=$(((grown >> 20) - 4)) count=4 iflag=direct status=none
cmp /tmp/pattern /tmp/back || fail "4 MiB written at the grown end read back different"
echo "$dev: $(blockdev --getsize64 "$dev") bytes, the last 4 MiB written and read back"

step "disconnect"
nvme disconnect -n "$TGT_NQN"
echo "--- kernel log (nvme)"
dmesg | grep -i nvme | tail -30 || true
echo "multipath: all checks passed (+$(($(date +%s) - t0))s)"
