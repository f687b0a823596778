"""The memory state of read documents: a small object that saves, loads and moves between devices."""

from __future__ import annotations

import bisect
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .recall.lexical import LexicalIndex
from .recall.sentences import SPLITTING, SentenceIndex

logger = logging.getLogger(__name__)

# 2: a lexical index and token keys beside the cache. A format-1 state loads with its index rebuilt from its text.
STATE_FORMAT = 2
LEXICAL_DIR = "lexical"
KEY_ROWS = 4096  # segments of token keys a reading state makes room for at first (about a million tokens)


@dataclass
class SegmentInfo:
    """Where one read segment came from: its source, character span in that source's text and pages."""

    index: int
    source: str
    char_start: int
    char_end: int
    page_start: int | None
    page_end: int | None
    num_tokens: int


@dataclass
class SourceText:
    """The text of one read source, with the character offsets where its pages begin (for citations)."""

    name: str
    text: str = ""
    page_starts: list[int] = field(default_factory=list)
    page_numbers: list[int] = field(default_factory=list)

    def page_at(self, char: int) -> int | None:
        """The page number holding character `char`, or None when the source has no pages."""
        if not self.page_starts:
            return None
        i = bisect.bisect_right(self.page_starts, char) - 1
        return self.page_numbers[max(i, 0)]


