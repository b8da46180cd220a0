"""How the gateway reads a function's URL into the address of its connection pool, the Host
it sends and the path put before every call's target."""

from __future__ import annotations

import base64

import pytest

from watchdog.gateway.proxy import FunctionUpstreams


def test_a_url_gives_its_host_header_prefix_and_one_pool_per_address() -> None:
    with FunctionUpstreams() as upstreams:
        plain = upstreams.of("http://127.0.0.1:8080")
        prefixed = upstreams.of("http://127.0.0.1:8080/fn/a%2Fb")
        default_port = upstreams.of("http://Example.com")
        ipv6 = upstreams.of("http://[::1]:9000")
        assert (plain.host, plain.prefix, plain.authorization) == ("127.0.0.1:8080", "", None)
        assert prefixed.prefix == "/fn/a%2Fb"  # still percent-encoded, as configured
        assert prefixed.pool is plain.pool  # same address, same connections
        assert (default_port.host, default_port.pool.port) == ("example.com", 80)
        assert (ipv6.host, ipv6.pool.host) == ("[::1]:9000", "::1")
        assert upstreams.of("http://127.0.0.1:8080") is plain


def test_credentials_in_a_url_become_basic_auth_and_https_gets_tls() -> None:
    with FunctionUpstreams() as upstreams:
        secured = upstreams.of("https://user:p%40ss@fn.example:8443")
        assert secured.host == "fn.example:8443"
        assert secured.authorization == "Basic " + base64.b64encode(b"user:p@ss").decode()
        assert secured.pool.ssl is not None
        assert upstreams.of("http://fn.example:8443").pool.ssl is None


@pytest.mark.parametrize("url", ["ftp://host:21", "http://", "unix:/tmp/socket"])
def test_a_url_that_is_not_http_with_a_host_is_refused(url: str) -> None:
    with FunctionUpstreams() as upstreams, pytest.raises(ValueError):
        upstreams.of(url)
