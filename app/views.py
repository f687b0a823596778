"""What the page shows, built from plain data: the progress bar, the recall chart's table (each bar split by recall
channel), the recalled passages with why they were recalled, the memory hierarchy panel and the document list."""

from __future__ import annotations

import bisect
import html
import math
import re
from itertools import pairwise

import pandas as pd
import torch

from app.pages import RenderedPage
from app.session import Session
from hmt_core import MemoryState, Passage
from hmt_core.answer import CHAT_SOURCE
from hmt_core.evidence import Evidence
from hmt_core.recall import Recall
from hmt_core.recall.lexical import LexicalIndex

Span = tuple[int, int]

CHANNEL_NAMES = {"memory": "memory", "lexical": "words", "token": "token keys",
                 "sentence": "sentences"}  # as the page names them
CHART_COLUMNS = ["segment", "channel", "weight", "recall", "document", "pages"]
_MARKDOWN_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character


def md_text(text: str) -> str:
    """Text to put in Markdown (the chat, the status lines, the documents list) so that it shows exactly as
    written: every ASCII punctuation character backslash-escaped, so that file names and model output never
    become links, autolinked URLs, HTML or formatting."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def unescape(markdown: str) -> str:
    """Markdown with md_text's escapes undone, for API clients, who get text rather than a page."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def progress_html(fraction: float, message: str, state: str = "running") -> str:
    """A progress bar (state 'running', 'done' or 'idle') with a line of text under it."""
    percent = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="hmt-progress hmt-{state}" data-state="{state}">'
            f'<div class="hmt-bar"><div class="hmt-fill" style="width:{percent:.1f}%"></div></div>'
            f'<div class="hmt-progress-text">{html.escape(message)}</div></div>')


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


def channel_shares(contributions: dict[str, float]) -> dict[str, float]:
    """Each channel's share of one segment's recall weight: its positive part of the fused recall score over the
    sum of every channel's positive part. When no channel adds anything positive, the channel with the largest
    contribution takes the whole bar; without contributions (no per-channel detail) it is all memory."""
    if not contributions:
        return {"memory": 1.0}
    positive = {c: max(v, 0.0) for c, v in contributions.items()}
    total = sum(positive.values())
    if total > 0:
        return {c: v / total for c, v in positive.items()}
    best = max(contributions, key=contributions.get)
    return {c: float(c == best) for c in contributions}


def recall_frame(state: MemoryState | None, weights: torch.Tensor | None, detail: Recall | None = None
                 ) -> pd.DataFrame:
    """The recall chart's table: for every segment read, one row per channel that had a share in its recall weight
    (channel_shares), `weight` = the segment's weight times that share, so a segment's rows stack to its weight
    (`recall`); with its number (from 1), document and pages. Empty without weights."""
    if state is None or weights is None or not state.num_segments:
        return pd.DataFrame({c: [] for c in CHART_COLUMNS})
    values = weights.detach().float().cpu().tolist()
    parts = {c: v.detach().float().cpu().tolist() for c, v in detail.contributions.items()} if detail else {}
    rows = []
    for seg in state.segments:
        i = seg.index
        weight = values[i] if i < len(values) else 0.0
        shares = channel_shares({c: p[i] for c, p in parts.items() if i < len(p)})
        for channel, share in shares.items():
            if share > 0:
                rows.append({"segment": i + 1, "channel": CHANNEL_NAMES[channel], "weight": round(weight * share, 6),
                             "recall": round(weight, 6), "document": seg.source,
                             "pages": pages_label(seg.page_start, seg.page_end) or "-"})
    return pd.DataFrame(rows, columns=CHART_COLUMNS)


def y_limit(frame: pd.DataFrame) -> list[float]:
    """A y axis from 0 to a little above the highest stacked bar (weights over hundreds of segments are small)."""
    top = float(frame.groupby("segment")["weight"].sum().max()) if len(frame) else 0.0
    return [0.0, max(top * 1.15, 0.01)]


def where(passage: Passage) -> str:
    """'book.pdf, p. 4', or 'earlier chat, turn 2' for a recalled chat turn."""
    if passage.source == CHAT_SOURCE:
        return f"earlier chat, turn {passage.page_start}" if passage.page_start else "earlier chat"
    return f"{passage.source}, {passage.pages}" if passage.pages else passage.source


