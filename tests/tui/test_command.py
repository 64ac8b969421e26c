"""restoreprof tui's arguments: what it watches, and the errors that say what to do."""

from __future__ import annotations

import pytest

from restoreprof.cli import build_parser
from restoreprof.commands import tui as tui_command
from restoreprof.errors import RestoreprofError


def parse(*argv: str):
    args = build_parser().parse_args(["tui", *argv])
    return tui_command._normalize(args)


def test_a_command_after_double_dash():
    args = parse("-o", "out", "--", "python3", "-c", "print(1)")
    assert args.command_argv == ["python3", "-c", "print(1)"]
    assert args.trace is None and str(args.output) == "out"


def test_a_trace_file_with_options_after_it():
    args = parse("trace.json", "--speed", "4", "-o", "out")
    assert str(args.trace) == "trace.json"
    assert args.speed == 4 and str(args.output) == "out"
    assert args.command_argv == []


def test_pid_and_restore():
    assert parse("-p", "123").pid == 123
    assert str(parse("--restore", "/ckpt").restore) == "/ckpt"


@pytest.mark.parametrize("argv", [(), ("-p", "1", "trace.json"), ("--",),
                                  ("trace.json", "--speed", "-1")])
def test_nothing_or_two_targets_is_an_error_with_a_hint(argv):
    with pytest.raises(RestoreprofError) as caught:
        parse(*argv)
    assert caught.value.hint


def test_a_missing_trace_file_says_how_to_record_one(tmp_path):
    args = parse(str(tmp_path / "nope.json"))
    with pytest.raises(RestoreprofError, match="no trace file") as caught:
        tui_command.make_feed(args)
    assert "restoreprof trace" in caught.value.hint


def test_a_missing_pid_is_an_error(monkeypatch):
    args = parse("-p", "999999999")
    with pytest.raises(RestoreprofError, match="no process"):
        tui_command.make_feed(args)
