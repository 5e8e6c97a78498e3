"""sd_notify: the datagrams systemd receives."""

from __future__ import annotations

import os
import socket

from lbd.sdnotify import Notifier


def test_notify_messages(tmp_path):
    path = tmp_path / "notify"
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(path))
    sink.settimeout(2)
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert notifier.enabled and notifier.watchdog_interval == 4.0
    notifier.ready("announcing 3 VIPs")
    assert sink.recv(4096) == b"READY=1\nSTATUS=announcing 3 VIPs"
    notifier.reloading()
    fields = sink.recv(4096).decode().split("\n")
    assert fields[0] == "RELOADING=1" and fields[1].startswith("MONOTONIC_USEC=")
    notifier.stopping()
    assert sink.recv(4096) == b"STOPPING=1"
    notifier.watchdog()
    assert sink.recv(4096) == b"WATCHDOG=1"
    sink.close()


def test_outside_systemd_is_a_no_op():
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.notify("READY=1") is False


def test_watchdog_for_another_pid_is_ignored():
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None or os.getpid() == 1
