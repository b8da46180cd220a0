"""The watchdog as PID 1 of a fresh PID namespace, as in a container."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import RunningWatchdog, leftovers, wait_until_serving, watchdog_env
from test_limits import _wait_for

needs_namespaces = pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0,
    reason="PID namespaces need unshare(1) and root; test_limits covers the subreaper path",
)


@needs_namespaces
def test_as_pid_1_orphans_are_reaped_and_sigterm_drains(tmp_path: Path) -> None:
    orphan = "sleep 0.2 </dev/null >/dev/null 2>&1 & echo started"
    env = watchdog_env(tmp_path, fprocess=f"sh -c '{orphan}'")
    log_path = tmp_path / "watchdog.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            # --kill-child: if the test kills unshare, PID 1 of the namespace dies with it.
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
            + [sys.executable, "-m", "watchdog"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    wd = RunningWatchdog(proc, int(env["port"]), int(env["metrics_port"]), log_path, tmp_path)
    try:
        wait_until_serving(wd)
        pid1 = psutil.Process(proc.pid).children()[0]  # the watchdog, PID 1 inside
        for _ in range(10):
            assert wd.request("GET", "/").text == "started\n"
        _wait_for(lambda: not leftovers(pid1.pid), timeout=10, what="orphans reaped in the ns")
        pid1.terminate()  # SIGTERM to PID 1: handled, not ignored
        started = time.monotonic()
        assert proc.wait(15) == 0
        assert time.monotonic() - started < 10
        assert "SIGTERM received" in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
