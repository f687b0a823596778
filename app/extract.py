"""Extract text, page by page, from uploaded documents (PDF, plain text, Markdown, EPUB, HTML) or pasted text.

Pages keep the numbers a reader sees (PDF pages, EPUB chapters, form-feed pages or ~3000-character
pseudo-pages of plain text) so answers can cite them. open_document (and open_text for pasted text) is the one door:
it checks and opens an upload once. Every problem a user can cause raises ExtractionError with a message fit for the
web page and a short machine code. Extraction only reads.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bs4 import BeautifulSoup, NavigableString
from ebooklib import epub
from pypdf import PageObject, PasswordType, PdfReader
from pypdf.errors import DependencyError

logger = logging.getLogger(__name__)

KINDS = {".pdf": "pdf", ".txt": "txt", ".md": "md", ".markdown": "md", ".epub": "epub", ".html": "html", ".htm": "html"}
PAGE_CHARS = 3000  # size of the pseudo-pages cut from text that has no pages of its own
MB = 1024 * 1024

_SUPPORTED = ", ".join(sorted(set(KINDS)))
_LIGATURES = str.maketrans({"ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "st", "ﬆ": "st"})
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # all control characters but tab and newline
_DROP_TAGS = ["head", "script", "style", "nav", "noscript", "template", "svg"]
_BLOCK_TAGS = [
    "address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "figcaption", "figure", "footer",
    "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "ol", "p", "pre", "section", "table",
    "tr", "ul",
]


@dataclass
class Page:
    """One page of a document: the 1-based number a reader would cite, and its text."""

    number: int
    text: str


@dataclass
class Document:
    """A named document's pages that hold text, in reading order, and what kind of source it came from."""

    name: str
    pages: list[Page]
    kind: str  # 'pdf', 'txt', 'md', 'epub', 'html' or 'paste'

    @property
    def text(self) -> str:
        """The whole text, pages separated by a blank line."""
        return "\n\n".join(page.text for page in self.pages)

    @property
    def num_chars(self) -> int:
        """Length of the whole text, to size the work before it starts."""
        return len(self.text)


