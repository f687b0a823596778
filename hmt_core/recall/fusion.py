"""Multi-channel recall: which past segments a question recalls, and why (see README, 'What HMT computes here').

Each channel scores every segment read so far:
- memory: HMT's own recall score S Wq (M Wk)^T / sqrt(h) of the question's summary against the cached memories;
- lexical: BM25 of the question against each segment's text (the state's lexical index);
- token: late interaction of the question's token keys with each segment's token keys (hmt_core.recall.token_keys);
- sentence: the question's cosine with each segment's best sentence, by a small sentence encoder
  (hmt_core.recall.sentences; like lexical, an index of the text, not of the memory).
Each channel's scores are standardised over the state's segments, the fused score is the weighted sum divided by the
temperature (both from the checkpoint's config), and its softmax is the recall attention: it ranks the passages to
re-read and mixes the memory embeddings into P. With the memory channel alone this is exactly HMT's recall (the raw
scores' softmax, as the paper computes it), so nothing another channel finds is credited to the memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..config import RECALL_CHANNELS
from .sentences import segment_sentence_spans
from .token_keys import maxsim, question_token_mask

if TYPE_CHECKING:  # hmt_core.state imports this package (its word index), so the state type is for annotations only
    from ..state import MemoryState


@dataclass
class Recall:
    """A question's recall over every segment read so far [S]: the weights (softmax of the fused score), each
    channel's raw score, each channel's part of the fused score (what the page shows as the channel's share), the
    question's lexical terms, its token keys [q, r] when the token channel was used (for matched_windows) and its
    sentence vector [d] when the sentence channel was (for matched_sentence)."""

    weights: torch.Tensor
    channels: tuple[str, ...]
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    contributions: dict[str, torch.Tensor] = field(default_factory=dict)
    query_terms: list[str] = field(default_factory=list)
    query_keys: torch.Tensor | None = None
    query_vector: torch.Tensor | None = None


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """Scores [S] -> z-scores over the finite entries (0 elsewhere, and everywhere when they do not vary)."""
    finite = torch.isfinite(scores)
    z = torch.zeros_like(scores, dtype=torch.float32)
    if int(finite.sum()) < 2:
        return z
    values = scores[finite].float()
    std = values.std()
    if float(std) < 1e-6:
        return z
    z[finite] = (values - values.mean()) / std
    return z


def available_channels(model, state: MemoryState, wanted: tuple[str, ...] | list[str] | None = None
                       ) -> tuple[str, ...]:
    """The channels a recall can use: those asked for (default: every channel the model's config weighs) that the
    model and the state support. Memory is always possible for HMT; token needs keys in both model and state, sentence
    the model's sentence embedder."""
    config = model.config
    wanted = tuple(config.channels if wanted is None else wanted)
    unknown = set(wanted) - set(RECALL_CHANNELS)
    if unknown:
        raise ValueError(f"unknown recall channels {sorted(unknown)}; choose from {RECALL_CHANNELS}")
    fusion = config.recall_fusion or {}
    usable = []
    for channel in wanted:
        if channel == "memory":
            usable.append(channel)
        elif channel == "lexical" and "lexical" in fusion:
            usable.append(channel)
        elif (channel == "token" and "token" in fusion and config.token_key_layer
              and state.token_keys is not None and state.token_keys.shape[0] == state.num_segments):
            usable.append(channel)
        elif channel == "sentence" and "sentence" in fusion and getattr(model, "embedder", None) is not None:
            usable.append(channel)
    return tuple(usable) or ("memory",)


def channel_scores(model, tokenizer, state: MemoryState, question: str, query_ids: list[int],
                   channels: tuple[str, ...], query_keys: torch.Tensor | None = None,
                   query_vector: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Raw scores [S] of each channel asked for (float32, -inf for memory where a segment is not cached, and for
    sentence where a segment has no sentence); query_keys and query_vector: the question's token keys and sentence
    vector when already computed (question_keys, question_vector)."""
    scores = {}
    if "memory" in channels:
        scores["memory"] = model.memory_scores(state, query_ids)
    if "lexical" in channels:
        scores["lexical"] = state.lexical.scores(question).float()
    if "token" in channels:
        keys = question_keys(model, tokenizer, question) if query_keys is None else query_keys
        scores["token"] = maxsim(keys, state.token_keys)
    if "sentence" in channels:
        embed_sentences(model, state)
        vector = question_vector(model, question) if query_vector is None else query_vector
        scores["sentence"] = state.sentences.scores(vector, state.num_segments)
    return scores


def embed_sentences(model, state: MemoryState) -> None:
    """Embed the sentences of the state's segments that the sentence index does not cover yet (nothing to do for a
    model without a sentence embedder)."""
    if getattr(model, "embedder", None) is not None:
        state.sentences.update(state.segment_text, state.num_segments, model.embedder)


def fuse(scores: dict[str, torch.Tensor], fusion: dict[str, float] | None, temperature: float
         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weights [S], contributions) from raw channel scores. Memory alone: softmax of its raw scores (HMT's recall).
    Otherwise: softmax(sum_c w_c z_c / T) over every segment, z_c standardised, segments with no score in any
    channel (nothing cached, no text, no keys) at 0 weight only when every channel leaves them out."""
    if set(scores) == {"memory"}:
        raw = scores["memory"]
        weights = torch.softmax(raw, -1).nan_to_num(0.0) if bool(torch.isfinite(raw).any()) else torch.zeros_like(raw)
        return weights, {"memory": raw.masked_fill(~torch.isfinite(raw), 0.0)}
    fusion = fusion or {}
    contributions = {c: fusion.get(c, 0.0) * standardize(s) / temperature for c, s in scores.items()}
    logits = torch.stack(list(contributions.values())).sum(0)  # [S]
    return torch.softmax(logits, -1), contributions


def recall(model, tokenizer, state: MemoryState, question: str, query_ids: list[int],
           channels: tuple[str, ...] | list[str] | None = None) -> Recall:
    """The question's recall over every segment of the state with the channels asked for (default: all the
    model's config weighs). query_ids is the memory channel's query: the question in the chat template, as
    stream_answer and QA training use it."""
    if state.num_segments == 0:
        return Recall(torch.zeros(0), ("memory",))
    used = available_channels(model, state, channels)
    keys = question_keys(model, tokenizer, question) if "token" in used else None
    vector = question_vector(model, question) if "sentence" in used else None
    scores = channel_scores(model, tokenizer, state, question, query_ids, used, keys, vector)
    weights, contributions = fuse(scores, model.config.recall_fusion, model.config.recall_temperature)
    terms = state.lexical.query_terms(question) if "lexical" in used else []
    return Recall(weights, used, scores, contributions, terms, keys, vector)


def key_windows(tokenizer, text: str, keys: int) -> list[tuple[int, int]]:
    """Character spans in `text` (a segment's text) of the K token windows its keys pool, as select_keys cuts them;
    the segment is re-tokenised on its own, so a window edge can be off by a token at the segment's ends."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if not offsets:
        return []
    windows = torch.arange(len(offsets)).tensor_split(min(keys, len(offsets)))
    return [(offsets[int(w[0])][0], offsets[int(w[-1])][1]) for w in windows]


def question_keys(model, tokenizer, question: str) -> torch.Tensor:
    """The question's token keys [q, r] for the token-key channel: its content tokens, bare (no chat template)."""
    ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    return model.question_keys(ids, question_token_mask(tokenizer, ids))


def question_vector(model, question: str) -> torch.Tensor:
    """The question's unit vector [d] for the sentence channel (the model's sentence embedder)."""
    return model.embedder.embed([question])[0]


def matched_sentence(state: MemoryState, segment: int, query: torch.Tensor) -> tuple[int, int] | None:
    """Why the sentence channel recalled a segment: the character span (in its source's text) of the segment's
    sentence closest to the question (query: question_vector), or None when the segment has none embedded."""
    best = state.sentences.best_sentence(query, segment)
    if best is None:
        return None
    spans = segment_sentence_spans(state.segment_text(segment))
    if best >= len(spans):
        return None
    start = state.segments[segment].char_start
    return start + spans[best][0], start + spans[best][1]


def matched_windows(model, tokenizer, state: MemoryState, segment: int, question: str, top: int = 2,
                    query: torch.Tensor | None = None) -> list[tuple[int, int]]:
    """Why the token-key channel recalled a segment: character spans (in its source's text) of the `top` token
    windows whose keys gave the question's tokens their best matches, by summed similarity; [] without keys.
    `query` is question_keys(model, tokenizer, question), computed once for all the passages of an answer."""
    if state.token_keys is None or not model.config.token_key_layer or segment >= state.token_keys.shape[0]:
        return []
    if query is None:
        query = question_keys(model, tokenizer, question)  # [q, r]
    keys = state.token_keys[segment].float()  # [K, r]
    if query.shape[0] == 0:
        return []
    sim = query @ keys.T  # [q, K]
    best = sim.max(-1)  # each question token's best key
    credit = torch.zeros(keys.shape[0]).index_add_(0, best.indices, best.values.clamp(min=0))
    info = state.segments[segment]
    spans = key_windows(tokenizer, state.segment_text(segment), keys.shape[0])
    chosen = [int(k) for k in credit.argsort(descending=True)[:top] if credit[k] > 0 and int(k) < len(spans)]
    return sorted((info.char_start + spans[k][0], info.char_start + spans[k][1]) for k in chosen)
