"""Command line: one argparse parser for every command.

A bare ``fwatchdog`` is the container entry point, configured by environment variables;
``fwatchdog gateway`` runs the gateway; ``invoke`` and ``activations`` are its client
(:mod:`.client`, which prints its own output); ``new``, ``build``, ``up`` and ``logs`` are the
local developer workflow (:mod:`.devtools.cli`, which prints its own output too). Each module
adds its own subcommand's arguments; this one parses and dispatches.

Apart from those, this is the only module that prints or chooses exit codes. Exit status 2
means the command line or the configuration is invalid; 1 means the watchdog could not start or
failed while running.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from . import __version__
from .config import WatchdogConfig
from .settings import ConfigError, declared, plain

if TYPE_CHECKING:
    import argparse

    from .flags import CommandParser
    from .gateway.config import GatewayConfig

EXIT_CONFIG = 2
EXIT_START = 1

log = logging.getLogger("watchdog")


VERSION_ARGS = ("-version", "--version", "version")
HEALTHCHECK_ARGS = ("-run-healthcheck", "--run-healthcheck")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # The container's own paths first, without building the whole command line (which
    # imports the gateway, the client and the developer tools): the bare entry point, and
    # what Docker's HEALTHCHECK runs every few seconds.
    if not args:
        return run_watchdog(os.environ)
    if args == [args[0]] and args[0] in VERSION_ARGS:
        print(f"fwatchdog {__version__}")
        return 0
    if args == [args[0]] and args[0] in HEALTHCHECK_ARGS:
        return _run_healthcheck(os.environ)
    from .flags import UsageError  # argparse is for commands, not the container's entry point

    gateway_problems: list[str] = []
    if args[0] == "gateway":
        from .gateway.config import join_flag_values

        gateway_args, gateway_problems = join_flag_values(args[1:])
        args = ["gateway", *gateway_args]
    parser = build_parser()
    try:
        parsed, unknown = parser.parse_known_args(args)
    except UsageError as exc:
        if args[0] == "gateway":  # reported like the gateway's other problems
            return _gateway_problems([f"{exc} (see {exc.prog} --help)"])
        return _usage_error(exc.prog, str(exc))
    command = getattr(parsed, "command", None)
    if unknown and command != "gateway":
        prog = f"{parser.prog} {command}" if command else parser.prog
        return _usage_error(prog, f"unrecognized arguments: {' '.join(unknown)}")
    if command == "help":
        parser.print_help()
        return 0
    if parsed.version or command == "version":
        print(f"fwatchdog {__version__}")
        return 0
    if parsed.run_healthcheck:
        return _run_healthcheck(os.environ)
    if command == "gateway":
        return run_gateway(vars(parsed), unknown, os.environ, gateway_problems)
    if command in ("invoke", "activations"):
        return run_client(command, parsed, os.environ)
    if command is not None:
        from .devtools.cli import run as run_dev_command

        return run_dev_command(command, parsed)
    return run_watchdog(os.environ)


def build_parser() -> CommandParser:
    """The whole command line: the watchdog's options and every subcommand."""
    import argparse

    from . import client
    from .devtools.cli import add_commands
    from .flags import CommandParser
    from .gateway.config import add_arguments as add_gateway_arguments

    parser = CommandParser(
        prog="fwatchdog",
        description="Without a command: the watchdog, configured by the environment variables "
        "below. With one: the gateway, its client, or the local developer workflow.",
        epilog=_watchdog_variables(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Single-dash forms as the Go watchdogs spell them (Dockerfiles' HEALTHCHECK use them).
    parser.add_argument("-version", "--version", action="store_true", help="print the version")
    parser.add_argument(
        "-run-healthcheck",
        "--run-healthcheck",
        action="store_true",
        help="exit 0 if the watchdog's lock file exists (for Docker's HEALTHCHECK)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    # The gateway takes no abbreviations (--p is no --port), as before; the other commands
    # keep argparse's.
    gateway = commands.add_parser("gateway", help="run the gateway", allow_abbrev=False)
    add_gateway_arguments(gateway)
    client.add_invoke_arguments(commands.add_parser("invoke", help="call a function"))
    client.add_activations_arguments(
        commands.add_parser("activations", help="records of asynchronous calls")
    )
    add_commands(commands.add_parser)
    commands.add_parser("version", help="print the version")
    commands.add_parser("help", help="print this help")
    return parser


def _watchdog_variables() -> str:
    lines = ["environment variables of the watchdog:"]
    for spec in declared(WatchdogConfig):
        names = " or ".join(spec.env)
        meaning = plain(f"{spec.help} (default {spec.default_text})")
        lines.append(f"  {names:<36} {meaning}")
    return "\n".join(lines)


def _usage_error(prog: str, message: str) -> int:
    print(f"{prog}: error: {message} (see {prog} --help)", file=sys.stderr)
    return EXIT_CONFIG


def run_watchdog(env: Mapping[str, str]) -> int:
    """Parse the configuration from ``env`` and serve until told to stop."""
    try:
        config = WatchdogConfig.from_env(env)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"fwatchdog: configuration error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    _ensure_standard_fds()
    from .notls import stand_in_for_ssl

    stand_in_for_ssl()  # before asyncio and uvloop import ssl: 4 MB less per replica
    from .logs import setup_logging

    setup_logging(config.log_format)
    return _serve(config)


def _serve(config: WatchdogConfig) -> int:
    import uvloop

    from .health import LockFileError
    from .modes.static import StaticRootError
    from .process import SpawnError
    from .server import Watchdog

    async def serve() -> int:
        return await Watchdog(config).serve()

    start_errors: tuple[type[Exception], ...] = (LockFileError, *_start_errors(config))
    try:
        return uvloop.run(serve())
    except (SpawnError, StaticRootError) as exc:
        print(f"fwatchdog: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except start_errors as exc:
        log.error("%s", exc)
        return EXIT_START
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_START
    return 0


def _start_errors(config: WatchdogConfig) -> tuple[type[Exception], ...]:
    """The run mode's own start failures; only http mode has any, and only it imports its
    module (the fork and static modes must not pay for its HTTP client)."""
    if config.mode != "http":
        return ()
    from .modes.http import UpstreamStartError

    return (UpstreamStartError,)


def run_gateway(
    flags: Mapping[str, object],
    unknown: Sequence[str],
    env: Mapping[str, str],
    problems: Sequence[str] = (),
) -> int:
    """``fwatchdog gateway [flags]``: parse flags over ``env`` and serve until told to stop;
    ``problems`` found in the command line already are reported with the rest."""
    from .gateway.config import GatewayConfig, unknown_arguments

    try:
        config = GatewayConfig.from_flags(flags, env, [*problems, *unknown_arguments(unknown)])
    except ConfigError as exc:
        return _gateway_problems(exc.problems)
    from .logs import setup_logging

    setup_logging(config.log_format)
    return _serve_gateway(config)


def _gateway_problems(problems: Sequence[str]) -> int:
    for problem in problems:
        print(f"fwatchdog gateway: configuration error: {problem}", file=sys.stderr)
    return EXIT_CONFIG


def _serve_gateway(config: GatewayConfig) -> int:
    import uvloop

    from .gateway.queue import QueueError
    from .gateway.server import Gateway

    async def serve() -> None:
        await Gateway(config).serve()

    try:
        uvloop.run(serve())
    except (OSError, QueueError) as exc:
        log.error("cannot start the gateway: %s", exc)
        return EXIT_START
    return 0


def run_client(command: str, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``fwatchdog invoke`` and ``fwatchdog activations``: talk to a gateway."""
    from . import client
    from .flags import UsageError

    try:
        if command == "invoke":
            return client.invoke(args, env, sys.stdin.buffer, sys.stdout.buffer)
        return client.activations(args, env, sys.stdout.buffer)
    except client.Unreachable as exc:
        print(f"fwatchdog {command}: {exc}", file=sys.stderr)
        return client.EXIT_FAILED
    except UsageError as exc:
        return _usage_error(exc.prog, str(exc))


def _run_healthcheck(env: Mapping[str, str]) -> int:
    """``fwatchdog -run-healthcheck``: exit 0 if the lock file exists (for Docker HEALTHCHECK)."""
    lock = os.path.join(env.get("TMPDIR") or "/tmp", ".lock")
    if os.path.exists(lock):
        return 0
    print("unable to find lock file.", file=sys.stderr)
    return 1


def _ensure_standard_fds() -> None:
    # A handler's pipes must never land on fds 0-2 (posix_spawn's dup2 onto the same number
    # would keep close-on-exec set), so make sure those are taken, as init systems may not.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)
