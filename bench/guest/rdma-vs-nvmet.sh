#!/bin/bash
# The guest half of bench/rdma_vs_nvmet.sh, run by ci/guest/run.sh in
# PEERLESS_GUEST_TARGET=guest mode: soft-RoCE exists only in the guest's kernel. Two
# NVMe/RDMA targets serve a 64 MiB RAM namespace side by side on rxe0:
#   - peerless-tgt (interrupt mode, core 0) with a Malloc bdev, on port 4420;
#   - the kernel's nvmet-rdma with a brd ramdisk, on port 4421.
# Linux's nvme-rdma host connects to both once; fio (libaio, direct, pinned to core 1)
# first verifies data on each (a wrong harness must not produce figures), then alternates
# the two targets A B B A per round at 4 KiB QD16 and 128 KiB QD8, random reads and random
# writes. Medians and the Peerless/nvmet ratios go to /job/out/figures.txt. Under TCG the
# absolute figures mean little; the ratio compares the two targets on one emulated machine
# with one initiator.
source /job/env
# shellcheck source=ci/guest/jobs/target-lib.sh
source /job/target-lib.sh
addr=$GUEST_ADDR
netdev=$GUEST_NETDEV
peerless_nqn=nqn.2016-06.io.peerless:bench
kernel_nqn=nqn.2016-06.io.kernel:bench
runtime=${BENCH_RUNTIME:-5}
rounds=${BENCH_ROUNDS:-2}
nvmet=/sys/kernel/config/nvmet

step "soft-RoCE: rdma_rxe on $netdev; nvme-rdma, nvmet-rdma, brd"
modprobe -a nvme-rdma nvmet nvmet-rdma
modprobe brd rd_nr=1 rd_size=65536
[ -b /dev/ram0 ] || fail "brd made no /dev/ram0"
rxe_up "$netdev"

step "peerless-tgt: Malloc0 (64 MiB) over RDMA on $addr:4420"
cat >/tmp/target.json <<JSON
{"subsystems": [
 {"subsystem": "bdev", "config": [
   {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}}]},
 {"subsystem": "nvmf", "config": [
   {"method": "nvmf_create_transport", "params": {"trtype": "RDMA"}},
   {"method": "nvmf_create_subsystem", "params": {"nqn": "$peerless_nqn", "serial_number": "PEERLESSBENCH001", "allow_any_host": true}},
   {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$peerless_nqn", "namespace": {"bdev_name": "Malloc0"}}},
   {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "$peerless_nqn",
     "listen_address": {"trtype": "RDMA", "adrfam": "IPv4", "traddr": "$addr", "trsvcid": "4420"}}}]}]}
JSON
TARGET_FLAGS="-m 0x1" start_target /tmp/target.json

step "nvmet-rdma: /dev/ram0 (64 MiB) on $addr:4421"
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
mkdir "$nvmet/subsystems/$kernel_nqn"
echo 1 >"$nvmet/subsystems/$kernel_nqn/attr_allow_any_host"
mkdir "$nvmet/subsystems/$kernel_nqn/namespaces/1"
echo /dev/ram0 >"$nvmet/subsystems/$kernel_nqn/namespaces/1/device_path"
echo 1 >"$nvmet/subsystems/$kernel_nqn/namespaces/1/enable"
mkdir "$nvmet/ports/1"
echo rdma >"$nvmet/ports/1/addr_trtype"
echo ipv4 >"$nvmet/ports/1/addr_adrfam"
echo "$addr" >"$nvmet/ports/1/addr_traddr"
echo 4421 >"$nvmet/ports/1/addr_trsvcid"
ln -s "$nvmet/subsystems/$kernel_nqn" "$nvmet/ports/1/subsystems/$kernel_nqn"

