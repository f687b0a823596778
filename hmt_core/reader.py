"""Incremental reading: text or token ids in pieces of any size in, one memory write per completed segment out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .memory_model import MemoryModel
from .recall import embed_sentences
from .state import MemoryState, SegmentInfo, SourceText

if TYPE_CHECKING:
    from .hmt import SegmentResult

SOFT_CHUNK = 2000
HARD_CHUNK = 8000


class TextChunker:
    """Cuts a stream of text into tokenizer-sized chunks at points that depend on the text alone, never on how the
    text arrived, so that reading in pieces tokenizes exactly as reading at once.

    A chunk ends after the first newline within SOFT_CHUNK characters; else just before the first whitespace after
    SOFT_CHUNK (so BPE's leading-space tokens stay whole); else at HARD_CHUNK.
    """

    def __init__(self) -> None:
        self.buffer = ""
        self.start = 0  # offset of buffer[0] in the source text

    def _end(self, final: bool) -> int | None:
        buf = self.buffer
        newline = buf.find("\n", 0, SOFT_CHUNK)
        if newline >= 0:
            return newline + 1
        if len(buf) > SOFT_CHUNK:
            for i in range(SOFT_CHUNK, min(len(buf), HARD_CHUNK)):
                if buf[i].isspace():
                    return i + 1 if buf[i] == "\n" else i
            if len(buf) >= HARD_CHUNK:
                return HARD_CHUNK
        return len(buf) if final and buf else None

    def push(self, text: str, final: bool = False) -> list[tuple[int, str]]:
        """Add text; return the chunks now complete as (offset, chunk). final=True flushes the rest."""
        self.buffer += text
        chunks = []
        while (end := self._end(final)) is not None:
            chunks.append((self.start, self.buffer[:end]))
            self.start += end
            self.buffer = self.buffer[end:]
        return chunks


@dataclass
class ReadSegment:
    """One segment written to memory: where it came from, its memory embedding and the recall weights it used."""

    info: SegmentInfo
    memory: torch.Tensor
    recall_weights: torch.Tensor | None


class Reader:
    """Feeds documents into a memory state segment by segment.

    feed() and feed_ids() take pieces of any size and return the segments they completed; finish() reads the last
    partial segment. A new source always starts a new segment, so that no segment spans two documents.

    summary_batch S > 1 (HMT only) waits until S full segments are pending and runs their summary passes as one
    batch before the main passes (HMT.summarize_segments): the same memories, fewer and larger backbone calls. The
    main passes then go one segment at a time; a feed given `stop` ends after the segment at which stop() is true,
    and the summaries it already has wait for their segments (a summary depends on its segment's tokens alone), so
    the next feed or finish() goes on with them. finish() reads whatever is pending in the same way.
    """

    def __init__(self, model: MemoryModel, tokenizer, state: MemoryState | None = None, summary_batch: int = 1):
        if summary_batch < 1:
            raise ValueError("summary_batch must be at least 1")
        self.model = model
        self.summary_batch = summary_batch if model.has_recall else 1
        self.tokenizer = tokenizer
        self.state = state if state is not None else model.new_state()
        self._source: str | None = None
        self._chunker = TextChunker()
        self._ids: list[int] = []
        self._spans: list[tuple[int, int]] = []  # character span of each pending token in its source
        self._summaries: list[torch.Tensor] = []  # summaries S [d] of the first pending segments, from one batch

    @property
    def pending_tokens(self) -> int:
        return len(self._ids)

    def _switch(self, source: str) -> list[ReadSegment]:
        done = self.finish() if self._source is not None and source != self._source else []
        if source != self._source:
            self._source = source
            src = self.state.sources.setdefault(source, SourceText(source))
            self._chunker = TextChunker()
            self._chunker.start = len(src.text)
        return done

    def feed(self, text: str, source: str = "document", page: int | None = None, read: bool = True,
             stop: Callable[[], bool] | None = None) -> list[ReadSegment]:
        """Read a piece of `source`'s text (a page, a line, a few characters); `page` labels where it begins.
        read=False only tokenises it, for read_together to read with other readers' documents. stop() is asked
        after each segment read; when true, the segments still pending wait for the next feed or finish()."""
        done = self._switch(source)
        src = self.state.sources[source]
        if page is not None and (not src.page_numbers or src.page_numbers[-1] != page):
            src.page_starts.append(len(src.text))
            src.page_numbers.append(page)
        src.text += text
        for offset, chunk in self._chunker.push(text):
            self._add_chunk(offset, chunk)
        return done + (self._read_full_segments(stop=stop) if read else [])

    def feed_ids(self, ids: list[int], source: str = "tokens") -> list[ReadSegment]:
        """Read token ids directly; such a source has no text, and its segments' spans count tokens, not characters."""
        done = self._switch(source)
        start = self._chunker.start
        self._ids.extend(int(i) for i in ids)
        self._spans.extend((start + i, start + i + 1) for i in range(len(ids)))
        self._chunker.start += len(ids)
        return done + self._read_full_segments()

    def finish(self) -> list[ReadSegment]:
        """Read whatever is pending, including a last segment shorter than L."""
        if self._source is None:
            return []
        self._flush()
        done = self._read_full_segments(final=True)
        self.state.lexical.build()
        embed_sentences(self.model, self.state)
        return done

    def _flush(self) -> None:
        """Tokenise the text the chunker still holds, so that every fed character is pending as token ids."""
        for offset, chunk in self._chunker.push("", final=True):
            self._add_chunk(offset, chunk)

    def _add_chunk(self, offset: int, chunk: str) -> None:
        enc = self.tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
        self._ids.extend(enc["input_ids"])
        self._spans.extend((offset + a, offset + b) for a, b in enc["offset_mapping"])

    def _read_full_segments(self, final: bool = False, stop: Callable[[], bool] | None = None
                            ) -> list[ReadSegment]:
        """Read pending full segments one by one (final: also the last partial one), their summary passes run in
        batches of summary_batch once that many are pending (final: fewer); stop early, after a segment, when
        stop() is true."""
        length, done = self.model.segment_length, []
        while self._ids:
            if not self._summaries:
                if len(self._ids) // length < self.summary_batch and not final:
                    return done
                if self.summary_batch > 1:
                    count = min(self.summary_batch, -(-len(self._ids) // length))  # final: the partial one too
                    heads = [self._ids[i * length:(i + 1) * length] for i in range(count)]
                    # kept on the CPU: between two feeds the app hands a GPU back (ZeroGPU)
                    self._summaries = list(self.model.summarize_segments(heads).cpu())  # count x [d]
            summary = self._summaries.pop(0)[None].to(self.model.device) if self._summaries else None  # [1, d]
            done.append(self._read(min(length, len(self._ids)), summary))
            if stop is not None and stop():
                return done
        return done

    def _read(self, n: int, summary: torch.Tensor | None = None) -> ReadSegment:
        ids, spans = self._take(n)
        return self._record(ids, spans, self.model.read_segment(self.state, ids, self.state.num_segments,
                                                                summary=summary))

    def _take(self, n: int) -> tuple[list[int], list[tuple[int, int]]]:
        """The next n pending token ids and their character spans, no longer pending."""
        ids, spans = self._ids[:n], self._spans[:n]
        self._ids, self._spans = self._ids[n:], self._spans[n:]
        return ids, spans

    def _record(self, ids: list[int], spans: list[tuple[int, int]], result: SegmentResult) -> ReadSegment:
        """Add the segment just read (its memory already written) to the state: where it is, its token keys."""
        state, n = self.state, len(ids)
        src = state.sources[self._source]
        start, end = spans[0][0], max(b for _, b in spans)
        info = SegmentInfo(state.num_segments, self._source, start, end, src.page_at(start),
                           src.page_at(max(end - 1, start)), n)
        state.add_segment(info, result.token_keys)
        return ReadSegment(info, result.memory, result.recall_weights)


def read_step(readers: list[Reader], final: list[bool]) -> list[ReadSegment | None]:
    """One step of reading several documents together, each into its own memory: the next segment of every reader
    that has a full one pending (fed with read=False), as rows of one batch (HMT.read_segments: one summary pass and
    one main pass). A reader marked final has been fed all its text, so its last partial segment is read too. Returns
    each reader's segment, or None for a reader with nothing to read now."""
    model = readers[0].model
    if not model.has_recall or any(r.model is not model for r in readers):
        raise ValueError("documents are read together by readers of one HMT model")
    if any(r._summaries for r in readers):
        raise ValueError("documents are read together by readers fed with read=False")
    length = model.segment_length
    for reader, last in zip(readers, final):
        if last:
            reader._flush()
    active = [i for i, (r, last) in enumerate(zip(readers, final)) if len(r._ids) >= length or (last and r._ids)]
    done: list[ReadSegment | None] = [None] * len(readers)
    if active:
        taken = [readers[i]._take(min(length, len(readers[i]._ids))) for i in active]
        results = model.read_segments([readers[i].state for i in active], [ids for ids, _ in taken])
        for i, (ids, spans), result in zip(active, taken, results):
            done[i] = readers[i]._record(ids, spans, result)
    return done


def read_together(readers: list[Reader]) -> list[list[ReadSegment]]:
    """Read what several readers have pending (fed with read=False), each into its own memory, as rows of one
    batch: step t reads segment t of every document that still has one (read_step). The same segments and memories
    as each reader's finish() alone, to float tolerance; then each reader is finished. Returns each reader's
    segments."""
    done: list[list[ReadSegment]] = [[] for _ in readers]
    while any(step := read_step(readers, [True] * len(readers))):
        for segments, segment in zip(done, step):
            if segment is not None:
                segments.append(segment)
    for reader in readers:
        reader.finish()
    return done


def read_text(model: MemoryModel, tokenizer, text: str, source: str = "document", state: MemoryState | None = None
              ) -> MemoryState:
    """Read a whole text at once (convenience for scripts and tests)."""
    reader = Reader(model, tokenizer, state)
    reader.feed(text, source)
    reader.finish()
    return reader.state
