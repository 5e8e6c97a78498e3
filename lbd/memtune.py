"""The C allocator's settings for a daemon holding 100,000 services (issue 9).

glibc serves a block of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB at first) by its own
``mmap``, given back to the system when freed. But the threshold is dynamic: each such block
freed raises it to that block's size, up to 32 MiB. A daemon whose tables grow to 100,000
entries frees many large blocks (each dict or list resize frees the old table), so soon every
table comes from the heap, and the holes the freed ones leave stay in the process: at the end
of a 100,000-service first pass about 45 MiB of the heap was free (``mallinfo2``), and the
peak RSS (VmHWM) 30 MiB higher than with the threshold fixed. Setting it explicitly turns the
dynamic adjustment off (mallopt(3)), so tables of 256 KiB and more (dicts and lists of about
10,000 entries and up) are mapped and unmapped on their own. Python's small objects are not
concerned (pymalloc's arenas).
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
LARGE_BLOCK = 256 * 1024


def tune_malloc(threshold: int = LARGE_BLOCK) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where that is not possible
    (not Linux, no ``mallopt``, or the C library refused it: musl's is a stub)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
