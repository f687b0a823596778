"""What the page shows, built from plain data: the progress bar, the recall chart's table, the recalled passages
with question words highlighted, the memory hierarchy panel and the document list."""

from __future__ import annotations

import html
import re

import pandas as pd
import torch

from hmt_core import MemoryState, Passage
from app.session import Session

STOPWORDS = set("""a an and are as at be been but by can did do does for from had has have he her his how i if in
into is it its me my no not of on or she so than that the their them then there these they this to was we were what
when where which who whom why will with would you your about after before does tell much many""".split())
CHART_COLUMNS = ["segment", "weight", "document", "pages"]


def progress_html(fraction: float, message: str, state: str = "running") -> str:
    """A progress bar (state 'running', 'done' or 'idle') with a line of text under it."""
    percent = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="hmt-progress hmt-{state}" data-state="{state}">'
            f'<div class="hmt-bar"><div class="hmt-fill" style="width:{percent:.1f}%"></div></div>'
            f'<div class="hmt-progress-text">{html.escape(message)}</div></div>')


def question_words(question: str) -> list[str]:
    """The words of a question worth highlighting: no stopwords, at least three characters, longest first."""
    words = {w.lower() for w in re.findall(r"[\w'’-]+", question) if len(w) >= 3}
    return sorted(words - STOPWORDS, key=len, reverse=True)


def highlight(text: str, words: list[str]) -> str:
    """HTML-escaped text with <mark> around whole-word matches of words (case-insensitive)."""
    if not words:
        return html.escape(text)
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    out, last = [], 0
    for match in pattern.finditer(text):
        out.append(html.escape(text[last:match.start()]))
        out.append(f"<mark>{html.escape(match.group())}</mark>")
        last = match.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def reflow(text: str) -> str:
    """Text with its hard line wraps (PDF pages, wrapped text files) joined into running lines; blank lines stay
    paragraph breaks."""
    paragraphs = re.split(r"\n\s*\n", text)
    return "\n\n".join(re.sub(r"[ \t]*\n[ \t]*", " ", p.strip()) for p in paragraphs if p.strip())


def pages_label(start: int | None, end: int | None) -> str:
    """'p. 4', 'pp. 4-5' or '' for sources without pages."""
    if start is None:
        return ""
    return f"p. {start}" if end in (None, start) else f"pp. {start}-{end}"


def recall_frame(state: MemoryState | None, weights: torch.Tensor | None) -> pd.DataFrame:
    """One row per segment read: its number (from 1), recall weight, document and pages; empty without weights."""
    if state is None or weights is None or not state.num_segments:
        return pd.DataFrame({c: [] for c in CHART_COLUMNS})
    values = weights.detach().float().cpu().tolist()
    rows = []
    for seg in state.segments:
        weight = values[seg.index] if seg.index < len(values) else 0.0
        rows.append({"segment": seg.index + 1, "weight": round(weight, 5), "document": seg.source,
                     "pages": pages_label(seg.page_start, seg.page_end) or "-"})
    return pd.DataFrame(rows, columns=CHART_COLUMNS)


def y_limit(frame: pd.DataFrame) -> list[float]:
    """A y axis from 0 to a little above the highest weight (weights over hundreds of segments are small)."""
    top = float(frame["weight"].max()) if len(frame) else 0.0
    return [0.0, max(top * 1.15, 0.01)]


def where(passage: Passage) -> str:
    """'book.pdf, p. 4', or 'earlier chat, turn 2' for a recalled chat turn."""
    if passage.source == "chat":
        return f"earlier chat, turn {passage.page_start}" if passage.page_start else "earlier chat"
    return f"{passage.source}, {passage.pages}" if passage.pages else passage.source


def location(state: MemoryState, passage: Passage) -> str:
    """'segment 37 of 210, p. 12, 18% through book.pdf' for a passage."""
    first = passage.segments[0] + 1
    segs = f"segment {first}" if len(passage.segments) == 1 else f"segments {first}-{passage.segments[-1] + 1}"
    total = len(state.sources[passage.source].text) or 1
    through = round(100 * passage.char_start / total)
    if passage.source == "chat":
        return f"{segs} of {state.num_segments}"
    parts = [f"{segs} of {state.num_segments}", passage.pages, f"{through}% through {passage.source}"]
    return ", ".join(p for p in parts if p)


