"""The contract of a memory model: what reading (Reader), answering (stream_answer) and the app use of HMT and RMT.

Code that only reads and answers takes a MemoryModel; code that uses HMT's recall (its memory scores, token keys
and fused recall) takes an HMT. `has_recall` is the one switch between the two kinds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

from .state import MemoryState

if TYPE_CHECKING:
    from .config import HMTConfig, RMTConfig
    from .hmt import SegmentResult


@runtime_checkable
class MemoryModel(Protocol):
    """A memory-augmented wrapper around an unchanged causal LM (`backbone`), reading in segments of L tokens.

    has_recall: True when the model keeps a cache of memory embeddings and recalls from it by attention (HMT), so
    that recall weights over every segment read exist and can rank passages; False when one memory is carried from
    segment to segment (RMT), which can only answer from that memory.
    """

    backbone: nn.Module
    config: HMTConfig | RMTConfig
    has_recall: bool

    @property
    def segment_length(self) -> int:
        """L, the tokens read per segment."""

    @property
    def device(self) -> torch.device:
        """Where the memory parameters live."""

    @property
    def recall_channels(self) -> tuple[str, ...]:
        """The recall channels this model weighs ('memory' first); () without recall."""

    def memory_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters the memory adds to the backbone (what a checkpoint saves)."""

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, n, d] of ids [B, n], as the backbone would embed them."""

    def new_state(self, keep: int | None = None) -> MemoryState:
        """An empty memory state keeping at least `keep` cached memories (when the model has a cache)."""

    def read_segment(self, state: MemoryState, ids: list[int], segment_index: int,
                     return_logits: bool = False, summary: torch.Tensor | None = None) -> SegmentResult:
        """Read one segment of at most L token ids into the state; `summary` [1, d] is its summary computed
        beforehand in a batch (HMT's summarize_segments; None: computed here; unused without recall)."""

    def begin_segment(self, state: MemoryState, ids: list[int], query_ids: list[int] | None = None,
                      weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Input embeddings [1, n, d] for generating after ids with the memory in front, and the recall weights
        over every segment read (None without recall); `weights` gives recall weights to mix instead of recalling."""
