#!/bin/bash
# The guest half of bench/ktls.sh, run by ci/guest/run.sh in PEERLESS_GUEST_TARGET=guest
# mode: the guest's kernel is the only one here with tls.ko. One peerless-tgt (interrupt
# mode, core 0) serves one RAM namespace to a host without a PSK on a plain listener and
# to a host with a 32-byte PSK (TLS_AES_128_GCM_SHA256) on a secure one; peerless-perf runs
# on core 1. Three modes alternated A B C C B A per round: plain TCP, TLS with the record
# layer in the kernel (kTLS) and TLS with it in OpenSSL (`sock_impl_set_options -i ssl
# --disable-ktls`), each at 4 KiB randread QD16 and 128 KiB randread QD4; medians and
# ratios go to /job/out/figures.txt. The kernel's AES-NI and GHASH drivers are loaded
# first, as udev does at a real server's boot (nothing loads them in this guest), so the
# kernel's AES-GCM is not its generic C code.
source /job/env
# shellcheck source=ci/guest/jobs/target-lib.sh
source /job/target-lib.sh
nqn=nqn.2016-06.io.peerless:ktls
host128=nqn.2014-08.org.nvmexpress:uuid:0b5e0c1a-0000-4000-8000-000000000128
plain_host=nqn.2014-08.org.nvmexpress:uuid:0b5e0c1a-0000-4000-8000-000000000001
keys=/tmp/keys
rpc() { "$bin/peerless-rpc" -s "$sock" "$@"; }

step "kernel TLS: tls.ko"
modprobe tls
[ -r /proc/net/tls_stat ] || fail "no /proc/net/tls_stat after modprobe tls"
cat /proc/net/tls_stat

step "the kernel's AES-GCM: AES-NI and CLMUL drivers"
modprobe -a aesni_intel ghash_clmulni_intel || echo "note: the accelerated drivers did not load; kTLS uses generic AES-GCM"
grep -A2 '^name *: gcm(aes)' /proc/crypto | grep driver | sort -u | tee "$out/gcm-drivers.txt" || true

step "a key: nvme gen-tls-key"
mkdir -p "$keys"
(umask 077 && nvme gen-tls-key --hmac=1 >"$keys/k128")
grep -q '^NVMeTLSkey-1:01:' "$keys/k128" || fail "nvme gen-tls-key wrote no key"

