"""glibc's mmap threshold fixed (lbd.memtune, issue 9): a block over it is mapped on its own,
even after larger blocks were freed (which would have raised the dynamic threshold).

Run in a fresh interpreter, as the daemon calls it at start: in a process whose heap already
has big free chunks (this test run's), malloc serves a block from those before it maps one."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import ctypes, sys
from lbd.memtune import LARGE_BLOCK, tune_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

info = ctypes.CDLL(None).mallinfo2
info.restype = MallInfo2
tuned = sys.argv[1] == "tuned"
if tuned:
    assert tune_malloc() is True
big = bytearray(8 * 2**20)  # a big block freed: the dynamic threshold would rise to 8 MiB
del big
before = info().hblkhd
block = bytearray(4 * LARGE_BLOCK)  # 1 MiB: under 8 MiB, over the fixed threshold
grown = info().hblkhd - before
del block
print(grown, info().hblkhd - before)
"""


def run(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="glibc only")
def test_blocks_over_the_threshold_are_mapped_even_after_big_frees() -> None:
    grown, after_free = run("tuned")
    assert grown >= 2**20  # mapped on its own
    assert after_free < 2**18  # and given back when freed
    untuned, _ = run("default")
    assert untuned < 2**20  # the default's dynamic threshold: from the heap (what the tune avoids)
