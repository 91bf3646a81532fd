#!/usr/bin/env python3
"""What SPDK's scripts/rpc.py sends, byte for byte, against a real peerless-tgt.

rpc.py writes each request as json.dumps(request, indent=2) with no terminator, omits
"params" when empty, sends explicit false for many flags, and reads answers with
JSONDecoder.raw_decode after lstrip(). This client does the same with the standard
library only. Usage: rpc_compat.py <path to peerless-tgt>
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

TGT = sys.argv[1]
WORK = tempfile.mkdtemp(prefix="peerless-rpc-compat-")
NQN = "nqn.2016-06.io.spdk:cnode1"
failures = []


def check(condition, what):
    if not condition:
        failures.append(what)
        print("FAIL:", what, flush=True)


class Client:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(20)
        self.buf = ""
        self.next_id = 1

    def request(self, method, params=None):
        req = {"jsonrpc": "2.0", "method": method, "id": self.next_id}
        if params:
            req["params"] = params
        self.next_id += 1
        return req

    def send(self, *requests):
        # Several requests in one write, joined as rpc.py's batch of lines is: pretty, unterminated.
        payload = "\n".join(json.dumps(r, indent=2) for r in requests)
        self.sock.sendall(payload.encode())

    def recv(self):
        decoder = json.JSONDecoder()
        while True:
            text = self.buf.lstrip()
            if text:
                try:
                    obj, end = decoder.raw_decode(text)
                    self.buf = text[end:]
                    return obj
                except ValueError:
                    pass
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk.decode()

    def call(self, method, params=None):
        req = self.request(method, params)
        self.send(req)
        resp = self.recv()
        check(resp.get("id") == req["id"], f"{method}: answer to another request {resp}")
        return resp


def start(args):
    sock = os.path.join(WORK, "spdk.sock")
    proc = subprocess.Popen([TGT, "-r", sock, "--interrupt-mode"] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            return proc, None
        try:
            client = Client(sock)
            client.call("framework_wait_init")
            return proc, client
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.02)
    raise RuntimeError("peerless-tgt did not start")


def ok(client, method, params=None):
    resp = client.call(method, params)
    check("result" in resp, f"{method} {params}: {resp}")
    return resp.get("result")


def err(client, method, params, code, text=None):
    resp = client.call(method, params)
    error = resp.get("error", {})
    check(error.get("code") == code, f"{method} {params}: want code {code}, got {resp}")
    if text:
        check(text in error.get("message", ""), f"{method}: '{text}' not in {error}")


def stop(proc, client):
    ok(client, "spdk_kill_instance", {"sig_name": "SIGTERM"})
    proc.wait(timeout=20)
    check(proc.returncode == 0, f"exit code {proc.returncode}")


# --- every method, as rpc.py sends it -------------------------------------------------
proc, c = start([])
version = ok(c, "spdk_get_version")
check(version["version"].startswith("SPDK v") and "fields" in version, f"version {version}")
methods = ok(c, "rpc_get_methods", {"current": True})
for needed in ["bdev_malloc_create", "nvmf_create_transport", "mem_get_stats", "framework_get_config", "log_set_flag"]:
    check(needed in methods, f"{needed} not offered")

# Several pretty-printed requests in one write.
reqs = [c.request("spdk_get_version"), c.request("log_get_level"), c.request("framework_get_subsystems")]
c.send(*reqs)
answers = sorted((c.recv() for _ in reqs), key=lambda a: a["id"])
check([a["id"] for a in answers] == [r["id"] for r in reqs], "three requests in one write")
check(answers[2]["result"] == [{"subsystem": "sock", "depends_on": []}, {"subsystem": "keyring", "depends_on": []}, {"subsystem": "bdev", "depends_on": []}, {"subsystem": "nvmf", "depends_on": ["bdev"]}], str(answers[2]))

check(ok(c, "bdev_malloc_create", {"num_blocks": 131072, "block_size": 512, "name": "Malloc0", "md_interleave": False, "dif_is_head_of_md": False}) == "Malloc0", "malloc")
check(ok(c, "bdev_null_create", {"num_blocks": 262144, "block_size": 4096, "name": "Null0", "dif_is_head_of_md": False}) == "Null0", "null")
img = os.path.join("/var/tmp", f"peerless-compat-{os.getpid()}.img")
with open(img, "wb") as f:
    f.truncate(16 * 1024 * 1024)
check(ok(c, "bdev_uring_create", {"filename": img, "name": "Uring0", "block_size": 512}) == "Uring0", "uring")
with open(img + ".aio", "wb") as f:
    f.truncate(4 * 1024 * 1024)
check(ok(c, "bdev_aio_create", {"filename": img + ".aio", "name": "Aio0", "block_size": 512, "readonly": False, "fallocate": False, "nowait": False}) == "Aio0", "aio")
ok(c, "bdev_delay_create", {"base_bdev_name": "Null0", "name": "Delay0", "avg_read_latency": 100, "p99_read_latency": 200, "avg_write_latency": 100, "p99_write_latency": 200})
ok(c, "bdev_delay_update_latency", {"delay_bdev_name": "Delay0", "latency_type": "avg_read", "latency_us": 150})
check(ok(c, "bdev_error_create", {"base_name": "Uring0"}) is True, "error create returns true")
ok(c, "bdev_error_inject_error", {"name": "EE_Uring0", "io_type": "read", "error_type": "failure", "num": 10})
ok(c, "bdev_passthru_create", {"base_bdev_name": "Delay0", "name": "PT0"})
check(ok(c, "bdev_nvmesim_create", {"name": "Sim0", "num_blocks": 65536, "block_size": 512, "cmb_size_mb": 16}) == "Sim0", "nvmesim")
ok(c, "bdev_malloc_create", {"num_blocks": 65536, "block_size": 512, "name": "Malloc1"})
check(ok(c, "bdev_split_create", {"base_bdev": "Malloc1", "split_count": 4}) == ["Malloc1p0", "Malloc1p1", "Malloc1p2", "Malloc1p3"], "split names")
ok(c, "bdev_set_qos_limit", {"name": "Malloc0", "rw_ios_per_sec": 20000})
ok(c, "bdev_wait_for_examine")
bdevs = ok(c, "bdev_get_bdevs", {"name": "Malloc0"})
b = bdevs[0]
for key in ["name", "aliases", "product_name", "block_size", "num_blocks", "uuid", "assigned_rate_limits", "claimed", "zoned", "supported_io_types", "driver_specific"]:
    check(key in b, f"bdev_get_bdevs lacks {key}")
check(b["assigned_rate_limits"]["rw_ios_per_sec"] == 20000, "qos shows")
check(list(b.keys())[:5] == ["name", "aliases", "product_name", "block_size", "num_blocks"], f"key order {list(b.keys())[:5]}")
iostat_old = ok(c, "bdev_get_iostat", {"name": "Malloc0", "per_channel": False})
iostat_new = ok(c, "bdev_get_iostat", {"names": ["Malloc0", "Null0"], "per_channel": False})
check(len(iostat_old["bdevs"]) == 1 and len(iostat_new["bdevs"]) == 2 and "tick_rate" in iostat_new, "iostat name/names")

ok(c, "nvmf_create_transport", {"no_srq": False, "c2h_success": True, "trtype": "TCP", "max_io_qpairs_per_ctrlr": 8, "in_capsule_data_size": 8192, "io_unit_size": 16384, "zcopy": False, "dif_insert_or_strip": False, "no_wr_batching": False, "disable_mappable_bar0": False, "disable_adaptive_irq": False, "disable_shadow_doorbells": False, "disable_command_passthru": False})
transports = ok(c, "nvmf_get_transports")
check(transports[0]["trtype"] == "TCP" and transports[0]["in_capsule_data_size"] == 8192, f"transports {transports}")
ok(c, "nvmf_create_subsystem", {"nqn": NQN, "serial_number": "SPDK00000000000001", "model_number": "SPDK_Controller1", "allow_any_host": True, "ana_reporting": False, "passthrough": False, "enable_nssr": False})
check(ok(c, "nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "no_auto_visible": False, "hide_metadata": False}}) == 1, "add_ns returns the NSID")
# nvmf_create_subsystem NQN --dmrsl 2048 --wzsl 4 --admin-label rack-7 (26.09), and the
# KiB forms SPDK had before: the same limits, saved and restored with the configuration.
ok(c, "nvmf_create_subsystem", {"nqn": NQN + "-limits", "allow_any_host": False, "ana_reporting": False, "dmrsl": 2048, "wzsl": 4, "passthrough": False, "enable_nssr": False, "admin_label": "rack-7"})
ok(c, "nvmf_create_subsystem", {"nqn": NQN + "-kib", "allow_any_host": False, "ana_reporting": False, "max_discard_size_kib": 1024, "max_write_zeroes_size_kib": 64})
for nqn in [NQN + "-limits", NQN + "-kib"]:
    limited = ok(c, "nvmf_get_subsystems", {"nqn": nqn})[0]
    check(limited["dmrsl"] == 2048 and limited["wzsl"] == 4, f"limits of {nqn}: {limited}")
check(ok(c, "nvmf_get_subsystems", {"nqn": NQN + "-limits"})[0].get("admin_label") == "rack-7", "admin_label kept")
ok(c, "nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Sim0", "p2pmem": "auto"}})
port = 4460 + os.getpid() % 100
# ANA: groups numbered up to max_namespaces, a namespace in its NSID's group unless told,
# each listener's states per group; all of it saved and restored below.
ANA_NQN = NQN + "-ana"
ok(c, "nvmf_create_subsystem", {"nqn": ANA_NQN, "allow_any_host": True, "ana_reporting": True, "max_namespaces": 4, "passthrough": False, "enable_nssr": False})
ok(c, "bdev_malloc_create", {"num_blocks": 8, "block_size": 512, "name": "AnaNs0"})
ok(c, "bdev_malloc_create", {"num_blocks": 8, "block_size": 512, "name": "AnaNs1"})
ok(c, "nvmf_subsystem_add_ns", {"nqn": ANA_NQN, "namespace": {"bdev_name": "AnaNs0"}})
ok(c, "nvmf_subsystem_add_ns", {"nqn": ANA_NQN, "namespace": {"bdev_name": "AnaNs1", "anagrpid": 3}})
err(c, "nvmf_subsystem_add_ns", {"nqn": ANA_NQN, "namespace": {"bdev_name": "Malloc1", "anagrpid": 5}}, -32602, "ANAGRPMAX")
ana_addr = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port + 2)}
ok(c, "nvmf_subsystem_add_listener", {"nqn": ANA_NQN, "listen_address": ana_addr, "ana_state": "non_optimized"})
ok(c, "nvmf_subsystem_listener_set_ana_state", {"nqn": ANA_NQN, "listen_address": ana_addr, "ana_state": "inaccessible", "anagrpid": 3})
states = ok(c, "nvmf_subsystem_get_listeners", {"nqn": ANA_NQN})[0]["ana_states"]
check([s["ana_state"] for s in states] == ["non_optimized", "non_optimized", "inaccessible", "non_optimized"] and [s["ana_group"] for s in states] == [1, 2, 3, 4], f"ana_states {states}")
check([ns.get("anagrpid") for ns in ok(c, "nvmf_get_subsystems", {"nqn": ANA_NQN})[0]["namespaces"]] == [1, 3], "anagrpid shown")
err(c, "nvmf_subsystem_listener_set_ana_state", {"nqn": ANA_NQN, "listen_address": ana_addr, "ana_state": "change"}, -32602, "reported by the target")
err(c, "nvmf_subsystem_listener_set_ana_state", {"nqn": ANA_NQN, "listen_address": ana_addr, "ana_state": "optimized", "anagrpid": 5}, -32602, "ANAGRPMAX")
err(c, "nvmf_subsystem_listener_set_ana_state", {"nqn": NQN, "listen_address": ana_addr, "ana_state": "optimized"}, -32602, "ana_reporting")
ok(c, "nvmf_subsystem_add_listener", {"nqn": NQN, "secure_channel": False, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": str(port)}})
ok(c, "nvmf_subsystem_add_listener", {"nqn": "discovery", "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": str(port)}})
err(c, "nvmf_subsystem_add_listener", {"nqn": NQN, "secure_channel": False, "sock_impl": "ssl", "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": str(port + 1)}}, -32602, "sock_impl")
# A listener whose sockets io_uring watches; saved with its sock_impl and restored below.
ok(c, "nvmf_subsystem_add_listener", {"nqn": NQN, "sock_impl": "uring", "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": str(port + 1)}})
ok(c, "nvmf_subsystem_add_host", {"nqn": NQN, "host": "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-4333-8444-555555555555"})
ok(c, "nvmf_subsystem_allow_any_host", {"nqn": NQN, "allow_any_host": True})
subs = ok(c, "nvmf_get_subsystems")
cnode = [s for s in subs if s["nqn"] == NQN][0]
check(cnode["subtype"] == "NVMe" and cnode["serial_number"] == "SPDK00000000000001" and len(cnode["namespaces"]) == 2, f"get_subsystems {cnode}")
check(cnode["listen_addresses"][0] == {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": str(port)}, str(cnode["listen_addresses"]))
check(ok(c, "nvmf_subsystem_get_controllers", {"nqn": NQN}) == [], "no controllers yet")
check(ok(c, "nvmf_subsystem_get_qpairs", {"nqn": NQN}) == [], "no qpairs yet")
check(ok(c, "nvmf_subsystem_get_listeners", {"nqn": NQN})[0]["address"]["trsvcid"] == str(port), "listeners")
stats = ok(c, "nvmf_get_stats")
check(stats["poll_groups"][0]["name"] == "nvmf_tgt_poll_group_000", f"stats {stats}")
mem = ok(c, "mem_get_stats")
check(set(mem.keys()) == {"payload_bytes", "cpu_bytes", "p2p_fallbacks", "buffer_waits", "data_buffers", "refused", "providers", "heap_bytes", "zerocopy"}, f"mem {mem}")
check(mem["zerocopy"] == {"sends": 0, "copied": 0, "fallbacks": 0, "held": 0}, f"zerocopy off by default sends nothing: {mem}")
# The buffer pool is DMA memory, not heap; the heap holds at least the transport's tables.
check(isinstance(mem["heap_bytes"], int) and 0 < mem["heap_bytes"] < (1 << 30), f"heap_bytes {mem}")
check(mem["data_buffers"][0]["buffers_per_class"] == 511 and mem["data_buffers"][0]["small_free"] <= 511, f"data buffers {mem}")
ok(c, "framework_get_reactors")
ok(c, "thread_get_stats")
ok(c, "thread_get_pollers")
for m, p in [("log_set_flag", {"flag": "nvmf"}), ("log_clear_flag", {"flag": "nvmf"}), ("log_set_level", {"level": "NOTICE"}), ("log_set_print_level", {"level": "NOTICE"})]:
    ok(c, m, p)
for m in ["log_get_flags", "log_get_level", "log_get_print_level"]:
    ok(c, m)

# --- error codes ----------------------------------------------------------------------
err(c, "no_such_method", None, -32601)
err(c, "bdev_malloc_create", {"num_blocks": 8, "block_size": 512, "colour": "blue"}, -32602, "colour")
err(c, "bdev_malloc_create", {"num_blocks": "eight", "block_size": 512}, -32602, "num_blocks")
err(c, "framework_start_init", None, -1)
err(c, "bdev_get_bdevs", {"name": "NoSuchBdev"}, -19)
err(c, "bdev_malloc_delete", {"name": "NoSuchBdev"}, -19)
err(c, "bdev_malloc_create", {"num_blocks": 8, "block_size": 512, "name": "Malloc0"}, -17)
err(c, "nvmf_create_subsystem", {"nqn": "not-an-nqn"}, -32602, "NQN")
err(c, "nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Null0"}}, -1, "claimed")

# --- save_config, restart with -c, identical config -----------------------------------
saved = {"subsystems": []}
for sub in ok(c, "framework_get_subsystems"):
    saved["subsystems"].append({"subsystem": sub["subsystem"], "config": ok(c, "framework_get_config", {"name": sub["subsystem"]})})
first = {s["subsystem"]: s["config"] for s in saved["subsystems"]}
path = os.path.join(WORK, "saved.json")
with open(path, "w") as f:
    json.dump(saved, f, indent=2)
stop(proc, c)
proc, c = start(["-c", path])
check(c is not None, "the target restarted from its saved config")
if c is not None:
    second = {s: ok(c, "framework_get_config", {"name": s}) for s in first}
    check(second == first, f"framework_get_config differs after restart:\nbefore {json.dumps(first)}\nafter  {json.dumps(second)}")
    stop(proc, c)

# --- a malformed config names its line and field ---------------------------------------
bad = os.path.join(WORK, "bad.json")
with open(bad, "w") as f:
    f.write('{\n  "subsystems": [\n    {\n      "subsystem": "bdev",\n      "config": [\n        {\n          "method": "bdev_malloc_create",\n          "params": {"name": "M", "num_blocks": 8, "block_size": "4k"}\n        }\n      ]\n    }\n  ]\n}\n')
proc = subprocess.run([TGT, "-r", os.path.join(WORK, "bad.sock"), "--interrupt-mode", "-c", bad], capture_output=True, text=True, timeout=30)
check(proc.returncode == 1, f"bad config exit code {proc.returncode}")
check("bad.json:6:" in proc.stderr and "field 'block_size'" in proc.stderr, f"bad config message: {proc.stderr}")

os.remove(img)
os.remove(img + ".aio")
print(f"{len(failures)} failed" if failures else "rpc.py compatibility: all checks passed")
sys.exit(1 if failures else 0)
