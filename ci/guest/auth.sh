#!/usr/bin/env bash
# DH-HMAC-CHAP with Linux's own host: the guest's nvme-tcp and nvme-auth (kernel >= 6.0
# built with CONFIG_NVME_HOST_AUTH; Debian 12's 6.1 is not, its 6.12 is) and nvme-cli
# against a release peerless-tgt whose host entry has a key and a controller key. CI runs
# it on a second guest image built on the 6.12 kernel (ci/test.sh); by hand:
#
#   PEERLESS_GUEST_DIR=build/guest-6.12 \
#     PEERLESS_GUEST_KERNEL_PKG=linux-image-6.12.118+deb12-amd64 bash ci/guest/build.sh
#   PEERLESS_GUEST_DIR=build/guest-6.12 bash ci/guest/auth.sh
#
# Secrets are made here (random keys in the DHHC-1 representation), written to 0600 files
# the target's keyring reads, and given to the job, which connects one way and both ways
# (1 MiB written and read back each time), then with a wrong key, with none, and with a
# wrong controller key, each of which must fail. The secrets are random and thrown away;
# the run folder's job.sh keeps a copy, as it keeps every job.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
hostnqn=nqn.2014-08.org.nvmexpress:uuid:1c0ffee0-0000-4000-8000-00000000a0a0
nqn=nqn.2016-06.io.peerless:auth
# DHHC-1:<hash>:<base64 of key and its CRC-32, little-endian>: (NVMe Base 2.0, 8.13.5.8).
secret() {
    python3 -c 'import base64, os, sys, zlib
key = os.urandom(int(sys.argv[2]))
print(f"DHHC-1:{int(sys.argv[1]):02x}:" + base64.b64encode(key + zlib.crc32(key).to_bytes(4, "little")).decode() + ":")' "$1" "$2"
}
key=$(secret 1 32) ckey=$(secret 3 64) wrong=$(secret 1 32)
(umask 077 && printf '%s\n' "$key" >"$work/key0" && printf '%s\n' "$ckey" >"$work/ckey0")
cat >"$work/target.json" <<JSON
{"subsystems": [
 {"subsystem": "keyring", "config": [
   {"method": "keyring_file_add_key", "params": {"name": "key0", "path": "$work/key0"}},
   {"method": "keyring_file_add_key", "params": {"name": "ckey0", "path": "$work/ckey0"}}]},
 {"subsystem": "bdev", "config": [
   {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 65536, "block_size": 512}}]},
 {"subsystem": "nvmf", "config": [
   {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
   {"method": "nvmf_create_subsystem", "params": {"nqn": "$nqn", "serial_number": "PEERLESSAUTH0001",
     "model_number": "Peerless Auth", "allow_any_host": false}},
   {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$nqn", "namespace": {"bdev_name": "Malloc0"}}},
   {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "$nqn", "listen_address":
     {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4420"}}},
   {"method": "nvmf_subsystem_add_host", "params": {"nqn": "$nqn", "host": "$hostnqn",
     "dhchap_key": "key0", "dhchap_ctrlr_key": "ckey0"}}]}]}
JSON
# The job with the secrets filled in (the guest sees only the run folder).
{
    printf 'HOSTNQN=%q KEY=%q CKEY=%q WRONG=%q\n' "$hostnqn" "$key" "$ckey" "$wrong"
    cat ci/guest/jobs/auth.sh
} >"$work/auth.sh"
PEERLESS_TGT_CONFIG="$work/target.json" bash ci/guest/run.sh "$work/auth.sh"
