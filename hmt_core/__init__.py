"""HMT and RMT around any transformers causal LM: reading long documents into memory, answering from it."""

from .answer import AnswerEvent, Passage, remember_turn, stream_answer
from .backbone import DEFAULT_BACKBONE, BackboneError, load_backbone
from .checkpoint import CheckpointError, import_reference, load_checkpoint, save_checkpoint
from .config import HMTConfig, RMTConfig
from .hmt import HMT
from .memory_model import MemoryModel
from .reader import Reader, read_text
from .rmt import RMT
from .state import MemoryState, SegmentInfo

__all__ = ["AnswerEvent", "BackboneError", "CheckpointError", "DEFAULT_BACKBONE", "HMT", "HMTConfig", "MemoryModel",
           "MemoryState", "Passage", "RMT", "RMTConfig", "Reader", "SegmentInfo", "import_reference", "load_backbone",
           "load_checkpoint", "read_text", "remember_turn", "save_checkpoint", "stream_answer"]
