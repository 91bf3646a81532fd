# shellcheck shell=bash disable=SC2154 # HOSTNQN, KEY, CKEY and WRONG come from ci/guest/auth.sh
# The guest's half of ci/guest/auth.sh, which puts HOSTNQN, KEY, CKEY and WRONG above.
set -uo pipefail
# shellcheck source=/dev/null # written by ci/guest/run.sh
source /job/env
addr=$TGT_ADDR port=$TGT_PORT nqn=$TGT_NQN
echo "$HOSTNQN" >/etc/nvme/hostnqn
uname -r
nvme version
modprobe nvme-tcp
lsmod | grep -E '^nvme_(tcp|auth)' || { echo "FAIL: this kernel has no nvme-auth (CONFIG_NVME_HOST_AUTH)"; exit 1; }
fail() { echo "FAIL: $*"; exit 1; }
wait_dev() {
    for _ in $(seq 100); do
        dev=$(ls /dev/nvme*n1 2>/dev/null | head -1)
        [ -n "$dev" ] && return 0
        sleep 0.2
    done
    return 1
}
for mode in bidirectional oneway; do
    opts=(--dhchap-secret="$KEY")
    [ "$mode" = bidirectional ] && opts+=(--dhchap-ctrl-secret="$CKEY")
    echo "=== connect, $mode"
    nvme connect -t tcp -a "$addr" -s "$port" -n "$nqn" "${opts[@]}" || fail "connect $mode"
    wait_dev || fail "no namespace after connect $mode"
    ctrl=$(ls -d /sys/class/nvme/nvme* | head -1)
    for f in state queue_count; do printf '%-12s %s\n' "$f" "$(cat "$ctrl/$f")"; done
    head -c 1048576 /dev/urandom >/tmp/pattern
    dd if=/tmp/pattern of="$dev" bs=4096 oflag=direct status=none || fail "write $mode"
    dd if="$dev" of=/tmp/back bs=4096 count=256 iflag=direct status=none || fail "read $mode"
    cmp /tmp/pattern /tmp/back || fail "data differs ($mode)"
    echo "ok: $mode: 1 MiB written and read back on authenticated queues"
    nvme disconnect -n "$nqn" || fail "disconnect"
    sleep 1
done
for case in "wrong key:--dhchap-secret=$WRONG" "no key:" "wrong controller key:--dhchap-secret=$KEY --dhchap-ctrl-secret=$WRONG"; do
    name=${case%%:*} args=${case#*:}
    echo "=== $name"
    # shellcheck disable=SC2086 # the options are words
    if nvme connect -t tcp -a "$addr" -s "$port" -n "$nqn" $args; then fail "connected with $name"; fi
    echo "ok: $name refused"
done
echo "ALL PASSED"
