"""An answer's evidence: the sentence (or two) of the recalled passages that supports it, chosen by a measurable rule.

Every sentence of the document passages is scored by the words it shares with the question and with the answer
(the lexical channel's terms: case-folded, stop words out, stemmed), each shared term weighted by how rare it is
among the passages' sentences (idf), as the share of that text's weight the sentence covers:

    score = QUESTION_WEIGHT * covered(question) + ANSWER_WEIGHT * covered(answer)

The weights were chosen by measurement on training SQuAD articles (bench.evidence --split train; README): with this
small reader, whose answers are often wrong or ramble, the question is the surer guide and the answer the tie-breaker
(the sentence that supports what was said among those the question points to); on 36 training questions, counting
the answer twice the question chose the sentence holding the gold answer for 0.64 of them, the question alone 0.78,
these weights 0.92 (0.77 on 34 fresh training questions, against 0.59 and 0.74). A neighbouring sentence joins the
best one when it adds at least JOIN_SHARE of the answer's weight (an answer drawn from two sentences). Ties go to the
passage with the higher recall weight, then to the earlier sentence. A sentence that shares no term with either is
never evidence.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .recall.lexical import terms
from .state import MemoryState

if TYPE_CHECKING:
    from .answer import Passage

QUESTION_WEIGHT = 1.0
ANSWER_WEIGHT = 0.5
JOIN_SHARE = 0.25  # least share of the answer's weight a neighbouring sentence must add to join the best one
LONG_SENTENCE = 400  # characters; a longer "sentence" (a list, a table) is also cut at line ends and semicolons
_BOUNDARY = re.compile(r"[.!?][\"'”’)\]]*(\s+)|\n\s*\n")  # group 1: the space after a sentence's end
_LONG_BOUNDARY = re.compile(r"\n|(?<=;)\s+")
# a sentence end after these is not one: 'Mr. Bingley', 'e.g. this', 'J. Smith'
_ABBREVIATION = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Prof|Sr|Jr|vs|etc|No|Fig|Vol|pp?|e\.g|i\.e|cf)|\b[A-Z])\.$")


@dataclass(frozen=True)
class Evidence:
    """The sentence(s) that support an answer: their text as in the source, the source's name, the pages they sit
    on, their character span in the source's text (MemoryState.sources[source].text) and their score."""

    text: str
    source: str
    page: int | None
    page_end: int | None
    char_start: int
    char_end: int
    score: float


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """The sentences of text as (start, end) spans, stripped of surrounding whitespace: cut after '.', '!' or '?'
    followed by space (closing quotes and brackets stay with their sentence) and at blank lines, but not after a
    common abbreviation or an initial; a sentence longer than LONG_SENTENCE is also cut at line ends and
    semicolons."""
    pieces, start = [], 0
    for cut in _BOUNDARY.finditer(text):
        end = cut.start(1) if cut.group(1) else cut.start()
        if _ABBREVIATION.search(text[start:end]):
            continue
        pieces.append((start, end))
        start = cut.end()
    pieces.append((start, len(text)))
    spans = []
    for start, end in pieces:
        parts = [(start, end)]
        if end - start > LONG_SENTENCE:
            cuts = [m for m in _LONG_BOUNDARY.finditer(text, start, end)]
            bounds = [start] + [x for m in cuts for x in (m.start(), m.end())] + [end]
            parts = list(zip(bounds[::2], bounds[1::2]))
        for a, b in parts:
            while a < b and text[a].isspace():
                a += 1
            while b > a and text[b - 1].isspace():
                b -= 1
            if b > a:
                spans.append((a, b))
    return spans


@dataclass
class _Sentence:
    passage: int
    order: int  # position among its passage's sentences
    start: int  # span in the source's text
    end: int
    terms: frozenset[str]
    weight: float  # its passage's recall weight


def _covered(found: set[str], wanted: set[str], idf: dict[str, float]) -> float:
    """The share of wanted's idf weight that found holds (0 when wanted holds nothing the sentences have). Summed
    in sorted order: a set's order follows the process's string hashing, and float sums in another order round
    differently, which would let ties between sentences fall differently from one run to the next."""
    total = sum(idf.get(t, 0.0) for t in sorted(wanted))
    return sum(idf.get(t, 0.0) for t in sorted(wanted & found)) / total if total else 0.0


def rank_evidence(state: MemoryState, passages: list[Passage], question: str, answer: str,
                  question_weight: float = QUESTION_WEIGHT, answer_weight: float = ANSWER_WEIGHT) -> list[Evidence]:
    """For each passage, its best sentence (joined by the neighbour that adds most of the answer's words, where that
    adds JOIN_SHARE), strongest first; passages with no sentence sharing a term with the question or the answer are
    left out. The first is the answer's evidence. Give document passages only: a recalled chat turn is what was
    said, never evidence. The weights are the app's unless given (bench.evidence --rescore compares others)."""
    sentences: list[_Sentence] = []
    for n, passage in enumerate(passages):
        text = state.sources[passage.source].text[passage.char_start:passage.char_end]
        for order, (a, b) in enumerate(sentence_spans(text)):
            sentences.append(_Sentence(n, order, passage.char_start + a, passage.char_start + b,
                                       frozenset(terms(text[a:b])), passage.weight))
    if not sentences:
        return []
    df: dict[str, int] = {}
    for s in sentences:
        for t in s.terms:
            df[t] = df.get(t, 0) + 1
    idf = {t: math.log(1 + len(sentences) / d) for t, d in df.items()}
    wanted_answer, wanted_question = set(terms(answer)), set(terms(question))

    def score(found: set[str]) -> float:
        return (question_weight * _covered(found, wanted_question, idf)
                + answer_weight * _covered(found, wanted_answer, idf))

    by_place = {(s.passage, s.order): s for s in sentences}
    best: dict[int, tuple[float, _Sentence, _Sentence]] = {}  # passage -> (score, first, last sentence)
    for s in sentences:
        value = score(set(s.terms))
        if value > 0 and (s.passage not in best or value > best[s.passage][0]):
            best[s.passage] = (value, s, s)
    for n, (value, s, _) in list(best.items()):
        neighbours = [o for o in (by_place.get((n, s.order - 1)), by_place.get((n, s.order + 1))) if o is not None]
        if not neighbours:
            continue
        other = max(neighbours, key=lambda o: _covered(set(s.terms | o.terms), wanted_answer, idf))
        both = set(s.terms | other.terms)
        added = _covered(both, wanted_answer, idf) - _covered(set(s.terms), wanted_answer, idf)
        if added >= JOIN_SHARE:
            first, last = (other, s) if other.order < s.order else (s, other)
            best[n] = (score(both), first, last)
    ranked = sorted(best.values(), key=lambda b: (-b[0], -b[1].weight, b[1].passage, b[1].order))
    out = []
    for value, first, last in ranked:
        name = passages[first.passage].source
        source = state.sources[name]
        out.append(Evidence(source.text[first.start:last.end], name, source.page_at(first.start),
                            source.page_at(last.end - 1), first.start, last.end, round(value, 4)))
    return out
