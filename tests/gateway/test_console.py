"""The console's HTTP side against a real gateway: redirect, assets with a self-only CSP,
the live-figures endpoint, and refusal of cross-site state-changing requests."""

from __future__ import annotations

import json

from .conftest import World


def test_root_redirects_and_assets_carry_a_self_only_csp(world: World) -> None:
    gw = world.gateway
    assert gw.request("GET", "/").headers["Location"] == "/ui/"
    page = gw.request("GET", "/ui/")
    assert page.status == 200 and b"app.js" in page.body
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    total = sum(len(gw.request("GET", f"/ui/{n}").body) for n in ("", "app.js", "style.css"))
    assert total < 300 * 1024


def test_stats_show_counts_of_every_function(world: World) -> None:
    gw = world.gateway
    assert gw.request("POST", "/function/cat", body=b"hi").status == 200
    stats = json.loads(gw.request("GET", "/system/stats").body)
    rows = {f["key"]: f for f in stats["functions"]}
    assert rows["cat.openfaas-fn"]["figures"]["invocations"] >= 1
    assert "staging" in stats["namespaces"] and "depth" in stats["queue"]


def test_cross_site_cancel_and_async_invoke_are_refused(world: World) -> None:
    gw = world.gateway
    evil = {"Origin": "http://evil.example"}
    assert gw.request("DELETE", "/system/activations/x", headers=evil).status == 403
    site = {"Sec-Fetch-Site": "cross-site"}
    assert gw.request("POST", "/async-function/cat", body=b"x", headers=site).status == 403
    assert gw.request("DELETE", "/system/activations/x").status == 404
