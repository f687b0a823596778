"""Every kind of bad input through the page's handlers: a clear message, and nothing read before is lost."""

from __future__ import annotations

import re

import pytest
from apptools import run
from pdf_factory import make_pdf
from pypdf import PdfWriter

from app.cache import STATE_DIR
from app.session import Session
from app.views import unescape
from app.handlers import MAX_QUESTION_CHARS
from hmt_core.state import LEXICAL_DIR


def assert_kept(session: Session, segments: int) -> None:
    """The earlier document is still in memory, unchanged, and chat is still possible."""
    assert session.ready and session.memory.num_segments == segments
    assert [d.name for d in session.documents][0] == "keeper.pdf"
    assert not session.busy


def assert_clear(message: str, *words: str) -> None:
    """A readable message for a person (as the page shows it): names the problem, no tracebacks or internals."""
    message = unescape(message)
    assert message and not re.search(r"Traceback|Exception|Error\b|\\x", message), message
    for word in words:
        assert word.lower() in message.lower(), message


def ingest_bad(handlers, session, path, password=""):
    segments = session.memory.num_segments
    final = run(handlers.ingest([str(path)], "", password, session))
    assert_kept(session, segments)
    return final


def encrypted(tmp_path):
    writer = PdfWriter(clone_from=make_pdf(tmp_path / "plain.pdf", ["A locked secret: the vault code is 4417."]))
    writer.encrypt(user_password="open sesame", owner_password="owner", algorithm="AES-128")
    writer.write(tmp_path / "locked.pdf")
    return tmp_path / "locked.pdf"


def test_encrypted_pdf_asks_for_the_password_then_reads_with_it(handlers, ready, tmp_path):
    path = encrypted(tmp_path)
    final = ingest_bad(handlers, ready, path)
    assert_clear(final["status"], "locked.pdf", "password-protected", "password box")
    final = run(handlers.ingest([str(path)], "", "open sesame", ready))
    assert [d.name for d in ready.documents] == ["keeper.pdf", "locked.pdf"]
    assert "vault code" in ready.memory.sources["locked.pdf"].text


def test_a_password_protected_pdf_is_never_cached(handlers, ready, tmp_path):
    entries = len(handlers.cache)
    path = encrypted(tmp_path)
    for _ in range(2):
        session = Session()
        run(handlers.ingest([str(path)], "", "open sesame", session))
        assert session.documents[0].name == "locked.pdf" and not session.documents[0].from_cache
    assert len(handlers.cache) == entries  # its decrypted text was never written to disk
    assert not any(b"vault code" in p.read_bytes() for p in handlers.cache.root.rglob("*") if p.is_file())


def test_wrong_password(handlers, ready, tmp_path):
    final = ingest_bad(handlers, ready, encrypted(tmp_path), password="guess")
    assert_clear(final["status"], "password", "not correct")


def test_encrypted_pdf_is_not_served_from_the_cache_without_its_password(handlers, ready, tmp_path):
    path = encrypted(tmp_path)
    run(handlers.ingest([str(path)], "", "open sesame", Session()))
    final = ingest_bad(handlers, ready, path)
    assert_clear(final["status"], "password-protected")


def test_scanned_pdf(handlers, ready, tmp_path):
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    writer.write(tmp_path / "scan.pdf")
    assert_clear(ingest_bad(handlers, ready, tmp_path / "scan.pdf")["status"], "no text layer", "OCR")


def test_truncated_pdf(handlers, ready, pdf, tmp_path):
    (tmp_path / "half.pdf").write_bytes(pdf.read_bytes()[:400])
    assert_clear(ingest_bad(handlers, ready, tmp_path / "half.pdf")["status"], "half.pdf", "damaged")


