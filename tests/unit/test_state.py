"""Persisted state: round trip, atomic write under simulated and real crashes, corrupt files."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from lbd import state as statemod
from lbd.model import Allocation
from lbd.state import (
    FORMAT_VERSION,
    PersistedState,
    StateError,
    StateStore,
    StateVersionError,
    decode_state,
    encode_state,
)

A = ipaddress.ip_address


def sample(n: int = 3, drained: bool = False) -> PersistedState:
    allocations = {
        f"static/s{i}": Allocation(f"static/s{i}", "lan", (A(f"192.168.1.{48 + i}"), A(f"fd77::{i + 1:x}")))
        for i in range(n)
    }
    return PersistedState(allocations=allocations, drained=drained, extra={"cluster": {"epoch": 7, "nodes": ["a"]}})


def names(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_missing_file_and_missing_directory_are_empty(tmp_path: Path) -> None:
    assert StateStore(tmp_path).load() == PersistedState()
    assert StateStore(tmp_path / "nope").load() == PersistedState()


def test_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "lbd")  # save creates the directory
    st_ = sample(drained=True)
    store.save(st_)
    loaded = StateStore(tmp_path / "lbd").load()
    assert loaded == st_
    assert loaded.version == FORMAT_VERSION
    assert names(tmp_path / "lbd") == ["allocations.json"]
    doc = json.loads((tmp_path / "lbd" / "allocations.json").read_text())
    assert doc["allocations"]["static/s0"] == {"pool": "lan", "addresses": ["192.168.1.48", "fd77::1"]}
    assert (tmp_path / "lbd" / "allocations.json").stat().st_mode & 0o777 == 0o644


def test_save_replaces_and_fsyncs_file_before_rename_and_directory_after(tmp_path: Path, monkeypatch) -> None:
    store = StateStore(tmp_path)
    store.save(sample(1))
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store.save(sample(2))
    assert events == ["fsync-file", "replace", "fsync-dir"]
    assert store.load() == sample(2)


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
def test_failure_before_rename_keeps_the_old_state(tmp_path: Path, monkeypatch, fail_at: str) -> None:
    store = StateStore(tmp_path)
    old = sample(2)
    store.save(old)

    def boom(*args, **kwargs):
        raise OSError(28, "simulated failure")

    monkeypatch.setattr(os, fail_at, boom)
    with pytest.raises(OSError):
        store.save(sample(3, drained=True))
    monkeypatch.undo()
    assert names(tmp_path) == ["allocations.json"]  # the temp file was removed
    assert store.load() == old


def test_crash_between_write_and_rename_leaves_a_temp_file_that_never_breaks_loading(tmp_path: Path, monkeypatch) -> None:
    store = StateStore(tmp_path)
    old = sample(2)
    store.save(old)

    # A real crash runs no cleanup: make unlink fail too, so the temp file stays.
    def crash(*args, **kwargs):
        raise OSError(5, "simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    monkeypatch.setattr(os, "unlink", crash)
    with pytest.raises(OSError):
        store.save(sample(3))
    monkeypatch.undo()
    leftovers = [n for n in names(tmp_path) if n != "allocations.json"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".allocations.json.tmp-")
    # and a torn temp file, as a crash in the middle of the write leaves it
    (tmp_path / ".allocations.json.tmp-999-deadbeef").write_bytes(b'{"version": 1, "allocations": {"x')
    assert store.load() == old
    assert names(tmp_path) == ["allocations.json"]  # leftovers removed on load
    store.save(sample(3))
    assert store.load() == sample(3)


_SAVER = """
import os, sys, ipaddress, time
from pathlib import Path
from lbd.state import StateStore, PersistedState
from lbd.model import Allocation
store = StateStore(Path(sys.argv[1]))
big = {f"s/{i}": Allocation(f"s/{i}", "p", (ipaddress.ip_address(167772160 + i),)) for i in range(3000)}
states = [PersistedState(big, False, {"n": 0}), PersistedState({}, True, {"n": 1})]
store.save(states[0])
if sys.argv[2] == "window":
    # stop between the fsync of the temp file and the rename, and say so
    def stuck(src, dst):
        print("window", flush=True)
        time.sleep(30)
    os.replace = stuck
