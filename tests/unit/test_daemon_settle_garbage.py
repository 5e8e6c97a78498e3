"""After a full pass the daemon freezes what lives out of the cyclic collector (no generation-2
walk of the whole table inside a change's pass, issue 9); the next full pass collects what was
frozen, so cyclic garbage is never kept for good."""

from __future__ import annotations

import gc
import weakref

from lbd.daemon import Daemon


class Node:
    other: "Node | None" = None


def test_frozen_garbage_is_collected_at_the_next_full_pass() -> None:
    d = Daemon.__new__(Daemon)
    enabled = gc.isenabled()
    gc.disable()  # no collection but ours during the test
    try:
        cycle = Node()
        cycle.other = cycle
        ref = weakref.ref(cycle)
        del cycle
        d._settle_garbage()  # the first full pass: freeze (the cycle with the rest)
        assert gc.get_freeze_count() > 0
        gc.collect()
        assert ref() is not None, "frozen: a collection does not walk it"
        d._settle_garbage()  # the next full pass: unfreeze, collect everything once, freeze again
        assert ref() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()
