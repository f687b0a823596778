"""The Hierarchical Memory Transformer around an unchanged causal LM (see README, 'What HMT computes here').

Shapes: B batch, L segment length, j summary length, k sensory length, n cached memories, d embedding width,
h recall width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import capture_hidden, embedding_norm, embedding_size, final_hidden_states, lm_logits, to_norm
from .config import HMTConfig
from .recall.token_keys import project, select_keys
from .state import MemoryState

# forward(mode=...): how each segment gets its memory: recalled from the cache (HMT, stage 2), the previous
# segment's passed straight on (stage 1), or none (the segment-only baseline)
MEMORY_MODES = ("recall", "direct", "segment")


@dataclass
class MemoryOutput:
    """What a training forward returns: the mean loss, the per-segment recall weights [B, n] (HMT recall mode only)
    and, when asked, the logits at every segment's token positions [B, L, V]."""

    loss: torch.Tensor | None
    num_tokens: int
    recall_weights: list[torch.Tensor] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)


@dataclass
class SegmentResult:
    """What reading one segment returns: its memory embedding [d] (RMT: [m, d]), the recall weights over every
    segment read before it [num_segments] (None for RMT), its token keys [K, r] (None without a token-key layer)
    and, when asked, its logits [L, V]."""

    memory: torch.Tensor
    recall_weights: torch.Tensor | None
    logits: torch.Tensor | None = None
    token_keys: torch.Tensor | None = None


def recall_width(backbone: nn.Module) -> int:
    """h by default: the backbone's MLP width where the config names it, else d."""
    cfg = backbone.config
    for key in ("intermediate_size", "ffn_dim", "n_inner"):
        if getattr(cfg, key, None):
            return int(getattr(cfg, key))
    return embedding_size(backbone)


