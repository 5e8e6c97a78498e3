"""Secure by default (issue 10): plaintext refused unless said so, member names
checked at the gossip layer, peer strings escaped before a terminal."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbd import cli
from lbd.cluster import wire
from lbd.cluster.members import valid_member_name
from lbd.cluster.swim import Swim
from lbd.ctl import render_members

PEER = ("10.77.0.9", 7946)
ADDR = bytes([10, 77, 0, 9])


def test_lbd_check_reports_plaintext_cluster_with_the_key_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lbd.toml"
    path.write_text('[node]\nname = "n1"\n[cluster]\njoin = ["10.77.0.2"]\n')
    assert cli.main(["--config", str(path), "check"]) == 1
    err = capsys.readouterr().err
    assert f"{path}: cluster: keys_file: missing: the cluster joins peers without encryption" in err
    assert "allow_plaintext = true" in err and "lbd keygen" in err
    path.write_text('[node]\nname = "n1"\n[cluster]\njoin = ["10.77.0.2"]\nallow_plaintext = true\n')
    assert cli.main(["--config", str(path), "check"]) == 0


@pytest.mark.parametrize("name", ["", "a\x00b", "\x1b[2Jowned", "tab\there", "del\x7f", "c1\x85"])
def test_bad_member_names_are_refused_counted_and_logged_once(name: str) -> None:
    core = Swim("a", "10.77.0.1", 7946, now=0.0)
    logged: list[dict[str, object]] = []
    core._table.log = _Recorder(logged)  # type: ignore[assignment]  # noqa: SLF001 - the member table refuses names
    for i in range(3):
        core.handle_packet(wire.encode(wire.Alive(1 + i, name, ADDR, 7946)), PEER, 1.0)
    assert [m.name for m in core.members()] == ["a"]
    assert core.stats.bad_names == 3
    assert [e for e in logged if e["event"] == "member_name_refused"] == [
        {"event": "member_name_refused", "peer": "10.77.0.9:7946", "name": repr(name)[:80]}]


def test_bad_names_in_a_push_pull_are_skipped_the_good_ones_kept() -> None:
    core = Swim("a", "10.77.0.1", 7946, now=0.0)
    pp = wire.PushPull(False, (
        wire.PushNode("", ADDR, 7946, b"", 1, 0),
        wire.PushNode("evil\x00", ADDR, 7946, b"", 1, 0),
        wire.PushNode("b", ADDR, 7946, b"", 1, 0),
    ))
    core.handle_stream(wire.encode_push_pull(pp), PEER, 1.0)
    assert sorted(m.name for m in core.members()) == ["a", "b"]
    assert core.stats.bad_names == 2


def test_valid_member_name() -> None:
    assert valid_member_name("node-1.example") and valid_member_name("nœud")
    assert not valid_member_name("") and not valid_member_name("x\ny")


def test_members_table_escapes_peer_strings() -> None:
    out = render_members([
        {"name": "\x1b]0;pwned\x07\x1b[2J", "address": "10.77.0.9:7946", "state": "alive", "incarnation": 1,
         "last_change": "1.0s ago"},
        {"name": "", "address": "x\u202ey", "state": "alive", "incarnation": 2, "last_change": "0s"},
    ])
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in out and '""' in out and "x\\u202ey" in out
    assert all(c.isprintable() for line in out.splitlines() for c in line)


class _Recorder:
    def __init__(self, sink: list[dict[str, object]]) -> None:
        self.sink = sink

    def bind(self, **kw: object) -> "_Recorder":
        return self

    def _log(self, event: str, **kw: object) -> None:
        self.sink.append({"event": event, **kw})

    debug = info = warning = error = exception = _log
