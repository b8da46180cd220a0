"""What only the SQLite backend promises: group commit, WAL, one owner, and kill -9 safety."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from async_helpers import run
from conftest import FIXTURES, PYTHON, ROOT

from watchdog.gateway.queue.base import CallRequest
from watchdog.gateway.queue.sqlite import QueueLocked, SqliteQueue


def _client(db: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PYTHON, str(FIXTURES / "queue_client.py"), str(db), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_concurrent_enqueues_share_commits(tmp_path: Path) -> None:
    async def body() -> None:
        queue = SqliteQueue(tmp_path / "q.db")
        await queue.open()
        try:

            async def enqueuer() -> None:
                for _ in range(50):
                    await queue.enqueue(CallRequest("f", body=b"x" * 512))

            await asyncio.gather(*(enqueuer() for _ in range(32)))
            assert await queue.depth() == 1600
            # One commit per enqueue would be 1600 commits; grouped, far fewer.
            assert queue.committed_ops / queue.commits >= 4, (queue.committed_ops, queue.commits)
        finally:
            await queue.close()

    run(body())


def test_the_file_is_in_wal_mode_and_owned_by_one_queue(tmp_path: Path) -> None:
    async def body() -> None:
        first = SqliteQueue(tmp_path / "q.db")
        await first.open()
        try:
            with pytest.raises(QueueLocked):
                await SqliteQueue(tmp_path / "q.db").open()
            with sqlite3.connect(tmp_path / "q.db") as conn:
                assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            await first.close()
        second = SqliteQueue(tmp_path / "q.db")
        await second.open()  # the lock went with the first owner
        await second.close()

    run(body())


def test_every_acknowledged_enqueue_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    proc = _client(db, "enqueue")
    acked: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        while len(acked) < 500 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.endswith(b"\n"):
                acked.append(line.decode().strip())
        # Killed mid-stream: enqueues are still being committed at this moment.
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
    assert len(acked) >= 500, proc.stderr.read().decode() if proc.stderr else ""

    with sqlite3.connect(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT call_id FROM calls")}
    missing = [call_id for call_id in acked if call_id not in stored]
    assert missing == [], f"{len(missing)} acknowledged calls lost"


def test_calls_running_when_the_owner_is_killed_run_again_at_once(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    proc = _client(db, "lease", "3")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().split()
        assert line[:1] == ["leased"], proc.stderr.read().decode() if proc.stderr else ""
        leased = line[1:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)

    async def body() -> None:
        queue = SqliteQueue(db)
        await queue.open()
        try:
            # Leased for an hour by the dead process, yet due now: no waiting for the lease.
            batch = await queue.lease(owner="next", limit=10, lease_for=30)
            assert sorted(c.call_id for c in batch.calls) == sorted(leased)
            assert all(c.attempt == 2 and c.interrupted for c in batch.calls)
            record = await queue.get(leased[0])
            assert record is not None and record.attempt_log[0].error_kind == "platform"
        finally:
            await queue.close()

    run(body())
