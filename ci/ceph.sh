#!/usr/bin/env bash
# A one-node Ceph cluster for tests and for trying RBD behind Peerless: one monitor and one
# OSD, pool size 1, auth off, loopback only. The OSD keeps its objects in RAM (memstore)
# or, with CEPH_OBJECTSTORE=bluestore, in a sparse file under DIR, which survives the OSD
# being stopped and started again (memstore's restore on restart is not reliable).
#
#   ci/ceph.sh start [DIR]     start (DIR defaults to /tmp/peerless-ceph); prints the conf path
#   ci/ceph.sh stop  [DIR]     stop both daemons and remove DIR
#   ci/ceph.sh osd-stop [DIR]  stop the OSD only (tests: the OSD going away under I/O)
#   ci/ceph.sh osd-start [DIR] start the OSD again with the objects it held
#   ci/ceph.sh status [DIR]
#
# Clients use `-c DIR/ceph.conf` (librados: config_file). Pool `rbd` exists after start.
# Env: CEPH_OBJECTSTORE (memstore or bluestore, default memstore), CEPH_MEMSTORE_MB (the
# OSD's capacity in MiB, RAM or file, default 1024), CEPH_PORT (monitor port, default 6789).
set -euo pipefail

cmd="${1:-}"
dir="${2:-/tmp/peerless-ceph}"
conf="$dir/ceph.conf"
port="${CEPH_PORT:-6789}"
memstore_mb="${CEPH_MEMSTORE_MB:-1024}"
objectstore="${CEPH_OBJECTSTORE:-memstore}"

die() { echo "ceph.sh: $*" >&2; exit 1; }

# Runs a daemon with no descriptor of the caller's: one inherited from the caller (a
# `flock` on a build lock) would otherwise stay held for the daemon's whole life.
spawn_daemon() {
    (
        for fd in /proc/$BASHPID/fd/*; do
            fd="${fd##*/}"
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
        done
        # Nor the caller's stdout: a pipe reading it would wait for the daemon to exit.
        exec "$@" </dev/null >>"$dir/log/daemons.out" 2>&1
    )
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {
    local what="$1" seconds="$2"
    shift 2
    local i
    for ((i = 0; i < seconds * 10; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    die "$what not ready after ${seconds}s (logs in $dir/log)"
}

objectstore_conf() {
    case "$objectstore" in
        memstore)
            echo "osd objectstore = memstore"
            echo "memstore device bytes = $((memstore_mb * 1024 * 1024))" ;;
        bluestore)
            # One sparse file for data and metadata; small caches: a test box, not a server.
            echo "osd objectstore = bluestore"
            echo "bluestore block create = true"
            echo "bluestore block size = $((memstore_mb * 1024 * 1024))"
            echo "bluestore block db create = false"
            echo "bluestore block wal create = false"
            echo "bluestore fsck on mkfs = false"
            echo "bluestore fsck on mount = false"
            echo "bluestore cache size = $((128 * 1024 * 1024))"
            echo "osd memory target = $((896 * 1024 * 1024))" ;;
        *) die "CEPH_OBJECTSTORE=$objectstore: expected memstore or bluestore" ;;
    esac
}

write_conf() {
    local fsid="$1"
    cat >"$conf" <<CONF
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$port
mon initial members = a
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = false
ms bind ipv4 = true
ms bind ipv6 = false
run dir = $dir/run
log file = $dir/log/\$name.log
pid file = $dir/run/\$name.pid
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
$(objectstore_conf)
# Clients get no admin socket: several in one process or one directory would collide.
admin socket =
[mon]
admin socket = $dir/run/\$name.asok
mon data = $dir/mon.\$id
[osd]
admin socket = $dir/run/\$name.asok
# memstore writes its objects to osd data only on an orderly unmount; the fast path skips
# it, and a restarted OSD would come back empty.
osd fast shutdown = false
osd data = $dir/osd.\$id
osd max object name len = 460
osd max object namespace len = 64
CONF
}

osd_start() {
    pid_alive "$dir/run/osd.0.pid" && return 0
    # Right after a stop, ceph-osd can fail to start while the monitor and its store still
    # settle (it exits non-zero before daemonizing, with its reason in its log): try again
    # a few times, and show the log if it never starts.
    local attempt
    for attempt in 1 2 3 4 5; do
        spawn_daemon ceph-osd -c "$conf" -i 0 && break
        if [ "$attempt" = 5 ]; then
            tail -n 20 "$dir/log/osd.0.log" "$dir/log/daemons.out" >&2 2>/dev/null || true
            die "ceph-osd did not start after $attempt attempts"
        fi
        sleep 2
    done
    # The OSD is up when the monitor's map says so.
    wait_for "osd.0" 30 bash -c "ceph -c '$conf' osd dump 2>/dev/null | grep -q '^osd.0 up'"
}

