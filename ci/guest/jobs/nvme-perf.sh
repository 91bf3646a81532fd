#!/bin/bash
# Guest job: peerless-perf driving the emulated SSDs directly with the bdev layer's
# user-space NVMe driver (trtype PCIe), as spdk_nvme_perf drives SPDK's. Run it with two
# SSDs and the virtual IOMMU (the second SSD goes through VFIO):
#
#   PEERLESS_GUEST_TARGET=guest PEERLESS_GUEST_NVME="cmb0:cmb=64 peer0" PEERLESS_GUEST_IOMMU=1 \
#       bash ci/guest/run.sh ci/guest/jobs/nvme-perf.sh
#
# It checks, each step failing the job:
#   1. identify over uio_pci_generic (first SSD) and over vfio-pci (second SSD): the
#      serial is the SSD's name, the route is the one bound, the first has a 64 MiB CMB and
#      the second none, both take SGLs, namespace 1 is the backing file's size in 512-byte
#      blocks;
#   2. --verify runs (write a self-describing pattern, read it back, compare) at 4 KiB QD32
#      random, 128 KiB QD8 sequential and 1 MiB QD4 random (twice the SSD's 512 KiB MDTS:
#      the driver splits each I/O) over both routes, and a two-core mixed run: no I/O
#      error, no mismatched block, I/O done, and no command bounced by the driver (the
#      run's buffers are DMA memory);
#   3. a plain 4 KiB random read run prints the table (IOPS, MiB/s, latency) and -L's
#      percentiles;
#   4. refusals: a PCI address with no function, a function bound to another driver (the
#      guest's virtio NIC, left as it is) and a malformed address each exit non-zero with
#      the reason on stderr, no panic.
# shellcheck source=/dev/null
source /job/env
# shellcheck source=ci/guest/jobs/target-lib.sh
source /job/target-lib.sh

perf=$bin/peerless-perf
read -r -a bdfs <<<"${NVME_BDFS:-}"
read -r -a names <<<"${NVME_NAMES:-}"
[ "${#bdfs[@]}" -ge 2 ] || fail "this job needs two SSDs: PEERLESS_GUEST_NVME=\"cmb0:cmb=64 peer0\" (got '${NVME_NAMES:-}')"
uio_bdf=${bdfs[0]}
vfio_bdf=${bdfs[1]}
mb=${PEERLESS_GUEST_NVME_MB:-256}

step "huge pages and binding: ${names[0]} to uio_pci_generic, ${names[1]} to vfio-pci"
hugepages_setup 256
nvme_bind_uio "$uio_bdf"
nvme_bind_vfio "$vfio_bdf"

# identify NAME BDF ROUTE CMB
identify() {
    local name=$1 bdf=$2 route=$3 cmb=$4 file=$out/identify-$1.txt
    "$perf" identify -r "trtype:PCIe traddr:$bdf" >"$file" 2>"$out/identify-$name.err" ||
        fail "identify $bdf: $(cat "$out/identify-$name.err")"
    cat "$file"
    grep -Eq "^Serial Number: +$name\$" "$file" || fail "identify $bdf: serial is not $name"
    grep -Eq "^User-space Access: +$route\$" "$file" || fail "identify $bdf: route is not $route"
    grep -q '^Namespace ID:1$' "$file" || fail "identify $bdf: no namespace 1"
    grep -Eq "^Size \(in LBAs\): +$((mb * 2048)) \(${mb}MiB\)\$" "$file" || fail "identify $bdf: namespace 1 is not $mb MiB of 512-byte blocks"
    grep -Eq '^Max Data Transfer Size: +[0-9]+$' "$file" || fail "identify $bdf: no transfer limit"
    grep -Eq "^Controller Memory Buffer: +$cmb" "$file" || fail "identify $bdf: the CMB is not '$cmb'"
    # QEMU's controller takes SGLs for NVM commands at any byte alignment (SGLS 01b).
    grep -Eq "^SGL Command Set: +Supported\$" "$file" || fail "identify $bdf: SGLs are not reported supported"
    echo "ok: identify over $route: $name, ${mb} MiB namespace, MDTS $(grep -Eo '^Max Data Transfer Size: +[0-9]+' "$file" | grep -Eo '[0-9]+$') bytes"
}

