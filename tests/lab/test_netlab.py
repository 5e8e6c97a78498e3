"""The lab harness itself: two hosts on the bridge reach each other."""

import pytest

pytestmark = pytest.mark.lab


def test_two_hosts_ping(lab):
    a = lab.add_host("a", ["10.77.0.1/24", "fd77::1/64"])
    b = lab.add_host("b", ["10.77.0.2/24", "fd77::2/64"])
    a.run("ping -c1 -W2 10.77.0.2")
    b.run("ping -c1 -W2 fd77::1")
    lab.set_link(b, up=False)
    assert a.run("ping -c1 -W1 10.77.0.2", check=False).returncode != 0
    lab.set_link(b, up=True)
    a.run("ping -c1 -W2 10.77.0.2")
