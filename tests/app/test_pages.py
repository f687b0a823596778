"""The cited page itself (app/pages.py): finding the evidence in pdfium's characters of a page, its boxes on the page
rendered from real PDFs built here, and the PDF bytes a session keeps to render them."""

from __future__ import annotations

import hashlib
import io

import pytest
from pdf_factory import FONT_SIZE, LEADING, MARGIN, PAGE_HEIGHT, PAGE_WIDTH, make_pdf
from PIL import Image
from pypdf import PdfWriter

from app.pages import (KeptPdf, ViewCache, keep_originals, locate, page_count, part_on_page, render_pdf_page,
                       solid)
from app.session import DocumentRecord, Session
from hmt_core.state import SourceText

LINES = ["The Gull Island Light",
         "The lighthouse on Gull Island was built in 1887 by the engineer Margaret Ellory.",
         "Its lamp could be seen twenty miles out to sea on a clear night.",
         "The secret password of the keepers' guild was blue heron."]


def test_letters_and_digits_alone_are_compared():
    text, where = solid("Ef\ufb01cient, well-\r\nknown  A1!")
    assert text == "efficientwellknowna1"
    assert where[:4] == [0, 1, 2, 2]  # the ligature's two letters both come from character 2
    assert where[-1] == len("Ef\ufb01cient, well-\r\nknown  A1") - 1


def test_locate_matches_across_line_breaks_hyphens_and_ligatures():
    page = "The keeper's log-\r\nbook was of\ufb01cial.\r\nIt lay in a tin box."
    start, end = locate(page, "The keeper’s logbook was official.")
    assert page[start:end] == "The keeper's log-\r\nbook was of\ufb01cial"
    assert locate(page, "a zebra in the cellar") is None and locate(page, "") is None and locate("", "x") is None


def test_of_several_matches_the_one_nearest_to_where_the_evidence_was_wins():
    page = "The lamp was lit. " * 10
    first = locate(page, "The lamp was lit.", near=0.0)
    last = locate(page, "The lamp was lit.", near=1.0)
    middle = locate(page, "The lamp was lit.", near=0.5)
    assert first[0] == 0 and last[0] == 18 * 9 and middle[0] in (18 * 4, 18 * 5)


def test_without_an_exact_match_the_longest_run_of_at_least_half_is_taken():
    page = "Every evening the keeper climbed the ninety-two steps and lit the great lamp."
    start, end = locate(page, "the keeper climbed the ninety-two steps, counting them aloud")
    assert page[start:end] == "the keeper climbed the ninety-two steps"
    assert locate(page, "the keeper sang loudly to the gulls at dawn") is None  # under half of it


def test_the_part_of_a_span_on_each_page():
    source = SourceText("a.pdf", "First page text.\n\nSecond page text.", [0, 18], [1, 2])
    start = source.text.index("text.")
    end = source.text.index(" text.", 18)
    assert part_on_page(source, 1, start, end) == ("text.\n\n", 11 / 18)
    assert part_on_page(source, 2, start, end) == ("Second page", 0.0)
    assert part_on_page(source, 3, start, end) is None
    assert part_on_page(source, 1, 0, 3) == ("Fir", 0.0)


def line_band(k: int) -> tuple[float, float]:
    """The vertical band, as fractions of the page height, of line k (from 0) that pdf_factory draws."""
    baseline = MARGIN + k * LEADING
    return (baseline - FONT_SIZE) / PAGE_HEIGHT, (baseline + 0.3 * FONT_SIZE) / PAGE_HEIGHT


def ink_inside(rendered, box) -> int:
    """The darkest grey value of the page image inside a box (text is near 0, paper 255)."""
    image = Image.open(io.BytesIO(rendered.png)).convert("L")
    w, h = image.size
    left, top, right, bottom = box
    return image.crop((int(left * w), int(top * h), int(right * w) + 1, int(bottom * h) + 1)).getextrema()[0]


def test_the_evidence_boxes_sit_on_its_line_of_the_rendered_page(tmp_path):
    data = make_pdf(tmp_path / "light.pdf", ["\n".join(LINES), "Another page."]).read_bytes()
    rendered = render_pdf_page(data, 1, LINES[3])
    assert (rendered.width, rendered.height, rendered.page_count) == (893, 1263, 2)
    assert Image.open(io.BytesIO(rendered.png)).size == (893, 1263)
    [box] = rendered.boxes  # one line, one box
    top, bottom = line_band(3)
    assert top <= box[1] < box[3] <= bottom + 0.01
    assert abs(box[0] - MARGIN / PAGE_WIDTH) < 0.01 and 0.5 < box[2] < 1 - MARGIN / PAGE_WIDTH + 0.01
    assert ink_inside(rendered, box) < 80  # the box is over the text
    two = render_pdf_page(data, 1, "Ellory. Its lamp could be seen")  # across a line end: a box on each line
    assert len(two.boxes) == 2 and two.boxes[0][1] < two.boxes[1][1]
    assert render_pdf_page(data, 2, LINES[3]).boxes == []  # not on that page
    assert render_pdf_page(data, 1).boxes == []


