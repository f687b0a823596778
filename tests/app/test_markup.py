"""File names and model output are shown as text, never as live links or markup: in the chat, the documents
list, the status lines and the passages. Markdown is rendered here with markdown-it (CommonMark), the same rules
the page's renderer follows; test_markup_browser.py looks at the real page."""

from __future__ import annotations

import html
import re

import pytest
from apptools import run, scripted_answer
from markdown_it import MarkdownIt

from app import views
from app.session import Session

NASTY = [
    "[click](http://x.test).txt", "![pixel](http://x.test/p.png)", "<http://x.test>", "<a href='http://x.test'>x</a>",
    "<img src=x onerror=alert(1)>", "**bold** _it_ `code` ~~gone~~", "# heading", "1. first", "- item", "> quote",
    "&amp; &lt;b&gt;", r"back\slash \[", "$$x^2$$", "| a | b |", "[ref]: http://x.test", "line one\nline two",
]
BARE = ["see http://x.test now", "www.x.test", "mail me@x.test", "ftp://x.test"]
ANSWER = ["See [here](http://x.test) and ", "<a href='http://y.test'>y</a>, ", "http://z.test, www.w.test ",
          "or **bold** <script>alert(1)</script>."]
NAME = "[click](x.test).txt"  # a file name cannot hold '/', so this is as close to the as a file gets


def rendered(markdown: str) -> str:
    return MarkdownIt("commonmark").render(markdown)


def text_of(markdown: str) -> str:
    """What a person reads: the rendered Markdown's text (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", "", rendered(markdown))).strip()


def live_markup(markdown: str) -> list[str]:
    """The tags rendering makes of anything but our own bold, italics, paragraphs, lists and line breaks."""
    return [tag for tag in re.findall(r"<(\w+)", rendered(markdown)) if tag not in ("p", "strong", "em", "ul", "li",
                                                                                   "br")]


@pytest.mark.parametrize("text", NASTY + BARE)
def test_md_text_shows_exactly_the_text(text):
    escaped = views.md_text(text)
    assert live_markup(escaped) == [] and text_of(escaped) == text
    assert views.unescape(escaped) == text


@pytest.mark.parametrize("text", BARE)
def test_md_text_leaves_nothing_to_autolink(text):
    escaped = views.md_text(text)  # GFM autolinks bare URLs, www. and e-mail addresses: their marks are escaped
    assert "://" not in escaped and "www." not in escaped and re.search(r"(?<!\\)@", escaped) is None


@pytest.fixture
def odd(tmp_path):
    path = tmp_path / NAME
    path.write_text("The lighthouse keeper counted ships every evening. The passkey is 12345. " * 8)
    return path


def test_a_file_name_is_text_in_the_documents_list_the_status_and_the_passages(handlers, odd, tmp_path):
    session = Session()
    final = run(handlers.ingest([str(odd)], "", "", session))
    for key in ("documents", "status"):
        assert live_markup(final[key]) == [] and NAME in text_of(final[key]), final[key]
    run(handlers.ingest([str(odd)], "", "", session))  # "already in memory": a note with the name
    bad = tmp_path / "[x](y.test).docx"
    bad.write_bytes(b"PK\x03\x04")
    again = run(handlers.ingest([str(bad)], "", "", session))  # an error with the name
    assert live_markup(again["status"]) == [] and "“[x](y.test).docx”" in text_of(again["status"])
    passages = run(handlers.ask("What is the passkey?", session, "reread", 4, 0.0))["passages"]
    assert "<a" not in passages and html.escape(NAME) in passages


def test_the_models_answer_and_the_question_are_text_in_the_chat(handlers, odd, monkeypatch):
    session = Session()
    run(handlers.ingest([str(odd)], "", "", session))
    monkeypatch.setattr(handlers.engine, "answer", scripted_answer(handlers.engine, ANSWER))
    question = "Is **this** <i>[a link](http://q.test)</i>?"
    updates = list(handlers.ask(question, session, "reread", 16, 0.0))
    streamed = [u["chat"][-1]["content"] for u in updates if "chat" in u]
    assert all(live_markup(content) == [] for content in streamed)
    final = run(iter(updates))
    asked, answered = final["chat"][-2]["content"], final["chat"][-1]["content"]
    assert live_markup(asked) == [] and text_of(asked) == question
    assert re.findall(r"<(\w+)", rendered(answered)) == ["p", "p", "em"]  # only our own italic citation line
    assert text_of(answered).startswith("".join(ANSWER))
    assert f"Recalled from: {NAME}" in text_of(answered)
    assert final["result"]["answer"] == "".join(ANSWER)  # the API gets the model's text as it is
