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

    def started(self, function_name: str) -> None:
        """A call was let through to the function (not refused by a limit)."""
        self._started.counts[function_name] = self._started.counts.get(function_name, 0) + 1
        self._inflight.labels(function_name=function_name).inc()

    def finished(self, function_name: str) -> None:
        self._inflight.labels(function_name=function_name).dec()

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
