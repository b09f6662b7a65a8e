"""The search console in headless Chromium against a real ``tandem serve`` on 127.0.0.1.

Every value the page shows is checked against the HTTP API answering the same
request: the ids of a search, both lists of a compare, the error message of a
refused request, the bundle facts of /info.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.console.browser import close_browser, new_browser
from tests.support.server import API_KEY, QUERIES, ServerProcess, running_server

pytestmark = pytest.mark.slow
WAIT_S = 30


# ----------------------------------------------------------------- page helpers


def wait(driver: webdriver.Chrome, timeout: float = WAIT_S) -> WebDriverWait[webdriver.Chrome]:
    return WebDriverWait(driver, timeout)


def open_console(driver: webdriver.Chrome, url: str, path: str = "/") -> None:
    """Load the page and wait until /info is shown; log lines of earlier pages are dropped."""
    driver.get_log("browser")  # type: ignore[no-untyped-call]
    driver.get(url + path)
    wait(driver).until(EC.text_to_be_present_in_element((By.ID, "connection-text"), "serving"))
    wait(driver).until(lambda d: d.execute_script("return document.readyState") == "complete")


def browser_errors(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """SEVERE entries of the browser console since the last call (the log is drained)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [e for e in entries if e["level"] == "SEVERE"]


def choose(driver: webdriver.Chrome, select_id: str, value: str) -> None:
    Select(driver.find_element(By.ID, select_id)).select_by_value(value)


def fill(driver: webdriver.Chrome, input_id: str, text: str) -> WebElement:
    field = driver.find_element(By.ID, input_id)
    field.clear()
    field.send_keys(text)
    return field


def search_by_keyboard(driver: webdriver.Chrome, query: str) -> None:
    """Type the query and press Enter, as a keyboard user does; wait for the answer."""
    results = driver.find_element(By.ID, "results")
    done = int(results.get_attribute("data-done") or 0)
    fill(driver, "query", query).send_keys(Keys.ENTER)
    wait(driver).until(lambda d: int(results.get_attribute("data-done") or 0) > done)
    assert results.get_attribute("aria-busy") == "false"


def shown_ids(driver: webdriver.Chrome, side: str) -> list[str]:
    items = driver.find_elements(By.CSS_SELECTOR, f"#pane-{side} li.hit")
    return [str(item.get_attribute("data-id")) for item in items]


def api_search(
    server: ServerProcess, body: dict[str, Any], key: str | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}/search", json=body, headers=headers, timeout=30)


def api_ids(server: ServerProcess, body: dict[str, Any], key: str | None = None) -> list[str]:
    response = api_search(server, body, key)
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"]]


def set_options(
    driver: webdriver.Chrome,
    k: int,
    variant: str,
    rescore: str,
    filter_text: str = "",
    oversample: str = "",
) -> None:
    fill(driver, "k", str(k))
    choose(driver, "variant-a", variant)
    choose(driver, "rescore-a", rescore)
    fill(driver, "filter", filter_text)
    fill(driver, "oversample", oversample)


# ----------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "target",
    [
        "/console/assets/../../../../etc/passwd",
        "/console/assets/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/console/assets/..%2f..%2f..%2fetc%2fpasswd",
        "/console/assets/../__init__.py",
        "/console/assets/%2e%2e/__init__.py",
    ],
)
def test_assets_reach_no_file_outside_their_folder(open_server: ServerProcess, target: str) -> None:
    """Sent byte for byte: HTTP clients would normalize the ``..`` away."""
    with socket.create_connection(("127.0.0.1", open_server.port), timeout=30) as sock:
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        answer = sock.makefile("rb").read().decode(errors="replace")
    assert answer.split()[1] == "404", answer[:200]
    assert "root:" not in answer and "mount_console" not in answer


def test_info_reports_bytes_per_document(open_server: ServerProcess) -> None:
    """What the console's variant table shows: index bytes over documents, per variant."""
    bundle = httpx.get(f"{open_server.url}/info", timeout=30).json()["bundle"]
    sizes = {}
    for variant in bundle["variants"]:
        assert variant["ntotal"] == bundle["n_docs"]
        assert variant["bytes_per_doc"] == round(variant["bytes"] / variant["ntotal"], 2)
        sizes[variant["name"]] = variant["bytes_per_doc"]
    # 768 sign bits pack into 96 bytes a document; floats take 32 times that
    assert sizes["bin-768"] < sizes["int8-768"] < sizes["f32-768"]
    assert sizes["f32-256"] < sizes["f32-768"]


