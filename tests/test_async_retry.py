"""Retry policy: backoff, jitter, Retry-After, retryable statuses, attempts and event age."""

from __future__ import annotations

import email.utils
import random
from pathlib import Path

import pytest
from async_helpers import retry_policy

from watchdog.config import ConfigError
from watchdog.gateway.config import GatewayConfig, default_retry_policy
from watchdog.gateway.queue.base import AttemptResult
from watchdog.gateway.retry import decide, parse_retry_after

NOW = 1_800_000_000.0


def result(status: int | None, kind: str | None = "function", **headers: str) -> AttemptResult:
    return AttemptResult(
        NOW,
        NOW,
        status,
        tuple((k.replace("_", "-"), v) for k, v in headers.items()),
        error=None if kind is None else "failed",
        error_kind=kind,  # type: ignore[arg-type]
    )


def test_defaults_are_the_openfaas_pro_queue_worker_ones() -> None:
    policy = default_retry_policy()
    assert policy.retry_codes == {408, 429, 500, 502, 503, 504}
    assert (policy.max_attempts, policy.initial_backoff, policy.max_backoff) == (10, 10.0, 120.0)


@pytest.mark.parametrize("jitter", ["none", "equal", "full"])
def test_backoff_doubles_up_to_the_maximum_within_its_jitter(jitter: str) -> None:
    policy = retry_policy(initial_backoff=1, max_backoff=10, jitter=jitter)  # type: ignore[arg-type]
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (50, 10), (500, 10)]:
        for _ in range(50):
            wait = policy.backoff(attempt, rng)
            low = {"none": ceiling, "equal": ceiling / 2, "full": 0}[jitter]
            assert low <= wait <= ceiling


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("7", NOW) == 7
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    assert parse_retry_after(date, NOW) == pytest.approx(30)
    assert parse_retry_after(email.utils.formatdate(NOW - 30, usegmt=True), NOW) == 0
    for bad in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(bad, NOW) is None


def test_success_is_completed_whatever_the_policy() -> None:
    assert decide(
        default_retry_policy(), attempt=10, created_at=NOW, result=result(200, None), now=NOW
    )
    assert (
        decide(
            default_retry_policy(), attempt=1, created_at=NOW, result=result(204, None), now=NOW
        ).action
        == "succeed"
    )


def test_function_statuses_are_retried_only_when_listed() -> None:
    policy = retry_policy(initial_backoff=1, max_backoff=1, jitter="none")
    retried = decide(policy, attempt=1, created_at=NOW, result=result(503), now=NOW)
    assert (retried.action, retried.at) == ("retry", NOW + 1)
    final = decide(policy, attempt=1, created_at=NOW, result=result(400), now=NOW)
    assert final.action == "fail" and "400" in final.reason
    custom = retry_policy(retry_codes=frozenset({400}))
    assert decide(custom, attempt=1, created_at=NOW, result=result(400), now=NOW).action == "retry"
    assert decide(custom, attempt=1, created_at=NOW, result=result(503), now=NOW).action == "fail"


def test_platform_failures_are_always_retried_unless_told_otherwise() -> None:
    policy = retry_policy(retry_codes=frozenset())
    unreachable = result(None, "platform")
    assert decide(policy, attempt=1, created_at=NOW, result=unreachable, now=NOW).action == "retry"
    gone = decide(policy, attempt=1, created_at=NOW, result=unreachable, now=NOW, retryable=False)
    assert gone.action == "fail"


def test_attempts_run_out() -> None:
    policy = retry_policy(max_attempts=3)
    assert decide(policy, attempt=2, created_at=NOW, result=result(500), now=NOW).action == "retry"
    final = decide(policy, attempt=3, created_at=NOW, result=result(500), now=NOW)
    assert final.action == "fail" and "3 of 3" in final.reason


def test_retry_after_is_honoured_but_not_below_the_initial_backoff() -> None:
    policy = retry_policy(initial_backoff=2, max_backoff=4, jitter="none")
    later = decide(policy, attempt=1, created_at=NOW, result=result(429, Retry_After="60"), now=NOW)
    assert later.at == NOW + 60
    soon = decide(policy, attempt=1, created_at=NOW, result=result(503, Retry_After="0"), now=NOW)
    assert soon.at == NOW + 2
    junk = decide(policy, attempt=2, created_at=NOW, result=result(503, Retry_After="x"), now=NOW)
    assert junk.at == NOW + 4


def test_no_retry_past_max_event_age() -> None:
    policy = retry_policy(initial_backoff=10, max_backoff=10, max_event_age=60, jitter="none")
    assert decide(policy, attempt=1, created_at=NOW - 40, result=result(500), now=NOW).action == (
        "retry"
    )
    too_old = decide(policy, attempt=1, created_at=NOW - 55, result=result(500), now=NOW)
    assert too_old.action == "fail" and "max_event_age" in too_old.reason
    assert policy.expired(NOW - 61, NOW) and not policy.expired(NOW - 59, NOW)


def test_a_functions_retry_settings_parse_durations_and_report_every_problem(
    tmp_path: Path,
) -> None:
    """Per function, in the functions file, over the gateway's policy: each value parsed by
    its setting's own parser, every problem reported at once, named by where it is."""
    good = tmp_path / "good.yml"
    good.write_text(
        "functions:\n"
        "  echo:\n"
        "    url: http://127.0.0.1:1\n"
        "    max_attempts: 3\n"
        "    initial_backoff: 500ms\n"
        "    max_backoff: 1m\n"
        "    max_event_age: 2h\n"
        "    retry_codes: 429, 503\n"
    )
    [echo] = GatewayConfig.from_args(["--config", str(good)], {"HOME": str(tmp_path)}).functions
    assert echo.retry == retry_policy(
        max_attempts=3,
        initial_backoff=0.5,
        max_backoff=60.0,
        max_event_age=7200.0,
        retry_codes=frozenset({429, 503}),
    )
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "functions:\n"
        "  echo: {url: 'http://127.0.0.1:1', max_attempts: many, max_backoff: soon,"
        " retry_codes: '42'}\n"
        "  odd: {url: 'http://127.0.0.1:1', initial_backoff: 10s, max_backoff: 1s}\n"
    )
    with pytest.raises(ConfigError) as problems:
        GatewayConfig.from_args(["--config", str(bad)], {"HOME": str(tmp_path)})
    lines = problems.value.problems
    assert len(lines) == 4, lines
    assert sum(": functions.echo." in line for line in lines) == 3, lines
    assert any("functions.odd: max_backoff=1: expected >= initial_backoff" in x for x in lines)
