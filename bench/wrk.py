"""wrk, the load generator: installing it, running it against loopback, reading its results.

Every run is bounded in time (``-d``) and uses one wrk thread. A generated Lua script sets the
request (method, body, headers) and its ``done()`` prints one JSON line with the counts and
latency percentiles, so nothing depends on wrk's human-readable summary.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

MARKER = "WRK_JSON "

_DONE = """
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,'
    .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\\n',
    "{marker}", summary.requests, summary.duration, summary.bytes, errors.connect, errors.read,
    errors.write, errors.status, errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""


class WrkMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors + non-2xx/3xx answers + timeouts

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def ensure_wrk() -> str:
    """The wrk binary; installed from Debian's packages (as root) when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    install = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk"
    result = subprocess.run(["sh", "-c", install], capture_output=True, text=True)
    found = shutil.which("wrk")
    if not found:
        raise WrkMissing(
            f"wrk is not installed and `{install}` failed (root needed): {result.stderr[-500:]}"
        )
    return found


def lua_script(
    method: str = "GET", body_size: int = 0, headers: dict[str, str] | None = None
) -> str:
    lines = [f'wrk.method = "{method}"']
    if body_size:
        lines.append(f'wrk.body = string.rep("x", {body_size})')
        lines.append('wrk.headers["Content-Type"] = "application/octet-stream"')
    for name, value in (headers or {}).items():
        lines.append(f'wrk.headers["{name}"] = "{value}"')
    return "\n".join(lines) + _DONE.replace("{marker}", MARKER)


def parse(output: str) -> WrkResult:
    """Read the JSON line our ``done()`` printed; a clear error if wrk printed none."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            raw = json.loads(line[len(MARKER) :])
            seconds = raw["duration_us"] / 1e6
            errors = sum(
                raw[key]
                for key in (
                    "connect_errors",
                    "read_errors",
                    "write_errors",
                    "status_errors",
                    "timeouts",
                )
            )
            return WrkResult(
                requests=raw["requests"],
                seconds=round(seconds, 3),
                rps=round(raw["requests"] / seconds, 1) if seconds else 0.0,
                p50_ms=raw["p50_us"] / 1000,
                p90_ms=raw["p90_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                max_ms=raw["max_us"] / 1000,
                errors=errors,
            )
    raise ValueError(f"no {MARKER.strip()} line in wrk's output:\n{output[-2000:]}")


def run(
    url: str,
    *,
    connections: int,
    seconds: float,
    method: str = "GET",
    body_size: int = 0,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> WrkResult:
    """One bounded wrk run (one thread) against ``url``, which must be on loopback; a request
    unanswered after ``timeout`` seconds counts as an error."""
    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise ValueError(f"refusing to load anything but loopback: {url}")
    wrk = ensure_wrk()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua_script(method, body_size, headers))
    try:
        duration = max(1, round(seconds))
        completed = subprocess.run(
            [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", f"{timeout:g}s"]
            + ["-s", script.name, url],
            capture_output=True,
            text=True,
            timeout=duration + timeout + 30,
        )
    finally:
        Path(script.name).unlink(missing_ok=True)
    if completed.returncode != 0:
        raise RuntimeError(f"wrk exited {completed.returncode}: {completed.stderr.strip()}")
    return parse(completed.stdout)
