"""The cited page itself: a PDF page rendered as an image with the boxes of the evidence's characters (pypdfium2),
or for the other sources the page's text with the evidence marked; made on demand and kept in a small LRU per
session.

The evidence's span is in the text the app extracted (app/extract.py, with pypdf, tidied: ligatures, hyphens and
spaces repaired), which is not pdfium's text of the page. So the part of the evidence on a page is found again in
pdfium's characters by its letters and digits alone (both sides case-folded and NFKC-normalised; spaces, line ends,
hyphens and punctuation skipped), nearest to where it sits in the extracted page; failing an exact match, the longest
run of it the page holds (at least half of it). pdfium then gives that run's boxes, line by line.

pdfium is not thread-safe, so every pdfium call in the process takes PDFIUM_LOCK; a render is a fraction of a
second, and it runs in an event of its own (ui.py), never in a model turn.
"""

from __future__ import annotations

import base64
import ctypes
import difflib
import hashlib
import io
import logging
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from app.extract import MB
from hmt_core.state import SourceText

if TYPE_CHECKING:
    from app.session import Session

logger = logging.getLogger(__name__)

PDFIUM_LOCK = threading.Lock()
SCALE = 1.5  # pixels per PDF point: an A4 page is 893 x 1263 pixels
KEEP_BYTES = 200 * MB  # most PDF bytes a session keeps for rendering its pages; past that, pages show as text
CACHED_VIEWS = 8  # page views kept per session
Box = tuple[float, float, float, float]  # left, top, right, bottom as fractions of the page image's size


@dataclass(frozen=True)
class Cited:
    """What a click on a citation shows: a source, the page to show, the span to mark in the source's text (the
    evidence, or the whole passage before there is one), the recalled passage's span around it, and where the
    answer stands word for word inside the evidence (None when it does not, or before there is an answer)."""

    source: str
    page: int | None
    char_start: int
    char_end: int
    passage_start: int
    passage_end: int
    answer_start: int | None = None
    answer_end: int | None = None


@dataclass(frozen=True)
class KeptPdf:
    """A PDF's bytes, kept in a session's memory to render its pages, and its page count."""

    data: bytes
    pages: int


@dataclass
class RenderedPage:
    """A PDF page as a PNG image, with the boxes to mark on it (the evidence's, and the answer's inside them) and the
    document's page count."""

    png: bytes
    width: int
    height: int
    boxes: list[Box]
    page_count: int
    answer_boxes: list[Box] = field(default_factory=list)

    @property
    def data_uri(self) -> str:
        """The image inline (never a file on disk, never a URL another visitor could fetch)."""
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


class ViewCache:
    """The newest `size` page views of one session (HTML by key), least recently used first out."""

    def __init__(self, size: int = CACHED_VIEWS) -> None:
        self.size = size
        self._views: OrderedDict[tuple, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._views)

    def get(self, key: tuple) -> str | None:
        """The view made for key, now the most recently used; None when there is none."""
        view = self._views.get(key)
        if view is not None:
            try:
                self._views.move_to_end(key)
            except KeyError:  # dropped meanwhile by the session's other page event
                pass
        return view

    def put(self, key: tuple, view: str) -> None:
        """Keep a view, dropping the least recently used past `size` (two page events of a session may run at
        once, so one may find an entry the other already dropped)."""
        self._views[key] = view
        while len(self._views) > self.size:
            try:
                self._views.popitem(last=False)
            except KeyError:
                break


def page_count(data: bytes) -> int | None:
    """How many pages pdfium finds in these PDF bytes; None when it cannot open them without a password."""
    with PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError:
            return None
        try:
            return len(pdf)
        finally:
            pdf.close()


def keep_originals(session: Session, paths: Iterable[str | Path], limit: int = KEEP_BYTES) -> None:
    """Keep, in the session's memory (never on disk), the bytes of the PDFs among paths that are now documents of
    the session, so their cited pages can be rendered after the uploads are deleted; at most `limit` bytes in all
    per session. A PDF that pdfium cannot open without a password is not kept (its pages show as text)."""
    for path in map(Path, paths):
        if path.suffix.lower() != ".pdf":
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in session.originals or session.has_digest(digest) is None:
            continue
        if sum(len(kept.data) for kept in session.originals.values()) + len(data) > limit:
            continue
        count = page_count(data)
        if count is not None:
            session.originals[digest] = KeptPdf(data, count)


def solid(text: str) -> tuple[str, list[int]]:
    """The letters and digits of text, case-folded and NFKC-normalised (a ligature gives its letters), and for each
    the index in text of the character it came from."""
    chars, where = [], []
    for i, ch in enumerate(text):
        for c in unicodedata.normalize("NFKC", ch).casefold():
            if c.isalnum():
                chars.append(c)
                where.append(i)
    return "".join(chars), where


