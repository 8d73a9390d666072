"""What the command-line scripts (``launch/``, ``shards/``, the demo) share: argument parsing and usage errors.

A usage error is a mistake in how a command was called — a typo'd config key, an unknown method, a missing or
empty folder, a run dir of another config, an unknown split, ImageNet weights that cannot be had. Each script
finds these before it creates or submits anything and answers with one line on stderr, ``<prog>: <what to
change>``, and exit status 2. A failure while the work runs is not a usage error and keeps its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable

# Raised by the checks that run before anything is created: config composition and validation (ValueError, as
# the house style wants for bad config), missing files and folders.
USAGE_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)
USAGE_EXIT = 2


class UsageError(ValueError):
    """A mistake in how a command was called; the message says what to change."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows every option's default and keeps the description's line breaks."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose own errors (bad flag value, missing required flag) are one line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print ``prog: message (see --help)`` and exit 2 (argparse prints the whole usage block)."""
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(USAGE_EXIT)


def parser(prog: str, description: str | None) -> Parser:
    """The parser every script uses: one-line errors, defaults in ``--help``."""
    return Parser(prog=prog, description=description, formatter_class=HelpFormatter)


def one_line(exc: BaseException) -> str:
    """The exception's message on a single line (newlines and indentation folded)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def usage_exit(prog: str, exc: BaseException) -> int:
    """Report a usage error on one line of stderr; return the exit status (2)."""
    print(f"{prog}: {one_line(exc)}", file=sys.stderr, flush=True)
    return USAGE_EXIT


def check_overrides(extra: Iterable[str], p: argparse.ArgumentParser) -> list[str]:
    """The Hydra overrides among the arguments argparse did not know; a stray flag is a usage error.

    ``--nprocs 2`` (a typo of ``--nproc``) would otherwise reach Hydra as the overrides ``--nprocs`` and ``2``.
    """
    extra = list(extra)
    flags = [s for a in p._actions for s in a.option_strings if s.startswith("--")]
    for arg in extra:
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            close = difflib.get_close_matches(name, flags, n=1)
            hint = f"; did you mean {close[0]}?" if close else "; see --help"
            raise UsageError(f"unknown flag {name}{hint} (flags come first, then Hydra overrides key=value)")
    return extra


def check_positive(**values: int | float | None) -> None:
    """Each given value must be ≥ 1 (or None: not given). ``0`` is a value, so it fails here, never "unset"."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be ≥ 1, got {value}")
