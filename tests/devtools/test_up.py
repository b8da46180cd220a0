"""``fwatchdog up --watch`` as a real child process, from an empty folder: the three templates
invoked through the gateway, a handler edit picked up, ``logs``, and a shutdown that leaves
no process behind."""

from __future__ import annotations

import http.client
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import PYTHON, Reply, free_port

from watchdog.prefork import ZYGOTE_SCRIPT
from watchdog.testing import call, load_handler

from .helpers import dev_env, fwatchdog, fwatchdog_input

START_TIMEOUT = 90


class Up:
    def __init__(self, project: Path, *args: str) -> None:
        self.project = project
        self.port = free_port()
        self.log = project / "up.out"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "watchdog", "up", "--port", str(self.port), *args],
                cwd=project,
                env=dev_env(project),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, needle: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} not in the output of up:\n{self.output()}")

    def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return Reply(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def kill(self) -> None:
        for child in self.descendants() if self.proc.poll() is None else []:
            child.kill()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def async_result(project: Path, gateway: str, call_id: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = fwatchdog(
            project, "activations", "--gateway", gateway, "result", call_id, check=False
        )
        if result.returncode == 0:
            return result.stdout
        time.sleep(0.1)
    raise AssertionError(f"no result for {call_id}: {result.stderr}")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    fwatchdog(tmp_path, "new", "hello", "--lang", "python3-http", "-q")
    fwatchdog(tmp_path, "new", "classic", "--lang", "python3", "-a", "stack.yaml", "-q")
    # A second python3-http function wants the same upstream port: up moves it.
    fwatchdog(tmp_path, "new", "twin", "--lang", "python3-http", "-a", "stack.yaml", "-q")
    fwatchdog(tmp_path, "new", "raw", "--lang", "dockerfile", "-a", "stack.yaml", "-q")
    with open(tmp_path / "stack.yaml", "a") as stack:
        stack.write("    environment:\n      GREETING: howdy\n")  # for raw, the last function
    (tmp_path / "raw" / "Dockerfile").write_text(
        (tmp_path / "raw" / "Dockerfile").read_text().replace('fprocess="cat"', 'fprocess="env"')
    )
    return tmp_path


@pytest.fixture
def up(project: Path) -> Iterator[Up]:
    running = Up(project, "--watch")
    try:
        yield running
    finally:
        running.kill()


def test_up_invoke_watch_logs_and_clean_shutdown(project: Path, up: Up) -> None:
    up.wait_for_output("gateway: http://")
    assert (project / ".fwatchdog" / "up.json").is_file()

    hello = up.request("POST", "/function/hello/greet?x=1", b"Ada")
    assert (hello.status, hello.text) == (200, "Hello, Ada!")
    # The plain-pytest helper gives what the running template answers.
    expected = call(load_handler(project / "hello").handle, b"Ada", path="/greet")
    assert (expected.status, expected.text) == (hello.status, hello.text)
    assert hello.headers["Content-Type"] == expected.headers["Content-Type"]

    twin = up.request("POST", "/function/twin", b"Twin")
    assert (twin.status, twin.text) == (200, "Hello, Twin!")

    classic = up.request("POST", "/function/classic", b"Bob")
    assert (classic.status, classic.text) == (200, "Hello, Bob!\n")

    # dockerfile: fprocess and ENV from the handler's own Dockerfile, plus the stack's
    # environment.
    raw = up.request("GET", "/function/raw").text
    assert "GREETING=howdy" in raw and "write_debug=false" in raw
    assert "OPENFAAS_NAME=raw" in raw

    # fwatchdog invoke against it, synchronously and queued (async), for each template.
    gateway = f"http://127.0.0.1:{up.port}"
    expected_answers = {
        "hello": "Hello, Di!",
        "classic": "Hello, Di!\n",
        "raw": "OPENFAAS_NAME=raw",
    }
    for name, answer in expected_answers.items():
        sync = fwatchdog_input(project, "Di", "invoke", name, "--gateway", gateway)
        assert answer in sync.stdout
        queued = fwatchdog_input(project, "Di", "invoke", name, "--async", "--gateway", gateway)
        call_id = queued.stderr.strip().rsplit(" ", 1)[-1]
        assert "submitted asynchronously" in queued.stderr and call_id
        assert answer in async_result(project, gateway, call_id)

    listed = up.request("GET", "/system/functions").text
    for name in ("hello", "twin", "classic", "raw"):
        assert f'"name": "{name}"' in listed or f'"name":"{name}"' in listed

    logs = fwatchdog(project, "logs", "hello", "--no-follow")
    assert "Upstream ready" in logs.stdout
    follower = subprocess.Popen(
        [PYTHON, "-m", "watchdog", "logs", "classic"],
        cwd=project,
        env=dev_env(project),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert follower.stdout is not None
        assert b"fwatchdog up: starting classic" in follower.stdout.readline()
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()

    # --watch: an edit to the handler is served after an automatic restart.
    (project / "hello" / "handler.py").write_text(
        "def handle(event, context):\n    return {'statusCode': 201, 'body': {'edited': True}}\n"
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        edited = up.request("POST", "/function/hello", b"")
        if edited.status == 201:
            break
        time.sleep(0.2)
    assert (edited.status, edited.text) == (201, '{"edited": true}'), up.output()
    assert "hello: change detected, restarting" in up.output()

    family = up.descendants()
    assert len(family) >= 8  # gateway, 4 watchdogs, 2 upstreams, fork servers
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(30) == 0, up.output()
    gone, alive = psutil.wait_procs(family, timeout=5)
    assert not alive, f"left behind: {alive}"
    assert not (project / ".fwatchdog" / "up.json").exists()


def zygotes(up: Up) -> list[int]:
    found = []
    for proc in up.descendants():
        try:
            if any(arg.endswith(ZYGOTE_SCRIPT.name) for arg in proc.cmdline()):
                found.append(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def wait_for_new_zygote(up: Up, old: int = 0) -> int:
    """The pid of the one prefork zygote under ``up`` once it is not ``old``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = zygotes(up)
        if len(found) == 1 and found[0] != old:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no new zygote (old: {old}, now: {zygotes(up)}):\n{up.output()}")


def test_up_runs_the_python3_template_with_prefork_and_watch_restarts_it(tmp_path: Path) -> None:
    # The template's Dockerfile sets ENV prefork="true"; up takes the image's environment.
    fwatchdog(tmp_path, "new", "classic", "--lang", "python3", "-q")
    running = Up(tmp_path, "--watch")
    try:
        running.wait_for_output("watching")
        assert running.request("POST", "/function/classic", b"Bob").text == "Hello, Bob!\n"
        before = wait_for_new_zygote(running)

        (tmp_path / "classic" / "handler.py").write_text(
            "def handle(req):\n    return f'Edited, {req}!'\n"
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            edited = running.request("POST", "/function/classic", b"Bob")
            if edited.text == "Edited, Bob!\n":
                break
            time.sleep(0.2)
        assert (edited.status, edited.text) == (200, "Edited, Bob!\n"), running.output()
        assert "classic: change detected, restarting" in running.output()
        wait_for_new_zygote(running, old=before)  # the new handler's own zygote
    finally:
        running.kill()


def test_up_reports_a_function_that_cannot_start(tmp_path: Path) -> None:
    fwatchdog(tmp_path, "new", "broken", "--lang", "python3-http", "-q")
    (tmp_path / "broken" / "handler.py").write_text("def handle(:\n")
    with open(tmp_path / "stack.yaml", "a") as stack:
        stack.write("    environment:\n      upstream_start_timeout: 2s\n")
    result = subprocess.run(
        [PYTHON, "-m", "watchdog", "up", "--port", str(free_port())],
        cwd=tmp_path,
        env=dev_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "broken exited with status 1 while starting" in result.stderr
    assert "SyntaxError" in result.stderr


def test_killed_up_takes_its_processes_with_it(tmp_path: Path) -> None:
    """Even SIGKILL (nothing to clean up with): every child gets SIGTERM from the kernel."""
    fwatchdog(tmp_path, "new", "echo", "--lang", "dockerfile", "-q")
    running = Up(tmp_path)
    try:
        running.wait_for_output("gateway: http://")
        assert running.request("POST", "/function/echo", b"hi").body == b"hi"
        family = running.descendants()
        running.proc.kill()
        running.proc.wait(10)
        gone, alive = psutil.wait_procs(family, timeout=15)
        assert not alive, f"left behind: {alive}"
    finally:
        running.kill()


def test_watch_ignores_what_up_writes_into_a_handler_at_the_project_root(tmp_path: Path) -> None:
    # faas-cli's usual layout for lang: dockerfile is `handler: .`: build/ and .fwatchdog/
    # (logs, the queue) are then inside the watched folder.
    fwatchdog(tmp_path, "new", "echo", "--lang", "dockerfile", "-q")
    for entry in (tmp_path / "echo").iterdir():
        entry.rename(tmp_path / entry.name)
    stack = tmp_path / "stack.yaml"
    stack.write_text(stack.read_text().replace("handler: ./echo", "handler: ."))
    running = Up(tmp_path, "--watch")
    try:
        running.wait_for_output("watching")
        for _ in range(3):
            assert running.request("POST", "/function/echo", b"hi").body == b"hi"
            assert running.request("POST", "/async-function/echo", b"hi").status == 202
        time.sleep(1.5)  # several debounce periods
        assert "change detected" not in running.output()
        (tmp_path / "Dockerfile").write_text((tmp_path / "Dockerfile").read_text() + "\n")
        running.wait_for_output("echo: change detected, restarting", timeout=30)
    finally:
        running.kill()
