"""The search page in a real browser: the real server (uvicorn on a free loopback port) and
Debian's headless Chromium driven by Playwright. Type a query, see results and timings.

Skips cleanly when Playwright or /usr/bin/chromium is missing (never runs ``playwright install``).
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import threading
import time

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")
CHROMIUM = os.environ.get("EMBEDX_CHROMIUM", "/usr/bin/chromium")
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which("chromium"):
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)

import uvicorn  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from embedx.retrieval import build_lexical_bundle  # noqa: E402
from serving.app import create_app  # noqa: E402
from test_server_kit import config_for  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SQUARE = "data:image/svg+xml;base64," + base64.b64encode(
    b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8" fill="teal"/></svg>'
).decode()


@pytest.fixture(scope="module")
def server_url(workspace, tmp_path_factory):
    # a second collection whose documents store an `image` URL (the hook composed image retrieval will use)
    pics = {"p1": {"title": "Teal square", "text": "a small teal square", "image": SQUARE},
            "p2": {"title": "Not an image", "text": "a square that is a script", "image": "javascript:alert(1)"}}
    pics_path = build_lexical_bundle(pics, tmp_path_factory.mktemp("pics") / "bundle",
                                     store_fields=("title", "text", "image"))
    port = _free_port()
    cfg = config_for(workspace, port=port)
    collections = {**cfg.model_dump()["collections"], "pics": {"sparse": {"bundle": str(pics_path)}}}
    app = create_app(config_for(workspace, port=port, collections=collections))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def page(server_url):
    executable = CHROMIUM if os.path.isfile(CHROMIUM) else shutil.which("chromium")
    with playwright_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=executable, args=ARGS, headless=True)
        except playwright_api.Error as e:          # a broken or incompatible browser: skip, not fail
            pytest.skip(f"cannot start Chromium: {str(e).splitlines()[0]}")
        pg = browser.new_page()            # the page's own CSP stays on: no inline or eval'd script
        pg.set_default_timeout(15000)
        expect.set_options(timeout=15000)
        yield pg
        browser.close()


def test_type_a_query_and_see_results(page, server_url):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server_url + "/")
    page.wait_for_selector("#mode option", state="attached")                    # modes read from /v1/indexes
    assert page.input_value("#collection") == "demo"
    assert page.eval_on_selector_all("#mode option", "els => els.map(e => e.value)") == ["sparse", "dense", "hybrid"]
    assert page.input_value("#mode") == "hybrid"                 # the collection's default

    page.fill("#q", "why does the moon cause tides")
    page.select_option("#mode", "sparse")
    page.fill("#k", "3")
    page.click("#go")
    page.wait_for_selector("#results li.hit")
    hits = page.locator("#results li.hit")
    assert hits.count() == 3
    assert hits.first.get_attribute("data-id") == "astronomy-03"
    assert "The Moon and the tides" in hits.first.inner_text()
    assert "score" in hits.first.inner_text()
    timings = page.inner_text("#timings")
    assert "3 hits" in timings and "sparse" in timings and "total" in timings and "ms" in timings

    page.select_option("#mode", "hybrid")                        # another mode through the same page
    page.fill("#k", "5")
    page.click("#go")
    expect(page.locator("#timings")).to_contain_text("hybrid")
    expect(page.locator("#results li.hit")).to_have_count(5)
    assert not errors, errors


def test_errors_are_shown_not_thrown(page, server_url):
    page.goto(server_url + "/")
    page.wait_for_selector("#mode option", state="attached")
    page.fill("#q", "tides")
    page.eval_on_selector("#k", "el => { el.removeAttribute('max'); el.value = '100000'; }")
    page.click("#go")
    expect(page.locator("#error")).to_contain_text("validation_error")
    assert page.locator("#results li.hit").count() == 0


def test_collections_and_the_image_hook(page, server_url):
    page.goto(server_url + "/")
    page.wait_for_selector("#mode option", state="attached")
    assert page.is_visible("#collection")                                     # two collections: a selector
    page.select_option("#collection", "pics")
    expect(page.locator("#mode option")).to_have_count(1)                    # pics is sparse only
    page.fill("#q", "square")
    page.click("#go")
    expect(page.locator("#results li.hit")).to_have_count(2)
    shown = page.locator("#results li.hit img")
    expect(shown).to_have_count(1)                                            # a javascript: URL is not shown
    assert shown.first.get_attribute("src") == SQUARE
    assert page.locator("#results li.hit:has(img)").get_attribute("data-id") == "p1"
