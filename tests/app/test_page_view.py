"""The evidence and the cited page through the handlers: an answer names its evidence (the chat, the passages, the
API), a click on a citation shows a PDF's page as an image with the evidence's boxes, or a text page with it marked,
and the page views are made once per session; the PDF bytes stay in the session after the upload is deleted."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace

import gradio as gr
import pytest
from apptools import FACTS, run
from pdf_factory import make_pdf

from app import pages, views
from app.handlers import Handlers
from app.session import Session
from app.uploads import make_upload_folder
from hmt_core.answer import Passage
from hmt_core.evidence import Evidence

QUESTION = "What is the passkey?"


def click(handlers: Handlers, session: Session, cite: str) -> dict:
    """What the page's click on a citation (data-cite) sends to show_cited."""
    return handlers.show_cited(session, gr.SelectData(None, {"index": cite, "value": cite, "selected": True}))


@pytest.fixture
def uploads(tmp_path):
    return make_upload_folder(tmp_path / "uploads")


@pytest.fixture
def read_pdf(fused, cache, uploads, tmp_path):
    """Handlers with their own upload folder, and a session that has read keeper.pdf uploaded there (the upload is
    deleted once read)."""
    handlers = Handlers(fused, cache, max_file_mb=1.0, uploads=uploads)
    upload = uploads / "abc" / "keeper.pdf"
    upload.parent.mkdir()
    shutil.copy(make_pdf(tmp_path / "keeper.pdf", FACTS), upload)
    session = Session()
    run(handlers.ingest([str(upload)], "", "", session))
    assert session.ready and not upload.exists()
    return handlers, session


def test_the_answer_names_its_evidence_in_the_chat_the_passages_and_the_result(read_pdf):
    handlers, session = read_pdf
    final = run(handlers.ask(QUESTION, session, "reread", 4, 0.0))
    evidence = final["result"]["evidence"]
    assert evidence["source"] == "keeper.pdf" and "passkey" in evidence["text"].lower()
    text = session.memory.sources["keeper.pdf"].text
    assert text[evidence["char_start"]:evidence["char_end"]] == evidence["text"]
    assert session.memory.sources["keeper.pdf"].page_at(evidence["char_start"]) == evidence["page"] == 2
    cited = final["result"]["citations"][evidence["citation"] - 1]
    assert " ".join(evidence["text"].split()) in " ".join(cited["text"].split())
    assert "Evidence (keeper.pdf, p. 2): “The passkey is 12345.”" in views.unescape(session.chat[-1]["content"])
    shown = final["passages"]
    assert shown.index("hmt-evidence-box") < shown.index('class="hmt-passage"')  # the evidence first
    assert re.search(r'<mark class="[^"]*hmt-evidence[^"]*">[^<]*passkey', shown)  # and marked in its passage
    assert 'data-cite="evidence"' in shown and 'data-cite="1"' in shown


def test_a_click_on_the_evidence_shows_its_pdf_page_with_boxes_after_the_upload_is_gone(read_pdf):
    handlers, session = read_pdf
    run(handlers.ask(QUESTION, session, "reread", 4, 0.0))
    shown = click(handlers, session, "evidence")
    view = shown["page_view"]
    assert 'data-kind="pdf" data-page="2"' in view and "page 2 of 3" in view and "evidence marked" in view
    assert '<img class="hmt-page-image" src="data:image/png;base64,' in view
    boxes = re.findall(r'<mark class="hmt-box" style="left:([\d.]+)%;top:([\d.]+)%;width:([\d.]+)%;height:([\d.]+)%"',
                       view)
    assert boxes and all(0 <= float(x) <= 100 for box in boxes for x in box)
    assert shown["page_prev"]["interactive"] and shown["page_next"]["interactive"]
    after = handlers.next_page(session)
    assert 'data-page="3"' in after["page_view"] and "hmt-box" not in after["page_view"]
    assert after["page_prev"]["interactive"] and not after["page_next"]["interactive"]  # the last page
    assert 'data-page="3"' in handlers.next_page(session)["page_view"]  # no page past the last
    assert 'data-page="2"' in handlers.previous_page(session)["page_view"]
    first = handlers.previous_page(session)
    assert 'data-page="1"' in first["page_view"] and not first["page_prev"]["interactive"]


