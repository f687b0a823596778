"""An answer's evidence: the sentence (or two) of the recalled passages that supports it, chosen by a measurable rule.

Every sentence of the document passages is scored by the words it shares with the question and with the answer
(the lexical channel's terms: case-folded, stop words out, stemmed), each shared term weighted by how rare it is
among the passages' sentences (idf), as the share of that text's weight the sentence covers:

    score = QUESTION_WEIGHT * covered(question) + ANSWER_WEIGHT * covered(answer)

Given the reader's backbone (`likelihood`, as stream_answer gives it), the SHORTLIST sentences with the best such
scores are then weighed by how well each one predicts the question (question_likelihoods: the mean log-probability
per token of the question written after the sentence, as in "question generation" rerankers) and, given a sentence
embedder (`similarity`, hmt_core.embedder), by the cosine of their embeddings with the question's; the best of them
by score + LIKELIHOOD_WEIGHT * likelihood + SIMILARITY_WEIGHT * cosine becomes the evidence. SQuAD's questions were
written against one sentence each, and a sentence that predicts the question's wording beyond the shared rare words
(its phrasing, its pronoun's antecedent), or says the same in other words, is more often that sentence. A best
sentence that opens with a pronoun ('It includes large public works, dams, …') is shown with the one before it
('Infrastructure …'), which often holds what the question asks. Chosen on the development and training articles
only (bench.evidence --split dev and --split train, then --rescore --likelihood; README): with the second answer
adapter's answers, the evidence held the gold answer for 0.914 of 347 questions, against 0.862 with the likelihood
alone before the pronoun join (0.870 with it) and 0.824 with the overlap alone; the weights 0.25 to 8 for the cosine
were tried there, and the sentence before as context for the likelihood, which did worse. Held out: 0.878 against
0.861 with the second adapter's answers, 0.871 with the third's, 0.867 with the third's quoted (the app; README).

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
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from .backbone import final_hidden_states, lm_logits
from .recall.lexical import terms
from .state import MemoryState

if TYPE_CHECKING:
    from .answer import Passage

QUESTION_WEIGHT = 1.0
ANSWER_WEIGHT = 0.5
SHORTLIST = 8  # sentences with the best lexical scores that the backbone then weighs
LIKELIHOOD_WEIGHT = 0.2  # per nat of the question's mean log-probability per token
LIKELIHOOD_PROMPT = "Passage: {sentence}\nA question this passage answers:"
JOIN_SHARE = 0.25  # least share of the answer's weight a neighbouring sentence must add to join the best one
SIMILARITY_WEIGHT = 3.0  # per unit of cosine between the question and a shortlisted sentence (a sentence embedder)
# a sentence opening with one of these points back to the one before: 'It includes large public works, …'
_REFERS_BACK = re.compile(r"(?:It|Its|They|Their|Them|This|These|Those|He|His|She|Her|Such)\b")
LONG_SENTENCE = 400  # characters; a longer "sentence" (a list, a table) is also cut at line ends and semicolons
_BOUNDARY = re.compile(r"[.!?][\"'”’)\]]*(\s+)|\n\s*\n")  # group 1: the space after a sentence's end
_LONG_BOUNDARY = re.compile(r"\n|(?<=;)\s+")
# a sentence end after these is not one: 'Mr. Bingley', 'e.g. this', 'J. Smith'
_ABBREVIATION = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Prof|Sr|Jr|vs|etc|No|Fig|Vol|pp?|e\.g|i\.e|cf)|\b[A-Z])\.$")
# nor is a dot inside a URL that a line end cuts ('(https://CRAN.' / 'R-project.org/package=DBI)'): the word before
# it a URL, the dot right after a letter or digit
_URL_BEFORE_DOT = re.compile(r"(?:\b[a-z][a-z0-9+.-]*://|\bwww\.)\S*[A-Za-z0-9]\.$", re.IGNORECASE)


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
    common abbreviation or an initial, nor at a URL's dot where a line end cuts the URL (_wrapped_url); a sentence
    longer than LONG_SENTENCE (prose running into code lines, a list, a table) is also cut at semicolons and at line
    ends, but not before a line that opens with a lowercase letter (a hard-wrapped sentence going on, as PDF text
    is), and a part still longer than that at every line end."""
    pieces, start = [], 0
    for cut in _BOUNDARY.finditer(text):
        end = cut.start(1) if cut.group(1) else cut.start()
        if _ABBREVIATION.search(text[start:end]) or _wrapped_url(text, start, cut):
            continue
        pieces.append((start, end))
        start = cut.end()
    pieces.append((start, len(text)))
    spans = []
    for start, end in pieces:
        parts = [(start, end)]
        if end - start > LONG_SENTENCE:
            parts = [part for a, b in _cut_long(text, start, end, keep_wraps=True)
                     for part in (_cut_long(text, a, b, keep_wraps=False) if b - a > LONG_SENTENCE else [(a, b)])]
        spans += [span for a, b in parts if (span := _stripped(text, a, b))]
    return spans


