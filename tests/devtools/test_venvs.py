"""The per-function venv cache: keyed by the requirements' contents, reused, rebuilt when an
install did not finish; fwatchdog's own packages (aiohttp, uvloop) are visible inside."""

from __future__ import annotations

import subprocess
from pathlib import Path

from watchdog.devtools.venvs import bin_dir, ensure_venv


def test_venv_is_cached_by_requirements_hash(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    # Already satisfied through fwatchdog's own environment: pip runs, downloads nothing.
    requirements.write_text("aiohttp>=3.9\n# a comment\n")
    log = tmp_path / "pip.log"
    with open(log, "wb") as out:
        first = ensure_venv([requirements], tmp_path / "cache", out)
    assert "Requirement already satisfied: aiohttp" in log.read_text()
    marker_mtime = (first / ".fwatchdog-complete").stat().st_mtime_ns

    again = ensure_venv([requirements], tmp_path / "cache", None)
    assert again == first
    assert (first / ".fwatchdog-complete").stat().st_mtime_ns == marker_mtime

    requirements.write_text("aiohttp>=3.9\nuvloop\n")
    assert ensure_venv([requirements], tmp_path / "cache", None) != first

    probe = subprocess.run(
        [str(bin_dir(first) / "python"), "-c", "import sys, aiohttp, uvloop; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == str(first)


def test_unfinished_venv_is_rebuilt(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("")
    path = ensure_venv([requirements], tmp_path / "cache", None)
    (path / ".fwatchdog-complete").unlink()
    (path / "half-written").write_text("")
    assert ensure_venv([requirements], tmp_path / "cache", None) == path
    assert not (path / "half-written").exists() and (path / ".fwatchdog-complete").exists()
