"""Flags take both spellings: '--criu-arg --tcp-established' and '--criu-arg=--tcp-established'."""

from __future__ import annotations

import pytest

from restoreprof.cli import build_parser
from restoreprof.commands._args import join_dash_values


def parse(*argv: str):
    return build_parser(list(argv)).parse_args(list(argv))


@pytest.mark.parametrize("command", [["checkpoint", "-p", "1", "-D", "d"], ["restore", "-D", "d"]])
def test_criu_arg_in_both_spellings(command):
    args = parse(*command, "--criu-arg", "--tcp-established", "--criu-arg=--ext-unix-sk",
                 "--criu-arg", "-v4", "--json")
    assert args.criu_arg == ["--tcp-established", "--ext-unix-sk", "-v4"]
    assert args.json
    assert parse(*command, "--criu-arg=--tcp-established").criu_arg == ["--tcp-established"]


def test_the_parser_built_with_every_command_takes_it_too():
    args = build_parser().parse_args(["restore", "-D", "d", "--criu-arg", "--tcp-established"])
    assert args.criu_arg == ["--tcp-established"]


def test_words_after_double_dash_are_left_alone():
    argv = ["--criu-arg", "-x", "--", "prog", "--criu-arg", "-y"]
    assert join_dash_values(argv, ("--criu-arg",)) == ["--criu-arg=-x", "--", "prog",
                                                       "--criu-arg", "-y"]
