"""The real page in Debian chromium (a tiny random model served in this process, so it takes seconds): a file named
like a Markdown link and an answer full of links, HTML and Markdown show as text, with no live link anywhere."""

from __future__ import annotations

import shutil
import time

import pytest
from apptools import scripted_answer, served, tiny_engine
from test_markup import ANSWER, NAME

from app.handlers import Handlers
from app.uploads import make_upload_folder

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
QUESTION = "Is **this** <i>[a link](http://q.test)</i>?"


@pytest.fixture(scope="module")
def url(tokenizer, tmp_path_factory):
    handlers = Handlers(tiny_engine(tokenizer), None, uploads=make_upload_folder(tmp_path_factory.mktemp("up")))
    handlers.engine.answer = scripted_answer(handlers.engine, ANSWER)
    with served(handlers) as (address, _):
        yield address


@pytest.mark.browser
def test_file_names_and_answers_are_text_on_the_page(url, tmp_path):
    from playwright.sync_api import sync_playwright

    path = tmp_path / NAME
    path.write_text("The lighthouse keeper counted ships every evening. The passkey is 12345. " * 8)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url, wait_until="load")
        page.set_input_files("#upload input[type=file]", str(path))
        page.wait_for_selector("#progress [data-state=done]", timeout=60_000)
        assert NAME in page.inner_text("#documents") and NAME in page.inner_text("#status")
        page.wait_for_selector("#question textarea:not([disabled])", timeout=10_000)
        page.fill("#question textarea", QUESTION)
        page.click("#ask")
        deadline = time.time() + 60
        while time.time() < deadline and "Recalled from" not in page.inner_text("#chat"):
            time.sleep(0.2)
        chat = page.inner_text("#chat")
        assert "".join(ANSWER) in " ".join(chat.split()) and QUESTION in chat
        assert f"Recalled from: {NAME}" in chat
        for area in ("#chat", "#documents", "#status", "#passages"):
            assert page.locator(f"{area} a[href]").count() == 0, page.inner_html(area)
        assert page.locator("#chat strong, #chat i, #chat script, #chat img").count() == 0
        browser.close()
