"""watchdog.testing: the python3-http event/context, and return values normalised exactly as
the template's entry point does (checked against templates/python3-http/index.py itself)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from watchdog.devtools.templates import bundled_dir
from watchdog.testing import Context, Response, call, load_handler, make_event, normalise

ECHO = """
import json

def handle(event, context):
    return {
        "statusCode": 202,
        "body": {
            "body": event.body.decode(),
            "method": event.method,
            "path": event.path,
            "query": sorted(event.query.items()),
            "lang": event.headers.get("x-lang"),
            "host": context.hostname,
        },
        "headers": {"X-Echo": "1"},
    }
"""


def _index_module(handler_folder: Path) -> ModuleType:
    load_handler(handler_folder)  # index.py imports function.handler
    root = bundled_dir()
    assert root is not None
    spec = importlib.util.spec_from_file_location("index", root / "python3-http" / "index.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_event_context_and_dict_answer(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text(ECHO)
    handler = load_handler(tmp_path)
    response = call(
        handler.handle,
        "Ada",
        method="put",
        path="/a/b",
        query="x=1&x=2&y=",
        headers={"X-Lang": "en"},
        context=Context(hostname="fn-1"),
    )
    assert response.status == 202
    assert response.headers == {"X-Echo": "1", "Content-Type": "application/json"}
    assert response.json() == {
        "body": "Ada",
        "method": "PUT",
        "path": "/a/b",
        "query": [["x", "1"], ["x", "2"], ["y", ""]],
        "lang": "en",
        "host": "fn-1",
    }


def test_json_body_and_event_defaults() -> None:
    event = make_event({"a": 1})
    assert event.body == b'{"a": 1}' and event.headers["content-type"] == "application/json"
    assert (event.method, event.path, list(event.query.items())) == ("POST", "/", [])


@pytest.mark.parametrize(
    "result",
    [
        None,
        "plain text",
        b"\x00\xffbytes",
        42,
        {"statusCode": 404},
        {"body": "x"},
        {"statusCode": 201, "body": [1, 2], "headers": {"Location": "/1"}},
        {"body": {"k": "v"}, "headers": {"Content-Type": "application/vnd.x+json"}},
        {"statusCode": "500", "body": b"raw", "headers": {"Content-Type": "text/plain"}},
        # Flask's forms, passed through by the official template:
        ("created", 201),
        ("created", 201, {"Location": "/1"}),
        ({"k": "v"}, {"X-A": "1"}),
        [1, 2],
    ],
)
def test_normalise_matches_the_template_entry_point(tmp_path: Path, result: Any) -> None:
    (tmp_path / "handler.py").write_text("def handle(event, context):\n    return None\n")
    index = _index_module(tmp_path)
    status, body, headers = index.format_response(result)
    assert normalise(result) == Response(status, body, headers)


def test_flask_style_tuples_keep_their_status_and_headers() -> None:
    assert normalise(("created", 201, {"Location": "/1"})) == Response(
        201, b"created", {"Location": "/1", "Content-Type": "text/html; charset=utf-8"}
    )
    assert normalise(("x", 404)).status == 404


def test_template_skeleton_handlers_pass_their_own_tests() -> None:
    root = bundled_dir()
    assert root is not None
    http_handler = load_handler(root / "python3-http" / "function")
    assert call(http_handler.handle, b"Ada").text == "Hello, Ada!"
    classic = load_handler(root / "python3" / "function")
    assert classic.handle("Bob") == "Hello, Bob!"
