"""Tests of ci/guest/nvme_pattern.py (run by ci/test.sh: python3 -m unittest discover -s ci/guest)."""
import hashlib
import io
import os
import struct
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nvme_pattern as np  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nvme_pattern.py")
KIB = 1024


class Layout(unittest.TestCase):
    def test_block_layout_is_the_documented_one(self):
        lba, seed = 0x1234_5678_9A, 0xDEADBEEF
        b = np.block(lba, seed)
        self.assertEqual(len(b), 512)
        self.assertEqual(b[:4], b"PLPT")
        self.assertEqual(struct.unpack_from("<QI", b, 4), (lba, seed))
        tail = hashlib.shake_128(b"peerless-pattern" + struct.pack("<IQ", seed, lba)).digest(496)
        self.assertEqual(b[16:], tail)

    def test_blocks_differ_by_lba_and_by_seed(self):
        self.assertNotEqual(np.block(5, 1)[16:], np.block(6, 1)[16:])
        self.assertNotEqual(np.block(5, 1)[16:], np.block(5, 2)[16:])
        self.assertEqual(np.identify(np.block(77, 9)), (77, 9))
        self.assertIsNone(np.identify(bytes(512)))
        forged = bytearray(np.block(77, 9))
        forged[300] ^= 1
        self.assertIsNone(np.identify(bytes(forged)))

    def test_sizes_parse_and_refuse_unaligned(self):
        self.assertEqual(np.size("4K"), 4096)
        self.assertEqual(np.size("1m"), 1 << 20)
        self.assertEqual(np.size("0x200"), 512)
        for bad in ("100", "1.5K", "-512"):
            with self.assertRaises(Exception):
                np.size(bad)


class WriteAndCheck(unittest.TestCase):
    def setUp(self):
        fd, self.path = tempfile.mkstemp()
        os.close(fd)
        self.addCleanup(os.unlink, self.path)

    def check(self, offset, length, seed, transfer=0):
        out = io.StringIO()
        report = np.check(self.path, offset, length, seed, transfer, out)
        return report, out.getvalue()

    def poke(self, offset, data):
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def test_written_range_checks_clean_and_leaves_the_rest(self):
        with open(self.path, "wb") as f:
            f.write(b"\xaa" * (3 * 1 << 20))
        for length in (512, 4 * KIB, 1 << 20, (1 << 20) + 1536):
            with self.subTest(length=length):
                np.write(self.path, 512 * 7, length, 42)
                report, text = self.check(512 * 7, length, 42)
                self.assertEqual(report.bad, {}, text)
                self.assertIn("ok:", text)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(512 * 7), b"\xaa" * 512 * 7)
        self.assertEqual(os.path.getsize(self.path), 3 * 1 << 20)

    def test_stdout_bytes_equal_the_file_range(self):
        np.write(self.path, 8 * KIB, 64 * KIB, 3)
        out = subprocess.run([sys.executable, SCRIPT, "write", "-", "--offset", "8K", "--len", "64K", "--seed", "3"],
                             check=True, capture_output=True).stdout
        with open(self.path, "rb") as f:
            f.seek(8 * KIB)
            self.assertEqual(out, f.read(64 * KIB))

    def test_wrong_seed_is_seen_as_stale_blocks(self):
        np.write(self.path, 0, 16 * KIB, 1)
        report, text = self.check(0, 16 * KIB, 2)
        self.assertEqual(len(report.bad), 32)
        self.assertIn("the first is LBA 0", text)
        self.assertIn("the pattern block of this LBA with seed 1", text)

    def test_misplaced_block_names_where_it_belongs(self):
        np.write(self.path, 0, 64 * KIB, 5)
        self.poke(512 * 10, np.block(40, 5))
        report, text = self.check(0, 64 * KIB, 5)
        self.assertEqual(list(report.bad), [10])
        self.assertIn("LBA 10", text)
        self.assertIn("the pattern block of LBA 40 with seed 5", text)
        self.assertNotIn("SIGNATURE", text)

    def test_corrupt_byte_is_located(self):
        np.write(self.path, 0, 8 * KIB, 5)
        self.poke(512 * 3 + 100, b"\x00\x01")
        report, text = self.check(0, 8 * KIB, 5)
        self.assertEqual(list(report.bad), [3])
        self.assertIn("first difference at byte 100", text)

    def test_first_4k_zeros_of_each_transfer_is_flagged(self):
        transfer = 128 * KIB
        np.write(self.path, 0, 1 << 20, 9)
        for t in (0, 3, 7):
            self.poke(t * transfer, bytes(4 * KIB))
        for given in (transfer, 0):
            with self.subTest(transfer=given):
                report, text = self.check(0, 1 << 20, 9, given)
                self.assertEqual(len(report.bad), 3 * 8)
                self.assertEqual(report.zero_head_runs(), [0, 3 * 256, 7 * 256])
                self.assertIn("SIGNATURE first-4KiB-zeros: 3", text)

    def test_zeros_that_are_not_the_signature_are_not_flagged(self):
        np.write(self.path, 0, 1 << 20, 9)
        # 8 KiB of zeros, a 4 KiB hole in the middle of a transfer, a range never written.
        self.poke(0, bytes(8 * KIB))
        self.poke(128 * KIB + 8 * KIB, bytes(4 * KIB))
        report, text = self.check(0, 1 << 20, 9, 128 * KIB)
        self.assertEqual(report.zero_head_runs(), [])
        self.assertNotIn("SIGNATURE", text)
        with open(self.path, "r+b") as f:
            f.truncate(2 << 20)
        report, text = self.check(1 << 20, 1 << 20, 9)
        self.assertEqual(len(report.bad), 2048)
        self.assertNotIn("SIGNATURE", text)

    def test_a_range_past_the_end_of_the_file_mismatches(self):
        np.write(self.path, 0, 8 * KIB, 1)
        report, text = self.check(4 * KIB, 8 * KIB, 1)
        self.assertEqual(sorted(report.bad), list(range(16, 24)))
        self.assertIn("past the end 8", text)

    def test_command_line_exit_codes(self):
        np.write(self.path, 0, 4 * KIB, 11)
        run = lambda *a: subprocess.run([sys.executable, SCRIPT, *a], capture_output=True, text=True)  # noqa: E731
        self.assertEqual(run("check", self.path, "--offset", "0", "--len", "4K", "--seed", "11").returncode, 0)
        bad = run("check", self.path, "--offset", "0", "--len", "4K", "--seed", "12")
        self.assertEqual(bad.returncode, 1)
        self.assertIn("MISMATCH: 8 of 8", bad.stdout)
        self.assertEqual(run("check", self.path + ".none", "--offset", "0", "--len", "4K", "--seed", "1").returncode, 2)
        refused = run("check", self.path, "--offset", "100", "--len", "4K", "--seed", "1")
        self.assertEqual(refused.returncode, 2)
        self.assertIn("not a non-negative multiple of 512", refused.stderr)
        self.assertEqual(run("write", "-", "--offset", "0", "--len", "4K", "--seed", str(1 << 32)).returncode, 2)


if __name__ == "__main__":
    unittest.main()
