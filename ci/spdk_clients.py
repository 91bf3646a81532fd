#!/usr/bin/env python3
"""SPDK's own Python clients against a real peerless-tgt.

Runs inside a venv where PyPI's `spdk` package is installed (ci/spdk_clients.sh makes one
per SPDK release), and drives the target only through that package's entry points:
`spdk-rpc` (SPDK's scripts/rpc.py) for every method the target lists in rpc_get_methods,
with positional and optional arguments as that release documents them; Peerless's own
methods through rpc.py's plugin hook (tools/python/peerless_rpc_plugin.py);
save_config -> restart with -c -> the same configuration, and load_config into a target
waiting for framework_start_init; 26.x's batches (`spdk-rpc -b`, load_config of a config
holding a batch); and `spdk-cli ls`.

Usage: spdk_clients.py --tgt build/release/peerless-tgt [--perf build/release/peerless-perf]
"""
import argparse
import atexit
import base64
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN_DIR = os.path.join(HERE, "..", "tools", "python")
BIN = os.path.dirname(sys.executable)
SPDK_RPC = os.path.join(BIN, "spdk-rpc")
SPDK_CLI = os.path.join(BIN, "spdk-cli")
VERSION = importlib.metadata.version("spdk")
MAJOR = int(VERSION.split(".")[0])
NQN = "nqn.2016-06.io.spdk:cnode1"
NQN2 = "nqn.2016-06.io.spdk:cnode2"
NQN3 = "nqn.2016-06.io.spdk:cnode3"
NQN_TLS = "nqn.2016-06.io.spdk:cnode4"
HOST = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-4333-8444-555555555555"
HOST2 = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-4333-8444-555555555556"
# Every CLI call is bounded; the target answers in microseconds, so this is only a hang guard.
CALL_TIMEOUT_S = 60
START_TIMEOUT_S = 30

failures = []
covered = set()