print("ready", flush=True)
deadline = time.monotonic() + 20
i = 0
while time.monotonic() < deadline:
    i += 1
    store.save(states[i % 2])
"""


@pytest.mark.parametrize("mode", ["window", "random"])
def test_sigkill_during_saves_always_leaves_a_valid_file(tmp_path: Path, mode: str) -> None:
    """SIGKILL a process that saves in a loop: the file is always one whole state."""
    for attempt in range(1 if mode == "window" else 4):
        d = tmp_path / f"run{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(d), mode], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            if mode == "window":
                assert proc.stdout.readline() == b"window\n"
            else:
                time.sleep(0.05 + 0.037 * attempt)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if mode == "window":
            # the new state is complete and fsynced in its temp file, but not renamed
            assert [n for n in names(d) if n.startswith(".allocations.json.tmp-")]
        loaded = StateStore(d).load()
        assert loaded.extra in ({"n": 0}, {"n": 1})
        assert len(loaded.allocations) == (3000 if loaded.extra == {"n": 0} else 0)
        if mode == "window":
            assert loaded.extra == {"n": 0}  # the old state
        assert names(d) == ["allocations.json"]  # no temp file, nothing set aside


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"\xff\xfe", b"[]", b'{"version": 1, "allocations": {"a": {"pool": "p", "addresses": ["x"]}}}'],
)
def test_corrupt_file_is_moved_aside_logged_and_never_overwritten(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "allocations.json"
    path.write_bytes(content)
    store = StateStore(tmp_path)
    with capture_logs() as logs:
        assert store.load() == PersistedState()
    aside = [n for n in names(tmp_path) if n.startswith("allocations.json.corrupt-")]
    assert len(aside) == 1 and not path.exists()
    assert (tmp_path / aside[0]).read_bytes() == content
    errors = [e for e in logs if e["log_level"] == "error"]
    assert errors and errors[0]["event"] == "state_corrupt" and errors[0]["moved_to"].endswith(aside[0])
    store.save(sample(1))
    assert (tmp_path / aside[0]).read_bytes() == content
    # a second corrupt file in the same second gets its own name
    path.write_bytes(b"garbage")
    assert store.load() == PersistedState()
    assert len([n for n in names(tmp_path) if n.startswith("allocations.json.corrupt-")]) == 2


def test_unreadable_file_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "allocations.json").mkdir()  # reading a directory fails with EISDIR
    assert StateStore(tmp_path).load() == PersistedState()
    assert [n for n in names(tmp_path) if n.startswith("allocations.json.corrupt-")]


def test_corrupt_file_that_cannot_be_moved_aside_raises(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "allocations.json").write_bytes(b"garbage")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "read-only")

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(StateError, match="could not be moved aside"):
        StateStore(tmp_path).load()
    assert (tmp_path / "allocations.json").read_bytes() == b"garbage"


def test_newer_version_is_refused_and_left_alone(tmp_path: Path) -> None:
    data = json.dumps({"version": FORMAT_VERSION + 1, "allocations": {}, "future": True}).encode()
    (tmp_path / "allocations.json").write_bytes(data)
    with pytest.raises(StateVersionError, match="newer lbd"):
        StateStore(tmp_path).load()
    assert names(tmp_path) == ["allocations.json"]


@pytest.mark.parametrize(
    "doc,message",
    [
        ({"allocations": {}}, "version"),
        ({"version": True}, "version"),
        ({"version": 0}, "version"),
        ({"version": 1, "drained": "yes"}, "drained"),
        ({"version": 1, "extra": []}, "extra"),
        ({"version": 1, "allocations": []}, "allocations"),
        ({"version": 1, "other": 1}, "unknown keys: other"),
        ({"version": 1, "allocations": {"": {"pool": "p", "addresses": ["10.0.0.1"]}}}, "empty service name"),
        ({"version": 1, "allocations": {"a": {"pool": 1, "addresses": ["10.0.0.1"]}}}, "pool"),
        ({"version": 1, "allocations": {"a": {"pool": "p", "addresses": []}}}, "addresses"),
        ({"version": 1, "allocations": {"a": {"pool": "p", "addresses": [167772161]}}}, "not an IP"),
        ({"version": 1, "allocations": {"a": {"pool": "p", "addresses": ["fe80::1%eth0"]}}}, "not an IP"),
        ({"version": 1, "allocations": {"a": {"pool": "p", "addresses": ["10.0.0.1", "10.0.0.1"]}}}, "duplicate"),
        ({"version": 1, "allocations": {"a": {"pool": "p", "addresses": ["10.0.0.1"], "x": 1}}}, "not an object"),
    ],
)
def test_decode_rejects_malformed_documents(doc: object, message: str) -> None:
    with pytest.raises(StateError, match=message):
        decode_state(json.dumps(doc).encode())


def test_decode_rejects_non_finite_numbers() -> None:
    with pytest.raises(StateError):
        decode_state(b'{"version": 1, "extra": {"x": NaN}}')
    with pytest.raises(StateError):
        decode_state(b'{"version": 1, "extra": {"x": 1e999}}')


def test_encode_rejects_non_json_extra() -> None:
    with pytest.raises(StateError, match="extra.x"):
        encode_state(PersistedState(extra={"x": object()}))
    with pytest.raises(StateError):
        encode_state(PersistedState(extra={"x": float("inf")}))
    with pytest.raises(StateError):
        encode_state(PersistedState(extra={1: 2}))  # type: ignore[dict-item]


def test_save_with_bad_extra_keeps_the_old_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(sample(1))
    with pytest.raises(StateError):
        store.save(PersistedState(extra={"x": {1, 2}}))
    assert store.load() == sample(1) and names(tmp_path) == ["allocations.json"]


# -- hostile input: only StateError escapes ------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
address_text = st.one_of(
    st.ip_addresses().map(str), st.text(max_size=12), st.integers().map(str), st.just("::ffff:10.0.0.1")
)
state_like = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.integers(-2, 3), json_values),
        "drained": st.one_of(st.booleans(), json_values),
        "extra": json_values,
        "allocations": st.one_of(
            json_values,
            st.dictionaries(
                st.text(max_size=6),
                st.one_of(
                    json_values,
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "pool": st.one_of(st.text(max_size=4), json_values),
                            "addresses": st.one_of(st.lists(address_text, max_size=3), json_values),
                        },
                    ),
                ),
                max_size=4,
            ),
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), state_like.map(lambda d: json.dumps(d).encode())))
def test_decode_fuzz_raises_only_state_error(data: bytes) -> None:
    try:
        decoded = decode_state(data)
    except StateError:
        return
    # whatever decodes re-encodes to something that decodes to the same state
    assert decode_state(encode_state(decoded)) == decoded


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=10),
        st.lists(st.ip_addresses(), min_size=1, max_size=2, unique=True),
        max_size=6,
    ),
    st.booleans(),
    st.dictionaries(st.text(max_size=5), json_values, max_size=3),
)
def test_encode_decode_round_trip(raw: dict, drained: bool, extra: dict) -> None:
    allocations = {n: Allocation(n, "pool", tuple(a)) for n, a in raw.items()}
    state = PersistedState(allocations=allocations, drained=drained, extra=extra)
    assert decode_state(encode_state(state)) == state


def test_deeply_nested_json_is_a_state_error() -> None:
    with pytest.raises(StateError):
        decode_state(b'{"version": 1, "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def test_oversized_file_is_moved_aside(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(statemod, "_MAX_BYTES", 100)
    (tmp_path / "allocations.json").write_bytes(b" " * 101)
    assert StateStore(tmp_path).load() == PersistedState()
    assert [n for n in names(tmp_path) if "corrupt" in n]
