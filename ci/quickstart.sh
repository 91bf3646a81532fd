#!/usr/bin/env bash
# README's first command, as a user runs it: examples/quickstart.sh starts the target on
# the embedded default; then the controller is identified, the namespace takes a short
# verified read/write run from peerless-perf, and Ctrl-C (SIGINT to the whole command)
# stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
leader=""
# However the script ends, the target it started does not outlive it.
trap '[ -z "$leader" ] || kill -KILL -- "-$leader" 2>/dev/null || true; rm -rf "$work"' EXIT
sock="$work/rpc.sock"
BIN=${CARGO_TARGET_DIR:-build}/release
# A session of its own, so the interrupt reaches cargo and the target as a terminal's would.
PEERLESS_RPC_SOCK="$sock" setsid examples/quickstart.sh >"$work/quickstart.log" 2>&1 &
leader=$!
for _ in $(seq 1 1200); do
    [ -S "$sock" ] && break
    kill -0 "$leader" 2>/dev/null || { cat "$work/quickstart.log"; echo "examples/quickstart.sh exited" >&2; exit 1; }
    sleep 0.25
done
[ -S "$sock" ] || { cat "$work/quickstart.log"; echo "no RPC socket after 5 minutes" >&2; kill -INT -- "-$leader"; exit 1; }
"$BIN/peerless-rpc" -s "$sock" framework_wait_init >/dev/null
transport='trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420'
identify=$("$BIN/peerless-perf" identify -r "$transport")
grep -q 'nqn.2016-06.io.peerless:quickstart' <<<"$identify" \
    || { echo "$identify"; echo "identify did not find the quickstart subsystem" >&2; kill -INT -- "-$leader"; exit 1; }
"$BIN/peerless-perf" -r "$transport subnqn:nqn.2016-06.io.peerless:quickstart" -q 8 -o 4096 -w randrw -t 1 --verify --json \
    | python3 -c 'import json, sys; s = json.load(sys.stdin); sys.exit(0 if s["ios"] > 0 and s["errors"] == 0 and s["mismatches"] == 0 else f"perf: {s}")'
kill -INT -- "-$leader"
for _ in $(seq 1 100); do
    kill -0 "$leader" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$leader" 2>/dev/null; then
    cat "$work/quickstart.log"
    echo "the quickstart target did not stop on Ctrl-C" >&2
    kill -KILL -- "-$leader"
    exit 1
fi
grep -q "peerless-tgt stopped" "$work/quickstart.log" || { cat "$work/quickstart.log"; echo "no orderly stop" >&2; exit 1; }
echo "quickstart: target up on the embedded default, identified, verified I/O, stopped on Ctrl-C"