def test_page_shows_the_bundle_without_console_errors(
    browser: webdriver.Chrome, open_server: ServerProcess
) -> None:
    info = httpx.get(f"{open_server.url}/info", timeout=30).json()
    for path in ("/", "/console"):
        open_console(browser, open_server.url, path)
        bundle = info["bundle"]
        assert bundle["version"] in browser.find_element(By.ID, "connection-text").text
        assert browser.find_element(By.ID, "bundle-version").text == bundle["version"]

        rows = browser.find_elements(By.CSS_SELECTOR, "#variants tbody tr")
        shown = {
            r.find_elements(By.TAG_NAME, "td")[0].text.split()[0]: r.find_elements(
                By.TAG_NAME, "td"
            )
            for r in rows
        }
        assert set(shown) == {v["name"] for v in bundle["variants"]}
        for variant in bundle["variants"]:
            cells = shown[variant["name"]]
            assert float(cells[2].text) == pytest.approx(variant["bytes_per_doc"], abs=0.5)
            assert cells[3].text == variant["device"]
        default_row = browser.find_element(By.CSS_SELECTOR, "#variants tr.default td")
        assert default_row.text == bundle["default_variant"]

        models = browser.find_element(By.ID, "model-facts").text
        student = info["student"]
        assert bundle["teacher"]["name"] in models
        assert bundle["teacher"]["fingerprint"][:12] in models
        assert student["name"] in models and student["fingerprint"][:12] in models
        alignment = student["aligned_to"]
        assert alignment["method"] in models
        for kind, cosine in alignment["heldout_cosine"].items():
            assert f"{kind} {cosine:.3f}" in models
        facts = browser.find_element(By.ID, "bundle-facts").text
        assert f"documents\n{bundle['n_docs']}" in facts
        assert f"default\n{bundle['default_variant']}" in facts

        # every control has a label the browser associates with it
        unlabeled = browser.execute_script(
            "return [...document.querySelectorAll('input, select')]"
            ".filter(e => e.labels.length === 0).map(e => e.id)"
        )
        assert unlabeled == []
        # the live panel filled in from /metrics
        wait(browser).until(lambda d: d.find_element(By.ID, "live-queue").text != "–")
        assert browser_errors(browser) == []


def test_search_shows_the_ids_of_the_api(
    browser: webdriver.Chrome, open_server: ServerProcess
) -> None:
    open_console(browser, open_server.url)
    cases = [
        (QUERIES[0], 5, "bin-768", "off", "", None),
        (QUERIES[1], 7, "bin-768", "on", "", 2),
        (QUERIES[2], 10, "f32-256", "", "topic=health", None),
        (QUERIES[3], 4, "int8-768", "on", '{"topic": "climate"}', None),
    ]
    for query, k, variant, rescore, filter_text, oversample in cases:
        set_options(browser, k, variant, rescore, filter_text, str(oversample or ""))
        search_by_keyboard(browser, query)
        body: dict[str, Any] = {"query": query, "k": k, "variant": variant}
        if rescore:
            body["rescore"] = rescore == "on"
        if oversample:
            body["oversample"] = oversample
        if filter_text:
            body["filter"] = (
                json.loads(filter_text) if filter_text.startswith("{") else {"topic": "health"}
            )
        expected = api_ids(open_server, body)
        assert expected, f"the API found nothing for {body}"
        assert shown_ids(browser, "a") == expected
        assert browser.find_elements(By.ID, "pane-b") == []
        pane = browser.find_element(By.ID, "pane-a")
        assert variant in pane.find_element(By.CSS_SELECTOR, ".pane-title").text
        # the stage timings: one legend entry per stage, and a bar
        stages = [
            li.get_attribute("data-stage")
            for li in pane.find_elements(By.CSS_SELECTOR, ".timing-legend li")
        ]
        assert stages == ["queue", "tokenize", "embed", "search", "rescore", "other"]
        assert pane.find_elements(By.CSS_SELECTOR, ".timing-bar span")
        if filter_text:
            topic = body["filter"]["topic"]
            for meta in pane.find_elements(By.CSS_SELECTOR, ".meta"):
                assert f"topic: {topic}" in meta.text
    # snippets and metadata come with every hit
    first = browser.find_element(By.CSS_SELECTOR, "#pane-a li.hit")
    assert first.find_element(By.CSS_SELECTOR, ".snippet").text
    assert "year:" in first.find_element(By.CSS_SELECTOR, ".meta").text
    assert browser_errors(browser) == []


