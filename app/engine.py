"""The one loaded model shared by every session: loading and reloading it, reading text into memory in bounded
calls, and streaming answers, with a lock so that sessions take turns on the model between steps."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from hmt_core import (DEFAULT_BACKBONE, HMT, AnswerEvent, BackboneError, CheckpointError, HMTConfig, MemoryState,
                      Reader, load_backbone, load_checkpoint, remember_turn, stream_answer)
from hmt_core.backbone import backbone_identity
from hmt_core.recall import matched_windows, question_keys

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "hmt-smollm2-135m"
DEVICES = ("auto", "cpu", "cuda", "mps")
MEMORY_SEGMENTS = 4096  # cached memories kept per session: about a million tokens, so whole books stay recallable
UNTRAINED_NOTE = "No trained HMT weights for this backbone: recall is untrained."
FINGERPRINT_FORMAT = "hmt-app-memory-1"

try:
    import spaces  # Hugging Face ZeroGPU: holds a GPU only while a decorated call runs

    gpu = spaces.GPU(duration=60)
except ImportError:
    def gpu(fn):
        """No ZeroGPU here: run the function as it is."""
        return fn


class EngineError(RuntimeError):
    """A model could not be loaded or used; the message is for the web page."""


class ModelChanged(EngineError):
    """The model was replaced while a session was using it; that session's memory no longer fits."""


@dataclass
class PieceText:
    """A piece of a document's text (at most a few thousand characters) and the page it belongs to."""

    text: str
    page: int | None


@gpu
def _read_pieces(reader: Reader, pieces: list[PieceText], source: str, max_segments: int) -> int:
    """Feed pieces until at least max_segments segments were read; returns how many pieces were used.
    The state goes back to the CPU so that a GPU is needed only during this call."""
    read, used = 0, 0
    for piece in pieces:
        read += len(reader.feed(piece.text, source=source, page=piece.page))
        used += 1
        if read >= max_segments:
            break
    reader.state.to("cpu")
    return used


