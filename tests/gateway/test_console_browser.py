"""The console in a real browser: Debian's headless Chromium driven by selenium, against a real
gateway in front of real watchdogs (the ``world`` fixture).

One browser serves the whole module. Every wait is a WebDriverWait on a condition.

``CONSOLE_SCREENSHOTS=DIR`` makes the tests also write PNGs of the pages they reach into DIR
(the README's ``docs/console-*.png`` come from ``CONSOLE_SCREENSHOTS=docs``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from .conftest import Launcher, World

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDTH, HEIGHT = 1200, 900
WAIT = 15  # seconds a condition may take (live refresh runs every 2 s)
HOSTILE = "<script>alert('x')</script><img src=x onerror=alert('y')>"
# a name travels in the address's fragment, where "/" separates parts
HOSTILE_NAME = "<script>alert(1)<\\script><img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile; nothing is downloaded (explicit driver path,
    selenium-manager offline)."""
    profile = tmp_path_factory.mktemp("chromium")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()  # also stops (and reaps) chromedriver
        reap_profile_processes(profile)


def reap_profile_processes(profile: Path) -> None:
    """Chromium's crash handler outlives quit() (re-parented to PID 1): end whatever still
    runs with this test's profile."""
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(profile) in part for part in proc.info["cmdline"] or ()):
            left.append(proc)
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
    psutil.wait_procs(left, timeout=10)


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], object]) -> object:
    # live refresh replaces the page's nodes every 2 s: a node found a moment ago may be gone
    ignored = [NoSuchElementException, StaleElementReferenceException]
    return WebDriverWait(driver, WAIT, ignored_exceptions=ignored).until(condition)


def by_id(driver: WebDriver, element_id: str) -> WebElement:
    return driver.find_element(By.ID, element_id)


def text_of(driver: WebDriver, element_id: str) -> str:
    """The text of an element, read in one script call (no stale reference between steps)."""
    found = driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.innerText : ''", element_id
    )
    return str(found)


def no_alert(driver: WebDriver) -> bool:
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return True
    raise AssertionError(f"an alert opened: {alert.text!r}")


def shoot(driver: WebDriver, name: str) -> None:
    """With CONSOLE_SCREENSHOTS set, a PNG of the whole page at the console's usual width."""
    directory = os.environ.get("CONSOLE_SCREENSHOTS")
    if not directory:
        return
    height = driver.execute_script("return document.documentElement.scrollHeight")
    metrics = {"width": WIDTH, "height": min(int(height), 1600), "deviceScaleFactor": 1}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "mobile": False})
    try:
        Path(directory, f"console-{name}.png").write_bytes(driver.get_screenshot_as_png())
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def rows(driver: WebDriver, css: str) -> list[list[str]]:
    """The cells' text of the body rows of the table under ``css``, read in one script call."""
    found = driver.execute_script(
        "const t = document.querySelector(arguments[0]);"
        " return t ? [...t.querySelectorAll('tbody tr')].map("
        "   (r) => [...r.cells].map((c) => c.innerText)) : []",
        css,
    )
    return [[str(cell) for cell in row] for row in found]


def function_row(driver: WebDriver, key: str) -> list[str]:
    """The cells of the function list's row for ``key`` ([] while it is not shown)."""
    return next((row for row in rows(driver, "#functions") if row[0] == key), [])


def rows_start(driver: WebDriver) -> list[list[str]]:
    """Call, function and status of each row of the activations list."""
    return [row[:3] for row in rows(driver, "#activations")]


def shown_keys(driver: WebDriver) -> set[str]:
    return {row[0] for row in rows(driver, "#functions")}


def invoke_form(
    driver: WebDriver,
    world: World,
    function: str,
    *,
    body: str = "",
    kind: str = "text",
    method: str | None = None,
    path: str = "",
    headers: str = "",
    delay: str = "",
    asynchronous: bool = False,
) -> None:
    """Open the invoke page, fill the form and send it."""
    driver.get(f"{world.gateway.url}/ui/#/invoke?function={function}")
    wait_for(driver, lambda d: Select(by_id(d, "inv-function")).first_selected_option.text)
    Select(by_id(driver, "inv-function")).select_by_value(function)
    if asynchronous:
        by_id(driver, "inv-async").click()
    if method:
        Select(by_id(driver, "inv-method")).select_by_value(method)
    Select(by_id(driver, "inv-kind")).select_by_value(kind)
    for element_id, value in (
        ("inv-path", path),
        ("inv-headers", headers),
        ("inv-body", body),
        ("inv-delay", delay),  # enabled in asynchronous mode only
    ):
        if value:
            by_id(driver, element_id).send_keys(value)
    by_id(driver, "inv-send").click()


