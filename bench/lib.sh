# shellcheck shell=bash
# Helpers for the benchmark scripts: sourced, not run.

# Writes a config serving a null bdev as namespace 1 of NQN on 127.0.0.1:PORT. EXTRA, if
# given, is more nvmf_create_transport parameters, e.g. '"num_shared_buffers":127'.
# Usage: bench_null_config FILE NQN PORT [EXTRA]
bench_null_config() {
    local transport='"trtype":"TCP"'
    [ -z "${4:-}" ] || transport="$transport,$4"
    cat > "$1" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":512}}]},
{"subsystem":"nvmf","config":[{"method":"nvmf_create_transport","params":{$transport}},
{"method":"nvmf_create_subsystem","params":{"nqn":"$2","allow_any_host":true}},
{"method":"nvmf_subsystem_add_ns","params":{"nqn":"$2","namespace":{"bdev_name":"Null0"}}},
{"method":"nvmf_subsystem_add_listener","params":{"nqn":"$2","listen_address":{"trtype":"tcp","traddr":"127.0.0.1","trsvcid":"$3"}}}]}]}
JSON
}

# Targets still running and directories to remove when the script exits, however it exits.
BENCH_TARGETS=()
BENCH_DIRS=()
bench_cleanup() {
    local pid
    for pid in "${BENCH_TARGETS[@]}"; do
        # A target paused with SIGSTOP would hold SIGTERM until resumed.
        kill -CONT "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${BENCH_TARGETS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "${BENCH_DIRS[@]}"
}
trap bench_cleanup EXIT

# Starts peerless-tgt with one reactor on core 0 and CONFIG in MODE (poll unless named:
# poll, interrupt, or adaptive, the target's default), its RPC socket and log in WORK,
# sets TGT to its pid and waits until it serves. The target stops, and WORK goes, when
# the script exits. Several targets may run at once, each with its own WORK.
# Usage: bench_start_target BIN_DIR WORK CONFIG [MODE]
bench_start_target() {
    local flags=()
    case ${4:-poll} in
        # Builds from before adaptive mode poll by default and do not know the flag.
        poll) "$1/peerless-tgt" --help | grep -q -- --poll-mode && flags=(--poll-mode) ;;
        interrupt) flags=(--interrupt-mode) ;;
        adaptive) ;;
        *) echo "bench_start_target: unknown mode $4" >&2; return 1 ;;
    esac
    mkdir -p "$2"
    BENCH_DIRS+=("$2")
    # A socket left by an earlier target in the same WORK would pass the wait below.
    rm -f "$2/rpc.sock"
    "$1/peerless-tgt" -m 0x1 -c "$3" -r "$2/rpc.sock" "${flags[@]}" 2>"$2/tgt.log" &
    TGT=$!
    BENCH_TARGETS+=("$TGT")
    for _ in $(seq 100); do [ -S "$2/rpc.sock" ] && break; sleep 0.05; done
    sleep 0.5
    if ! kill -0 "$TGT" 2>/dev/null; then
        echo "peerless-tgt from $1 did not start:" >&2
        cat "$2/tgt.log" >&2
        exit 1
    fi
}

# Stops a target bench_start_target started and waits until it has exited, so the next
# one can take its core, port and socket path.
# Usage: bench_stop_target PID
bench_stop_target() {
    local pid kept=()
    kill -CONT "$1" 2>/dev/null || true
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for pid in "${BENCH_TARGETS[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
    BENCH_TARGETS=("${kept[@]}")
}

# User plus system CPU time of process PID so far, in clock ticks (/proc/PID/stat
# fields 14 and 15, after the parenthesised command name, which may hold spaces).
bench_cpu_ticks() {
    python3 -c "import sys; f=open('/proc/%s/stat' % sys.argv[1]).read().rsplit(')', 1)[1].split(); print(int(f[11]) + int(f[12]))" "$1"
}
