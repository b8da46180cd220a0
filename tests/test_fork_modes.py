"""Fork-per-request modes against real handler processes (cat, env, Python scripts)."""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURES, PYTHON

from watchdog.cgi import request_variables

FORK_MODES = ["auto", "serializing", "streaming"]


@pytest.mark.parametrize("mode", FORK_MODES)
def test_cat_echoes_the_body(start_watchdog, mode: str) -> None:
    wd = start_watchdog(fprocess="cat", mode=mode)
    reply = wd.request("POST", "/", body=b"hello world", headers={"Content-Type": "text/plain"})
    assert reply.status == 200
    assert reply.body == b"hello world"
    assert reply.headers["Content-Type"] == "text/plain"
    assert float(reply.headers["X-Duration-Seconds"]) >= 0


def test_serializing_and_small_auto_answers_have_a_content_length(start_watchdog) -> None:
    for mode in ("serializing", "auto"):
        wd = start_watchdog(fprocess="cat", mode=mode)
        reply = wd.request("POST", "/", body=b"x" * 1000)
        assert reply.headers["Content-Length"] == "1000"
        assert reply.headers.get("Transfer-Encoding") is None


def test_streaming_answers_are_chunked(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat", mode="streaming")
    reply = wd.request("POST", "/", body=b"abc")
    assert reply.headers["Transfer-Encoding"] == "chunked"
    assert reply.body == b"abc"


def test_auto_switches_to_streaming_past_its_buffer(start_watchdog) -> None:
    wd = start_watchdog(fprocess="head -c 1048576 /dev/zero")
    reply = wd.request("GET", "/")
    assert reply.status == 200
    assert len(reply.body) == 1048576
    assert reply.headers["Transfer-Encoding"] == "chunked"


def test_request_metadata_reaches_the_handler_environment(start_watchdog) -> None:
    wd = start_watchdog(fprocess="env", MY_SETTING="kept")
    reply = wd.request(
        "PUT",
        "/some/path?a=1&b=two%20words",
        body=b"12345",
        headers={"X-Custom-Header": "value-1", "Bad.Name": "dropped", "Host": "example.com"},
    )
    env = dict(line.split("=", 1) for line in reply.text.splitlines() if "=" in line)
    assert env["Http_Method"] == "PUT"
    assert env["Http_Path"] == "/some/path"
    assert env["Http_Query"] == "a=1&b=two%20words"
    assert env["Http_Host"] == "example.com"
    assert env["Http_Content_Length"] == "5"
    assert env["Http_X_Custom_Header"] == "value-1"
    assert env["MY_SETTING"] == "kept"
    assert not any(key.startswith("Http_Bad") for key in env)


def test_chunked_upload_sets_transfer_encoding(start_watchdog) -> None:
    wd = start_watchdog(fprocess="env")
    reply = wd.request("POST", "/", body=iter([b"ab", b"cd"]))  # type: ignore[arg-type]
    assert "Http_Transfer_Encoding=chunked" in reply.text


def test_cgi_headers_false_passes_no_request_metadata(start_watchdog) -> None:
    wd = start_watchdog(fprocess="env", cgi_headers="false")
    reply = wd.request("GET", "/?q=1", headers={"X-Custom": "1"})
    assert "Http_" not in reply.text


def test_header_names_and_values_that_cannot_be_variables_are_dropped() -> None:
    env = request_variables(
        "GET",
        "/p",
        "",
        [("X-Ok", "yes"), ("X-Nul", "a\0b"), ("X.Dotted", "x"), ("X-Ok", "again")],
    )
    assert env["Http_X_Ok"] == "yes, again"
    assert "Http_X_Nul" not in env and not any("Dotted" in k for k in env)
    assert "Http_Query" not in env and env["Http_Method"] == "GET"


def test_fprocess_is_split_like_a_shell_but_never_run_through_one(start_watchdog) -> None:
    wd = start_watchdog(fprocess="printf '%s|' 'two words' $HOME `id`")
    assert wd.request("GET", "/").text == "two words|$HOME|`id`|"


@pytest.mark.parametrize("mode", ["auto", "serializing"])
def test_non_zero_exit_answers_500_naming_the_status(start_watchdog, mode: str) -> None:
    wd = start_watchdog(fprocess=f"{PYTHON} {FIXTURES / 'fail.py'}", mode=mode)
    reply = wd.request("GET", "/")
    assert reply.status == 500
    assert reply.text == "exit status 3\n"
    wd.wait_for_log("stderr: boom: something broke")


def test_write_debug_puts_stderr_in_the_500(start_watchdog) -> None:
    wd = start_watchdog(fprocess=f"{PYTHON} {FIXTURES / 'fail.py'}", write_debug="true")
    reply = wd.request("GET", "/")
    assert reply.status == 500
    assert reply.text.startswith("exit status 3\n") and "boom: something broke" in reply.text


def test_combine_output_puts_stderr_in_the_response(start_watchdog) -> None:
    script = "import sys; print('out'); sys.stdout.flush(); print('err', file=sys.stderr)"
    wd = start_watchdog(fprocess=f'{PYTHON} -c "{script}"', combine_output="true")
    assert wd.request("GET", "/").text == "out\nerr\n"


def test_killed_by_signal_is_named(start_watchdog) -> None:
    wd = start_watchdog(fprocess="sh -c 'kill -SEGV $$'")
    reply = wd.request("GET", "/")
    assert reply.status == 500
    assert reply.text == "killed by signal SIGSEGV\n"


def test_streaming_failure_after_output_cuts_the_connection(start_watchdog) -> None:
    import http.client

    wd = start_watchdog(fprocess="sh -c 'head -c 300000 /dev/zero; exit 4'", mode="streaming")
    with pytest.raises(http.client.IncompleteRead):
        wd.request("GET", "/")
    wd.wait_for_log("Handler failed after its response began (exit status 4)")


def test_content_type_setting_wins(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat", content_type="application/json")
    reply = wd.request("POST", "/", body=b"{}", headers={"Content-Type": "text/plain"})
    assert reply.headers["Content-Type"] == "application/json"


def test_cgi_response_lets_the_handler_choose_status_and_headers(start_watchdog) -> None:
    for mode in FORK_MODES:
        wd = start_watchdog(
            fprocess=f"{PYTHON} {FIXTURES / 'cgi_head.py'}", cgi_response="1", mode=mode
        )
        reply = wd.request("GET", "/")
        assert reply.status == 201, mode
        assert reply.headers["Content-Type"] == "application/json"
        assert reply.headers["X-Handler"] == "cgi"
        assert json.loads(reply.body) == {"created": True}


def test_malformed_cgi_head_is_a_502(start_watchdog) -> None:
    wd = start_watchdog(fprocess="echo not a header", cgi_response="true")
    reply = wd.request("GET", "/")
    assert reply.status == 502
    assert "malformed CGI header block" in reply.text


def test_long_lines_are_split_and_last_lines_kept(start_watchdog) -> None:
    wd = start_watchdog(fprocess=f"{PYTHON} {FIXTURES / 'noisy.py'}", log_buffer_size="1000")
    for _ in range(3):  # logging keeps working request after request
        assert wd.request("GET", "/").text == "done"
    logs = wd.wait_for_log("final words without newline")
    assert logs.count("stderr: after the long line") == 3
    # 200 KB cut into 200 pieces of 1000 bytes; each but the last is marked as continued.
    assert logs.count("x [...]\n") == 3 * 199
    assert max(len(line) for line in logs.splitlines()) < 1100


def test_prefix_logs_false_relays_raw_lines(start_watchdog) -> None:
    wd = start_watchdog(fprocess="sh -c 'echo plain line >&2'", prefix_logs="false")
    wd.request("GET", "/")
    logs = wd.wait_for_log("plain line")
    assert "\nplain line\n" in logs


def test_json_logs(start_watchdog) -> None:
    wd = start_watchdog(fprocess="sh -c 'echo from handler >&2'", log_format="json")
    wd.request("GET", "/")
    wd.wait_for_log("from handler")
    entries = [json.loads(line) for line in wd.logs().splitlines() if line.strip()]
    assert any(e.get("stream") == "stderr" and e["msg"] == "from handler" for e in entries)
    assert any("Effective configuration" in e.get("msg", "") for e in entries)


def test_effective_configuration_is_logged_once(start_watchdog) -> None:
    wd = start_watchdog(fprocess="cat", max_inflight="7")
    assert wd.logs().count("Effective configuration") == 1
    assert "max_inflight='7'" in wd.logs()


def test_many_quick_handlers_that_ignore_stdin(start_watchdog) -> None:
    # A handler that exits at once often has its exit reported together with its spawn: a
    # race that once left such requests hanging.
    wd = start_watchdog(fprocess="env")
    for _ in range(100):
        reply = wd.request("POST", "/", body=iter([b"ab", b"cd"]), timeout=10)  # type: ignore[arg-type]
        assert reply.status == 200 and "Http_Method=POST" in reply.text


@pytest.mark.parametrize("mode", FORK_MODES)
def test_a_body_larger_than_the_pipe_buffer_arrives_intact(start_watchdog, mode: str) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, 16 times a pipe's buffer
    wd = start_watchdog(fprocess="cat", mode=mode)
    reply = wd.request("POST", "/", body=body)
    assert reply.status == 200
    assert len(reply.body) == len(body) and reply.body == body


def test_cgi_head_and_body_written_apart_stream_whole(start_watchdog) -> None:
    script = (
        "import sys, time; sys.stdout.write('Status: 202 Accepted\\n\\n'); sys.stdout.flush(); "
        "time.sleep(0.3); sys.stdout.write('later body')"
    )
    wd = start_watchdog(fprocess=f'{PYTHON} -c "{script}"', mode="streaming", cgi_response="1")
    reply = wd.request("GET", "/")
    assert reply.status == 202
    assert reply.text == "later body"


def test_combine_output_puts_stderr_in_the_500(start_watchdog) -> None:
    wd = start_watchdog(fprocess=f"{PYTHON} {FIXTURES / 'fail.py'}", combine_output="true")
    reply = wd.request("GET", "/")
    assert reply.status == 500
    assert reply.text.startswith("exit status 3\n")
    assert "partial output\n" in reply.text and "boom: something broke\n" in reply.text


@pytest.mark.parametrize("mode", FORK_MODES)
def test_a_handler_starts_with_only_its_stdio_open(start_watchdog, mode: str) -> None:
    # The fork server's received pipes were inheritable, so handlers held extra copies of
    # their own stdio (issue 16 item 2): a daemon that closed 0-2 still kept the request open.
    wd = start_watchdog(fprocess=f"{PYTHON} {FIXTURES / 'open_fds.py'}", mode=mode)
    reply = wd.request("POST", "/", body=b"")
    assert reply.status == 200
    assert reply.text.split() == ["0", "1", "2"]
