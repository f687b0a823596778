"""The memory state of read documents: a small object that saves, loads and moves between devices."""

from __future__ import annotations

import bisect
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

STATE_FORMAT = 1


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
    `sensory_ids` are the last k token ids read; `segments` and `sources` say where every segment came from.
    """

    kind: str
    cache: torch.Tensor
    cache_segments: list[int] = field(default_factory=list)
    sensory_ids: list[int] = field(default_factory=list)
    segments: list[SegmentInfo] = field(default_factory=list)
    sources: dict[str, SourceText] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def num_segments(self) -> int:
        return len(self.segments)

    def copy(self) -> MemoryState:
        """A copy that can be extended (answering, chat) without touching this one; tensors are shared, never
        modified in place."""
        return MemoryState(self.kind, self.cache, list(self.cache_segments), list(self.sensory_ids),
                           list(self.segments), dict(self.sources), dict(self.meta))

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
        save_file({"cache": self.cache.detach().contiguous().cpu()}, str(tmp / "memory.safetensors"))
        data = {
            "format": STATE_FORMAT, "kind": self.kind, "cache_segments": self.cache_segments,
            "sensory_ids": self.sensory_ids, "segments": [asdict(s) for s in self.segments],
            "sources": [asdict(s) for s in self.sources.values()], "meta": self.meta,
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
        """Read a folder written by save(); raises ValueError on a missing or damaged file."""
        folder = Path(folder)
        try:
            data = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            cache = load_file(str(folder / "memory.safetensors"), device=str(device))["cache"]
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            raise ValueError(f"memory state in {folder} is missing or damaged: {err}") from err
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"memory state in {folder} has format {data.get('format')}, expected {STATE_FORMAT}")
        sources = {s["name"]: SourceText(**s) for s in data["sources"]}
        return cls(data["kind"], cache, data["cache_segments"], data["sensory_ids"],
                   [SegmentInfo(**s) for s in data["segments"]], sources, data["meta"])
