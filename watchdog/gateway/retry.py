"""When an asynchronous call (or a callback delivery) is tried again, and when it gives up.

The defaults are the OpenFaaS Pro queue-worker's: 10 attempts, exponential backoff from 10 s
up to 120 s, retried statuses ``408, 429, 500, 502, 503, 504`` (its chart default), and
``Retry-After`` honoured (delay-seconds or an HTTP-date; a value below the initial backoff is
raised to it; an invalid one falls back to the normal backoff). Unlike OpenFaaS, platform
failures (the function unreachable, the gateway's own timeout, an attempt lost in a gateway
restart) are always retried whatever the status list says, because the function never
answered; and a call older than ``max_event_age`` fails instead of running (Alibaba's and
Lambda's model), default 24 h.

Jitter (``equal`` by default) spreads the retries of calls that failed together: ``full``
waits a uniform time in [0, backoff], ``equal`` in [backoff/2, backoff], ``none`` exactly
the backoff.
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass
from typing import Literal

from ..settings import Invalid
from .queue.base import AttemptResult, Headers

Jitter = Literal["full", "equal", "none"]
JITTERS: tuple[str, ...] = ("full", "equal", "none")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry; per function (calls) or per gateway (callbacks).

    No defaults here: the gateway's come from its settings' declarations
    (:func:`~watchdog.gateway.config.default_retry_policy`), a function's from the functions
    file over those."""

    max_attempts: int
    initial_backoff: float
    max_backoff: float
    max_event_age: float
    retry_codes: frozenset[int]
    jitter: Jitter = "equal"

    def problems(self) -> list[str]:
        """Everything wrong with this policy, one line each (empty when valid)."""
        found: list[str] = []
        if self.max_attempts < 1:
            found.append(f"max_attempts={self.max_attempts}: expected at least 1")
        if self.initial_backoff < 0:
            found.append(f"initial_backoff={self.initial_backoff:g}: expected >= 0")
        if self.max_backoff < self.initial_backoff:
            found.append(
                f"max_backoff={self.max_backoff:g}: expected >= initial_backoff"
                f" ({self.initial_backoff:g})"
            )
        if self.max_event_age <= 0:
            found.append(f"max_event_age={self.max_event_age:g}: expected > 0")
        if any(not 100 <= code <= 599 for code in self.retry_codes):
            found.append("retry_codes: expected HTTP status codes from 100 to 599")
        if self.jitter not in JITTERS:
            found.append(f"jitter={self.jitter!r}: expected one of {', '.join(JITTERS)}")
        return found

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt number ``attempt`` (from 1), jitter applied."""
        exponent = min(max(attempt - 1, 0), 62)
        ceiling = min(self.max_backoff, self.initial_backoff * (2.0**exponent))
        draw = (rng or random).random()
        if self.jitter == "full":
            return ceiling * draw
        if self.jitter == "equal":
            return ceiling / 2 + ceiling / 2 * draw
        return ceiling

    def expired(self, created_at: float, now: float) -> bool:
        return now - created_at > self.max_event_age


def parse_codes(text: str) -> frozenset[int]:
    """HTTP status codes separated by commas, such as ``429,503``."""
    try:
        codes = frozenset(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise Invalid("status codes separated by commas, such as 429,503") from None
    if any(not 100 <= code <= 599 for code in codes):
        raise Invalid("HTTP status codes from 100 to 599, separated by commas")
    return codes


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or an HTTP-date).

    Returns None when absent or invalid; a date in the past gives 0.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def header(headers: Headers, name: str) -> str | None:
    """The first value of header ``name`` (case-insensitive)."""
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted:
            return value
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after an attempt: ``succeed``, ``retry`` at ``at``, or ``fail``."""

    action: Literal["succeed", "retry", "fail"]
    at: float | None = None
    reason: str = ""


def decide(
    policy: RetryPolicy,
    *,
    attempt: int,
    created_at: float,
    result: AttemptResult,
    now: float,
    retryable: bool | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """Decide the fate of a call after attempt ``attempt`` ended with ``result``.

    Args:
        retryable: overrides the classification (True: always retry, e.g. an interrupted
            attempt; False: never, e.g. the function was removed).
    """
    if result.error_kind is None:
        return Decision("succeed")
    if retryable is None:
        retryable = result.error_kind == "platform" or result.status_code in policy.retry_codes
    if not retryable:
        what = f"status {result.status_code}" if result.status_code is not None else "this error"
        return Decision("fail", reason=f"{what} is not retried")
    if attempt >= policy.max_attempts:
        return Decision("fail", reason=f"gave up after {attempt} of {policy.max_attempts} attempts")
    delay = policy.backoff(attempt, rng)
    asked = parse_retry_after(header(result.headers, "Retry-After"), now)
    if asked is not None:
        delay = max(asked, policy.initial_backoff)
    at = now + delay
    if policy.expired(created_at, at):
        return Decision(
            "fail",
            reason=f"the next attempt would be past max_event_age ({policy.max_event_age:g}s)",
        )
    return Decision("retry", at=at, reason=f"retry in {delay:.3f}s")
