"""The gateway's Prometheus series, with the OpenFaaS gateway's names and labels.

``function_name`` is ``name.namespace`` (as recent OpenFaaS gateways label it). Only calls to
registered functions are counted: unknown or malformed names would let any client create
series without bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..metrics import BUCKETS

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics"]


class GatewayMetrics:
    """All series of one gateway, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._total = Counter(
            "gateway_function_invocation_total",
            "Function invocations by status code",
            ["function_name", "code"],
            registry=self.registry,
        )
        self._seconds = Histogram(
            "gateway_functions_seconds",
            "Function invocation time, to the end of the response",
            ["function_name", "code"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self._inflight = Gauge(
            "gateway_function_invocation_inflight",
            "Function invocations in progress",
            ["function_name"],
            registry=self.registry,
        )
        self._started = _StartedCollector()
        self.registry.register(self._started)
        ProcessCollector(registry=self.registry)
        self._observers: dict[tuple[str, int], Callable[[float], None]] = {}
        self._inflight_of: dict[str, Gauge] = {}

    def started(self, function_name: str) -> None:
        """A call was let through to the function (not refused by a limit)."""
        self._started.counts[function_name] = self._started.counts.get(function_name, 0) + 1
        self._inflight_gauge(function_name).inc()

    def finished(self, function_name: str) -> None:
        self._inflight_gauge(function_name).dec()

    def _inflight_gauge(self, function_name: str) -> Gauge:
        """The function's in-flight child, cached: ``labels()`` takes a lock and builds a key
        on every call, on the hot path twice per call."""
        gauge = self._inflight_of.get(function_name)
        if gauge is None:
            gauge = self._inflight_of[function_name] = self._inflight.labels(
                function_name=function_name
            )
        return gauge

    def observe(self, function_name: str, status: int, seconds: float) -> None:
        """Count one finished (or refused) call; label children are cached per pair."""
        observe = self._observers.get((function_name, status))
        if observe is None:
            counter = self._total.labels(function_name=function_name, code=str(status))
            histogram = self._seconds.labels(function_name=function_name, code=str(status))

            def observe(seconds: float) -> None:
                counter.inc()
                histogram.observe(seconds)

            self._observers[(function_name, status)] = observe
        observe(seconds)

    def forget(self, function_name: str) -> None:
        """Drop the series of an unregistered function."""
        for key in [k for k in self._observers if k[0] == function_name]:
            del self._observers[key]
            self._total.remove(function_name, str(key[1]))
            self._seconds.remove(function_name, str(key[1]))
        self._started.counts.pop(function_name, None)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StartedCollector(Collector):
    """``gateway_function_invocation_started``: a counter in OpenFaaS, but without the
    ``_total`` suffix prometheus_client forces on counters, so it is exposed untyped under its
    exact name (dashboards and alerts query it by that name)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        family = Metric(
            "gateway_function_invocation_started", "Function invocations started", "unknown"
        )
        for name, count in self.counts.items():
            family.add_sample(
                "gateway_function_invocation_started", {"function_name": name}, float(count)
            )
        yield family


def function_figures(metrics: GatewayMetrics) -> dict[str, dict[str, float | None]]:
    """Per function: calls, errors (status 500 and above), error rate, p50/p99 latency in
    milliseconds (estimated from the histogram's buckets) and calls in flight."""
    figures: dict[str, dict[str, float | None]] = {}
    buckets: dict[str, dict[float, float]] = {}

    def entry(name: str) -> dict[str, float | None]:
        return figures.setdefault(
            name, {"invocations": 0.0, "errors": 0.0, "inflight": 0.0, "p50Ms": None, "p99Ms": None}
        )

    for family in metrics.registry.collect():
        for sample in family.samples:
            name = sample.labels.get("function_name")
            if name is None:
                continue
            if sample.name == "gateway_function_invocation_total":
                row = entry(name)
                row["invocations"] = (row["invocations"] or 0.0) + sample.value
                if int(sample.labels["code"]) >= 500:
                    row["errors"] = (row["errors"] or 0.0) + sample.value
            elif sample.name == "gateway_function_invocation_inflight":
                entry(name)["inflight"] = sample.value
            elif sample.name == "gateway_functions_seconds_bucket":
                upper = float(sample.labels["le"])
                per = buckets.setdefault(name, {})
                per[upper] = per.get(upper, 0.0) + sample.value
    for name, row in figures.items():
        calls = row["invocations"] or 0.0
        row["errorRate"] = (row["errors"] or 0.0) / calls if calls else None
        cumulative = sorted(buckets.get(name, {}).items())
        row["p50Ms"] = _quantile_ms(cumulative, 0.50)
        row["p99Ms"] = _quantile_ms(cumulative, 0.99)
    return figures


def _quantile_ms(cumulative: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket the rank falls in."""
    if not cumulative or cumulative[-1][1] == 0:
        return None
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in cumulative:
        if count >= rank:
            if upper == float("inf"):
                return round(lower * 1000, 3)
            share = (rank - below) / (count - below) if count > below else 1.0
            return round((lower + (upper - lower) * share) * 1000, 3)
        lower, below = upper, count
    return None