def run_backbone(backbone: nn.Module, embeds: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Final hidden states [B, n, d] for input embeddings [B, n, d]; a padding mask [B, n] also sets positions so
    that padded and unpadded rows see the same positions. Positions restart at 0 in every call."""
    if mask is None or bool(mask.all()):
        hidden, _ = final_hidden_states(backbone, embeds)
        return hidden
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden, _ = final_hidden_states(backbone, embeds, attention_mask=mask.long(), position_ids=position_ids)
    return hidden


def segment_loss(backbone: nn.Module, hidden: torch.Tensor, x_start: int, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy [B] and token count [B] of a segment's labels [B, L] (-100 = ignore), each token
    predicted from the position before it (the last sensory or memory token predicts the first)."""
    seg_len = labels.shape[1]
    start = max(x_start - 1, 0)
    pred = hidden[:, start:x_start + seg_len - 1]  # [B, L or L-1, d]
    targets = labels[:, start - x_start + 1:]  # [B, L or L-1]
    logits = lm_logits(backbone, pred).float()
    loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    valid = targets != -100
    return (loss * valid).sum(-1), valid.sum(-1)


def run_segment(backbone: nn.Module, embeds: torch.Tensor, mask: torch.Tensor | None, x_start: int,
                labels: torch.Tensor, return_logits: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One main pass in training: (hidden [B, n, d], summed loss [B], token count [B], logits at the segment's
    token positions [B, L, V] when asked)."""
    hidden = run_backbone(backbone, embeds, mask)
    loss_sum, count = segment_loss(backbone, hidden, x_start, labels.to(hidden.device))
    logits = lm_logits(backbone, hidden[:, x_start:x_start + labels.shape[1]]) if return_logits else None
    return hidden, loss_sum, count, logits


def reduce_loss(sums: list[torch.Tensor], counts: list[torch.Tensor], loss_on: str) -> tuple[torch.Tensor | None, int]:
    """Mean loss over every segment's tokens ('all') or over each row's last segment that has labels ('last')."""
    if not sums:
        return None, 0
    sum_t, count_t = torch.stack(sums, 1), torch.stack(counts, 1)  # [B, S]
    if loss_on == "last":
        has = count_t > 0
        last = torch.where(has, torch.arange(has.shape[1], device=has.device), -1).max(1).values.clamp(min=0)
        sum_t, count_t = sum_t.gather(1, last[:, None]), count_t.gather(1, last[:, None])
    elif loss_on != "all":
        raise ValueError("loss_on must be 'all' or 'last'")
    total = int(count_t.sum())
    return sum_t.sum() / max(total, 1), total


def split_segments(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None,
                   segment_length: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Cut [B, T] ids, mask and labels into segments of L tokens; labels default to the ids where the mask is 1."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if labels is None:
        labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels = labels.masked_fill(attention_mask == 0, -100)
    def cut(t: torch.Tensor) -> list[torch.Tensor]:
        return list(t.split(segment_length, dim=1))

    return cut(input_ids), cut(attention_mask.bool()), cut(labels)


def segments_needing_grad(seg_labels: list[torch.Tensor], bptt_depth: int | None) -> list[bool]:
    """A segment needs an autograd graph only when it, or a later segment of its truncation chunk, has labels; the
    rest (most of a QA window whose loss sits on the answer) runs under no_grad, at inference speed and memory."""
    has = [bool((labels != -100).any()) for labels in seg_labels]
    depth = bptt_depth or len(has)
    return [any(has[s:(s // depth + 1) * depth]) for s in range(len(has))]


class HMT(nn.Module):
    """HMT: summary prompt T [1, d], initial memory [1, d], Wq and Wk [d -> h], around a frozen or trainable backbone.
    A MemoryModel (memory_model.py) with recall."""

    has_recall = True

    def __init__(self, backbone: nn.Module, config: HMTConfig | None = None):
        super().__init__()
        self.config = config or HMTConfig()
        if self.config.recall_size is None:
            self.config.recall_size = recall_width(backbone)
        self.backbone = backbone
        emb = backbone.get_input_embeddings().weight  # [V, d]
        d, h = emb.shape[1], self.config.recall_size
        with torch.no_grad():
            mean, std = emb.float().mean(0, keepdim=True), emb.float().std()
            summary_prompt = mean + std * torch.randn(1, d)
            initial_memory = mean + std * torch.randn(1, d)
        self.summary_prompt = nn.Parameter(summary_prompt.to(emb.device, emb.dtype))
        self.initial_memory = nn.Parameter(initial_memory.to(emb.device, emb.dtype))
        self.wq = nn.Linear(d, h, bias=False, device=emb.device, dtype=emb.dtype)
        self.wk = nn.Linear(d, h, bias=False, device=emb.device, dtype=emb.dtype)
        self.input_norm = embedding_norm(backbone) if self.config.memory_input_norm == "embedding" else None
        self.embedder = None  # the sentence recall channel's encoder (hmt_core.embedder), attached when it weighs it
        if self.config.token_key_layer:
            # Fitted on token states of training text (init_token_keys), never trained by gradient.
            r = self.config.token_key_width
            self.token_key_mean = nn.Parameter(torch.zeros(d, device=emb.device), requires_grad=False)
            self.token_key_proj = nn.Parameter(torch.eye(d, r, device=emb.device), requires_grad=False)

    @property
    def segment_length(self) -> int:
        return self.config.segment_length

    @property
    def recall_channels(self) -> tuple[str, ...]:
        """The recall channels this model's config weighs and it can use: memory always, lexical and token where
        fitted, sentence where fitted and its sentence embedder is attached."""
        return tuple(c for c in self.config.channels if c != "sentence" or self.embedder is not None)

    @property
    def device(self) -> torch.device:
        return self.initial_memory.device

    def memory_parameters(self) -> dict[str, nn.Parameter]:
        """The HMT parameters only (what a checkpoint holds), by name."""
        params = {"summary_prompt": self.summary_prompt, "initial_memory": self.initial_memory,
                  "wq.weight": self.wq.weight, "wk.weight": self.wk.weight}
        if self.config.token_key_layer:
            params.update(token_key_mean=self.token_key_mean, token_key_proj=self.token_key_proj)
        return params

    @torch.no_grad()
    def init_token_keys(self, mean: torch.Tensor, proj: torch.Tensor) -> None:
        """Set the token keys' centring [d] and whitening projection [d, r] (token_keys.fit_whitening)."""
        self.token_key_mean.copy_(mean.to(self.token_key_mean))
        self.token_key_proj.copy_(proj.to(self.token_key_proj))

    @torch.no_grad()
    def init_recall(self, summaries: torch.Tensor, memories: torch.Tensor, score_std: float = 2.0,
                    ridge: float = 1e-3) -> None:
        """Start recall as the dot product of whitened representations, estimated on typical summaries [n, d] and
        memory embeddings [m, d], scaled so that recall scores have about score_std spread over the keys.

        Final hidden states share one dominant direction and a few high-variance ones, which would otherwise decide
        every ranking; whitening (covariance^-1/2, ridge-regularised) weighs every direction alike. Wq and Wk have
        no bias: keys need no centring (the softmax ignores a per-query constant) and the summaries' mean is
        removed by projecting out its direction. On frozen SmolLM2-135M features of the training articles this
        took held-out recall hit@3 from 0.28 (centred dot product) to 0.44.
        """
        d, h = summaries.shape[1], self.config.recall_size
        if h < d:
            raise ValueError("init_recall needs h >= d")
        summaries, memories = summaries.float().cpu(), memories.float().cpu()

        def whitening(x: torch.Tensor) -> torch.Tensor:  # [d, d], symmetric
            eigenvalues, vectors = torch.linalg.eigh(torch.cov(x.T))
            eigenvalues = eigenvalues.clamp(min=0) + ridge * eigenvalues.max()
            return vectors @ torch.diag(eigenvalues.rsqrt()) @ vectors.T

        u = F.normalize(summaries.mean(0), dim=0)
        project = torch.eye(d) - torch.outer(u, u)  # [d, d]
        wq, wk = torch.zeros(h, d), torch.zeros(h, d)
        wq[:d] = whitening(summaries @ project) @ project
        wk[:d] = whitening(memories)
        scores = (summaries @ wq.T) @ (memories @ wk.T).T / math.sqrt(h)  # [n, m]
        scale = math.sqrt(score_std / float(scores.std(dim=1).mean().clamp(min=1e-6)))
        self.wq.weight.copy_((wq * scale).to(self.wq.weight))
        self.wk.weight.copy_((wk * scale).to(self.wk.weight))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, n] -> the backbone's own input embeddings [B, n, d], on the HMT device."""
        return self.backbone.get_input_embeddings()(ids.to(self.device))

    def summarize(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Summary pass: the last final hidden state of [T, emb(ids), T]; ids [B, j] -> S [B, d]."""
        batch = ids.shape[0]
        prompt = self.summary_prompt.expand(batch, 1, -1)  # [B, 1, d]
        embeds = torch.cat([prompt, self.embed(ids), prompt], 1)  # [B, j+2, d]
        if mask is not None:
            ones = mask.new_ones(batch, 1)
            mask = torch.cat([ones, mask, ones], 1)
        return run_backbone(self.backbone, embeds, mask)[:, -1].to(self.device)

    def recall(self, summary: torch.Tensor, cache: torch.Tensor | None, cache_mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory search: a = softmax(S Wq (M Wk)^T / sqrt(h)) over the cache, P = a M.

        summary [B, d], cache [B, n, d], cache_mask [B, n] -> (P [B, d], a [B, n]); with no valid entry P is the
        learned initial memory. Scores and softmax run in float32.
        """
        batch = summary.shape[0]
        initial = self.initial_memory.expand(batch, -1)  # [B, d]
        if cache is None or cache.shape[1] == 0:
            return initial, summary.new_zeros(batch, 0, dtype=torch.float32)
        if cache_mask is None:
            cache_mask = torch.ones(cache.shape[:2], dtype=torch.bool, device=cache.device)
        q = self.wq(summary).float()  # [B, h]
        k = self.wk(cache).float()  # [B, n, h]
        scores = torch.einsum("bh,bnh->bn", q, k) / math.sqrt(self.config.recall_size)
        scores = scores.masked_fill(~cache_mask, float("-inf"))
        any_valid = cache_mask.any(-1, keepdim=True)  # [B, 1]
        weights = torch.softmax(scores, -1).nan_to_num(0.0) * any_valid
        recalled = torch.einsum("bn,bnd->bd", weights.to(cache.dtype), cache)  # [B, d]
        return torch.where(any_valid, recalled, initial), weights

    def main_embeds(self, memory: torch.Tensor | None, sensory: torch.Tensor, ids: torch.Tensor,
                    mask: torch.Tensor | None = None, trailing: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Inputs of the main pass [P, emb(sensory), emb(ids), P] (memory None: no P; trailing False: no final P);
        P at the token embeddings' norm unless the config says 'none'.

        memory [B, d], sensory [B, k'], ids [B, L], mask [B, L] -> (embeds [B, n, d], mask [B, n], x_start)
        """
        batch = ids.shape[0]
        if memory is not None and self.input_norm is not None:
            memory = to_norm(memory, self.input_norm)
        parts = [] if memory is None else [memory[:, None]]
        if sensory.shape[1]:
            parts.append(self.embed(sensory))
        x_start = sum(p.shape[1] for p in parts)
        parts.append(self.embed(ids))
        if memory is not None and trailing:
            parts.append(memory[:, None])
        embeds = torch.cat(parts, 1)
        if mask is not None:
            before = mask.new_ones(batch, x_start)
            after = mask.new_ones(batch, embeds.shape[1] - x_start - ids.shape[1])
            mask = torch.cat([before, mask, after], 1)
        return embeds, mask, x_start

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, mode: str = "recall", bptt_depth: int | None = None,
                loss_on: str = "all", return_logits: bool = False, memory_cache: torch.Tensor | None = None,
                sensory_ids: torch.Tensor | None = None, query_mask: torch.Tensor | None = None) -> MemoryOutput:
        """Training forward over long inputs [B, T] cut into segments of L, unrolled for BPTT.

        mode 'recall' is HMT (stage 2); 'direct' passes each memory embedding straight to the next segment with no
        search (stage 1); 'segment' uses no memory at all (sensory tokens only when k > 0; the segment-only baseline).
        bptt_depth D cuts the graph every D segments, so no gradient travels more than D segments back.
        memory_cache [B, n, d] and sensory_ids [B, k] continue from memory already read (e.g. a document read once
        under no_grad and questioned by every row), instead of an empty cache. query_mask [B, T] limits what the
        summary pass sees (for QA: the question, never the answer it is trained to produce).
        """
        if mode not in MEMORY_MODES:
            raise ValueError(f"mode must be one of {MEMORY_MODES}")
        cfg = self.config
        seg_ids, seg_masks, seg_labels = split_segments(input_ids, attention_mask, labels, cfg.segment_length)
        seg_queries = seg_masks if query_mask is None else [q & m for q, m in
                                                            zip(query_mask.bool().split(cfg.segment_length, 1),
                                                                seg_masks)]
        batch = input_ids.shape[0]
        memories: list[torch.Tensor] = [] if memory_cache is None else list(memory_cache.unbind(1))  # [B, d] each
        valid = [torch.ones(batch, dtype=torch.bool, device=self.device) for _ in memories]  # [B] each
        previous = memories[-1] if memories else self.initial_memory.expand(batch, -1)
        sensory = input_ids.new_zeros(batch, 0) if sensory_ids is None else sensory_ids
        sums, counts, weights_out, logits_out = [], [], [], []
        need_grad = segments_needing_grad(seg_labels, bptt_depth)
        grad_on = torch.is_grad_enabled()
        try:
            for s, (ids, mask, labels_s) in enumerate(zip(seg_ids, seg_masks, seg_labels)):
                if bptt_depth and s and s % bptt_depth == 0:
                    memories = [m.detach() for m in memories]
                    previous = previous.detach()
                torch.set_grad_enabled(grad_on and need_grad[s])
                memory = None
                if mode == "recall":
                    query = seg_queries[s][:, :cfg.summary_length]
                    summary = self.summarize(ids[:, :cfg.summary_length], query)
                    cache = torch.stack(memories[-cfg.cache_size:], 1) if memories else None
                    cache_mask = torch.stack(valid[-cfg.cache_size:], 1) if valid else None
                    memory, weights = self.recall(summary, cache, cache_mask)
                    weights_out.append(weights)
                elif mode == "direct":
                    memory = previous
                embeds, full_mask, x_start = self.main_embeds(memory, sensory, ids, mask)
                hidden, loss_sum, count, logits = run_segment(self.backbone, embeds, full_mask, x_start, labels_s,
                                                              return_logits)
                sums.append(loss_sum)
                counts.append(count)
                if logits is not None:
                    logits_out.append(logits)
                if memory is not None:
                    new_memory = hidden[:, -1].to(self.device)  # [B, d]
                    row_valid = mask.any(-1).to(self.device)  # [B]
                    memories.append(new_memory)
                    valid.append(row_valid)
                    previous = torch.where(row_valid[:, None], new_memory, previous)
                if cfg.sensory_size:
                    sensory = ids[:, -cfg.sensory_size:]
        finally:
            torch.set_grad_enabled(grad_on)
        loss, total = reduce_loss(sums, counts, loss_on)
        return MemoryOutput(loss, total, weights_out, logits_out)

    def new_state(self, keep: int | None = None) -> MemoryState:
        """An empty memory state on this model's device that keeps the newest `keep` memories (default N).

        Reading recalls over the newest N, as in training; answering recalls over all kept memories, so a state
        can keep a whole book recallable while reading stays faithful to the trained cache size.
        """
        d = self.initial_memory.shape[1]
        return MemoryState("hmt", self.initial_memory.new_zeros(0, d).detach(),
                           capacity=max(keep or 0, self.config.cache_size))

    def _recall_state(self, state: MemoryState, query_ids: list[int], window: int | None = None,
                      summary: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Summary of query_ids (unless given, [1, d]), then recall over the newest `window` cached memories
        (None: all of them) -> (P [1, d], weights over every segment read so far, or None with an empty cache)."""
        rows = len(state.cache_segments) if window is None else min(window, len(state.cache_segments))
        if summary is None:
            query = torch.tensor([query_ids[:self.config.summary_length]], dtype=torch.long, device=self.device)
            summary = self.summarize(query.reshape(1, -1))
        if rows == 0:
            return self.recall(summary, None)[0], None
        cache = state.cache[-rows:][None].to(self.device, self.initial_memory.dtype)  # [1, rows, d]
        memory, weights = self.recall(summary, cache)
        return memory, state.weights_over_segments(weights[0], state.cache_segments[-rows:])

    def _sensory(self, state: MemoryState) -> torch.Tensor:
        return torch.tensor([state.sensory_ids], dtype=torch.long, device=self.device).reshape(1, -1)

    def _write(self, state: MemoryState, memory: torch.Tensor, ids: list[int], segment_index: int) -> None:
        """Append a memory embedding [d] to the cache (keeping the newest N) and update the sensory ids."""
        n_keep = state.capacity or self.config.cache_size
        cache = torch.cat([state.cache.to(memory.device, memory.dtype), memory[None].detach()], 0)
        state.cache = cache[-n_keep:]
        state.cache_segments = (state.cache_segments + [segment_index])[-n_keep:]
        k = self.config.sensory_size
        state.sensory_ids = (state.sensory_ids + list(ids))[-k:] if k else []

    @torch.no_grad()
    def summarize_segments(self, segments: list[list[int]]) -> torch.Tensor:
        """The summary passes of several segments as one right-padded batch -> S [num_segments, d].

        A summary pass sees only [T, x[:j], T], never the memory, so the summaries of every segment of a piece can
        run together before the main passes, which must go one segment after another. Padding is masked and
        positions follow the mask (run_backbone), so each row's summary equals its one-at-a-time summary to float
        tolerance.
        """
        heads = [list(ids[:self.config.summary_length]) for ids in segments]
        width = max(len(h) for h in heads)
        ids = torch.zeros(len(heads), width, dtype=torch.long)  # [S, j]
        mask = torch.zeros(len(heads), width, dtype=torch.bool)  # [S, j]
        for row, head in enumerate(heads):
            ids[row, :len(head)] = torch.tensor(head, dtype=torch.long)
            mask[row, :len(head)] = True
        return self.summarize(ids.to(self.device), None if bool(mask.all()) else mask.to(self.device))

    @torch.no_grad()
    def read_segment(self, state: MemoryState, ids: list[int], segment_index: int,
                     return_logits: bool = False, summary: torch.Tensor | None = None) -> SegmentResult:
        """Read one segment of at most L token ids into the state: summary (or the given one [1, d], from
        summarize_segments), recall over the newest N memories, main pass, write the memory."""
        memory, weights = self._recall_state(state, ids, window=self.config.cache_size, summary=summary)
        x = torch.tensor([ids], device=self.device)
        embeds, _, x_start = self.main_embeds(memory, self._sensory(state), x)
        layer = self.config.token_key_layer
        with capture_hidden(self.backbone, [layer] if layer else []) as captured:
            hidden = run_backbone(self.backbone, embeds, None)
        logits = lm_logits(self.backbone, hidden[0, x_start:x_start + len(ids)]) if return_logits else None
        new_memory = hidden[0, -1].to(self.device)
        self._write(state, new_memory, ids, segment_index)
        keys = self._segment_keys(captured, 0, x_start, len(ids))
        return SegmentResult(new_memory, weights, logits, keys)

    def _segment_keys(self, captured: dict, row: int, x_start: int, n: int) -> torch.Tensor | None:
        """Token keys [K, r] (fp16, cpu) of one row's n segment tokens from the token-key layer's captured states,
        or None without a token-key layer."""
        layer = self.config.token_key_layer
        if not layer:
            return None
        states = captured[layer][row, x_start:x_start + n]  # [n, d], the segment's own tokens
        return select_keys(states, self.token_key_mean, self.token_key_proj,
                           self.config.token_keys_per_segment).half().cpu()  # [K, r]

    @torch.no_grad()
    def read_segments(self, states: list[MemoryState], rows: list[list[int]]) -> list[SegmentResult]:
        """Read one segment into each of several memory states (several documents, each its own memory) with one
        batched summary pass and one batched main pass: row b's segment rows[b] (at most L ids) goes into
        states[b] exactly as read_segment would put it there, to float tolerance.

        Rows differ in length (a document's last segment, a first segment without sensory tokens), so each row's
        [P, sensory, x, P] is right-padded and masked, positions follow the mask (run_backbone), and its new memory
        is the hidden state of its own last input.
        """
        summaries = self.summarize_segments(rows)  # [B, d]
        inputs = []  # per row: (embeds [n_b, d], x_start, recall weights)
        for b, (state, ids) in enumerate(zip(states, rows)):
            memory, weights = self._recall_state(state, ids, window=self.config.cache_size,
                                                 summary=summaries[b:b + 1])
            x = torch.tensor([ids], device=self.device)
            embeds, _, x_start = self.main_embeds(memory, self._sensory(state), x)
            inputs.append((embeds[0], x_start, weights))
        width = max(e.shape[0] for e, _, _ in inputs)
        embeds = inputs[0][0].new_zeros(len(rows), width, inputs[0][0].shape[-1])  # [B, n, d]
        mask = torch.zeros(len(rows), width, dtype=torch.bool, device=self.device)  # [B, n]
        for b, (e, _, _) in enumerate(inputs):
            embeds[b, :e.shape[0]], mask[b, :e.shape[0]] = e, True
        layer = self.config.token_key_layer
        with capture_hidden(self.backbone, [layer] if layer else []) as captured:
            hidden = run_backbone(self.backbone, embeds, mask)  # [B, n, d]
        results = []
        for b, (state, ids) in enumerate(zip(states, rows)):
            e, x_start, weights = inputs[b]
            new_memory = hidden[b, e.shape[0] - 1]  # [d], the row's trailing P
            self._write(state, new_memory, ids, state.num_segments)
            results.append(SegmentResult(new_memory, weights, None, self._segment_keys(captured, b, x_start, len(ids))))
        return results

    @torch.no_grad()
    def question_keys(self, ids: list[int], content: torch.Tensor | None = None) -> torch.Tensor:
        """Token keys [q, r] of a bare question (its ids, no chat template): the token-key layer's states of the
        tokens that `content` [q] marks (token_keys.question_token_mask; all of them when None or when none is
        marked); empty without a token-key layer."""
        layer = self.config.token_key_layer
        if not layer or not ids:
            return torch.zeros(0, self.config.token_key_width)
        with capture_hidden(self.backbone, [layer]) as captured:
            run_backbone(self.backbone, self.embed(torch.tensor([ids])), None)
        states = captured[layer][0]  # [q, d]
        if content is not None and bool(content.any()):
            states = states[content.to(states.device)]
        return project(states, self.token_key_mean, self.token_key_proj).cpu()

    @torch.no_grad()
    def memory_scores(self, state: MemoryState, query_ids: list[int]) -> torch.Tensor:
        """HMT's own recall scores S Wq (M Wk)^T / sqrt(h) of a query over every segment read so far
        [num_segments] (float32), -inf where a segment has no cached memory."""
        full = torch.full((state.num_segments,), float("-inf"))
        if not state.cache_segments:
            return full
        query = torch.tensor([query_ids[:self.config.summary_length]], dtype=torch.long, device=self.device)
        summary = self.summarize(query)  # [1, d]
        cache = state.cache[None].to(self.device, self.initial_memory.dtype)  # [1, n, d]
        q = self.wq(summary).float()  # [1, h]
        k = self.wk(cache).float()  # [1, n, h]
        scores = torch.einsum("bh,bnh->bn", q, k)[0] / math.sqrt(self.config.recall_size)  # [n]
        full[torch.tensor(state.cache_segments)] = scores.cpu()
        return full

    def mix(self, state: MemoryState, weights: torch.Tensor) -> torch.Tensor:
        """P [1, d]: the cached memory embeddings mixed by recall weights over every segment [num_segments]
        (renormalised over the cached ones); the initial memory when nothing cached has weight."""
        if not state.cache_segments:
            return self.initial_memory
        a = weights.float()[torch.tensor(state.cache_segments)]  # [n]
        if float(a.sum()) <= 0:
            return self.initial_memory
        a = (a / a.sum()).to(self.device, self.initial_memory.dtype)
        return (a @ state.cache.to(self.device, self.initial_memory.dtype))[None]

    @torch.no_grad()
    def recall_weights(self, state: MemoryState, query_ids: list[int]) -> torch.Tensor | None:
        """Recall weights over every segment read so far for a query (its summary pass and memory search only),
        or None with an empty cache: what re-read answering and the recall benchmark rank segments by."""
        return self._recall_state(state, query_ids)[1]

    @torch.no_grad()
    def begin_segment(self, state: MemoryState, ids: list[int], query_ids: list[int] | None = None,
                      weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inputs for generating after ids: [P, emb(sensory), emb(ids)] with P recalled for query_ids (default ids),
        or mixed by the given recall weights over every segment (a fused recall).

        Returns (embeds [1, n, d], recall weights over every segment read so far, or None with an empty cache).
        """
        if weights is not None:
            memory = self.mix(state, weights)
        else:
            memory, weights = self._recall_state(state, query_ids if query_ids is not None else ids)
        x = torch.tensor([ids], dtype=torch.long, device=self.device).reshape(1, -1)
        embeds, _, _ = self.main_embeds(memory, self._sensory(state), x, trailing=False)
        return embeds, weights
