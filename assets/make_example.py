"""Build assets/pride_and_prejudice_ch1-7.pdf, the example document a first-time user can try at once.

The text is chapters 1-7 of Jane Austen's "Pride and Prejudice" (1813), public domain. It comes,
offline, from the Project Gutenberg text shipped in Debian's r-cran-janeaustenr package, fetched and
decoded by hmt_core.training.corpora into data/text/. Each chapter starts a new page; pages have ~40 lines
and a page number at the foot; Gutenberg's _underscore_ italics are dropped.

Run from the repository root: python assets/make_example.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "app")]

from hmt_core.training.corpora import fetch  # noqa: E402 (after the path set-up above)
from pdf_factory import make_pdf, paginate  # noqa: E402

CHAPTERS = 7
OUTPUT = ROOT / "assets" / f"pride_and_prejudice_ch1-{CHAPTERS}.pdf"
TITLE_PAGE = (
    "PRIDE AND PREJUDICE\n\nBy Jane Austen\n\n"
    f"Chapters 1\u2013{CHAPTERS}\n\n"
    "This novel (1813) is in the public domain. The text is the Project Gutenberg edition "
    "as shipped in the janeaustenr package."
)


def chapters(novel: str, count: int) -> list[str]:
    """The first count chapters as 'Chapter N' plus paragraphs re-flowed onto single lines."""
    parts = re.split(r"(?m)^Chapter (\d+)\s*$", novel)
    result = []
    for number, body in zip(parts[1::2][:count], parts[2::2]):
        paragraphs = [re.sub(r"_(.+?)_", r"\1", " ".join(p.split())) for p in re.split(r"\n\s*\n", body)]
        result.append(f"Chapter {number}\n\n" + "\n\n".join(p for p in paragraphs if p))
    return result


def main() -> None:
    """Fetch the novel if needed and write the example PDF."""
    fetch(ROOT / "data", ["austen"])
    novel = (ROOT / "data" / "text" / "austen_prideprejudice.txt").read_text(encoding="utf-8")
    pages = [TITLE_PAGE] + [page for chapter in chapters(novel, CHAPTERS) for page in paginate(chapter)]
    make_pdf(OUTPUT, pages, title=f"Pride and Prejudice, Chapters 1\u2013{CHAPTERS}", page_numbers=True)
    print(f"wrote {OUTPUT.relative_to(ROOT)}: {len(pages)} pages, {OUTPUT.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
