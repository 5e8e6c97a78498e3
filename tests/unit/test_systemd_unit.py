"""systemd/lbd.service: valid, and hardened to an exposure of 3.0 or better."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lbd.testing.netlab import require_binary

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "lbd.service"


def test_unit_verifies(tmp_path):
    require_binary("systemd-analyze")
    # The unit names /usr/local/bin/lbd (where `make install` links it); point it at this checkout's lbd.
    lbd = shutil.which("lbd") or str(Path(__import__("sys").executable).parent / "lbd")
    unit = tmp_path / "lbd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/lbd", lbd))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unit_is_hardened():
    require_binary("systemd-analyze")
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)],
                            capture_output=True, text=True)
    match = re.search(r"Overall exposure level for lbd.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 3.0


def test_unit_keeps_what_lbd_needs():
    text = UNIT.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    assert set(caps) == {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_SYS_NICE"}
    families = re.search(r"^RestrictAddressFamilies=(.*)$", text, re.M).group(1).split()
    assert {"AF_NETLINK", "AF_PACKET", "AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    for key in ("ProtectSystem=strict", "StateDirectory=lbd", "RuntimeDirectory=lbd", "NoNewPrivileges=yes"):
        assert key in text
