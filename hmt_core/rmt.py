"""The Recurrent Memory Transformer baseline behind the same API as HMT.

Shapes: B batch, L segment length, m memory tokens, d embedding width.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import embedding_norm, lm_logits, to_norm
from .config import RMTConfig
from .hmt import (MemoryOutput, SegmentResult, reduce_loss, run_backbone, run_segment, segments_needing_grad,
                  split_segments)
from .state import MemoryState


class RMT(nn.Module):
    """RMT: m learned memory tokens [m, d] read at the start of each segment and written at its end. A MemoryModel
    (memory_model.py) without recall."""

    has_recall = False
    recall_channels: tuple[str, ...] = ()

    def __init__(self, backbone: nn.Module, config: RMTConfig | None = None):
        super().__init__()
        self.config = config or RMTConfig()
        self.backbone = backbone
        emb = backbone.get_input_embeddings().weight  # [V, d]
        with torch.no_grad():
            mean, std = emb.float().mean(0, keepdim=True), emb.float().std()
            memory = mean + std * torch.randn(self.config.num_memory_tokens, emb.shape[1])
        self.memory = nn.Parameter(memory.to(emb.device, emb.dtype))
        self.input_norm = embedding_norm(backbone) if self.config.memory_input_norm == "embedding" else None

    @property
    def segment_length(self) -> int:
        return self.config.segment_length

    @property
    def device(self) -> torch.device:
        return self.memory.device

    def memory_parameters(self) -> dict[str, nn.Parameter]:
        """The RMT parameters only (what a checkpoint holds), by name."""
        return {"memory": self.memory}

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, n] -> input embeddings [B, n, d]."""
        return self.backbone.get_input_embeddings()(ids.to(self.device))

    def main_embeds(self, memory: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None,
                    trailing: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """[mem, emb(ids), mem] (trailing False: no write block); memory [B, m, d], ids [B, L]; the memory at the
        token embeddings' norm unless the config says 'none'."""
        m = memory.shape[1]
        if self.input_norm is not None:
            memory = to_norm(memory, self.input_norm)
        parts = [memory, self.embed(ids)] + ([memory] if trailing else [])
        embeds = torch.cat(parts, 1)
        if mask is not None:
            ones = mask.new_ones(mask.shape[0], m)
            mask = torch.cat([ones, mask] + ([ones] if trailing else []), 1)
        return embeds, mask, m

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, mode: str = "direct", bptt_depth: int | None = None,
                loss_on: str = "all", return_logits: bool = False, memory_cache: torch.Tensor | None = None,
                sensory_ids: torch.Tensor | None = None) -> MemoryOutput:
        """Training forward over [B, T] cut into segments; the write block's outputs become the next read memory.
        mode is accepted for API symmetry ('direct'; 'segment' disables memory); bptt_depth cuts the graph every
        D segments; memory_cache [B, m, d] continues from memory already read (sensory_ids: unused by RMT)."""
        seg_ids, seg_masks, seg_labels = split_segments(input_ids, attention_mask, labels, self.config.segment_length)
        m = self.config.num_memory_tokens
        memory = self.memory[None].expand(input_ids.shape[0], -1, -1) if memory_cache is None else memory_cache
        sums, counts, logits_out = [], [], []
        need_grad = segments_needing_grad(seg_labels, bptt_depth)
        grad_on = torch.is_grad_enabled()
        try:
            for s, (ids, mask, labels_s) in enumerate(zip(seg_ids, seg_masks, seg_labels)):
                if bptt_depth and s and s % bptt_depth == 0:
                    memory = memory.detach()
                torch.set_grad_enabled(grad_on and need_grad[s])
                if mode == "segment":
                    embeds, full_mask, x_start = self.embed(ids), mask, 0
                else:
                    embeds, full_mask, x_start = self.main_embeds(memory, ids, mask)
                hidden, loss_sum, count, logits = run_segment(self.backbone, embeds, full_mask, x_start, labels_s,
                                                              return_logits)
                sums.append(loss_sum)
                counts.append(count)
                if logits is not None:
                    logits_out.append(logits)
                if mode != "segment":
                    row_valid = mask.any(-1).to(self.device)[:, None, None]  # [B, 1, 1]
                    memory = torch.where(row_valid, hidden[:, -m:].to(self.device), memory)
        finally:
            torch.set_grad_enabled(grad_on)
        loss, total = reduce_loss(sums, counts, loss_on)
        return MemoryOutput(loss, total, [], logits_out)

    def new_state(self, keep: int | None = None) -> MemoryState:
        """An empty memory state: the learned initial memory tokens (RMT keeps no cache, so `keep` is unused)."""
        return MemoryState("rmt", self.memory.detach().clone())

    @torch.no_grad()
    def read_segment(self, state: MemoryState, ids: list[int], segment_index: int,
                     return_logits: bool = False, summary: torch.Tensor | None = None) -> SegmentResult:
        """Read one segment into the state: its write block becomes the new memory [m, d]. RMT has no summary
        pass, so `summary` is unused."""
        x = torch.tensor([ids], device=self.device)
        embeds, _, x_start = self.main_embeds(state.cache[None].to(self.device, self.memory.dtype), x)
        hidden = run_backbone(self.backbone, embeds, None)
        logits = lm_logits(self.backbone, hidden[0, x_start:x_start + len(ids)]) if return_logits else None
        state.cache = hidden[0, -self.config.num_memory_tokens:].to(self.device)
        return SegmentResult(state.cache, None, logits)

    @torch.no_grad()
    def begin_segment(self, state: MemoryState, ids: list[int], query_ids: list[int] | None = None,
                      weights: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """Inputs for generating after ids: [mem, emb(ids)]; RMT has no recall, so query_ids and weights are unused."""
        x = torch.tensor([ids], dtype=torch.long, device=self.device).reshape(1, -1)
        embeds, _, _ = self.main_embeds(state.cache[None].to(self.device, self.memory.dtype), x, trailing=False)
        return embeds, None
