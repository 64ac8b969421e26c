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
    with pytest.raises(RestoreprofError, match="no trace at") as caught:
        tui_command.make_feed(args)
    assert "restoreprof trace" in caught.value.hint


def test_a_missing_pid_is_an_error(monkeypatch):
    args = parse("-p", "999999999")
    with pytest.raises(RestoreprofError, match="no process"):
        tui_command.make_feed(args)


def _saved_trace(folder):
    from restoreprof.trace.events import SYSCALL, Event
    from restoreprof.trace.model import TRACE_FILE_NAME, Trace, TraceMeta

    folder.mkdir()
    trace = Trace(TraceMeta(target="t"), [Event(SYSCALL, "preadv", 1, 1, 0, 10, bytes=4096)])
    trace.save(folder / TRACE_FILE_NAME)
    (folder / "trace.json").write_text("{}")   # the Perfetto export beside it
    return trace


@pytest.mark.parametrize("given", ["out", "out/trace.rptrace", "out/trace.json"])
def test_takes_what_report_takes(tmp_path, given):
    """A trace folder, its trace file, and the export its old hint named all replay."""
    trace = _saved_trace(tmp_path / "out")
    feed = tui_command.make_feed(parse(str(tmp_path / given)))
    assert feed.trace.events == trace.events


def test_the_hint_names_something_that_works():
    with pytest.raises(RestoreprofError) as caught:
        parse()
    assert "trace.json" not in caught.value.hint