step "peerless-tgt: a secure listener on 127.0.0.1:4420, a plain one on 127.0.0.1:4421"
listener() {
    printf '{"method": "nvmf_subsystem_add_listener", "params": {"nqn": "%s", "secure_channel": %s, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "%s"}}}' \
        "$nqn" "$2" "$1"
}
host() {
    if [ -n "$2" ]; then
        printf '{"method": "nvmf_subsystem_add_host", "params": {"nqn": "%s", "host": "%s", "psk": "%s"}}' "$nqn" "$1" "$2"
    else
        printf '{"method": "nvmf_subsystem_add_host", "params": {"nqn": "%s", "host": "%s"}}' "$nqn" "$1"
    fi
}
cat >/tmp/target.json <<JSON
{"subsystems": [
 {"subsystem": "keyring", "config": [
   {"method": "keyring_file_add_key", "params": {"name": "k128", "path": "$keys/k128"}}]},
 {"subsystem": "bdev", "config": [
   {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}}]},
 {"subsystem": "nvmf", "config": [
   {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
   {"method": "nvmf_create_subsystem", "params": {"nqn": "$nqn", "serial_number": "PEERLESSKTLS0001", "allow_any_host": false}},
   {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$nqn", "namespace": {"bdev_name": "Malloc0"}}},
   $(host "$host128" k128),
   $(host "$plain_host" ""),
   $(listener 4420 true),
   $(listener 4421 false)]}]}
JSON
TARGET_FLAGS="-m 0x1" start_target /tmp/target.json
grep -q "listening on 127.0.0.1:4420 (secure channel" "$out/target.log" || fail "no secure listener on 4420"
options=$(rpc sock_impl_get_options -i ssl | tr -d ' \n')
[ "$options" = '{"enable_ktls":false,"tls_version":13}' ] || fail "sock_impl_get_options -i ssl: $options"
echo "ok: peerless-tgt pid $tgt_pid ($options; each run below sets it)"

trid() { echo "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:$1 subnqn:$nqn"; }
# perf NAME PORT HOST ARGS...: a peerless-perf run whose --json summary must count I/Os
# and no error or mismatched block; leaves the summary in $out/perf-NAME.json.
perf() {
    local name=$1 port=$2 hostnqn=$3 rc=0 ios errors mismatches
    shift 3
    "$bin/peerless-perf" -r "$(trid "$port")" --hostnqn "$hostnqn" --json -c 0x2 "$@" \
        >"$out/perf-$name.json" 2>"$out/perf-$name.log" || rc=$?
    [ "$rc" -eq 0 ] || { cat "$out/perf-$name.log"; fail "peerless-perf ($name) exited $rc"; }
    ios=$(json_number "$out/perf-$name.json" ios)
    errors=$(json_number "$out/perf-$name.json" errors)
    mismatches=$(json_number "$out/perf-$name.json" mismatches)
    [ -n "$ios" ] && [ "$ios" -gt 0 ] || fail "perf ($name) did no I/O"
    [ "$errors" = 0 ] && [ "$mismatches" = 0 ] || fail "perf ($name): $errors errors, $mismatches mismatches"
}

# run_mode MODE ROUND SIZE QD: one run; its IOPS go to $out/fig-SIZE-MODE-ROUND.iops.
run_mode() {
    local mode=$1 round=$2 size=$3 qd=$4 name="fig-$3-$1-$2"
    case $mode in
    plain) perf "$name" 4421 "$plain_host" -q "$qd" -o "$size" -w randread -t 4 ;;
    ktls | openssl)
        if [ "$mode" = ktls ]; then
            rpc sock_impl_set_options -i ssl --enable-ktls
        else
            rpc sock_impl_set_options -i ssl --disable-ktls
        fi
        perf "$name" 4420 "$host128" --psk "$keys/k128" -q "$qd" -o "$size" -w randread -t 4
        ;;
    esac
    json_number "$out/perf-$name.json" iops >"$out/$name.iops"
}
# median SIZE MODE: the median of a mode's runs at SIZE.
median() {
    cat "$out"/fig-"$1"-"$2"-*.iops | sort -g |
        awk '{v[NR] = $1} END {if (NR % 2) printf "%.0f", v[(NR + 1) / 2]; else printf "%.0f", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
rounds=${KTLS_ROUNDS:-2}
for size_qd in 4096:16 131072:4; do
    size=${size_qd%:*}
    qd=${size_qd#*:}
    step "figures: $size B randread QD$qd, plain / kTLS / OpenSSL, A B C C B A x $rounds"
    for round in $(seq "$rounds"); do
        for mode in plain ktls openssl openssl ktls plain; do
            run_mode "$mode" "$round-$RANDOM" "$size" "$qd"
        done
    done
    plain=$(median "$size" plain)
    ktls=$(median "$size" ktls)
    openssl=$(median "$size" openssl)
    {
        echo "$size B randread QD$qd IOPS, medians of $((rounds * 2)) runs (TCG guest: compare the ratios):"
        echo "  plain TCP        $plain"
        echo "  TLS, kTLS        $ktls"
        echo "  TLS, OpenSSL     $openssl"
        awk -v p="$plain" -v k="$ktls" -v o="$openssl" \
            'BEGIN {printf "  kTLS/plain %.2f, OpenSSL/plain %.2f, kTLS/OpenSSL %.2f\n", k / p, o / p, k / o}'
    } | tee -a "$out/figures.txt"
done
if grep -n "kTLS unavailable\|took the receive side only" "$out/target.log"; then
    fail "the target kept TLS records in OpenSSL although tls.ko is loaded"
fi

step "SIGTERM to peerless-tgt"
stop_target
if grep -q -E 'NVMeTLSkey-1:0[12]:[A-Za-z0-9+/]{8}' "$out/target.log"; then fail "key material in the target log"; fi
echo "done: figures in $out/figures.txt"