def location(state: MemoryState, passage: Passage) -> str:
    """'segment 37 of 210, p. 12, 18% through book.pdf' for a passage."""
    first = passage.segments[0] + 1
    segs = f"segment {first}" if len(passage.segments) == 1 else f"segments {first}-{passage.segments[-1] + 1}"
    total = len(state.sources[passage.source].text) or 1
    through = round(100 * passage.char_start / total)
    if passage.source == CHAT_SOURCE:
        return f"{segs} of {state.num_segments}"
    parts = [f"{segs} of {state.num_segments}", passage.pages, f"{through}% through {passage.source}"]
    return ", ".join(p for p in parts if p)


def move_spans(spans: list[Span], raw: str, shown: str) -> list[Span]:
    """Character spans in `raw` -> the spans of the same characters in `shown`, which is `raw` with only its
    whitespace changed (reflow keeps every other character, in order); a span's own leading and trailing
    whitespace is dropped, a span of whitespace only disappears."""
    raw_solid = [i for i, ch in enumerate(raw) if not ch.isspace()]
    shown_solid = [i for i, ch in enumerate(shown) if not ch.isspace()]
    moved = []
    for start, end in spans:
        first, last = bisect.bisect_left(raw_solid, start), bisect.bisect_left(raw_solid, end) - 1
        if first <= last:
            moved.append((shown_solid[first], shown_solid[last] + 1))
    return moved


def _word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def whole_words(spans: list[Span], text: str) -> list[Span]:
    """Spans widened at both ends to whole words: a token window can begin or end inside a word (sub-word tokens),
    and a word marked in part is hard to read."""
    widened = []
    for start, end in spans:
        while 0 < start < len(text) and _word_char(text[start - 1]) and _word_char(text[start]):
            start -= 1
        while 0 < end < len(text) and _word_char(text[end - 1]) and _word_char(text[end]):
            end += 1
        widened.append((start, end))
    return widened


def marked(text: str, words: list[Span], windows: list[Span], evidence: list[Span] = (),
           sentences: list[Span] = ()) -> str:
    """HTML-escaped text with <mark class="hmt-word"> over the word spans, <mark class="hmt-token"> over the
    token-window spans, <mark class="hmt-sentence"> over the sentences closest to the question and
    <mark class="hmt-evidence"> over the evidence; where they overlap, one mark has each class."""
    return marks(text, {"hmt-word": words, "hmt-token": windows, "hmt-sentence": list(sentences),
                        "hmt-evidence": list(evidence)})


def marks(text: str, spans_by_class: dict[str, list[Span]]) -> str:
    """HTML-escaped text with one <mark> per run of characters that the same classes' spans cover, carrying those
    classes."""
    every = [span for spans in spans_by_class.values() for span in spans]
    cuts = sorted({0, len(text), *(i for span in every for i in span if 0 <= i <= len(text))})
    pieces: list[list] = []  # [classes, text]
    for start, end in pairwise(cuts):
        classes = " ".join(name for name, spans in spans_by_class.items()
                           if any(a <= start and end <= b for a, b in spans))
        if pieces and pieces[-1][0] == classes:
            pieces[-1][1] += text[start:end]
        else:
            pieces.append([classes, text[start:end]])
    return "".join(f'<mark class="{classes}">{html.escape(piece)}</mark>' if classes else html.escape(piece)
                   for classes, piece in pieces)


def _score(value: float, signed: bool = False) -> str:
    """A score for the page, to two decimals; 'none' when not finite (a segment with no cached memory)."""
    if not math.isfinite(value):
        return "none"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def reasons(passage: Passage) -> str:
    """Why a passage was recalled: each channel's part of the fused recall score, then (with more than one
    channel) the channels' raw scores, e.g. 'memory +0.80 · words +2.10 · token keys +0.40'."""
    parts = " · ".join(f"{CHANNEL_NAMES[c]} {_score(v, signed=True)}" for c, v in passage.contributions.items())
    if len(passage.scores) < 2:
        return parts
    raw = " · ".join(f"{CHANNEL_NAMES[c]} {_score(v)}" for c, v in passage.scores.items())
    return f"{parts} (raw scores: {raw})"


