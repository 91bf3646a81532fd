# Shared by the guest jobs that run peerless-tgt inside the guest (run.sh's
# PEERLESS_GUEST_TARGET=guest mode, which copies this file to /job/target-lib.sh). Source
# it after /job/env; it sets `set -Eeuo pipefail` and an ERR trap that fails the job.
#
#   step TEXT               a heading with the seconds since the job began
#   fail TEXT               the reason, the target's last log lines, the kernel's, exit 1
#   json_number FILE KEY    a number from peerless-perf's one-line --json summary (the
#                           guest has no jq; python3 came with fio)
#   rpc ARGS, expect_refusal TEXT CMD...: the target's RPC, and a call that must fail
#                           saying TEXT
#   start_target CONFIG     peerless-tgt -c CONFIG in interrupt mode (the guest has two
#                           emulated CPUs), its log in $out/target.log, waited for ready
#   stop_target             SIGTERM; it must exit 0 within 20 s, log its orderly stop and
#                           no panic
#   rxe_up NETDEV           soft-RoCE: rxe0 over NETDEV at MTU 9000, its port active
#   nvme_bind_uio BDF, nvme_bind_vfio BDF, hugepages_setup N, nvme_cmb_info BDF,
#   nvme_regs BDF sysfs|vfio: the emulated NVMe SSDs for a user-space driver (below)
#
# Variables: bin (the shared binaries), out (/job/out), sock (the RPC socket), tgt_pid;
# TARGET_FLAGS adds flags to peerless-tgt.
set -Eeuo pipefail
bin=$PEERLESS_BIN
out=/job/out
sock=/tmp/peerless.sock
t0=$(date +%s)
tgt_pid=""

step() { printf '\n=== %s (+%ss)\n' "$*" "$(($(date +%s) - t0))"; }
fail() {
    echo "FAIL: $*"
    if [ -s "$out/target.log" ]; then
        echo "--- last lines of the target log ($out/target.log)"
        tail -20 "$out/target.log"
    fi
    # rxe asks eth0 its speed at every query; virtio-net has none to tell.
    echo "--- kernel log (last 20 lines)"
    dmesg | grep -v 'speed is unknown' | tail -20 || true
    [ -z "$tgt_pid" ] || kill -KILL "$tgt_pid" 2>/dev/null || true
    exit 1
}
trap 'fail "line $LINENO: $BASH_COMMAND exited $?"' ERR
# sed, not head: head leaving early could end grep with SIGPIPE, which pipefail reports.
json_number() { grep -o "\"$2\":[0-9.e+-]*" "$1" | sed -n '1s/.*://p'; }

start_target() {
    cp "$1" "$out/target.json"
    # shellcheck disable=SC2086 # TARGET_FLAGS splits on purpose
    "$bin/peerless-tgt" -c "$1" -r "$sock" --interrupt-mode ${TARGET_FLAGS:-} >"$out/target.log" 2>&1 &
    tgt_pid=$!
    # Under TCG the first start pages a 30 MB binary in over 9p: allow a minute.
    for _ in $(seq 600); do
        grep -q "peerless-tgt ready" "$out/target.log" && break
        kill -0 "$tgt_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$tgt_pid" 2>/dev/null || { tgt_pid=""; fail "peerless-tgt exited at start"; }
    grep -q "peerless-tgt ready" "$out/target.log" || fail "peerless-tgt not ready after 60 s"
}

stop_target() {
    kill -TERM "$tgt_pid"
    for _ in $(seq 200); do kill -0 "$tgt_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$tgt_pid" 2>/dev/null && fail "peerless-tgt still running 20 s after SIGTERM"
    local trc=0
    wait "$tgt_pid" || trc=$?
    tgt_pid=""
    [ "$trc" -eq 0 ] || fail "peerless-tgt exited $trc after SIGTERM"
    grep -q "peerless-tgt stopped" "$out/target.log" || fail "no 'peerless-tgt stopped' in the target log"
    if grep -n -E 'panicked|RUST_BACKTRACE' "$out/target.log"; then fail "peerless-tgt panicked"; fi
    echo "ok: peerless-tgt exited 0 and logged its orderly stop"
}

rxe_up() {
    modprobe -a rdma_rxe ib_uverbs rdma_ucm
    rdma link add rxe0 type rxe netdev "$1"
    ip link set "$1" mtu 9000
    for _ in $(seq 50); do
        ibv_devinfo -d rxe0 >"$out/ibv_devinfo.txt"
        grep -q 'state:.*PORT_ACTIVE' "$out/ibv_devinfo.txt" && break
        sleep 0.1
    done
    grep -q 'state:.*PORT_ACTIVE' "$out/ibv_devinfo.txt" || fail "rxe0's port is not active"
    echo "ok: rxe0 active on $1"
}

# rpc ARGS...: peerless-rpc against the job's target.
rpc() { "$bin/peerless-rpc" -s "$sock" "$@"; }

# expect_refusal TEXT CMD...: CMD must fail and say TEXT.
expect_refusal() {
    local text=$1 rc=0
    shift
    "$@" >/tmp/refusal.out 2>&1 || rc=$?
    [ "$rc" != 0 ] || fail "'$*' succeeded; it should have been refused"
    grep -q -- "$text" /tmp/refusal.out || fail "'$*' was refused without saying '$text': $(cat /tmp/refusal.out)"
    echo "ok: refused, saying: $(grep -m1 -- "$text" /tmp/refusal.out)"
}