@dataclass
class MemoryState:
    """Everything a read leaves behind.

    HMT: `cache` [n, d] holds the newest N memory embeddings, row i written by segment `cache_segments[i]`;
    RMT: `cache` [m, d] is the current memory tokens and `cache_segments` is empty.
    `capacity` is how many memory embeddings the cache keeps (HMT; the newest are kept); 0 for RMT, which has none.
    `sensory_ids` are the last k token ids read; `segments` and `sources` say where every segment came from.
    The finer levels, one entry per segment read: `lexical` indexes every segment's text (the lexical recall channel)
    and `token_keys` [num_segments, K, r] (fp16) holds each segment's token keys, or None when the model leaves none;
    `sentences` holds the sentence vectors of the segments it covers (the sentence channel; embedded when a document
    is finished, or on the first question of a state that has none).
    `notes` say what loading had to repair (not saved).
    """

    kind: str
    cache: torch.Tensor
    cache_segments: list[int] = field(default_factory=list)
    sensory_ids: list[int] = field(default_factory=list)
    segments: list[SegmentInfo] = field(default_factory=list)
    sources: dict[str, SourceText] = field(default_factory=dict)
    capacity: int = 0
    lexical: LexicalIndex = field(default_factory=LexicalIndex)
    token_keys: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)
    sentences: SentenceIndex = field(default_factory=SentenceIndex)
    # Rows that token_keys is the head of (KEY_ROWS at first, doubled when full), so that reading appends in
    # amortised O(1) instead of copying every key so far per segment; owned by this state only (a copy, a load or
    # an extend starts without one).
    _key_buffer: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def num_segments(self) -> int:
        return len(self.segments)

    def copy(self) -> MemoryState:
        """A copy that can be extended (answering, chat) without touching this one; tensors are shared, never
        modified in place."""
        return MemoryState(self.kind, self.cache, list(self.cache_segments), list(self.sensory_ids),
                           list(self.segments), dict(self.sources), self.capacity, self.lexical.copy(),
                           self.token_keys, list(self.notes), self.sentences.copy())

    def add_segment(self, info: SegmentInfo, token_keys: torch.Tensor | None) -> None:
        """Record a segment just read (its memory is already cached): where it came from, its text in the lexical
        index and its token keys [K, r]. A state keeps token keys only while every segment has them."""
        first = not self.segments
        self.segments.append(info)
        self.lexical.add(self.segment_text(info.index))
        if token_keys is None or (self.token_keys is None and not first):
            self.token_keys = None
            return
        keys = token_keys.detach().to("cpu", torch.float16)  # [K, r]
        n = 0 if first else self.token_keys.shape[0]
        buffer = self._key_buffer
        if buffer is None or buffer.shape[0] <= n or buffer.shape[1:] != keys.shape:
            # new_empty leaves the rows untouched: until a row is written it takes address space, not memory (a
            # large allocation is mapped lazily), so RSS grows with the keys alone and rarely holds two copies.
            buffer = keys.new_empty((max(2 * n, KEY_ROWS), *keys.shape))  # [capacity, K, r]
            if n:
                buffer[:n] = self.token_keys
            self._key_buffer = buffer
        buffer[n] = keys
        self.token_keys = buffer[:n + 1]

    def extend(self, other: MemoryState, keep: int) -> MemoryState:
        """A new state: this one's memory followed by other's (read on its own), segments renumbered, the newest
        `keep` cached memories kept, the sensory memory taken from other (the last text read)."""
        if set(self.sources) & set(other.sources):
            raise ValueError(f"source names overlap: {sorted(set(self.sources) & set(other.sources))}")
        offset = self.num_segments
        if self.kind == "hmt":
            cache = torch.cat([self.cache.cpu(), other.cache.cpu().to(self.cache.dtype)], 0)[-keep:]
        else:  # RMT's memory is the last document's memory tokens
            cache = other.cache.cpu()
        cache_segments = (self.cache_segments + [i + offset for i in other.cache_segments])[-keep:]
        keys = None
        if self.token_keys is not None and other.token_keys is not None:
            if self.token_keys.shape[1:] == other.token_keys.shape[1:]:
                keys = torch.cat([self.token_keys, other.token_keys], 0)
        lexical = self.lexical.copy()
        for i in range(other.num_segments):
            lexical.add(other.segment_text(i))
        lexical.build()
        return MemoryState(self.kind, cache, cache_segments, list(other.sensory_ids),
                           self.segments + [replace(s, index=s.index + offset) for s in other.segments],
                           {**self.sources, **other.sources}, keep if self.kind == "hmt" else 0, lexical, keys,
                           self.notes + other.notes, self.sentences.extended(other.sentences, offset))

    def without(self, source: str) -> MemoryState:
        """A new state without `source`'s segments and their cached memories, the rest renumbered in order (e.g. to
        replace a partly read document by the whole of it). The memories written after that source's were written
        with it in memory; they stay as they are. Self when there is no such source."""
        if source not in self.sources:
            return self
        kept = [s for s in self.segments if s.source != source]
        new_index = {s.index: i for i, s in enumerate(kept)}
        rows = [r for r, seg in enumerate(self.cache_segments) if seg in new_index]
        cache = self.cache[torch.tensor(rows, dtype=torch.long)] if self.kind == "hmt" else self.cache  # [n', d]
        keys = None
        if self.token_keys is not None:
            keys = self.token_keys[torch.tensor([s.index for s in kept], dtype=torch.long)]  # [num_segments', K, r]
        out = MemoryState(self.kind, cache, [new_index[self.cache_segments[r]] for r in rows], list(self.sensory_ids),
                          [replace(s, index=i) for i, s in enumerate(kept)],
                          {name: src for name, src in self.sources.items() if name != source}, self.capacity,
                          LexicalIndex(), keys, list(self.notes), self.sentences.select([s.index for s in kept]))
        out.lexical = LexicalIndex.from_texts([out.segment_text(i) for i in range(out.num_segments)])
        out.lexical.build()
        return out

    def renamed(self, old: str, new: str) -> MemoryState:
        """This state with its source `old` called `new` (a copy; self when there is nothing to rename), e.g. a
        cached document uploaded under another name. The lexical index and token keys have one entry per segment,
        in order, so renaming a source leaves them valid."""
        if old == new or old not in self.sources:
            return self
        out = self.copy()
        src = out.sources.pop(old)
        out.sources[new] = SourceText(new, src.text, list(src.page_starts), list(src.page_numbers))
        out.segments = [replace(s, source=new) if s.source == old else s for s in out.segments]
        return out

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> MemoryState:
        """Move the cache to a device (and dtype); returns self."""
        self.cache = self.cache.to(device=device, dtype=dtype or self.cache.dtype)
        return self

    def weights_over_segments(self, cache_weights: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        """Spread recall weights over cache rows [n] (written by the segments `rows`, default all cached) onto every
        segment read so far [num_segments]; segments outside those rows get 0."""
        rows = self.cache_segments if rows is None else rows
        size = max(self.num_segments, max(rows) + 1 if rows else 0)
        full = torch.zeros(size, dtype=torch.float32)
        if rows:
            full[torch.tensor(rows)] = cache_weights.detach().float().cpu()
        return full

    def segment_text(self, index: int) -> str:
        """The exact text of one segment."""
        seg = self.segments[index]
        return self.sources[seg.source].text[seg.char_start:seg.char_end]

    def save(self, folder: str | Path) -> None:
        """Write memory.safetensors and state.json into `folder`, atomically: a crash leaves the old folder or
        none, never a half-written one."""
        folder = Path(folder)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors = {"cache": self.cache.detach().contiguous().cpu()}
        if self.token_keys is not None:
            tensors["token_keys"] = self.token_keys.clone()  # its rows only, not the buffer behind them
        if self.sentences.vectors.numel():
            tensors["sentence_vectors"] = self.sentences.vectors.contiguous()
            tensors["sentence_owners"] = self.sentences.owners.contiguous()
        save_file(tensors, str(tmp / "memory.safetensors"))
        (tmp / LEXICAL_DIR).mkdir()
        self.lexical.save(tmp / LEXICAL_DIR)
        data = {
            "format": STATE_FORMAT, "kind": self.kind, "cache_segments": self.cache_segments,
            "sensory_ids": self.sensory_ids, "segments": [asdict(s) for s in self.segments],
            "sources": [asdict(s) for s in self.sources.values()], "capacity": self.capacity,
            "sentence_segments": self.sentences.segments, "sentence_splitting": SPLITTING,
        }
        (tmp / "state.json").write_text(json.dumps(data), encoding="utf-8")
        if folder.exists():
            old = folder.with_name(folder.name + f".old{os.getpid()}")
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu") -> MemoryState:
        """Read a folder written by save(); raises ValueError on a missing or damaged memory file.

        The lexical index is derived from the text the state keeps, so a format-1 state (which has none) or a
        damaged index is rebuilt from that text, never served half-built, and `notes` says so.
        """
        folder = Path(folder)
        try:
            data = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            tensors = load_file(str(folder / "memory.safetensors"), device=str(device))
            cache = tensors["cache"]
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            raise ValueError(f"memory state in {folder} is missing or damaged: {err}") from err
        if data.get("format") not in (1, STATE_FORMAT):
            raise ValueError(f"memory state in {folder} has format {data.get('format')}, expected {STATE_FORMAT}")
        sources = {s["name"]: SourceText(**s) for s in data["sources"]}
        capacity = data.get("capacity", data.get("meta", {}).get("cache_size", cache.shape[0]))  # older: in meta
        state = cls(data["kind"], cache, data["cache_segments"], data["sensory_ids"],
                    [SegmentInfo(**s) for s in data["segments"]], sources, int(capacity))
        keys = tensors.get("token_keys")
        if keys is not None and keys.shape[0] != state.num_segments:
            raise ValueError(f"memory state in {folder} has token keys for {keys.shape[0]} of "
                             f"{state.num_segments} segments")
        state.token_keys = keys.cpu() if keys is not None else None
        vectors, owners = tensors.get("sentence_vectors"), tensors.get("sentence_owners")
        covered = min(int(data.get("sentence_segments", 0)), state.num_segments)
        if data.get("sentence_splitting", 1) != SPLITTING and vectors is not None:
            state.notes.append("The sentences were split by an older rule; they are embedded again.")
        elif vectors is None and owners is None:  # none saved: older states, or no segment had a sentence
            state.sentences = SentenceIndex(segments=covered)
        elif vectors is not None and owners is not None and len(owners) == len(vectors) and int(owners.max()) < covered:
            state.sentences = SentenceIndex(vectors.cpu(), owners.cpu().long(), covered)
        else:
            state.notes.append("The sentence vectors did not match the segments; they are embedded again.")
        state.lexical = state._load_lexical(folder / LEXICAL_DIR, data["format"])
        return state

    def _load_lexical(self, folder: Path, data_format: int) -> LexicalIndex:
        """The saved lexical index, or one rebuilt from the segments' text when it is missing or damaged."""
        problem = "the state predates the lexical index" if data_format == 1 else ""
        if not problem:
            try:
                index = LexicalIndex.load(folder)
                if len(index) == self.num_segments:
                    return index
                problem = f"the lexical index covers {len(index)} of {self.num_segments} segments"
            except ValueError as err:
                problem = f"the lexical index is damaged ({err})"
        logger.warning("rebuilding the lexical index of %s: %s", folder.parent, problem)
        self.notes.append(f"Rebuilt the word index from the text: {problem}.")
        return LexicalIndex.from_texts([self.segment_text(i) for i in range(self.num_segments)])
