"""restoreprof report: what it takes, and clear errors (never a traceback) for what it cannot."""

from __future__ import annotations

import gzip
import json

import pytest
from test_analysis import restore_trace

from restoreprof.cli import main
from restoreprof.trace.model import TRACE_FILE_NAME


@pytest.fixture
def saved(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "out"
    restore_trace().save(folder / TRACE_FILE_NAME)
    return folder


@pytest.mark.parametrize("given", ["out", f"out/{TRACE_FILE_NAME}"])
def test_a_folder_or_its_trace_file(saved, given, capsys):
    assert main(["report", str(saved.parent / given)]) == 0
    assert "bottleneck:" in capsys.readouterr().out


def test_output_onto_an_existing_file_is_refused(saved, tmp_path, capsys):
    target = tmp_path / "existing.txt"
    target.write_text("keep me")
    code = main(["report", str(saved), "-o", str(target)])
    err = capsys.readouterr().err
    assert code != 0 and "is a file, not a folder" in err and "->" in err
    assert "Traceback" not in err and target.read_text() == "keep me"


def test_a_trace_of_the_wrong_json_types_is_refused(saved, tmp_path, capsys):
    """A trace whose times are strings (edited by hand, written by another tool)."""
    with gzip.open(saved / TRACE_FILE_NAME, "rt") as f:
        header, *blocks = [json.loads(line) for line in f]
    blocks[0]["columns"]["start_ns"] = [str(t) for t in blocks[0]["columns"]["start_ns"]]
    bad = tmp_path / "bad.rptrace"
    with gzip.open(bad, "wt") as f:
        f.write("".join(json.dumps(x) + "\n" for x in (header, *blocks)))
    code = main(["report", str(bad)])
    err = capsys.readouterr().err
    assert code != 0 and "cannot read trace" in err and "start_ns" in err
    assert "Traceback" not in err
