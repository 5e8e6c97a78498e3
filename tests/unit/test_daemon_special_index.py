"""The daemon's index of services with a health check or backends, kept per change of its
services (issue 9), equals the walk of every service it replaced."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from lbd.daemon import Daemon
from lbd.model import Backend, HealthCheckConfig, PortSpec, ServiceSpec

NAMES = [f"s/{i}" for i in range(6)]
KINDS = ["plain", "checked", "forwarded", "both"]


def spec(name: str, kind: str) -> ServiceSpec:
    check = HealthCheckConfig(type="tcp", port=80) if kind in ("checked", "both") else None
    backends = ((Backend(PortSpec("tcp", 80), ipaddress.ip_address("10.77.0.9"), 80),)
                if kind in ("forwarded", "both") else ())
    return ServiceSpec(name=name, pool="p", health_check=check, backends=backends)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(NAMES), st.sampled_from(KINDS + ["gone"]), max_size=4),
                min_size=1, max_size=10))
def test_index_equals_the_walk_of_every_service(passes: list[dict[str, str]]) -> None:
    daemon = Daemon.__new__(Daemon)  # the index needs nothing else of a daemon
    daemon.services = {}
    for changes in passes:
        services = dict(daemon.services)  # a new mapping each pass, unchanged specs the same objects
        for name, kind in changes.items():
            if kind == "gone":
                services.pop(name, None)
            else:
                services[name] = spec(name, kind)
        daemon.services = services
        want = {n: s for n, s in services.items() if s.health_check is not None or s.backends}
        assert dict(daemon._checked_or_forwarded()) == want


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.dictionaries(st.sampled_from(NAMES), st.sampled_from(KINDS + ["gone"]), max_size=4),
                          st.sets(st.sampled_from(NAMES), max_size=2), st.booleans()),
                min_size=1, max_size=10))
def test_hinted_index_equals_the_walk_of_every_service(passes: list[tuple[dict[str, str], set[str], bool]]) -> None:
    """With the pass's hint (the names the sources changed, a superset allowed, as
    ``_take_hints`` leaves it), the index is brought up to date over those names alone, and
    still equals the walk; a hint taken for other services than the daemon's is not used."""
    daemon = Daemon.__new__(Daemon)
    daemon.services = {}
    daemon._special_hint = None  # the first pass compares everything
    for changes, extra, stale in passes:
        services = dict(daemon.services)
        for name, kind in changes.items():
            if kind == "gone":
                services.pop(name, None)
            else:
                services[name] = spec(name, kind)
        daemon.services = services
        hint = daemon._special_hint
        daemon._special_hint = None if hint is None else hint | set(changes) | extra
        # ``stale``: the hint was taken for an older mapping (it must then be ignored)
        daemon._special_hint_for = {} if stale else services
        want = {n: s for n, s in services.items() if s.health_check is not None or s.backends}
        assert dict(daemon._checked_or_forwarded()) == want
        assert daemon._special_hint == set()  # consumed


def test_the_hint_limits_the_work_to_its_names() -> None:
    """A spec changed outside the hint is not looked at (the hint is trusted): proof the
    hinted path does not compare every service."""
    daemon = Daemon.__new__(Daemon)
    daemon.services = {"s/0": spec("s/0", "plain"), "s/1": spec("s/1", "plain")}
    daemon._special_hint = None
    assert dict(daemon._checked_or_forwarded()) == {}
    services = {"s/0": spec("s/0", "checked"), "s/1": spec("s/1", "checked")}
    daemon.services, daemon._special_hint, daemon._special_hint_for = services, {"s/1"}, services
    assert set(daemon._checked_or_forwarded()) == {"s/1"}