def check(condition, what):
    if not condition:
        failures.append(what)
        print(f"FAIL [spdk {VERSION}]: {what}", flush=True)
    return condition


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Target:
    def __init__(self, tgt, work, name, args=()):
        self.sock = os.path.join(work, f"{name}.sock")
        self.log_path = os.path.join(work, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([tgt, "-r", self.sock, "--interrupt-mode", *args], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        # A run that stops early (a failed check, an exception) must not leave the target behind.
        atexit.register(self.kill_if_running)
        deadline = time.time() + START_TIMEOUT_S
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.time() > deadline:
                self.dump()
                raise RuntimeError(f"peerless-tgt {name} did not start")
            time.sleep(0.02)

    def kill_if_running(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def dump(self):
        self.log.flush()
        with open(self.log_path) as f:
            print(f"--- target log {self.log_path}:\n{f.read()}", flush=True)

    def rpc(self, *args, **kwargs):
        return rpc(self.sock, *args, **kwargs)

    def stop(self):
        """spdk_kill_instance SIGTERM, as an operator would, then a clean exit."""
        self.rpc("spdk_kill_instance", "SIGTERM")
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if not check(code == 0, f"peerless-tgt exit code {code} after SIGTERM"):
            self.dump()
        self.log.close()


def rpc(sock, *args, ok=True, stdin=None, plugin=False, retries=0):
    """One `spdk-rpc` run. Returns (exit code, stdout, stderr); a failure where success was
    expected (or the reverse) is recorded with the client's own output."""
    argv = [SPDK_RPC, "-s", sock, "-t", str(CALL_TIMEOUT_S)]
    if retries:
        argv += ["-r", str(retries)]
    env = dict(os.environ)
    if plugin:
        argv += ["--plugin", "peerless_rpc_plugin"]
        env["PYTHONPATH"] = os.path.abspath(PLUGIN_DIR)
    argv += list(args)
    if args and not args[0].startswith("-"):
        covered.add(args[0])
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=CALL_TIMEOUT_S + 30, env=env)
    shown = " ".join(args)
    if ok is True:
        check(done.returncode == 0, f"spdk-rpc {shown}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    elif ok is False:
        check(done.returncode != 0, f"spdk-rpc {shown}: succeeded but should fail\n{done.stdout}")
    return done.returncode, done.stdout, done.stderr


def out(target, *args, **kwargs):
    return target.rpc(*args, **kwargs)[1].strip()


def js(target, *args, **kwargs):
    text = out(target, *args, **kwargs)
    try:
        return json.loads(text)
    except ValueError:
        check(False, f"spdk-rpc {' '.join(args)}: not JSON: {text!r}")
        return None


def error_code(target, *args, **kwargs):
    """Runs a call that must fail and returns the JSON-RPC error code rpc.py printed."""
    code, stdout, stderr = target.rpc(*args, ok=False, **kwargs)
    text = stdout + stderr
    marker = "response:"
    if marker in text:
        try:
            return json.loads(text[text.index(marker) + len(marker):].strip())["code"]
        except (ValueError, KeyError):
            pass
    check(False, f"spdk-rpc {' '.join(args)}: no JSON-RPC error in {text!r}")
    return None


def by_name(bdevs):
    return {b["name"]: b for b in bdevs}


def drive_framework(t):
    version = js(t, "spdk_get_version")
    check(version["version"].startswith("SPDK v") and version["fields"]["major"] >= 24, f"version {version}")
    out(t, "framework_wait_init")
    for sub in ["sock", "keyring", "bdev", "nvmf"]:
        check(isinstance(js(t, "framework_get_config", sub), list), f"framework_get_config {sub}")
    methods = js(t, "rpc_get_methods")
    current = js(t, "rpc_get_methods", "-c")
    check("framework_start_init" not in current and "bdev_malloc_create" in current, "rpc_get_methods -c")
    check(set(js(t, "rpc_get_methods", "-i")) == set(methods), "rpc_get_methods -i: no aliases")
    subsystems = js(t, "framework_get_subsystems")
    check([s["subsystem"] for s in subsystems] == ["sock", "keyring", "bdev", "nvmf"], f"subsystems {subsystems}")
    reactors = js(t, "framework_get_reactors")
    check(reactors["reactors"][0]["lcore"] == 0 and reactors["reactors"][0]["lw_threads"], f"reactors {reactors}")
    stats = js(t, "thread_get_stats")
    check(any(th["name"] == "app_thread" for th in stats["threads"]), f"thread_get_stats {stats}")
    pollers = js(t, "thread_get_pollers")
    check(all("timed_pollers" in th for th in pollers["threads"]), f"thread_get_pollers {pollers}")
    out(t, "log_set_flag", "nvmf")
    check(js(t, "log_get_flags")["nvmf"] is True, "log_set_flag")
    out(t, "log_clear_flag", "nvmf")
    check(js(t, "log_get_flags")["nvmf"] is False, "log_clear_flag")
    out(t, "log_set_level", "INFO")
    check(out(t, "log_get_level") == '"INFO"', "log_get_level")
    out(t, "log_set_print_level", "WARNING")
    check(out(t, "log_get_print_level") == '"WARNING"', "log_get_print_level")
    out(t, "log_set_level", "NOTICE")
    out(t, "log_set_print_level", "NOTICE")
    return methods


def drive_keyring(t, work):
    """Keys from private files, listed and saved by name and path only; an open file is
    refused. key1 stays, so the save/restart/load round trip below carries a key."""
    secret = "DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:"
    paths = []
    for name, mode in [("key0", 0o600), ("key1", 0o600), ("open", 0o644)]:
        path = os.path.join(work, f"{name}.key")
        with open(path, "w") as f:
            f.write(secret)
        os.chmod(path, mode)
        paths.append(path)
    out(t, "keyring_file_add_key", "key0", paths[0])
    out(t, "keyring_file_add_key", "key1", paths[1])
    check(error_code(t, "keyring_file_add_key", "key2", paths[2]) == -1, "keyring_file_add_key: 0644 file refused (EPERM)")
    check(error_code(t, "keyring_file_add_key", "key0", paths[1]) == -17, "keyring_file_add_key: duplicate (EEXIST)")
    keys = js(t, "keyring_get_keys")
    check([(k["name"], k["path"], k["module"]) for k in keys] == [("key0", paths[0], "keyring_file"), ("key1", paths[1], "keyring_file")], f"keyring_get_keys {keys}")
    check(secret not in json.dumps(keys), "keyring_get_keys shows key material")
    out(t, "keyring_file_remove_key", "key0")
    check(error_code(t, "keyring_file_remove_key", "key0") == -19, "keyring_file_remove_key: unknown (ENODEV)")
    check([k["name"] for k in js(t, "keyring_get_keys")] == ["key1"], "keyring_file_remove_key")


def drive_bdevs(t, work):
    check(out(t, "bdev_malloc_create", "64", "512") == "Malloc0", "malloc without a name is Malloc0")
    malloc_uuid = str(uuid.uuid4())
    # An optimal I/O boundary would have to split I/O, which the bdev layer does not do:
    # refused, with the parameter named, rather than accepted and ignored.
    check(error_code(t, "bdev_malloc_create", "-b", "MallocX", "-o", "8", "32", "4096") == -32602,
          "optimal_io_boundary is refused")
    check(out(t, "bdev_malloc_create", "-b", "Malloc1", "-u", malloc_uuid, "-p", "4096", "32", "4096")
          == "Malloc1", "malloc with options")
    check(out(t, "bdev_malloc_create", "-b", "Malloc2", "16", "512") == "Malloc2", "malloc 2")
    check(out(t, "bdev_null_create", "Null0", "64", "4096") == "Null0", "null")
    check(out(t, "bdev_null_create", "-u", str(uuid.uuid4()), "Null1", "8", "512") == "Null1", "null with uuid")
    check(out(t, "bdev_null_resize", "Null1", "16") == "true", "null resize")
    check(error_code(t, "bdev_null_resize", "Null1", "4") == -32602, "null resize refuses shrinking")
    aio = os.path.join(work, "aio.img")
    with open(aio, "wb") as f:
        f.truncate(8 << 20)
    check(out(t, "bdev_aio_create", aio, "Aio0", "512") == "Aio0", "aio")
    uring = os.path.join(work, "uring.img")
    with open(uring, "wb") as f:
        f.truncate(16 << 20)
    check(out(t, "bdev_uring_create", "-u", str(uuid.uuid4()), uring, "Uring0", "4096") == "Uring0", "uring")
    uring2 = os.path.join(work, "uring2.img")
    with open(uring2, "wb") as f:
        f.truncate(4 << 20)
    check(out(t, "bdev_uring_create", uring2, "Uring1") == "Uring1", "uring without a block size")
    check(out(t, "bdev_delay_create", "-b", "Null0", "-d", "Delay0", "-r", "10", "-t", "20", "-w", "10", "-n", "20")
          == "Delay0", "delay")
    out(t, "bdev_delay_update_latency", "Delay0", "avg_read", "15")
    out(t, "bdev_delay_update_latency", "Delay0", "p99_write", "30")
    check(out(t, "bdev_error_create", "Uring0") in ("", "true"), "error create")
    out(t, "bdev_error_inject_error", "EE_Uring0", "read", "failure", "-n", "10")
    out(t, "bdev_error_inject_error", "EE_Uring0", "clear", "failure")
    check(out(t, "bdev_passthru_create", "-b", "Delay0", "-p", "PT0", "-u", str(uuid.uuid4())) == "PT0", "passthru")
    check(out(t, "bdev_split_create", "Malloc2", "4") == "Malloc2p0 Malloc2p1 Malloc2p2 Malloc2p3", "split")
    check(out(t, "bdev_split_create", "-s", "4", "Null1", "2") == "Null1p0 Null1p1", "split with a size")
    check(out(t, "bdev_nvmesim_create", "-b", "Sim0", "16", "512", "--cmb-size-mb", "8", plugin=True) == "Sim0",
          "nvmesim through the plugin")
    # The NVMe PCIe driver's methods as rpc.py sends them: options before any attach, a
    # controller list, and an attach of a function that is not there (no SSD here).
    out(t, "bdev_nvme_set_options", "-t", "20000000", "-a", "reset")
    check(js(t, "bdev_nvme_get_controllers") == [], "bdev_nvme_get_controllers lists nothing")
    check(error_code(t, "bdev_nvme_attach_controller", "-b", "Nvme9", "-t", "PCIe", "-a", "0000:7f:1f.7") == -19,
          "attach of a missing PCI function is ENODEV")
    check(error_code(t, "bdev_nvme_set_options", "--keep-alive-timeout-ms", "10") == -32602,
          "bdev_nvme_set_options refuses a field it does not implement")
    check(error_code(t, "bdev_nvme_detach_controller", "Nvme9") == -19, "detach of a controller that is not there")
    check(error_code(t, "bdev_nvme_reset_controller", "Nvme9") == -19, "reset of a controller that is not there")
    # An Identify Controller (opcode 06h, CNS 01h) as rpc.py's users build it: 64 bytes, URL-safe base64.
    identify = base64.urlsafe_b64encode(bytes([6]) + bytes(39) + (1).to_bytes(4, "little") + bytes(20)).decode()
    check(error_code(t, "bdev_nvme_send_cmd", "-n", "Nvme9", "-t", "admin", "-r", "c2h", "-c", identify,
                     "-D", "4096") == -19, "bdev_nvme_send_cmd to a controller that is not there")
    check(error_code(t, "bdev_nvme_send_cmd", "-n", "Nvme9", "-t", "admin", "-r", "c2h", "-c", "AAAA") == -32602,
          "bdev_nvme_send_cmd refuses a cmdbuf that is not 64 bytes")
    check(error_code(t, "bdev_nvme_send_cmd", "-n", "Nvme9", "-t", "io", "-r", "c2h", "-c", identify) == -32602,
          "bdev_nvme_send_cmd refuses I/O commands")
    out(t, "bdev_set_qos_limit", "--rw-ios-per-sec", "20000", "--rw-mbytes-per-sec", "100", "Malloc1")
    out(t, "bdev_set_qos_limit", "--r-mbytes-per-sec", "50", "--w-mbytes-per-sec", "40", "Malloc1")
    out(t, "bdev_wait_for_examine")

    bdevs = by_name(js(t, "bdev_get_bdevs"))
    for name in ["Malloc0", "Malloc1", "Null0", "Aio0", "Uring0", "Uring1", "Delay0", "EE_Uring0", "PT0", "Malloc2p3",
                 "Null1p1", "Sim0"]:
        check(name in bdevs, f"bdev_get_bdevs lacks {name}")
    one = js(t, "bdev_get_bdevs", "-b", "Malloc1")
    check(len(one) == 1 and one[0]["uuid"] == malloc_uuid and one[0]["block_size"] == 4096, f"malloc1 {one}")
    limits = one[0]["assigned_rate_limits"]
    check(limits == {"rw_ios_per_sec": 20000, "rw_mbytes_per_sec": 100, "r_mbytes_per_sec": 50,
                     "w_mbytes_per_sec": 40}, f"qos {limits}")
    check(js(t, "bdev_get_bdevs", "-b", malloc_uuid)[0]["name"] == "Malloc1", "bdev_get_bdevs by uuid")
    check(js(t, "bdev_get_bdevs", "-b", "Malloc0", "-t", "100")[0]["name"] == "Malloc0", "bdev_get_bdevs -t")
    check(bdevs["Malloc2"]["claimed"] and bdevs["Null1"]["claimed"], "split bases are claimed")
    check(bdevs["Uring1"]["block_size"] == 512, f"uring default block size {bdevs['Uring1']['block_size']}")

    iostat = js(t, "bdev_get_iostat")
    check(set(b["name"] for b in iostat["bdevs"]) == set(bdevs), "bdev_get_iostat of every bdev")
    if MAJOR >= 26:
        some = js(t, "bdev_get_iostat", "--names", "Malloc1,Null0")
        check([b["name"] for b in some["bdevs"]] == ["Malloc1", "Null0"], f"iostat --names {some}")
    else:
        some = js(t, "bdev_get_iostat", "-b", "Malloc1")
        check([b["name"] for b in some["bdevs"]] == ["Malloc1"], f"iostat -b {some}")
    channels = js(t, "bdev_get_iostat", "-c", "--names" if MAJOR >= 26 else "-b", "Malloc0")
    check(channels is not None and channels.get("name") == "Malloc0" and "channels" in channels,
          f"iostat per channel {channels}")
    for mode in ["all", "maxmin", "none"]:
        js(t, "bdev_get_iostat", "--reset-mode", mode)

    # Deleting every kind, on bdevs made for it.
    out(t, "bdev_malloc_create", "-b", "Gone0", "8", "512")
    out(t, "bdev_malloc_delete", "Gone0")
    out(t, "bdev_null_create", "Gone1", "8", "512")
    out(t, "bdev_null_delete", "Gone1")
    out(t, "bdev_aio_create", aio, "Gone2", "512")
    out(t, "bdev_aio_delete", "Gone2")
    out(t, "bdev_uring_create", uring2, "Gone3", "512")
    out(t, "bdev_error_create", "Gone3")
    out(t, "bdev_error_delete", "EE_Gone3")
    out(t, "bdev_uring_delete", "Gone3")
    out(t, "bdev_null_create", "Gone4", "8", "512")
    out(t, "bdev_delay_create", "-b", "Gone4", "-d", "Gone5", "-r", "1", "-t", "1", "-w", "1", "-n", "1")
    out(t, "bdev_passthru_create", "-b", "Gone5", "-p", "Gone6")
    out(t, "bdev_passthru_delete", "Gone6")
    out(t, "bdev_delay_delete", "Gone5")
    out(t, "bdev_split_create", "Gone4", "2")
    out(t, "bdev_split_delete", "Gone4")
    out(t, "bdev_null_delete", "Gone4")
    out(t, "bdev_nvmesim_create", "-b", "Gone7", "4", "512", plugin=True)
    out(t, "bdev_nvmesim_delete", "Gone7", plugin=True)
    left = by_name(js(t, "bdev_get_bdevs"))
    check(not any(name.startswith("Gone") for name in left), f"deleted bdevs remain: {sorted(left)}")

    check(error_code(t, "bdev_get_bdevs", "-b", "NoSuchBdev") == -19, "unknown bdev is ENODEV")
    check(error_code(t, "bdev_malloc_create", "-b", "Malloc1", "8", "512") == -17, "duplicate bdev is EEXIST")
    check(error_code(t, "bdev_malloc_delete", "NoSuchBdev") == -19, "deleting an unknown bdev is ENODEV")
    check(error_code(t, "framework_start_init") == -1, "framework_start_init after init is -1")


def drive_nvmf(t, perf, work):
    port = free_port()
    if MAJOR >= 26:
        out(t, "nvmf_create_transport", "-t", "TCP", "-q", "64", "-m", "8", "-c", "8192", "-i", "131072", "-a", "32",
            "-y", "0", "-x", "1", "--kas", "10", "--min-kato", "10000")
    else:
        out(t, "nvmf_create_transport", "-t", "TCP", "-q", "64", "-m", "8", "-c", "8192", "-i", "131072", "-u",
            "131072", "-a", "32", "-n", "511", "-b", "32", "-y", "0", "-x", "1", "--kas", "10", "--min-kato", "10000")
    transports = js(t, "nvmf_get_transports")
    check(len(transports) == 1 and transports[0]["trtype"] == "TCP" and transports[0]["max_queue_depth"] == 64
          and transports[0]["in_capsule_data_size"] == 8192 and transports[0]["max_aq_depth"] == 32,
          f"transports {transports}")
    check(js(t, "nvmf_get_transports", "--trtype", "tcp") == transports, "nvmf_get_transports --trtype")
    check(error_code(t, "nvmf_create_transport", "-t", "TCP") == -17, "second TCP transport is EEXIST")

    out(t, "nvmf_create_subsystem", NQN, "-a", "-s", "SPDK00000000000001", "-d", "SPDK_Controller1", "-m", "16",
        "-i", "5", "-I", "100")
    out(t, "nvmf_create_subsystem", NQN2, "-s", "SPDK00000000000002")
    nguid = "0123456789ABCDEF0123456789ABCDEF"
    ns_uuid = str(uuid.uuid4())
    # rpc.py prints nothing for add_ns (the NSID it returns is read back below).
    out(t, "nvmf_subsystem_add_ns", "-n", "3", "-g", nguid, "-e", "0123456789ABCDEF", "-u", ns_uuid, NQN, "Malloc1")
    out(t, "nvmf_subsystem_add_ns", NQN, "PT0")
    out(t, "nvmf_subsystem_add_ns", NQN2, "Sim0")
    out(t, "nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", str(port), "-f", "ipv4")
    out(t, "nvmf_subsystem_add_listener", NQN2, "-t", "TCP", "-a", "127.0.0.1", "-s", str(port))
    out(t, "nvmf_subsystem_add_listener", "discovery", "-t", "tcp", "-a", "127.0.0.1", "-s", str(port))
    out(t, "nvmf_subsystem_add_host", NQN2, HOST)
    # ANA: a namespace in a chosen group, a listener whose groups start non-optimized and one
    # group set inaccessible; save_config, restart and load_config below carry all of it.
    out(t, "nvmf_create_subsystem", NQN3, "-a", "-r", "-m", "4")
    out(t, "bdev_malloc_create", "-b", "AnaNs", "8", "512")
    out(t, "nvmf_subsystem_add_ns", "-a", "2", NQN3, "AnaNs")
    out(t, "nvmf_subsystem_add_listener", NQN3, "-t", "tcp", "-a", "127.0.0.1", "-s", str(port), "-n", "non_optimized")
    out(t, "nvmf_subsystem_listener_set_ana_state", NQN3, "-n", "inaccessible", "-t", "tcp", "-a", "127.0.0.1", "-s",
        str(port), "-f", "ipv4", "-g", "2")
    states = js(t, "nvmf_subsystem_get_listeners", NQN3)[0].get("ana_states")
    check(states == [{"ana_group": 1, "ana_state": "non_optimized"}, {"ana_group": 2, "ana_state": "inaccessible"},
                     {"ana_group": 3, "ana_state": "non_optimized"}, {"ana_group": 4, "ana_state": "non_optimized"}],
          f"ana_states {states}")
    check([ns.get("anagrpid") for ns in js(t, "nvmf_get_subsystems", NQN3)[0]["namespaces"]] == [2], "anagrpid shown")
    rpc(t.sock, "nvmf_subsystem_listener_set_ana_state", NQN, "-n", "optimized", "-t", "tcp", "-a", "127.0.0.1", "-s",
        str(port), ok=False)
    # DH-HMAC-CHAP keys by keyring name (key1 stays from drive_keyring), and the digests
    # and groups the target allows: both saved, so the round trips below carry them.
    out(t, "nvmf_subsystem_set_keys", NQN2, HOST, "--dhchap-key", "key1", "--dhchap-ctrlr-key", "key1")
    check(error_code(t, "nvmf_subsystem_set_keys", NQN2, HOST, "--dhchap-key", "nokey") == -32602,
          "nvmf_subsystem_set_keys: an unknown key name is invalid params")
    out(t, "nvmf_set_config", "--dhchap-digests", "sha384,sha512", "--dhchap-dhgroups", "null,ffdhe2048,ffdhe4096")
    check(error_code(t, "nvmf_set_config", "--dhchap-digests", "md5") == -32602, "nvmf_set_config: unknown digest")
    out(t, "nvmf_subsystem_add_host", NQN, HOST, "--dhchap-key", "key1")
    check(error_code(t, "nvmf_subsystem_add_host", NQN, HOST2, "--dhchap-ctrlr-key", "key1") == -32602,
          "nvmf_subsystem_add_host: a controller key needs a host key")
    out(t, "nvmf_subsystem_remove_host", NQN, HOST)
    if MAJOR >= 26:
        out(t, "nvmf_subsystem_allow_any_host", "--no-allow-any-host", NQN)
        out(t, "nvmf_subsystem_allow_any_host", "--allow-any-host", NQN)
    else:
        out(t, "nvmf_subsystem_allow_any_host", "-d", NQN)
        out(t, "nvmf_subsystem_allow_any_host", "-e", NQN)

    subsystems = {s["nqn"]: s for s in js(t, "nvmf_get_subsystems")}
    cnode = subsystems.get(NQN, {})
    check(cnode.get("allow_any_host") is True and cnode.get("serial_number") == "SPDK00000000000001"
          and cnode.get("model_number") == "SPDK_Controller1" and cnode.get("max_namespaces") == 16
          and cnode.get("min_cntlid") == 5 and cnode.get("max_cntlid") == 100, f"subsystem {cnode}")
    nsids = {ns["bdev_name"]: ns["nsid"] for ns in cnode.get("namespaces", [])}
    check(nsids == {"Malloc1": 3, "PT0": 1}, f"add_ns takes -n or the lowest free NSID: {nsids}")
    ns3 = [ns for ns in cnode.get("namespaces", []) if ns["nsid"] == 3]
    check(ns3 and ns3[0]["bdev_name"] == "Malloc1" and ns3[0]["nguid"].upper() == nguid
          and ns3[0].get("eui64", "").upper() == "0123456789ABCDEF" and ns3[0]["uuid"] == ns_uuid, f"ns 3 {ns3}")
    check(subsystems.get(NQN2, {}).get("hosts") == [{"nqn": HOST, "dhchap_key": "key1", "dhchap_ctrlr_key": "key1"}],
          f"hosts {subsystems.get(NQN2)}")
    check("nqn.2014-08.org.nvmexpress.discovery" in subsystems, "discovery subsystem listed")
    check([s["nqn"] for s in js(t, "nvmf_get_subsystems", NQN2)] == [NQN2], "nvmf_get_subsystems NQN")
    listeners = js(t, "nvmf_subsystem_get_listeners", NQN)
    check(listeners and listeners[0]["address"]["trsvcid"] == str(port), f"listeners {listeners}")

    load = None
    if perf:
        # A host connected while the controller, queue pair and stats methods answer.
        load = subprocess.Popen([perf, "-r", f"trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}",
                                 "-q", "8", "-o", "4096", "-w", "randrw", "-t", "4"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 10
        while time.time() < deadline and not js(t, "nvmf_subsystem_get_controllers", NQN):
            time.sleep(0.1)
    controllers = js(t, "nvmf_subsystem_get_controllers", NQN)
    qpairs = js(t, "nvmf_subsystem_get_qpairs", NQN)
    stats = js(t, "nvmf_get_stats")
    mem = js(t, "mem_get_stats", plugin=True)
    if perf:
        check(len(controllers) == 1 and controllers[0]["cntrltype"] == "io" and controllers[0]["cntlid"] >= 5,
              f"controllers {controllers}")
        check(len(qpairs) >= 2 and {q["qid"] for q in qpairs} >= {0, 1}, f"qpairs {qpairs}")
        text = load.communicate(timeout=30)[0]
        check(load.returncode == 0, f"peerless-perf against the target: {text}")
        stats = js(t, "nvmf_get_stats")
        check(sum(g["completed_nvme_io"] for g in stats["poll_groups"]) > 0, f"stats {stats}")
        name = ["--names", "Malloc1"] if MAJOR >= 26 else ["-b", "Malloc1"]
        channels = js(t, "bdev_get_iostat", "-c", *name)
        check(channels["name"] == "Malloc1" and sum(ch["num_read_ops"] for ch in channels["channels"]) > 0
              and all("thread_id" in ch for ch in channels["channels"]), f"per channel after perf {channels}")
        # --reset-mode answers with the figures, then clears them.
        iostat = js(t, "bdev_get_iostat", "--reset-mode", "all", *name)
        check(iostat["bdevs"][0]["num_read_ops"] > 0, f"iostat after perf {iostat}")
        iostat = js(t, "bdev_get_iostat", *name)
        check(iostat["bdevs"][0]["num_read_ops"] == 0, f"iostat after --reset-mode all {iostat}")
    check(stats["poll_groups"][0]["name"] == "nvmf_tgt_poll_group_000", f"stats {stats}")
    check("payload_bytes" in mem and "providers" in mem, f"mem_get_stats {mem}")

    drive_tls(t, perf, work)

    # Removing each kind of thing, on a subsystem made for it.
    gone = "nqn.2016-06.io.spdk:gone"
    out(t, "nvmf_create_subsystem", gone)
    out(t, "bdev_malloc_create", "-b", "GoneNs", "8", "512")
    out(t, "nvmf_subsystem_add_ns", gone, "GoneNs")
    out(t, "nvmf_subsystem_add_listener", gone, "-t", "tcp", "-a", "127.0.0.1", "-s", str(port))
    out(t, "nvmf_subsystem_add_host", gone, HOST)
    out(t, "nvmf_subsystem_remove_ns", gone, "1")
    out(t, "nvmf_subsystem_remove_host", gone, HOST)
    out(t, "nvmf_subsystem_remove_listener", gone, "-t", "tcp", "-a", "127.0.0.1", "-s", str(port), "-f", "ipv4")
    after = js(t, "nvmf_get_subsystems", gone)[0]
    check(after["namespaces"] == [] and after["hosts"] == [] and after["listen_addresses"] == [], f"emptied {after}")
    out(t, "nvmf_delete_subsystem", gone)
    out(t, "bdev_malloc_delete", "GoneNs")
    check(error_code(t, "nvmf_get_subsystems", gone) == -32602, "a deleted subsystem is gone")
    check(error_code(t, "nvmf_create_subsystem", "not-an-nqn") == -32602, "bad NQN is invalid params")
    return port


def drive_sock(t):
    """The ssl implementation's options: kTLS off and on again, TLS 1.3 only; posix's
    zero-copy sends on and off again; options no implementation has refused rather than
    ignored."""
    # SPDK 26 renamed the switches: --ktls/--no-ktls, --zerocopy-send-server.
    ktls_on, ktls_off = ("--ktls", "--no-ktls") if MAJOR >= 26 else ("--enable-ktls", "--disable-ktls")
    zerocopy = "--zerocopy-send-server" if MAJOR >= 26 else "--enable-zerocopy-send-server"
    out(t, "sock_impl_set_options", "-i", "ssl", ktls_off, "--tls-version", "13")
    options = js(t, "sock_impl_get_options", "-i", "ssl")
    check(options == {"enable_ktls": False, "tls_version": 13}, f"sock_impl_get_options ssl {options}")
    check(error_code(t, "sock_impl_set_options", "-i", "ssl", "--tls-version", "12") == -32602,
          "sock_impl_set_options: TLS 1.2 refused")
    zerocopy_off = "--no-zerocopy-send-server" if MAJOR >= 26 else "--disable-zerocopy-send-server"
    zerocopy_client = "--zerocopy-send-client" if MAJOR >= 26 else "--enable-zerocopy-send-client"
    out(t, "sock_impl_set_options", "-i", "posix", zerocopy, "--zerocopy-threshold", "65536")
    options = js(t, "sock_impl_get_options", "-i", "posix")
    check(options == {"enable_zerocopy_send_server": True, "zerocopy_threshold": 65536},
          f"sock_impl_get_options posix {options}")
    out(t, "sock_impl_set_options", "-i", "posix", zerocopy_off, "--zerocopy-threshold", "0")
    check(js(t, "sock_impl_get_options", "-i", "posix")["enable_zerocopy_send_server"] is False,
          f"sock_impl_set_options {zerocopy_off}")
    check(error_code(t, "sock_impl_set_options", "-i", "posix", zerocopy_client) == -32602,
          "sock_impl_set_options: the initiator's zero-copy option refused")
    check(error_code(t, "sock_impl_set_options", "-i", "ssl", zerocopy) == -32602,
          "sock_impl_set_options: zero-copy refused for ssl")
    check(error_code(t, "sock_impl_get_options", "-i", "vpp") == -32602, "sock_impl_get_options: unknown impl")
    out(t, "sock_impl_set_options", "-i", "ssl", ktls_on)
    check(js(t, "sock_impl_get_options", "-i", "ssl")["enable_ktls"] is True, f"sock_impl_set_options {ktls_on}")


def drive_tls(t, perf, work):
    """The secure channel: a host PSK by keyring name (`--psk`) and a `--secure-channel`
    listener, both saved, so the round trips below carry them; a PSK host connects with
    peerless-perf --psk."""
    psk = "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:"
    psk_path = os.path.join(work, "psk1.key")
    with open(psk_path, "w") as f:
        f.write(psk)
    os.chmod(psk_path, 0o600)
    out(t, "keyring_file_add_key", "psk1", psk_path)
    tls_port = free_port()
    out(t, "nvmf_create_subsystem", NQN_TLS, "-s", "SPDK00000000000004")
    out(t, "bdev_malloc_create", "-b", "TlsNs", "16", "512")
    out(t, "nvmf_subsystem_add_ns", NQN_TLS, "TlsNs")
    out(t, "nvmf_subsystem_add_host", NQN_TLS, HOST, "--psk", "psk1")
    check(error_code(t, "nvmf_subsystem_add_host", NQN_TLS, HOST2, "--psk", "key1") == -32602,
          "nvmf_subsystem_add_host: a DH-HMAC-CHAP secret is no TLS PSK")
    out(t, "nvmf_subsystem_add_listener", NQN_TLS, "-t", "tcp", "-a", "127.0.0.1", "-s", str(tls_port), "-f", "ipv4",
        "--secure-channel")
    check(error_code(t, "nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", str(free_port()),
                     "--secure-channel") == -32602, "a secure channel for a subsystem open to any host is refused")
    listeners = js(t, "nvmf_subsystem_get_listeners", NQN_TLS)
    check(listeners and listeners[0].get("secure_channel") is True, f"secure listener {listeners}")
    hosts = js(t, "nvmf_get_subsystems", NQN_TLS)[0]["hosts"]
    check(hosts == [{"nqn": HOST, "psk": "psk1"}], f"PSK host {hosts}")
    if perf:
        trid = f"trtype:tcp adrfam:IPv4 traddr:127.0.0.1 trsvcid:{tls_port} subnqn:{NQN_TLS}"
        run = subprocess.run([perf, "-r", trid, "-q", "4", "-o", "4096", "-w", "randrw", "-t", "1", "--verify",
                              "--hostnqn", HOST, "--psk", psk_path], capture_output=True, text=True, timeout=60)
        check(run.returncode == 0, f"peerless-perf --psk over TLS: {run.stdout} {run.stderr}")
    check(psk not in json.dumps(js(t, "nvmf_get_subsystems")), "nvmf_get_subsystems shows key material")


def drive_batches(t):
    """26.x batches: `spdk-rpc -b` sends the commands read from stdin as one JSON array."""
    script = "bdev_malloc_create -b Batch0 8 512\nbdev_null_create Batch1 8 512\nbdev_get_bdevs -b Batch0\n"
    code, stdout, stderr = t.rpc("-b", stdin=script)
    check(code == 0, f"batch: exit {code} {stdout} {stderr}")
    check('"Batch0"' in stdout and '"Batch1"' in stdout and '"name": "Batch0"' in stdout, f"batch results {stdout}")
    # One bad request in a batch fails alone; the rest still run.
    code, stdout, stderr = t.rpc("-b", stdin="bdev_null_create Batch2 8 512\nbdev_malloc_delete NoSuchBdev\n", ok=None)
    check(code == 1 and '"code": -19' in stderr and '"Batch2"' in stdout, f"batch with an error: {stdout} {stderr}")
    for name in ["Batch0", "Batch1", "Batch2"]:
        out(t, "bdev_malloc_delete" if name == "Batch0" else "bdev_null_delete", name)
    config = js(t, "framework_get_config", "--with-batches", "bdev")
    check(isinstance(config, list) and config, f"framework_get_config --with-batches {config}")


def save_config(t, *flags):
    code, stdout, _ = t.rpc("save_config", *flags)
    try:
        return json.loads(stdout)
    except ValueError:
        check(False, f"save_config printed no JSON: {stdout!r}")
        return {"subsystems": []}


def as_batch(config):
    """The same configuration with the bdev subsystem's entries grouped into one batch,
    as 26.x's save_config --with-batches may write them."""
    grouped = json.loads(json.dumps(config))
    for sub in grouped["subsystems"]:
        if sub["subsystem"] == "bdev" and len(sub["config"]) > 1:
            sub["config"] = [sub["config"]]
    return grouped


def spdk_cli(t, path, home):
    # spdk-cli keeps its shell history and preferences under $HOME/.scripts.
    env = dict(os.environ, HOME=home)
    done = subprocess.run([SPDK_CLI, "-s", t.sock, "ls", path], capture_output=True, text=True,
                          timeout=CALL_TIMEOUT_S, env=env)
    check(done.returncode == 0, f"spdk-cli ls {path}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done.stdout


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tgt", required=True)
    parser.add_argument("--perf")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix=f"peerless-spdk-{VERSION}-")
    print(f"spdk {VERSION}: {SPDK_RPC} against {args.tgt}", flush=True)

    t = Target(args.tgt, work, "first")
    rpc(t.sock, "framework_wait_init", retries=50)
    methods = drive_framework(t)
    drive_sock(t)
    drive_keyring(t, work)
    drive_bdevs(t, work)
    port = drive_nvmf(t, args.perf, work)
    if MAJOR >= 26:
        drive_batches(t)

    bdev_view = spdk_cli(t, "/bdevs", work)
    for name in ["Malloc0", "Null0", "Aio0", "Uring0", "EE_Uring0", "Malloc2p0"]:
        check(name in bdev_view, f"spdk-cli ls /bdevs lacks {name}:\n{bdev_view}")
    nvmf_view = spdk_cli(t, "/nvmf", work)
    for text in [NQN, NQN2, f"127.0.0.1:{port}", "Malloc1", "TCP"]:
        check(text in nvmf_view, f"spdk-cli ls /nvmf lacks {text}:\n{nvmf_view}")

    saved = save_config(t)
    check("DHHC-1" not in json.dumps(saved), "save_config shows key material")
    check("NVMeTLSkey-1" not in json.dumps(saved), "save_config shows TLS key material")
    check(any(s["subsystem"] == "keyring" and s["config"] for s in saved["subsystems"]), "save_config keeps the keyring")
    saved_path = os.path.join(work, "saved.json")
    with open(saved_path, "w") as f:
        json.dump(saved, f, indent=2)
    if MAJOR >= 26:
        check(save_config(t, "--with-batches") == saved, "save_config --with-batches: no batches, same config")
    covered.add("save_config")
    t.stop()

    # The saved file at start-up (-c) gives the same configuration back.
    t = Target(args.tgt, work, "restarted", ["-c", saved_path])
    rpc(t.sock, "framework_wait_init", retries=50)
    again = save_config(t)
    check(again == saved, f"save_config after restart with -c differs:\n{json.dumps(saved)}\n{json.dumps(again)}")
    t.stop()

    # load_config into a target waiting for framework_start_init: rpc.py replays the STARTUP
    # methods, starts the framework, then replays the rest (in 26.x, batches as batches).
    loaded = as_batch(saved) if MAJOR >= 26 else saved
    loaded_path = os.path.join(work, "load.json")
    with open(loaded_path, "w") as f:
        json.dump(loaded, f, indent=2)
    t = Target(args.tgt, work, "loaded", ["--wait-for-rpc"])
    rpc(t.sock, "rpc_get_methods", retries=50)
    with open(loaded_path) as f:
        t.rpc("load_config", stdin=f.read())
    out(t, "framework_wait_init")
    again = save_config(t)
    check(again == saved, f"save_config after load_config differs:\n{json.dumps(saved)}\n{json.dumps(again)}")
    t.stop()

    missing = sorted(set(methods) - covered)
    check(not missing, f"methods rpc_get_methods lists that this script never drove: {missing}")
    shutil.rmtree(work, ignore_errors=True)
    if failures:
        print(f"spdk {VERSION}: {len(failures)} failed", flush=True)
        sys.exit(1)
    print(f"spdk {VERSION}: every method through spdk-rpc, save/restart/load and spdk-cli passed", flush=True)


if __name__ == "__main__":
    main()