def passage_body(state: MemoryState, passage: Passage, question: str, evidence: Evidence | None = None) -> str:
    """A passage's text as HTML, reflowed, with the words the question's terms match (LexicalIndex.matches), its token
    windows (Passage.token_windows, spans in the source's text; widened to whole words), its sentences closest to
    the question (Passage.sentences) and the evidence in it marked. The marks are placed on the raw text and moved
    through the reflow, so the text reads exactly as reflow() gives it."""
    raw = state.sources[passage.source].text[passage.char_start:passage.char_end]
    start = passage.char_start + len(raw) - len(raw.lstrip())  # passage.text is the stripped span
    n = len(passage.text)
    spans = [(max(a - start, 0), min(b - start, n)) for a, b in passage.token_windows]
    spans = whole_words([s for s in spans if s[0] < s[1]], passage.text)
    closest = [(max(a - start, 0), min(b - start, n)) for a, b in passage.sentences]
    closest = [s for s in closest if s[0] < s[1]]
    found = [(max(evidence.char_start - start, 0), min(evidence.char_end - start, n))] if evidence else []
    shown = reflow(passage.text)
    words = move_spans(LexicalIndex.matches(question, passage.text), passage.text, shown)
    return marked(shown, words, move_spans(spans, passage.text, shown), move_spans(found, passage.text, shown),
                  move_spans(closest, passage.text, shown))


def answer_spans(text: str, answer: str) -> list[Span]:
    """Where the answer stands word for word in text (case and runs of white space aside; a closing full stop or
    the ' …' of an answer cut at a loop left out): the answer quoted in its evidence, to be marked there."""
    words = answer.strip().rstrip(" …").rstrip(".").split()
    if not words:
        return []
    pattern = re.compile(r"\s+".join(re.escape(w) for w in words), re.IGNORECASE)
    return [m.span() for m in pattern.finditer(text)]


def answer_in(evidence: Evidence, answer: str) -> tuple[int, int] | None:
    """The first place where the answer stands word for word in the evidence (answer_spans), as a span of the
    source's text; None where it does not."""
    spans = answer_spans(evidence.text, answer)
    return (evidence.char_start + spans[0][0], evidence.char_start + spans[0][1]) if spans else None


def evidence_in(passage: Passage, evidence: list[Evidence]) -> Evidence | None:
    """The best evidence that lies in this passage, if any (evidence: strongest first, as rank_evidence gives it); a
    sentence the passage's edge cuts is evidence whole, so it may reach past the passage on either side."""
    return next((e for e in evidence if e.source == passage.source
                 and e.char_start < passage.char_end and passage.char_start < e.char_end), None)


def evidence_where(evidence: Evidence) -> str:
    """'book.pdf, p. 4' (or pp. 4-5) for the evidence."""
    pages = pages_label(evidence.page, evidence.page_end)
    return f"{evidence.source}, {pages}" if pages else evidence.source


def legend(channels: list[str], evidence: bool = False, found: bool = True) -> str:
    """What the marks and the numbers in the passages mean, for the channels this recall used (found False: the
    answer was 'not found', and the marked sentence is the closest to the question, not evidence of an answer)."""
    matched = ("that the word index matched" if "lexical" in channels
               else "(the word index was not used for this recall)")
    shown = [f'<mark class="hmt-word">words</mark> of the question {matched}']
    if "token" in channels:
        shown.append('<mark class="hmt-token">token windows</mark> whose token keys matched the question best')
    if "sentence" in channels:
        shown.append('<mark class="hmt-sentence">the sentence</mark> of each segment closest to the question in '
                     'meaning')
    if evidence and found:
        shown.append('<mark class="hmt-evidence">the evidence</mark>: the sentence sharing the most rare words with '
                     'the question and the answer, among those the model finds most likely to prompt the question '
                     'and closest to it in meaning, with <mark class="hmt-evidence hmt-answer">the answer</mark> '
                     'in it where it stands there word for word')
    elif evidence:
        shown.append('<mark class="hmt-evidence">the closest sentence</mark>: the one nearest the question, shown so '
                     'that you can check the answer "not found"')
    return ('<div class="hmt-legend">Marked: ' + " · ".join(shown)
            + ". “why”: each recall channel's part of the passage's recall score. Click a passage's name (or the "
            "evidence's) to see its page.</div>")


