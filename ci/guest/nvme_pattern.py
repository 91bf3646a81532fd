#!/usr/bin/env python3
"""Self-identifying data pattern for NVMe byte checks (guest jobs and the host).

Every 512-byte unit at byte offset 512*L of a device (L, its "LBA" in 512-byte units
whatever the namespace's block size) holds, for a seed S (0 .. 2**32-1):

    bytes 0..4    b"PLPT"
    bytes 4..12   L, little-endian u64
    bytes 12..16  S, little-endian u32
    bytes 16..512 the first 496 bytes of SHAKE-128(b"peerless-pattern" + S (u32 LE) + L (u64 LE))

so any block found in the wrong place says where it belongs and which run wrote it, and the
rest is incompressible. SHAKE-128 (FIPS 202) is in every language's standard crypto set,
so a driver test in another language can produce the same bytes.

    nvme_pattern.py write FILE|- --offset BYTES --len BYTES --seed S
        FILE models the device: the range is written at --offset (the file is created if
        missing and never truncated). '-' writes only the range's bytes to stdout, e.g.
        into `dd of=/dev/nvme0n1 seek=OFFSET oflag=seek_bytes`.
    nvme_pattern.py check FILE --offset BYTES --len BYTES --seed S [--transfer BYTES]
        Compares FILE's range (a raw backing file, or a device read back) with the
        pattern: exit 0 when equal, 1 with the first mismatching LBA, how many mismatch,
        what they hold instead (zeros, another LBA's or seed's block, other bytes), and
        the "first 4 KiB of a transfer read zeros, the rest is right" signature of a
        controller DMAing to its own CMB behind an IOMMU. --transfer names the size the
        data was written in; without it, zero runs of exactly 4 KiB followed by good data
        are reported.

Offsets and lengths are bytes, multiples of 512; K, M and G suffixes (1024-based) are taken.
"""
import argparse
import hashlib
import struct
import sys

BLOCK = 512
HEAD = 16
TAG = b"PLPT"
DOMAIN = b"peerless-pattern"
CHUNK = 2048  # blocks per read while checking: 1 MiB
ZERO_HEAD = 4096
ZERO_BLOCK = bytes(BLOCK)


def block(lba, seed):
    """The 512 bytes the pattern puts at LBA `lba` (512-byte units) for `seed`."""
    key = struct.pack("<IQ", seed, lba)
    return TAG + struct.pack("<Q", lba) + key[:4] + hashlib.shake_128(DOMAIN + key).digest(BLOCK - HEAD)


def blocks(first_lba, count, seed):
    return b"".join(block(lba, seed) for lba in range(first_lba, first_lba + count))


def identify(data):
    """(lba, seed) when `data` is one of the pattern's blocks, for any LBA and seed; else None."""
    if len(data) != BLOCK or data[:4] != TAG:
        return None
    lba, seed = struct.unpack_from("<QI", data, 4)
    return (lba, seed) if data == block(lba, seed) else None


def size(text):
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:].lower(), 1)
    value = int(text[:-1] if mult > 1 else text, 0) * mult
    if value < 0 or value % BLOCK:
        raise argparse.ArgumentTypeError(f"{text}: not a non-negative multiple of {BLOCK}")
    return value


def seed_arg(text):
    value = int(text, 0)
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"{text}: the seed is a u32")
    return value


def write(path, offset, length, seed):
    first, count = offset // BLOCK, length // BLOCK
    if path == "-":
        out = sys.stdout.buffer
        for at in range(0, count, CHUNK):
            out.write(blocks(first + at, min(CHUNK, count - at), seed))
        out.flush()
        return
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        f = open(path, "w+b")
    with f:
        f.seek(offset)
        for at in range(0, count, CHUNK):
            f.write(blocks(first + at, min(CHUNK, count - at), seed))


