"""The cost of showing a cited page: rendering a page of a 130-page PDF as the app does (pypdfium2 at the app's
scale, the evidence found in the page's characters and its boxes laid over the PNG, the HTML built), for cited pages
spread through the book, each once cold (no page view cached) and then from the session's page-view cache.

The PDF is Persuasion (Austen, from data/text, fetched offline once) typeset by tests/app/pdf_factory.py, 40 lines a
page, cut at 130 pages; its text is extracted by the app's own extractor (pypdf), and each cited page's evidence is a
sentence from the middle of that text, so the evidence has to be found again in pdfium's characters, as in the app.
Goal: under 1 s a page on two CPU cores. Light: about a second in all.

    python -m bench.render

Writes bench/results/render.json and render.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import DATA, ROOT, machine, table_head, table_row, write_results

sys.path.insert(0, str(ROOT / "tests" / "app"))
from pdf_factory import make_pdf, paginate  # noqa: E402 (after the path set-up above)

from app import pages, views  # noqa: E402
from app.extract import open_document  # noqa: E402
from hmt_core.evidence import sentence_spans  # noqa: E402
from hmt_core.training.corpora import fetch, load_texts  # noqa: E402

PAGES = 130


def book(folder: Path, pages_wanted: int = PAGES) -> Path:
    """A PDF of the first `pages_wanted` pages of Persuasion, typeset by pdf_factory, with page numbers."""
    fetch(DATA, ["austen"])
    text = load_texts(DATA)["austen_persuasion"]
    return make_pdf(folder / "persuasion.pdf", paginate(text)[:pages_wanted], title="Persuasion",
                    page_numbers=True)


def middle_sentence(text: str) -> tuple[str, float]:
    """A sentence of at least 40 characters from the middle of a page's text, and where it begins (0 to 1)."""
    spans = [s for s in sentence_spans(text) if s[1] - s[0] >= 40] or sentence_spans(text)
    start, end = spans[len(spans) // 2]
    return text[start:end], start / max(len(text), 1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cited", type=int, default=20, help="cited pages, spread through the book")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = book(Path(folder))
        data = path.read_bytes()
        texts = {page.number: page.text for page in open_document(path).pages}
    count = pages.page_count(data)
    cited = [1 + round(i * (count - 1) / max(args.cited - 1, 1)) for i in range(args.cited)]
    cold, neighbour, cached, sizes, found = [], [], [], [], 0
    cache = pages.ViewCache()
    for number in cited:
        wanted, near = middle_sentence(texts[number])
        start = time.perf_counter()
        rendered = pages.render_pdf_page(data, number, wanted, near)
        view = views.page_image_html("persuasion.pdf", number, rendered, "evidence marked")
        cold.append(time.perf_counter() - start)
        cache.put((number,), view)
        found += bool(rendered.boxes)
        sizes.append(len(rendered.png))
        start = time.perf_counter()
        other = number + 1 if number < count else number - 1  # the next page: one click, no evidence on it
        views.page_image_html("persuasion.pdf", other, pages.render_pdf_page(data, other), "")
        neighbour.append(time.perf_counter() - start)
        start = time.perf_counter()
        assert cache.get((number,)) is view
        cached.append(time.perf_counter() - start)

    def summary(values: list[float]) -> dict:
        return {"median": statistics.median(values), "p95": percentile(values, 95), "max": max(values)}

    result = {"machine": machine(), "pdf_pages": count, "pdf_bytes": len(data), "cited_pages": cited,
              "scale": pages.SCALE, "image": [rendered.width, rendered.height],
              "cited_page_seconds": summary(cold), "neighbour_page_seconds": summary(neighbour),
              "cached_seconds": summary(cached), "png_kb_median": statistics.median(sizes) / 1024,
              "evidence_found": found, "goal_seconds": 1.0}
    m = result["machine"]
    lines = [f"Rendering cited pages of a {count}-page PDF ({len(data) / 1024:.0f} KB, Persuasion typeset by "
             f"pdf_factory), {len(cited)} pages spread through it, at {pages.SCALE} px/pt "
             f"({rendered.width} x {rendered.height} PNG, median {result['png_kb_median']:.0f} KB); {m['cpu']}, "
             f"{m['cores']} cores. Each time is the whole page view: open the PDF from memory, render, find the "
             "evidence in the page's characters, its boxes, PNG, HTML.", "",
             *table_head("page view", "median ms", "p95 ms", "max ms", "goal")]
    for name, key in (("cited page, evidence marked (cold)", "cited_page_seconds"),
                      ("neighbour page (prev/next, cold)", "neighbour_page_seconds"),
                      ("from the session's page-view cache", "cached_seconds")):
        s = result[key]
        lines.append(table_row(name, f"{1000 * s['median']:.2f}", f"{1000 * s['p95']:.2f}", f"{1000 * s['max']:.2f}",
                               "< 1000" if key != "cached_seconds" else ""))
    lines += ["", f"Evidence found on its page (boxes drawn): {found} of {len(cited)}."]
    write_results("render", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
