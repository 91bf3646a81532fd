#!/usr/bin/env bash
# Boots the guest built by ci/guest/build.sh and runs JOB (a bash script) inside it, against
# a peerless-tgt started here on loopback, or (PEERLESS_GUEST_TARGET=guest) with the release
# binaries shared into the guest so the job runs the target there. Usage: ci/guest/run.sh JOB
#
# The run folder ($PEERLESS_GUEST_DIR/runs/NAME-TIME, printed) holds console.log (the
# guest's serial console), target.log (peerless-tgt's stderr), target.json, and out/ (the
# job's job.log, rc, and whatever it writes to /job/out). The guest sees the run folder as
# /job over virtio-9p, the target at 10.0.2.100:4420 (one socat per connection, to
# 127.0.0.1:PORT here), and nothing else: user networking with restrict=on.
#
# Environment:
#   PEERLESS_TGT          the target binary (default: $CARGO_TARGET_DIR or build, release/peerless-tgt)
#   PEERLESS_TGT_CONFIG   JSON config (default: examples/quickstart.json; its 4420 listener is
#                         moved to PORT)
#   PEERLESS_TGT_PORT     host port (default: a free one, so parallel runs do not collide)
#   PEERLESS_TGT_FLAGS    extra flags for the target (default: -L nvmf -L nvmf_tcp
#                         --interrupt-mode: a polling reactor would take one of the two
#                         cores the emulated guest needs)
#   PEERLESS_GUEST_TARGET set to 0 to start no target; set to `guest` to start none here and
#                         share PEERLESS_GUEST_BIN read-only with the guest at /peerless, for a
#                         job that runs peerless-tgt inside the guest (where soft-RoCE and
#                         kernel TLS exist); /job/env then holds PEERLESS_BIN=/peerless,
#                         GUEST_ADDR=10.0.2.15 and GUEST_NETDEV=eth0
#   PEERLESS_GUEST_BIN    the folder shared in `guest` mode (default: $CARGO_TARGET_DIR or
#                         build, release/); it must hold peerless-tgt, peerless-perf and
#                         peerless-rpc, built without -C target-cpu=native (the guest's
#                         `-cpu max` has no AVX-512)
#   PEERLESS_GUEST_HOST   a host-side script to run instead of the one target: run.sh starts
#                         `bash SCRIPT RUN_DIR` in the background and boots once the script
#                         has written RUN_DIR/env, RUN_DIR/forwards ("GUEST_PORT HOST_PORT" a
#                         line: 10.0.2.100:GUEST_PORT reaches 127.0.0.1:HOST_PORT) and
#                         RUN_DIR/host.ready; the script serves the job's requests (see
#                         ci/guest/README.md) and is sent SIGTERM when the guest is done
#   PEERLESS_GUEST_NVME   emulated NVMe SSDs for the guest, space-separated NAME[:OPT,...] specs,
#                         OPT cmb=MB (a Controller Memory Buffer) or iops=N (QEMU throttles the
#                         backing drive to N I/Os a second, so commands outlive short deadlines)
#                         (e.g. "cmb0:cmb=64 peer0"; NAME is also the serial). Each is backed
#                         by $run/nvme-NAME.raw (sparse, zeros, kept after the run so the host
#                         can compare bytes) at a fixed address, the Nth at 0000:00:1N.0 (the
#                         other devices keep their automatic slots below 0x10). /job/env gets
#                         NVME_NAMES and NVME_BDFS, in the same order. No kernel driver binds
#                         them (the guest has no udev); jobs/target-lib.sh binds them to
#                         uio_pci_generic or vfio-pci. After the guest powers off, every
#                         "NAME OFFSET LEN SEED" line of out/nvme-expect is checked with
#                         ci/guest/nvme_pattern.py against nvme-NAME.raw; a mismatch fails
#                         the run. OPT ns=N (1..8) puts the controller in an NVM subsystem
#                         of its own (nvme-subsys) with N namespaces (nvme-ns): NSID 1
#                         attached and backed by nvme-NAME.raw, NSIDs 2..N detached (a job
#                         attaches them with Namespace Attachment, which raises a namespace
#                         change event), each backed by nvme-NAME-nsK.raw
#   PEERLESS_GUEST_NVME_MB size of each backing file in MiB (default: 256)
#   PEERLESS_GUEST_IOMMU  set to 1 for a virtual Intel IOMMU (intel-iommu with interrupt
#                         remapping, aw-bits=48: IOVAs below 2^48, as IOVA = VA needs) and
#                         intel_iommu=on iommu=pt on the kernel line: vfio-pci needs it, as
#                         the guest kernel has no VFIO no-IOMMU mode; pt keeps the other
#                         devices (uio_pci_generic's too) on physical addresses
#   PEERLESS_GUEST_IOMMU_AW_BITS the virtual IOMMU's address width, 39 or 48 (default: 48;
#                         39 is QEMU's own default and many client machines', too narrow
#                         for IOVA = VA, which the driver's VFIO route does not need)
#   PEERLESS_GUEST_MEM    guest RAM in MiB (default: 2048; hugepages come out of it)
#   PEERLESS_GUEST_TIMEOUT seconds for the whole boot (default: 900)
#   PEERLESS_GUEST_DIR    where build.sh put the images (default: build/guest)
set -euo pipefail
[ $# -eq 1 ] && [ -f "$1" ] || { echo "usage: $0 JOB-SCRIPT" >&2; exit 2; }
job=$(realpath "$1")
cd "$(dirname "$0")/../.."
repo=$(pwd)
gdir=$(realpath -m "${PEERLESS_GUEST_DIR:-$repo/build/guest}")
[ -f "$gdir/rootfs.img" ] && [ -f "$gdir/initrd.cpio.gz" ] || { echo "no guest images in $gdir: run ci/guest/build.sh" >&2; exit 2; }
timeout_s=${PEERLESS_GUEST_TIMEOUT:-900}
tgt=${PEERLESS_TGT:-${CARGO_TARGET_DIR:-$repo/build}/release/peerless-tgt}
config=${PEERLESS_TGT_CONFIG:-$repo/examples/quickstart.json}
guest_target=${PEERLESS_GUEST_TARGET:-1}

name=$(basename "$job" .sh)
run="$gdir/runs/$name-$(date -u +%Y%m%dT%H%M%S)-$$"
mkdir -p "$run/out"
cp "$job" "$run/job.sh"
# What jobs that run the target in the guest share (jobs/target-lib.sh).
cp ci/guest/jobs/target-lib.sh "$run/target-lib.sh"
console="$run/console.log"
log() { printf '[guest-run %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

tgt_pid=""
host_pid=""
bin_share=()
cleanup() {
    if [ -n "$host_pid" ] && kill -0 "$host_pid" 2>/dev/null; then
        kill -TERM "$host_pid" 2>/dev/null || true
        # The host side stops its targets and whatever else it started; give it time.
        for _ in $(seq 600); do kill -0 "$host_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$host_pid" 2>/dev/null || true
    fi
    host_pid=""
    if [ -n "$tgt_pid" ] && kill -0 "$tgt_pid" 2>/dev/null; then
        kill -TERM "$tgt_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$tgt_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$tgt_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

port=${PEERLESS_TGT_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
echo "4420 $port" >"$run/forwards"
if [ -n "${PEERLESS_GUEST_HOST:-}" ]; then
    host_side=$(realpath "$PEERLESS_GUEST_HOST")
    cp "$host_side" "$run/host.sh"
    bash "$host_side" "$run" >"$run/host.log" 2>&1 &
    host_pid=$!
    for _ in $(seq 1200); do
        [ -f "$run/host.ready" ] && break
        kill -0 "$host_pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -f "$run/host.ready" ] || { echo "the host side never got ready:" >&2; tail -30 "$run/host.log" >&2; exit 1; }
    log "host side pid $host_pid ready ($run/host.log): forwards $(tr '\n' ' ' <"$run/forwards")"
elif [ "$guest_target" = guest ]; then
    bin=$(realpath -m "${PEERLESS_GUEST_BIN:-${CARGO_TARGET_DIR:-$repo/build}/release}")
    for b in peerless-tgt peerless-perf peerless-rpc; do
        [ -x "$bin/$b" ] || { echo "no $bin/$b to share with the guest (cargo build --release -p peerless-target -p peerless-tools, or set PEERLESS_GUEST_BIN)" >&2; exit 2; }
    done
    # The job starts its own target; these name where it finds the binaries and itself.
    printf 'PEERLESS_BIN=/peerless\nGUEST_ADDR=10.0.2.15\nGUEST_NETDEV=eth0\n' >"$run/env"
    # shellcheck disable=SC2054 # the commas belong to QEMU option values
    bin_share=(-fsdev "local,id=bin,path=$bin,security_model=none,readonly=on"
        -device virtio-9p-pci,fsdev=bin,mount_tag=peerless)
    log "no target here: the guest runs the binaries of $bin (at /peerless)"
elif [ "$guest_target" != 0 ]; then
    [ -x "$tgt" ] || { echo "no target binary $tgt (cargo build --release -p peerless-target, or set PEERLESS_TGT)" >&2; exit 2; }
    # The config with its listener on PORT, and what the job should find, as shell variables.
    python3 - "$config" "$port" "$run/target.json" "$run/env" <<'EOF'
import json, sys, shlex
src, port, dst, envf = sys.argv[1:]
cfg = json.load(open(src))
bdevs, subs, env = {}, {}, {}
for sub in cfg["subsystems"]:
    for e in sub.get("config") or []:
        m, p = e["method"], e.get("params", {})
        if m == "bdev_malloc_create":
            bdevs[p["name"]] = p
        elif m == "nvmf_create_subsystem":
            subs.setdefault(p["nqn"], {}).update(p)
        elif m == "nvmf_subsystem_add_ns":
            subs.setdefault(p["nqn"], {}).setdefault("ns", []).append(p["namespace"])
        elif m == "nvmf_subsystem_add_listener":
            la = p["listen_address"]
            if la.get("trsvcid") == "4420":
                la["trsvcid"] = port
json.dump(cfg, open(dst, "w"), indent=2)
nqn, s = next((n, s) for n, s in subs.items() if s.get("ns"))
b = bdevs[s["ns"][0]["bdev_name"]]
env = {"TGT_NQN": nqn, "TGT_SERIAL": s.get("serial_number", ""), "TGT_MODEL": s.get("model_number", ""),
       "TGT_NUM_BLOCKS": b["num_blocks"], "TGT_BLOCK_SIZE": b["block_size"],
       "TGT_ADDR": "10.0.2.100", "TGT_PORT": "4420", "TGT_HOST_PORT": port}
with open(envf, "w") as f:
    for k, v in env.items():
        f.write(f"{k}={shlex.quote(str(v))}\n")
EOF
    # shellcheck disable=SC2086
    "$tgt" -c "$run/target.json" -r "$run/rpc.sock" ${PEERLESS_TGT_FLAGS:--L nvmf -L nvmf_tcp --interrupt-mode} >"$run/target.log" 2>&1 &
    tgt_pid=$!
    for _ in $(seq 100); do
        grep -q "peerless-tgt ready" "$run/target.log" && break
        kill -0 "$tgt_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$tgt_pid" 2>/dev/null || { echo "peerless-tgt exited at start:" >&2; tail -20 "$run/target.log" >&2; exit 1; }
    grep -q "listening on 127.0.0.1:$port" "$run/target.log" || { echo "peerless-tgt is not listening on $port:" >&2; tail -20 "$run/target.log" >&2; exit 1; }
    log "peerless-tgt pid $tgt_pid on 127.0.0.1:$port ($run/target.log)"
else
    : >"$run/env"
fi

# Emulated NVMe SSDs: explicit addresses from slot 0x10 up, so the BDFs the job sees do not
# depend on how many other devices this run has.
nvme_devs=()
nvme_names=()
nvme_bdfs=()
nvme_mb=${PEERLESS_GUEST_NVME_MB:-256}
for spec in ${PEERLESS_GUEST_NVME:-}; do
    nvme_name=${spec%%:*}
    opts=""
    [ "$nvme_name" = "$spec" ] || opts=${spec#*:}
    [[ "$nvme_name" =~ ^[A-Za-z0-9_-]{1,20}$ ]] || { echo "PEERLESS_GUEST_NVME: bad name '$nvme_name' (letters, digits, - and _, at most 20: it is also the serial)" >&2; exit 2; }
    for n in "${nvme_names[@]}"; do
        [ "$n" != "$nvme_name" ] || { echo "PEERLESS_GUEST_NVME: '$nvme_name' named twice" >&2; exit 2; }
    done
    dev="nvme,serial=$nvme_name"
    namespaces=0
    drive_opts=""
    IFS=, read -r -a kvs <<<"$opts"
    for kv in "${kvs[@]}"; do
        if [[ "$kv" =~ ^cmb=([1-9][0-9]{0,4})$ ]]; then
            dev+=",cmb_size_mb=${BASH_REMATCH[1]}"
        elif [[ "$kv" =~ ^iops=([1-9][0-9]{0,5})$ ]]; then
            drive_opts+=",throttling.iops-total=${BASH_REMATCH[1]}"
        elif [[ "$kv" =~ ^ns=([1-8])$ ]]; then
            namespaces=${BASH_REMATCH[1]}
        else
            echo "PEERLESS_GUEST_NVME: unknown option '$kv' in '$spec' (known: cmb=MB, iops=N, ns=N)" >&2
            exit 2
        fi
    done
    slot=$((0x10 + ${#nvme_names[@]}))
    [ "$slot" -le $((0x1e)) ] || { echo "PEERLESS_GUEST_NVME: at most 15 devices" >&2; exit 2; }
    truncate -s "${nvme_mb}M" "$run/nvme-$nvme_name.raw"
    # shellcheck disable=SC2054 # the commas belong to QEMU option values
    nvme_devs+=(-drive "file=$run/nvme-$nvme_name.raw,if=none,id=nvme-$nvme_name,format=raw$drive_opts")
    if [ "$namespaces" = 0 ]; then
        nvme_devs+=(-device "$dev,drive=nvme-$nvme_name,addr=$(printf '%02x' "$slot").0")
    else
        # The namespaces plug into the controller's bus, which QEMU names after its id.
        nvme_devs+=(-device "nvme-subsys,id=subsys-$nvme_name,nqn=$nvme_name"
            -device "$dev,id=ctrl-$nvme_name,subsys=subsys-$nvme_name,addr=$(printf '%02x' "$slot").0"
            -device "nvme-ns,bus=ctrl-$nvme_name,drive=nvme-$nvme_name,nsid=1")
        for ((k = 2; k <= namespaces; k++)); do
            truncate -s "${nvme_mb}M" "$run/nvme-$nvme_name-ns$k.raw"
            nvme_devs+=(-drive "file=$run/nvme-$nvme_name-ns$k.raw,if=none,id=nvme-$nvme_name-ns$k,format=raw$drive_opts"
                -device "nvme-ns,bus=ctrl-$nvme_name,drive=nvme-$nvme_name-ns$k,nsid=$k,detached=on")
        done
    fi
    nvme_names+=("$nvme_name")
    nvme_bdfs+=("$(printf '0000:00:%02x.0' "$slot")")
done
if [ ${#nvme_names[@]} -gt 0 ]; then
    printf 'NVME_NAMES="%s"\nNVME_BDFS="%s"\n' "${nvme_names[*]}" "${nvme_bdfs[*]}" >>"$run/env"
    cp ci/guest/nvme_pattern.py ci/guest/nvme_regs.py ci/guest/nvme_dma.py "$run/"
    for i in "${!nvme_names[@]}"; do
        log "nvme ${nvme_names[$i]} at ${nvme_bdfs[$i]}: $run/nvme-${nvme_names[$i]}.raw (${nvme_mb} MiB)"
    done
fi

# The virtual IOMMU is a system device, but QEMU wants it before the PCI devices it
# translates for. Interrupt remapping on: vfio_iommu_type1 refuses a group without it
# ("No interrupt remapping support", unless allow_unsafe_interrupts); under TCG it needs no
# split irqchip. caching-mode only matters when the guest assigns devices to a nested VM.
iommu_dev=()
kernel_extra=""
case "${PEERLESS_GUEST_IOMMU:-0}" in
0) ;;
1)
    # aw-bits=48 by default, as server IOMMUs have; 39 is QEMU 7.2's own.
    aw_bits=${PEERLESS_GUEST_IOMMU_AW_BITS:-48}
    [[ "$aw_bits" =~ ^(39|48)$ ]] || { echo "PEERLESS_GUEST_IOMMU_AW_BITS: 39 or 48, not '$aw_bits'" >&2; exit 2; }
    iommu_dev=(-device "intel-iommu,intremap=on,aw-bits=$aw_bits")
    # iommu=pt: devices no VFIO user owns keep an identity mapping, so a uio_pci_generic
    # device beside a vfio-pci one still DMAs to physical addresses (without it the
    # kernel's DMA domain translates them and every command faults in the DMAR).
    kernel_extra=" intel_iommu=on iommu=pt"
    log "virtual IOMMU: intel-iommu (aw-bits $aw_bits), intel_iommu=on iommu=pt"
    ;;
*) echo "PEERLESS_GUEST_IOMMU: 0 or 1, not '$PEERLESS_GUEST_IOMMU'" >&2; exit 2 ;;
esac
mem_mb=${PEERLESS_GUEST_MEM:-2048}
[[ "$mem_mb" =~ ^[0-9]+$ ]] && [ "$mem_mb" -ge 512 ] || { echo "PEERLESS_GUEST_MEM: MiB, at least 512, not '$mem_mb'" >&2; exit 2; }

netdev="user,id=n0,restrict=on"
while read -r guest_port host_port; do
    # socat's messages go to a file: on stderr they would reach the guest as bytes of the
    # connection (a target that is down would answer a reconnect with socat's error text).
    netdev+=",guestfwd=tcp:10.0.2.100:$guest_port-cmd:socat -lf $run/socat.log - TCP:127.0.0.1:$host_port,,nodelay"
done <"$run/forwards"

q="$gdir/qemu/usr"
log "booting the guest (timeout ${timeout_s}s), console: $console"
start=$(date +%s)
set +e
QEMU_MODULE_DIR="$q/lib/x86_64-linux-gnu/qemu" timeout -k 10 "$timeout_s" "$q/bin/qemu-system-x86_64" \
    -L "$q/share/qemu" -L /usr/share/seabios -L /usr/lib/ipxe/qemu \
    -nodefaults -no-user-config -display none -no-reboot \
    -accel tcg,thread=multi -M q35 -cpu max -m "$mem_mb" -smp 2 \
    "${iommu_dev[@]}" \
    -kernel "$gdir/vmlinuz" -initrd "$gdir/initrd.cpio.gz" \
    -append "console=ttyS0 panic=-1 net.ifnames=0 loglevel=6$kernel_extra" \
    -serial "file:$console" \
    -drive "file=$gdir/rootfs.img,if=none,id=root,format=raw,snapshot=on" \
    -device virtio-blk-pci,drive=root \
    -fsdev "local,id=job,path=$run,security_model=none" \
    -device virtio-9p-pci,fsdev=job,mount_tag=job \
    "${bin_share[@]}" \
    -netdev "$netdev" \
    -device virtio-net-pci,netdev=n0,romfile= \
    "${nvme_devs[@]}" \
    >"$run/qemu.log" 2>&1
qrc=$?
set -e
log "guest ran $(($(date +%s) - start)) s (qemu exit $qrc)"
cleanup
if [ -n "$tgt_pid" ]; then
    wait "$tgt_pid" 2>/dev/null
    trc=$?
    tgt_pid=""
    [ "$trc" -eq 0 ] || log "peerless-tgt exited $trc"
fi

rc=$(cat "$run/out/rc" 2>/dev/null || echo none)
# What the job wrote to the emulated SSDs, compared byte for byte now that the guest is off.
if [ "$rc" = 0 ] && [ -s "$run/out/nvme-expect" ]; then
    while read -r nvme_name offset len seed; do
        [ -n "$nvme_name" ] || continue
        if [ ! -f "$run/nvme-$nvme_name.raw" ]; then
            log "out/nvme-expect names '$nvme_name', which is not one of PEERLESS_GUEST_NVME"
            rc=nvme-expect
        elif python3 ci/guest/nvme_pattern.py check "$run/nvme-$nvme_name.raw" --offset "$offset" --len "$len" --seed "$seed" >>"$run/nvme-check.log" 2>&1; then
            log "nvme $nvme_name: bytes $offset+$len hold pattern seed $seed"
        else
            log "nvme $nvme_name: bytes $offset+$len do NOT hold pattern seed $seed ($run/nvme-check.log):"
            tail -12 "$run/nvme-check.log" >&2
            rc=nvme-expect
        fi
    done <"$run/out/nvme-expect"
fi
if [ "$qrc" -eq 124 ] || [ "$qrc" -eq 137 ]; then
    log "FAILED: the guest did not finish in ${timeout_s}s"
elif [ "$rc" = 0 ]; then
    # A target the job ran in the guest leaves its log in out/.
    if grep -q -E 'panicked|RUST_BACKTRACE' "$run"/target*.log "$run"/out/target*.log 2>/dev/null; then
        log "FAILED: the job passed but peerless-tgt panicked: $(grep -l -E 'panicked|RUST_BACKTRACE' "$run"/target*.log "$run"/out/target*.log 2>/dev/null)"
    else
        log "PASSED: $run"
        exit 0
    fi
elif [ "$rc" = nvme-expect ]; then
    log "FAILED: the job passed, but the SSDs' backing files do not hold what out/nvme-expect lists"
else
    log "FAILED: job exit status $rc"
fi
echo "--- last lines of the job log ($run/out/job.log)" >&2
tail -40 "$run/out/job.log" >&2 2>/dev/null || true
echo "--- qemu: $run/qemu.log; target: $run/target.log" >&2
echo "console log: $console" >&2
exit 1
