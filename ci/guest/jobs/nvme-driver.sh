#!/bin/bash
# Guest job: peerless-tgt's user-space NVMe PCIe driver on the lab's emulated SSDs. Run it
# with two SSDs (the first with a 64 MiB CMB) and the virtual IOMMU:
#
#   PEERLESS_GUEST_TARGET=guest PEERLESS_GUEST_NVME="cmb0:cmb=64 peer0" PEERLESS_GUEST_IOMMU=1 \
#       bash ci/guest/run.sh ci/guest/jobs/nvme-driver.sh
#
# Each step is checked, the first failure ending the job:
#   1. attach refusals name the problem: no such function, a function bound to no driver;
#   2. attach over both routes (cmb0 on uio_pci_generic, peer0 on vfio-pci):
#      bdev_nvme_get_controllers, identify data in bdev_get_bdevs (SGL support included);
#   3. both namespaces exported over NVMe/TCP: peerless-perf --verify from 4 KiB to 1 MiB
#      (beyond the SSDs' 512 KiB MDTS, so commands split), random writes at queue depth 8;
#      writes beyond one 128 KiB transport buffer reach the driver in several segments,
#      which go to the SSDs as SGLs (sgl_commands > 0), nothing bounced;
#   4. completion interrupts: the target's sleeping reactors were woken by Nvme1's MSI-X
#      vectors (bdev_nvme_get_controllers, /proc/interrupts); Nvme0 over uio is polled;
#      and no heap allocation per I/O on either route (framework_get_reactors);
#   5. Linux's nvme-tcp host in the guest writes the lab's self-identifying pattern with dd
#      at 4 KiB, 128 KiB and 1 MiB blocks, reads it back and checks it; run.sh compares
#      the backing files with it after power-off (out/nvme-expect);
#   6. detach under no load, attach again (the queues and the controller come back; the
#      host reads back what it wrote before), and refusals of a second attach of one name
#      or one address;
#   7. P2P: cmb0's namespace exported with p2pmem auto and digests on; the host's pattern
#      goes socket -> CMB -> SSD and back, no payload byte in a host buffer (mem_get_stats),
#      the bytes checked in the guest and in the backing file after power-off;
#   8. peer to peer: peer0's namespace exported with p2pmem naming cmb0's CMB, over VFIO
#      (the CMB mapped into the IOMMU), then detached, moved to uio_pci_generic and
#      attached again: peer0 DMAs into and out of the other SSD's BAR, nothing in host
#      buffers, nothing bounced;
#   9. save_config, SIGTERM (the target stops cleanly and shuts the controllers down with
#      CC.SHN), the saved config replayed: both controllers and the P2P namespaces back;
#  10. fio's peerless_bdev engine (the driver inside fio) with verify=crc32c over both
#      routes, 4 KiB to 1 MiB.
# shellcheck source=/dev/null
source /job/env
# shellcheck source=ci/guest/jobs/target-lib.sh
source /job/target-lib.sh
read -r -a bdfs <<<"${NVME_BDFS:-}"
read -r -a names <<<"${NVME_NAMES:-}"
[ "${#bdfs[@]}" -ge 2 ] || fail "this job needs two SSDs: PEERLESS_GUEST_NVME=\"cmb0:cmb=64 peer0\""
uio_bdf=${bdfs[0]}
vfio_bdf=${bdfs[1]}
nqn=nqn.2016-06.io.peerless:nvme-driver

# host_dev SERIAL NSID: the host's block device of that namespace of the subsystem with
# that serial (the kernel may number them in any order), waited for up to 10 s.
host_dev() {
    local blk
    for _ in $(seq 100); do
        for blk in /sys/block/nvme*n*; do
            # Namespace heads only: the per-path nvmeXcYnZ nodes are hidden.
            [[ $(basename "$blk") =~ ^nvme[0-9]+n[0-9]+$ ]] || continue
            [ "$(cat "$blk/nsid" 2>/dev/null)" = "$2" ] || continue
            [ "$(tr -d ' ' 2>/dev/null <"$blk/device/serial")" = "$1" ] || continue
            echo "/dev/$(basename "$blk")"
            return 0
        done
        sleep 0.1
    done
    fail "no namespace $2 of subsystem $1 on the host"
}
payload() { rpc mem_get_stats | python3 -c "import json,sys; print(json.load(sys.stdin)['payload_bytes']['$1'])"; }
# nvme_stat BDEV FIELD: a counter of BDEV's driver_specific.nvme.
nvme_stat() { rpc bdev_get_bdevs -b "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['driver_specific']['nvme'][0]['$2'])"; }
bounced() { nvme_stat "$1" bounced_commands; }

