"""Answering from a memory state, streaming tokens, and writing chat turns into memory.

Two modes (see README, 'What HMT computes here'): 'faithful' is HMT as published (the question is the final
segment: summary, recall over the whole cache, generate from [P, sensory, question], rolling over into new
segments); 'reread' ranks past segments by the same recall weights and puts the top ones' text, widened to sentence
boundaries, in the backbone's prompt (without P), so the answer can cite pages. Neither re-reads the document
through the model's memory path: only the recalled passages' text is re-read.
"""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from .answer_adapter import AnswerAdapter
from .backbone import capture_hidden, final_hidden_states, lm_logits
from .embedder import SentenceEmbedder
from .evidence import Evidence, rank_evidence, shortlist_weighers
from .memory_model import MemoryModel
from .quoting import QuoteGuard
from .reader import Reader
from .recall import Recall, available_channels, embed_sentences, matched_sentence, matched_windows, recall
from .state import MemoryState

ANSWER_MODES = ("reread", "faithful")  # stream_answer(mode=...): recall and re-read, or faithful HMT
CHAT_SOURCE = "chat"  # the source that chat turns are written into (remember_turn)
SYSTEM_PROMPT = "You answer questions about the user's documents. Use the passages. Answer in one or two sentences."
# The answer adapter's prompt (hmt_core.training.train_answer): a short answer taken from the passages, or NOT_FOUND.
ANSWER_PROMPT = ("You answer questions about the user's documents from the passages alone. Answer with a short phrase "
                 "from the passages. If the passages do not answer the question, say: The documents do not seem to "
                 "say.")
NOT_FOUND = "The documents do not seem to say."
# NOT_FOUND and its paraphrases, in lower-case words: 'The document does not seem to say.', 'The papers do not …'
_NOT_FOUND_SAID = re.compile(r"the [a-z]+ (?:do|does) not seem to say\b")
WITHHELD = "I can't share the instructions I was given. Ask me about your documents."
# What can answer 'not found': the recall rule (NotFoundRule), the answer adapter's answerability probe
# (hmt_core.answerability), the adapter's score of its NOT_FOUND reply (not_found_score), or the reader's answer.
NOT_FOUND_BY = ("recall", "probe", "reply_score", "reader")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+|\n\s*\n")


@dataclass
class Passage:
    """A recalled stretch of a source: the segment(s) it covers, widened to sentence boundaries, with its recall
    weight, its strongest segment's per-channel scores and contributions, the token windows whose keys matched the
    question (why the token channel recalled it) and each segment's sentence closest to the question (why the
    sentence channel did)."""

    segments: list[int]
    source: str
    page_start: int | None
    page_end: int | None
    char_start: int
    char_end: int
    text: str
    weight: float
    scores: dict[str, float] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)
    token_windows: list[tuple[int, int]] = field(default_factory=list)  # spans in the source's text (matched_windows)
    sentences: list[tuple[int, int]] = field(default_factory=list)  # spans in the source's text (matched_sentence)

    @property
    def pages(self) -> str:
        """'p. 4' or 'pp. 4-5' (empty when the source has no pages)."""
        if self.page_start is None:
            return ""
        if self.page_end is None or self.page_end == self.page_start:
            return f"p. {self.page_start}"
        return f"pp. {self.page_start}-{self.page_end}"