def _cite_button(key: str, label: str) -> str:
    """A citation to click: the page (ui.py) renders the cited page for data-cite (handlers.show_cited)."""
    return (f'<button type="button" class="hmt-cite" data-cite="{html.escape(key)}" '
            f'title="Show the page">{label}</button>')


def passages_html(state: MemoryState | None, passages: list[Passage], question: str,
                  evidence: list[Evidence] = (), found: bool = True, answer: str = "") -> str:
    """The answer's evidence first (evidence[0], once the answer is done; after a 'not found', found False, it is
    headed as the closest sentence), with the answer marked in it where it stands there word for word, then the
    recalled passages, strongest first, with their place in the documents, why each was recalled (the recall
    channels' parts) and the matched words, token windows and evidence marked, under a legend. The evidence and each
    document passage's name are buttons that show the cited page (data-cite: 'evidence' or the passage's number)."""
    if state is None or not passages:
        return '<div class="hmt-passages hmt-empty">Ask a question to see which passages the memory recalled.</div>'
    channels = list(dict.fromkeys(c for p in passages for c in p.contributions)) or ["memory"]
    blocks = []
    if evidence:
        best = evidence[0]
        head = "Evidence" if found else "Closest sentence (no answer found)"
        text = reflow(best.text)
        quoted = answer_spans(text, answer) if found else []
        blocks.append(f'<div class="hmt-evidence-box"><div class="hmt-where"><b>{head}</b> · '
                      + _cite_button("evidence", html.escape(evidence_where(best)))
                      + f' · score {best.score:.2f}</div><div class="hmt-text">'
                      + marks(text, {"hmt-evidence": [(0, len(text))], "hmt-answer": quoted}) + "</div></div>")
    for n, passage in enumerate(documents_first(passages), 1):
        why = reasons(passage)
        name = f"[{n}] {html.escape(where(passage))}"
        head = name if passage.source == CHAT_SOURCE else _cite_button(str(n), name)
        blocks.append(
            f'<div class="hmt-passage"><div class="hmt-where"><b>{head}</b> · '
            f'{html.escape(location(state, passage))} · '
            f'recall weight {passage.weight:.3f}</div>'
            + (f'<div class="hmt-why">why: {html.escape(why)}</div>' if why else "")
            + f'<div class="hmt-text">{passage_body(state, passage, question, evidence_in(passage, evidence[:1]))}'
            '</div></div>')
    return '<div class="hmt-passages">' + legend(channels, bool(evidence), found) + "".join(blocks) + "</div>"


def _number(value: float) -> float | None:
    """A score for JSON: rounded, None when not finite (a segment with no cached memory has no memory score)."""
    return round(value, 5) if math.isfinite(value) else None


def citations(passages: list[Passage], channels: tuple[str, ...] | list[str] | None = None) -> list[dict]:
    """The passages as plain data for the API: source, pages, segments (from 1), weight and text, each channel's
    raw score and part of the fused recall score ("channels"), and the channels the recall used
    ("recall_channels"; default: those the passages carry)."""
    used = list(channels) if channels is not None else list(dict.fromkeys(c for p in passages for c in p.scores))
    return [{"source": p.source, "pages": p.pages if p.source != CHAT_SOURCE else f"turn {p.page_start}",
             "segments": [i + 1 for i in p.segments], "weight": round(p.weight, 5), "text": p.text,
             "channels": {c: {"score": _number(p.scores.get(c, math.nan)),
                              "contribution": _number(p.contributions.get(c, math.nan))} for c in p.scores},
             "recall_channels": used} for p in documents_first(passages)]


