"""The real daemon against FIFOs where it expects files (issue 10): it never blocks.

- a drop-in symlinked to a FIFO while lbd runs: lbd-ctl keeps answering, the
  source shows degraded with the reason, the other drop-in's VIP stays;
- a FIFO in place of the state file at start: lbd starts, moves it aside.

The decisions have unit tests (tests/unit/test_safefile.py); this shows the
event loop of the real daemon stays free.
"""

from __future__ import annotations

import os
import time

import pytest

from lbd.testing.netlab import LbdNode, wait_for

pytestmark = pytest.mark.lab

CONFIG = """
[[pool]]
name = "lan"
addresses = ["10.77.0.48/28"]

[[l2_advertisement]]
pools = ["lan"]
"""


def source(lbd: LbdNode, name: str) -> dict:
    return next(s for s in lbd.status()["sources"] if s["name"] == name)


def test_dropin_symlinked_to_a_fifo_does_not_block_the_daemon(lab, tmp_path):
    node = lab.add_host("node", ["10.77.0.2/24"])
    dropins = tmp_path / "services.d"
    dropins.mkdir()
    (dropins / "web.toml").write_text('[[service]]\nname = "web"\naddresses = ["10.77.0.50"]\n')
    lbd = LbdNode(node, tmp_path, CONFIG + f'\n[[source]]\ntype = "directory"\nname = "dropins"\npath = "{dropins}"\n',
                  name="node1").start()
    try:
        wait_for(lambda: lbd.service("dropins/web")["state"] == "announced", 15, what="dropins/web announced")
        os.mkfifo(tmp_path / "pipe")
        os.symlink(tmp_path / "pipe", dropins / "evil.toml")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # every call answers: the loop never blocks on the FIFO
            t0 = time.monotonic()
            assert lbd.ctl_ok("status")
            assert time.monotonic() - t0 < 5
        src = wait_for(lambda: (s := source(lbd, "dropins"))["state"] == "degraded" and s, 10, what="degraded")
        assert "evil.toml: not a regular file: it is a FIFO (named pipe)" in src["last_error"]
        assert lbd.service("dropins/web")["state"] == "announced"
    finally:
        lbd.stop()


def test_state_file_that_is_a_fifo_does_not_block_the_start(lab, tmp_path):
    node = lab.add_host("node", ["10.77.0.2/24"])
    lbd = LbdNode(node, tmp_path, CONFIG, name="node1")
    lbd.state_dir.mkdir(parents=True)
    os.mkfifo(lbd.state_dir / "allocations.json")
    try:
        lbd.start(timeout=20)  # before the fix: blocked in open() on the FIFO, never answers
        aside = [n for n in os.listdir(lbd.state_dir) if n.startswith("allocations.json.corrupt-")]
        assert len(aside) == 1
        assert "not a regular file: it is a FIFO" in lbd.log()
    finally:
        lbd.stop()