osd_stop() {
    local pidfile="$dir/run/osd.0.pid"
    pid_alive "$pidfile" || return 0
    local pid
    pid="$(cat "$pidfile")"
    kill "$pid"
    local i
    # An orderly stop saves memstore's objects (osd fast shutdown = false); give it time.
    for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "osd.0 did not stop in 30 s"
    # Tell the monitor at once rather than waiting for its heartbeat grace.
    ceph -c "$conf" osd down 0 >/dev/null 2>&1 || true
}

# Freezes the OSD (SIGSTOP) and has the monitor mark it down at once, as when its host
# stops answering: clients hold or time out their operations. `osd-resume` thaws it; it
# finds itself marked down, boots again and peers, and the held operations go on.
# Unlike osd-stop and osd-start this keeps memstore's objects in the process: memstore
# restored after an orderly stop under I/O has come back with a superblock its monitor
# refuses ('wrong fsid') in about one run of four here.
osd_pause() {
    local pidfile="$dir/run/osd.0.pid"
    pid_alive "$pidfile" || die "osd.0 is not running"
    kill -STOP "$(cat "$pidfile")"
    ceph -c "$conf" osd down 0 >/dev/null 2>&1 || true
}

osd_resume() {
    local pidfile="$dir/run/osd.0.pid"
    pid_alive "$pidfile" || die "osd.0 is not running"
    kill -CONT "$(cat "$pidfile")"
    wait_for "osd.0" 60 bash -c "ceph -c '$conf' osd dump 2>/dev/null | grep -q '^osd.0 up'"
}

start() {
    command -v ceph-mon >/dev/null || die "ceph-mon missing (apt-get install ceph-mon ceph-osd ceph-common)"
    [ -e "$conf" ] && die "$dir already holds a cluster (ci/ceph.sh stop $dir first)"
    objectstore_conf >/dev/null
    mkdir -p "$dir/run" "$dir/log" "$dir/mon.a" "$dir/osd.0"
    local fsid
    fsid="$(cat /proc/sys/kernel/random/uuid)"
    write_conf "$fsid"
    monmaptool --create --fsid "$fsid" --addv a "[v1:127.0.0.1:$port]" "$dir/monmap" >/dev/null ||
        die "monmaptool failed ($(df -Pm "$dir" | awk 'NR == 2 { print $4 }') MiB free under $dir)"
    # Its reasons go to its log file, not to stderr: show them when it fails.
    if ! ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" >/dev/null; then
        tail -n 20 "$dir/log/mon.a.log" >&2 2>/dev/null || true
        die "ceph-mon --mkfs failed ($(df -Pm "$dir" | awk 'NR == 2 { print $4 }') MiB free under $dir)"
    fi
    spawn_daemon ceph-mon -c "$conf" -i a
    wait_for "monitor" 30 timeout 5 ceph -c "$conf" mon stat
    # The OSD's own uuid must be the one the monitor registered, or it refuses to boot.
    local osd_uuid osd_id
    osd_uuid="$(cat /proc/sys/kernel/random/uuid)"
    osd_id="$(ceph -c "$conf" osd new "$osd_uuid")"
    [ "$osd_id" = 0 ] || die "expected osd id 0, got $osd_id"
    if ! ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >/dev/null 2>&1; then
        tail -n 20 "$dir/log/osd.0.log" >&2 2>/dev/null || true
        die "ceph-osd --mkfs failed ($(df -Pm "$dir" | awk 'NR == 2 { print $4 }') MiB free under $dir)"
    fi
    osd_start
    ceph -c "$conf" osd pool create rbd 8 8 >/dev/null 2>&1
    ceph -c "$conf" osd pool set rbd size 1 --yes-i-really-mean-it >/dev/null 2>&1
    ceph -c "$conf" osd pool application enable rbd rbd >/dev/null 2>&1
    # Ready when a client can write: create and remove a scratch image.
    wait_for "pool rbd" 60 rbd -c "$conf" create --size 1M rbd/ready-probe
    rbd -c "$conf" rm rbd/ready-probe >/dev/null 2>&1
    echo "$conf"
}

stop() {
    [ -d "$dir" ] || return 0
    osd_stop
    local pidfile="$dir/run/mon.a.pid"
    if pid_alive "$pidfile"; then
        local pid
        pid="$(cat "$pidfile")"
        kill "$pid"
        local i
        for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    osd-stop) osd_stop ;;
    osd-start) osd_start ;;
    osd-pause) osd_pause ;;
    osd-resume) osd_resume ;;
    status) ceph -c "$conf" -s ;;
    *) die "usage: ci/ceph.sh start|stop|osd-stop|osd-start|osd-pause|osd-resume|status [DIR]" ;;
esac
