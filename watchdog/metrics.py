"""Prometheus metrics with the names the OpenFaaS dashboards use, plus handler-process figures.

Requests are counted in plain numbers: the request path pays a dict look-up and a few
additions, not prometheus_client's locks. prometheus_client comes in with the first scrape,
which turns the numbers into its metric families and writes the exposition. A watchdog nobody
scrapes (OpenFaaS scrapes the gateway, not function pods) never loads it: 25 ms of start-up
and 4 MB of memory per replica.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import accumulate
from typing import TYPE_CHECKING

from .http import Request, Response
from .process import ProcessTable

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

# The anchors stop at 10 s, so slow functions all land in +Inf; ours reach five minutes.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_KNOWN_METHODS = frozenset({"get", "head", "post", "put", "patch", "delete", "options"})


class Count:
    """One series' value: a counter's or a gauge's."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class LabelledCounter:
    """A counter with one label, spelled as prometheus_client's: ``.labels(reason=...).inc()``."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.series: dict[str, Count] = {}

    def labels(self, **values: str) -> Count:
        value = values[self.label]
        count = self.series.get(value)
        if count is None:
            count = self.series[value] = Count()
        return count


class Durations:
    """The requests of one (code, method) pair: how many, and a histogram of how long."""

    __slots__ = ("count", "total", "buckets")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.buckets[bisect_left(BUCKETS, seconds)] += 1  # `le` bounds are inclusive


_BOUNDS = [repr(float(bound)) for bound in BUCKETS] + ["+Inf"]  # as prometheus_client writes


def cumulative_buckets(series: Durations) -> list[tuple[str, float]]:
    """A histogram's buckets as prometheus_client's metric families take them: each upper
    bound, written as prometheus_client writes it, with the count at or below it."""
    return list(zip(_BOUNDS, accumulate(series.buckets), strict=True))


class WatchdogMetrics:
    """All series of one watchdog."""

    def __init__(self, processes: ProcessTable | None = None) -> None:
        self.in_flight = Count()
        self.rejected = LabelledCounter(
            "fwatchdog_requests_rejected_total", "Requests refused by a limit", "reason"
        )
        self.killed = LabelledCounter(
            "fwatchdog_handlers_killed_total",
            "Handler process trees killed by the watchdog",
            "reason",
        )
        self.exits = LabelledCounter(
            "fwatchdog_handler_exits_total", "Handler exits by outcome", "outcome"
        )
        self.prefork = LabelledCounter(
            "fwatchdog_prefork_events_total",
            "prefork zygote events: warm, warmup_failed, died, restarted, start_failed",
            "event",
        )
        self._processes = processes
        self._durations: dict[tuple[str, str], Durations] = {}
        # Raw (status, method) pairs to their series; several methods share "unknown".
        self._observers: dict[tuple[int, str], Callable[[float], None]] = {}
        self._registry: CollectorRegistry | None = None

    def observe(self, status: int, method: str, seconds: float) -> None:
        """Count one finished request."""
        observe = self._observers.get((status, method))
        if observe is None:
            observe = self._observers[(status, method)] = self._series(status, method).observe
        observe(seconds)

    def _series(self, status: int, method: str) -> Durations:
        label = method.lower() if method.lower() in _KNOWN_METHODS else "unknown"
        key = (str(status), label)
        series = self._durations.get(key)
        if series is None:
            series = self._durations[key] = Durations()
        return series

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self._scraped_registry())

    async def serve(self, request: Request) -> Response:
        """What metrics_port answers: ``/metrics``, and nothing else."""
        if request.path != "/metrics":
            return Response(status=404, text="404: Not Found")
        if request.method not in ("GET", "HEAD"):
            return Response(status=405, text="405: Method Not Allowed", headers={"Allow": "GET"})
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(body=self.exposition(), content_type=CONTENT_TYPE_LATEST)

    def _scraped_registry(self) -> CollectorRegistry:
        """The registry scrapes read, made on the first one."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry
            from prometheus_client.process_collector import ProcessCollector

            registry = CollectorRegistry()
            registry.register(_Families(self))
            ProcessCollector(registry=registry)
            if self._processes is not None:
                registry.register(_HandlerFamilies(self._processes))
            self._registry = registry
        return self._registry

    def families(self) -> Iterator[Metric]:
        """The request series as prometheus_client's metric families."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        labels = ["code", "method"]
        requests = CounterMetricFamily("http_requests_total", "Requests handled", labels=labels)
        durations = HistogramMetricFamily(
            "http_request_duration_seconds", "Request duration", labels=labels
        )
        for key, series in self._durations.items():
            requests.add_metric(key, series.count)
            durations.add_metric(key, cumulative_buckets(series), series.total)
        yield requests
        yield durations
        yield GaugeMetricFamily(
            "http_requests_in_flight", "Requests being handled", value=self.in_flight.value
        )
        for counter in (self.rejected, self.killed, self.exits, self.prefork):
            family = CounterMetricFamily(
                counter.name, counter.documentation, labels=[counter.label]
            )
            for value, count in counter.series.items():
                family.add_metric([value], count.value)
            yield family


class _Families:
    """The watchdog's own series, for the registry (a prometheus_client ``Collector``, which
    is a protocol: subclassing nothing keeps prometheus_client out of this module's import)."""

    def __init__(self, metrics: WatchdogMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()


class _HandlerFamilies:
    """Figures of the handler processes, read from psutil when Prometheus scrapes."""

    def __init__(self, processes: ProcessTable) -> None:
        self._processes = processes

    def collect(self) -> Iterator[Metric]:
        import psutil
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        running = self._processes.running
        rss, cpu = 0, 0.0
        for child in running:
            try:
                proc = psutil.Process(child.pid)
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system
            except psutil.Error:
                continue
        yield CounterMetricFamily(
            "fwatchdog_handlers_started",
            "Handler processes started",
            value=self._processes.started_total,
        )
        yield GaugeMetricFamily(
            "fwatchdog_handlers_running", "Handler processes running", value=len(running)
        )
        yield GaugeMetricFamily(
            "fwatchdog_handlers_rss_bytes", "Resident memory of running handlers", value=rss
        )
        yield CounterMetricFamily(
            "fwatchdog_handlers_cpu_seconds",
            "CPU time of handler processes (finished, plus running ones so far)",
            value=self._processes.cpu_seconds_total + cpu,
        )