def test_compare_shows_two_lists_their_overlap_and_moves(
    browser: webdriver.Chrome, open_server: ServerProcess
) -> None:
    open_console(browser, open_server.url)
    set_options(browser, 8, "bin-768", "off")
    checkbox = browser.find_element(By.ID, "compare")
    checkbox.send_keys(Keys.SPACE)  # keyboard, like the rest of the page
    assert checkbox.is_selected()
    wait(browser).until(EC.visibility_of_element_located((By.ID, "variant-b")))
    choose(browser, "variant-b", "f32-768")
    choose(browser, "rescore-b", "")
    query = QUERIES[4]
    search_by_keyboard(browser, query)

    ids_a = api_ids(open_server, {"query": query, "k": 8, "variant": "bin-768", "rescore": False})
    ids_b = api_ids(open_server, {"query": query, "k": 8, "variant": "f32-768"})
    assert shown_ids(browser, "a") == ids_a
    assert shown_ids(browser, "b") == ids_b
    shared = len(set(ids_a) & set(ids_b))
    overlap = browser.find_element(By.ID, "overlap").text
    assert overlap == f"{shared} of 8 shared"
    # where each result of B moved, relative to its rank in A
    for rank_b, item in enumerate(
        browser.find_elements(By.CSS_SELECTOR, "#pane-b li.hit"), start=1
    ):
        doc = item.get_attribute("data-id")
        move = item.find_element(By.CSS_SELECTOR, ".move").text
        if doc not in ids_a:
            assert move == "new"
        else:
            delta = ids_a.index(doc) + 1 - rank_b
            assert move == ("=" if delta == 0 else ("▲" if delta > 0 else "▼") + str(abs(delta)))
    only_a = [
        item.get_attribute("data-id")
        for item in browser.find_elements(By.CSS_SELECTOR, "#pane-a li.hit")
        if item.find_elements(By.CSS_SELECTOR, ".move.gone")
    ]
    assert only_a == [doc for doc in ids_a if doc not in ids_b]

    # a clamped snippet opens from the keyboard
    more = next(
        b for b in browser.find_elements(By.CSS_SELECTOR, "#pane-a button.more") if b.is_displayed()
    )
    snippet = more.find_element(By.XPATH, "preceding-sibling::p[1]")
    clamped = snippet.size["height"]
    more.send_keys(Keys.ENTER)
    assert more.get_attribute("aria-expanded") == "true" and more.text == "less"
    assert snippet.size["height"] > clamped

    # bin-768 alone against bin-768 rescored: the second list is the exact reranking
    choose(browser, "variant-b", "bin-768")
    choose(browser, "rescore-b", "on")
    search_by_keyboard(browser, query)
    rescored = api_ids(open_server, {"query": query, "k": 8, "variant": "bin-768", "rescore": True})
    assert shown_ids(browser, "b") == rescored
    assert "rescored" in browser.find_element(By.CSS_SELECTOR, "#pane-b .pane-title").text
    assert "first pass only" in browser.find_element(By.CSS_SELECTOR, "#pane-a .pane-title").text
    assert browser_errors(browser) == []


def test_api_errors_are_shown_as_the_api_message(
    browser: webdriver.Chrome, open_server: ServerProcess
) -> None:
    open_console(browser, open_server.url)
    refused: list[tuple[int, str, dict[str, Any]]] = [
        # (k, filter text, request body the page sends)
        (5, '{"a\\"b": 1}', {"filter": {'a"b': 1}, "k": 5}),
        (5000, "", {"k": 5000}),
    ]
    for k, filter_text, extra in refused:
        set_options(browser, k, "bin-768", "")
        fill(browser, "filter", filter_text)
        search_by_keyboard(browser, QUERIES[0])
        answer = api_search(open_server, {"query": QUERIES[0], "variant": "bin-768", **extra})
        assert 400 <= answer.status_code < 500
        box = browser.find_element(By.ID, "error")
        assert box.is_displayed()
        assert box.find_element(By.CSS_SELECTOR, ".error-message").text == answer.json()["error"]
        assert str(answer.status_code) in box.text
        # the only console noise is the browser noting the refused request itself
        for entry in browser_errors(browser):
            assert f"status of {answer.status_code}" in entry["message"], entry

    # an unknown variant refused in one pane of a compare leaves the other pane working
    fill(browser, "k", "3")
    fill(browser, "filter", "")
    browser.find_element(By.ID, "compare").click()
    browser.execute_script(
        "const s = document.getElementById('variant-b');"
        "s.add(new Option('gone-768', 'gone-768')); s.value = 'gone-768';"
    )
    search_by_keyboard(browser, QUERIES[1])
    answer = api_search(open_server, {"query": QUERIES[1], "k": 3, "variant": "gone-768"})
    assert answer.status_code == 422
    pane_b = browser.find_element(By.ID, "pane-b")
    assert pane_b.find_element(By.CSS_SELECTOR, ".error-message").text == answer.json()["error"]
    assert len(shown_ids(browser, "a")) == 3

    # a filter the page cannot parse is named before anything is sent
    browser.find_element(By.ID, "compare").click()
    fill(browser, "filter", "topic")
    search_by_keyboard(browser, QUERIES[1])
    assert "not key=value" in browser.find_element(By.ID, "error").text