def test_function_list_shows_counts_search_and_namespaces(browser: WebDriver, world: World) -> None:
    gw = world.gateway
    for _ in range(3):
        assert gw.request("POST", "/function/cat", body=b"hi").status == 200
    stats = json.loads(gw.request("GET", "/system/stats").body)
    counts = {f["key"]: f["figures"]["invocations"] for f in stats["functions"]}
    browser.get(f"{gw.url}/ui/")
    expected = str(int(counts["cat.openfaas-fn"]))
    wait_for(browser, lambda d: function_row(d, "cat.openfaas-fn")[3:4] == [expected])
    row = function_row(browser, "cat.openfaas-fn")
    assert row[1] == "openfaas-fn" and f"{gw.url}/function/cat.openfaas-fn" in row[2]
    assert shown_keys(browser) == set(counts)
    shoot(browser, "functions")
    Select(by_id(browser, "namespace")).select_by_value("staging")
    assert shown_keys(browser) == {"staged.staging"}
    Select(by_id(browser, "namespace")).select_by_value("")
    by_id(browser, "search").send_keys("lim")
    assert shown_keys(browser) == {"limited.openfaas-fn"}


def test_sync_invoke_with_method_header_and_json_body_shows_the_answer(
    browser: WebDriver, world: World
) -> None:
    invoke_form(
        browser,
        world,
        "web.openfaas-fn",
        method="PUT",
        path="/inspect/here",
        headers="X-Console-Test: from the browser",
        kind="json",
        body='{"greeting": "hello"}',
    )
    wait_for(browser, lambda d: text_of(d, "ans-status").startswith("200"))
    answer = json.loads(by_id(browser, "ans-body").text)
    assert answer["method"] == "PUT" and answer["raw_path"] == "/inspect/here"
    headers = {name.lower(): value for name, value in answer["headers"]}
    assert headers["x-console-test"] == "from the browser"
    assert headers["content-type"] == "application/json"
    assert answer["body_length"] == len('{"greeting":"hello"}')
    # a synchronous answer has no record: its call id is shown, not linked
    assert "no record" in text_of(browser, "ans-call")
    assert by_id(browser, "ans-call").find_elements(By.TAG_NAME, "a") == []
    shoot(browser, "invoke")


def test_async_invoke_is_listed_and_its_record_shows_the_attempt(
    browser: WebDriver, world: World
) -> None:
    invoke_form(
        browser, world, "cat.openfaas-fn", body="queued from the browser", asynchronous=True
    )
    wait_for(browser, lambda d: text_of(d, "ans-status").startswith("202"))
    call_id = text_of(browser, "ans-call")
    assert call_id
    browser.get(f"{world.gateway.url}/ui/#/activations")
    link = wait_for(browser, lambda d: d.find_element(By.LINK_TEXT, call_id))
    assert isinstance(link, WebElement)
    link.click()
    wait_for(browser, lambda d: text_of(d, "rec-status") == "succeeded")
    wait_for(browser, lambda d: text_of(d, "rec-body") == "queued from the browser")
    attempts = rows(browser, "#rec-attempts")
    assert len(attempts) == 1 and attempts[0][0] == "1" and attempts[0][3] == "200"
    assert not by_id(browser, "cancel").is_displayed()
    shoot(browser, "record")


def test_a_delayed_call_is_cancelled_from_its_page(browser: WebDriver, world: World) -> None:
    invoke_form(browser, world, "cat.openfaas-fn", body="later", delay="600", asynchronous=True)
    wait_for(browser, lambda d: text_of(d, "ans-status").startswith("202"))
    by_id(browser, "ans-call").find_element(By.TAG_NAME, "a").click()
    wait_for(browser, lambda d: text_of(d, "rec-status") == "queued")
    assert by_id(browser, "no-attempts").is_displayed()
    cancel = wait_for(browser, lambda d: by_id(d, "cancel").is_displayed() and by_id(d, "cancel"))
    assert isinstance(cancel, WebElement)
    cancel.click()
    wait_for(browser, lambda d: text_of(d, "rec-status") == "cancelled")
    assert not by_id(browser, "cancel").is_displayed()
    call_id = browser.current_url.rpartition("/")[2]
    record = json.loads(world.gateway.request("GET", f"/system/activations/{call_id}").body)
    assert record["status"] == "cancelled"
    browser.get(f"{world.gateway.url}/ui/#/activations")
    wait_for(browser, lambda d: [call_id, "cat.openfaas-fn", "cancelled"] in rows_start(d))
    shoot(browser, "activations")


