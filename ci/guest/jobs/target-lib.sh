# Shared by the guest jobs that run peerless-tgt inside the guest (run.sh's
# PEERLESS_GUEST_TARGET=guest mode, which copies this file to /job/target-lib.sh). Source
# it after /job/env; it sets `set -Eeuo pipefail` and an ERR trap that fails the job.
#
#   step TEXT               a heading with the seconds since the job began
#   fail TEXT               the reason, the target's last log lines, the kernel's, exit 1
#   json_number FILE KEY    a number from peerless-perf's one-line --json summary (the
#                           guest has no python3 or jq)
#   start_target CONFIG     peerless-tgt -c CONFIG in interrupt mode (the guest has two
#                           emulated CPUs), its log in $out/target.log, waited for ready
#   stop_target             SIGTERM; it must exit 0 within 20 s, log its orderly stop and
#                           no panic
#   rxe_up NETDEV           soft-RoCE: rxe0 over NETDEV at MTU 9000, its port active
#
# Variables: bin (the shared binaries), out (/job/out), sock (the RPC socket), tgt_pid;
# TARGET_FLAGS adds flags to peerless-tgt.
set -Eeuo pipefail
bin=$PEERLESS_BIN
out=/job/out
sock=/tmp/peerless.sock
t0=$(date +%s)
tgt_pid=""

step() { printf '\n=== %s (+%ss)\n' "$*" "$(($(date +%s) - t0))"; }
fail() {
    echo "FAIL: $*"
    if [ -s "$out/target.log" ]; then
        echo "--- last lines of the target log ($out/target.log)"
        tail -20 "$out/target.log"
    fi
    # rxe asks eth0 its speed at every query; virtio-net has none to tell.
    echo "--- kernel log (last 20 lines)"
    dmesg | grep -v 'speed is unknown' | tail -20 || true
    [ -z "$tgt_pid" ] || kill -KILL "$tgt_pid" 2>/dev/null || true
    exit 1
}
trap 'fail "line $LINENO: $BASH_COMMAND exited $?"' ERR
json_number() { grep -o "\"$2\":[0-9.e+-]*" "$1" | head -1 | cut -d: -f2; }

start_target() {
    cp "$1" "$out/target.json"
    # shellcheck disable=SC2086 # TARGET_FLAGS splits on purpose
    "$bin/peerless-tgt" -c "$1" -r "$sock" --interrupt-mode ${TARGET_FLAGS:-} >"$out/target.log" 2>&1 &
    tgt_pid=$!
    # Under TCG the first start pages a 30 MB binary in over 9p: allow a minute.
    for _ in $(seq 600); do
        grep -q "peerless-tgt ready" "$out/target.log" && break
        kill -0 "$tgt_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$tgt_pid" 2>/dev/null || { tgt_pid=""; fail "peerless-tgt exited at start"; }
    grep -q "peerless-tgt ready" "$out/target.log" || fail "peerless-tgt not ready after 60 s"
}

stop_target() {
    kill -TERM "$tgt_pid"
    for _ in $(seq 200); do kill -0 "$tgt_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$tgt_pid" 2>/dev/null && fail "peerless-tgt still running 20 s after SIGTERM"
    local trc=0
    wait "$tgt_pid" || trc=$?
    tgt_pid=""
    [ "$trc" -eq 0 ] || fail "peerless-tgt exited $trc after SIGTERM"
    grep -q "peerless-tgt stopped" "$out/target.log" || fail "no 'peerless-tgt stopped' in the target log"
    if grep -n -E 'panicked|RUST_BACKTRACE' "$out/target.log"; then fail "peerless-tgt panicked"; fi
    echo "ok: peerless-tgt exited 0 and logged its orderly stop"
}

rxe_up() {
    modprobe -a rdma_rxe ib_uverbs rdma_ucm
    rdma link add rxe0 type rxe netdev "$1"
    ip link set "$1" mtu 9000
    for _ in $(seq 50); do
        ibv_devinfo -d rxe0 >"$out/ibv_devinfo.txt"
        grep -q 'state:.*PORT_ACTIVE' "$out/ibv_devinfo.txt" && break
        sleep 0.1
    done
    grep -q 'state:.*PORT_ACTIVE' "$out/ibv_devinfo.txt" || fail "rxe0's port is not active"
    echo "ok: rxe0 active on $1"
}