# --- Emulated NVMe SSDs (run.sh's PEERLESS_GUEST_NVME; /job/env's NVME_BDFS, NVME_NAMES)
# for a user-space driver. Nothing binds them at boot (no udev), and nothing here loads the
# kernel's nvme driver: once it has probed and let go, the CMB registers read 0 (LAB.md).

# nvme_bind BDF DRIVER: hands BDF to DRIVER through driver_override (unbinding whatever
# had it) and checks that DRIVER took it.
nvme_bind() {
    local bdf=$1 drv=$2 dev=/sys/bus/pci/devices/$1 cur=""
    [ -d "$dev" ] || fail "no PCI device $bdf (PEERLESS_GUEST_NVME: ${NVME_BDFS:-none})"
    [ -e "$dev/driver" ] && cur=$(basename "$(readlink -f "$dev/driver")")
    if [ "$cur" != "$drv" ]; then
        [ -z "$cur" ] || echo "$bdf" >"$dev/driver/unbind"
        echo "$drv" >"$dev/driver_override"
        echo "$bdf" >/sys/bus/pci/drivers_probe
    fi
    [ -e "$dev/driver" ] && cur=$(basename "$(readlink -f "$dev/driver")") || cur=""
    [ "$cur" = "$drv" ] || fail "$bdf did not bind to $drv (driver now: ${cur:-none}; dmesg below)"
    echo "ok: $bdf ($(cat "$dev/vendor"):$(cat "$dev/device"), class $(cat "$dev/class")) bound to $drv"
}

# nvme_bind_uio BDF: uio_pci_generic (no IOMMU needed; DMA addresses are physical, from
# /proc/self/pagemap). Prints the uio node; nvme_uio_dev BDF prints it again.
nvme_bind_uio() {
    local grp=/sys/bus/pci/devices/$1/iommu_group
    if [ -e "$grp" ] && [ "$(cat "$grp/type")" != identity ]; then
        fail "$1 is behind the IOMMU in a $(cat "$grp/type") domain: uio DMA to physical addresses would fault (boot with iommu=pt; run.sh adds it)"
    fi
    modprobe uio_pci_generic
    nvme_bind "$1" uio_pci_generic
    local uio
    uio=$(nvme_uio_dev "$1")
    [ -c "$uio" ] || fail "$1 is bound to uio_pci_generic but $uio is not a character device"
    echo "ok: $1 is $uio (/sys/class/uio/$(basename "$uio"))"
}
nvme_uio_dev() {
    local d
    d=$(ls "/sys/bus/pci/devices/$1/uio" 2>/dev/null | head -1)
    [ -n "$d" ] || fail "$1 has no uio device"
    echo "/dev/$d"
}

# nvme_bind_vfio BDF: vfio-pci behind the virtual IOMMU (PEERLESS_GUEST_IOMMU=1; the
# kernel has no VFIO no-IOMMU mode). Prints the group's node; nvme_vfio_group BDF prints it
# again.
nvme_bind_vfio() {
    [ -e "/sys/bus/pci/devices/$1/iommu_group" ] ||
        fail "$1 has no IOMMU group: vfio-pci needs the guest's IOMMU (run.sh with PEERLESS_GUEST_IOMMU=1)"
    modprobe -a vfio-pci vfio_iommu_type1
    nvme_bind "$1" vfio-pci
    local grp
    grp=$(nvme_vfio_group "$1")
    [ -c "$grp" ] || fail "$1 is bound to vfio-pci but $grp is not a character device"
    echo "ok: $1 is $grp (IOMMU group of $(ls "/sys/kernel/iommu_groups/$(basename "$grp")/devices" | wc -l) device(s))"
}
nvme_vfio_group() { echo "/dev/vfio/$(basename "$(readlink -f "/sys/bus/pci/devices/$1/iommu_group")")"; }

# hugepages_setup N: N 2 MiB huge pages reserved and hugetlbfs at /dev/hugepages.
hugepages_setup() {
    local want=$1 got
    echo "$want" >/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
    got=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)
    [ "$got" -ge "$want" ] || fail "only $got of $want 2 MiB huge pages (guest RAM: PEERLESS_GUEST_MEM)"
    mkdir -p /dev/hugepages
    mountpoint -q /dev/hugepages || mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages
    echo "ok: $got huge pages of 2 MiB, hugetlbfs at /dev/hugepages ($(grep HugePages_Free /proc/meminfo | tr -s ' '))"
}

# nvme_cmb_info BDF: the BARs and where the CMB is (CMBLOC/CMBSZ, read with CMBMSC.CRE set
# for the moment and CMBMSC put back as it was). KEY=VALUE lines: BARn=..., CAP.CMBS=,
# CMB=BARn offset= size= supports=... or CMB=none.
nvme_cmb_info() { python3 /job/nvme_regs.py cmb "$1"; }

# nvme_regs BDF sysfs|vfio: CAP, VS, CC, CSTS read from user space, through sysfs's
# resource0 or through VFIO (also the IOVA ranges the IOMMU offers).
nvme_regs() { python3 /job/nvme_regs.py "$2" "$1"; }
