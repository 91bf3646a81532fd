#!/bin/bash
# The guest half of bench/pcie_vs_kernel.sh, run by ci/guest/run.sh in
# PEERLESS_GUEST_TARGET=guest mode with two identical emulated SSDs (no CMB):
#   - A: peerless-perf driving the first SSD with the bdev layer's user-space NVMe driver
#     over uio_pci_generic (trtype PCIe, one polling reactor on core 0);
#   - B: Linux's nvme driver on the second SSD, fio with ioengine=io_uring, direct, pinned
#     to core 0, completions by interrupt (the kernel driver's default);
#   - C: the same with polled completions (nvme poll_queues=1, fio --hipri), as
#     peerless-perf's reactor polls.
# The SSDs are separate because the kernel driver, once it has probed a function, leaves
# it in a state (a CMB reading 0) the lab avoids handing to a user-space driver. Each side
# first writes and verifies data; then per row the three alternate A B C C B A for each
# round at 4 KiB random reads QD32, 4 KiB random writes QD32 and 128 KiB sequential reads
# QD8. Medians and the peerless/kernel ratios go to /job/out/figures.txt. Under TCG the
# absolute figures mean little, and an emulated interrupt costs far more than a real one:
# read the ratios, the polled one first.
source /job/env
# shellcheck source=ci/guest/jobs/target-lib.sh
source /job/target-lib.sh
runtime=${BENCH_RUNTIME:-5}
rounds=${BENCH_ROUNDS:-2}
perf=$bin/peerless-perf
read -r -a bdfs <<<"${NVME_BDFS:-}"
[ "${#bdfs[@]}" -ge 2 ] || fail "this bench needs two SSDs: PEERLESS_GUEST_NVME=\"ssd0 ssd1\""
uio_bdf=${bdfs[0]}
kernel_bdf=${bdfs[1]}

step "huge pages; $uio_bdf to uio_pci_generic, $kernel_bdf to the kernel's nvme driver"
hugepages_setup 256
nvme_bind_uio "$uio_bdf"
# One poll queue for fio's --hipri runs; the interrupt-driven runs use the others.
modprobe nvme poll_queues=1
nvme_bind "$kernel_bdf" nvme
kernel_dev=""
for _ in $(seq 100); do
    for d in /sys/bus/pci/devices/"$kernel_bdf"/nvme/nvme*/nvme*n1; do
        [ -b "/dev/$(basename "$d")" ] && kernel_dev=/dev/$(basename "$d")
    done
    [ -n "$kernel_dev" ] && break
    sleep 0.2
done
[ -n "$kernel_dev" ] || fail "the kernel's nvme driver gave $kernel_bdf no namespace block device"
echo "kernel: $kernel_bdf is $kernel_dev, $(cat /sys/module/nvme/parameters/poll_queues) poll queue(s)"

# The kernel side: fio, terse output.
fio_job() {
    local name=$1
    shift
    fio --name="$name" --filename="$kernel_dev" --ioengine=io_uring --direct=1 --cpus_allowed=0 \
        --minimal "$@" >"$out/$name.terse" 2>"$out/$name.err" ||
        { cat "$out/$name.err"; fail "fio $name failed"; }
}

step "data verified on both first"
"$perf" -r "trtype:PCIe traddr:$uio_bdf" -q 16 -o 131072 -w randwrite -t 3 --verify --json \
    >"$out/verify-peerless.json" 2>"$out/verify-peerless.log" || { cat "$out/verify-peerless.log"; fail "peerless-perf --verify failed"; }
[ "$(json_number "$out/verify-peerless.json" mismatches)" = 0 ] || fail "peerless-perf --verify found mismatches"
echo "ok: peerless verified"
fio_job verify-kernel --rw=randwrite --bssplit=4k/50:128k/50 --iodepth=16 --size=48M \
    --verify=crc32c --do_verify=1 --verify_fatal=1
# Terse v3: field 5 is the error code.
[ "$(cut -d';' -f5 "$out/verify-kernel.terse")" = 0 ] || fail "fio verify on the kernel side reported an error"
echo "ok: kernel verified"

# run SIDE ROW ROUND: one timed run; its IOPS to a file.
run() {
    local side=$1 row=$2 round=$3 rw bs qd field name
    IFS=: read -r rw bs qd <<<"$row"
    name=fig-$rw-$bs-$side-$round
    if [ "$side" = peerless ]; then
        "$perf" -r "trtype:PCIe traddr:$uio_bdf" -q "$qd" -o "$bs" -w "$rw" -t "$runtime" --json \
            >"$out/$name.json" 2>"$out/$name.log" || { cat "$out/$name.log"; fail "peerless-perf $name failed"; }
        json_number "$out/$name.json" iops >"$out/$name.iops"
    else
        local polled=()
        [ "$side" = kpoll ] && polled=(--hipri=1)
        fio_job "$name" --rw="$rw" --bs="$bs" --iodepth="$qd" --time_based --runtime="$runtime" --ramp_time=1 "${polled[@]}"
        # Terse v3: field 8 is read IOPS, 49 write IOPS.
        field=8
        [ "$rw" = randwrite ] && field=49
        cut -d';' -f"$field" "$out/$name.terse" >"$out/$name.iops"
    fi
}
median() {
    cat "$out"/fig-"$1"-*.iops | sort -g |
        awk '{v[NR] = $1} END {if (NR % 2) printf "%.0f", v[(NR + 1) / 2]; else printf "%.0f", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
for row in randread:4096:32 randwrite:4096:32 read:131072:8; do
    IFS=: read -r rw bs qd <<<"$row"
    step "figures: $rw $bs QD$qd, peerless-perf PCIe (uio) / kernel nvme + io_uring (irq, polled), A B C C B A x $rounds"
    for round in $(seq "$rounds"); do
        run peerless "$row" "$round-a"
        run kernel "$row" "$round-b"
        run kpoll "$row" "$round-c"
        run kpoll "$row" "$round-d"
        run kernel "$row" "$round-e"
        run peerless "$row" "$round-f"
    done
    p=$(median "$rw-$bs-peerless")
    for side in kpoll kernel; do
        k=$(median "$rw-$bs-$side")
        [ "$p" -gt 0 ] && [ "$k" -gt 0 ] || fail "a side did no I/O ($p, $k)"
        label="kernel irq"
        [ "$side" = kpoll ] && label="kernel poll"
        awk -v r="$rw $bs QD$qd" -v p="$p" -v k="$k" -v l="$label" -v bs="$bs" -v n="$((rounds * 2))" \
            'BEGIN {printf "%-22s peerless %7d IOPS %8.1f MiB/s  %s %7d IOPS %8.1f MiB/s  ratio %.2f  (medians of %d)\n",
                r, p, p * bs / 1048576, l, k, k * bs / 1048576, p / k, n}' | tee -a "$out/figures.txt"
    done
done
echo "done: figures in $out/figures.txt"
