"""lbd-ctl's command line: global options before or after the subcommand, hostile argv never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from lbd.ctl import COMMANDS, DEFAULT_SOCKET, build_parser, main, parse_args


@pytest.mark.parametrize("argv, command, as_json, socket", [
    ([], "status", False, DEFAULT_SOCKET),
    (["--json"], "status", True, DEFAULT_SOCKET),
    (["status", "--json"], "status", True, DEFAULT_SOCKET),
    (["--json", "status"], "status", True, DEFAULT_SOCKET),
    (["bgp", "--json"], "bgp", True, DEFAULT_SOCKET),
    (["members", "--json"], "members", True, DEFAULT_SOCKET),
    (["bgp", "--json", "--socket", "/x.sock"], "bgp", True, Path("/x.sock")),
    (["--socket", "/x.sock", "bgp"], "bgp", False, Path("/x.sock")),
    (["--socket=/x.sock", "--json", "members"], "members", True, Path("/x.sock")),
    (["--json", "drain", "--socket", "/y"], "drain", True, Path("/y")),
    (["--socket", "/a", "status", "--socket", "/b"], "status", False, Path("/b")),  # the last one wins
])
def test_global_options_before_or_after_the_command(argv, command, as_json, socket):
    args = parse_args(argv)
    assert (args.command, args.json, args.socket) == (command, as_json, socket)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_takes_the_global_options_on_either_side(command):
    for argv in ([command, "--json", "--socket", "/s"], ["--json", "--socket", "/s", command],
                 ["--json", command, "--socket", "/s"]):
        args = parse_args(argv)
        assert (args.command, args.json, args.socket) == (command, True, Path("/s"))


def test_the_parser_is_extensible_per_command():
    # Other commands' options are added to the parser of one command (e.g. reload --allow-readdress).
    parser, commands = build_parser()
    assert set(commands) == set(COMMANDS)
    commands["reload"].add_argument("--example-flag", action="store_true")
    args = parser.parse_args(["reload", "--example-flag", "--json"])
    assert args.example_flag and args.json and args.command == "reload"


@pytest.mark.parametrize("argv", [["nope"], ["status", "extra"], ["--json", "--bogus"], ["--socket"],
                                  ["status", "--socket"]])
def test_bad_command_lines_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert "usage: lbd-ctl" in capsys.readouterr().err


def test_documented_forms_reach_the_socket(tmp_path, capsys):
    # Parsed and sent: with no daemon, "not running" (exit 3), never a usage error (exit 2).
    sock = str(tmp_path / "none.sock")
    for argv in (["status", "--json", "--socket", sock], ["bgp", "--json", "--socket", sock],
                 ["members", "--json", "--socket", sock], ["--socket", sock, "--json", "status"]):
        assert main(argv) == 3, argv
        assert "lbd is not running" in capsys.readouterr().err


ARG = st.one_of(st.sampled_from(sorted(COMMANDS) + ["--json", "--socket", "-h", "--", "-", "=", "--socket="]),
                st.text(max_size=12))


@settings(max_examples=300, deadline=None)
@given(st.lists(ARG, max_size=6))
def test_hostile_argv_parses_or_is_a_usage_error(argv):
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        assert exc.code in (0, 2)  # -h prints help and exits 0; anything else is a usage error
        return
    assert args.command in COMMANDS and isinstance(args.json, bool) and isinstance(args.socket, Path)


def test_peer_supplied_strings_are_escaped_before_the_terminal():
    from lbd.ctl import printable, render_bgp, render_members, render_status

    assert printable("web-1 é") == "web-1 é"
    assert printable("a\x1b[2Jb\x00c\x7f") == "a\\x1b[2Jb\\x00c\\x7f"
    assert printable("rtl\u202eevil\u2028") == "rtl\\u202eevil\\u2028"
    assert printable("two\nlines") == "two\\x0alines"
    assert printable("two\nlines", newlines=True) == "two\nlines"
    members = render_members([{"name": "evil\x1b]0;owned\x07", "address": "10.77.0.1:7946", "state": "alive",
                                "incarnation": 1, "last_change": None}])
    assert "\x1b" not in members and "\x07" not in members and "evil\\x1b]0;owned\\x07" in members
    bgp = render_bgp([{"name": "p", "address": "10.77.0.1", "state": "Idle", "last_error": "NOTIFICATION \x1b[31m"}])
    assert "\x1b" not in bgp
    status = render_status({"node": "n\x1b", "pools": [], "services": [],
                            "sources": [{"name": "k8s", "state": "degraded", "last_error": "bad\x1b[0m"}],
                            "reload_error": ["x\x00"]})
    assert not any(ch in status for ch in "\x1b\x00")


@pytest.mark.parametrize("argv", [["reload", "--allow-readdress", "--json"], ["--json", "reload", "--allow-readdress"],
                                  ["reload", "--socket", "/s", "--allow-readdress"]])
def test_reload_allow_readdress_with_global_options_anywhere(argv):
    args = parse_args(argv)
    assert args.command == "reload" and args.allow_readdress is True
    with pytest.raises(SystemExit):
        parse_args(["status", "--allow-readdress"])  # only reload takes it
