"""The offline lifecycle commands: gc, verify, export, import.

Each command module gives `add_parser(sub)`, which registers its subcommand with `run` (a function
of the parsed arguments returning the exit status) as the parser's `run` default.
"""

from __future__ import annotations

import argparse
from typing import Any

from mirror.lifecycle import bundle_commands, gc_command, verify_command

COMMANDS: list[Any] = [gc_command, verify_command, bundle_commands]


def add_lifecycle_parsers(sub: Any) -> None:
    for command in COMMANDS:
        command.add_parser(sub)


def run_lifecycle(args: argparse.Namespace) -> int | None:
    """The exit status of a lifecycle command, or None if `args` names none."""
    run = getattr(args, "run", None)
    return None if run is None else int(run(args))
