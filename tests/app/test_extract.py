"""Tests for app.extract on documents generated in tmp_path: good ones of every kind, and every kind of bad input."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from ebooklib import epub
from pdf_factory import make_pdf, paginate
from pypdf import PageObject, PdfReader, PdfWriter
from pypdf.errors import DependencyError

from app.extract import PAGE_CHARS, Document, ExtractionError, OpenedDocument, open_document, open_text



def whole(opened: OpenedDocument) -> Document:
    """Every page of an opened document that holds text, as ingest collects them."""
    return Document(opened.name, [page for page in opened.pages if page.text], opened.kind)


def extract(path: Path, **kwargs) -> Document:
    """The whole document through the app's one door, open_document."""
    return whole(open_document(path, **kwargs))


def extract_text(text: str) -> Document:
    """Pasted text through open_text."""
    return whole(open_text(text))


THREE_PAGES = [
    "Chapter One\nThe lighthouse keeper counted ships every evening.",
    "Chapter Two\nA storm arrived from the west on the ninth day.",
    "Chapter Three\nThe keeper's logbook was found dry in a tin box.",
]


def expect_error(code: str, path: Path, **kwargs) -> ExtractionError:
    """Extract path, check it fails with code, and that the message is a readable sentence naming no internals."""
    with pytest.raises(ExtractionError) as info:
        extract(path, **kwargs)
    error = info.value
    assert error.code == code
    assert error.message == str(error)
    assert len(error.message) > 30 and error.message.rstrip().endswith(".")
    assert not re.search(r"Error|Traceback|Exception|\\x|b'", error.message), error.message
    return error


def write(path: Path, data: bytes | str) -> Path:
    """Write bytes or UTF-8 text to path and return it."""
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def encrypted_pdf(tmp_path: Path, algorithm: str, user_password: str = "secret") -> Path:
    """The three-page PDF encrypted with pypdf's writer."""
    writer = PdfWriter(clone_from=make_pdf(tmp_path / "plain.pdf", THREE_PAGES))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm=algorithm)
    path = tmp_path / f"locked-{algorithm}.pdf"
    writer.write(path)
    return path


# --- PDF ---------------------------------------------------------------------------------------------


def test_pdf_keeps_page_numbers_and_text(tmp_path):
    doc = extract(make_pdf(tmp_path / "three.pdf", THREE_PAGES))
    assert isinstance(doc, Document)
    assert (doc.name, doc.kind) == ("three.pdf", "pdf")
    assert [page.number for page in doc.pages] == [1, 2, 3]
    for page, source in zip(doc.pages, THREE_PAGES):
        assert page.text == source
    assert doc.text == "\n\n".join(THREE_PAGES)
    assert doc.num_chars == len(doc.text)


def test_pdf_blank_page_is_skipped_but_numbers_stay(tmp_path):
    doc = extract(make_pdf(tmp_path / "gap.pdf", [THREE_PAGES[0], "", THREE_PAGES[2]]), name="Report")
    assert doc.name == "Report"
    assert [page.number for page in doc.pages] == [1, 3]


def test_open_document_gives_kind_page_count_digest_and_pages(tmp_path):
    path = make_pdf(tmp_path / "three.pdf", THREE_PAGES)
    opened = open_document(path)
    assert (opened.name, opened.kind, opened.page_count) == ("three.pdf", "pdf", 3)
    assert opened.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [(page.number, page.text) for page in opened.pages] == list(enumerate(THREE_PAGES, start=1))


def test_pdf_text_is_tidied(tmp_path):
    source = "An exam-\nple of a well    spaced line, well-\nKnown 2-\n3\n\nA new paragraph."
    doc = extract(make_pdf(tmp_path / "tidy.pdf", [source]))
    assert doc.pages[0].text == "An example of a well spaced line, well-\nKnown 2-\n3\n\nA new paragraph."


def test_pdf_ligatures_and_soft_hyphens_are_undone(tmp_path, monkeypatch):
    monkeypatch.setattr(PageObject, "extract_text", lambda self, *a, **k: "an e\ufb03cient co\u00ad\nordination")
    assert extract(make_pdf(tmp_path / "lig.pdf", ["x"])).pages[0].text == "an efficient coordination"


def test_pdf_factory_wraps_long_lines_and_fits_forty_lines(tmp_path):
    text = "\n\n".join(f"Paragraph {i}: " + "the quick brown fox jumps over the lazy dog " * 5 for i in range(40))
    pages = paginate(text)
    doc = extract(make_pdf(tmp_path / "long.pdf", pages))
    assert len(doc.pages) == len(pages) > 3
    assert all(len(page.text.splitlines()) <= 40 for page in doc.pages)
    assert doc.text.split() == text.split()


def test_pdf_glued_words_fall_back_to_layout_mode(tmp_path, monkeypatch):
    glued = "Thewordsofthislineruntogether. " * 10
    spaced = "The words of this line run together. " * 10

    def fake_extract_text(self, *args, extraction_mode="plain", **kwargs):
        return spaced if extraction_mode == "layout" else glued

    monkeypatch.setattr(PageObject, "extract_text", fake_extract_text)
    assert extract(make_pdf(tmp_path / "glued.pdf", ["x"])).pages[0].text == spaced.strip()


