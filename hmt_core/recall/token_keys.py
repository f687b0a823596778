"""Token-level memory keys: the hierarchy's finer level, below the one memory embedding per segment.

Each segment leaves a few keys taken from a middle layer's hidden states of the main pass that already runs (no
extra backbone call): the states of the segment's own tokens are centred, whitened to r dimensions, normalised, and
pooled into K contiguous windows (a key says "these ~L/K tokens were here"). A question is scored late-interaction
style (ColBERT's MaxSim): each of its content tokens, taken from the same layer, keeps its best match among a
segment's keys, and the segment's score is the sum. The layer, r, K and the pooling were chosen on the training SQuAD
articles (bench.token_keys).

Shapes: n tokens of a segment, d backbone width, r key width, K keys per segment, q question tokens, S segments.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

PICKS = ("window", "norm")
# Function words carry no content; as question tokens they match every segment about alike and add only noise.
STOPWORDS = frozenset("""a an and are as at be been but by can could did do does for from had has have he her his how
i if in into is it its me my no not of on or she so than that the their them then there these they this to was we were
what when where which who whom whose why will with would you your about after before tell much many""".split())


def fit_whitening(states: torch.Tensor, width: int, ridge: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [d] and projection [d, r] that centre token states [N, d] and whiten their top-r principal directions,
    so that no dominant direction (hidden states share a few very loud ones) decides every match."""
    states = states.float()
    mean = states.mean(0)
    eigenvalues, vectors = torch.linalg.eigh(torch.cov((states - mean).T))  # ascending
    top = eigenvalues.flip(0)[:width].clamp(min=0) + ridge * eigenvalues.max()
    proj = vectors.flip(1)[:, :width] * top.rsqrt()  # [d, r]
    return mean, proj


def project(states: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """Token states [..., d] -> unit-length whitened keys [..., r] (float32)."""
    return F.normalize((states.float() - mean.float()) @ proj.float(), dim=-1)


def select_keys(states: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor, keys: int, pick: str = "window"
                ) -> torch.Tensor:
    """A segment's keys [K, r] from its token states [n, d]: 'window' averages the unit keys of K contiguous windows
    of tokens and normalises again; 'norm' keeps the K tokens whose whitened states are largest (the least typical
    ones). A segment of fewer than K tokens pads with zero keys, which match nothing."""
    if pick not in PICKS:
        raise ValueError(f"pick must be one of {PICKS}")
    out = states.new_zeros(keys, proj.shape[1], dtype=torch.float32)
    if states.shape[0] == 0:
        return out
    if pick == "window":
        unit = project(states, mean, proj)  # [n, r]
        pooled = torch.stack([w.mean(0) for w in unit.tensor_split(min(keys, unit.shape[0]))])
        out[:pooled.shape[0]] = F.normalize(pooled, dim=-1)
        return out
    raw = (states.float() - mean.float()) @ proj.float()  # [n, r]
    top = raw.norm(dim=-1).topk(min(keys, raw.shape[0])).indices.sort().values
    out[:top.shape[0]] = F.normalize(raw[top], dim=-1)
    return out


def question_token_mask(tokenizer, ids: list[int]) -> torch.Tensor:
    """[q] True for the question tokens that carry content: some letter or digit, and not a function word."""
    keep = []
    for i in ids:
        piece = tokenizer.decode([i]).strip().casefold()
        keep.append(bool(re.search(r"\w", piece)) and piece not in STOPWORDS)
    return torch.tensor(keep, dtype=torch.bool)


def maxsim(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Late-interaction scores [S]: query keys [q, r] against every segment's keys [S, K, r], each query token's best
    match summed."""
    if query.shape[0] == 0 or keys.shape[0] == 0:
        return keys.new_zeros(keys.shape[0], dtype=torch.float32)
    sim = torch.einsum("qr,skr->qsk", query.float(), keys.float())  # [q, S, K]
    return sim.amax(-1).sum(0)
