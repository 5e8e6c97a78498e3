"""The incremental transaction (``plan_transaction(old, new)``) applied to the kernel state of
``old`` gives exactly the kernel state that building ``new`` from scratch gives (property test).

The kernel is modelled strictly, as nf_tables behaves: adding an element whose key exists, or
deleting one that does not, refuses the whole batch; so a diff that is merely "close" fails.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from lbd.forward.ruleset import desired
from lbd.forward.transaction import plan_transaction, prepare_text
from lbd.config.schema import ForwardingConfig
from lbd.model import Allocation, Backend, PortSpec, ServiceSpec

IFS = {"eth0": (ipaddress.ip_interface("10.88.1.1/24"),)}
FWD = ForwardingConfig(seed=7, table_size=31)
ADDRESSES = [f"10.88.1.{10 + i}" for i in range(6)]


class Refused(Exception):
    pass


class Kernel:
    """lbd's tables as nf_tables holds them: chains with rules, maps and sets with elements."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, Any]] = {}  # family -> {"chains": {}, "objects": {}}

    def text(self, commands: str) -> None:
        for line in filter(None, commands.split("\n")):
            words = line.split()
            verb, kind, family = words[0], words[1], words[2]
            if kind == "table":
                if verb == "add":
                    self.tables.setdefault(family, {"chains": {}, "objects": {}})
                else:
                    self.tables.pop(family)
            elif kind in ("map", "set"):
                name = words[4]
                if name in self.tables[family]["objects"]:
                    raise Refused(f"{name} exists")
                spec = re.search(r"\{(.*)\}", line).group(1).strip()  # type: ignore[union-attr]
                self.tables[family]["objects"][name] = {"kind": kind, "spec": spec, "elems": {}}

    def run(self, ops: list[dict[str, Any]]) -> None:
        saved = repr(self.tables)
        try:
            for op in ops:
                ((verb, body),) = op.items()
                ((kind, obj),) = body.items()
                table = self.tables[obj.get("family")] if kind != "table" else None
                if kind == "table":
                    assert verb == "delete"
                    self.tables.pop(obj["family"])
                elif kind == "chain":
                    if verb == "add":
                        table["chains"].setdefault(obj["name"], {"hook": obj.get("hook"), "rules": []})
                    elif verb == "flush":
                        table["chains"][obj["name"]]["rules"] = []
                    else:
                        del table["chains"][obj["name"]]
                elif kind == "rule":
                    table["chains"][obj["chain"]]["rules"].append(obj["expr"])
                elif kind in ("map", "set"):
                    if verb == "delete":
                        del table["objects"][obj["name"]]
                    elif verb == "flush":
                        table["objects"][obj["name"]]["elems"] = {}
                    else:
                        table["objects"].setdefault(obj["name"], {"kind": kind, "spec": obj["type"], "elems": {}})
                elif kind == "element":
                    elems = table["objects"][obj["name"]]["elems"]
                    for e in obj["elem"]:
                        key, value = (repr(e[0]), e[1]) if isinstance(e, list) else (repr(e), None)
                        if verb == "add":
                            if key in elems:
                                raise Refused(f"element {key} exists in {obj['name']}")
                            elems[key] = value
                        else:
                            if key not in elems:
                                raise Refused(f"element {key} not in {obj['name']}")
                            del elems[key]
                else:
                    raise AssertionError(op)
        except (Refused, KeyError) as exc:
            self.tables = eval(saved)  # noqa: S307 - all or nothing, like the kernel
            raise Refused(str(exc)) from None


def apply(kernel: Kernel, old, new) -> None:  # type: ignore[no-untyped-def]
    kernel.text(prepare_text(old, new))
    kernel.run(plan_transaction(old, new))


backend_state = st.tuples(st.booleans(), st.sampled_from([None, True, True, True, False]),
                          st.integers(min_value=0, max_value=3))  # present, health, weight
service_state = st.tuples(st.sampled_from(["nat", "dsr"]), st.sampled_from(["tcp", "udp"]), st.booleans(),
                          st.lists(backend_state, min_size=6, max_size=6))


def inputs(state):  # type: ignore[no-untyped-def]
    services, allocations, health = {}, {}, {}
    for i, (mode, proto, snat, members) in enumerate(state):
        name = f"s/{i}"
        port = PortSpec(proto, 80 + i)
        backends = tuple(Backend(port, ipaddress.ip_address(a), 80 + i if mode == "dsr" else 8080, weight=w)
                         for a, (present, _, w) in zip(ADDRESSES, members) if present)
        services[name] = ServiceSpec(name=name, ports=(port,), backends=backends, forward=mode,
                                     snat=snat and mode == "nat")
        allocations[name] = Allocation(name, "p", (ipaddress.ip_address(f"10.77.0.{100 + i}"),))
        for a, (present, ok, _) in zip(ADDRESSES, members):
            health[(name, a)] = ok
    return services, allocations, lambda s, b: health[(s, str(b.address))]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(service_state, min_size=0, max_size=3), min_size=2, max_size=5))
def test_incremental_transactions_reach_the_from_scratch_state(states) -> None:
    kernel = Kernel()
    applied = None
    previous = None
    for state in states:
        services, allocations, healthy = inputs(state)
        want = desired(services, allocations, healthy, FWD, IFS, previous=previous)
        apply(kernel, applied, want.ruleset)
        scratch = Kernel()
        apply(scratch, None, want.ruleset)
        assert kernel.tables == scratch.tables
        # The same inputs again: nothing to do (level-triggered).
        again = desired(services, allocations, healthy, FWD, IFS, previous=want)
        assert again.ruleset == want.ruleset and plan_transaction(want.ruleset, again.ruleset) == []
        applied, previous = want.ruleset, want


def test_a_refused_batch_leaves_the_model_untouched() -> None:
    kernel = Kernel()
    services, allocations, healthy = inputs([("nat", "tcp", False, [(True, True, 1)] * 6)])
    want = desired(services, allocations, healthy, FWD, IFS).ruleset
    apply(kernel, None, want)
    before = repr(kernel.tables)
    ops = plan_transaction(None, want)  # "from scratch" on top of the tables: elements exist
    try:
        kernel.run([o for o in ops if "element" in next(iter(o.values()))])
    except Refused:
        pass
    else:
        raise AssertionError("adding existing elements must be refused")
    assert repr(kernel.tables) == before
