"""Argument helpers shared by the commands."""

from __future__ import annotations

import argparse


def join_dash_values(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """argv with ``OPTION VALUE`` written as ``OPTION=VALUE`` for each of options.

    argparse takes a value that starts with '-' for an option of its own and refuses
    ``--criu-arg --tcp-established``; the '=' spelling it accepts. Words after '--' are a
    command's own and stay as they are.
    """
    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--":
            out.append(word)
            out.extend(words)
            break
        if word in options:
            value = next(words, None)
            out.append(word if value is None else f"{word}={value}")
        else:
            out.append(word)
    return out


def accept_dash_values(parser: argparse.ArgumentParser, *options: str) -> None:
    """Let parser (a command's subparser) take values starting with '-' for options, in both
    spellings (``--criu-arg --tcp-established`` and ``--criu-arg=--tcp-established``)."""
    parse_known_args = parser.parse_known_args

    def parse_joined(args=None, namespace=None):
        # argparse hands a subparser its words through parse_known_args
        return parse_known_args(None if args is None else join_dash_values(list(args), options),
                                namespace)

    parser.parse_known_args = parse_joined  # type: ignore[method-assign]
