"""Turning uploads into a session's memory: check each file, load it from the disk cache or extract its pages and
read them through the model in bounded steps, reporting progress and stopping cleanly when cancelled."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.cache import MemoryCache, entry_key, file_digest, text_digest
from app.engine import Engine, EngineError, PieceText
from app.extract import Document, ExtractionError, extract_text, iter_pages, page_count
from app.session import DocumentRecord, Session

logger = logging.getLogger(__name__)

PIECE_CHARS = 2000  # text handed to the model per feed; small enough for steady progress
BATCH_SEGMENTS = 8  # segments per bounded model call (about 4 s on two CPU cores, far less on a GPU)
PROGRESS_SECONDS = 0.3  # least time between progress reports while extracting


@dataclass
class Upload:
    """A file path (from the upload box) or pasted text, with the name to show."""

    name: str
    path: Path | None = None
    text: str | None = None


@dataclass
class Progress:
    """One report of the work: phase ('extract', 'read', 'done'), fraction done of that phase, a one-line message,
    and the problems and notes collected so far."""

    phase: str
    fraction: float
    message: str
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Pending:
    """A document extracted and waiting to be read."""

    document: Document
    digest: str
    key: str
    tokens: int = 0


def _duration(seconds: float) -> str:
    """'45 s' or '3 min 20 s'."""
    seconds = max(0, round(seconds))
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def pieces_of(document: Document) -> list[PieceText]:
    """The document's pages, a blank line after each, cut into pieces of at most PIECE_CHARS characters."""
    pieces = []
    for n, page in enumerate(document.pages):
        text = page.text + ("\n\n" if n < len(document.pages) - 1 else "")
        pieces += [PieceText(text[i:i + PIECE_CHARS], page.number) for i in range(0, len(text), PIECE_CHARS)]
    return pieces


def ingest(session: Session, engine: Engine, cache: MemoryCache | None, uploads: list[Upload],
           password: str | None = None, max_bytes: int | None = None,
           batch_segments: int = BATCH_SEGMENTS) -> Iterator[Progress]:
    """Add uploads to the session's memory, yielding Progress; a bad upload is reported and skipped, a cancel
    keeps what was read (the document being read stays, marked as partly read), and nothing read before is lost."""
    errors: list[str] = []
    notes: list[str] = []
    changed = session.check_model(engine.fingerprint)
    if changed:
        notes.append(changed)
    fingerprint = engine.fingerprint
    session.cancel_requested = False
    pending: list[_Pending] = []
    seen: set[str] = set()
    for n, upload in enumerate(uploads):
        if session.cancel_requested:
            break
        try:
            if upload.path is not None:
                pages = page_count(upload.path, password or None, max_bytes)  # type, size, password, damage first
                digest = file_digest(upload.path)
            else:
                digest = text_digest(upload.text or "")
            known = session.has_digest(digest)
            if known is not None or digest in seen:
                notes.append(f"“{upload.name}” is already in memory{' as “' + known.name + '”' if known else ''}.")
                continue
            seen.add(digest)
            key = entry_key(digest, fingerprint)
            hit = cache.get(key) if cache is not None else None
            if hit is not None:
                state, info = hit
                record = DocumentRecord(session.unique_name(upload.name), digest, info.get("kind", "?"),
                                        info.get("pages", 0), 0, 0, info.get("tokens", 0), from_cache=True)
                session.add(state, record, engine.memory_segments)
                notes.append(f"“{upload.name}” was read before: loaded its memory from the cache.")
                notes += [f"“{upload.name}”: {note}" for note in state.notes]  # what loading had to repair
                yield Progress("extract", (n + 1) / len(uploads), f"Loaded “{upload.name}” from the cache.",
                               errors, notes)
                continue
            if upload.path is None:
                document = extract_text(upload.text or "", upload.name)
            else:
                document = None
                for progress in _extract(session, upload, pages, password, max_bytes, n / len(uploads),
                                         1 / len(uploads), errors, notes):
                    if isinstance(progress, Document):
                        document = progress
                    else:
                        yield progress
                if document is None:
                    break
            pending.append(_Pending(document, digest, key))
        except ExtractionError as err:
            errors.append(err.message)
        except Exception:  # a bug or an unforeseen file problem must not lose the other files
            logger.exception("could not read %s", upload.name)
            errors.append(f"“{upload.name}” could not be read because of an unexpected problem in the app. "
                          "Try another copy of the file, or save it as PDF or text first.")
    if session.cancel_requested:
        yield _cancelled(session, errors, notes)
        return
    if pending:
        yield from _read_all(session, engine, cache, pending, fingerprint, batch_segments, errors, notes)
        return
    yield Progress("done", 1.0, _summary(session, 0, 0.0), errors, notes)