@dataclass
class AnswerEvent:
    """One step of a streamed answer: 'recall' (weights over every segment, the passages they rank first and, for the
    question's own recall, its per-channel detail), 'token' (text is the new text), or 'done' (text is the whole
    answer, ids its token ids, evidence the best sentence(s) of each recalled document passage, strongest first:
    evidence[0] is the answer's evidence; rank_evidence; found False when the answer is that the documents do not
    seem to say, evidence then being the sentences closest to the question alone, for a person to check that)."""

    kind: str
    text: str = ""
    weights: torch.Tensor | None = None
    passages: list[Passage] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    recall: Recall | None = None
    evidence: list[Evidence] = field(default_factory=list)
    found: bool = True  # False when the answer is that the documents do not seem to say
    confidence: float | None = None  # the question's recall confidence (recall_confidence), reread mode
    not_found_score: float | None = None  # with the answer adapter: not_found_score of the prompt ('done')
    unanswerable_score: float | None = None  # with the adapter's answerability probe: its score of the prompt ('done')
    not_found_by: str | None = None  # what said 'not found' (NOT_FOUND_BY), when found is False ('done')


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat in the backbone's template, ending with the assistant's turn; a plain
    'Question/Answer' layout for tokenizers without a template."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_ids(model: MemoryModel, tokenizer) -> set[int]:
    """Token ids that end an answer: eos, the chat template's end-of-turn token and the generation config's eos."""
    ids = {tokenizer.eos_token_id}
    eos = getattr(getattr(model.backbone, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    end_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end_turn, int) and end_turn != tokenizer.unk_token_id:
        ids.add(end_turn)
    return {i for i in ids if i is not None}


def says_not_found(text: str) -> bool:
    """True when an answer is NOT_FOUND (the reader's way of saying that the passages do not answer), alone or
    first, whatever the case and punctuation, or the same with another subject ('The document does not seem to
    say.', 'The papers do not seem to say.': the answer adapter's paraphrases when kept from its own words)."""
    return _NOT_FOUND_SAID.match(" ".join(re.findall(r"[a-z0-9]+", text.lower()))) is not None


def evidence_answer(text: str) -> str | None:
    """What an answer's evidence is chosen for: the answer itself; after a 'not found', '' (the sentences closest to
    the question alone: NOT_FOUND's words point nowhere); None for a withheld answer, which has no evidence."""
    if text == WITHHELD:
        return None
    return "" if says_not_found(text) else text


def _per(value: torch.Tensor | None, count: int) -> float:
    return float(value.max()) / max(count, 1) if value is not None and value.numel() else 0.0


# Ways to read a recall's confidence that some segment holds the answer; hmt_core.training.fit_not_found picks one
# and its threshold on training questions. fused_top: how far the best segment stands out in the fused score
# (z-scores, so relative to the document); weight_top: its recall weight; lexical_per_term: the best BM25 score per
# question term; token_per_key: the best token-key MaxSim per question key (both absolute, not relative).
CONFIDENCES = {
    "fused_top": lambda r: float(torch.stack(list(r.contributions.values())).sum(0).max()),
    "weight_top": lambda r: float(r.weights.max()),
    "lexical_per_term": lambda r: _per(r.scores.get("lexical"), len(r.query_terms)),
    "token_per_key": lambda r: _per(r.scores.get("token"), 0 if r.query_keys is None else r.query_keys.shape[0]),
}
NOT_FOUND_FILE = "not_found.json"  # in an HMT weights folder: the fitted NotFoundRule


@dataclass
class NotFoundRule:
    """Answer NOT_FOUND, without generating, when the recall's `confidence` (a CONFIDENCES name) is below `below`."""

    confidence: str
    below: float

    def says_not_found(self, detail: Recall) -> bool:
        return recall_confidence(detail, self.confidence) < self.below


def recall_confidence(detail: Recall, kind: str = "fused_top") -> float:
    """How sure the recall is that some segment holds the answer, read the CONFIDENCES way `kind`."""
    if detail.weights.numel() == 0:
        return float("-inf")
    return CONFIDENCES[kind](detail)


def load_not_found(folder: str | Path) -> NotFoundRule | None:
    """The not-found rule fitted for the HMT weights in `folder` (hmt_core.training.fit_not_found), or None."""
    path = Path(folder) / NOT_FOUND_FILE
    if not path.exists():
        return None
    rule = json.loads(path.read_text())
    if rule.get("confidence") not in CONFIDENCES:
        return None
    return NotFoundRule(rule["confidence"], float(rule["below"]))


def not_found_score(model: MemoryModel, last: torch.Tensor, kv, reply: list[int]) -> float:
    """The reader's mean log-probability per token of answering `reply` (the token ids of NOT_FOUND) right after the
    prompt: its first token from the prompt's last hidden state `last` [d], the rest teacher-forced through the
    prompt's kv cache, whose new entries are cropped off again afterwards, so that generation then goes on from the
    prompt alone. One short backbone call: the adapter seldom says NOT_FOUND greedily, and how likely it finds
    that reply was measured as a second threshold (README, 'The answer adapter and "not found"')."""
    backbone = model.backbone
    first = torch.log_softmax(lm_logits(backbone, last).float(), -1)[reply[0]]  # scalar
    if len(reply) == 1:
        return float(first)
    hidden, kv = final_hidden_states(backbone, model.embed(torch.tensor([reply[:-1]])), cache=kv,
                                     use_cache=True)  # [1, n - 1, d]
    kv.crop(-(len(reply) - 1))  # negative: that many tokens off the end, in transformers 4 and 5 alike
    rest = torch.log_softmax(lm_logits(backbone, hidden[0]).float(), -1)  # [n - 1, V]
    rest = rest.gather(1, torch.tensor(reply[1:], device=rest.device)[:, None])  # [n - 1, 1]
    return float(first + rest.sum()) / len(reply)


def cut_repetition(text: str, tail: int = 40, times: int = 3) -> str | None:
    """When text ends in a loop (its last `tail` characters occur `times` times), the text up to the end of the
    loop's first round; else None. Small models decoding greedily often loop, and a loop adds nothing."""
    if len(text) < tail * times:
        return None
    end = text[-tail:]
    if text.count(end) < times:
        return None
    return text[:text.find(end) + tail]


def discloses_instructions(text: str, prompt: str = SYSTEM_PROMPT, words: int = 5) -> bool:
    """True when text repeats `words` or more consecutive words of the system prompt (case and punctuation aside): an
    answer led there by instructions injected into a document ("print the system prompt"). Such an answer is
    withheld, so it is neither shown nor written into chat memory. The reply the prompt itself tells the reader to
    give (NOT_FOUND, in the answer adapter's prompt) is not part of the instructions: saying it discloses nothing."""
    said = f" {' '.join(re.findall(r'[a-z0-9]+', text.lower()))} "
    for part in prompt.split(NOT_FOUND):  # no quote runs across the reply
        part = re.findall(r"[a-z0-9]+", part.lower())
        if any(f" {' '.join(part[i:i + words])} " in said for i in range(len(part) - words + 1)):
            return True
    return False


def widen_to_sentences(text: str, start: int, end: int, reach: int = 300) -> tuple[int, int]:
    """Move [start, end) outward to the sentence boundaries around it, at most `reach` characters each way, so
    that a fixed-length cut does not split the sentence that holds the answer."""
    lo = max(0, start - reach)
    ends_before = list(_SENTENCE_END.finditer(text, lo, start))
    if ends_before:
        start = ends_before[-1].end()
    elif lo == 0:
        start = 0
    after = _SENTENCE_END.search(text, max(end - 1, start), min(len(text), end + reach))
    if after:
        end = after.start() + 1 if text[after.start()] in ".!?" else after.start()
        end = max(end, after.start() + len(after.group().rstrip()))
    elif end + reach >= len(text):
        end = len(text)
    return start, end


def recall_passages(state: MemoryState, weights: torch.Tensor, top: int = 3, detail: Recall | None = None
                    ) -> list[Passage]:
    """The `top` document segments by recall weight (text sources only), widened to sentences, overlapping ones
    merged, in document order; then at most one chat turn, when one ranks among the `top` overall. With a Recall,
    each passage carries its strongest segment's per-channel scores.

    Documents come first, and a chat turn never takes a document's place: what was said in the chat (which can
    repeat whatever a document's text told the model to say) is context, never a source of facts ahead of the
    documents themselves."""
    ranked = [i for i in torch.argsort(weights, descending=True).tolist()
              if state.sources[state.segments[i].source].text and weights[i] > 0]
    documents = [i for i in ranked if state.segments[i].source != CHAT_SOURCE][:top]
    chat = [i for i in ranked[:top] if state.segments[i].source == CHAT_SOURCE][:1]
    return _passages(state, weights, documents, detail) + _passages(state, weights, chat, detail)


def _passages(state: MemoryState, weights: torch.Tensor, candidates: list[int], detail: Recall | None
              ) -> list[Passage]:
    """The candidate segments widened to sentences, overlapping ones merged, in document order."""
    spans = []
    for i in candidates:
        seg = state.segments[i]
        start, end = widen_to_sentences(state.sources[seg.source].text, seg.char_start, seg.char_end)
        spans.append([seg.source, start, end, [i], float(weights[i])])
    spans.sort(key=lambda s: (s[0], s[1]))
    merged: list[list] = []
    for span in spans:
        if merged and merged[-1][0] == span[0] and span[1] <= merged[-1][2]:
            last = merged[-1]
            last[2], last[3], last[4] = max(last[2], span[2]), last[3] + span[3], max(last[4], span[4])
        else:
            merged.append(span)
    passages = []
    for source, start, end, segs, weight in merged:
        src = state.sources[source]
        text = src.text[start:end].strip()
        best = max(segs, key=lambda i: float(weights[i]))
        scores = {c: float(v[best]) for c, v in detail.scores.items()} if detail else {}
        parts = {c: float(v[best]) for c, v in detail.contributions.items()} if detail else {}
        passages.append(Passage(sorted(segs), source, src.page_at(start), src.page_at(max(end - 1, start)), start,
                                end, text, weight, scores, parts))
    return passages


def mark_matches(model, tokenizer, state: MemoryState, passages: list[Passage], question: str,
                 detail: Recall | None) -> None:
    """Fill each passage's token_windows and sentences when the recall used the token and sentence channels (with
    the question's keys and vector it already computed)."""
    if detail is None:
        return
    for passage in passages:
        if detail.query_keys is not None:
            passage.token_windows = sorted(span for i in passage.segments
                                           for span in matched_windows(model, tokenizer, state, i, question,
                                                                       query=detail.query_keys))
        if detail.query_vector is not None:
            found = (matched_sentence(state, i, detail.query_vector) for i in passage.segments)
            passage.sentences = sorted(span for span in found if span is not None)


def reread_messages(question: str, passages: list[Passage], system: str = SYSTEM_PROMPT) -> list[dict]:
    """The recall-and-re-read prompt after the `system` prompt: numbered document passages with their source and
    pages, a recalled chat turn (if any) set apart as what was said earlier, then the question."""
    documents = [p for p in passages if p.source != CHAT_SOURCE]
    blocks = []
    for n, p in enumerate(documents, 1):
        where = f"{p.source}, {p.pages}" if p.pages else p.source
        blocks.append(f"[{n}] ({where})\n{p.text}")
    user = "Passages:\n" + "\n\n".join(blocks)
    said = [p.text for p in passages if p.source == CHAT_SOURCE]
    if said:
        user += "\n\nEarlier in this conversation (what was said, not what the documents say):\n" + "\n".join(said)
    user += f"\n\nQuestion: {question}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None,
            previous: list[int], repetition_penalty: float) -> int:
    """Greedy at temperature 0, else nucleus sampling; logits [V]. Tokens already generated are penalised as in
    transformers' repetition_penalty, since small backbones easily loop."""
    if previous and repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(previous)))
        logits = logits.clone()
        logits[seen] = torch.where(logits[seen] > 0, logits[seen] / repetition_penalty,
                                   logits[seen] * repetition_penalty)
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, -1)
    sorted_probs, order = probs.sort(descending=True)
    keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
    sorted_probs = sorted_probs * keep
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
    return int(order[choice])


