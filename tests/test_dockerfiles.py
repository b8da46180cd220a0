"""Every Dockerfile of the project only COPYs what exists in its build context.

Docker cannot run here, so this is the check a ``docker build`` would make first. Dockerfiles are
parsed with BuildKit's own parser (the ``dockerfile`` package); what ``.dockerignore`` keeps out
of the context counts as missing. The build context of a Dockerfile is its own directory: the
project root for ``Dockerfile.template``, the template folder for ``templates/LANG/Dockerfile``
(which is what ``build --shrinkwrap`` copies, plus the handler in ``function/``, whose skeleton
the template ships).
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import dockerfile
import pytest
from docker.utils.build import exclude_paths

ROOT = Path(__file__).parent.parent
# Not part of the project: tool caches, virtual environments, build outputs.
SKIPPED_DIRS = {".git", ".venv", "venv", "node_modules", "build", "dist", "__pycache__"}
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def project_dockerfiles(root: Path) -> list[Path]:
    """``**/Dockerfile*`` under ``root``, outside hidden and generated directories."""
    return sorted(
        path
        for path in root.rglob("Dockerfile*")
        if path.is_file()
        and not any(
            part in SKIPPED_DIRS or part.startswith(".") for part in path.relative_to(root).parts
        )
    )


def copy_sources(path: Path) -> Iterator[tuple[int, str]]:
    """(line, source) for each COPY/ADD source taken from the build context, ARGs and ENVs
    substituted. Stage copies (``--from``), URLs and heredocs are not from the context."""
    defaults: dict[str, str] = {}
    for command in dockerfile.parse_file(str(path)):
        if command.cmd in ("ARG", "ENV"):
            defaults.update(_declarations(command.value, defaults))
        if command.cmd not in ("COPY", "ADD"):
            continue
        if any(flag.startswith("--from=") for flag in command.flags):
            continue
        heredocs = {f"<<{doc.name}" for doc in command.heredocs}
        for source in command.value[:-1]:
            if source in heredocs or source.startswith("<<") or "://" in source:
                continue
            yield command.start_line, _substitute(source, defaults)


def _declarations(value: tuple[str, ...], known: Mapping[str, str]) -> dict[str, str]:
    # ARG NAME[=default]... and ENV NAME=value... both come as NAME=value words; the legacy
    # `ENV NAME value` form comes as two words.
    if len(value) == 2 and "=" not in value[0]:
        return {value[0]: _substitute(value[1], known)}
    found = {}
    for word in value:
        name, has_value, default = word.partition("=")
        if has_value:
            found[name] = _substitute(default, known)
    return found


def _substitute(text: str, known: Mapping[str, str]) -> str:
    return _VARIABLE.sub(lambda m: known.get(m.group(1) or m.group(2), m.group(0)), text)


def missing_copy_sources(path: Path) -> list[str]:
    """One line per COPY/ADD source of ``path`` that is not in its build context."""
    context = path.parent.resolve()
    sent = sent_to_docker(context)
    problems = []
    for line, source in copy_sources(path):
        where = f"{path}:{line}: COPY source {source!r}"
        relative = posixpath.normpath(source.lstrip("/"))
        if "$" in source:
            problems.append(f"{where} uses an undeclared variable")
        elif not (context / relative).resolve().is_relative_to(context):
            problems.append(f"{where} leaves the build context {context}")
        elif relative == ".":
            continue
        elif not any(context.glob(relative)):
            problems.append(f"{where} does not exist in the build context {context}")
        elif sent is not None and not any(_copy_matches(relative, sent_path) for sent_path in sent):
            problems.append(f"{where} is excluded by {context}/.dockerignore")
    return problems


def sent_to_docker(context: Path) -> set[str] | None:
    """The context's paths that ``docker build`` sends, by its ``.dockerignore`` (docker-py's
    implementation of Docker's rules); None when there is none (everything is sent)."""
    ignore = context / ".dockerignore"
    if not ignore.exists():
        return None
    lines = (line.strip() for line in ignore.read_text().splitlines())
    patterns = [line for line in lines if line and not line.startswith("#")]
    return set(exclude_paths(str(context), patterns))


def _copy_matches(pattern: str, path: str) -> bool:
    # COPY wildcards follow Go's filepath.Match: `*` does not cross a `/`.
    return pattern.count("/") == path.count("/") and fnmatch.fnmatchcase(path, pattern)


def test_the_project_has_its_dockerfile_template() -> None:
    assert ROOT / "Dockerfile.template" in project_dockerfiles(ROOT)


@pytest.mark.parametrize("path", project_dockerfiles(ROOT), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_copy_source_exists_in_the_build_context(path: Path) -> None:
    assert missing_copy_sources(path) == []


def test_the_check_reports_what_a_docker_build_would_not_find(tmp_path: Path) -> None:
    (tmp_path / "function").mkdir()
    (tmp_path / "function" / "handler.py").write_text("")
    (tmp_path / "index.py").write_text("")
    (tmp_path / "secret.env").write_text("")
    (tmp_path / ".dockerignore").write_text("# not sent\n*.env\n")
    (tmp_path / "Dockerfile").write_text(
        "ARG DIR=function\n"
        "FROM scratch AS base\n"
        "COPY --from=base /etc/passwd /x\n"
        "COPY index.py ${DIR}/ /home/app/\n"
        "COPY --chown=app:app function/*.py \\\n"
        "     function/requirements.txt /home/app/function/\n"
        'COPY ["../outside", "/x"]\n'
        "ADD https://example.org/file /x\n"
        "COPY $UNDECLARED /x\n"
        "COPY secret.env /x\n"
        "COPY <<EOF /etc/motd\nhi\nEOF\n"
    )
    assert missing_copy_sources(tmp_path / "Dockerfile") == [
        f"{tmp_path}/Dockerfile:5: COPY source 'function/requirements.txt' does not exist "
        f"in the build context {tmp_path}",
        f"{tmp_path}/Dockerfile:7: COPY source '../outside' leaves the build context {tmp_path}",
        f"{tmp_path}/Dockerfile:9: COPY source '$UNDECLARED' uses an undeclared variable",
        f"{tmp_path}/Dockerfile:10: COPY source 'secret.env' is excluded by "
        f"{tmp_path}/.dockerignore",
    ]
