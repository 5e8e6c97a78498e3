"""glibc's mmap threshold fixed (lbd.memtune, issue 9): a block over it is mapped on its own,
even after larger blocks were freed (which would have raised the dynamic threshold)."""

from __future__ import annotations

import ctypes
import sys

import pytest

from lbd.memtune import LARGE_BLOCK, tune_malloc


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mapped_bytes() -> int:
    info = ctypes.CDLL(None).mallinfo2
    info.restype = _MallInfo2
    return int(info().hblkhd)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="glibc only")
def test_blocks_over_the_threshold_are_mapped_even_after_big_frees() -> None:
    assert tune_malloc() is True
    big = bytearray(8 * 2**20)  # a big block freed: the dynamic threshold would rise to 8 MiB
    del big
    before = _mapped_bytes()
    block = bytearray(4 * LARGE_BLOCK)  # 1 MiB: under 8 MiB, over the fixed threshold
    assert _mapped_bytes() - before >= 4 * LARGE_BLOCK
    del block
    assert _mapped_bytes() - before < LARGE_BLOCK  # and given back when freed
