"""Each setting is declared once: the README's tables, --help and the parsed defaults all come
from the declarations, and every command shares one command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from watchdog.config import WatchdogConfig
from watchdog.gateway.config import GatewayConfig
from watchdog.settings import declared, readme_tables, rewrite_readme

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("gateway", "invoke", "activations", "new", "build", "up", "logs", "version")


def fwatchdog(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchdog", *args],
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_readme_tables_are_the_declarations() -> None:
    readme = (ROOT / "README.md").read_text()
    assert rewrite_readme(readme, readme_tables()) == readme, (
        "README.md's settings tables differ from the declarations: "
        "run python -m watchdog.settings README.md"
    )


@pytest.mark.parametrize("config", [WatchdogConfig, GatewayConfig])
def test_every_declared_default_parses(config: type) -> None:
    for spec in declared(config):
        if spec.default is not None:
            spec.parse(spec.default)  # raises if a default is not what a user could write
        assert spec.help and spec.env or spec.flag, spec.attr


def test_defaults_are_those_the_declarations_write() -> None:
    config = WatchdogConfig.from_env({"fprocess": "cat"})
    assert (config.exec_timeout, config.healthcheck_interval, config.port) == (30.0, 30.0, 8080)
    gateway = GatewayConfig.from_args([], {"HOME": "/nonexistent"})
    assert gateway.activation_retention == 72 * 3600.0
    assert gateway.max_async_body == 1 << 20


def test_help_lists_every_command_and_watchdog_variable() -> None:
    for flag in ("--help", "-h", "help"):
        result = fwatchdog(flag)
        assert result.returncode == 0, result.stderr
        for command in COMMANDS:
            assert command in result.stdout
        for spec in declared(WatchdogConfig):
            assert spec.env[-1] in result.stdout, spec.attr


@pytest.mark.parametrize("command", COMMANDS[:-1])
def test_each_command_has_help(command: str) -> None:
    result = fwatchdog(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: fwatchdog {command}")


def test_gateway_help_shows_flags_variables_and_defaults_as_written() -> None:
    out = " ".join(fwatchdog("gateway", "--help").stdout.split())
    for spec in declared(GatewayConfig):
        assert spec.flag is not None and spec.flag in out
        assert f"env {spec.env[0]}" in out
    assert "(default 72h)" in out and "(default 1MiB)" in out
    assert "259200" not in out and "1048576" not in out


@pytest.mark.parametrize(
    "args",
    [("frobnicate",), ("--frobnicate",), ("invoke",), ("logs", "x", "--nope")],
)
def test_a_bad_command_line_is_one_line_pointing_to_help(args: tuple[str, ...]) -> None:
    result = fwatchdog(*args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].endswith("--help)"), result.stderr


def test_the_go_watchdogs_spellings_still_work() -> None:
    for flag in ("-version", "--version", "version"):
        result = fwatchdog(flag)
        assert result.returncode == 0 and result.stdout.startswith("fwatchdog "), flag