def _extract(session: Session, upload: Upload, total: int, password: str | None, max_bytes: int | None,
             start: float, share: float, errors: list[str], notes: list[str]) -> Iterator[Progress | Document]:
    """Extract one file page by page, yielding Progress now and then and the Document last (none if cancelled)."""
    pages, last = [], 0.0
    for page in iter_pages(upload.path, password or None, max_bytes):
        if session.cancel_requested:
            return
        if page.text:
            pages.append(page)
        if time.monotonic() - last > PROGRESS_SECONDS:
            last = time.monotonic()
            yield Progress("extract", start + share * page.number / max(total, 1),
                           f"Extracting “{upload.name}”: page {page.number} of {total}", errors, notes)
    kind = upload.path.suffix.lower().lstrip(".")
    yield Document(upload.name, pages, {"htm": "html", "markdown": "md"}.get(kind, kind))


def _read_all(session: Session, engine: Engine, cache: MemoryCache | None, pending: list[_Pending],
              fingerprint: str, batch_segments: int, errors: list[str], notes: list[str]) -> Iterator[Progress]:
    """Read the extracted documents one by one, each into its own memory, then into the session and the cache."""
    L = engine.segment_length
    for item in pending:
        item.tokens = engine.count_tokens(item.document.text)
    total_segments = sum(max(1, math.ceil(item.tokens / L)) for item in pending)
    total_tokens = sum(item.tokens for item in pending)
    done_segments, done_tokens, reading_time = 0, 0, 0.0
    for number, item in enumerate(pending, 1):
        doc = item.document
        reader = engine.new_reader()
        pieces = pieces_of(doc)
        position = 0
        label = f"“{doc.name}”" + (f" ({number} of {len(pending)})" if len(pending) > 1 else "")
        try:
            while position < len(pieces) and not session.cancel_requested:
                start, before = time.monotonic(), reader.state.num_segments
                position += engine.read(reader, pieces[position:], doc.name, fingerprint, batch_segments)
                reading_time += time.monotonic() - start
                new = reader.state.segments[before:]
                done_segments += len(new)
                done_tokens += sum(s.num_tokens for s in new)
                yield Progress("read", min(done_segments / total_segments, 0.99),
                               _reading_line(label, reader, doc, done_tokens, total_tokens, reading_time),
                               errors, notes)
            cancelled = session.cancel_requested
            before, start = reader.state.num_segments, time.monotonic()
            engine.finish(reader, fingerprint)
            reading_time += time.monotonic() - start
            new = reader.state.segments[before:]
            done_segments += len(new)
            done_tokens += sum(s.num_tokens for s in new)
        except EngineError as err:
            errors.append(str(err))
            yield Progress("done", 1.0, "Stopped: the model was changed.", errors, notes)
            return
        state = reader.state
        last_page = state.segments[-1].page_end if state.segments else None
        record = DocumentRecord(session.unique_name(doc.name), item.digest, doc.kind, len(doc.pages), 0, 0,
                                sum(s.num_tokens for s in state.segments), complete=not cancelled,
                                last_page=last_page)
        if state.num_segments:
            if not cancelled and cache is not None:
                cache.put(item.key, state, {"name": doc.name, "kind": doc.kind, "pages": len(doc.pages),
                                            "tokens": record.tokens})
            session.add(state, record, engine.memory_segments)
        if cancelled:
            yield _cancelled(session, errors, notes, record if state.num_segments else None)
            return
    rate = done_tokens / reading_time if reading_time else 0.0
    yield Progress("done", 1.0, _summary(session, done_tokens, rate), errors, notes)


def _reading_line(label: str, reader, doc: Document, done_tokens: int, total_tokens: int, seconds: float) -> str:
    """'Reading “book.pdf”: segment 12 (p. 7 of 29) · 430 tokens/s · about 25 s left'."""
    state = reader.state
    page = state.segments[-1].page_end if state.segments else None
    where = f"p. {page} of {doc.pages[-1].number}" if page is not None else ""
    rate = done_tokens / seconds if seconds else 0.0
    left = f"about {_duration((total_tokens - done_tokens) / rate)} left" if rate else "estimating time left"
    return f"Reading {label}: segment {state.num_segments} ({where}) · {rate:.0f} tokens/s · {left}"


def _cancelled(session: Session, errors: list[str], notes: list[str],
               partial: DocumentRecord | None = None) -> Progress:
    """The report after a cancel: what was kept."""
    if partial is not None:
        upto = f" up to p. {partial.last_page}" if partial.last_page is not None else ""
        notes.append(f"Cancelled: “{partial.name}” was read{upto} and kept; the files after it were not read.")
    else:
        notes.append("Cancelled: nothing new was read; the memory is as it was.")
    session.cancel_requested = False
    return Progress("done", 1.0, "Cancelled. " + _summary(session, 0, 0.0), errors, notes)


def _summary(session: Session, tokens: int, rate: float) -> str:
    """'Memory ready: 2 documents, 57 segments.' plus the reading speed when something was read."""
    if not session.ready:
        return "No documents in memory yet."
    n_docs = len(session.documents)
    speed = f" Read {tokens:,} tokens at {rate:.0f} tokens/s." if tokens and rate else ""
    n_segments = session.memory.num_segments
    return (f"Memory ready: {n_docs} document{'s' if n_docs != 1 else ''}, "
            f"{n_segments} segment{'s' if n_segments != 1 else ''}.{speed}")
