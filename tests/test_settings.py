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


def test_a_value_that_failed_is_reported_once() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "watchdog"],
        env={"PYTHONPATH": str(ROOT), "fprocess": 'a "b', "port": "abc", "metrics_port": "8080"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines  # fprocess and port: no "fprocess is required", no clash
    assert "fprocess='a \"b'" in lines[0] and "port='abc'" in lines[1]


def test_gateway_values_may_start_with_a_dash_and_every_problem_is_reported() -> None:
    result = fwatchdog("gateway", "--callback-secret", "-s3cret", "--namespace", "-x", "--port")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any("--namespace='-x' is invalid" in line for line in lines), lines
    assert any("--port" in line for line in lines), lines
    assert "-s3cret" not in result.stderr  # accepted as the secret, not taken for a flag
    assert all(line.startswith("fwatchdog gateway: configuration error: ") for line in lines)


def test_a_secrets_value_is_never_repeated_in_an_error() -> None:
    result = fwatchdog("gateway", "--altair-tokens", "my secret token")
    assert result.returncode == 2
    assert "--altair-tokens (value not shown) is invalid" in result.stderr
    assert "my secret" not in result.stderr


def test_an_empty_queue_path_is_the_default_place() -> None:
    env = {"HOME": "/nonexistent", "queue_path": ""}
    assert GatewayConfig.from_args([], env).queue_path.endswith("fwatchdog/queue.db")
    assert GatewayConfig.from_args(["--queue-path="], env).queue_path.endswith("queue.db")


def test_go_help_spelling_and_the_healthcheck_import_nothing_heavy() -> None:
    assert fwatchdog("gateway", "-help").returncode == 0
    assert fwatchdog("-help").returncode == 0
    probe = (
        "import sys\n"
        "from watchdog.cli import main\n"
        "main(['-run-healthcheck']); main(['--version'])\n"
        "print(sorted(m for m in ('aiohttp', 'yaml', 'psutil') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(ROOT), "TMPDIR": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip().endswith("[]"), result.stdout + result.stderr
