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
from collections.abc import Coroutine, Iterable, Mapping

from ..cgi import CGIHead, CGIHeaderError, parse_head, request_variables
from ..config import WatchdogConfig
from ..forkserver import ForkServer
from ..http import Request, Response, StreamResponse
from ..http.express import NOTE
from ..limits import (
    Admission,
    BodyTimeout,
    BodyTooLarge,
    ClientStalled,
    Deadlines,
    TaskTimeout,
    read_body,
    seconds_or_none,
    time_left,
    within_write_timeout,
)
from ..logs import FunctionLog
from ..metrics import WatchdogMetrics
from ..pipes import read_chunk, write_all
from ..prefork import PreforkSpawner
from ..process import ProcessTable, SpawnError, describe_exit, resolve_program
from ..responses import DURATION_HEADER, duration_value, format_seconds, text_response
from .fork_express import ForkExpress, ForkNote
from .fork_handler import ForkedHandler, Forking, ForkPolicy, StdinStart

log = logging.getLogger("watchdog.fork")

AUTO_RESPONSE_BUFFER = 256 * 1024


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
        self.forking = Forking(config, POLICIES[config.mode], processes, metrics, function_log)
        self.processes = processes
        self.metrics = metrics
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

    def express(self, admission: Admission) -> ForkExpress | None:
        if not ForkExpress.suits(self.forking):
            return None
        exec_timeout = self.config.exec_timeout
        deadlines = Deadlines(self.processes.loop, exec_timeout) if exec_timeout else None
        return ForkExpress(self, admission, deadlines)

    def healthy(self) -> bool:
        return self.processes.can_spawn_handlers

    async def ready(self) -> bool:
        return True

    def exit_status(self) -> asyncio.Future[int] | None:
        return None

    async def stop(self, grace: float) -> None:
        await self.processes.kill_all(grace)

    def spawn(self, variables: dict[str, str], stdin: StdinStart) -> ForkedHandler:
        """Start a handler with ``variables`` added to its environment and the start of its
        stdin in the pipe.

        Raises:
            SpawnError: it cannot be started.
        """
        child = self.processes.spawn_handler(
            variables, merge_stderr=self.config.combine_output, before_start=stdin.fill
        )
        return ForkedHandler(self.forking, child)

    def variables(
        self, method: str, path: str, query: str, headers: Iterable[tuple[str, str]]
    ) -> dict[str, str]:
        """The ``Http_*`` variables of a request, if the handler is given them."""
        if not self.config.cgi_headers:
            return {}
        return request_variables(method, path, query, headers)

    def content_type(self, request_headers: Mapping[str, str]) -> str:
        """An answer's Content-Type when the handler does not say: as the classic watchdog's,
        the configured one, else the request's own."""
        return (
            self.config.content_type
            or request_headers.get("Content-Type")
            or "application/octet-stream"
        )

    # -- the ordinary path ----------------------------------------------------------------

    async def handle(self, request: Request, started: float) -> StreamResponse:
        note = request.state.get(NOTE)
        if isinstance(note, ForkNote):
            call = _Call(self, request, note.handler, started, None)
            left = time_left(seconds_or_none(self.config.exec_timeout), started)
            return await self._serve(call, call.resume(note), left)
        body: bytearray | None = None
        loop = self.processes.loop  # get_running_loop() makes a getpid system call each time
        read_deadline = loop.time() + self.config.read_timeout if self.config.read_timeout else None
        if self.forking.policy.buffer_request:
            try:
                body = await read_body(request, read_deadline, self.config.max_body_size)
            except BodyTimeout:
                return self._body_timeout(started)
            except BodyTooLarge as exc:
                return text_response(413, exc.text, started)
        stdin = StdinStart(*_body_so_far(request, body))
        try:
            handler = self.spawn(self._request_env(request), stdin)
        except SpawnError as exc:
            log.error("%s", exc)
            return text_response(500, f"{exc}\n", started)
        call = _Call(self, request, handler, started, read_deadline)
        return await self._serve(call, call.run(stdin), seconds_or_none(self.config.exec_timeout))

    async def _serve(
        self, call: _Call, work: Coroutine[None, None, StreamResponse], timeout: float | None
    ) -> StreamResponse:
        """Await ``work``, the call's answer, within ``timeout``; answer its failures."""
        try:
            async with TaskTimeout(self.processes.loop, timeout):
                return await work
        except TimeoutError:
            self.metrics.killed.labels(reason="exec_timeout").inc()
            limit = format_seconds(self.config.exec_timeout)
            log.warning("Killing %s: exceeded exec_timeout of %s", call.child.pid, limit)
            return await call.fail(504, f"Function exceeded its exec_timeout of {limit}\n")
        except SpawnError as exc:  # reported by the fork server after the request went out
            log.error("%s", exc)
            return text_response(500, f"{exc}\n", call.started)
        except BodyTimeout:
            return await call.fail(408, _body_timeout_text(self.config.read_timeout))
        except ClientStalled:
            self.metrics.killed.labels(reason="client_stalled").inc()
            return await call.fail(504, "Client did not read the response within write_timeout\n")
        finally:
            await call.handler.finish()

    def _request_env(self, request: Request) -> dict[str, str]:
        return self.variables(
            request.method, request.path, request.query_string, request.headers.items()
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


class _Call:
    """One request served by one handler process, on the ordinary path."""

    def __init__(
        self,
        runner: ForkRunner,
        request: Request,
        handler: ForkedHandler,
        started: float,
        read_deadline: float | None,
    ) -> None:
        self.runner = runner
        self.config = runner.config
        self.request = request
        self.handler = handler
        self.child = handler.child
        self.started = started
        self.read_deadline = read_deadline
        self.response: StreamResponse | None = None

    # -- the request ----------------------------------------------------------------------

    async def run(self, stdin: StdinStart) -> StreamResponse:
        rest = stdin.rest
        if stdin.whole and not rest:
            return await self._respond()  # the whole body is in the pipe, and stdin closed
        if stdin.whole:
            return await self._respond_while_feeding(rest, b"")
        return await self._respond_while_feeding(None, bytes(rest))

    async def resume(self, note: ForkNote) -> StreamResponse:
        """Go on from where the express handed the request over (:mod:`.fork_express`)."""
        if note.timed_out:
            raise TimeoutError
        if isinstance(note.outcome, OSError):
            raise note.outcome
        return await self._answer(note.output, note.outcome)

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
        return await self._answer(output, eof)

    async def _answer(self, output: bytearray, eof: bool) -> StreamResponse:
        """Answer with what the handler wrote so far: all of it (``eof``), or its start."""
        if eof:
            returncode = await self.child.exited
            await self.handler.stderr_closed()
            return self._complete(output, returncode)
        return await self._stream(output)

    async def _read_initial_output(self) -> tuple[bytearray, bool]:
        """Read stdout until EOF (and the handler's exit) or past the policy's buffer (and a
        CGI head, when expected)."""
        collector = self.handler.collector(self.runner.forking.policy.response_buffer)
        while not await collector.fill():
            output = collector.output
            if not (self.config.cgi_response and self._head(output, final=False) is None):
                return output, False
            collector.limit = len(output)  # one more chunk, then look for the head again
        return collector.output, True

    def _complete(self, output: bytearray, returncode: int) -> Response:
        self.handler.count_exit(returncode)
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
        self.handler.close_stdout()
        returncode = await self.child.exited
        self.handler.count_exit(returncode)
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
            response.headers["Content-Type"] = self.runner.content_type(self.request.headers)
        response.headers[DURATION_HEADER] = duration_value(self.started)

    def _failed_response(self, output: bytearray, returncode: int) -> Response:
        what = describe_exit(returncode)
        log.error("Handler %s", what)
        text = what + "\n"
        if self.config.combine_output:
            text += output.decode("utf-8", errors="replace")
        elif self.config.write_debug and self.handler.stderr_tail:
            text += self.handler.stderr_tail.decode("utf-8", errors="replace")
        return text_response(500, text, self.started)

    def _bad_head(self, exc: CGIHeaderError) -> Response:
        text = f"Handler wrote a malformed CGI header block: {exc}"
        log.error("%s", text)
        return text_response(502, text + "\n", self.started)

    # -- failure --------------------------------------------------------------------------

    async def fail(self, status: int, text: str) -> StreamResponse:
        """Answer ``status`` if nothing was sent yet, else cut the connection."""
        await self.handler.kill()
        if self.response is not None:
            self._abort_connection()
            return self.response
        return text_response(status, text, self.started)

    def _abort_connection(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()
