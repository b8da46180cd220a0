"""prefork: Python handlers forked from a warm zygote, against real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from conftest import FIXTURES, PYTHON, RunningWatchdog, leftovers, watchdog_env

from watchdog.forkserver import NAME as FORK_SERVER_NAME
from watchdog.prefork import ZYGOTE_SCRIPT

PREFORK = FIXTURES / "prefork"


def start_warm(start_watchdog, script: str, **env: str) -> RunningWatchdog:
    wd: RunningWatchdog = start_watchdog(
        fprocess=f"{PYTHON} {PREFORK / script}", prefork="true", **env
    )
    wd.wait_for_log("prefork: zygote")
    return wd


def zygote_pid(wd: RunningWatchdog) -> int:
    for proc in psutil.Process(wd.proc.pid).children():
        if any(arg.endswith(ZYGOTE_SCRIPT.name) for arg in proc.cmdline()):
            return proc.pid
    raise AssertionError("no zygote running")


def has_zygote(wd: RunningWatchdog) -> bool:
    try:
        zygote_pid(wd)
    except AssertionError:
        return False
    return True


def wait_until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def probe(wd: RunningWatchdog, body: bytes = b"") -> dict[str, object]:
    reply = wd.request("POST", "/a/path?q=1", body=body)
    assert reply.status == 200, reply.text
    return json.loads(reply.text)  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", ["auto", "serializing", "streaming"])
def test_the_official_template_answers_from_the_zygote(start_watchdog, mode: str) -> None:
    wd = start_warm(start_watchdog, "index.py", mode=mode)
    for body in (b"hello", b"two\nlines"):
        reply = wd.request("POST", "/", body=body)
        assert reply.status == 200
        assert reply.body == body + b"\n"
    assert 'fwatchdog_prefork_events_total{event="warm"} 1.0' in wd.metrics()


def test_every_request_gets_fresh_state_stdio_env_and_argv(start_watchdog) -> None:
    wd = start_warm(start_watchdog, "probe.py", MY_SETTING="kept")
    for _ in range(3):
        seen = probe(wd, b"the body")
        assert seen["count"] == 1 and seen["calls"] == 1
        assert seen["body"] == "the body"
        assert seen["fds"] == []  # nothing beyond stdin, stdout and stderr
        assert any(str(arg).endswith(ZYGOTE_SCRIPT.name) for arg in seen["parent"])  # type: ignore[attr-defined]
        # __main__ as `python probe.py` makes it: the absolute path, the module in sys.modules.
        assert seen["name"] == "__main__" and seen["file"] == str(PREFORK / "probe.py")
        assert seen["package"] is None and seen["in_sys_modules"] is True
        assert seen["pgid_is_pid"] is True
        assert seen["argv"] == [str(PREFORK / "probe.py")]
        env = seen["env"]
        assert isinstance(env, dict)
        assert env["Http_Method"] == "POST" and env["Http_Path"] == "/a/path"
        assert env["MY_SETTING"] == "kept"
        assert "FWATCHDOG_HANDLER" in env
    # The variables of one request do not linger into the next.
    reply = wd.request("GET", "/", headers={"X-Only-Once": "1"})
    assert "Http_X_Only_Once" in json.loads(reply.text)["env"]
    assert "Http_X_Only_Once" not in probe(wd)["env"]


def test_exit_codes_and_uncaught_exceptions(start_watchdog) -> None:
    wd = start_warm(start_watchdog, "exits.py")
    assert wd.request("POST", "/", body=b"ok").text == "ok\n"
    reply = wd.request("POST", "/", body=b"code 3")
    assert reply.status == 500 and "exit status 3" in reply.text
    reply = wd.request("POST", "/", body=b"raise")
    assert reply.status == 500 and "exit status 1" in reply.text
    wd.wait_for_log("RuntimeError: handler failed on purpose")
    assert "Traceback (most recent call last)" in wd.logs()
    # As the interpreter prints it: the handler's frames only, none of the zygote's.
    assert f'File "{PREFORK / "exits.py"}", line' in wd.logs()
    assert ZYGOTE_SCRIPT.name not in wd.logs() and "runpy" not in wd.logs()


def test_exec_timeout_kills_a_stubborn_child_and_its_grandchild(start_watchdog) -> None:
    wd = start_warm(start_watchdog, "stubborn.py", exec_timeout="1s", kill_grace="0.2s")
    reply = wd.request("POST", "/")
    assert reply.status == 504
    wait_until(lambda: leftovers(wd.proc.pid) == [])
    assert wd.request("POST", "/").status == 504  # the zygote still serves


def test_max_inflight_holds(start_watchdog) -> None:
    wd = start_warm(start_watchdog, "slow.py", max_inflight="1")
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: wd.request("POST", "/", body=b"0.5"), range(4)))
    statuses = sorted(r.status for r in replies)
    assert statuses.count(200) >= 1 and 429 in statuses


def test_a_zygote_killed_under_load_loses_no_request(start_watchdog) -> None:
    wd = start_warm(start_watchdog, "slow.py")
    first = zygote_pid(wd)
    with ThreadPoolExecutor(8) as pool:
        pending = [pool.submit(wd.request, "POST", "/", b"0.3", None, 20) for _ in range(24)]
        wait_until(lambda: len(psutil.Process(first).children()) > 0)
        os.kill(first, signal.SIGKILL)
        replies = [future.result() for future in pending]
    assert [r.status for r in replies] == [200] * 24, [(r.status, r.text) for r in replies]
    assert all(r.text == "done\n" for r in replies), [r.text for r in replies]
    wd.wait_for_log(f"zygote {first} died")
    wait_until(lambda: 'fwatchdog_prefork_events_total{event="warm"} 2.0' in wd.metrics())
    assert 'event="died"} 1.0' in wd.metrics()
    assert zygote_pid(wd) != first
    assert wd.request("POST", "/", body=b"0").text == "done\n"
    wait_until(lambda: leftovers(wd.proc.pid) == [])


def test_a_broken_import_falls_back_to_spawning(start_watchdog) -> None:
    wd: RunningWatchdog = start_watchdog(
        fprocess=f"{PYTHON} {PREFORK / 'broken.py'}", prefork="true"
    )
    wd.wait_for_log("failed to warm up")
    assert "ModuleNotFoundError" in wd.logs()
    reply = wd.request("POST", "/")
    assert reply.status == 500 and "exit status 1" in reply.text
    assert 'event="warmup_failed"} 1.0' in wd.metrics()


def test_health_and_the_first_request_do_not_wait_for_the_warm_up(start_watchdog, tmp_path) -> None:
    gate = tmp_path / "gate"  # the zygote's warm-up blocks until this file exists
    wd: RunningWatchdog = start_watchdog(
        fprocess=f"{PYTHON} {PREFORK / 'slow_warmup.py'}", prefork="true", PREFORK_GATE=str(gate)
    )
    # start_watchdog returned on /_/health 200, with the zygote started but not warm.
    wait_until(lambda: has_zygote(wd))
    assert 'event="warm"' not in wd.metrics()
    first = json.loads(wd.request("POST", "/").text)
    assert first["comm"] == FORK_SERVER_NAME  # spawned while the zygote warms up
    assert 'event="warm"' not in wd.metrics() and "warm in" not in wd.logs()

    gate.touch()
    wait_until(lambda: 'fwatchdog_prefork_events_total{event="warm"} 1.0' in wd.metrics())
    warm = json.loads(wd.request("POST", "/").text)
    assert any(arg.endswith(ZYGOTE_SCRIPT.name) for arg in warm["cmdline"])


def test_the_child_waits_for_its_threads_and_runs_atexit_as_python_does(start_watchdog) -> None:
    script = PREFORK / "lingering.py"
    fresh = subprocess.run([PYTHON, str(script)], capture_output=True, timeout=30, check=True)
    assert fresh.stdout == b"main done\nthread finished\natexit ran\n"
    wd = start_warm(start_watchdog, "lingering.py")
    assert wd.request("POST", "/").body == fresh.stdout


@pytest.mark.parametrize("fprocess", ["cat", "python3", f"{PYTHON} --help-env x.py"])
def test_a_non_python_fprocess_is_refused_at_start(tmp_path, fprocess: str) -> None:
    env = watchdog_env(tmp_path, fprocess=fprocess, prefork="true")
    done = subprocess.run([PYTHON, "-m", "watchdog"], env=env, capture_output=True, timeout=30)
    assert done.returncode == 2
    assert b"prefork" in done.stderr and b"fprocess" in done.stderr
