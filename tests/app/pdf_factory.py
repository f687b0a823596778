"""A minimal, dependency-free PDF writer: one Helvetica text page per string, readable by pypdf.

Used by the tests to build real PDFs on the fly and by ``assets/make_example.py`` for the
example document. Text is encoded as Windows-1252 (PDF WinAnsiEncoding); characters outside
it become '?'. Blank lines are drawn as a single space so that text extractors keep the
paragraph breaks.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

PAGE_WIDTH, PAGE_HEIGHT = 595, 842  # A4 in points
MARGIN = 60
FONT_SIZE = 10.5
LEADING = 15.5
MAX_LINES = int((PAGE_HEIGHT - 2 * MARGIN) / LEADING) + 1  # 47 lines fit between the margins
LINES_PER_PAGE = 40
WRAP_WIDTH = 85  # characters; average Helvetica text at 10.5 pt fits about 90 in 475 pt


def wrap_text(text: str, width: int = WRAP_WIDTH) -> list[str]:
    """Wrap each line of text to at most width characters, keeping blank lines (paragraph breaks)."""
    lines: list[str] = []
    for line in text.splitlines():
        lines.extend(textwrap.wrap(line, width, break_on_hyphens=False) or [""])
    return lines


def paginate(text: str, lines_per_page: int = LINES_PER_PAGE, width: int = WRAP_WIDTH) -> list[str]:
    """Flow text into page strings of at most lines_per_page wrapped lines, no page starting blank."""
    pages: list[list[str]] = [[]]
    for line in wrap_text(text, width):
        if len(pages[-1]) == lines_per_page:
            pages.append([])
        if line or pages[-1]:
            pages[-1].append(line)
    return ["\n".join(page) for page in pages if page]


def make_pdf(path: str | Path, pages: list[str], title: str | None = None, page_numbers: bool = False) -> Path:
    """Write a valid PDF with one page per string (long lines wrapped) and return its path.

    A page may hold up to MAX_LINES wrapped lines; more raises ValueError so page numbers
    always match the list index + 1. page_numbers draws the number at the foot of each page.
    """
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, filled in once the page objects are numbered
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Producer (tests/app/pdf_factory.py)%s >>" % (b" /Title " + _pdf_string(title) if title else b""),
    ]
    kids = []
    for number, text in enumerate(pages, start=1):
        lines = wrap_text(text)
        if len(lines) > MAX_LINES:
            raise ValueError(f"page {number} has {len(lines)} lines after wrapping; at most {MAX_LINES} fit")
        stream = _page_stream(lines, number if page_numbers else None)
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents %d 0 R >>" % (PAGE_WIDTH, PAGE_HEIGHT, len(objects))
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 4 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path = Path(path)
    path.write_bytes(bytes(out))
    return path


def _page_stream(lines: list[str], number: int | None) -> bytes:
    """The content stream drawing lines top-down, and optionally the page number centred at the foot."""
    ops = [b"BT /F1 %g Tf %g TL %d %g Td" % (FONT_SIZE, LEADING, MARGIN, PAGE_HEIGHT - MARGIN)]
    ops += [b"%s Tj T*" % _pdf_string(line or " ") for line in lines]
    ops.append(b"ET")
    if number is not None:
        ops.append(b"BT /F1 9 Tf %d %d Td %s Tj ET" % (PAGE_WIDTH // 2 - 5, MARGIN // 2, _pdf_string(str(number))))
    return b"\n".join(ops)


def _pdf_string(text: str) -> bytes:
    """text as a PDF literal string in WinAnsiEncoding, with backslash and parentheses escaped."""
    raw = text.encode("cp1252", errors="replace")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"