# connect NQN PORT: the namespace's block device for that subsystem. With native multipath
# (Debian's kernel) the disk hangs under the subsystem, without it under the controller.
connect() {
    local dir d
    nvme connect -t rdma -a "$addr" -s "$2" -n "$1" >/dev/null
    for _ in $(seq 100); do
        for dir in /sys/class/nvme-subsystem/nvme-subsys* /sys/class/nvme/nvme*; do
            [ "$(cat "$dir/subsysnqn" 2>/dev/null)" = "$1" ] || continue
            for d in "$dir"/nvme*n1; do
                [[ $(basename "$d") =~ ^nvme[0-9]+n1$ ]] && [ -b "/dev/$(basename "$d")" ] &&
                    { echo "/dev/$(basename "$d")"; return 0; }
            done
        done
        sleep 0.2
    done
    return 1
}
step "nvme connect to both"
mkdir -p /etc/nvme
cat /proc/sys/kernel/random/uuid >/etc/nvme/hostid
echo "nqn.2014-08.org.nvmexpress:uuid:$(cat /etc/nvme/hostid)" >/etc/nvme/hostnqn
peerless_dev=$(connect "$peerless_nqn" 4420) || fail "no namespace from peerless-tgt"
kernel_dev=$(connect "$kernel_nqn" 4421) || fail "no namespace from nvmet-rdma"
[ -b "$peerless_dev" ] && [ -b "$kernel_dev" ] || fail "not block devices: $peerless_dev $kernel_dev"
[ "$peerless_dev" != "$kernel_dev" ] || fail "both subsystems gave $peerless_dev"
echo "peerless-tgt: $peerless_dev; nvmet-rdma: $kernel_dev"
nvme list | tee "$out/list.txt"

# The same fio job for both; core 1 is the initiator's, core 0 peerless-tgt's reactor.
fio_job() {
    local dev=$1 name=$2
    shift 2
    fio --name="$name" --filename="$dev" --ioengine=libaio --direct=1 --cpus_allowed=1 \
        --size=48M --minimal "$@" >"$out/$name.terse" 2>"$out/$name.err" ||
        { cat "$out/$name.err"; fail "fio $name failed"; }
}
step "data verified on both first"
for target in peerless kernel; do
    dev=${target}_dev
    fio_job "${!dev}" "verify-$target" --rw=randwrite --bssplit=4k/50:128k/50 --iodepth=16 \
        --verify=crc32c --do_verify=1 --verify_fatal=1
    # Terse v3: field 5 is the error code.
    [ "$(cut -d';' -f5 "$out/verify-$target.terse")" = 0 ] || fail "fio verify on $target reported an error"
    echo "ok: $target verified"
done

# run TARGET ROW ROUND: one timed run; its IOPS (terse v3 field 8 reads, 49 writes) to a file.
run() {
    local target=$1 row=$2 round=$3 dev=${1}_dev rw bs qd field
    IFS=: read -r rw bs qd <<<"$row"
    fio_job "${!dev}" "fig-$rw-$bs-$target-$round" --rw="$rw" --bs="$bs" --iodepth="$qd" \
        --time_based --runtime="$runtime" --ramp_time=1
    field=8
    [ "$rw" = randread ] || field=49
    cut -d';' -f"$field" "$out/fig-$rw-$bs-$target-$round.terse" >"$out/fig-$rw-$bs-$target-$round.iops"
}
median() {
    cat "$out"/fig-"$1"-"$2"-*.iops | sort -g |
        awk '{v[NR] = $1} END {if (NR % 2) printf "%.0f", v[(NR + 1) / 2]; else printf "%.0f", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
for row in randread:4k:16 randwrite:4k:16 randread:128k:8 randwrite:128k:8; do
    IFS=: read -r rw bs qd <<<"$row"
    step "figures: $rw $bs QD$qd, peerless-tgt / nvmet-rdma, A B B A x $rounds"
    for round in $(seq "$rounds"); do
        run peerless "$row" "$round-a"
        run kernel "$row" "$round-b"
        run kernel "$row" "$round-c"
        run peerless "$row" "$round-d"
    done
    p=$(median "$rw-$bs" peerless)
    k=$(median "$rw-$bs" kernel)
    [ "$p" -gt 0 ] && [ "$k" -gt 0 ] || fail "a side did no I/O ($p, $k)"
    awk -v r="$rw $bs QD$qd" -v p="$p" -v k="$k" -v n="$((rounds * 2))" \
        'BEGIN {printf "%-20s peerless-tgt %7d IOPS  nvmet-rdma %7d IOPS  ratio %.2f  (medians of %d)\n", r, p, k, p / k, n}' |
        tee -a "$out/figures.txt"
done

step "teardown"
nvme disconnect -n "$peerless_nqn" >/dev/null
nvme disconnect -n "$kernel_nqn" >/dev/null
stop_target
rm "$nvmet/ports/1/subsystems/$kernel_nqn"
echo "done: figures in $out/figures.txt"