def evidence_data(evidence: list[Evidence], passages: list[Passage], found: bool = True,
                  answer: str = "", not_found_by: str | None = None) -> dict | None:
    """The answer's evidence (evidence[0]) as plain data for the API: its text, source, page (and last page), its
    character span in the source's extracted text, its score, the number (from 1) of the citation it lies in,
    whether it supports an answer ('supports_answer' False after a 'not found': then it is the sentence closest to
    the question), 'not_found_by', what said 'not found' then (AnswerEvent.not_found_by: 'recall', 'probe',
    'reply_score' or 'reader'; None for an answer), and 'answer_span', the span in the same text where the answer
    stands in it word for word (the first such place; None where it does not); None without evidence."""
    if not evidence:
        return None
    best = evidence[0]
    cited = documents_first(passages)
    inside = next((n for n, p in enumerate(cited, 1) if evidence_in(p, [best]) is best), None)
    span = answer_in(best, answer) if found else None
    quoted = list(span) if span else None
    return {"text": best.text, "source": best.source, "page": best.page, "page_end": best.page_end,
            "char_start": best.char_start, "char_end": best.char_end, "score": best.score, "citation": inside,
            "supports_answer": found, "not_found_by": None if found else not_found_by, "answer_span": quoted}


NOT_FOUND_WHY = {
    "recall": "recall found no passage that seems to hold the answer",
    "probe": "the answer adapter's probe read the passage in its prompt as not holding the answer",
    "reply_score": "the answer adapter found its “not found” reply likely for the passage in its prompt",
    "reader": "the reader itself answered so",
}


def not_found_line(by: str | None) -> str:
    """'Why “not found”: …' for the chat after a 'not found' answer (by: AnswerEvent.not_found_by), or ''."""
    return f"Why “not found”: {NOT_FOUND_WHY[by]}." if by in NOT_FOUND_WHY else ""


def evidence_line(evidence: list[Evidence], found: bool = True) -> str:
    """'Evidence (book.pdf, p. 4): “The sentence.”' for the chat ('Closest sentence …' after a 'not found'), or ''
    without evidence."""
    if not evidence:
        return ""
    head = "Evidence" if found else "Closest sentence"
    return f"{head} ({evidence_where(evidence[0])}): “{reflow(evidence[0].text)}”"


def page_empty_html() -> str:
    """The page view before any citation was clicked."""
    return ('<div class="hmt-page-view hmt-empty">Click the evidence or a passage\'s name under “What was recalled” '
            "to see its page here, the evidence marked.</div>")


def _page_head(name: str, page: int | None, count: int, note: str) -> str:
    where = f"page {page} of {count}" if page is not None else ""
    parts = [f"<b>{html.escape(name)}</b>", where, html.escape(note)]
    return '<div class="hmt-page-head">' + " · ".join(p for p in parts if p) + "</div>"


def page_image_html(name: str, page: int, rendered: RenderedPage, note: str) -> str:
    """A rendered PDF page, its evidence boxes and the answer's boxes inside them laid over the image (positions in
    percent, so they follow its size)."""
    boxes = "".join(f'<mark class="{kind}" style="left:{100 * a:.2f}%;top:{100 * b:.2f}%;'
                    f'width:{100 * (c - a):.2f}%;height:{100 * (d - b):.2f}%"></mark>'
                    for kind, shown in (("hmt-box", rendered.boxes), ("hmt-box hmt-answer-box", rendered.answer_boxes))
                    for a, b, c, d in shown)
    alt = html.escape(f"Page {page} of {name}", quote=True)
    return (f'<div class="hmt-page-view" data-kind="pdf" data-page="{page}">'
            + _page_head(name, page, rendered.page_count, note)
            + f'<div class="hmt-page"><img class="hmt-page-image" src="{rendered.data_uri}" alt="{alt}" '
            f'width="{rendered.width}" height="{rendered.height}">{boxes}</div></div>')


def page_text_html(name: str, page: int | None, count: int, text: str, evidence: list[Span],
                   passage: list[Span], note: str, answer: list[Span] = ()) -> str:
    """A page of a text source (or a window of it), reflowed, with the recalled passage, the evidence and the answer
    inside it marked."""
    shown = reflow(text)
    body = marks(shown, {"hmt-cited": move_spans(passage, text, shown),
                         "hmt-evidence": move_spans(evidence, text, shown),
                         "hmt-answer": move_spans(list(answer), text, shown)})
    return (f'<div class="hmt-page-view" data-kind="text" data-page="{page or ""}">'
            + _page_head(name, page, count, note) + f'<div class="hmt-page-text hmt-text">{body}</div></div>')