@gpu
def _finish(reader: Reader) -> int:
    """Read the last partial segment of the current document; returns how many segments that was."""
    done = len(reader.finish())
    reader.state.to("cpu")
    return done


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor as float32 on the CPU, detached (so the page never holds GPU memory)."""
    return tensor.detach().float().cpu()


@gpu
def _answer(model, tokenizer, state: MemoryState, question: str, mode: str, max_new_tokens: int,
            temperature: float, channels: tuple[str, ...] | None) -> Iterator[AnswerEvent]:
    """stream_answer with its recall weights and per-channel scores on the CPU."""
    for event in stream_answer(model, tokenizer, state, question, mode=mode, max_new_tokens=max_new_tokens,
                               temperature=temperature, channels=channels):
        if event.weights is not None:
            event.weights = _cpu(event.weights)
        if event.recall is not None:
            detail = event.recall
            detail.weights = _cpu(detail.weights)
            detail.scores = {c: _cpu(v) for c, v in detail.scores.items()}
            detail.contributions = {c: _cpu(v) for c, v in detail.contributions.items()}
        yield event


@gpu
def _windows(model, tokenizer, state: MemoryState, segments: list[int], question: str
             ) -> dict[int, list[tuple[int, int]]]:
    """matched_windows for each segment: the character spans whose token keys matched the question best (the
    question's keys computed once)."""
    query = question_keys(model, tokenizer, question)
    return {i: matched_windows(model, tokenizer, state, i, question, query=query) for i in segments}


@gpu
def _remember(model, tokenizer, state: MemoryState, question: str, answer: str) -> None:
    """remember_turn, leaving the state on the CPU."""
    remember_turn(model, tokenizer, state, question, answer)
    state.to("cpu")


def _parameters_digest(model: torch.nn.Module) -> str:
    """sha256 of the memory parameters' values, so cached memories from other weights are never used."""
    digest = hashlib.sha256()
    for name, param in sorted(model.memory_parameters().items()):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def untrained_hmt(backbone: torch.nn.Module) -> HMT:
    """An HMT with freshly initialised memory parameters, seeded so they (and the disk cache) survive a restart."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return HMT(backbone, HMTConfig())


class Engine:
    """The loaded backbone + memory wrapper; every model call goes through `lock`, one short step at a time."""

    def __init__(self, memory_segments: int = MEMORY_SEGMENTS) -> None:
        self.memory_segments = memory_segments
        self.lock = threading.RLock()
        self.model = None
        self.tokenizer = None
        self.backbone_name = ""
        self.device = "auto"
        self.weights_note = ""
        self.trained = False
        self.fingerprint = ""

    @property
    def loaded(self) -> bool:
        return self.model is not None

    @property
    def is_hmt(self) -> bool:
        return isinstance(self.model, HMT)

    @property
    def segment_length(self) -> int:
        return self.model.segment_length

    def load(self, backbone: str = DEFAULT_BACKBONE, weights: str | Path | None = None, device: str = "auto",
             dtype: str = "auto") -> str:
        """Load a backbone and its HMT weights, replacing the current model only if all went well; returns a
        one-line description. Raises EngineError with a message for the page."""
        backbone = (backbone or DEFAULT_BACKBONE).strip()
        if device not in DEVICES:
            raise EngineError(f"Unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
        if device == "cuda" and not torch.cuda.is_available():
            raise EngineError("CUDA is not available on this machine; choose auto or cpu.")
        if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise EngineError("Apple MPS is not available on this machine; choose auto or cpu.")
        try:
            model, tokenizer = load_backbone(backbone, device=device, dtype=dtype)
        except (BackboneError, ValueError, OSError, RuntimeError) as err:
            raise EngineError(f"Could not load the backbone {backbone!r}: {err}") from err
        with self.lock:
            self.attach(model, tokenizer, weights, backbone, device)
        return self.describe_model()

    def attach(self, backbone_model: torch.nn.Module, tokenizer, weights: str | Path | None, name: str,
               device: str = "auto") -> None:
        """Wrap a loaded backbone in HMT with the given weights folder (None: the shipped default) or untrained
        parameters when there are none for it, and make it the current model."""
        folder = Path(weights) if weights else DEFAULT_WEIGHTS
        trained, note = False, UNTRAINED_NOTE
        model = None
        if (folder / "memory_config.json").exists():
            try:
                model = load_checkpoint(folder, backbone_model)
                trained, note = True, f"Trained HMT weights: {folder}"
            except CheckpointError as err:
                note = f"{UNTRAINED_NOTE} ({err})"
        elif weights:
            note = f"{UNTRAINED_NOTE} (no HMT checkpoint in {folder})"
        if model is None:
            model = untrained_hmt(backbone_model)
        model.requires_grad_(False)
        model.eval()
        self.model, self.tokenizer = model, tokenizer
        self.backbone_name, self.device = name, device
        self.trained, self.weights_note = trained, note
        self.fingerprint = self._fingerprint()
        logger.info("model ready: %s; %s", name, note)

    def _fingerprint(self) -> str:
        """What a memory depends on besides the text: backbone identity, memory weights and config, dtype, cache size."""
        first = next(self.model.parameters())
        data = {"format": FINGERPRINT_FORMAT, "backbone": backbone_identity(self.model.backbone),
                "config": vars(self.model.config), "weights": _parameters_digest(self.model),
                "dtype": str(first.dtype), "memory_segments": self.memory_segments}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def describe_model(self) -> str:
        """'SmolLM2-135M-Instruct on cpu · HMT, L = 256 · trained weights' style summary."""
        first = next(self.model.parameters())
        kind = "HMT" if self.is_hmt else "RMT"
        return (f"{self.backbone_name} on {first.device.type} ({str(first.dtype).replace('torch.', '')}) · {kind}, "
                f"{self.segment_length} tokens per segment · {self.weights_note}")

    def new_reader(self) -> Reader:
        """A reader into a fresh memory that keeps up to memory_segments cached memories."""
        return Reader(self.model, self.tokenizer, self.model.new_state(keep=self.memory_segments).to("cpu"))

    def _check(self, fingerprint: str) -> None:
        if fingerprint != self.fingerprint:
            raise ModelChanged("The model was changed while this was running; add your documents again.")

    def read(self, reader: Reader, pieces: list[PieceText], source: str, fingerprint: str,
             max_segments: int = 8) -> int:
        """Read pieces into reader's memory until about max_segments segments are done (one bounded model call);
        returns how many pieces were used."""
        with self.lock:
            self._check(fingerprint)
            return _read_pieces(reader, pieces, source, max_segments)

    def finish(self, reader: Reader, fingerprint: str) -> int:
        """Flush the reader's last partial segment."""
        with self.lock:
            self._check(fingerprint)
            return _finish(reader)

    def count_tokens(self, text: str) -> int:
        """Tokens in text, to size the reading work before it starts."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def channels(self) -> tuple[str, ...]:
        """The recall channels the loaded model weighs (memory always, for HMT); none for RMT, which has no recall."""
        return tuple(self.model.config.channels) if self.is_hmt else ()

    def answer(self, state: MemoryState, question: str, fingerprint: str, mode: str = "reread",
               max_new_tokens: int = 200, temperature: float = 0.0,
               channels: tuple[str, ...] | None = None) -> Iterator[AnswerEvent]:
        """Stream an answer from memory, recalling with `channels` (None: every channel the model weighs; memory
        alone is the paper's HMT); the lock is held for one step at a time, never across a yield."""
        if not self.is_hmt:
            mode = "faithful"
        with self.lock:
            self._check(fingerprint)
            steps = _answer(self.model, self.tokenizer, state, question, mode, max_new_tokens, temperature,
                            channels)
        while True:
            with self.lock:
                self._check(fingerprint)
                event = next(steps, None)
            if event is None:
                return
            yield event

    def token_windows(self, state: MemoryState, question: str, segments: list[int], fingerprint: str
                      ) -> dict[int, list[tuple[int, int]]]:
        """For each of these segments, the character spans (in its source's text) of the token windows whose keys
        matched the question best: why the token-key channel recalled it ([] without token keys)."""
        with self.lock:
            self._check(fingerprint)
            return _windows(self.model, self.tokenizer, state, list(segments), question)

    def remember(self, state: MemoryState, question: str, answer: str, fingerprint: str) -> None:
        """Write a chat turn into the memory so later questions can recall it."""
        with self.lock:
            self._check(fingerprint)
            _remember(self.model, self.tokenizer, state, question, answer)

    def decode(self, ids: list[int]) -> str:
        """Token ids as text (for showing the sensory memory)."""
        return self.tokenizer.decode(ids) if ids else ""
