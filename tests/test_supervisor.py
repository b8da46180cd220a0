"""The upstream supervisor's restart backoff, against a real child process."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path

import pytest
from conftest import PYTHON

from watchdog.logs import FunctionLog
from watchdog.process import ProcessTable
from watchdog.supervisor import Backoff, Supervisor

# Counts its runs in a file; exits 3 at once, except that run 5 stays up for 0.8 s first.
CHILD = """
import pathlib, sys, time
runs = pathlib.Path(sys.argv[1])
n = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(n))
time.sleep(0.8 if n == 5 else 0)
sys.exit(3)
"""


def test_backoff_doubles_to_its_limit_and_resets_after_a_stable_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs = tmp_path / "runs"

    async def supervise() -> None:
        processes = ProcessTable()
        supervisor = Supervisor(
            processes,
            PYTHON,
            [PYTHON, "-c", CHILD, str(runs)],
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            FunctionLog(prefix=True, json_format=False, max_line=4096),
            restart=True,
            grace=0.5,
            backoff=Backoff(first=0.05, limit=0.2, stable_after=0.5),
        )
        supervisor.start()
        try:
            async with asyncio.timeout(30):
                while not (runs.exists() and int(runs.read_text() or 0) >= 7):
                    await asyncio.sleep(0.02)
        finally:
            await supervisor.stop()
            processes.close()

    with caplog.at_level(logging.ERROR, logger="watchdog.supervisor"):
        asyncio.run(supervise())
    delays = [
        float(m.group(1))
        for m in (re.search(r"restarting in ([\d.]+)s", r.getMessage()) for r in caplog.records)
        if m
    ]
    # Doubles while it keeps crashing, capped at the limit; back to the first after run 5,
    # which stayed up longer than stable_after.
    assert delays[:6] == [0.05, 0.1, 0.2, 0.2, 0.05, 0.1]
    assert "exit status 3" in caplog.records[0].getMessage()
