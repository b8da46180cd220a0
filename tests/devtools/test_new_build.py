"""``fwatchdog new`` and ``fwatchdog build --shrinkwrap`` against what faas-cli writes
(/work/shared/reference/ecosystem.md sections 1.2 and 1.3), run from an empty folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchdog.devtools import DevError
from watchdog.devtools.stack import load_stack, parse_stack
from watchdog.devtools.templates import bundled_dir, dockerfile_env

from .helpers import fwatchdog, tree

LANGS = ("python3-http", "python3", "dockerfile")
# faas-cli's build/NAME for python3-http (ecosystem.md 1.3), plus the template's optional
# function/__init__.py (2.2) and the user's own file added to the handler folder below.
FAAS_CLI_PYTHON_TREE = {
    "Dockerfile",
    "template.yml",
    "index.py",
    "requirements.txt",
    "function/handler.py",
    "function/handler_test.py",
    "function/requirements.txt",
    "function/tox.ini",
    "function/__init__.py",
}


def test_new_writes_the_handler_folder_and_faas_cli_stack_file(tmp_path: Path) -> None:
    result = fwatchdog(tmp_path, "new", "hello", "--lang", "python3-http", "--prefix", "ghcr.io/me")
    assert "Notes:" in result.stdout and "handle(event, context)" in result.stdout
    assert (tmp_path / "stack.yaml").read_text() == (
        "version: 1.0\n"
        "provider:\n"
        "  name: openfaas\n"
        "  gateway: http://127.0.0.1:8080\n"
        "functions:\n"
        "  hello:\n"
        "    lang: python3-http\n"
        "    handler: ./hello\n"
        "    image: ghcr.io/me/hello:latest\n"
    )
    assert tree(tmp_path / "hello") == tree(bundled_dir() / "python3-http" / "function")  # type: ignore[operator]
    gitignore = (tmp_path / ".gitignore").read_text().splitlines()
    assert {"template", "build", ".secrets"} <= set(gitignore)

    fwatchdog(tmp_path, "new", "classic", "--lang", "python3", "--append", "stack.yaml", "-q")
    fwatchdog(tmp_path, "new", "raw", "--lang", "dockerfile", "--append", "stack.yaml", "-q")
    stack = load_stack(tmp_path / "stack.yaml")
    assert [(f.name, f.lang, f.image) for f in stack.functions] == [
        ("hello", "python3-http", "ghcr.io/me/hello:latest"),
        ("classic", "python3", "classic:latest"),
        ("raw", "dockerfile", "raw:latest"),
    ]
    assert (tmp_path / "raw" / "Dockerfile").is_file()


def test_new_refuses_bad_input_with_clear_errors(tmp_path: Path) -> None:
    unknown = fwatchdog(tmp_path, "new", "fn", "--lang", "cobol", check=False)
    assert unknown.returncode == 1
    assert "unknown language 'cobol'" in unknown.stderr
    for lang in LANGS:
        assert lang in unknown.stderr
    assert not (tmp_path / "fn").exists() and not (tmp_path / "stack.yaml").exists()

    bad_name = fwatchdog(tmp_path, "new", "Bad_Name", "--lang", "python3", check=False)
    assert bad_name.returncode == 1 and "invalid function name 'Bad_Name'" in bad_name.stderr

    fwatchdog(tmp_path, "new", "one", "--lang", "python3", "-q")
    again = fwatchdog(tmp_path, "new", "two", "--lang", "python3", check=False)
    assert again.returncode == 1 and "--append" in again.stderr
    same = fwatchdog(tmp_path, "new", "one", "--lang", "python3", "-a", "stack.yaml", check=False)
    assert same.returncode == 1 and "already exists" in same.stderr


def test_project_template_folder_wins_and_is_listed(tmp_path: Path) -> None:
    """Templates pulled by faas-cli into ./template/ are found first (official ones work)."""
    own = tmp_path / "template" / "node20"
    (own / "function").mkdir(parents=True)
    (own / "template.yml").write_text("language: node20\nfprocess: node index.js\n")
    (own / "function" / "handler.js").write_text("module.exports = async () => 'hi'\n")
    listed = fwatchdog(tmp_path, "new", "--list")
    assert "- node20" in listed.stdout and "- python3-http" in listed.stdout
    fwatchdog(tmp_path, "new", "js", "--lang", "node20")
    assert tree(tmp_path / "js") == {"handler.js"}


def test_shrinkwrap_writes_the_faas_cli_build_tree(tmp_path: Path) -> None:
    fwatchdog(tmp_path, "new", "hello", "--lang", "python3-http", "-q")
    fwatchdog(tmp_path, "new", "classic", "--lang", "python3", "-a", "stack.yaml", "-q")
    fwatchdog(tmp_path, "new", "raw", "--lang", "dockerfile", "-a", "stack.yaml", "-q")
    handler = tmp_path / "hello"
    (handler / "handler.py").write_text("def handle(event, context):\n    return 'mine'\n")
    (handler / "util.py").write_text("X = 1\n")
    (handler / "data").mkdir()
    (handler / "data" / "words.txt").write_text("a\n")
    (handler / "build").mkdir()  # faas-cli skips handler entries named build and template
    (handler / "build" / "junk").write_text("no\n")
    (tmp_path / "raw" / "run.sh").write_text("#!/bin/sh\ncat\n")
    (tmp_path / "raw" / "run.sh").chmod(0o755)

    result = fwatchdog(tmp_path, "build", "--shrinkwrap")
    for name in ("hello", "classic", "raw"):
        assert f"{name} shrink-wrapped to ./build/{name}" in result.stdout

    build = tmp_path / "build"
    assert tree(build / "hello") == FAAS_CLI_PYTHON_TREE | {
        "function/util.py",
        "function/data/words.txt",
    }
    assert (build / "hello" / "function" / "handler.py").read_text().endswith("'mine'\n")
    assert tree(build / "classic") == FAAS_CLI_PYTHON_TREE
    # lang: dockerfile: the handler folder itself is the build context, modes kept.
    assert tree(build / "raw") == {"Dockerfile", "run.sh"}
    assert (build / "raw" / "run.sh").stat().st_mode & 0o111

    # A rebuild starts from scratch: a file deleted from the handler disappears.
    (handler / "util.py").unlink()
    fwatchdog(tmp_path, "build", "--shrinkwrap", "--filter", "hello")
    assert not (build / "hello" / "function" / "util.py").exists()


def test_build_without_shrinkwrap_says_what_to_do(tmp_path: Path) -> None:
    fwatchdog(tmp_path, "new", "fn", "--lang", "python3", "-q")
    result = fwatchdog(tmp_path, "build", check=False)
    assert result.returncode == 1 and "--shrinkwrap" in result.stderr
    missing = fwatchdog(tmp_path, "up", "-f", "nope.yml", check=False)
    assert missing.returncode == 1 and "nope.yml does not exist" in missing.stderr


@pytest.mark.parametrize("lang", LANGS)
def test_template_dockerfiles_follow_the_contract(lang: str) -> None:
    """Multi-stage, non-root, watchdog variables as ENV, HEALTHCHECK on the lock file, CMD."""
    root = bundled_dir()
    assert root is not None
    dockerfile = root / lang / ("function/Dockerfile" if lang == "dockerfile" else "Dockerfile")
    text = dockerfile.read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2
    assert "\nUSER app\n" in text
    assert "HEALTHCHECK" in text and "/tmp/.lock" in text
    assert text.rstrip().endswith('CMD ["fwatchdog"]')
    env = dockerfile_env(dockerfile)
    assert env["fprocess"] and env["mode"] and env["exec_timeout"]
    if lang == "python3-http":
        assert env["mode"] == "http" and env["upstream_url"] == "http://127.0.0.1:5000"


def test_dockerfile_env_reads_the_final_stage_in_both_forms(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM a AS build\nENV fprocess=early\n"
        'FROM b\n# comment\nENV fprocess="python index.py" mode=http \\\n    exec_timeout=5s\n'
        "ENV legacy some value\n"
    )
    assert dict(dockerfile_env(dockerfile)) == {
        "fprocess": "python index.py",
        "mode": "http",
        "exec_timeout": "5s",
        "legacy": "some value",
    }


def test_stack_file_problems_are_all_reported(tmp_path: Path) -> None:
    with pytest.raises(DevError) as caught:
        parse_stack(
            tmp_path / "stack.yml",
            {
                "version": "2.0",
                "provider": {"name": "other"},
                "functions": {"Bad": {}, "ok": {"lang": "python3", "handlr": "./ok"}},
            },
        )
    text = "\n".join(caught.value.problems)
    assert "version '2.0' is not supported" in text
    assert "provider.name must be openfaas" in text
    assert "functions.Bad: the name must be lowercase" in text
    assert "functions.ok: unknown keys handlr" in text
    assert "functions.ok: handler required" in text


def test_stack_file_expands_variables_like_faas_cli(tmp_path: Path) -> None:
    path = tmp_path / "stack.yml"
    path.write_text(
        "provider: {name: openfaas}\nfunctions:\n  fn:\n    lang: python3\n    handler: ./fn\n"
        "    image: ${REGISTRY:-docker.io}/fn:${TAG}\n    environment: {LEVEL: '${LEVEL}', A: 1}\n"
        "    environment_file: [env.yml]\n"
    )
    (tmp_path / "env.yml").write_text("environment:\n  A: from-file\n  B: 2\n")
    stack = load_stack(path, {"TAG": "1.2"})
    spec = stack.function("fn")
    assert spec.image == "docker.io/fn:1.2"
    assert dict(spec.environment) == {"LEVEL": "", "A": "from-file", "B": "2"}
    assert spec.handler == tmp_path / "fn"


def test_append_lands_in_the_functions_block_and_any_valid_name_works(tmp_path: Path) -> None:
    fwatchdog(tmp_path, "new", "first", "--lang", "python3", "-q")
    stack = tmp_path / "stack.yaml"
    # A section after functions: and no final newline: a blind append would corrupt both.
    stack.write_text(stack.read_text() + "configuration:\n  copy:\n    - ./common")
    (tmp_path / "common").mkdir()
    # off, yes and null are valid function names that YAML 1.1 reads as a boolean or nothing.
    for name in ("off", "yes", "null"):
        fwatchdog(tmp_path, "new", name, "--lang", "dockerfile", "--append", "stack.yaml", "-q")
    parsed = load_stack(stack)
    assert [spec.name for spec in parsed.functions] == ["first", "off", "yes", "null"]
    assert parsed.copy == ("./common",)
    fwatchdog(tmp_path, "build", "--shrinkwrap")
    assert (tmp_path / "build" / "off" / "Dockerfile").is_file()
    assert (tmp_path / "build" / "first" / "function" / "common").is_dir()
