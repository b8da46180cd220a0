"""The embedded queue backend: one SQLite file in WAL mode, written by one thread.

Durability. Every state change is committed before the caller's coroutine resumes. The
database runs in WAL mode with ``synchronous=FULL`` by default, so each commit fsyncs the WAL:
a call acknowledged with 202 survives ``kill -9`` of the gateway *and* a power cut. With
``synchronous=NORMAL`` a commit is only written to the WAL (fsync at checkpoints): that still
survives ``kill -9`` of the process (the bytes are in the kernel's page cache), not a crash of
the machine. FULL is the default because group commit makes its fsync cheap.

Group commit. All writes go through one dedicated thread that owns the only writing
connection. It takes every operation that queued up while the previous transaction was
committing and runs them all in one transaction (each inside a savepoint, so one failing
operation does not undo the others), commits once, then resolves every caller's future. At
concurrency 32 one fsync covers up to 32 enqueues, so durability does not cost throughput.
Being the only writer also makes the queue depth an exact in-memory counter.

Reads (records, lists) use a second connection on a reader thread: WAL readers never block
the writer and see only committed data.

Ownership. The process holds an exclusive ``flock`` on ``PATH.lock`` while the queue is open,
so exactly one gateway owns the file. That is what lets :meth:`SqliteQueue.open` treat every
call still marked running as interrupted and make it due at once, instead of waiting for its
lease to expire (leases still expire for a worker that hangs while the process lives).
"""

from __future__ import annotations

import asyncio
import builtins
import fcntl
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from . import transitions
from .base import (
    ActivationPage,
    ActivationRecord,
    AttemptResult,
    CallbackAttempt,
    CallbackBatch,
    CallbackJob,
    CallRequest,
    CancelOutcome,
    EnqueueResult,
    LeaseBatch,
    LeasedCall,
    ListQuery,
    QueueClosed,
    QueueError,
    QueueFull,
)
from .clock import SYSTEM_CLOCK, Clock
from .sqlite_state import STATE_COLUMNS, changed_columns, headers_from, headers_json, state_of
from .transitions import CallState, Refused

log = logging.getLogger("watchdog.gateway.queue")

