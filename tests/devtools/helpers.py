"""Running the developer commands as real child processes in a temporary project folder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import PYTHON, ROOT


def dev_env(project: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(project / "home"),
        # The checkout under test, whatever is installed; the venv cache stays in the test.
        "PYTHONPATH": str(ROOT),
        "FWATCHDOG_CACHE_DIR": str(project / "cache"),
    }
    env.update(extra)
    return env


def fwatchdog(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``fwatchdog ARGS`` run in ``project``, to completion."""
    return fwatchdog_input(project, "", *args, check=check)


def fwatchdog_input(
    project: Path, stdin: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``fwatchdog ARGS < stdin`` run in ``project``, to completion."""
    result = subprocess.run(
        [PYTHON, "-m", "watchdog", *args],
        input=stdin,
        cwd=project,
        env=dev_env(project),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"fwatchdog {' '.join(args)}: {result.returncode}\n{result.stderr}")
    return result


def tree(root: Path) -> set[str]:
    """Every file under ``root``, as paths relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