def test_empty_file(handlers, ready, tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    assert_clear(ingest_bad(handlers, ready, tmp_path / "empty.txt")["status"], "empty")


def test_wrong_type(handlers, ready, tmp_path):
    (tmp_path / "report.docx").write_bytes(b"PK\x03\x04 not really a document")
    assert_clear(ingest_bad(handlers, ready, tmp_path / "report.docx")["status"], "report.docx", ".pdf")


def test_over_the_size_limit(handlers, ready, tmp_path):
    path = tmp_path / "huge.txt"
    path.write_text("word " * 300_000)  # 1.5 MB; the handlers fixture allows 1 MB
    assert_clear(ingest_bad(handlers, ready, path)["status"], "huge.txt", "limit")


def test_text_that_is_not_utf8(handlers, ready, tmp_path):
    (tmp_path / "old.txt").write_bytes("Café crème – “quoted”".encode("cp1252"))
    assert_clear(ingest_bad(handlers, ready, tmp_path / "old.txt")["status"], "UTF-8", "Windows-1252")


def test_empty_paste_and_nothing_given(handlers, ready):
    segments = ready.memory.num_segments
    final = run(handlers.ingest([], "   \n ", "", ready))
    assert_clear(final["status"], "Add a file")
    assert_kept(ready, segments)


def test_a_bad_file_among_good_ones_is_reported_and_the_others_are_read(handlers, pdf, tmp_path):
    (tmp_path / "notes.txt").write_text("The gardener planted tulips in March. " * 20)
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    session = Session()
    final = run(handlers.ingest([str(pdf), str(tmp_path / "broken.pdf"), str(tmp_path / "notes.txt")], "", "",
                                session))
    assert [d.name for d in session.documents] == ["keeper.pdf", "notes.txt"]
    assert_clear(final["status"], "broken.pdf")
    assert "Memory ready: 2 documents" in final["progress"]


@pytest.mark.parametrize("question, words", [
    ("", ["question first"]),
    ("   ", ["question first"]),
    ("x" * (MAX_QUESTION_CHARS + 1), ["limit", f"{MAX_QUESTION_CHARS:,}"]),
])
def test_empty_or_huge_question(handlers, ready, question, words):
    segments = ready.memory.num_segments
    final = run(handlers.ask(question, ready))
    assert_clear(final["ask_status"], *words)
    assert ready.chat == [] and "result" not in final
    assert_kept(ready, segments)


def test_question_before_any_document(handlers):
    session = Session()
    final = run(handlers.ask("Who is Mr. Bingley?", session))
    assert_clear(final["ask_status"], "Add a document first")
    assert session.chat == [] and session.memory is None


def test_question_while_reading(handlers, ready):
    ready.busy = True
    final = run(handlers.ask("What is the passkey?", ready))
    assert_clear(final["ask_status"], "Wait until reading finishes")
    ready.busy = False


@pytest.mark.parametrize("question", ["the of and", "?!? ...", "这是什么", "🙂"])
def test_a_question_with_no_words_to_match_still_answers_from_memory(fused_handlers, notes_ready, question):
    final = run(fused_handlers.ask(question, notes_ready, "reread", 4, 0.0))
    assert final["ask_status"] == ""
    citations = final["result"]["citations"]
    assert citations and citations[0]["recall_channels"] == ["memory", "lexical", "token"]
    assert all(c["channels"]["lexical"]["score"] == 0 for c in citations)  # no word matched: memory (and keys) chose
    assert 'class="hmt-word"' not in final["passages"].split("</div>", 1)[1]
    assert final["chat"][-1]["role"] == "assistant" and final["chat"][-1]["content"]


def test_a_cached_memory_whose_word_index_was_damaged_is_read_again(handlers, pdf):
    run(handlers.ingest([str(pdf)], "", "", Session()))
    (entry,) = [p for p in handlers.cache.root.iterdir() if p.is_dir()]
    for path in (entry / STATE_DIR / LEXICAL_DIR).iterdir():
        path.write_bytes(b"damaged")
    session = Session()
    final = run(handlers.ingest([str(pdf)], "", "", session))
    assert not session.documents[0].from_cache
    assert "ℹ️ The stored memory of “keeper.pdf” was damaged, so it was read again." in unescape(final["status"])
    assert len(session.memory.lexical) == session.memory.num_segments
    assert float(session.memory.lexical.scores("passkey").max()) > 0
    assert len(handlers.cache) == 1  # stored again, whole