def documents_first(passages: list[Passage]) -> list[Passage]:
    """Passages strongest first, a recalled chat turn after every document passage (recall_passages)."""
    return sorted(passages, key=lambda p: (p.source == CHAT_SOURCE, -p.weight))


def citation_line(passages: list[Passage], found: bool = True) -> str:
    """'Recalled from: book.pdf p. 4 · book.pdf pp. 7-8' (documents first, strongest first); after a 'not found'
    answer, 'Closest passages: …'."""
    items = [where(p) for p in documents_first(passages)]
    head = "Recalled from: " if found else "Closest passages (none seems to hold the answer): "
    return head + " · ".join(dict.fromkeys(items)) if items else ""


def documents_markdown(session: Session) -> str:
    """The documents in memory, one line each."""
    if not session.documents:
        return "*No documents in memory yet.*"
    lines = []
    for doc in session.documents:
        pages = f"{doc.pages} page{'s' if doc.pages != 1 else ''}"
        status = ""  # the same whether the memory was read now or came from the cache (another session's read)
        if not doc.complete:
            status += f" · **partly read** (up to p. {doc.last_page})" if doc.last_page else " · **partly read**"
            status += "; add the file again to read the rest" if doc.digest in session.partial else ""
        lines.append(f"- **{md_text(doc.name)}** · {pages} · {doc.segments} segments · {doc.tokens:,} tokens{status}")
    return "\n".join(lines)


def size_label(nbytes: int) -> str:
    """'512 B', '18.0 KB', '1.2 MB'."""
    for unit in ("B", "KB", "MB"):
        if nbytes < 1024:
            return f"{nbytes} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GB"


def memory_html(session: Session, sensory_text: str, describe_model: str) -> str:
    """The memory hierarchy, one row per level with its size: sensory memory (decoded), the newest memory
    embedding, the long-term cache of memory embeddings, the token keys, the word index and the sentence vectors;
    then the segments and documents, under a line naming the model."""
    model = f'<div class="hmt-model">{html.escape(describe_model)}</div>'
    state = session.memory
    if state is None:
        return model + '<div class="hmt-memory hmt-empty">The memory is empty: add a document.</div>'
    rows = []
    sensory = html.escape(sensory_text) if sensory_text else "(none)"
    rows.append(("Sensory memory", f"last {len(state.sensory_ids)} tokens read: <code>{sensory}</code>"))
    cache = state.cache
    if cache.shape[0]:
        newest = cache[-1].float()
        first = ", ".join(f"{v:+.3f}" for v in newest[:6].tolist())
        rows.append(("Current memory", f"newest memory embedding: norm {float(newest.norm()):.2f}, "
                                       f"d = {newest.shape[0]}, first values [{first}, …]"))
    capacity = state.capacity or cache.shape[0]
    rows.append(("Long-term cache", f"{cache.shape[0]} of {capacity} memory embeddings, d = {cache.shape[-1]}, "
                                    f"{size_label(cache.numel() * cache.element_size())}"))
    keys = state.token_keys
    if keys is None:
        rows.append(("Token keys", "none: the loaded weights have no token keys"))
    else:
        segments, per_segment, width = keys.shape
        rows.append(("Token keys", f"{segments} segments × {per_segment} keys × {width} dims, "
                                   f"{size_label(keys.numel() * keys.element_size())}"))
    rows.append(("Word index", f"{len(state.lexical)} segments indexed, {state.lexical.num_terms:,} distinct terms "
                               "(BM25)"))
    sentences = state.sentences
    if sentences.vectors.numel():
        rows.append(("Sentence vectors", f"{sentences.vectors.shape[0]:,} sentences of {len(sentences)} segments × "
                                         f"{sentences.vectors.shape[-1]} dims, "
                                         f"{size_label(sentences.vectors.numel() * sentences.vectors.element_size())}"))
    chat = sum(1 for s in state.segments if s.source == CHAT_SOURCE)
    rows.append(("Segments read", f"{state.num_segments} ({state.num_segments - chat} from documents, "
                                  f"{chat} from the chat)"))
    docs = ", ".join(f"{html.escape(d.name)} ({d.segments})" for d in session.documents) or "none"
    rows.append(("Documents", docs))
    body = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return model + f'<table class="hmt-memory">{body}</table>'