step "huge pages and the target"
hugepages_setup 256
cat >/tmp/tgt.json <<EOF
{"subsystems": [{"subsystem": "nvmf", "config": [
  {"method": "nvmf_create_transport", "params": {"trtype": "TCP", "max_io_size": 1048576}}]}]}
EOF
start_target /tmp/tgt.json

step "attach refusals"
expect_refusal "no PCI function 0000:00:1f.7" rpc bdev_nvme_attach_controller -b Bad -t PCIe -a 0000:00:1f.7
expect_refusal "bound to no driver" rpc bdev_nvme_attach_controller -b Bad -t PCIe -a "$vfio_bdf"
expect_refusal "PCIe controllers only" rpc bdev_nvme_attach_controller -b Bad -t TCP -a 127.0.0.1
expect_refusal "not a PCI address" rpc bdev_nvme_attach_controller -b Bad -t PCIe -a /dev/nvme0

step "attach ${names[0]} over uio_pci_generic and ${names[1]} over vfio-pci"
nvme_bind_uio "$uio_bdf"
nvme_bind_vfio "$vfio_bdf"
[ "$(rpc bdev_nvme_attach_controller -b Nvme0 -t PCIe -a "$uio_bdf")" = Nvme0n1 ] || fail "attach Nvme0"
[ "$(rpc bdev_nvme_attach_controller -b Nvme1 -t PCIe -a "$vfio_bdf")" = Nvme1n1 ] || fail "attach Nvme1"
rpc bdev_nvme_get_controllers | tee "$out/controllers.json"
python3 - "$out/controllers.json" "$uio_bdf" "$vfio_bdf" <<'EOF' || fail "bdev_nvme_get_controllers"
import json, sys
ctrlrs = {c["name"]: c["ctrlrs"][0] for c in json.load(open(sys.argv[1]))}
assert ctrlrs["Nvme0"]["trid"] == {"trtype": "PCIe", "traddr": sys.argv[2]}, ctrlrs
assert ctrlrs["Nvme0"]["route"] == "uio" and ctrlrs["Nvme1"]["route"] == "vfio", ctrlrs
assert ctrlrs["Nvme1"]["bdevs"] == ["Nvme1n1"], ctrlrs
assert ctrlrs["Nvme0"]["sgl"] == "supported" and ctrlrs["Nvme1"]["sgl"] == "supported", ctrlrs
EOF
rpc bdev_get_bdevs -b Nvme0n1 | tee "$out/bdev-Nvme0n1.json"
python3 - "$out/bdev-Nvme0n1.json" <<'EOF' || fail "identify data in bdev_get_bdevs"
import json, sys
b = json.load(open(sys.argv[1]))[0]
assert (b["block_size"], b["num_blocks"]) == (512, 256 * 2048), b
nvme = b["driver_specific"]["nvme"][0]
assert nvme["ctrlr_data"]["serial_number"] == "cmb0", nvme
assert nvme["max_transfer_bytes"] == 512 * 1024, nvme
# QEMU's controller takes SGLs for NVM commands at any byte alignment (SGLS 01b).
assert nvme["sgl"] == "supported" and nvme["sgl_commands"] == 0, nvme
EOF
echo "ok: both controllers attached, identify data as the lab set it up"

step "NVMe/TCP in front: peerless-perf --verify, 4 KiB to 1 MiB"
rpc nvmf_create_subsystem "$nqn" -a -s PEERLESSNVME0001 >/dev/null
rpc nvmf_subsystem_add_ns "$nqn" Nvme0n1 >/dev/null
rpc nvmf_subsystem_add_ns "$nqn" Nvme1n1 >/dev/null
rpc nvmf_subsystem_add_listener "$nqn" -t tcp -a 127.0.0.1 -s 4420 >/dev/null
for ns in 1 2; do
    for size in 4096 131072 524288 1048576; do
        "$bin/peerless-perf" -r "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:$nqn ns:$ns" \
            -q 8 -o "$size" -w randwrite -t 2 --verify --json >"$out/perf-$ns-$size.json" 2>"$out/perf-$ns-$size.log" ||
            fail "peerless-perf --verify, namespace $ns, $size B (see $out/perf-$ns-$size.log)"
        echo "ok: namespace $ns, $size B: $(json_number "$out/perf-$ns-$size.json" iops) IOPS, verified"
    done
