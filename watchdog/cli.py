"""Command line: a bare ``fwatchdog`` is the container entry point; ``fwatchdog gateway``
runs the gateway; ``fwatchdog invoke`` and ``fwatchdog activations`` are its client
(:mod:`.client`, which prints its own output).

Apart from the client, this is the only module that prints or chooses exit codes. Exit
status 2 means the configuration is invalid; 1 means the watchdog could not start or failed
while running.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from . import __version__
from .config import ConfigError, WatchdogConfig

if TYPE_CHECKING:
    from .gateway.config import GatewayConfig

EXIT_CONFIG = 2
EXIT_START = 1

log = logging.getLogger("watchdog")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-version", "--version", "version"):
        print(f"fwatchdog {__version__}")
        return 0
    if args and args[0] in ("-run-healthcheck", "--run-healthcheck"):
        return _run_healthcheck(os.environ)
    if args and args[0] == "gateway":
        return run_gateway(args[1:], os.environ)
    if args and args[0] in ("invoke", "activations"):
        return run_client(args[0], args[1:], os.environ)
    if args:
        print(f"fwatchdog: unknown argument {args[0]!r}", file=sys.stderr)
        return EXIT_CONFIG
    return run_watchdog(os.environ)


def run_watchdog(env: Mapping[str, str]) -> int:
    """Parse the configuration from ``env`` and serve until told to stop."""
    try:
        config = WatchdogConfig.from_env(env)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"fwatchdog: configuration error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    _ensure_standard_fds()
    from .logs import setup_logging

    setup_logging(config.log_format)
    return _serve(config)


def _serve(config: WatchdogConfig) -> int:
    import uvloop

    from .health import LockFileError
    from .modes.http import UpstreamStartError
    from .modes.static import StaticRootError
    from .process import SpawnError
    from .server import Watchdog

    async def serve() -> int:
        return await Watchdog(config).serve()

    try:
        return uvloop.run(serve())
    except (SpawnError, StaticRootError) as exc:
        print(f"fwatchdog: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (LockFileError, UpstreamStartError) as exc:
        log.error("%s", exc)
        return EXIT_START
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_START
    return 0


def run_gateway(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """``fwatchdog gateway [flags]``: parse flags over ``env`` and serve until told to stop."""
    from .gateway.config import GatewayConfig, usage

    if any(arg in ("-h", "--help", "-help") for arg in argv):
        print(usage())
        return 0
    try:
        config = GatewayConfig.from_args(argv, env)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"fwatchdog gateway: configuration error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    from .logs import setup_logging

    setup_logging(config.log_format)
    return _serve_gateway(config)


def _serve_gateway(config: GatewayConfig) -> int:
    import uvloop

    from .gateway.server import Gateway

    async def serve() -> None:
        await Gateway(config).serve()

    try:
        uvloop.run(serve())
    except OSError as exc:
        log.error("cannot start the gateway: %s", exc)
        return EXIT_START
    return 0


def run_client(command: str, argv: Sequence[str], env: Mapping[str, str]) -> int:
    """``fwatchdog invoke`` and ``fwatchdog activations``: talk to a gateway."""
    from . import client

    try:
        if command == "invoke":
            return client.invoke(argv, env, sys.stdin.buffer, sys.stdout.buffer)
        return client.activations(argv, env, sys.stdout.buffer)
    except client.Unreachable as exc:
        print(f"fwatchdog {command}: {exc}", file=sys.stderr)
        return client.EXIT_FAILED


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
