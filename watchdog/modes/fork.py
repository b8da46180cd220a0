"""Fork-per-request modes: one handler process per request, body on stdin, response from stdout.

The three fork modes differ only in two choices, captured by :class:`ForkPolicy`:

- ``serializing``: read the request body whole first; buffer the whole output (Content-Length).
- ``streaming``: stream the body into stdin and stdout out to the client (chunked).
- ``auto`` (the default): stream stdin; buffer stdout up to 256 KiB. A handler that finishes
  within that answers like ``serializing`` (exact status, Content-Length); a larger output
  switches to streaming.

Once a streamed response has begun its status cannot change; if the handler then fails, the
connection is cut before the final chunk so that the client sees an incomplete response rather
than a truncated success.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from ..cgi import CGIHead, CGIHeaderError, parse_head, request_variables
from ..config import WatchdogConfig
from ..forkserver import ForkServer
from ..http import Request, Response, StreamResponse
from ..limits import (
    Admission,
    BodyTimeout,
    BodyTooLarge,
    ClientStalled,
    TaskTimeout,
    read_body,
    seconds_or_none,
    within_write_timeout,
)
from ..logs import FunctionLog, LineSplitter
from ..metrics import WatchdogMetrics
from ..pipes import PipeCollector, PipeDrain, read_chunk, write_all, write_now
from ..prefork import PreforkSpawner
from ..process import Child, ProcessTable, SpawnError, describe_exit, resolve_program
from ..responses import DURATION_HEADER, duration_value, format_seconds, text_response

log = logging.getLogger("watchdog.fork")

AUTO_RESPONSE_BUFFER = 256 * 1024
_STDERR_TAIL = 4096


@dataclass(frozen=True, slots=True)
class ForkPolicy:
    buffer_request: bool
    """Read the whole request body before starting the handler."""
    response_buffer: int | None
    """Bytes of stdout held before streaming begins; None holds all of it."""


POLICIES: dict[str, ForkPolicy] = {
    "serializing": ForkPolicy(buffer_request=True, response_buffer=None),
    "streaming": ForkPolicy(buffer_request=False, response_buffer=0),
    "auto": ForkPolicy(buffer_request=False, response_buffer=AUTO_RESPONSE_BUFFER),
}


class ForkRunner:
    """Runs ``fprocess`` once per request."""

    def __init__(
        self,
        config: WatchdogConfig,
        processes: ProcessTable,
        metrics: WatchdogMetrics,
        function_log: FunctionLog,
    ) -> None:
        self.config = config
        self.policy = POLICIES[config.mode]
        self.processes = processes
        self.metrics = metrics
        self.function_log = function_log
        self.program = ""
        self._base_env = dict(config.environ)

    async def start(self) -> None:
        # Fail at start, not on every request, when the handler program does not exist.
        self.program = resolve_program(self.config.fprocess, self._base_env.get("PATH"))
        wrap = self._prefork if self.config.prefork else None
        if wrap is None:
            self.processes.start_fork_server(self.program, self.config.fprocess, self._base_env)
        else:
            self.processes.start_fork_server(
                self.program, self.config.fprocess, self._base_env, wrap
            )
        log.info("Forking %s per request (mode %s)", self.program, self.config.mode)

    def _prefork(self, fallback: ForkServer) -> PreforkSpawner:
        spawner = PreforkSpawner(
            fallback,
            self.program,
            self.config.fprocess,
            self._base_env,
            self.config.prefork_preload,
            lambda event: self.metrics.prefork.labels(event=event).inc(),
        )
        spawner.start()
        return spawner

    def express(self, admission: Admission) -> None:
        return None  # every request takes the ordinary path

    def healthy(self) -> bool:
        return self.processes.can_spawn_handlers

    async def ready(self) -> bool:
        return True

    def exit_status(self) -> asyncio.Future[int] | None:
        return None

    async def stop(self, grace: float) -> None:
        await self.processes.kill_all(grace)

    async def handle(self, request: Request, started: float) -> StreamResponse:
        body: bytearray | None = None
        loop = self.processes.loop  # get_running_loop() makes a getpid system call each time
        read_deadline = loop.time() + self.config.read_timeout if self.config.read_timeout else None
        if self.policy.buffer_request:
            try:
                body = await read_body(request, read_deadline, self.config.max_body_size)
            except BodyTimeout:
                return self._body_timeout(started)
            except BodyTooLarge as exc:
                return text_response(413, exc.text, started)
        stdin = _StdinStart(*_body_so_far(request, body))
        try:
            child = self.processes.spawn_handler(
                self._request_env(request),
                merge_stderr=self.config.combine_output,
                before_start=stdin.fill,
            )
        except SpawnError as exc:
            log.error("%s", exc)
            return text_response(500, f"{exc}\n", started)
        call = _Call(self, request, child, started, read_deadline)
        try:
            async with TaskTimeout(loop, seconds_or_none(self.config.exec_timeout)):
                return await call.run(stdin)
        except TimeoutError:
            self.metrics.killed.labels(reason="exec_timeout").inc()
            limit = format_seconds(self.config.exec_timeout)
            log.warning("Killing %s: exceeded exec_timeout of %s", child.pid, limit)
            return await call.fail(504, f"Function exceeded its exec_timeout of {limit}\n")
        except SpawnError as exc:  # reported by the fork server after the request went out
            log.error("%s", exc)
            return text_response(500, f"{exc}\n", started)
        except BodyTimeout:
            return await call.fail(408, _body_timeout_text(self.config.read_timeout))
        except ClientStalled:
            self.metrics.killed.labels(reason="client_stalled").inc()
            return await call.fail(504, "Client did not read the response within write_timeout\n")
        finally:
            await call.finish()

    def _request_env(self, request: Request) -> dict[str, str]:
        if not self.config.cgi_headers:
            return {}
        return request_variables(
            request.method,
            request.path,
            request.query_string,
            request.headers.items(),
        )

    def _body_timeout(self, started: float) -> Response:
        return text_response(408, _body_timeout_text(self.config.read_timeout), started)


def _body_timeout_text(read_timeout: float) -> str:
    return f"Request body not received within read_timeout of {format_seconds(read_timeout)}\n"


def _body_so_far(request: Request, body: bytearray | None) -> tuple[bytes | bytearray, bool]:
    """The request body at hand without waiting (all of it when read first, or when it came
    with the head, as a small POST does), and whether that is the whole of it."""
    if body is not None:
        return body, True
    if not request.body_exists:
        return b"", True
    prefix = request.content.read_nowait()
    return prefix, request.content.is_eof()


class _StdinStart:
    """What of the body goes into the handler's stdin before it starts: as much as the pipe
    takes; stdin is closed there when that is the whole body."""

    __slots__ = ("data", "whole", "written")

    def __init__(self, data: bytes | bytearray, whole: bool) -> None:
        self.data = data
        self.whole = whole
        self.written = 0

    def fill(self, child: Child) -> None:
        fd = child.stdin
        assert fd is not None
        if self.data:
            self.written = write_now(fd, self.data)
        if self.whole and self.written == len(self.data):
            child.close_fd(fd)

    @property
    def rest(self) -> memoryview:
        """The part not written yet: a view, not a copy of a body up to max_body_size long."""
        return memoryview(self.data)[self.written :]


class _Call:
    """One handler process serving one request."""

    def __init__(
        self,
        runner: ForkRunner,
        request: Request,
        child: Child,
        started: float,
        read_deadline: float | None,
    ) -> None:
        self.runner = runner
        self.config = runner.config
        self.request = request
        self.child = child
        self.started = started
        self.read_deadline = read_deadline
        self.response: StreamResponse | None = None
        self._stderr_tail = bytearray()
        self._stderr: PipeDrain | None = None
        self._splitter: LineSplitter | None = None
        self._exit_timer: asyncio.TimerHandle | None = None
        self._stdout_open = True
        child.exited.add_done_callback(self._on_exit)

    # -- the request ----------------------------------------------------------------------

    async def run(self, stdin: _StdinStart) -> StreamResponse:
        self._drain_stderr()
        rest = stdin.rest
        if stdin.whole and not rest:
            return await self._respond()  # the whole body is in the pipe, and stdin closed
        if stdin.whole:
            return await self._respond_while_feeding(rest, b"")
        return await self._respond_while_feeding(None, bytes(rest))

    async def _respond_while_feeding(
        self, body: memoryview | None, prefix: bytes
    ) -> StreamResponse:
        """Respond while a task feeds stdin; a body that stops arriving ends the request (408)."""
        feeder = asyncio.ensure_future(self._feed_stdin(body, prefix))
        responding = asyncio.ensure_future(self._respond())
        try:
            await asyncio.wait({responding, feeder}, return_when=asyncio.FIRST_COMPLETED)
            # A body that stopped arriving wins over whatever the handler made of part of it.
            if feeder.done() and (error := feeder.exception()) is not None:
                raise error
            return await responding
        finally:
            feeder.cancel()
            responding.cancel()

    async def _feed_stdin(self, body: memoryview | None, prefix: bytes) -> None:
        """Copy the body to stdin and close it. On a body timeout stdin stays open: the handler
        is killed rather than shown a truncated body as if it were complete."""
        fd = self.child.stdin
        assert fd is not None
        if body is not None:
            await write_all(fd, body)
        else:
            try:
                async with asyncio.timeout_at(self.read_deadline):
                    chunk = prefix or await self.request.content.readany()
                    # write_all is False once the handler closed stdin: the rest is not wanted.
                    while chunk and await write_all(fd, chunk):
                        chunk = await self.request.content.readany()
            except TimeoutError:
                raise BodyTimeout from None
        self.child.close_fd(fd)

    # -- the response ---------------------------------------------------------------------

    async def _respond(self) -> StreamResponse:
        output, eof = await self._read_initial_output()
        if eof:
            returncode = await self.child.exited
            await self._stderr_closed()
            return self._complete(output, returncode)
        return await self._stream(output)

    async def _read_initial_output(self) -> tuple[bytearray, bool]:
        """Read stdout until EOF (and the handler's exit) or past the policy's buffer (and a
        CGI head, when expected)."""
        fd = self.child.stdout
        assert fd is not None
        limit = self.runner.policy.response_buffer
        collector = PipeCollector(fd, limit, self._close_stdout, after=self.child.exited)
        while not await collector.fill():
            output = collector.output
            if not (self.config.cgi_response and self._head(output, final=False) is None):
                return output, False
            collector.limit = len(output)  # one more chunk, then look for the head again
        return collector.output, True

    def _complete(self, output: bytearray, returncode: int) -> Response:
        self._count_exit(returncode)
        if returncode != 0:
            return self._failed_response(output, returncode)
        try:
            head = self._head(output, final=True)
        except CGIHeaderError as exc:
            return self._bad_head(exc)
        # The answer goes out as the very buffer it was read into (a 1 GB answer is 1 GB in
        # memory, not 2): the CGI head is cut off in place, and nothing copies it to bytes.
        if head:
            del output[: head.body_offset]
        response = Response(body=output, status=head.status if head else 200)
        self._apply_head(response, head)
        if self.config.write_debug:
            log.info("Response body (%d bytes): %r", len(output), bytes(output[:4096]))
        return response

    async def _stream(self, output: bytearray) -> StreamResponse:
        try:
            head = self._head(output, final=False)
        except CGIHeaderError as exc:
            return self._bad_head(exc)
        response = StreamResponse(status=head.status if head else 200)
        self._apply_head(response, head)
        response.enable_chunked_encoding()
        write_timeout = seconds_or_none(self.config.write_timeout)
        await within_write_timeout(response.prepare(self.request), write_timeout)
        self.response = response
        fd = self.child.stdout
        assert fd is not None
        chunk = bytes(output[head.body_offset :]) if head else bytes(output)
        if chunk:
            await within_write_timeout(response.write(chunk), write_timeout)
        while chunk := await read_chunk(fd):
            await within_write_timeout(response.write(chunk), write_timeout)
        self._close_stdout()
        returncode = await self.child.exited
        self._count_exit(returncode)
        if returncode != 0:
            log.error("Handler failed after its response began (%s)", describe_exit(returncode))
            self._abort_connection()
            return response
        await within_write_timeout(response.write_eof(), write_timeout)
        return response

    def _head(self, output: bytearray, *, final: bool) -> CGIHead | None:
        if not self.config.cgi_response:
            return None
        return parse_head(output, final=final)

    def _apply_head(self, response: StreamResponse, head: CGIHead | None) -> None:
        if head is not None:
            if head.reason:
                response.set_status(head.status, head.reason)
            response.headers.extend(head.headers)
        if head is None or "Content-Type" not in head.headers:
            response.headers["Content-Type"] = self._content_type()
        response.headers[DURATION_HEADER] = duration_value(self.started)

    def _content_type(self) -> str:
        # As the classic watchdog: an unset content_type echoes the request's own.
        return (
            self.config.content_type
            or self.request.headers.get("Content-Type")
            or "application/octet-stream"
        )

    def _failed_response(self, output: bytearray, returncode: int) -> Response:
        what = describe_exit(returncode)
        log.error("Handler %s", what)
        text = what + "\n"
        if self.config.combine_output:
            text += output.decode("utf-8", errors="replace")
        elif self.config.write_debug and self._stderr_tail:
            text += self._stderr_tail.decode("utf-8", errors="replace")
        return text_response(500, text, self.started)

    def _bad_head(self, exc: CGIHeaderError) -> Response:
        text = f"Handler wrote a malformed CGI header block: {exc}"
        log.error("%s", text)
        return text_response(502, text + "\n", self.started)

    def _count_exit(self, returncode: int) -> None:
        outcome = "success" if returncode == 0 else ("signal" if returncode < 0 else "error")
        self.runner.metrics.exits.labels(outcome=outcome).inc()

    # -- failure and clean-up -------------------------------------------------------------

    async def fail(self, status: int, text: str) -> StreamResponse:
        """Answer ``status`` if nothing was sent yet, else cut the connection."""
        await self._kill()
        if self.response is not None:
            self._abort_connection()
            return self.response
        return text_response(status, text, self.started)

    async def finish(self) -> None:
        """Whatever happened: no process of the tree and no pipe survives the request."""
        if not self.child.exited.done():
            # Cancelled (client gone, shutdown) or a failure path that did not kill yet.
            self.runner.metrics.killed.labels(reason="request_ended").inc()
            await self._kill()
        if self._exit_timer is not None:
            self._exit_timer.cancel()
        if self._stderr is not None:
            self._stderr.stop()
            self._flush_stderr()
        self.child.close_pipes()

    async def _kill(self) -> None:
        await self.runner.processes.kill_tree(self.child, self.config.kill_grace)

    def _abort_connection(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    def _on_exit(self, exited: asyncio.Future[int]) -> None:
        # Processes the handler left behind may still hold its stdout or stderr open; give them
        # kill_grace to let go, then stop them, so the response never waits on an orphan.
        if not exited.cancelled() and exited.exception() is not None:
            return  # never started: nothing left behind
        if self._stdout_open or (self._stderr is not None and not self._stderr.done.done()):
            loop = self.runner.processes.loop
            self._exit_timer = loop.call_later(self.config.kill_grace, self._kill_leftovers)

    def _kill_leftovers(self) -> None:
        self.runner.processes.kill_leftovers(self.child)

    def _close_stdout(self) -> None:
        self._stdout_open = False
        self.child.close_fd(self.child.stdout)

    # -- stderr ---------------------------------------------------------------------------

    def _drain_stderr(self) -> None:
        fd = self.child.stderr
        if fd is None:
            return
        self._stderr = PipeDrain(fd, self._on_stderr)

    def _on_stderr(self, data: bytes) -> None:
        if self._splitter is None:  # most handlers write nothing there
            self._splitter = self.runner.function_log.splitter()
        self.runner.function_log.write("stderr", self._splitter.feed(data))
        if self.config.write_debug:
            self._stderr_tail += data
            del self._stderr_tail[:-_STDERR_TAIL]

    def _flush_stderr(self) -> None:
        if self._splitter is not None:
            self.runner.function_log.write("stderr", self._splitter.flush())
            self._splitter = None

    async def _stderr_closed(self) -> None:
        """Wait for the handler's last stderr lines (bounded: an orphan may hold the pipe)."""
        if self._stderr is not None:
            self._stderr.read_now()  # its end of file is usually there, its event not yet seen
        if self._stderr is None or self._stderr.done.done():
            self._flush_stderr()
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._stderr.done), self.config.kill_grace)
        except TimeoutError:
            pass
        self._flush_stderr()