def locate(text: str, wanted: str, near: float = 0.0, exact: bool = False) -> tuple[int, int] | None:
    """The span of text that holds wanted, compared on letters and digits alone (solid): of several matches, the one
    whose start is nearest to `near` (0 = the text's start, 1 = its end); without an exact match (and unless
    `exact`), the longest run of wanted that text holds, when that is at least half of wanted. None when nothing
    fits."""
    hay, where = solid(text)
    needle, _ = solid(wanted)
    if not needle or not hay:
        return None
    starts, i = [], hay.find(needle)
    while i >= 0:
        starts.append(i)
        i = hay.find(needle, i + 1)
    if starts:
        start = min(starts, key=lambda s: abs(s / len(hay) - near))
        length = len(needle)
    elif exact:
        return None
    else:
        match = difflib.SequenceMatcher(None, hay, needle, autojunk=False).find_longest_match()
        if match.size < max(8, len(needle) // 2):
            return None
        start, length = match.a, match.size
    return where[start], where[start + length - 1] + 1


def page_span(source: SourceText, page: int) -> tuple[int, int] | None:
    """Where a page's text lies in the source's text, or None when the source has no text on that page."""
    if page not in source.page_numbers:
        return None
    i = source.page_numbers.index(page)
    end = source.page_starts[i + 1] if i + 1 < len(source.page_starts) else len(source.text)
    return source.page_starts[i], end


def part_on_page(source: SourceText, page: int, start: int, end: int) -> tuple[str, float] | None:
    """The part of the span [start, end) of the source's text that lies on `page`, with where it begins on that page
    (0 to 1); None when none of it does."""
    span = page_span(source, page)
    if span is None:
        return None
    lo, hi = max(start, span[0]), min(end, span[1])
    if lo >= hi or not source.text[lo:hi].strip():
        return None
    return source.text[lo:hi], (lo - span[0]) / max(span[1] - span[0], 1)


def _page_chars(textpage: pdfium.PdfTextPage) -> str:
    """The page's characters, one per pdfium character index (so an index into this text is pdfium's index)."""
    return "".join(chr(pdfium_c.FPDFText_GetUnicode(textpage.raw, i)) for i in range(textpage.count_chars()))


def _to_image(page: pdfium.PdfPage, width: int, height: int, x: float, y: float) -> tuple[int, int]:
    """A point in PDF page space -> pixels in the page rendered at width x height (crop box and rotation as pdfium
    applies them when rendering)."""
    dx, dy = ctypes.c_int(), ctypes.c_int()
    pdfium_c.FPDF_PageToDevice(page.raw, 0, 0, width, height, 0, x, y, ctypes.byref(dx), ctypes.byref(dy))
    return dx.value, dy.value


def _boxes(textpage: pdfium.PdfTextPage, page: pdfium.PdfPage, width: int, height: int,
           span: tuple[int, int]) -> list[Box]:
    """The boxes (fractions of the image) of the page's characters span[0]:span[1], one per run on a line."""
    boxes: list[Box] = []
    for i in range(textpage.count_rects(span[0], span[1] - span[0])):
        left, bottom, right, top = textpage.get_rect(i)
        xs, ys = zip(_to_image(page, width, height, left, bottom), _to_image(page, width, height, right, top))
        boxes.append((min(xs) / width, min(ys) / height, max(xs) / width, max(ys) / height))
    return boxes


def render_pdf_page(data: bytes, number: int, wanted: str | None = None, near: float = 0.0,
                    scale: float = SCALE, answer: str | None = None) -> RenderedPage:
    """Page `number` (from 1) of the PDF as a PNG at `scale` pixels per point, with the boxes of the characters
    that match `wanted` (locate, nearest to `near`), and of those the ones that hold `answer` word for word (its
    answer_boxes; the first exact match inside wanted's characters); no boxes when wanted is None or not found on
    the page. Raises ValueError for a page the PDF does not have."""
    with PDFIUM_LOCK:
        pdf = pdfium.PdfDocument(data)
        try:
            count = len(pdf)
            if not 1 <= number <= count:
                raise ValueError(f"page {number} is not in a PDF of {count} pages")
            page = pdf[number - 1]
            image = page.render(scale=scale).to_pil()
            width, height = image.size
            boxes: list[Box] = []
            answer_boxes: list[Box] = []
            if wanted:
                textpage = page.get_textpage()
                chars = _page_chars(textpage)
                span = locate(chars, wanted, near)
                if span is not None:
                    boxes = _boxes(textpage, page, width, height, span)
                    inside = locate(chars[span[0]:span[1]], answer, exact=True) if answer else None
                    if inside is not None:
                        answer_boxes = _boxes(textpage, page, width, height,
                                              (span[0] + inside[0], span[0] + inside[1]))
                else:
                    logger.info("evidence not found on page %d of a PDF", number)
        finally:
            pdf.close()
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return RenderedPage(out.getvalue(), width, height, boxes, count, answer_boxes)