def _wrapped_url(text: str, start: int, cut: re.Match) -> bool:
    """Whether the sentence end `cut` (a _BOUNDARY match; the sentence began at start) is a URL's dot at a line end
    with the URL going on on the next line: nothing but the dot before the space, the space one line end, the word
    before the dot a URL (_URL_BEFORE_DOT) and the next line's first word one that goes on like a URL (opens with a
    letter and holds a '.' or a '/', or has no capital: 'R-project.org/package=XML)', 'com);', 'html and').
    'gengcnotes.html.' before '1.8 Serialization' or before 'Another interface' still ends its sentence."""
    space = cut.group(1)
    if not space or cut.start(1) - cut.start() != 1 or space.strip(" \t\r") != "\n":
        return False
    if not _URL_BEFORE_DOT.search(text, start, cut.start() + 1):
        return False
    word = text[cut.end():cut.end() + 80].split(maxsplit=1)
    return bool(word) and word[0][0].isalpha() and ("." in word[0] or "/" in word[0] or word[0] == word[0].lower())


def _stripped(text: str, start: int, end: int) -> tuple[int, int] | None:
    """[start, end) without the white space at either end; None when nothing else is left."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def _cut_long(text: str, start: int, end: int, keep_wraps: bool) -> list[tuple[int, int]]:
    """text[start:end] cut at semicolons and line ends (_LONG_BOUNDARY); with keep_wraps, not at a line end whose
    next line opens with a lowercase letter."""
    bounds = [start]
    for cut in _LONG_BOUNDARY.finditer(text, start, end):
        if keep_wraps and cut.group() == "\n" and text[cut.end():min(end, cut.end() + 16)].lstrip(" \t")[:1].islower():
            continue
        bounds += [cut.start(), cut.end()]
    bounds.append(end)
    return list(zip(bounds[::2], bounds[1::2]))


def passage_sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The sentences (spans in text) that overlap text[start:end], whole: split in the passage's text widened by up
    to LONG_SENTENCE characters each way, so that a sentence a passage's edge cuts ('The official way to coerce an
    array back to a simple') is shown as the document has it. A sentence the window's own edge cuts is clipped to
    the passage."""
    lo, hi = max(0, start - LONG_SENTENCE), min(len(text), end + LONG_SENTENCE)
    spans = [(lo + a, lo + b) for a, b in sentence_spans(text[lo:hi])]
    kept = []
    for n, (a, b) in enumerate(spans):
        if b <= start or a >= end:
            continue
        if n == 0 and lo > 0:
            a = max(a, start)
        if n == len(spans) - 1 and hi < len(text):
            b = min(b, end)
        if span := _stripped(text, a, b):
            kept.append(span)
    return kept


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


@torch.no_grad()
def question_likelihoods(backbone: nn.Module, tokenizer, question: str, sentences: list[str],
                         max_question_tokens: int = 64) -> list[float]:
    """For each sentence, the mean log-probability per token of the question written after it in LIKELIHOOD_PROMPT,
    under the plain backbone (switch an answer adapter off first): one batched call, right-padded, the LM head on
    the question's positions only."""
    asked = tokenizer(" " + question.strip(), add_special_tokens=False)["input_ids"][:max_question_tokens]
    if not sentences or not asked:
        return [0.0] * len(sentences)
    fronts = [tokenizer(LIKELIHOOD_PROMPT.format(sentence=s), add_special_tokens=False)["input_ids"]
              for s in sentences]
    device = backbone.get_input_embeddings().weight.device
    width = max(len(f) for f in fronts) + len(asked)
    ids = torch.zeros(len(fronts), width, dtype=torch.long)  # [S, W], right-padded
    mask = torch.zeros(len(fronts), width, dtype=torch.long)  # [S, W]
    for row, front in enumerate(fronts):
        ids[row, :len(front) + len(asked)] = torch.tensor(front + asked)
        mask[row, :len(front) + len(asked)] = 1
    ids, mask = ids.to(device), mask.to(device)
    hidden, _ = final_hidden_states(backbone, backbone.get_input_embeddings()(ids), attention_mask=mask)  # [S, W, d]
    rows = torch.arange(len(fronts), device=device)[:, None]  # [S, 1]
    places = torch.tensor([[len(f) - 1 + i for i in range(len(asked))] for f in fronts], device=device)  # [S, Q]
    logits = lm_logits(backbone, hidden[rows, places]).float()  # [S, Q, V]: each predicts the question's next token
    target = torch.tensor(asked, device=device).expand(len(fronts), -1)  # [S, Q]
    chosen = logits.log_softmax(-1).gather(-1, target[..., None])[..., 0]  # [S, Q]
    return chosen.mean(-1).tolist()


