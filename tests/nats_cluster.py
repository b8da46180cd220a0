"""A real 3-node ``nats-server`` JetStream cluster for tests: every node on free loopback
ports (client, cluster route, monitoring), its own store directory, always stopped and
reaped. One node can be killed (SIGKILL), frozen (SIGSTOP), thawed and restarted on the same
ports and store. Cluster and JetStream state are read from the monitoring endpoint (``/jsz``),
never guessed from the clock."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats_server import MAX_PAYLOAD, _launch, _ready_count, freeze, nats_server_binary
from ports import free_port

CLUSTER_NAME = "fwatchdog-test"
_FORM_TIMEOUT = 30.0


@dataclass
class ClusterNode:
    name: str
    port: int
    route_port: int
    monitor_port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    frozen: bool = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.workdir / "nats.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "nats.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def jsz(self, query: str = "", timeout: float = 1.0) -> dict[str, Any]:
        """This node's ``/jsz`` monitoring answer (``query`` such as ``streams=true``)."""
        url = f"http://127.0.0.1:{self.monitor_port}/jsz{'?' + query if query else ''}"
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return dict(json.loads(reply.read()))

    def write_config(self, routes: list[int]) -> None:
        store = self.workdir / "jetstream"
        route_urls = ", ".join(f"nats://127.0.0.1:{port}" for port in routes)
        self.config.write_text(
            f"server_name: {self.name}\n"
            f"listen: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.monitor_port}\n"
            f"max_payload: {MAX_PAYLOAD}\n"
            f'jetstream {{\n  store_dir: "{store}"\n}}\n'
            f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{self.route_port}\n"
            f"  routes: [{route_urls}]\n}}\n"
        )

    def start(self) -> None:
        """Start the process (same ports, same store as before); return once it accepts
        client connections."""
        assert not self.running, f"{self.name} is running"
        ready = _ready_count(self.log_path) if self.log_path.exists() else 0
        self.proc = _launch(self.config, self.log_path)
        self.frozen = False
        deadline = time.monotonic() + 15
        while _ready_count(self.log_path) <= ready:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start: {self.log_path.read_text()}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.frozen = False

    def freeze(self) -> None:
        assert self.proc is not None
        freeze(self.proc)
        self.frozen = True

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        """Terminate (SIGKILL after 10 s), thawing a frozen node first; reap it."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self.thaw()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class NatsCluster:
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Every node, comma-separated, as ``--nats-url`` takes them."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def _answering(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running and not node.frozen]

    def meta_leader(self) -> str | None:
        """The JetStream meta leader as a running node sees it, once every running node
        agrees on it (and it is one of them)."""
        seen: set[str | None] = set()
        for node in self._answering():
            try:
                meta = node.jsz().get("meta_cluster") or {}
            except (OSError, ValueError):
                return None
            seen.add(meta.get("leader") or None)
        leaders = {name for name in seen if name}
        up = {node.name for node in self._answering()}
        if len(seen) == 1 and len(leaders) == 1 and leaders <= up:
            return leaders.pop()
        return None

    def stream_leader(self, stream: str) -> str | None:
        """The node that leads ``stream`` (a JetStream stream, e.g. a KV bucket's
        ``KV_NAME``), as the first answering node reports it; None while it has none."""
        for node in self._answering():
            try:
                info = node.jsz("accounts=true&streams=true")
            except (OSError, ValueError):
                continue
            for account in info.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == stream:
                        leader = (detail.get("cluster") or {}).get("leader")
                        return str(leader) if leader else None
        return None

    def wait_formed(self, expected: int | None = None, timeout: float = _FORM_TIMEOUT) -> str:
        """Until the running nodes (``expected`` of them: all by default) see each other as
        JetStream peers and agree on a meta leader; return its name."""
        want = len(self.nodes) if expected is None else expected
        deadline = time.monotonic() + timeout
        while True:
            leader = self.meta_leader()
            if leader is not None and self._peers_current(want):
                return leader
            if time.monotonic() > deadline:
                logs = "\n".join(f"{n.name}: {n.log_path.read_text()[-2000:]}" for n in self.nodes)
                raise RuntimeError(f"the NATS cluster did not form:\n{logs}")
            time.sleep(0.05)

    def _peers_current(self, want: int) -> bool:
        """The meta leader knows ``want - 1`` peers, all current."""
        for node in self._answering():
            try:
                meta = node.jsz().get("meta_cluster") or {}
            except (OSError, ValueError):
                return False
            if meta.get("leader") == node.name:
                replicas = [r for r in meta.get("replicas") or [] if r.get("current")]
                return len(replicas) >= want - 1
        return False

    def wait_stream_leader(self, stream: str, timeout: float = _FORM_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while (leader := self.stream_leader(stream)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"stream {stream} has no leader")
            time.sleep(0.05)
        return leader

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def make_cluster(workdir: Path, size: int = 3) -> NatsCluster:
    """Write the configuration of ``size`` nodes under ``workdir``; start none."""
    nats_server_binary()  # fail early, naming the package, if it is missing
    ports = iter([free_port() for _ in range(3 * size)])
    nodes = []
    for n in range(size):
        directory = workdir / f"n{n + 1}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "nats.log").write_bytes(b"")
        nodes.append(ClusterNode(f"n{n + 1}", next(ports), next(ports), next(ports), directory))
    routes = [node.route_port for node in nodes]
    for node in nodes:
        node.write_config([port for port in routes if port != node.route_port])
    return NatsCluster(nodes)


@contextmanager
def nats_cluster(workdir: Path, size: int = 3, *, start: bool = True) -> Iterator[NatsCluster]:
    """A cluster of ``size`` nodes, started and formed (unless ``start=False``: the caller
    starts nodes itself); every node is stopped and reaped at the end, also on failure."""
    cluster = make_cluster(workdir, size)
    try:
        if start:
            for node in cluster.nodes:
                node.start()
            cluster.wait_formed()
        yield cluster
    finally:
        cluster.stop()