# perf LABEL TRID ARGS...: a run whose --json summary must show I/O and no error or mismatch.
perf_run() {
    local label=$1 trid=$2
    shift 2
    "$perf" -r "$trid" "$@" --json >"$out/perf-$label.json" 2>"$out/perf-$label.log" ||
        fail "peerless-perf $label ($*) exited non-zero: $(tail -5 "$out/perf-$label.log")"
    cat "$out/perf-$label.log"
    # The run's buffers are DMA memory: the driver must name them in PRPs, never bounce.
    grep -qx "NVMe commands bounced by the driver: 0" "$out/perf-$label.log" ||
        fail "$label: the driver bounced commands: $(grep 'bounced by the driver' "$out/perf-$label.log")"
    local ios errors mismatches iops
    ios=$(json_number "$out/perf-$label.json" ios)
    errors=$(json_number "$out/perf-$label.json" errors)
    mismatches=$(json_number "$out/perf-$label.json" mismatches)
    iops=$(json_number "$out/perf-$label.json" iops)
    [ "${ios:-0}" -gt 0 ] || fail "$label: no I/O done"
    [ "$errors" = 0 ] && [ "$mismatches" = 0 ] || fail "$label: $errors I/O errors, $mismatches mismatched blocks"
    echo "ok: $label ($*): $ios I/Os, $iops IOPS, no error, no mismatch"
}

step "identify over both routes"
identify "${names[0]}" "$uio_bdf" uio "64 MiB at bus address 0x"
identify "${names[1]}" "$vfio_bdf" vfio "Not Supported"

for route in uio vfio; do
    if [ "$route" = uio ]; then bdf=$uio_bdf; else bdf=$vfio_bdf; fi
    trid="trtype:PCIe traddr:$bdf"
    step "--verify over $route ($bdf)"
    perf_run "$route-4k-verify" "$trid" -q 32 -o 4096 -w randwrite -t 3 --verify
    perf_run "$route-128k-verify" "$trid" -q 8 -o 131072 -w write -t 3 --verify
    perf_run "$route-1m-verify" "$trid" -q 4 -o 1048576 -w randwrite -t 2 --verify
    grep -qF "Attached to NVMe Controller at $bdf over $route [QEMU NVMe Ctrl]" "$out/perf-$route-4k-verify.log" ||
        fail "$route: the run does not say it attached $bdf over $route"
done

step "two cores, mixed, verified (uio)"
perf_run uio-2core-verify "trtype:PCIe traddr:$uio_bdf ns:1" -c 0x3 -q 16 -o 8192 -w randrw -M 50 -t 3 --verify

step "the table: 4 KiB random reads QD32 (uio)"
"$perf" -r "trtype:PCIe traddr:$uio_bdf" -q 32 -o 4096 -w randread -t 3 -L | tee "$out/perf-uio-randread.txt" ||
    fail "4 KiB random read run failed"
for row in "PCIE ($uio_bdf) NSID 1 from core 0" "Total" "Summary latency data" "99.00000%"; do
    grep -qF "$row" "$out/perf-uio-randread.txt" || fail "no '$row' in the randread output"
done
echo "ok: the table and percentiles"

# refused LABEL FRAGMENT ARGS...: peerless-perf must exit non-zero, say FRAGMENT, not panic.
refused() {
    local label=$1 fragment=$2 rc=0
    shift 2
    "$perf" "$@" >"$out/refused-$label.out" 2>"$out/refused-$label.err" || rc=$?
    cat "$out/refused-$label.err"
    [ "$rc" -ne 0 ] || fail "$label: peerless-perf exited 0"
    grep -q panicked "$out/refused-$label.err" && fail "$label: peerless-perf panicked"
    grep -qF -- "$fragment" "$out/refused-$label.err" || fail "$label: the error does not say '$fragment'"
    echo "ok: $label refused (exit $rc)"
}

step "refusals"
refused no-function 0000:00:1e.7 -r "trtype:PCIe traddr:0000:00:1e.7" -q 1 -o 4096 -w read -t 1
nic=$(basename "$(readlink -f "/sys/class/net/$GUEST_NETDEV/device/..")")
nic_driver=$(basename "$(readlink -f "/sys/bus/pci/devices/$nic/driver")")
refused wrong-driver "$nic_driver" identify -r "trtype:PCIe traddr:$nic"
refused malformed "not a PCI address" -r "trtype:PCIe traddr:00:04" -q 1 -o 4096 -w read -t 1
refused fabric-flag "--hostnqn applies to fabrics" -r "trtype:PCIe traddr:$uio_bdf" --hostnqn nqn.x -q 1 -o 4096 -w read -t 1
[ "$(basename "$(readlink -f "/sys/bus/pci/devices/$nic/driver")")" = "$nic_driver" ] || fail "the NIC lost its driver"

step "done"
