"""mode=static: files under static_path with caching headers and ranges, nothing outside it."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from conftest import RunningWatchdog
from test_limits import _read_until_closed


@pytest.fixture
def site(tmp_path: Path, start_watchdog) -> RunningWatchdog:
    root = tmp_path / "public"
    (root / "docs").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "example.com").mkdir()
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "docs" / "index.html").write_text("<h1>docs</h1>")
    (root / "notes.txt").write_text("0123456789")
    (root / "data.json").write_text('{"a": 1}')
    (tmp_path / "secret.txt").write_text("top secret")
    (root / "link-out").symlink_to(tmp_path / "secret.txt")
    (root / "dir-out").symlink_to(tmp_path)
    (root / "link-in").symlink_to(root / "notes.txt")
    return start_watchdog(mode="static", static_path=str(root))


def raw_get(wd: RunningWatchdog, target: str) -> str:
    """Send the request line exactly as written (http.client would not send some of these)."""
    with socket.create_connection(("127.0.0.1", wd.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode("latin-1")


def test_files_and_directory_indexes(site: RunningWatchdog) -> None:
    home = site.request("GET", "/")
    assert home.status == 200 and home.text == "<h1>home</h1>"
    assert home.headers["Content-Type"].startswith("text/html")
    assert site.request("GET", "/docs/").text == "<h1>docs</h1>"
    moved = site.request("GET", "/docs")
    assert moved.status == 301 and moved.headers["Location"] == "/docs/"
    assert site.request("GET", "/data.json").headers["Content-Type"] == "application/json"
    assert site.request("GET", "/link-in").text == "0123456789"
    assert site.request("GET", "/empty/").status == 404
    assert site.request("GET", "/missing.txt").status == 404
    head = site.request("HEAD", "/notes.txt")
    assert head.status == 200 and head.headers["Content-Length"] == "10" and head.body == b""
    assert site.request("POST", "/notes.txt", body=b"x").status == 405


@pytest.mark.parametrize("target", ["//example.com", "///example.com", "/example.com"])
def test_a_directory_redirect_never_leaves_the_server(site: RunningWatchdog, target: str) -> None:
    # "//example.com/" in a Location header is a scheme-relative URL: another site.
    answer = raw_get(site, target)
    assert answer.split(" ", 2)[1] == "301", answer[:200]
    assert "\r\nLocation: /example.com/\r\n" in answer, answer[:400]


def test_etag_last_modified_and_ranges(site: RunningWatchdog) -> None:
    first = site.request("GET", "/notes.txt")
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert site.request("GET", "/notes.txt", headers={"If-None-Match": etag}).status == 304
    assert site.request("GET", "/notes.txt", headers={"If-Modified-Since": modified}).status == 304
    part = site.request("GET", "/notes.txt", headers={"Range": "bytes=2-5"})
    assert part.status == 206 and part.body == b"2345"
    assert part.headers["Content-Range"] == "bytes 2-5/10"
    assert site.request("GET", "/notes.txt", headers={"Range": "bytes=50-60"}).status == 416


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/docs/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/docs/..%2f..%2fsecret.txt",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/link-out",
        "/dir-out/secret.txt",
        "/%00notes.txt",
    ],
)
def test_nothing_outside_the_root_is_reachable(site: RunningWatchdog, target: str) -> None:
    answer = raw_get(site, target)
    status = answer.split(" ", 2)[1]
    assert status in ("404", "400"), answer[:200]
    assert "top secret" not in answer and "root:" not in answer


def test_a_missing_root_is_a_configuration_error(start_watchdog, tmp_path: Path) -> None:
    wd = start_watchdog(wait=False, mode="static", static_path=str(tmp_path / "nope"))
    assert wd.proc.wait(30) == 2
    assert "is not a directory" in wd.logs()


def test_write_timeout_cuts_a_client_that_never_reads_a_file(
    start_watchdog, tmp_path: Path
) -> None:
    size = 64 * 1024 * 1024
    root = tmp_path / "big"
    root.mkdir()
    with open(root / "big.bin", "wb") as f:
        f.truncate(size)
    wd = start_watchdog(mode="static", static_path=str(root), write_timeout="1s")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", wd.port))
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        wd.wait_for_log("within write_timeout")  # the watchdog gave up on this client
        gave_up = time.monotonic()
        received, _ = _read_until_closed(sock, 10)
    assert received < size  # cut off, not delivered late
    assert gave_up - started < 1 + 4  # write_timeout plus slack
