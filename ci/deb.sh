#!/usr/bin/env bash
# The Debian package end to end: builds it with cargo-deb (packaging/deb/build.sh,
# which installs the pinned cargo-deb when missing), installs it with
# dpkg -i, checks the unit with systemd-analyze verify, then runs the target the way the
# unit does (ExecStart, RuntimeDirectory and the Limit* settings, parsed from the
# installed unit file: CI has no systemd running), connects over NVMe/TCP with the
# packaged peerless-perf (identify, then a short perf run), stops it with SIGTERM and
# checks for a clean exit; finally removes and purges the package.
set -euo pipefail
cd "$(dirname "$0")/.."


sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
unit=/usr/lib/systemd/system/peerless-tgt.service
log="$(mktemp)"
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$log"
}
trap cleanup EXIT

deb="$(bash packaging/deb/build.sh build)"
echo "package: $deb ($(du -h "$deb" | cut -f1))"
$sudo dpkg -i "$deb"
dpkg -s peerless | grep -E '^(Status|Version|Depends):'
[ -f /etc/peerless/peerless-tgt.json ] || { echo "the config is not installed" >&2; exit 1; }
[ ! -e /etc/systemd/system/multi-user.target.wants/peerless-tgt.service ] \
    || { echo "installing must not enable the unit" >&2; exit 1; }

systemd-analyze verify "$unit"
echo "systemd-analyze verify: clean"

unit_value() {
    sed -n "s/^$1=//p" "$unit"
}
exec_start="$(unit_value ExecStart)"
runtime_dir="/run/$(unit_value RuntimeDirectory)"
nofile="$(unit_value LimitNOFILE)"
memlock="$(numfmt --from=iec "$(unit_value LimitMEMLOCK)")"
read -r -a command <<< "$exec_start"
socket=""
for index in "${!command[@]}"; do
    [ "${command[$index]}" = "-r" ] && socket="${command[$((index + 1))]}"
done
[ -n "$socket" ] || { echo "ExecStart names no RPC socket (-r): $exec_start" >&2; exit 1; }
echo "ExecStart: $exec_start (LimitNOFILE=$nofile, LimitMEMLOCK=$memlock bytes)"

# systemd raises both limits; a sandbox without CAP_SYS_RESOURCE cannot raise a hard
# limit, so there the unit's value is capped at the hard limit (and said so).
within_hard() {
    local wanted="$1" hard="$2"
    if [ "$hard" = "unlimited" ] || [ "$wanted" -le "$hard" ] || prlimit --pid $$ "--$3=$wanted:$wanted" 2>/dev/null; then
        echo "$wanted"
    else
        echo "note: cannot raise the hard $3 limit to $wanted here; using $hard" >&2
        echo "$hard"
    fi
}
nofile="$(within_hard "$nofile" "$(ulimit -Hn)" nofile)"
memlock_hard="$(ulimit -Hl)"
[ "$memlock_hard" = "unlimited" ] || memlock_hard=$((memlock_hard * 1024))
memlock="$(within_hard "$memlock" "$memlock_hard" memlock)"

$sudo mkdir -p -m 0750 "$runtime_dir"
$sudo prlimit --nofile="$nofile" --memlock="$memlock" -- "${command[@]}" > "$log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
    [ -S "$socket" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "peerless-tgt exited at start" >&2; exit 1; }
    sleep 0.05
done
$sudo /usr/bin/peerless-rpc -s "$socket" framework_wait_init > /dev/null
grep VmLck "/proc/$pid/status" || true

transport='trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420'
identify="$(/usr/bin/peerless-perf identify -r "$transport")"
grep -q 'nqn.2016-06.io.peerless:quickstart' <<< "$identify" \
    || { echo "$identify"; echo "identify did not find the quickstart subsystem" >&2; exit 1; }
summary="$(/usr/bin/peerless-perf -r "$transport subnqn:nqn.2016-06.io.peerless:quickstart" -q 16 -o 4096 -w randrw -t 2 --json)"
echo "perf: $summary"
grep -q '"errors":0,' <<< "$summary" || { echo "perf saw errors" >&2; exit 1; }

kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=""
cat "$log"
[ "$status" -eq 0 ] || { echo "peerless-tgt exited with $status after SIGTERM" >&2; exit 1; }
grep -q "peerless-tgt stopped" "$log" || { echo "no orderly stop in the log" >&2; exit 1; }
[ ! -e "$socket" ] || { echo "the RPC socket outlived the target" >&2; exit 1; }
$sudo rm -rf "$runtime_dir"

$sudo dpkg -r peerless
[ ! -e /usr/bin/peerless-tgt ] && [ ! -e "$unit" ] && [ -f /etc/peerless/peerless-tgt.json ] \
    || { echo "remove must take the binaries and the unit and keep the conffile" >&2; exit 1; }
$sudo dpkg -P peerless
[ ! -e /etc/peerless/peerless-tgt.json ] || { echo "purge must take the conffile" >&2; exit 1; }
echo "deb: built, installed, verified, served NVMe/TCP, stopped cleanly, removed"