def test_pdf_keeps_plain_text_when_layout_mode_is_no_better(tmp_path, monkeypatch):
    table = "x=1;y=2;z=3;" * 30

    def fake_extract_text(self, *args, extraction_mode="plain", **kwargs):
        return table if extraction_mode == "plain" else "x = 1 ; y = 2 ; z = 3 ; " * 30

    monkeypatch.setattr(PageObject, "extract_text", fake_extract_text)
    assert extract(make_pdf(tmp_path / "table.pdf", ["x"])).pages[0].text == table


def test_pdf_damaged_page_does_not_lose_the_others(tmp_path, monkeypatch):
    real = PageObject.extract_text

    def flaky(self, *args, **kwargs):
        if "Two" in real(self):
            raise ValueError("bad content stream")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PageObject, "extract_text", flaky)
    assert [page.number for page in extract(make_pdf(tmp_path / "flaky.pdf", THREE_PAGES)).pages] == [1, 3]


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-256"])
def test_encrypted_pdf_without_password(tmp_path, algorithm):
    error = expect_error("encrypted", encrypted_pdf(tmp_path, algorithm))
    assert "password" in error.message


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-256"])
def test_encrypted_pdf_with_wrong_password(tmp_path, algorithm):
    expect_error("wrong_password", encrypted_pdf(tmp_path, algorithm), password="guess")


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-256"])
def test_encrypted_pdf_with_right_password(tmp_path, algorithm):
    doc = extract(encrypted_pdf(tmp_path, algorithm), password="secret")
    assert [page.text for page in doc.pages] == THREE_PAGES


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-256"])
def test_owner_password_only_pdf_reads_without_password(tmp_path, algorithm):
    doc = extract(encrypted_pdf(tmp_path, algorithm, user_password=""))
    assert len(doc.pages) == 3


def test_aes_pdf_without_cryptography_says_how_to_fix(tmp_path, monkeypatch):
    path = encrypted_pdf(tmp_path, "AES-256")

    def no_crypto(self, password):
        raise DependencyError("cryptography is required for AES algorithm")

    monkeypatch.setattr(PdfReader, "decrypt", no_crypto)
    error = expect_error("missing_dependency", path)
    assert "pip install pypdf[crypto]" in error.message


def test_scanned_pdf_without_text_layer(tmp_path):
    writer = PdfWriter()
    for _ in range(2):
        writer.add_blank_page(width=595, height=842)
    path = tmp_path / "scan.pdf"
    writer.write(path)
    error = expect_error("no_text_layer", path)
    assert "OCR" in error.message


def test_pdf_without_pages_is_empty(tmp_path):
    path = tmp_path / "none.pdf"
    PdfWriter().write(path)
    expect_error("empty", path)


