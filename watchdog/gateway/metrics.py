"""The gateway's Prometheus series, with the OpenFaaS gateway's names and labels.

``function_name`` is ``name.namespace`` (as recent OpenFaaS gateways label it). Only calls to
registered functions are counted: unknown or malformed names would let any client create
series without bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import accumulate

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from ..metrics import BUCKETS, Durations, cumulative_buckets

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics"]


class GatewayMetrics:
    """All series of one gateway, counted in plain numbers (a call pays a few dict look-ups
    and additions, not prometheus_client's locks), turned into metric families by a scrape."""

    def __init__(self) -> None:
        self._calls: dict[tuple[str, int], Durations] = {}
        self._inflight: dict[str, int] = {}
        self._started: dict[str, int] = {}
        self.registry = CollectorRegistry()
        self.registry.register(_Families(self))
        ProcessCollector(registry=self.registry)

    def started(self, function_name: str) -> None:
        """A call was let through to the function (not refused by a limit)."""
        self._started[function_name] = self._started.get(function_name, 0) + 1
        self._inflight[function_name] = self._inflight.get(function_name, 0) + 1

    def unstarted(self, function_name: str) -> None:
        """A call counted by :meth:`started` is taken back, to be started anew."""
        self._started[function_name] = self._started.get(function_name, 1) - 1

    def finished(self, function_name: str) -> None:
        count = self._inflight.get(function_name)
        if count is not None:  # (None: forgotten meanwhile)
            self._inflight[function_name] = count - 1

    def observe(self, function_name: str, status: int, seconds: float) -> None:
        """Count one finished (or refused) call."""
        series = self._calls.get((function_name, status))
        if series is None:
            series = self._calls[(function_name, status)] = Durations()
        series.observe(seconds)

    def forget(self, function_name: str) -> None:
        """Drop the series of an unregistered function."""
        for key in [key for key in self._calls if key[0] == function_name]:
            del self._calls[key]
        self._started.pop(function_name, None)
        self._inflight.pop(function_name, None)

    def calls(self) -> list[tuple[str, int, Durations]]:
        """Every (function, status) series so far. (A snapshot: scrapes run in a thread.)"""
        return [(name, status, series) for (name, status), series in list(self._calls.items())]

    def inflight(self) -> dict[str, int]:
        return dict(self._inflight)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def families(self) -> Iterator[Metric]:
        """The OpenFaaS gateway's series, as prometheus_client's metric families."""
        labels = ["function_name", "code"]
        total = CounterMetricFamily(
            "gateway_function_invocation", "Function invocations by status code", labels=labels
        )
        seconds = HistogramMetricFamily(
            "gateway_functions_seconds",
            "Function invocation time, to the end of the response",
            labels=labels,
        )
        for name, status, series in self.calls():
            key = [name, str(status)]
            total.add_metric(key, series.count)
            seconds.add_metric(key, cumulative_buckets(series), series.total)
        inflight = GaugeMetricFamily(
            "gateway_function_invocation_inflight",
            "Function invocations in progress",
            labels=["function_name"],
        )
        for name, count in self.inflight().items():
            inflight.add_metric([name], count)
        # A counter in OpenFaaS, but without the ``_total`` suffix prometheus_client puts on
        # counters: exposed untyped under its exact name (dashboards query it by that name).
        started = Metric(
            "gateway_function_invocation_started", "Function invocations started", "unknown"
        )
        for name, count in dict(self._started).items():
            started.add_sample(
                "gateway_function_invocation_started", {"function_name": name}, float(count)
            )
        yield from (total, seconds, inflight, started)


class _Families:
    """The gateway's series, for the registry (a prometheus_client ``Collector``)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()


def function_figures(metrics: GatewayMetrics) -> dict[str, dict[str, float | None]]:
    """Per function: calls, errors (status 500 and above), error rate, p50/p99 latency in
    milliseconds (estimated from the histogram's buckets) and calls in flight."""
    figures: dict[str, dict[str, float | None]] = {}
    buckets: dict[str, list[float]] = {}

    def entry(name: str) -> dict[str, float | None]:
        return figures.setdefault(
            name, {"invocations": 0.0, "errors": 0.0, "inflight": 0.0, "p50Ms": None, "p99Ms": None}
        )

    for name, status, series in metrics.calls():
        row = entry(name)
        row["invocations"] = (row["invocations"] or 0.0) + series.count
        if status >= 500:
            row["errors"] = (row["errors"] or 0.0) + series.count
        per = buckets.setdefault(name, [0.0] * len(series.buckets))
        for index, count in enumerate(series.buckets):
            per[index] += count
    for name, count in metrics.inflight().items():
        entry(name)["inflight"] = float(count)
    bounds = [*BUCKETS, float("inf")]
    for name, row in figures.items():
        calls = row["invocations"] or 0.0
        row["errorRate"] = (row["errors"] or 0.0) / calls if calls else None
        cumulative = list(zip(bounds, accumulate(buckets.get(name, [])), strict=False))
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
