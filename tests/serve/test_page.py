"""The try-it page in headless Chromium (Debian's `chromium`, driven by Playwright): a real image
upload, a streamed answer that is the model's own answer to the same question."""

from __future__ import annotations

import shutil

import pytest

from tests.serve.conftest import SCENE, live_server

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.long,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt install chromium)")]

QUESTION = "What shape is the object at the top left?"


def test_upload_ask_and_watch_the_answer_stream(nano) -> None:
    expected = nano.answer(SCENE, QUESTION, max_new_tokens=256).text
    with live_server(nano) as (url, _), playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url + "/")
            page.set_input_files("#file", str(SCENE))
            page.wait_for_function("document.getElementById('preview').src.startsWith('data:image/png')")
            page.fill("#question", QUESTION)
            page.click("#send")
            page.wait_for_selector("body[data-done='1']", timeout=60_000)
            answer = page.inner_text("#answer")
            status = page.inner_text("#status")
        finally:
            browser.close()
    assert answer.strip() == expected and answer.strip()
    assert status.startswith("done in")
    assert any(u.endswith("/v1/chat/completions") for u in requests)