def test_the_answer_is_boxed_where_it_stands_word_for_word_inside_the_evidence(tmp_path):
    data = make_pdf(tmp_path / "light.pdf", ["\n".join(LINES)]).read_bytes()
    rendered = render_pdf_page(data, 1, LINES[1], answer="Margaret\nEllory")
    [evidence], [answer] = rendered.boxes, rendered.answer_boxes
    assert evidence[0] < answer[0] < answer[2] <= evidence[2] + 0.001  # the end of the evidence's line
    assert abs(answer[1] - evidence[1]) < 0.005 and abs(answer[3] - evidence[3]) < 0.005
    assert 0.15 < (answer[2] - answer[0]) / (evidence[2] - evidence[0]) < 0.25  # 15 of its 81 characters
    assert ink_inside(rendered, answer) < 80
    assert render_pdf_page(data, 1, LINES[1], answer="blue heron").answer_boxes == []  # on the page, not in it
    assert render_pdf_page(data, 1, LINES[1], answer="Margaret Ellison").answer_boxes == []  # exact only
    assert render_pdf_page(data, 1, LINES[1]).answer_boxes == []
    assert render_pdf_page(data, 1, None, answer="Margaret Ellory").answer_boxes == []  # no evidence, no answer


def test_locate_exact_takes_no_partial_run():
    page = "Every evening the keeper climbed the ninety-two steps and lit the great lamp."
    assert locate(page, "the keeper climbed the ninety-two steps, counting them aloud", exact=True) is None
    start, end = locate(page, "ninety two", exact=True)
    assert page[start:end] == "ninety-two"


def test_the_boxes_follow_a_rotated_page(tmp_path):
    writer = PdfWriter(clone_from=make_pdf(tmp_path / "light.pdf", ["\n".join(LINES)]))
    writer.pages[0].rotate(90)
    out = io.BytesIO()
    writer.write(out)
    rendered = render_pdf_page(out.getvalue(), 1, LINES[3])
    assert rendered.width > rendered.height  # drawn in landscape
    [box] = rendered.boxes
    assert box[3] - box[1] > 3 * (box[2] - box[0])  # the line now runs down the image
    assert ink_inside(rendered, box) < 80


def test_a_session_keeps_the_bytes_of_its_own_pdfs_only(tmp_path):
    mine = make_pdf(tmp_path / "mine.pdf", ["Mine."])
    other = make_pdf(tmp_path / "other.pdf", ["Other."])
    notes = tmp_path / "notes.txt"
    notes.write_text("Notes.")
    session = Session()
    digest = hashlib.sha256(mine.read_bytes()).hexdigest()
    session.documents.append(DocumentRecord("mine.pdf", digest, "pdf", 1, 0, 1, 10))
    keep_originals(session, [mine, other, notes, tmp_path / "gone.pdf"])
    assert session.originals == {digest: KeptPdf(mine.read_bytes(), 1)}
    limited = Session(documents=list(session.documents))
    keep_originals(limited, [mine], limit=100)  # over the limit: not kept, its pages show as text
    assert limited.originals == {}
    session.clear()
    assert session.originals == {}


def test_a_pdf_locked_with_a_password_is_not_kept(tmp_path):
    writer = PdfWriter(clone_from=make_pdf(tmp_path / "plain.pdf", ["A locked page."]))
    writer.encrypt(user_password="open sesame", owner_password="owner", algorithm="AES-128")
    writer.write(tmp_path / "locked.pdf")
    data = (tmp_path / "locked.pdf").read_bytes()
    assert page_count(data) is None and page_count((tmp_path / "plain.pdf").read_bytes()) == 1
    session = Session()
    session.documents.append(DocumentRecord("locked.pdf", hashlib.sha256(data).hexdigest(), "pdf", 1, 0,
                                            1, 10))
    keep_originals(session, [tmp_path / "locked.pdf"])
    assert session.originals == {}


def test_the_view_cache_drops_the_least_recently_used():
    cache = ViewCache(size=2)
    cache.put(("a",), "A")
    cache.put(("b",), "B")
    assert cache.get(("a",)) == "A"  # a is now the newest
    cache.put(("c",), "C")
    assert cache.get(("b",)) is None and cache.get(("a",)) == "A" and cache.get(("c",)) == "C" and len(cache) == 2


@pytest.mark.parametrize("number", [0, 3])
def test_a_page_that_does_not_exist_raises(tmp_path, number):
    data = make_pdf(tmp_path / "light.pdf", ["One.", "Two."]).read_bytes()
    with pytest.raises(ValueError, match="not in a PDF of 2 pages"):
        render_pdf_page(data, number)