def passages_html(state: MemoryState | None, passages: list[Passage], question: str) -> str:
    """The recalled passages, strongest first, with their place in the documents and question words marked."""
    if state is None or not passages:
        return '<div class="hmt-passages hmt-empty">Ask a question to see which passages the memory recalled.</div>'
    words = question_words(question)
    blocks = []
    for n, passage in enumerate(sorted(passages, key=lambda p: -p.weight), 1):
        blocks.append(
            f'<div class="hmt-passage"><div class="hmt-where"><b>[{n}] {html.escape(where(passage))}</b> · '
            f'{html.escape(location(state, passage))} · '
            f'recall weight {passage.weight:.3f}</div>'
            f'<div class="hmt-text">{highlight(reflow(passage.text), words)}</div></div>')
    return '<div class="hmt-passages">' + "".join(blocks) + "</div>"


def citations(passages: list[Passage]) -> list[dict]:
    """The passages as plain data for the API: source, pages, segments (from 1), weight and text."""
    return [{"source": p.source, "pages": p.pages if p.source != "chat" else f"turn {p.page_start}", "segments": [i + 1 for i in p.segments],
             "weight": round(p.weight, 5), "text": p.text} for p in sorted(passages, key=lambda p: -p.weight)]


def citation_line(passages: list[Passage]) -> str:
    """'Recalled from: book.pdf p. 4 · book.pdf pp. 7-8' (strongest first)."""
    items = [where(p) for p in sorted(passages, key=lambda p: -p.weight)]
    return "Recalled from: " + " · ".join(dict.fromkeys(items)) if items else ""


def documents_markdown(session: Session) -> str:
    """The documents in memory, one line each."""
    if not session.documents:
        return "*No documents in memory yet.*"
    lines = []
    for doc in session.documents:
        pages = f"{doc.pages} page{'s' if doc.pages != 1 else ''}"
        status = " · from cache" if doc.from_cache else ""
        if not doc.complete:
            status += f" · **partly read** (up to p. {doc.last_page})" if doc.last_page else " · **partly read**"
        lines.append(f"- **{doc.name}** · {pages} · {doc.segments} segments · {doc.tokens:,} tokens{status}")
    return "\n".join(lines)


def memory_html(session: Session, sensory_text: str, describe_model: str) -> str:
    """The memory hierarchy: sensory memory (decoded), the newest memory embedding, the long-term cache and the
    documents, under a line naming the model."""
    model = f'<div class="hmt-model">{html.escape(describe_model)}</div>'
    state = session.memory
    if state is None:
        return model + '<div class="hmt-memory hmt-empty">The memory is empty: add a document.</div>'
    rows = []
    sensory = html.escape(sensory_text) if sensory_text else "(none)"
    rows.append(("Sensory memory", f"last {len(state.sensory_ids)} tokens read: <code>{sensory}</code>"))
    if state.cache.shape[0]:
        newest = state.cache[-1].float()
        first = ", ".join(f"{v:+.3f}" for v in newest[:6].tolist())
        rows.append(("Current memory", f"newest memory embedding: norm {float(newest.norm()):.2f}, "
                                       f"d = {newest.shape[0]}, first values [{first}, …]"))
    capacity = state.meta.get("cache_size", state.cache.shape[0])
    rows.append(("Long-term cache", f"{state.cache.shape[0]} of {capacity} memory embeddings"))
    chat = sum(1 for s in state.segments if s.source == "chat")
    rows.append(("Segments read", f"{state.num_segments} ({state.num_segments - chat} from documents, "
                                  f"{chat} from the chat)"))
    docs = ", ".join(f"{html.escape(d.name)} ({d.segments})" for d in session.documents) or "none"
    rows.append(("Documents", docs))
    body = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return model + f'<table class="hmt-memory">{body}</table>'