def shortlist_weighers(backbone: nn.Module | None, tokenizer, question: str, embedder=None
                       ) -> dict[str, Callable[[list[str]], list[float]] | None]:
    """rank_evidence's `likelihood` and `similarity` for one question, as the app weighs its shortlist: the
    backbone's question_likelihoods (switch an answer adapter off first) and the embedder's (hmt_core.embedder)
    similarities; None for what is not given."""
    return {"likelihood": None if backbone is None else (
                lambda sentences: question_likelihoods(backbone, tokenizer, question, sentences)),
            "similarity": None if embedder is None else (lambda sentences: embedder.similarities(question, sentences))}


def rank_evidence(state: MemoryState, passages: list[Passage], question: str, answer: str,
                  question_weight: float = QUESTION_WEIGHT, answer_weight: float = ANSWER_WEIGHT,
                  likelihood: Callable[[list[str]], list[float]] | None = None,
                  similarity: Callable[[list[str]], list[float]] | None = None) -> list[Evidence]:
    """For each passage, its best sentence (joined by the neighbour that adds most of the answer's words, where that
    adds JOIN_SHARE; whole where the passage's edge cuts it, passage_sentences), strongest first; passages with no
    sentence sharing a term with the question or the answer are left out. The first is the answer's evidence. Give
    document passages only: a recalled chat turn is what was said, never evidence. The weights are the app's unless
    given (bench.evidence --rescore compares others). `likelihood` maps sentence texts to question_likelihoods (the
    question fixed); with it, the SHORTLIST lexically best sentences also get LIKELIHOOD_WEIGHT times theirs,
    counted from the lowest among them, so that a sentence off the shortlist (no bonus) never overtakes one on it;
    `similarity` (sentence texts to their cosines with the question, hmt_core.embedder) adds SIMILARITY_WEIGHT times
    theirs to the same shortlist, counted the same way. A best sentence that opens with a pronoun ('It includes …')
    is shown with the sentence before it, which names what it means."""
    sentences: list[_Sentence] = []
    for n, passage in enumerate(passages):
        text = state.sources[passage.source].text
        for order, (a, b) in enumerate(passage_sentences(text, passage.char_start, passage.char_end)):
            sentences.append(_Sentence(n, order, a, b, frozenset(terms(text[a:b])), passage.weight))
    if not sentences:
        return []
    df: dict[str, int] = {}
    for s in sentences:
        for t in s.terms:
            df[t] = df.get(t, 0) + 1
    idf = {t: math.log(1 + len(sentences) / d) for t, d in df.items()}
    wanted_answer, wanted_question = set(terms(answer)), set(terms(question))

    def lexical(found: set[str]) -> float:
        return (question_weight * _covered(found, wanted_question, idf)
                + answer_weight * _covered(found, wanted_answer, idf))

    alone = {(s.passage, s.order): lexical(set(s.terms)) for s in sentences}  # each sentence's lexical score
    by_place = {(s.passage, s.order): s for s in sentences}
    bonus: dict[tuple[int, int], float] = {}  # (passage, order) -> model bonus, shortlisted sentences only
    places = sorted((s for s in sentences if alone[(s.passage, s.order)] > 0),
                    key=lambda s: (-alone[(s.passage, s.order)], -s.weight, s.passage, s.order))[:SHORTLIST]
    source_texts = [state.sources[passages[s.passage].source].text[s.start:s.end] for s in places]
    for weigh, weight in ((likelihood, LIKELIHOOD_WEIGHT), (similarity, SIMILARITY_WEIGHT)):
        if weigh is not None and places:
            values = weigh(source_texts)
            for s, v in zip(places, values):
                key = (s.passage, s.order)
                bonus[key] = bonus.get(key, 0.0) + weight * (v - min(values))

    def score(found: set[str], s: _Sentence) -> float:
        return lexical(found) + bonus.get((s.passage, s.order), 0.0)

    best: dict[int, tuple[float, _Sentence, _Sentence]] = {}  # passage -> (score, first, last sentence)
    for s in sentences:
        value = alone[(s.passage, s.order)] + bonus.get((s.passage, s.order), 0.0)
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
            best[n] = (score(both, s), first, last)
    for n, (value, first, last) in list(best.items()):
        before = by_place.get((n, first.order - 1))
        if first is last and before is not None and _REFERS_BACK.match(state.sources[passages[n].source].text,
                                                                        first.start):
            best[n] = (value, before, first)
    ranked = sorted(best.values(), key=lambda b: (-b[0], -b[1].weight, b[1].passage, b[1].order))
    out = []
    for value, first, last in ranked:
        name = passages[first.passage].source
        source = state.sources[name]
        out.append(Evidence(source.text[first.start:last.end], name, source.page_at(first.start),
                            source.page_at(last.end - 1), first.start, last.end, round(value, 4)))
    return out
