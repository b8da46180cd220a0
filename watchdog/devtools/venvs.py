"""Per-function virtual environments, cached by the hash of their requirements files.

A venv is made ``--without-pip`` (a few milliseconds) and given a ``.pth`` file pointing at
the site-packages of the interpreter running fwatchdog: pip, aiohttp and uvloop (which the
python3-http entry point needs) are then already there, so only the handler's own requirements
are downloaded. ``python -m venv --system-site-packages`` would not do: from inside a venv it
exposes the base interpreter's packages, not the venv's.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from . import DevError

CACHE_ENV = "FWATCHDOG_CACHE_DIR"
_COMPLETE_MARKER = ".fwatchdog-complete"


def cache_root(env: Mapping[str, str]) -> Path:
    """``$FWATCHDOG_CACHE_DIR``, else ``$XDG_CACHE_HOME/fwatchdog``, else ``~/.cache/fwatchdog``."""
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fwatchdog"


def venv_key(requirement_files: Sequence[Path]) -> str:
    """Hash of the requirements' contents and of the interpreter the venv is built on."""
    digest = hashlib.sha256()
    digest.update(f"{sys.version}\0{sys.prefix}\0".encode())
    for path in requirement_files:
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def has_requirements(path: Path) -> bool:
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return True
    return False


def ensure_venv(requirement_files: Sequence[Path], cache: Path, output: IO[bytes] | None) -> Path:
    """The venv for these requirements, created (pip's output going to ``output``) if missing.

    A lock file serialises concurrent ``up`` runs; a venv whose install did not finish has no
    completion marker and is rebuilt.
    """
    root = cache / "venvs"
    root.mkdir(parents=True, exist_ok=True)
    path = root / venv_key(requirement_files)
    with open(root / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / _COMPLETE_MARKER).exists():
            return path
        if path.exists():
            shutil.rmtree(path)
        _create(path)
        for requirements in requirement_files:
            if has_requirements(requirements):
                _pip_install(path, requirements, output)
        (path / _COMPLETE_MARKER).touch()
    return path


def bin_dir(venv_path: Path) -> Path:
    return venv_path / "bin"


def _create(path: Path) -> None:
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    python = bin_dir(path) / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    parents = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(site, "_fwatchdog_parent.pth").write_text("".join(f"{p}\n" for p in parents))


def _pip_install(path: Path, requirements: Path, output: IO[bytes] | None) -> None:
    argv = [
        str(bin_dir(path) / "python"),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--progress-bar",
        "on" if output is None or output.isatty() else "off",
        "-r",
        str(requirements),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_USER")}
    result = subprocess.run(argv, stdout=output, stderr=subprocess.STDOUT, env=env, check=False)
    if result.returncode != 0:
        raise DevError(f"pip install -r {requirements} failed with exit status {result.returncode}")