def test_markup_in_a_name_or_a_body_is_shown_as_text(browser: WebDriver, world: World) -> None:
    invoke_form(browser, world, "cat.openfaas-fn", body=HOSTILE)
    wait_for(browser, lambda d: text_of(d, "ans-status").startswith("200"))
    assert by_id(browser, "ans-body").text == HOSTILE
    assert browser.find_elements(By.CSS_SELECTOR, "main script, main img") == []
    # a name reaches the page from the address too: the function page of a hostile name
    browser.get(f"{world.gateway.url}/ui/#/function/{quote(HOSTILE_NAME, safe='')}")
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == HOSTILE_NAME)
    wait_for(browser, lambda d: "is registered" in d.find_element(By.ID, "main").text)
    assert browser.find_elements(By.CSS_SELECTOR, "main script, main img") == []
    assert no_alert(browser)


def test_with_basic_auth_the_console_asks_for_credentials(
    browser: WebDriver, world: World, launcher: Launcher
) -> None:
    gw = launcher.gateway(
        "--function",
        f"cat=http://127.0.0.1:{world.cat.port}",
        basic_auth="true",
        basic_auth_user="admin",
        basic_auth_password="s3cret",
    )
    reply = gw.request("GET", "/ui/")
    assert reply.status == 401 and reply.headers["WWW-Authenticate"].startswith("Basic")
    browser.get(f"{gw.url}/ui/")
    assert browser.find_elements(By.ID, "main") == []
    assert "fwatchdog" not in browser.page_source
    # credentials as a header on every request (how a proxy in front would log the user in)
    browser.execute_cdp_cmd("Network.enable", {})
    token = "YWRtaW46czNjcmV0"  # admin:s3cret
    browser.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )
    try:
        browser.get(f"{gw.url}/ui/")
        wait_for(browser, lambda d: function_row(d, "cat.openfaas-fn")[1:2] == ["openfaas-fn"])
    finally:
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
        browser.execute_cdp_cmd("Network.disable", {})
    # credentials in the address: the browser keeps them for the page's own requests
    browser.get(re.sub(r"^http://", "http://admin:s3cret@", gw.url) + "/ui/")
    wait_for(browser, lambda d: function_row(d, "cat.openfaas-fn")[1:2] == ["openfaas-fn"])
    assert text_of(browser, "error") == ""


def test_it_works_from_the_keyboard_in_a_narrow_window(browser: WebDriver, world: World) -> None:
    """Every form control has a name a screen reader reads out; Tab reaches the navigation and
    Enter follows it; at 400 px nothing needs scrolling sideways."""
    browser.set_window_size(400, 800)
    try:
        for page in ("#/", "#/invoke", "#/activations"):
            browser.get(f"{world.gateway.url}/ui/{page}")
            wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "main *"))
            unnamed = browser.execute_script(
                "return [...document.querySelectorAll('input, select, textarea, button')]"
                ".filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')"
                " && !e.textContent.trim()).map((e) => e.id || e.outerHTML)"
            )
            assert unnamed == [], (page, unnamed)
            wide = browser.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert wide <= 1, (page, wide)
        browser.get(f"{world.gateway.url}/ui/#/")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "nav a"))
        links = browser.find_elements(By.CSS_SELECTOR, "nav a")
        target = next(link for link in links if "activations" in link.get_attribute("href"))
        body = browser.find_element(By.TAG_NAME, "body")
        for _ in range(len(links) * 2 + 5):  # Tab until the link has the focus
            if browser.switch_to.active_element == target:
                break
            body.send_keys(Keys.TAB)
        assert browser.switch_to.active_element == target
        target.send_keys(Keys.ENTER)
        wait_for(browser, lambda d: d.current_url.endswith("#/activations"))
    finally:
        browser.set_window_size(WIDTH, HEIGHT)