class Report:
    """What a range holds where it differs from the pattern."""

    def __init__(self, first_lba, count, seed, transfer):
        self.first_lba, self.count, self.seed, self.transfer = first_lba, count, seed, transfer
        self.bad = {}  # lba -> "zeros" | ("block", lba, seed) | ("other", byte offset)

    def note(self, lba, got, want):
        if len(got) < BLOCK:
            self.bad[lba] = ("short", len(got))
        elif got == ZERO_BLOCK:
            self.bad[lba] = "zeros"
        elif (found := identify(got)) is not None:
            self.bad[lba] = ("block",) + found
        else:
            diff = next((i for i in range(min(len(got), BLOCK)) if i >= len(want) or got[i] != want[i]), len(got))
            self.bad[lba] = ("other", diff)

    def zero_head_runs(self):
        """Starts of the transfers (or runs) whose first 4 KiB read zeros and the rest is right."""
        head = ZERO_HEAD // BLOCK
        hits = []
        if self.transfer:
            per = self.transfer // BLOCK
            for start in range(self.first_lba, self.first_lba + self.count, per):
                end = min(start + per, self.first_lba + self.count)
                zero_end = min(start + head, end)
                if all(self.bad.get(lba) == "zeros" for lba in range(start, zero_end)) and not any(
                    lba in self.bad for lba in range(zero_end, end)
                ):
                    hits.append(start)
            return hits
        lba = self.first_lba
        end = self.first_lba + self.count
        while lba < end:
            if self.bad.get(lba) != "zeros":
                lba += 1
                continue
            run = lba
            while lba < end and self.bad.get(lba) == "zeros":
                lba += 1
            if lba - run == head and lba < end and lba not in self.bad:
                hits.append(run)
        return hits

    def describe(self, lba):
        what = self.bad[lba]
        if what == "zeros":
            return "zeros"
        if what[0] == "block":
            _, other_lba, other_seed = what
            where = "this LBA" if other_lba == lba else f"LBA {other_lba}"
            return f"the pattern block of {where} with seed {other_seed}"
        if what[0] == "short":
            return f"only {what[1]} bytes: the file ends there"
        return f"other bytes (first difference at byte {what[1]} of the block)"

    def print(self, path, out):
        last = self.first_lba + self.count - 1
        print(f"{path}: LBA {self.first_lba}..{last} ({self.count} x {BLOCK} B) against seed {self.seed}", file=out)
        if not self.bad:
            print("ok: every block holds the pattern", file=out)
            return
        first = min(self.bad)
        kinds = {"zeros": 0, "misplaced or stale": 0, "past the end": 0, "other": 0}
        names = {"block": "misplaced or stale", "short": "past the end", "other": "other"}
        for what in self.bad.values():
            kinds["zeros" if what == "zeros" else names[what[0]]] += 1
        print(f"MISMATCH: {len(self.bad)} of {self.count} blocks differ; the first is LBA {first} "
              f"(byte {first * BLOCK}): {self.describe(first)}", file=out)
        print("  by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.items() if n), file=out)
        for lba in sorted(self.bad)[1:8]:
            print(f"  LBA {lba}: {self.describe(lba)}", file=out)
        hits = self.zero_head_runs()
        if hits:
            unit = f"transfer(s) of {self.transfer} B" if self.transfer else "run(s)"
            shown = ", ".join(str(h) for h in hits[:8]) + (" ..." if len(hits) > 8 else "")
            print(f"SIGNATURE first-4KiB-zeros: {len(hits)} {unit} read zeros in their first 4 KiB and "
                  f"the pattern after (starting at LBA {shown}): the controller likely DMAed to its "
                  "own CMB through the IOMMU instead of to the address given (see LAB.md)", file=out)


def check(path, offset, length, seed, transfer, out=sys.stdout):
    first, count = offset // BLOCK, length // BLOCK
    report = Report(first, count, seed, transfer)
    with open(path, "rb") as f:
        f.seek(offset)
        for at in range(0, count, CHUNK):
            n = min(CHUNK, count - at)
            want = blocks(first + at, n, seed)
            got = f.read(n * BLOCK)
            if got == want:
                continue
            for i in range(n):
                piece = got[i * BLOCK:(i + 1) * BLOCK]
                if piece != want[i * BLOCK:(i + 1) * BLOCK]:
                    report.note(first + at + i, piece, want[i * BLOCK:(i + 1) * BLOCK])
    report.print(path, out)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("write", "check"):
        p = sub.add_parser(mode)
        p.add_argument("file")
        p.add_argument("--offset", type=size, required=True)
        p.add_argument("--len", type=size, required=True, dest="length")
        p.add_argument("--seed", type=seed_arg, required=True)
        if mode == "check":
            p.add_argument("--transfer", type=size, default=0,
                           help="the size the range was written in (bytes, a multiple of 512)")
    args = parser.parse_args(argv)
    if args.mode == "write":
        write(args.file, args.offset, args.length, args.seed)
        return 0
    try:
        report = check(args.file, args.offset, args.length, args.seed, args.transfer)
    except OSError as e:
        print(f"cannot read {args.file}: {e}", file=sys.stderr)
        return 2
    return 1 if report.bad else 0


if __name__ == "__main__":
    sys.exit(main())