def test_live_panel_follows_metrics(browser: webdriver.Chrome, open_server: ServerProcess) -> None:
    open_console(browser, open_server.url)
    set_options(browser, 3, "bin-768", "")
    for query in QUERIES[:3]:
        search_by_keyboard(browser, query)
    # the next refresh (every 3 s) sees the searches in the last-minute window
    wait(browser).until(lambda d: d.find_element(By.ID, "live-p50").text.endswith("ms"))
    rps = float(browser.find_element(By.ID, "live-rps").text)
    assert rps > 0
    assert browser.find_element(By.ID, "live-p99").text.endswith("ms")
    assert re.fullmatch(r"\d+(\.\d)?", browser.find_element(By.ID, "live-batch").text)
    assert browser.find_element(By.ID, "live-queue").text == "0"
    assert browser.find_elements(By.CSS_SELECTOR, "#live-spark path.line")
    assert browser_errors(browser) == []


def test_screenshots_desktop_and_narrow(
    browser: webdriver.Chrome, open_server: ServerProcess, screenshot_dir: Path
) -> None:
    """Compare results at 1280 px and at 360 px; the narrow page never scrolls sideways."""
    for name, width in (("desktop", 1280), ("narrow", 360)):
        browser.set_window_size(width, 900)
        open_console(browser, open_server.url)
        assert browser.execute_script("return window.innerWidth") == width
        set_options(browser, 5, "bin-768", "off")
        if not browser.find_element(By.ID, "compare").is_selected():
            browser.find_element(By.ID, "compare").click()
        choose(browser, "variant-b", "bin-768")
        choose(browser, "rescore-b", "on")
        search_by_keyboard(browser, "who noticed that mould could kill germs")
        wait(browser).until(lambda d: d.find_element(By.ID, "live-p50").text != "–")
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0, f"the page scrolls sideways by {overflow}px at {width}px"
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(width, min(int(height), 4000))
        path = screenshot_dir / f"console-{name}.png"
        assert browser.save_screenshot(str(path))
        assert path.stat().st_size > 10_000
    browser.set_window_size(1280, 900)
    assert browser_errors(browser) == []


def test_keyed_server_asks_for_the_key_once(tmp_path: Path, serve_args: list[str]) -> None:
    env = {"TANDEM_API_KEY": API_KEY}
    with running_server(tmp_path, serve_args, env, name="keyed") as server:
        driver = new_browser()
        try:
            driver.get(server.url + "/")
            dialog = wait(driver).until(EC.visibility_of_element_located((By.ID, "key-dialog")))
            # cancelled: the page shows the API's answer, and a way back to the prompt
            driver.find_element(By.ID, "key-cancel").click()
            refusal = httpx.get(f"{server.url}/info", timeout=30)
            assert refusal.status_code == 401
            error = wait(driver).until(EC.visibility_of_element_located((By.ID, "error")))
            message = error.find_element(By.CSS_SELECTOR, ".error-message").text
            assert message == refusal.json()["error"]
            assert "not connected" in driver.find_element(By.ID, "connection-text").text
            driver.find_element(By.ID, "change-key").send_keys(Keys.ENTER)
            wait(driver).until(EC.visibility_of_element_located((By.ID, "key-dialog")))
            key_field = driver.find_element(By.ID, "api-key")
            assert driver.switch_to.active_element == key_field
            key_field.send_keys("wrong-key" + Keys.ENTER)
            wait(driver).until(EC.text_to_be_present_in_element((By.ID, "key-message"), "refused"))
            assert dialog.is_displayed()
            driver.find_element(By.ID, "api-key").send_keys(API_KEY + Keys.ENTER)
            wait(driver).until(
                EC.text_to_be_present_in_element((By.ID, "connection-text"), "serving")
            )
            assert not dialog.is_displayed()
            assert not driver.find_element(By.ID, "error").is_displayed()
            # no /docs with a key: the page does not link to it
            assert not driver.find_element(By.ID, "docs-link").is_displayed()

            set_options(driver, 4, "f32-768", "")
            search_by_keyboard(driver, QUERIES[0])
            body = {"query": QUERIES[0], "k": 4, "variant": "f32-768"}
            assert shown_ids(driver, "a") == api_ids(server, body, API_KEY)
            assert api_search(server, body).status_code == 401  # the API still wants the key

            # asked once: a reload in the same tab goes straight to the bundle
            open_console(driver, server.url)
            assert not driver.find_element(By.ID, "key-dialog").is_displayed()
            for entry in browser_errors(driver):
                assert "status of 401" in entry["message"], entry
        finally:
            close_browser(driver)
