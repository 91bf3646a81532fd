# Helpers for the benchmark scripts: sourced, not run.

# Writes a config serving a null bdev as namespace 1 of NQN on 127.0.0.1:PORT.
# Usage: bench_null_config FILE NQN PORT
bench_null_config() {
    cat > "$1" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_null_create","params":{"name":"Null0","num_blocks":2097152,"block_size":512}}]},
{"subsystem":"nvmf","config":[{"method":"nvmf_create_transport","params":{"trtype":"TCP"}},
{"method":"nvmf_create_subsystem","params":{"nqn":"$2","allow_any_host":true}},
{"method":"nvmf_subsystem_add_ns","params":{"nqn":"$2","namespace":{"bdev_name":"Null0"}}},
{"method":"nvmf_subsystem_add_listener","params":{"nqn":"$2","listen_address":{"trtype":"tcp","traddr":"127.0.0.1","trsvcid":"$3"}}}]}]}
JSON
}

# Starts peerless-tgt with one poll-mode reactor on core 0 and CONFIG, sets TGT to its
# pid, removes WORK and stops the target on exit, and waits until it serves.
# Usage: bench_start_target BIN_DIR WORK CONFIG
bench_start_target() {
    "$1/peerless-tgt" -m 0x1 -c "$3" -r "$2/rpc.sock" 2>"$2/tgt.log" &
    TGT=$!
    # shellcheck disable=SC2064 # expand now: the values are fixed for this run
    trap "kill $TGT 2>/dev/null; wait $TGT 2>/dev/null; rm -rf '$2'" EXIT
    for _ in $(seq 100); do [ -S "$2/rpc.sock" ] && break; sleep 0.05; done
    sleep 0.5
}
