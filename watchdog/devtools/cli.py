"""Command line of the developer commands (``new``, ``build``, ``up``, ``logs``): parses flags,
prints and picks exit codes; the work is done by the other modules of this package."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from . import DevError, templates
from .build import build_context
from .logs import follow
from .new import NewRequest, new_function
from .stack import DEFAULT_GATEWAY, find_stack_file, load_stack
from .up import UpOptions, log_path, run_up, state_dir_for
from .venvs import cache_root

EXIT_FAILED = 1
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def add_commands(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """``new``, ``build``, ``up`` and ``logs`` as subcommands (``add_parser`` is argparse's
    ``add_subparsers().add_parser``); each sets ``run_command``."""
    new = add_parser("new", help="create a function", description="Create a function.")
    new.add_argument("name", nargs="?", help="function name (lowercase, digits, dashes)")
    new.add_argument("--lang", help="template: python3-http, python3, dockerfile, ...")
    new.add_argument("-p", "--prefix", default="", help="image prefix, e.g. ghcr.io/me")
    new.add_argument("--handler", default="", help="handler folder (default: NAME)")
    new.add_argument("-f", "--yaml", default="", help="stack file to write (stack.yaml)")
    new.add_argument("-a", "--append", default="", help="add the function to this stack file")
    new.add_argument("-g", "--gateway", default=DEFAULT_GATEWAY)
    new.add_argument("-q", "--quiet", action="store_true", help="skip the welcome message")
    new.add_argument("--list", action="store_true", help="list the available templates")
    new.set_defaults(run_command=_new)

    build = add_parser(
        "build", help="write build/NAME", description="Write build/NAME for each function."
    )
    build.add_argument("--shrinkwrap", action="store_true", help="write the build contexts only")
    build.add_argument("-f", "--yaml", default=None, help="stack file (stack.yaml, stack.yml)")
    build.add_argument("--filter", default="", help="only this function")
    build.set_defaults(run_command=_build)

    up = add_parser(
        "up",
        help="run the stack locally",
        description="Run the gateway and the functions locally (no Docker).",
    )
    up.add_argument("-f", "--yaml", default=None, help="stack file (stack.yaml, stack.yml)")
    up.add_argument("--port", type=int, default=8080, help="gateway port (0: a free one)")
    up.add_argument("--watch", action="store_true", help="restart a function when it changes")
    up.set_defaults(run_command=_up)

    logs = add_parser(
        "logs", help="follow a function's log", description="Follow a function's log."
    )
    logs.add_argument("name", help="function name, or gateway")
    logs.add_argument("-f", "--yaml", default=None, help="stack file (its folder holds the logs)")
    logs.add_argument("--no-follow", action="store_true", help="print what is there and exit")
    logs.set_defaults(run_command=_logs)


def run(command: str, args: argparse.Namespace) -> int:
    """Run a developer command parsed by :func:`add_commands`."""
    try:
        return int(args.run_command(args))
    except DevError as exc:
        for problem in exc.problems:
            print(f"fwatchdog {command}: {problem}", file=sys.stderr)
        return EXIT_FAILED


def _new(args: argparse.Namespace) -> int:
    project = Path.cwd()
    if args.list:
        print("Languages available as templates:")
        for lang in templates.available(project):
            print(f"- {lang}")
        return 0
    if not args.name or not args.lang:
        choices = ", ".join(templates.available(project))
        raise DevError(f"usage: fwatchdog new NAME --lang LANG (languages: {choices})")
    result = new_function(
        NewRequest(
            name=args.name,
            lang=args.lang,
            project=project,
            prefix=args.prefix,
            handler=args.handler,
            stack_file=args.yaml,
            append=args.append,
            gateway=args.gateway,
        )
    )
    print(f"Function created in folder: {result.handler.name}")
    print(f"Stack file written: {result.stack_file.name}")
    if result.welcome_message and not args.quiet:
        print("\nNotes:")
        print(result.welcome_message.rstrip())
    return 0


def _build(args: argparse.Namespace) -> int:
    if not args.shrinkwrap:
        raise DevError(
            "fwatchdog does not run Docker: use --shrinkwrap, then docker build build/NAME"
        )
    stack = load_stack(find_stack_file(args.yaml, Path.cwd()))
    specs = [stack.function(args.filter)] if args.filter else list(stack.functions)
    for spec in specs:
        build_context(stack, spec, templates.find(spec.lang, stack.directory))
        print(f"{spec.name} shrink-wrapped to ./build/{spec.name}")
    return 0


def _up(args: argparse.Namespace) -> int:
    import os

    stack = load_stack(find_stack_file(args.yaml, Path.cwd()))
    options = UpOptions(stack=stack, port=args.port, watch=args.watch, cache=cache_root(os.environ))
    with _stop_on_signals() as stop:
        run_up(options, _say, stop)
    return 0


def _logs(args: argparse.Namespace) -> int:
    project = find_stack_file(args.yaml, Path.cwd()).parent if args.yaml else Path.cwd()
    path = log_path(state_dir_for(project), args.name)
    if not path.exists():
        raise DevError(f"no log for {args.name!r} at {path}: is fwatchdog up running here?")
    with _stop_on_signals() as stop:
        follow(path, sys.stdout.buffer, stop, keep_following=not args.no_follow)
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT, SIGTERM and SIGHUP (the terminal closed) only set an event (the work loop stops
    at its next check); the previous handlers come back afterwards."""
    stop = threading.Event()

    def handle(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in _STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
