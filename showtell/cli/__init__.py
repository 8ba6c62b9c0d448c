"""Command lines: ``train.py`` and ``showtell`` (or ``python -m showtell``)
with the commands caption, evaluate, compare, export and train.

One module per command (``caption.py``, ``evaluate.py``, ...), each holding
its one-line ``SUMMARY``, its ``DESCRIPTION``, ``fill_parser`` (its flags)
and ``run`` (check the flags, then call the package's own functions: no
command builds another's argv). What they share is in ``common.py`` (exit
statuses, the error handler, checks, decoding flags), ``scoring.py`` (what
evaluate, compare and ``train --test`` share) and ``config_flags.py``: the
training flags, generated from the config dataclasses' fields, so each
hyperparameter is declared once (in showtell/config.py) with its default.

Every command checks what it was given (flags, files, folders, device) before
any slow work, and runs inside one error handler: a mistake the user can fix
prints one line ``error: ...`` on stderr and exits 2 when the command line is
at fault (found before any work starts) or 1 when the work itself failed (an
unreadable checkpoint, a broken dataset file). Anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

import argparse
from typing import Callable, NamedTuple, Sequence

from ..defaults import GUIDANCE_THRESHOLD as GUIDANCE_DEFAULT  # what --help quotes
from . import caption, compare, evaluate, export, train
from .caption import expand_images
from .common import UsageError, check_device, printable, run_command

__all__ = ["main", "train_main", "get_parser", "COMMANDS", "Command", "get_caption_parser", "get_evaluate_parser",
           "get_compare_parser", "get_export_parser", "get_train_parser", "expand_images", "printable",
           "check_device", "UsageError", "GUIDANCE_DEFAULT"]

get_caption_parser = caption.get_parser
get_evaluate_parser = evaluate.get_parser
get_compare_parser = compare.get_parser
get_export_parser = export.get_parser
get_train_parser = train.get_parser


class Command(NamedTuple):
    summary: str  # its line in the command list
    description: str
    fill_parser: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], int]  # returns the exit status


# name -> command, in the order ``showtell --help`` lists them
COMMANDS: dict[str, Command] = {
    module.__name__.rpartition(".")[2]: Command(module.SUMMARY, module.DESCRIPTION, module.fill_parser, module.run)
    for module in (caption, evaluate, compare, export, train)}


def get_parser(prog: str = "showtell") -> argparse.ArgumentParser:
    """The ``showtell`` command line: one subcommand per entry of COMMANDS."""
    from .. import __version__

    p = argparse.ArgumentParser(prog=prog, description="Show-and-Tell image captioning. "
                                f"'{prog} COMMAND --help' gives the flags of a command.")
    p.add_argument("--version", action="version", version=f"showtell {__version__}")
    sub = p.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for name, (summary, description, fill_parser, _) in COMMANDS.items():
        fill_parser(sub.add_parser(name, help=summary, description=description))
    return p


def _run_chosen(args: argparse.Namespace) -> int:
    _, _, _, run = COMMANDS[args.command]
    return run(args)


def main(argv: Sequence[str] | None = None, prog: str = "showtell") -> int:
    """``showtell`` / ``python -m showtell``: returns the exit status."""
    return run_command(get_parser(prog), argv, _run_chosen)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``train.py``: returns the exit status."""
    return run_command(train.get_parser(), argv, train.run)
