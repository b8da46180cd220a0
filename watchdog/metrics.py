"""Prometheus metrics with the names the OpenFaaS dashboards use, plus handler-process figures."""

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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .http import Request, Response
from .process import ProcessTable

# The anchors stop at 10 s, so slow functions all land in +Inf; ours reach five minutes.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_KNOWN_METHODS = frozenset({"get", "head", "post", "put", "patch", "delete", "options"})


class WatchdogMetrics:
    """All series of one watchdog, in a registry of its own."""

    def __init__(self, processes: ProcessTable | None = None) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "http_requests_total", "Requests handled", ["code", "method"], registry=self.registry
        )
        self._duration = Histogram(
            "http_request_duration_seconds",
            "Request duration",
            ["code", "method"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "http_requests_in_flight", "Requests being handled", registry=self.registry
        )
        self.rejected = Counter(
            "fwatchdog_requests_rejected_total",
            "Requests refused by a limit",
            ["reason"],
            registry=self.registry,
        )
        self.killed = Counter(
            "fwatchdog_handlers_killed_total",
            "Handler process trees killed by the watchdog",
            ["reason"],
            registry=self.registry,
        )
        self.exits = Counter(
            "fwatchdog_handler_exits_total",
            "Handler exits by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.prefork = Counter(
            "fwatchdog_prefork_events_total",
            "prefork zygote events: warm, warmup_failed, died, restarted, start_failed",
            ["event"],
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        if processes is not None:
            self.registry.register(_HandlerCollector(processes))
        self._observers: dict[tuple[int, str], Callable[[float], None]] = {}

    def observe(self, status: int, method: str, seconds: float) -> None:
        """Count one finished request; label children are cached since this is per request."""
        observe = self._observers.get((status, method))
        if observe is None:
            observe = self._make_observer(status, method)
            self._observers[(status, method)] = observe
        observe(seconds)

    def _make_observer(self, status: int, method: str) -> Callable[[float], None]:
        label = method.lower() if method.lower() in _KNOWN_METHODS else "unknown"
        counter = self._requests.labels(code=str(status), method=label)
        histogram = self._duration.labels(code=str(status), method=label)

        def observe(seconds: float) -> None:
            counter.inc()
            histogram.observe(seconds)

        return observe

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def serve(self, request: Request) -> Response:
        """What metrics_port answers: ``/metrics``, and nothing else."""
        if request.path != "/metrics":
            return Response(status=404, text="404: Not Found")
        if request.method not in ("GET", "HEAD"):
            return Response(status=405, text="405: Method Not Allowed", headers={"Allow": "GET"})
        return Response(body=self.exposition(), content_type=CONTENT_TYPE_LATEST)


class _HandlerCollector(Collector):
    """Figures of the handler processes, read from psutil when Prometheus scrapes."""

    def __init__(self, processes: ProcessTable) -> None:
        self._processes = processes

    def collect(self) -> Iterator[Metric]:
        import psutil  # on the first scrape, not at start-up

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
