"""lbd_services{state="announced"}: services with a VIP announced here, counted in one pass
over the decisions (issue 9: the per-service scan was quadratic and blocked the loop)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from lbd import metrics as m
from lbd.metrics import REGISTRY


def fake(n: int, here_every: int) -> dict[str, Any]:
    """update()'s keyword arguments for n services, one in ``here_every`` announced here."""
    decisions = [SimpleNamespace(announced_here=i % here_every == 0, services=(f"s{i}", f"shared{i % 2}"))
                 for i in range(n)]
    return dict(
        pools=(), allocations={f"s{i}": None for i in range(n)} | {"gone": None},
        pending={"p": "no pool"}, plan=SimpleNamespace(decisions=decisions, l2=(), bgp=(), exports=()),
        drained=False,
    )


def announced() -> float | None:
    return REGISTRY.get_sample_value("lbd_services", {"state": "announced"})


def test_announced_counts_services_with_a_vip_announced_here() -> None:
    m.update(**fake(10, here_every=3))  # s0, s3, s6, s9 announced here; "shared*" not allocated
    assert announced() == 4
    assert REGISTRY.get_sample_value("lbd_services", {"state": "allocated"}) == 11
    assert REGISTRY.get_sample_value("lbd_services", {"state": "pending"}) == 1


def test_announced_is_linear_at_scale() -> None:
    d = fake(50_000, here_every=1)
    start = time.monotonic()
    m.update(**d)
    assert announced() == 50_000
    assert time.monotonic() - start < 20  # the quadratic scan took hours here
