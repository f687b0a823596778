"""HMT and RMT around any transformers causal LM: reading long documents into memory, answering from it.

The top level is the memory model with its reading and answering (backbone, config, hmt, rmt, state, reader, answer,
checkpoint); hmt_core.recall is the multi-channel recall (lexical, token_keys, fusion); hmt_core.training is the
training side (corpora, data, train, lora, fit_recall), of which importing hmt_core loads only lora (checkpoints
carry LoRA adapters).
"""

from .answer import AnswerEvent, Passage, remember_turn, stream_answer
from .backbone import DEFAULT_BACKBONE, BackboneError, load_backbone
from .checkpoint import CheckpointError, import_reference, load_checkpoint, save_checkpoint
from .config import HMTConfig, RMTConfig
from .evidence import Evidence, rank_evidence
from .hmt import HMT
from .memory_model import MemoryModel
from .reader import Reader, read_text
from .rmt import RMT
from .state import MemoryState, SegmentInfo

__all__ = ["AnswerEvent", "BackboneError", "CheckpointError", "DEFAULT_BACKBONE", "Evidence", "HMT", "HMTConfig",
           "MemoryModel", "MemoryState", "Passage", "RMT", "RMTConfig", "Reader", "SegmentInfo", "import_reference",
           "load_backbone", "load_checkpoint", "rank_evidence", "read_text", "remember_turn", "save_checkpoint",
           "stream_answer"]