done
# The transport's buffers are 128 KiB (io_unit_size): a 512 KiB or 1 MiB write reaches the
# driver as several segments, which go as SGL Data Blocks, not PRPs or a bounce.
for bdev in Nvme0n1 Nvme1n1; do
    sgl=$(nvme_stat "$bdev" sgl_commands)
    [ "$sgl" -gt 0 ] || fail "none of $bdev's commands carried SGLs after writes of several transport buffers"
    [ "$(bounced "$bdev")" = 0 ] || fail "$(bounced "$bdev") of $bdev's commands went through bounce buffers"
    echo "ok: $bdev: $sgl commands carried SGLs, none bounced, every write verified"
done

step "completion interrupts: MSI-X over VFIO, polling over uio"
# The target's reactors sleep when idle (interrupt mode): Nvme1's queues raise MSI-X
# vectors whose eventfds wake them; Nvme0's, over uio (INTx only), are polled.
ctrlr_json=$(rpc bdev_nvme_get_controllers)
irq=$(python3 -c '
import json, sys
c = {c["name"]: c["ctrlrs"][0] for c in json.loads(sys.argv[1])}
print(c["Nvme0"]["interrupt_vectors"], c["Nvme1"]["interrupt_vectors"], c["Nvme1"]["completion_interrupts"])
' "$ctrlr_json")
read -r uio_vectors vfio_vectors vfio_wakes <<<"$irq"
[ "$uio_vectors" = 0 ] || fail "Nvme0 (uio) reports $uio_vectors interrupt vectors"
[ "$vfio_vectors" -ge 2 ] || fail "Nvme1 (vfio) has $vfio_vectors interrupt vectors, not the admin one and at least one I/O one"
[ "$vfio_wakes" -gt 0 ] || fail "Nvme1's reactors were never woken by a completion interrupt"
kernel_msix=$(awk -v bdf="$vfio_bdf" 'index($0, "vfio-msix") && index($0, bdf) { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i } END { print n + 0 }' /proc/interrupts)
[ "$kernel_msix" -gt 0 ] || fail "/proc/interrupts counts no vfio-msix interrupt of $vfio_bdf: $(grep vfio /proc/interrupts)"
echo "ok: Nvme1: $vfio_vectors MSI-X vectors, $vfio_wakes wakes by completion interrupt ($kernel_msix in /proc/interrupts); Nvme0 polled"

# No heap allocation per I/O on the driver's path either (DESIGN: none on the data path):
# over 3 s of steady 4 KiB writes on each route, the reactors' allocation count grows by
# less than 1 per 100 I/Os beyond what 3 idle seconds add (mostly the reading RPC's own).
reactor_allocations() {
    rpc framework_get_reactors | python3 -c 'import json, sys; print(sum(r["allocations"] for r in json.load(sys.stdin)["reactors"]))'
}
idle_before=$(reactor_allocations)
sleep 3
idle=$(($(reactor_allocations) - idle_before))
echo "ok: $idle allocations on the idle reactors in 3 s"
for ns in 1 2; do
    "$bin/peerless-perf" -r "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:$nqn ns:$ns" \
        -q 8 -o 4096 -w randwrite -t 7 --json >"$out/perf-alloc-$ns.json" 2>"$out/perf-alloc-$ns.log" &
    alloc_perf=$!
    sleep 2
    before=$(reactor_allocations)
    sleep 3
    after=$(reactor_allocations)
    wait "$alloc_perf" || fail "peerless-perf for the allocation count, namespace $ns: $(tail -2 "$out/perf-alloc-$ns.log")"
    window_ios=$(($(json_number "$out/perf-alloc-$ns.json" ios) * 3 / 7))
    [ "$window_ios" -gt 1000 ] || fail "namespace $ns: only $window_ios I/Os in the window"
    extra=$((after - before - idle))
    [ $((extra * 100)) -lt "$window_ios" ] ||
        fail "namespace $ns: $extra allocations on the reactors beyond idle for about $window_ios I/Os"
    echo "ok: namespace $ns: $extra allocations beyond idle for about $window_ios I/Os"
done

step "Linux's nvme-tcp host writes the pattern, reads it back"
modprobe nvme-tcp
grep -q '^nvme ' /proc/modules && fail "the kernel's PCIe nvme driver got loaded"
nvme connect -t tcp -a 127.0.0.1 -s 4420 -n "$nqn" || fail "nvme connect"
devs=("$(host_dev PEERLESSNVME0001 1)" "$(host_dev PEERLESSNVME0001 2)")
echo "ok: namespace 1 is ${devs[0]}, namespace 2 is ${devs[1]}"
# pattern DEV NAME OFFSET LEN SEED BS: written through the host with direct I/O, read back.
pattern() {
    local dev=$1 name=$2 offset=$3 len=$4 seed=$5 bs=$6
    python3 /job/nvme_pattern.py write - --offset "$offset" --len "$len" --seed "$seed" |
        dd of="$dev" bs="$bs" seek="$offset" oflag=seek_bytes,direct iflag=fullblock status=none
    python3 /job/nvme_pattern.py check "$dev" --offset "$offset" --len "$len" --seed "$seed" >/tmp/check.out ||
        fail "$name: the pattern read back differs: $(cat /tmp/check.out)"
    echo "$name $offset $len $seed" >>"$out/nvme-expect"
    echo "ok: $name: $len B at $offset in $bs blocks written and read back"
}
for i in 0 1; do
    pattern "${devs[$i]}" "${names[$i]}" $((64 << 20)) $((8 << 20)) $((100 + i)) 4096
    pattern "${devs[$i]}" "${names[$i]}" $((80 << 20)) $((16 << 20)) $((110 + i)) 128K
    pattern "${devs[$i]}" "${names[$i]}" $((128 << 20)) $((32 << 20)) $((120 + i)) 1M
done
nvme disconnect -n "$nqn" >/dev/null || fail "nvme disconnect"

step "detach and attach again"
rpc nvmf_subsystem_remove_ns "$nqn" 2 >/dev/null
rpc bdev_nvme_detach_controller Nvme1
rpc bdev_nvme_get_controllers -n Nvme1 >/dev/null 2>&1 && fail "Nvme1 is still listed after detach"
expect_refusal "does not exist" rpc bdev_nvme_detach_controller Nvme1
[ "$(rpc bdev_nvme_attach_controller -b Nvme1 -t PCIe -a "$vfio_bdf")" = Nvme1n1 ] || fail "attach Nvme1 again"
expect_refusal "already exists" rpc bdev_nvme_attach_controller -b Nvme1 -t PCIe -a "$vfio_bdf"
expect_refusal "already attached as Nvme0" rpc bdev_nvme_attach_controller -b Nvme9 -t PCIe -a "$uio_bdf"
rpc nvmf_subsystem_add_ns "$nqn" Nvme1n1 >/dev/null
# What the host wrote before the detach is still there, read through the new queues.
nvme connect -t tcp -a 127.0.0.1 -s 4420 -n "$nqn" >/dev/null || fail "nvme connect after the re-attach"
dev2=$(host_dev PEERLESSNVME0001 2)
python3 /job/nvme_pattern.py check "$dev2" --offset $((80 << 20)) --len $((16 << 20)) --seed 111 >/tmp/check.out ||
    fail "peer0 after the re-attach: $(cat /tmp/check.out)"
nvme disconnect -n "$nqn" >/dev/null || fail "nvme disconnect"
echo "ok: Nvme1 detached and attached again; the host reads back what it wrote before"

# p2p_export NQN SERIAL BDEV P2PMEM NAME SEED [BASE UNIT]: BDEV exported alone with p2pmem
# P2PMEM; the host connects with both digests and writes the pattern at 4 KiB, 128 KiB and
# 1 MiB blocks (SEED, +1, +2; UNIT, 4 UNIT and 8 UNIT MiB from BASE MiB, by default 176
# and 4: NAME's upper 56 MiB), reads it back and checks it. No payload byte may land in a
# host buffer and no command may be bounced; the backing file is checked again after
# power-off, so a CMB transfer that returns zeros fails here. $iomem_moved gets the
# payload bytes moved through device memory, $p2p_bytes what the host wrote.
p2p_export() {
    local nqn=$1 serial=$2 bdev=$3 p2pmem=$4 name=$5 seed=$6 base=${7:-176} unit=${8:-4} dev host_before sgl_before
    p2p_bytes=$(((13 * unit) << 20))
    rpc nvmf_create_subsystem "$nqn" -a -s "$serial" >/dev/null
    rpc nvmf_subsystem_add_ns "$nqn" "$bdev" --p2pmem "$p2pmem" >/dev/null
    rpc nvmf_subsystem_add_listener "$nqn" -t tcp -a 127.0.0.1 -s 4420 >/dev/null
    host_before=$(payload host)
    sgl_before=$(nvme_stat "$bdev" sgl_commands)
    iomem_before=$(payload iomem)
    nvme connect -t tcp -a 127.0.0.1 -s 4420 -n "$nqn" --hdr-digest --data-digest >/dev/null ||
        fail "nvme connect to $nqn with digests"
    dev=$(host_dev "$serial" 1)
    pattern "$dev" "$name" $((base << 20)) $((unit << 20)) "$seed" 4096
    pattern "$dev" "$name" $(((base + 2 * unit) << 20)) $(((4 * unit) << 20)) $((seed + 1)) 128K
    pattern "$dev" "$name" $(((base + 6 * unit) << 20)) $(((8 * unit) << 20)) $((seed + 2)) 1M
    nvme disconnect -n "$nqn" >/dev/null || fail "nvme disconnect from $nqn"
    [ "$(payload host)" = "$host_before" ] || fail "$(($(payload host) - host_before)) payload bytes went through host buffers"
    [ "$(bounced "$bdev")" = 0 ] || fail "$(bounced "$bdev") of $bdev's commands went through bounce buffers"
    echo "ok: $bdev: $(($(nvme_stat "$bdev" sgl_commands) - sgl_before)) commands with SGLs in this step"
    iomem_moved=$(($(payload iomem) - iomem_before))
}

step "P2P: ${names[0]}'s namespace in its own CMB, digests on"
# Write data lands in the CMB from the socket (through the I/O accessors, CRC32C on a
# staging chunk), the SSD takes it from there by the CMB's bus address, and reads go the
# other way.
rpc nvmf_subsystem_remove_ns "$nqn" 1 >/dev/null
# Whole outputs into variables: grep -q would stop reading early, and pipefail would then
# count the writer's SIGPIPE as a failure.
bdev_json=$(rpc bdev_get_bdevs -b Nvme0n1)
grep -q '"bus_address"' <<<"$bdev_json" || fail "Nvme0n1 reports no CMB"
p2p_export nqn.2016-06.io.peerless:nvme-driver-p2p PEERLESSNVMEP2P1 Nvme0n1 auto "${names[0]}" 130
rpc mem_get_stats >"$out/mem-p2p.json"
[ "$iomem_moved" -ge $((2 * (52 << 20))) ] || fail "only $iomem_moved payload bytes in the CMB for 52 MiB written and read"
echo "ok: 52 MiB written and read through ${names[0]}'s CMB: $iomem_moved payload bytes there, none in host buffers, none bounced"

step "peer to peer over VFIO: ${names[1]} reads into and writes out of ${names[0]}'s CMB"
# The CMB's BAR window is mapped into the VFIO container's IOMMU beside host memory: the
# second SSD's PRPs carry IOVAs, which the IOMMU turns into the first SSD's BAR addresses.
rpc nvmf_subsystem_remove_ns "$nqn" 2 >/dev/null
p2p_export nqn.2016-06.io.peerless:nvme-driver-peer-vfio PEERLESSNVMEPEERV Nvme1n1 "cmb $uio_bdf" "${names[1]}" 150 96 2
[ "$iomem_moved" -ge $((2 * p2p_bytes)) ] || fail "only $iomem_moved payload bytes in the CMB for $p2p_bytes written and read"
rpc nvmf_delete_subsystem nqn.2016-06.io.peerless:nvme-driver-peer-vfio >/dev/null
echo "ok: $((p2p_bytes >> 20)) MiB from ${names[1]} over VFIO through ${names[0]}'s CMB, none in host buffers, none bounced"

step "peer to peer over uio: ${names[1]} reads into and writes out of ${names[0]}'s CMB"
# The second SSD moves to uio_pci_generic (detached first: the driver lets go of the VFIO
# device), where no IOMMU stands between it and the first SSD's BAR: it takes the CMB's
# bus addresses in its PRPs. Its namespace is exported with p2pmem naming that CMB.
nqn_peer=nqn.2016-06.io.peerless:nvme-driver-peer
rpc bdev_nvme_detach_controller Nvme1
nvme_bind_uio "$vfio_bdf"
[ "$(rpc bdev_nvme_attach_controller -b Nvme1 -t PCIe -a "$vfio_bdf")" = Nvme1n1 ] || fail "attach Nvme1 over uio"
ctrlr_json=$(rpc bdev_nvme_get_controllers -n Nvme1)
grep -q '"route": "uio"' <<<"$ctrlr_json" || fail "Nvme1 is not on the uio route"
p2p_export "$nqn_peer" PEERLESSNVMEPEER Nvme1n1 "cmb $uio_bdf" "${names[1]}" 140
[ "$iomem_moved" -ge $((2 * (52 << 20))) ] || fail "only $iomem_moved payload bytes in the CMB for 52 MiB written and read"
echo "ok: 52 MiB through ${names[0]}'s CMB to and from ${names[1]}, none in host buffers, none bounced"

step "save_config, SIGTERM"
rpc save_config >"$out/saved.json"
stop_target
grep -q "nvme $uio_bdf: shut down" "$out/target.log" || fail "no shutdown notice for $uio_bdf"
grep -q "nvme $vfio_bdf: shut down" "$out/target.log" || fail "no shutdown notice for $vfio_bdf"
echo "ok: both controllers shut down"

step "the saved config replayed"
# Both attaches and the namespaces (the peer one naming cmb0's CMB) come back from it.
cp "$out/target.log" "$out/target-first.log"
start_target "$out/saved.json"
rpc bdev_nvme_get_controllers >"$out/controllers-replayed.json"
python3 - "$out/controllers-replayed.json" "$uio_bdf" "$vfio_bdf" <<'EOF' || fail "the replayed controllers"
import json, sys
ctrlrs = {c["name"]: c["ctrlrs"][0]["trid"]["traddr"] for c in json.load(open(sys.argv[1]))}
assert ctrlrs == {"Nvme0": sys.argv[2], "Nvme1": sys.argv[3]}, ctrlrs
EOF
subsystems=$(rpc nvmf_get_subsystems)
grep -q "\"p2pmem\": \"cmb $uio_bdf\"" <<<"$subsystems" || fail "the peer namespace's p2pmem did not come back"
# Reads only: the patterns written above stay for run.sh's check of the backing files.
"$bin/peerless-perf" -r "trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:$nqn_peer ns:1" \
    -q 8 -o 131072 -w randread -t 2 --json >"$out/perf-replayed.json" 2>"$out/perf-replayed.log" ||
    fail "peerless-perf on the replayed peer namespace"
stop_target
echo "ok: save_config round trip: both controllers, the P2P namespaces, I/O through the peer path"

step "fio's peerless_bdev engine on both routes, 4 KiB to 1 MiB"
# The driver inside fio (the engine runs the framework in process, from a JSON config):
# verify=crc32c random writes, each size in its own part of the namespaces; 1 MiB splits
# at the SSDs' 512 KiB MDTS.
nvme_bind_vfio "$vfio_bdf"
cat >/tmp/fio-bdev.json <<EOF
{"subsystems": [{"subsystem": "bdev", "config": [
  {"method": "bdev_nvme_attach_controller", "params": {"name": "Nvme0", "trtype": "PCIe", "traddr": "$uio_bdf"}},
  {"method": "bdev_nvme_attach_controller", "params": {"name": "Nvme1", "trtype": "PCIe", "traddr": "$vfio_bdf"}}]}]}
EOF
offset=0
for bs in 4k 128k 512k 1m; do
    LD_PRELOAD="$bin/libpeerless_fio.so" fio --name="bdev-$bs" --ioengine=peerless_bdev --thread=1 \
        --json_conf=/tmp/fio-bdev.json --filename=Nvme0n1:Nvme1n1 --rw=randwrite --bs="$bs" --iodepth=16 \
        --offset=$((offset << 20)) --size=16m --verify=crc32c --do_verify=1 --output="$out/fio-$bs.txt" ||
        { cat "$out/fio-$bs.txt"; fail "fio with bs=$bs failed"; }
    grep -q 'err= 0' "$out/fio-$bs.txt" || { cat "$out/fio-$bs.txt"; fail "fio with bs=$bs reported an error"; }
    echo "ok: fio bs=$bs verified on Nvme0n1 (uio) and Nvme1n1 (vfio)"
    offset=$((offset + 16))
done
step "done: the user-space NVMe driver on both routes"
