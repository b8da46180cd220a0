"""``fwatchdog invoke`` and ``fwatchdog activations``: a gateway's client, like ``faas-cli
invoke``.

The gateway is ``--gateway URL``, else ``$OPENFAAS_URL`` (faas-cli's variable), else
``http://127.0.0.1:8080``. Exit status: 0 when the gateway or function answered 2xx, 1 for any
other answer or when the gateway cannot be reached, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

from .flags import UsageError

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
EXIT_FAILED = 1


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Unreachable(Exception):
    """The gateway could not be reached."""


def request(
    method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
) -> Answer:
    """One HTTP request; any status is an :class:`Answer`, never an exception."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return Answer(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.headers, exc.read())
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"cannot reach the gateway at {url}: {reason}") from None


def gateway_url(flag: str | None, env: Mapping[str, str]) -> str:
    return (flag or env.get("OPENFAAS_URL") or DEFAULT_GATEWAY).rstrip("/")


def _pairs(values: Sequence[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, eq, val = value.partition("=")
        if not eq or not key:
            raise ValueError(f"{what} {value!r}: expected KEY=VALUE")
        pairs.append((key, val))
    return pairs


# -- invoke ---------------------------------------------------------------------------------


def add_invoke_arguments(parser: argparse.ArgumentParser) -> None:
    """``fwatchdog invoke``'s arguments."""
    parser.description = "Invoke a function through the gateway; the body is read from stdin."
    parser.add_argument("name", help="function name, NAME or NAME.NAMESPACE")
    parser.add_argument(
        "--gateway", "-g", help=f"gateway URL (default $OPENFAAS_URL or {DEFAULT_GATEWAY})"
    )
    parser.add_argument(
        "--async", "-a", dest="is_async", action="store_true", help="queue the call"
    )
    parser.add_argument("--callback-url", help="where the result of an async call is POSTed")
    parser.add_argument("--header", "-H", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--query", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--method", "-m", default="POST")
    parser.add_argument("--content-type", default="text/plain")
    parser.add_argument("--path", default="", help="sub-path after the function name")


def invoke(
    args: argparse.Namespace, env: Mapping[str, str], stdin: BinaryIO, stdout: BinaryIO
) -> int:
    """Send one call (parsed by :func:`add_invoke_arguments`); relay its answer."""
    try:
        headers = dict(_pairs(args.header, "--header"))
        query = _pairs(args.query, "--query")
    except ValueError as exc:
        raise UsageError("fwatchdog invoke", str(exc)) from None
    headers.setdefault("Content-Type", args.content_type)
    if args.callback_url:
        headers["X-Callback-Url"] = args.callback_url
    route = "async-function" if args.is_async else "function"
    url = f"{gateway_url(args.gateway, env)}/{route}/{quote(args.name)}"
    if args.path:
        url += "/" + args.path.lstrip("/")
    if query:
        url += "?" + urlencode(query)
    body = None if args.method.upper() in ("GET", "HEAD") else stdin.read()
    answer = request(args.method.upper(), url, body, headers)
    if args.is_async and answer.status == 202:
        call_id = answer.headers.get("X-Call-Id", "")
        print(f"Function submitted asynchronously: {call_id}", file=sys.stderr)
        stdout.write(call_id.encode() + b"\n")
        return 0
    stdout.write(answer.body)
    stdout.flush()
    if not 200 <= answer.status < 300:
        print(f"fwatchdog invoke: {args.name} answered {answer.status}", file=sys.stderr)
        return EXIT_FAILED
    return 0


# -- activations ----------------------------------------------------------------------------


def add_activations_arguments(parser: argparse.ArgumentParser) -> None:
    """``fwatchdog activations``'s subcommands and arguments."""
    parser.description = "Records of asynchronous calls."
    parser.add_argument(
        "--gateway", "-g", help=f"gateway URL (default $OPENFAAS_URL or {DEFAULT_GATEWAY})"
    )
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="newest first")
    listing.add_argument("--function")
    listing.add_argument("--status")
    listing.add_argument("--limit", type=int, default=30)
    listing.add_argument("--json", action="store_true", help="print the raw JSON")
    sub.add_parser("get", help="one record as JSON").add_argument("call_id")
    result = sub.add_parser("result", help="the function's response body")
    which = result.add_mutually_exclusive_group(required=True)
    which.add_argument("call_id", nargs="?")
    which.add_argument("--last", action="store_true", help="the newest call")
    sub.add_parser("cancel", help="cancel a call that has not started").add_argument("call_id")


def activations(args: argparse.Namespace, env: Mapping[str, str], stdout: BinaryIO) -> int:
    """List, read or cancel records (parsed by :func:`add_activations_arguments`)."""
    base = f"{gateway_url(args.gateway, env)}/system/activations"
    if args.action == "list":
        params = {"limit": str(args.limit)}
        params.update({k: v for k in ("function", "status") if (v := getattr(args, k))})
        answer = request("GET", f"{base}?{urlencode(params)}")
        if answer.status == 200 and not args.json:
            stdout.write(_table(answer.json()["items"]).encode())
            return 0
        return _relay(answer, stdout)
    if args.action == "get":
        return _relay(request("GET", f"{base}/{quote(args.call_id)}"), stdout)
    if args.action == "cancel":
        return _relay(request("DELETE", f"{base}/{quote(args.call_id)}"), stdout)
    call_id = args.call_id
    if args.last:
        newest = request("GET", f"{base}?limit=1")
        items = newest.json()["items"] if newest.status == 200 else []
        if not items:
            print("fwatchdog activations: no activation records", file=sys.stderr)
            return EXIT_FAILED
        call_id = items[0]["callId"]
    answer = request("GET", f"{base}/{quote(call_id)}/result")
    stdout.write(answer.body)
    stdout.flush()
    return 0 if 200 <= answer.status < 300 else EXIT_FAILED


def _relay(answer: Answer, stdout: BinaryIO) -> int:
    """Print a JSON answer indented; exit status from its code."""
    try:
        text = json.dumps(answer.json(), indent=2) + "\n"
    except ValueError:
        text = answer.body.decode(errors="replace")
    stdout.write(text.encode())
    return 0 if 200 <= answer.status < 300 else EXIT_FAILED


def _table(items: list[dict[str, Any]]) -> str:
    rows = [("CALL ID", "FUNCTION", "STATUS", "ATTEMPTS", "CODE", "CREATED", "DURATION")]
    for item in items:
        duration = item.get("durationMs")
        rows.append(
            (
                item["callId"],
                item["function"],
                item["status"],
                str(item["attempts"]),
                str(item.get("statusCode") or "-"),
                item["createdAt"],
                "-" if duration is None else f"{duration / 1000:.3f}s",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"