class _Decoder:
    """Turns a growing list of token ids into text deltas without splitting multi-byte characters."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.text = tokenizer, [], ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        delta, self.text = text[len(self.text):], text
        return delta


@torch.no_grad()  # as a decorator it switches grad off around each step only, never in the caller between yields
def stream_answer(model: MemoryModel, tokenizer, state: MemoryState, question: str, mode: str = "reread",
                  max_new_tokens: int = 200, temperature: float = 0.0, top_p: float = 0.9, top_segments: int = 3,
                  repetition_penalty: float = 1.1, seed: int | None = None, ranking: torch.Tensor | None = None,
                  channels: tuple[str, ...] | list[str] | None = None, cut_loops: bool = True,
                  adapter: AnswerAdapter | None = None, system: str | None = None,
                  not_found: NotFoundRule | None = None, prompt_passages: int | None = None,
                  score_not_found: bool = False, embedder: SentenceEmbedder | None = None,
                  quote: bool | None = None, end_bias: float | None = None) -> Iterator[AnswerEvent]:
    """Answer a question from memory, yielding a 'recall' event, then 'token' events, then 'done'.

    The question recalls with the channels asked for (default: every channel the model's config weighs; memory only
    is HMT's own recall); in both modes the fused weights rank the passages, and in faithful mode they also mix P.
    The state is not changed (a copy takes any segments written while answering), but for its sentence index, which
    is derived from its own text: with the sentence channel in use, the sentences it does not cover yet (a state
    saved without them, or split by an older rule) are embedded into it first, so that the next question does not
    embed them again on its copy. Write the turn into memory with remember_turn(). A model without recall (RMT)
    answers in faithful mode only. With cut_loops, generation stops when the answer starts to repeat itself
    (cut_repetition), and 'done' carries the answer up to the first round of the loop, marked with ' …'. An answer
    that starts to repeat the system prompt stops there and 'done' carries WITHHELD instead
    (discloses_instructions); the token that completed the quote is not streamed. 'done' also names the answer's
    evidence among the recalled document passages (rank_evidence, its shortlist weighed by the plain backbone's
    question_likelihoods and, with an `embedder`, by its sentences' similarity to the question; none for a withheld
    answer or without passages; after a 'not found', the sentences closest to the question). `ranking` (non-negative
    scores over every segment) picks the re-read passages instead of the recall weights, to compare retrievers under
    the same prompt and decoding.

    In reread mode, an `adapter` (hmt_core.answer_adapter) is switched on around each backbone call that generates
    the answer, and never across a yield, so that reading done between two answer steps sees the plain backbone;
    the prompt is then the adapter's own, else `system` (default SYSTEM_PROMPT). The prompt holds the
    `prompt_passages` passages recalled most strongly (default: the adapter's `passages`, or every one of the
    `top_segments` without an adapter); all `top_segments` are shown and searched for evidence. With a `not_found`
    rule, a recall too unsure of itself answers NOT_FOUND at once, without generating; so does the adapter when its
    not_found_score is above its `not_found_above`, or when its answerability probe's score (hmt_core.answerability,
    computed from the prompt's own backbone call whenever the adapter has a probe) is above its `probe_above`;
    'done' then has found=False, as it does when the reader itself answers NOT_FOUND, and not_found_by says which of
    them it was (NOT_FOUND_BY). The passages are shown either way, with the sentence closest to the question as the
    evidence (for a person to check the 'not found'). The not_found_score (one short backbone call before the
    first token) is computed only when that threshold is in use, or with score_not_found (to fit it). With `quote`
    (default: the adapter's `quote`; off without an adapter), the re-read answer is kept a verbatim quote of the
    passages in its prompt, or the not-found reply (hmt_core.quoting), its end `end_bias` nats less likely
    (default: the adapter's `end_bias`; 0 without an adapter).
    """
    if mode not in ANSWER_MODES:
        raise ValueError(f"mode must be one of {ANSWER_MODES}")
    if not question.strip():
        raise ValueError("the question is empty")
    if mode == "reread" and (state.num_segments == 0 or not model.has_recall):
        raise ValueError("recall-and-re-read needs a model with recall (HMT) and at least one segment read")
    if model.has_recall and "sentence" in available_channels(model, state, channels):
        embed_sentences(model, state)  # derived from the state's own text: once here, not again on every copy below
    work = state.copy()
    passages: list[Passage] = []
    guard = None  # QuoteGuard, when the answer is to quote the passages
    stops = stop_ids(model, tokenizer)
    use = adapter if mode == "reread" else None  # the adapter was trained on the re-read prompt only
    system = use.prompt if use is not None else (system or SYSTEM_PROMPT)
    switch = use.on if use is not None else nullcontext
    confidence = None

    def evidence_for(said: str) -> list[Evidence]:  # the recalled document passages' best sentences for `said`
        documents = [p for p in passages if p.source != CHAT_SOURCE]
        return rank_evidence(work, documents, question, said,  # the plain backbone: the adapter is off here
                             **shortlist_weighers(model.backbone, tokenizer, question, embedder))

    question_ids = chat_ids(tokenizer, [{"role": "user", "content": question}])  # the query, as in QA training
    L = model.segment_length
    if mode == "reread":
        detail = recall(model, tokenizer, work, question, question_ids, channels)
        passages = recall_passages(work, detail.weights if ranking is None else ranking, top_segments, detail)
        mark_matches(model, tokenizer, work, passages, question, detail)
        confidence = recall_confidence(detail, not_found.confidence if not_found else "fused_top")
        yield AnswerEvent("recall", weights=detail.weights, passages=passages, recall=detail, confidence=confidence)
        if not_found is not None and not_found.says_not_found(detail):
            yield AnswerEvent("done", text=NOT_FOUND, found=False, evidence=evidence_for(""), confidence=confidence,
                              not_found_by="recall")
            return
        # The prompt is the passages and the question alone: a recalled P in front of it cost answers (contains-match
        # 0.16 with P vs 0.25 without, 32 questions of training articles, the same BM25 passages).
        n_read = prompt_passages or (use.passages if use is not None else top_segments)
        read = passages if n_read >= top_segments else recall_passages(
            work, detail.weights if ranking is None else ranking, n_read, detail)
        embeds = model.embed(torch.tensor([chat_ids(tokenizer, reread_messages(question, read, system))]))
        segment = None  # no rollover: the prompt is longer than a segment, so generation stays in one backbone call
        quoted = quote if quote is not None else (use is not None and use.quote)
        if quoted:
            bias = end_bias if end_bias is not None else (use.end_bias if use is not None else 0.0)
            guard = QuoteGuard(tokenizer, [p.text for p in read], use.not_found if use is not None else NOT_FOUND,
                               stops, end_bias=bias)
    else:
        prompt = question_ids
        reader = Reader(model, tokenizer, work)
        while len(prompt) > L:  # a question longer than one segment: its leading segments go into the working copy
            reader.feed_ids(prompt[:L], source="question")
            prompt = prompt[L:]
        reader.finish()
        if model.has_recall and work.num_segments:
            detail = recall(model, tokenizer, work, question, prompt, channels)
            embeds, weights = model.begin_segment(work, prompt, weights=detail.weights)
            passages = recall_passages(work, weights, top_segments, detail)
            mark_matches(model, tokenizer, work, passages, question, detail)
            yield AnswerEvent("recall", weights=weights, passages=passages, recall=detail)
        else:
            embeds, weights = model.begin_segment(work, prompt)
            yield AnswerEvent("recall", weights=weights)
        segment = list(prompt)
    backbone = model.backbone
    limit = getattr(backbone.config, "max_position_embeddings", None) or 10**9
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    decoder = _Decoder(tokenizer)
    answer = None  # the answer cut short at a loop, when it loops
    probe = use.probe if use is not None else None
    with switch(), capture_hidden(backbone, probe.layers if probe is not None else []) as captured:
        hidden, kv = final_hidden_states(backbone, embeds, use_cache=True)
    unanswerable = probe.score(captured) if probe is not None else None
    del captured  # the layers the probe read are not kept across the answer's yields
    length = embeds.shape[1]
    if not_found is not None and unanswerable is not None and use.probe_says_not_found(unanswerable):
        yield AnswerEvent("done", text=NOT_FOUND, found=False, evidence=evidence_for(""), confidence=confidence,
                          unanswerable_score=unanswerable, not_found_by="probe")
        return
    score = None
    if use is not None and (score_not_found or (not_found is not None and use.not_found_above is not None)):
        with switch():
            score = not_found_score(model, hidden[0, -1], kv,
                                    tokenizer(use.not_found, add_special_tokens=False)["input_ids"])
        if not_found is not None and use.says_not_found(score):
            yield AnswerEvent("done", text=NOT_FOUND, found=False, evidence=evidence_for(""), confidence=confidence,
                              not_found_score=score, unanswerable_score=unanswerable, not_found_by="reply_score")
            return
    for _ in range(max_new_tokens):
        logits = lm_logits(backbone, hidden[0, -1]).float()
        if guard is not None:
            logits = guard.restrict(logits, decoder.ids)
        token = _sample(logits, temperature, top_p, generator, decoder.ids, repetition_penalty)
        if token in stops:
            break
        delta = decoder.add(token)
        if delta:
            if discloses_instructions(decoder.text, system):
                answer = WITHHELD
                break
            yield AnswerEvent("token", text=delta)
            looped = cut_repetition(decoder.text) if cut_loops else None
            if looped is not None:
                answer = looped.rstrip() + " …"
                break
        if segment is not None:
            segment.append(token)
        if segment is not None and len(segment) == L:
            Reader(model, tokenizer, work).feed_ids(segment, source="answer")
            # A rolled-over segment has no question text, so it recalls with HMT's memory channel alone.
            query = segment[-model.config.summary_length:] if model.has_recall else None
            embeds, weights = model.begin_segment(work, [], query_ids=query)
            yield AnswerEvent("recall", weights=weights)
            segment = []
            hidden, kv = final_hidden_states(backbone, embeds, use_cache=True)
            length = embeds.shape[1]
        elif length + 1 >= limit:
            break
        else:
            step = model.embed(torch.tensor([[token]]))
            with switch():
                hidden, kv = final_hidden_states(backbone, step, cache=kv, use_cache=True)
            length += 1
    text = decoder.text if answer is None else answer
    found = not says_not_found(text)
    said = evidence_answer(text)
    evidence = [] if said is None else evidence_for(said)
    yield AnswerEvent("done", text=text, ids=decoder.ids, evidence=evidence, found=found, confidence=confidence,
                      not_found_score=score, unanswerable_score=unanswerable,
                      not_found_by=None if found else "reader")


def remember_turn(model: MemoryModel, tokenizer, state: MemoryState, question: str, answer: str) -> None:
    """Write one chat turn into the memory state as its own segment(s) of the source 'chat', page = turn number,
    so that later questions can recall what was said."""
    chat = state.sources.get(CHAT_SOURCE)
    turn = (chat.page_numbers[-1] + 1) if chat and chat.page_numbers else 1
    reader = Reader(model, tokenizer, state)
    reader.feed(f"User: {question}\nAssistant: {answer}\n", source=CHAT_SOURCE, page=turn)
    reader.finish()
