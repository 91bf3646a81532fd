"""Peerless's own JSON-RPC methods as an SPDK rpc.py plugin.

SPDK's client (`spdk-rpc` from the `spdk` package, or scripts/rpc.py) drives every SPDK
method Peerless answers unchanged; the few methods only Peerless has are added here
through rpc.py's plugin hook, with the same arguments as `peerless-rpc`:

    PYTHONPATH=/usr/share/peerless/python spdk-rpc --plugin peerless_rpc_plugin \\
        bdev_nvmesim_create -b Sim0 256 512 --cmb-size-mb 64
"""
import json


def _print(result):
    # As rpc.py's print_json: strings bare, everything else as indented JSON.
    print(json.dumps(result, indent=2).strip('"'))


def spdk_rpc_plugin_initialize(subparsers):
    def bdev_nvmesim_create(args):
        block_size = args.block_size
        num_blocks = int(args.total_size * 1024 * 1024) // block_size
        params = {"name": args.name, "num_blocks": num_blocks, "block_size": block_size,
                  "cmb_size_mb": args.cmb_size_mb}
        if args.filename is not None:
            params["filename"] = args.filename
        if args.uuid is not None:
            params["uuid"] = args.uuid
        if args.latency_us is not None:
            params["latency_us"] = args.latency_us
        if args.bandwidth_mbps is not None:
            params["bandwidth_mbps"] = args.bandwidth_mbps
        _print(args.client.call("bdev_nvmesim_create", params))

    p = subparsers.add_parser("bdev_nvmesim_create",
                              help="Create an emulated NVMe SSD with a Controller Memory Buffer")
    p.add_argument("-b", "--name", required=True, help="Name of the bdev")
    p.add_argument("total_size", type=float, help="Size in MiB")
    p.add_argument("block_size", type=int, help="Block size in bytes")
    p.add_argument("--cmb-size-mb", type=int, default=64, help="CMB size in MiB (0: no CMB)")
    p.add_argument("--filename", help="Back the media with this file instead of memory")
    p.add_argument("-u", "--uuid", help="UUID of the bdev")
    p.add_argument("--latency-us", type=int, help="Fixed latency added to every command")
    p.add_argument("--bandwidth-mbps", type=int, help="Link bandwidth in MiB/s")
    p.set_defaults(func=bdev_nvmesim_create)

    def bdev_nvmesim_delete(args):
        args.client.call("bdev_nvmesim_delete", {"name": args.name})

    p = subparsers.add_parser("bdev_nvmesim_delete", help="Delete an emulated NVMe SSD")
    p.add_argument("name", help="Name of the bdev")
    p.set_defaults(func=bdev_nvmesim_delete)

    def mem_get_stats(args):
        _print(args.client.call("mem_get_stats"))

    p = subparsers.add_parser("mem_get_stats",
                              help="Payload bytes by memory kind, CPU bytes by path, P2P providers")
    p.set_defaults(func=mem_get_stats)