def test_truncated_pdf_is_corrupt(tmp_path):
    data = make_pdf(tmp_path / "whole.pdf", THREE_PAGES).read_bytes()
    expect_error("corrupt", write(tmp_path / "half.pdf", data[: len(data) // 2]))


def test_pdf_named_file_that_is_not_a_pdf(tmp_path):
    error = expect_error("corrupt", write(tmp_path / "notes.pdf", "just some notes, not a PDF\n"))
    assert "not a real PDF" in error.message


# --- plain text and Markdown -------------------------------------------------------------------------


def test_txt_with_bom_is_read_and_bom_dropped(tmp_path):
    doc = extract(write(tmp_path / "bom.txt", b"\xef\xbb\xbfHello, world.\r\nSecond line.\r\n"))
    assert (doc.kind, [page.text for page in doc.pages]) == ("txt", ["Hello, world.\nSecond line."])


def test_txt_utf16_with_bom_is_read(tmp_path):
    doc = extract(write(tmp_path / "wide.txt", "Grüße aus Köln.".encode("utf-16")))
    assert doc.text == "Grüße aus Köln."


def test_txt_form_feeds_make_pages(tmp_path):
    doc = extract(write(tmp_path / "ff.txt", "one\fthree? no, two\f\fpage four\f"))
    assert [(page.number, page.text) for page in doc.pages] == [(1, "one"), (2, "three? no, two"), (4, "page four")]


def test_long_txt_is_cut_into_pages_at_paragraphs(tmp_path):
    paragraphs = [f"Paragraph {i}. " + "Words follow words here. " * (5 + i % 7) for i in range(120)]
    paragraphs = [paragraph.strip() for paragraph in paragraphs]
    text = "\n\n".join(paragraphs)
    doc = extract(write(tmp_path / "long.txt", text))
    assert len(doc.pages) > 5
    assert [page.number for page in doc.pages] == list(range(1, len(doc.pages) + 1))
    assert all(len(page.text) <= PAGE_CHARS for page in doc.pages)
    assert all(page.text.startswith("Paragraph ") for page in doc.pages)
    assert doc.text == text.strip()


def test_markdown_is_kept_as_written(tmp_path):
    source = "# Title\n\nSome *emphasis* and a [link](https://example.org).\n\n    code stays indented\n"
    for suffix in (".md", ".markdown"):
        doc = extract(write(tmp_path / f"readme{suffix}", source))
        assert (doc.kind, doc.text) == ("md", source.strip())


def test_cp1252_text_is_not_utf8(tmp_path):
    error = expect_error("not_utf8", write(tmp_path / "old.txt", "Café crème – “quoted”".encode("cp1252")))
    assert "Windows-1252" in error.message and "UTF-8" in error.message


def test_txt_with_nul_bytes_is_binary(tmp_path):
    error = expect_error("unsupported_type", write(tmp_path / "data.txt", b"MZ\x90\x00\x03\x00\x00\x00binary"))
    assert "binary" in error.message


def test_txt_that_is_really_a_pdf(tmp_path):
    data = make_pdf(tmp_path / "real.pdf", THREE_PAGES).read_bytes()
    error = expect_error("unsupported_type", write(tmp_path / "renamed.txt", data))
    assert ".pdf" in error.message


def test_whitespace_only_txt_is_empty(tmp_path):
    expect_error("empty", write(tmp_path / "blank.txt", " \n\n\t \n"))


# --- HTML and EPUB -----------------------------------------------------------------------------------


def test_html_keeps_visible_text_only(tmp_path):
    html = """<!DOCTYPE html><html><head><title>Tab title</title><style>p {color: red}</style></head>
    <body><nav><a href="/">Home</a> | <a href="/about">About</a></nav>
    <h1>Tide   tables</h1><!-- a comment -->
    <p>High tide is at <b>six</b>
       in the morning.<br>Low tide follows.</p>
    <script>alert("no")</script><ul><li>First</li><li>Second</li></ul></body></html>"""
    doc = extract(write(tmp_path / "page.html", html))
    assert doc.kind == "html"
    assert doc.text == "Tide tables\n\nHigh tide is at six in the morning.\nLow tide follows.\n\nFirst\n\nSecond"


def build_epub(path: Path, chapters: list[tuple[str, str]]) -> Path:
    """An EPUB with one XHTML document per (title, body) chapter, in spine order."""
    book = epub.EpubBook()
    book.set_identifier("test-book")
    book.set_title("Test Book")
    book.set_language("en")
    items = []
    for number, (title, body) in enumerate(chapters, start=1):
        item = epub.EpubHtml(title=title, file_name=f"chap{number}.xhtml", lang="en")
        item.content = f"<html><body><h1>{title}</h1><p>{body}</p></body></html>"
        book.add_item(item)
        items.append(item)
    book.toc = items
    book.add_item(epub.EpubNcx())
    book.spine = items
    epub.write_epub(str(path), book)
    return path


def test_epub_chapters_become_pages_in_reading_order(tmp_path):
    chapters = [("Arrival", "The ferry docked at noon."), ("Departure", "They left before dawn.")]
    doc = extract(build_epub(tmp_path / "book.epub", chapters))
    assert doc.kind == "epub"
    assert [(page.number, page.text) for page in doc.pages] == [
        (1, "Arrival\n\nThe ferry docked at noon."),
        (2, "Departure\n\nThey left before dawn."),
    ]


def test_corrupt_epub(tmp_path):
    data = build_epub(tmp_path / "good.epub", [("One", "Text.")]).read_bytes()
    expect_error("corrupt", write(tmp_path / "cut.epub", data[: len(data) // 2]))


def test_epub_that_is_not_a_zip(tmp_path):
    expect_error("corrupt", write(tmp_path / "fake.epub", "<html>not an epub</html>"))


# --- any kind ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pdf", ".txt", ".epub"])
def test_empty_file(tmp_path, suffix):
    expect_error("empty", write(tmp_path / f"nothing{suffix}", b""))


def test_too_large_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.txt"
    with path.open("wb") as file:
        file.truncate(200 * 1024 * 1024)  # sparse: costs no disk, and would be slow to read
    error = expect_error("too_large", path, max_bytes=10 * 1024 * 1024)
    assert "200.0 MB" in error.message and "10 MB" in error.message


@pytest.mark.parametrize("name", ["setup.exe", "letter.docx", "no_extension"])
def test_unsupported_type_lists_supported_ones(tmp_path, name):
    error = expect_error("unsupported_type", write(tmp_path / name, b"PK\x03\x04 whatever"))
    assert ".pdf" in error.message and ".epub" in error.message


# --- pasted text -------------------------------------------------------------------------------------


def test_pasted_text_becomes_pages():
    text = "\n\n".join(("A pasted paragraph of moderate length, repeated. " * 8).strip() for _ in range(30))
    doc = extract_text(text)
    assert (doc.name, doc.kind) == ("pasted text", "paste")
    assert len(doc.pages) > 1 and [page.number for page in doc.pages] == list(range(1, len(doc.pages) + 1))
    assert doc.text == text


def test_empty_paste():
    with pytest.raises(ExtractionError) as info:
        extract_text("  \n ")
    assert info.value.code == "empty"