class ExtractionError(ValueError):
    """A document that cannot be read: message tells the user what is wrong and what to do, code is for programs."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class OpenedDocument:
    """An upload checked and opened once: its name, kind, page count, the sha256 of its bytes (what the memory cache
    is keyed by), its pages, extracted lazily in reading order (empty ones too, so progress can count them), and
    whether it was an encrypted PDF (whose text is kept out of the disk cache).

    Problems found on opening (type, size, password, damage) raise in open_document; a document with no text at
    all raises after its last page."""

    name: str
    kind: str
    page_count: int
    digest: str
    pages: Iterator[Page]
    encrypted: bool = False


def open_document(path: str | Path, name: str | None = None, password: str | None = None,
                  max_bytes: int | None = None) -> OpenedDocument:
    """Check and open the file at path (read from disk once), shown under `name` (default: the file's name)."""
    path = Path(path)
    name = name or path.name
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise ExtractionError(
            "unsupported_type",
            f"“{name}” is not a kind of file this app can read. Upload one of: {_SUPPORTED}. "
            "Word and other office documents can be saved as PDF first.",
        )
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise ExtractionError(
            "gone", f"“{name}” is no longer on the server (uploads are deleted once read). Add the file again."
        ) from exc
    if size == 0:
        raise ExtractionError("empty", f"“{name}” is empty (0 bytes). Check that you picked the right file.")
    if max_bytes is not None and size > max_bytes:
        raise ExtractionError(
            "too_large",
            f"“{name}” is {size / MB:.1f} MB, over the {max_bytes / MB:g} MB limit. "
            "Upload a smaller file, for example only the chapters you need.",
        )
    data = path.read_bytes()
    encrypted = False
    if kind == "pdf":
        count, texts, encrypted = _open_pdf(data, name, password)
    elif kind == "epub":
        count, texts = _open_epub(data, name)
    else:
        _reject_binary(data, name)
        text = _html_to_text(data) if kind == "html" else _decode(data, name)
        pages = _split_pages(text)
        count, texts = len(pages), iter(pages)
    digest = hashlib.sha256(data).hexdigest()
    return OpenedDocument(name, kind, count, digest, _numbered(texts, kind, name), encrypted)


def open_text(text: str, name: str = "pasted text") -> OpenedDocument:
    """Pasted text as a document of ~3000-character pseudo-pages, so citations can point somewhere."""
    pages = [Page(number, page) for number, page in enumerate(_split_pages(text), start=1) if page]
    if not pages:
        raise ExtractionError("empty", "There is no text to read. Paste some text and try again.")
    return OpenedDocument(name, "paste", len(pages), text_digest(text), iter(pages))


def text_digest(text: str) -> str:
    """sha256 of pasted text (UTF-8), marked so it can never equal a file's digest."""
    return hashlib.sha256(b"pasted-text\0" + text.encode("utf-8")).hexdigest()


def _numbered(texts: Iterator[str], kind: str, name: str) -> Iterator[Page]:
    """Number the page texts from 1 and raise at the end if none of them held any text."""
    found = False
    for number, text in enumerate(texts, start=1):
        found = found or bool(text)
        yield Page(number, text)
    if found:
        return
    if kind == "pdf":
        raise ExtractionError(
            "no_text_layer",
            f"“{name}” has no text layer (it is probably scanned images of pages). "
            "Run OCR on it first, for example with ocrmypdf, then upload the result.",
        )
    raise ExtractionError("empty", f"“{name}” contains no text to read.")


def _open_pdf(data: bytes, name: str, password: str | None) -> tuple[int, Iterator[str], bool]:
    """Open and if needed decrypt a PDF; return its page count, a lazy iterator over page texts and whether it
    was encrypted."""
    if b"%PDF-" not in data[:1024]:
        raise ExtractionError(
            "corrupt",
            f"“{name}” is not a real PDF: it lacks the PDF signature at its start. It may be another kind of "
            "file renamed to .pdf, or damaged. Open it in the program that made it and export it as PDF again.",
        )
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            _decrypt(reader, name, password)
        count = len(reader.pages)
    except ExtractionError:
        raise
    except DependencyError as exc:
        raise _crypto_missing(name) from exc
    except Exception as exc:  # pypdf raises many types on damaged files
        raise _corrupt_pdf(name) from exc
    if count == 0:
        raise ExtractionError("empty", f"“{name}” has no pages, so there is nothing to read.")
    return count, _pdf_texts(reader, name), reader.is_encrypted


def _decrypt(reader: PdfReader, name: str, password: str | None) -> None:
    """Unlock an encrypted PDF with the empty password (owner-password-only files) or the user's one."""
    if reader.decrypt("") != PasswordType.NOT_DECRYPTED:
        return
    if not password:
        raise ExtractionError(
            "encrypted",
            f"“{name}” is password-protected. Type its password in the password box, then add the file again.",
        )
    if reader.decrypt(password) == PasswordType.NOT_DECRYPTED:
        raise ExtractionError(
            "wrong_password",
            f"The password for “{name}” is not correct. Check it (passwords are case-sensitive), then add the file "
            "again.",
        )


def _pdf_texts(reader: PdfReader, name: str) -> Iterator[str]:
    """Yield each page's text; a damaged page yields '' (logged), and if every page is damaged raise 'corrupt'."""
    damaged = 0
    for number, page in enumerate(reader.pages, start=1):
        try:
            yield _pdf_page_text(page)
        except DependencyError as exc:
            raise _crypto_missing(name) from exc
        except Exception as exc:  # one bad page should not lose the others
            logger.warning("could not extract page %d of %s: %r", number, name, exc)
            damaged += 1
            yield ""
    if damaged and damaged == len(reader.pages):
        raise _corrupt_pdf(name)


def _pdf_page_text(page: PageObject) -> str:
    """A page's tidied text; if words seem glued together, retry in layout mode and keep the more plausible text."""
    text = _tidy_pdf(page.extract_text())
    if len(text) > 200 and text.count(" ") * 25 < len(text):
        layout = _tidy_pdf(page.extract_text(extraction_mode="layout"))
        if abs(_space_ratio(layout) - 1 / 6) < abs(_space_ratio(text) - 1 / 6):
            return layout
    return text


def _space_ratio(text: str) -> float:
    """Spaces per character on the lines of text; prose has about one in six."""
    chars = len(text) - text.count("\n")
    return text.count(" ") / chars if chars else 0.0


def _tidy_pdf(text: str) -> str:
    """Repair PDF text: ligatures, soft hyphens, runs of spaces, and words hyphenated across line ends."""
    text = _tidy(text.translate(_LIGATURES).replace("\u00ad\n", "").replace("\u00ad", ""))
    text = re.sub(r"[ \u00a0]+", " ", text)
    text = re.sub(r" ?\n ?", "\n", text)
    return re.sub(r"(?<=[a-z][a-z])-\n(?=[a-z])", "", text)  # 'exam-\nple' -> 'example'


def _tidy(text: str) -> str:
    """Unify line ends, drop control characters and trailing spaces, and keep at most one blank line in a row."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).replace("\t", "    ")
    text = re.sub(r"[ \u00a0]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _crypto_missing(name: str) -> ExtractionError:
    """The error for AES-encrypted PDFs when the cryptography package is missing on the server."""
    return ExtractionError(
        "missing_dependency",
        f"“{name}” uses AES encryption, which this server cannot decrypt yet. The administrator needs to run "
        "`pip install pypdf[crypto]`; meanwhile upload a copy without a password.",
    )


def _corrupt_pdf(name: str) -> ExtractionError:
    """The error for PDFs that pypdf cannot parse."""
    return ExtractionError(
        "corrupt",
        f"“{name}” is damaged or incomplete and cannot be read as a PDF. If it was downloaded, download it again; "
        "otherwise export it as PDF again from the program that made it.",
    )


def _open_epub(data: bytes, name: str) -> tuple[int, Iterator[str]]:
    """Open an EPUB; return its number of spine documents (chapters) and a lazy iterator over their texts."""
    corrupt = ExtractionError(
        "corrupt",
        f"“{name}” is damaged or not a real EPUB and cannot be read. Download it again or convert it to PDF.",
    )
    if not data.startswith(b"PK\x03\x04"):
        raise corrupt
    try:
        book = epub.read_epub(io.BytesIO(data), options={"ignore_ncx": True})
        items = [book.get_item_with_id(idref) for idref, _linear in book.spine]
    except Exception as exc:  # ebooklib and lxml raise many types on damaged files
        raise corrupt from exc
    items = [item for item in items if item is not None and "html" in item.media_type]
    return len(items), (_html_to_text(item.get_content()) for item in items)


def _reject_binary(data: bytes, name: str) -> None:
    """Refuse a text or HTML upload that is really a PDF, a ZIP-based document or other binary data."""
    if data.startswith(b"%PDF-"):
        hint = "is really a PDF file. Rename it so that its name ends in .pdf and upload it again."
    elif data.startswith(b"PK\x03\x04"):
        hint = "is really a ZIP archive (for example a Word .docx or an EPUB), not text. Save it as PDF or text first."
    elif b"\x00" in data and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        hint = "contains binary data, not text. Check that you picked the right file, or save it as PDF or text first."
    else:
        return
    raise ExtractionError("unsupported_type", f"“{name}” {hint}")


def _decode(data: bytes, name: str) -> str:
    """Decode UTF-8 text (a BOM is dropped; UTF-16 with a BOM is accepted too) or say which encoding it looks like."""
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        try:
            data.decode("cp1252")
            guess = "it looks like Windows-1252 (Western European)"
        except UnicodeDecodeError:
            guess = "it uses some other encoding"
        raise ExtractionError(
            "not_utf8",
            f"“{name}” is not UTF-8 text (byte {exc.start} is invalid); {guess}. "
            "Open it in a text editor, save it with UTF-8 encoding, and upload it again.",
        ) from exc


def _html_to_text(markup: bytes | str) -> str:
    """Visible text of an HTML page: scripts, styles and navigation dropped, one blank line between blocks."""
    soup = BeautifulSoup(markup, "html.parser")
    for tag in soup(_DROP_TAGS):
        tag.decompose()
    for string in soup.find_all(string=True):
        if type(string) is NavigableString and string.find_parent("pre") is None:
            string.replace_with(re.sub(r"\s+", " ", string))
    for tag in soup.find_all("br"):
        tag.replace_with("\n")
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.insert_before("\n\n")
        tag.append("\n\n")
    return _tidy(re.sub(r" *\n *", "\n", soup.get_text()))


def _split_pages(text: str, size: int = PAGE_CHARS) -> list[str]:
    """Cut text into pages: at form feeds if it has any, else about size characters ending at a paragraph or line."""
    if "\f" in text:
        return [_tidy(part) for part in text.split("\f")]
    text = _tidy(text)
    pages = []
    while len(text) > size:
        cut, skip = _cut_point(text, size)
        pages.append(text[:cut].rstrip())
        text = text[cut + skip :].lstrip("\n")
    if text:
        pages.append(text)
    return pages


def _cut_point(text: str, size: int) -> tuple[int, int]:
    """Where to end a page of at most size characters (last paragraph, line or word break in its second half)."""
    for separator in ("\n\n", "\n", " "):
        cut = text.rfind(separator, size // 2, size)
        if cut > 0:
            return cut, len(separator)
    return size, 0
