"""Command-line flags made from the settings' declarations (:mod:`.settings`), and the argparse
parser every command uses. Apart from :mod:`.settings` so that the container's bare entry point,
configured by the environment alone, never imports argparse.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any, NoReturn

from .settings import Setting, plain


class UsageError(Exception):
    """A command line argparse cannot parse; ``prog`` names the (sub)command."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class CommandParser(argparse.ArgumentParser):
    """An argparse parser that raises :class:`UsageError` instead of printing and exiting, so
    the caller reports it its own way (the gateway with its other configuration problems)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.add_help:  # the Go tools' spelling, as the old command line took it
            self.add_argument("-help", action="help", help=argparse.SUPPRESS)

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


def add_flags(parser: argparse.ArgumentParser, specs: Iterable[Setting]) -> None:
    """One flag per setting that has one; values stay text for :func:`resolve` to parse."""
    for spec in specs:
        if not spec.flag:
            continue
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if spec.switch else {}
        parser.add_argument(
            spec.flag,
            dest=spec.attr,
            default=argparse.SUPPRESS,
            metavar="true|false" if spec.switch else spec.attr.upper(),
            help=_flag_help(spec),
            **extra,
        )


def _flag_help(spec: Setting) -> str:
    env = f" [env {', '.join(spec.env)}]" if spec.env else ""
    # argparse formats help with %-style substitution.
    return plain(f"{spec.help} (default {spec.default_text}){env}").replace("%", "%%")
