"""The import package is ``fwatchdog``: PyPI's file watcher ``watchdog`` (a dependency of mkdocs,
streamlit and many developer tools) installs beside it, and both work. The source folder stays
``watchdog/``; the wheel maps it onto ``fwatchdog``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, RunningWatchdog, free_port, stop_process, wait_until_serving

pytestmark = pytest.mark.soak  # a real pip install: ~40 s
# Nothing of the checkout on the path: only what the venv installed counts.
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("coexist") / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", str(where)], check=True, timeout=120, env=CLEAN_ENV
    )
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "-q", "--no-input"]
    # PyPI's watchdog first, then the project: the second install must not touch the first.
    subprocess.run([*pip, "watchdog>=4"], check=True, timeout=300, cwd=where, env=CLEAN_ENV)
    subprocess.run([*pip, str(ROOT)], check=True, timeout=600, cwd=where, env=CLEAN_ENV)
    return where


def test_pypi_watchdog_still_watches_files(venv: Path, tmp_path: Path) -> None:
    script = (
        "import sys, time, pathlib\n"
        "from watchdog.observers import Observer\n"
        "from watchdog.events import FileSystemEventHandler\n"
        "seen = []\n"
        "class Handler(FileSystemEventHandler):\n"
        "    def on_created(self, event): seen.append(event.src_path)\n"
        "observer = Observer(); observer.schedule(Handler(), sys.argv[1]); observer.start()\n"
        "target = pathlib.Path(sys.argv[1], 'new.txt'); target.write_text('x')\n"
        "deadline = time.monotonic() + 20\n"
        "while str(target) not in seen and time.monotonic() < deadline: time.sleep(0.05)\n"
        "observer.stop(); observer.join()\n"
        "print('seen' if str(target) in seen else 'missed')\n"
    )
    result = run(venv, ["python", "-c", script, str(tmp_path)])
    assert result.stdout.strip() == "seen", result.stderr


def test_fwatchdog_imports_and_its_console_script_serves(venv: Path, tmp_path: Path) -> None:
    assert run(venv, ["python", "-m", "fwatchdog", "--version"]).stdout.startswith("fwatchdog ")
    port, metrics_port = free_port(), free_port()
    env = {**CLEAN_ENV, "TMPDIR": str(tmp_path), "fprocess": "cat"}
    env |= {"port": str(port), "metrics_port": str(metrics_port)}
    log_path = tmp_path / "watchdog.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(venv / "bin" / "fwatchdog")], env=env, cwd=venv, stdout=log, stderr=log
        )
    wd = RunningWatchdog(proc, port, metrics_port, log_path, tmp_path)
    try:
        wait_until_serving(wd, timeout=30)
        assert wd.request("POST", "/", body=b"ping").body == b"ping"
    finally:
        stop_process(proc)


def run(venv: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    program = str(venv / "bin" / argv[0])
    # cwd outside the checkout, so its watchdog/ folder cannot shadow either package.
    return subprocess.run(
        [program, *argv[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=venv,
        env=CLEAN_ENV,
        check=True,
    )
