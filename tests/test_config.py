"""Configuration parsing: formats, defaults, and start-up failures naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from watchdog.config import ConfigError, WatchdogConfig, parse_duration
from watchdog.settings import parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("1m30s", 90), ("500ms", 0.5), ("30", 30), ("0", 0), ("1h", 3600), ("1.5s", 1.5)],
)
def test_durations_accept_go_syntax_and_whole_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1000", 1000), ("64Mi", 64 << 20), ("64MiB", 64 << 20), ("64MB", 64_000_000), ("2k", 2000)]
    + [("512KiB", 512 << 10), ("1g", 10**9), ("1Gi", 1 << 30), ("8mib", 8 << 20)],
)
def test_sizes_accept_bytes_and_decimal_or_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5M", "-1", "1e6", "\u0661\u0662", "12 parsecs", "Mi"])
def test_malformed_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="a size in bytes"):
        parse_size(text)


def test_defaults_match_the_anchors() -> None:
    config = WatchdogConfig.from_env({"fprocess": "cat"})
    assert (config.port, config.metrics_port) == (8080, 8081)
    assert (config.read_timeout, config.write_timeout, config.exec_timeout) == (30, 30, 30)
    assert config.healthcheck_interval == config.write_timeout
    assert config.max_inflight == 0 and config.cgi_headers and config.prefix_logs
    assert config.mode == "auto" and config.log_buffer_size == 65536
    assert config.max_body_size == 128 << 20
    assert str(config.lock_path) == "/tmp/.lock"


def test_values_are_parsed_into_typed_fields() -> None:
    config = WatchdogConfig.from_env(
        {
            "function_process": "python3 'my handler.py' --flag=a=b",
            "fprocess": "ignored",
            "mode": "serializing",
            "exec_timeout": "1m30s",
            "write_debug": "1",
            "suppress_lock": "TRUE",
            "http_upstream_url": "http://127.0.0.1:5000/",
            "TMPDIR": "/var/tmp",
        }
    )
    assert config.fprocess == ("python3", "my handler.py", "--flag=a=b")
    assert config.mode == "serializing" and config.exec_timeout == 90
    assert config.write_debug and config.suppress_lock
    assert config.upstream_url == "http://127.0.0.1:5000"
    assert str(config.lock_path) == "/var/tmp/.lock"


def test_every_problem_is_reported_at_once() -> None:
    env = {
        "fprocess": "cat",
        "port": "99999",
        "max_inflight": "abc",
        "read_timeout": "-1s",
        "mode": "afterburn",
        "combine_output": "yes",
        "write_timeout": "10 seconds",
    }
    with pytest.raises(ConfigError) as caught:
        WatchdogConfig.from_env(env)
    problems = caught.value.problems
    assert len(problems) == 6
    joined = "\n".join(problems)
    for name in ("port='99999'", "max_inflight='abc'", "read_timeout='-1s'", "mode='afterburn'"):
        assert name in joined
    assert "combine_output='yes'" in joined and "true, false, 1 or 0" in joined


def test_http_mode_needs_an_upstream_and_static_needs_no_fprocess() -> None:
    with pytest.raises(ConfigError, match="upstream_url is required"):
        WatchdogConfig.from_env({"fprocess": "node index.js", "mode": "http"})
    assert WatchdogConfig.from_env({"mode": "static"}).fprocess == ()


def test_unbalanced_quotes_are_an_error_not_a_guess() -> None:
    with pytest.raises(ConfigError, match="fprocess"):
        WatchdogConfig.from_env({"fprocess": "sh -c 'echo hi"})


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchdog"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"fprocess": "cat", "port": "99999"}, "port='99999' is invalid: expected a whole number"),
        ({"fprocess": "cat", "max_inflight": "abc"}, "max_inflight='abc' is invalid"),
        ({"fprocess": "cat", "exec_timeout": "-5s"}, "exec_timeout='-5s' is invalid"),
        ({"fprocess": "cat", "mode": "afterburn"}, "mode='afterburn' is invalid: expected one of"),
        ({"fprocess": "cat", "content_type": "text/plain\r\nX: y"}, "content_type="),
        ({}, "fprocess is required"),
        (
            {"fprocess": "cat", "mode": "http", "upstream_url": "https://127.0.0.1:5000"},
            "upstream_url='https://127.0.0.1:5000' is invalid: expected an http:// URL",
        ),
        ({"fprocess": "no-such-program-xyz"}, "'no-such-program-xyz' was not found"),
    ],
)
def test_watchdog_refuses_to_start_with_exit_2_naming_the_variable(
    env: dict[str, str], needle: str
) -> None:
    result = _run(env)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "configuration error" in line]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_prefork_needs_a_python_command_line_in_a_fork_mode() -> None:
    ok = WatchdogConfig.from_env(
        {"fprocess": "python3 -u -X dev index.py a", "prefork": "true", "prefork_preload": "json"}
    )
    assert ok.prefork and ok.prefork_preload == ("json",)
    assert WatchdogConfig.from_env({"fprocess": "python3.12 -m pkg.main", "prefork": "1"}).prefork
    for fprocess in ("cat", "python3", "python3 -c 'print(1)'", "node index.js"):
        with pytest.raises(ConfigError) as caught:
            WatchdogConfig.from_env({"fprocess": fprocess, "prefork": "true"})
        assert "prefork" in str(caught.value) and "fprocess" in str(caught.value)
    with pytest.raises(ConfigError, match="prefork_preload"):
        WatchdogConfig.from_env({"fprocess": "python3 x.py", "prefork_preload": "a b"})
    with pytest.raises(ConfigError, match="prefork=true is invalid in mode http"):
        WatchdogConfig.from_env(
            {
                "fprocess": "python3 x.py",
                "prefork": "true",
                "mode": "http",
                "upstream_url": "http://127.0.0.1:1",
            }
        )