T = TypeVar("T")
Synchronous = Literal["full", "normal"]

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    seq INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL UNIQUE,
    function TEXT NOT NULL,
    status TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB,
    callback_url TEXT,
    idempotency_key TEXT,
    created_at REAL NOT NULL,
    delay REAL NOT NULL DEFAULT 0,
    -- unfinished calls only: when queued or retrying, the time it may run; when running,
    -- the lease's expiry (an expired lease makes it due again). NULL once finished.
    due_at REAL,
    lease_owner TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    attempt_started_at REAL,
    ended_at REAL,
    status_code INTEGER,
    response_headers TEXT,
    response_body BLOB,
    response_truncated INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    error_kind TEXT,
    attempt_log TEXT NOT NULL DEFAULT '[]',
    callback_status TEXT,
    callback_attempts INTEGER NOT NULL DEFAULT 0,
    -- pending deliveries only: the next try, or the running delivery's lease expiry
    callback_due REAL,
    callback_owner TEXT,
    callback_log TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS calls_due ON calls(due_at) WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS calls_callback_due ON calls(callback_due)
    WHERE callback_due IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS calls_idempotency ON calls(function, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS calls_function ON calls(function, seq);
CREATE INDEX IF NOT EXISTS calls_status ON calls(status, seq);
CREATE INDEX IF NOT EXISTS calls_ended ON calls(ended_at) WHERE ended_at IS NOT NULL;
"""

_PURGE_CHUNK = 2000
_IDENTITY_COLUMNS = "call_id, function, method, path, query, idempotency_key, callback_url, "
_RECORD_BODY_COLUMNS = _IDENTITY_COLUMNS + STATE_COLUMNS
_RECORD_COLUMNS = _IDENTITY_COLUMNS + STATE_COLUMNS.replace(" response_body,", " NULL,", 1)
"""A record's columns; in list summaries without the response body."""
_REQUEST_COLUMNS = (
    "call_id, function, method, path, query, headers, body, callback_url, idempotency_key"
)
_STATE_AT = 1 + _REQUEST_COLUMNS.count(",") + 1
"""Where the state columns start in a row of ``seq, _REQUEST_COLUMNS, STATE_COLUMNS``."""
_DONE_CALLBACKS = ", ".join(f"'{status}'" for status in sorted(transitions.DONE_CALLBACKS))


class QueueLocked(QueueError):
    """Another process has this queue file open."""


_Op = Callable[[sqlite3.Connection, float], Any]


@dataclass(slots=True)
class _Pending:
    op: _Op
    future: asyncio.Future[Any]
    wake_calls: bool
    wake_callbacks: bool


def _request(row: Sequence[Any], delay: float) -> CallRequest:
    """The request from the :data:`_REQUEST_COLUMNS` of a row."""
    (call_id, function, method, path, query, headers, body, callback_url, key) = row
    return CallRequest(
        function=function,
        method=method,
        path=path,
        query=query,
        headers=headers_from(headers),
        body=bytes(body or b""),
        callback_url=callback_url,
        idempotency_key=key,
        delay=delay,
        call_id=call_id,
    )


def _connect(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    # Autocommit mode: transactions are opened explicitly (BEGIN IMMEDIATE) by the writer.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise QueueError(f"{path}: cannot switch SQLite to WAL mode (got {mode})")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    return conn


class SqliteQueue:
    """The SQLite implementation of :class:`~.base.QueueBackend`.

    Args:
        path: the database file (created with its directory if missing).
        max_depth: unfinished calls allowed before :meth:`enqueue` raises
            :class:`~.base.QueueFull`; 0 = unbounded.
        synchronous: ``full`` (fsync every commit) or ``normal`` (see the module doc).
        retry_after: the ``Retry-After`` suggested when the queue is full, in seconds.
        max_batch: most operations committed in one transaction.
        clock: where "now" is read (tests move one by hand).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_depth: int = 0,
        synchronous: Synchronous = "full",
        retry_after: float = 1.0,
        max_batch: int = 1024,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        self.max_depth = max_depth
        self.synchronous: Synchronous = synchronous
        self.retry_after = retry_after
        self.max_batch = max_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ops: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_conn: sqlite3.Connection | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._reader_conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._depth = 0
        self._calls_event = asyncio.Event()
        self._callbacks_event = asyncio.Event()
        self._closed = True
        self.commits = 0
        """Transactions committed (for measuring how well group commit batches)."""
        self.committed_ops = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        if not self._closed:
            raise QueueError("queue already open")
        self._loop = asyncio.get_running_loop()
        self._calls_event = asyncio.Event()
        self._callbacks_event = asyncio.Event()
        await asyncio.to_thread(self._open_files)
        self._closed = False
        self._writer = threading.Thread(
            target=self._write_loop, name=f"sqlite-writer:{self.path.name}", daemon=True
        )
        self._writer.start()
        self._reader = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-reader:{self.path.name}")
        recovered = await self._submit(self._op_recover, wake_calls=True, wake_callbacks=True)
        if recovered:
            log.warning(
                "%s: %d interrupted call(s) or deliveries are due again", self.path, recovered
            )

    def _open_files(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise QueueLocked(f"{self.path} is in use by another process") from None
        self._lock_fd = fd
        try:
            conn = _connect(self.path, self.synchronous)
            conn.executescript(_SCHEMA)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            elif version != _SCHEMA_VERSION:
                raise QueueError(f"{self.path}: unknown schema version {version}")
            self._depth = self._count_unfinished(conn)
            self._writer_conn = conn
            self._reader_conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            self._reader_conn.execute("PRAGMA busy_timeout = 10000")
        except BaseException:
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @staticmethod
    def _count_unfinished(conn: sqlite3.Connection) -> int:
        row = conn.execute(
            "SELECT count(*) FROM calls WHERE status IN ('queued', 'running', 'retrying')"
        ).fetchone()
        return int(row[0])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ops.put(None)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        if self._reader is not None:
            reader_conn = self._reader_conn
            if reader_conn is not None:
                await asyncio.get_running_loop().run_in_executor(self._reader, reader_conn.close)
            self._reader.shutdown(wait=True)
        self._reader = None
        self._reader_conn = None
        self._release_lock()

    # -- the writer thread ----------------------------------------------------------------

    async def _submit(
        self, op: _Op, *, wake_calls: bool = False, wake_callbacks: bool = False
    ) -> Any:
        if self._closed or self._loop is None:
            raise QueueClosed("queue is not open")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._ops.put(_Pending(op, future, wake_calls, wake_callbacks))
        return await future

    def _write_loop(self) -> None:
        conn = self._writer_conn
        assert conn is not None
        stop = False
        try:
            while not stop:
                first = self._ops.get()
                if first is None:
                    break
                # Everything that arrived while the previous commit was being synced goes
                # into this one transaction: that is the group commit.
                batch = [first]
                while len(batch) < self.max_batch:
                    try:
                        item = self._ops.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                self._run_batch(conn, batch)
        finally:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("%s: checkpoint on close failed: %s", self.path, exc)
            conn.close()
            self._writer_conn = None

    def _run_batch(self, conn: sqlite3.Connection, batch: builtins.list[_Pending]) -> None:
        now = self.clock.now()
        outcomes: builtins.list[tuple[_Pending, Any, BaseException | None]] = []
        depth_before = self._depth
        try:
            conn.execute("BEGIN IMMEDIATE")
            for pending in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = pending.op(conn, now)
                except Exception as exc:  # noqa: BLE001 - handed to that caller only
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((pending, None, exc))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((pending, result, None))
            conn.execute("COMMIT")
            self.commits += 1
            self.committed_ops += len(batch)
        except sqlite3.Error as exc:
            log.error("%s: commit of %d operation(s) failed: %s", self.path, len(batch), exc)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._depth = depth_before
            try:
                self._depth = self._count_unfinished(conn)
            except sqlite3.Error:
                pass
            error = QueueError(f"storage error: {exc}")
            outcomes = [(pending, None, error) for pending in batch]
        wake_calls = any(p.wake_calls for p, _, e in outcomes if e is None)
        wake_callbacks = any(p.wake_callbacks for p, _, e in outcomes if e is None)
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._deliver, outcomes, wake_calls, wake_callbacks)
        except RuntimeError:
            pass  # the event loop is gone; nobody waits for these any more

    def _deliver(
        self,
        outcomes: builtins.list[tuple[_Pending, Any, BaseException | None]],
        wake_calls: bool,
        wake_callbacks: bool,
    ) -> None:
        for pending, result, error in outcomes:
            if pending.future.done():
                continue  # the caller was cancelled; the operation still happened
            if error is not None:
                pending.future.set_exception(error)
            else:
                pending.future.set_result(result)
        if wake_calls:
            self._calls_event.set()
        if wake_callbacks:
            self._callbacks_event.set()

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed or self._reader is None or self._reader_conn is None:
            raise QueueClosed("queue is not open")
        conn = self._reader_conn

        def run() -> T:
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise QueueError(f"storage error: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._reader, run)

    # -- operations run on the writer thread ----------------------------------------------

    def _save(
        self, conn: sqlite3.Connection, seq: int, before: CallState, after: CallState
    ) -> None:
        """Write the columns a transition changed, and keep the depth counter with it."""
        columns = changed_columns(before, after)
        if columns:
            assignments = ", ".join(f"{name} = ?" for name in columns)
            conn.execute(f"UPDATE calls SET {assignments} WHERE seq = ?", (*columns.values(), seq))
        if before.unfinished and not after.unfinished:
            self._depth -= 1

    def _transition(
        self,
        conn: sqlite3.Connection,
        call_id: str,
        change: Callable[[CallState], transitions.Outcome],
    ) -> transitions.Outcome | None:
        """Apply ``change`` to the call's stored state (None: no such call). Read and write
        are one transaction of the only writer: nothing can change the row in between."""
        row = conn.execute(
            f"SELECT seq, {STATE_COLUMNS} FROM calls WHERE call_id = ?", (call_id,)
        ).fetchone()
        if row is None:
            return None
        before = state_of(row[1:])
        after = change(before)
        if isinstance(after, CallState):
            self._save(conn, row[0], before, after)
        return after

    def _op_recover(self, conn: sqlite3.Connection, now: float) -> int:
        # This process holds the lock file, so whoever had these leased is dead.
        rows = conn.execute(
            f"SELECT seq, {STATE_COLUMNS} FROM calls"
            " WHERE status = 'running' OR callback_owner IS NOT NULL"
        ).fetchall()
        recovered = 0
        for row in rows:
            before = state_of(row[1:])
            recovered += (before.status == "running") + (before.callback_owner is not None)
            self._save(conn, row[0], before, transitions.recover(before, now))
        return recovered

    # -- accepting ------------------------------------------------------------------------

    async def enqueue(self, request: CallRequest) -> EnqueueResult:
        def op(conn: sqlite3.Connection, now: float) -> EnqueueResult:
            if request.idempotency_key is not None:
                row = conn.execute(
                    "SELECT call_id, status FROM calls WHERE function = ? AND idempotency_key = ?",
                    (request.function, request.idempotency_key),
                ).fetchone()
                if row is not None:
                    return EnqueueResult(row[0], False, row[1])
            has_callback = request.callback_url is not None
            state = transitions.enqueue(now, delay=request.delay, has_callback=has_callback)
            self._insert(conn, request, state)
            return EnqueueResult(request.call_id, True, state.status)

        return cast(EnqueueResult, await self._submit_new(op, request.call_id, wake_calls=True))

    async def adopt(self, request: CallRequest, *, owner: str, lease_for: float) -> LeasedCall:
        def op(conn: sqlite3.Connection, now: float) -> LeasedCall:
            has_callback = request.callback_url is not None
            state = transitions.adopt(
                now, has_callback=has_callback, owner=owner, lease_for=lease_for
            )
            self._insert(conn, request, state)
            return transitions.leased_call(replace(request, delay=0.0), state, state)

        return cast(LeasedCall, await self._submit_new(op, request.call_id))

    def _insert(self, conn: sqlite3.Connection, request: CallRequest, state: CallState) -> None:
        """Insert ``request`` as a new call in ``state``.

        Raises:
            QueueFull: the configured depth is reached.
        """
        if self.max_depth and self._depth >= self.max_depth:
            raise QueueFull(self._depth, self.retry_after)
        columns = {
            "call_id": request.call_id,
            "function": request.function,
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": headers_json(request.headers),
            "body": request.body,
            "callback_url": request.callback_url,
            "idempotency_key": request.idempotency_key,
            "created_at": state.created_at,
            "delay": state.delay,
            **changed_columns(None, state),
        }
        names, marks = ", ".join(columns), ", ".join("?" * len(columns))
        conn.execute(f"INSERT INTO calls ({names}) VALUES ({marks})", tuple(columns.values()))
        self._depth += 1

    async def _submit_new(
        self,
        op: Callable[[sqlite3.Connection, float], T],
        call_id: str,
        *,
        wake_calls: bool = False,
    ) -> T:
        """Run an operation that inserts the call ``call_id``; a duplicate id is a QueueError."""
        try:
            return cast(T, await self._submit(op, wake_calls=wake_calls))
        except QueueError:
            raise
        except sqlite3.IntegrityError as exc:
            raise QueueError(f"call id {call_id} already exists") from exc

    async def find_idempotent(self, function: str, key: str) -> str | None:
        def read(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT call_id FROM calls WHERE function = ? AND idempotency_key = ?",
                (function, key),
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._read(read)

    async def depth(self) -> int:
        if self._closed:
            raise QueueClosed("queue is not open")
        return self._depth

    # -- running --------------------------------------------------------------------------

    async def lease(
        self,
        *,
        owner: str,
        limit: int,
        lease_for: float,
        skip_functions: Collection[str] = (),
    ) -> LeaseBatch:
        skip = tuple(skip_functions)
        # Cleared before asking, so a commit racing with this lease wakes the next wait.
        self._calls_event.clear()
        if limit <= 0:
            return LeaseBatch([], None)
        not_in = f" AND function NOT IN ({', '.join('?' * len(skip))})" if skip else ""

        def op(conn: sqlite3.Connection, now: float) -> LeaseBatch:
            # Which calls are due is SQL's to find (an index on due_at); what a lease does to
            # each is the state machine's.
            rows = conn.execute(
                f"SELECT seq, {_REQUEST_COLUMNS}, {STATE_COLUMNS} FROM calls"
                f" WHERE due_at <= ?{not_in} ORDER BY due_at LIMIT ?",
                (now, *skip, limit),
            ).fetchall()
            leased: builtins.list[LeasedCall] = []
            for row in rows:
                before = state_of(row[_STATE_AT:])
                after = transitions.lease(before, now, owner=owner, lease_for=lease_for)
                assert isinstance(after, CallState), after  # selected as due
                self._save(conn, row[0], before, after)
                request = _request(row[1:_STATE_AT], before.delay)
                leased.append(transitions.leased_call(request, before, after))
            next_due = None
            if len(leased) < limit:
                row = conn.execute(
                    f"SELECT min(due_at) FROM calls WHERE due_at IS NOT NULL{not_in}", skip
                ).fetchone()
                next_due = row[0]
            return LeaseBatch(leased, next_due)

        return cast(LeaseBatch, await self._submit(op))

    async def wait_for_calls(self, timeout: float) -> None:
        await _wait(self._calls_event, timeout)

    async def _change(
        self,
        call_id: str,
        change: Callable[[CallState, float], transitions.Outcome],
        *,
        wake_calls: bool = False,
        wake_callbacks: bool = False,
    ) -> bool:
        """Apply a fenced transition to one call; False when it was refused or is gone."""

        def op(conn: sqlite3.Connection, now: float) -> bool:
            after = self._transition(conn, call_id, lambda state: change(state, now))
            return isinstance(after, CallState)

        done = await self._submit(op, wake_calls=wake_calls, wake_callbacks=wake_callbacks)
        return cast(bool, done)

    async def extend(self, lease: LeasedCall, lease_for: float) -> bool:
        return await self._change(
            lease.call_id,
            lambda state, now: transitions.extend(
                state, now, attempt=lease.attempt, owner=lease.owner, lease_for=lease_for
            ),
        )

    async def release(self, lease: LeasedCall) -> bool:
        return await self._change(
            lease.call_id,
            lambda state, now: transitions.release(
                state, now, attempt=lease.attempt, owner=lease.owner
            ),
            wake_calls=True,
        )

    async def complete(self, lease: LeasedCall, result: AttemptResult) -> bool:
        return await self._change(
            lease.call_id,
            lambda state, now: transitions.succeed(
                state, now, attempt=lease.attempt, owner=lease.owner, result=result
            ),
            wake_callbacks=True,
        )

    async def retry(self, lease: LeasedCall, result: AttemptResult, at: float) -> bool:
        return await self._change(
            lease.call_id,
            lambda state, now: transitions.retry(
                state, now, attempt=lease.attempt, owner=lease.owner, result=result, at=at
            ),
            wake_calls=True,
        )

    async def fail(self, lease: LeasedCall, result: AttemptResult) -> bool:
        return await self._change(
            lease.call_id,
            lambda state, now: transitions.fail(
                state, now, attempt=lease.attempt, owner=lease.owner, result=result
            ),
            wake_callbacks=True,
        )

    async def cancel(self, call_id: str) -> CancelOutcome:
        def op(conn: sqlite3.Connection, now: float) -> CancelOutcome:
            after = self._transition(conn, call_id, lambda state: transitions.cancel(state, now))
            if after is None:
                return "not_found"
            if isinstance(after, Refused):
                return cast(CancelOutcome, after.reason)
            return "cancelled"

        return cast(CancelOutcome, await self._submit(op))

    # -- callbacks ------------------------------------------------------------------------

    async def lease_callbacks(self, *, owner: str, limit: int, lease_for: float) -> CallbackBatch:
        self._callbacks_event.clear()
        if limit <= 0:
            return CallbackBatch([], None)

        def op(conn: sqlite3.Connection, now: float) -> CallbackBatch:
            rows = conn.execute(
                f"SELECT seq, call_id, function, callback_url, {STATE_COLUMNS} FROM calls"
                " WHERE callback_due <= ? ORDER BY callback_due LIMIT ?",
                (now, limit),
            ).fetchall()
            jobs: builtins.list[CallbackJob] = []
            for seq, call_id, function, url, *state in rows:
                before = state_of(state)
                after = transitions.lease_callback(before, now, owner=owner, lease_for=lease_for)
                assert isinstance(after, CallState), after  # selected as due
                self._save(conn, seq, before, after)
                jobs.append(
                    transitions.callback_job(after, call_id=call_id, function=function, url=url)
                )
            next_due = None
            if len(jobs) < limit:
                next_due = conn.execute(
                    "SELECT min(callback_due) FROM calls WHERE callback_due IS NOT NULL"
                ).fetchone()[0]
            return CallbackBatch(jobs, next_due)

        return cast(CallbackBatch, await self._submit(op))

    async def wait_for_callbacks(self, timeout: float) -> None:
        await _wait(self._callbacks_event, timeout)

    async def extend_callback(self, job: CallbackJob, lease_for: float) -> bool:
        return await self._change(
            job.call_id,
            lambda state, now: transitions.extend_callback(
                state, now, attempt=job.attempt, owner=job.owner, lease_for=lease_for
            ),
        )

    async def callback_delivered(self, job: CallbackJob, attempt: CallbackAttempt) -> bool:
        return await self._change(
            job.call_id,
            lambda state, now: transitions.deliver_callback(
                state, attempt=job.attempt, owner=job.owner, record=attempt
            ),
        )

    async def callback_retry(self, job: CallbackJob, attempt: CallbackAttempt, at: float) -> bool:
        return await self._change(
            job.call_id,
            lambda state, now: transitions.retry_callback(
                state, attempt=job.attempt, owner=job.owner, record=attempt, at=at
            ),
            wake_callbacks=True,
        )

    async def callback_failed(self, job: CallbackJob, attempt: CallbackAttempt) -> bool:
        return await self._change(
            job.call_id,
            lambda state, now: transitions.fail_callback(
                state, attempt=job.attempt, owner=job.owner, record=attempt
            ),
        )

    # -- records --------------------------------------------------------------------------

    async def get(self, call_id: str) -> ActivationRecord | None:
        def read(conn: sqlite3.Connection) -> ActivationRecord | None:
            row = conn.execute(
                f"SELECT {_RECORD_BODY_COLUMNS} FROM calls WHERE call_id = ?",
                (call_id,),
            ).fetchone()
            return None if row is None else _record(row)

        return await self._read(read)

    async def purge(self, ended_before: float) -> int:
        def op(conn: sqlite3.Connection, now: float) -> int:
            return int(
                conn.execute(
                    "DELETE FROM calls WHERE seq IN (SELECT seq FROM calls WHERE ended_at < ?"
                    " AND (callback_status IS NULL"
                    f"   OR callback_status IN ({_DONE_CALLBACKS}))"
                    " LIMIT ?)",
                    (ended_before, _PURGE_CHUNK),
                ).rowcount
            )

        total = 0
        # In chunks, each its own transaction, so a big purge never stalls enqueues for long.
        while True:
            deleted = cast(int, await self._submit(op))
            total += deleted
            if deleted < _PURGE_CHUNK:
                return total

    # Defined last: inside the class body the name ``list`` is this method from here on.
    async def list(self, query: ListQuery) -> ActivationPage:
        clauses: builtins.list[str] = []
        params: builtins.list[Any] = []
        if query.function is not None:
            clauses.append("function = ?")
            params.append(query.function)
        if query.status is not None:
            clauses.append("status = ?")
            params.append(query.status)
        if query.since is not None:
            clauses.append("created_at >= ?")
            params.append(query.since)
        if query.cursor is not None:
            try:
                before = int(query.cursor)
            except ValueError:
                raise ValueError(f"invalid cursor {query.cursor!r}") from None
            clauses.append("seq < ?")
            params.append(before)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        limit = max(1, query.limit)

        def read(conn: sqlite3.Connection) -> ActivationPage:
            rows = conn.execute(
                f"SELECT {_RECORD_COLUMNS}, seq FROM calls{where} ORDER BY seq DESC LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
            items = [_record(row[:-1]) for row in rows[:limit]]
            cursor = str(rows[limit - 1][-1]) if len(rows) > limit else None
            return ActivationPage(items, cursor)

        return await self._read(read)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    if timeout <= 0:
        return
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass


def _record(row: Sequence[Any]) -> ActivationRecord:
    """The record from the :data:`_RECORD_COLUMNS` of a row."""
    (call_id, function, method, path, query, key, callback_url) = row[:7]
    state = state_of(row[7:])
    return transitions.activation(
        state,
        call_id=call_id,
        function=function,
        method=method,
        path=path,
        query=query,
        idempotency_key=key,
        callback_url=callback_url,
        response_body=state.response_body,
    )