def test_the_answer_is_outlined_inside_the_evidence_on_the_pdf_page(read_pdf):
    handlers, session = read_pdf
    source = session.memory.sources["keeper.pdf"]
    start, end = pages.page_span(source, 2)
    passage = Passage([1], "keeper.pdf", 2, 2, start, end, source.text[start:end], 1.0)
    at = source.text.index("The passkey is 12345.", start)
    evidence = [Evidence("The passkey is 12345.", "keeper.pdf", 2, 2, at, at + 21, 1.0)]
    session.cited = handlers._targets(session.memory, [passage], evidence, "12345")
    cited = session.cited["evidence"]
    assert source.text[cited.answer_start:cited.answer_end] == "12345" and cited.answer_start == at + 15
    view = click(handlers, session, "evidence")["page_view"]
    assert "evidence and answer marked" in view
    box = r'style="left:([\d.]+)%;top:([\d.]+)%;width:([\d.]+)%;height:([\d.]+)%"'
    [whole] = [tuple(map(float, b)) for b in re.findall(r'<mark class="hmt-box" ' + box, view)]
    [answer] = [tuple(map(float, b)) for b in re.findall(r'<mark class="hmt-box hmt-answer-box" ' + box, view)]
    assert whole[0] < answer[0] and answer[0] + answer[2] <= whole[0] + whole[2] + 0.1  # inside the evidence
    assert abs(answer[1] - whole[1]) < 0.5 and answer[2] < whole[2] / 2
    for said in ("", "the tin box"):  # after a 'not found', or an answer the evidence does not hold
        cited = handlers._targets(session.memory, [passage], evidence, said)["evidence"]
        assert cited.answer_start is None and cited.answer_end is None


def test_page_views_are_made_once_per_session(read_pdf, monkeypatch):
    handlers, session = read_pdf
    run(handlers.ask(QUESTION, session, "reread", 4, 0.0))
    calls = []
    real = pages.render_pdf_page
    monkeypatch.setattr(pages, "render_pdf_page", lambda *args, **kw: calls.append(args[1]) or real(*args, **kw))
    one = click(handlers, session, "evidence")["page_view"]
    handlers.next_page(session)
    again = click(handlers, session, "evidence")["page_view"]
    assert one == again and calls == [2, 3]


def test_a_citation_of_a_text_source_shows_its_page_text_with_the_evidence_marked(fused_handlers, notes_ready):
    final = run(fused_handlers.ask("Where did the zebra sleep?", notes_ready, "reread", 4, 0.0))
    evidence = final["result"]["evidence"]
    view = click(fused_handlers, notes_ready, "evidence")["page_view"]
    assert 'data-kind="text"' in view and "page 1 of 1" in view
    marked = re.search(r'<mark class="hmt-cited hmt-evidence">([^<]*)</mark>', view)
    assert marked and marked.group(1) == " ".join(evidence["text"].split())
    assert "hmt-cited" in view.replace(marked.group(0), "")  # the rest of the passage, marked more lightly
    assert "<img" not in view and "hmt-answer" not in view
    cited = notes_ready.cited["evidence"]
    word = re.search(r"\w+", evidence["text"][5:])  # a word of the evidence taken as the answer
    at = cited.char_start + 5 + word.start()
    notes_ready.cited["evidence"] = replace(cited, answer_start=at, answer_end=at + len(word.group()))
    view = click(fused_handlers, notes_ready, "evidence")["page_view"]
    assert f'<mark class="hmt-cited hmt-evidence hmt-answer">{word.group()}</mark>' in view
    assert "evidence and answer marked" in view


def test_a_locked_pdf_shows_its_page_as_text(fused, cache, tmp_path):
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=make_pdf(tmp_path / "plain.pdf", FACTS))
    writer.encrypt(user_password="open sesame", owner_password="owner", algorithm="AES-128")
    writer.write(tmp_path / "locked.pdf")
    handlers, session = Handlers(fused, cache, max_file_mb=1.0), Session()
    run(handlers.ingest([str(tmp_path / "locked.pdf")], "", "open sesame", session))
    assert session.ready and session.originals == {}
    run(handlers.ask(QUESTION, session, "reread", 4, 0.0))
    view = click(handlers, session, "evidence")["page_view"]
    assert 'data-kind="text"' in view and "page images are not kept for this PDF" in view
    assert "hmt-evidence" in view


def test_a_cached_memory_still_keeps_the_pdf_and_api_clients_keep_none(read_pdf, tmp_path):
    handlers, first = read_pdf
    (tmp_path / "again").mkdir()
    pdf = make_pdf(tmp_path / "again" / "keeper.pdf", FACTS)
    second = Session()
    run(handlers.ingest([str(pdf)], "", "", second))
    assert second.documents[0].from_cache and list(second.originals) == list(first.originals)
    client = Session()
    for _ in handlers.api_ingest([str(pdf)], "", "", client):
        pass
    assert client.ready and client.originals == {}


def test_clearing_forgets_the_pdf_bytes_and_the_page_view(read_pdf):
    handlers, session = read_pdf
    run(handlers.ask(QUESTION, session, "reread", 4, 0.0))
    click(handlers, session, "evidence")
    cleared = handlers.clear(session)
    assert session.originals == {} and session.cited == {} and session.viewing is None and not len(session.views)
    assert "Click the evidence" in cleared["page_view"] and not cleared["page_next"]["interactive"]
    assert "Click the evidence" in click(handlers, session, "evidence")["page_view"]
