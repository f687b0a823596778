"""Turning uploads into a session's memory: check each file, load it from the disk cache or extract its pages and
read them through the model in bounded steps, reporting progress and stopping cleanly when cancelled."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.cache import CacheDamaged, Expect, MemoryCache, entry_key
from app.engine import SUMMARY_BATCH, Engine, EngineError, PieceText, TogetherRead
from app.extract import Document, ExtractionError, OpenedDocument, open_document, open_text
from app.session import DocumentRecord, Session
from hmt_core import MemoryState, Reader, SegmentInfo

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
class RunReport:
    """One ingest run's bookkeeping: the problems and notes for the page, and what was read so far (segments,
    tokens and seconds spent in model calls) out of the tokens to read."""

    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    total_tokens: int = 0
    segments: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def count(self, segments: list[SegmentInfo], seconds: float) -> None:
        """Add segments just read, and the time their model call took."""
        self.segments += len(segments)
        self.tokens += sum(s.num_tokens for s in segments)
        self.seconds += seconds

    @property
    def rate(self) -> float:
        """Tokens read per second of model calls (0 before anything was read)."""
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass
class Progress:
    """One report of the work: phase ('extract', 'read', 'done'), fraction done of that phase, a one-line message,
    and the run's report so far (its errors and notes are what the page lists)."""

    phase: str
    fraction: float
    message: str
    report: RunReport = field(default_factory=RunReport)

    @property
    def errors(self) -> list[str]:
        return self.report.errors

    @property
    def notes(self) -> list[str]:
        return self.report.notes


@dataclass
class _Pending:
    """A document extracted and waiting to be read; `key` is its cache key, None when it is not to be cached."""

    document: Document
    digest: str
    key: str | None
    tokens: int = 0
    resumes: DocumentRecord | None = None  # the partly read document this continues (its memory: session.partial)


def _duration(seconds: float) -> str:
    """'45 s' or '3 min 20 s'."""
    seconds = max(0, round(seconds))
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def pieces_of(document: Document, skip: int = 0) -> list[PieceText]:
    """The document's pages, a blank line after each, cut into pieces of at most PIECE_CHARS characters, leaving out
    the first `skip` characters (those a partly read document's memory already holds)."""
    pieces = []
    for n, page in enumerate(document.pages):
        text = page.text + ("\n\n" if n < len(document.pages) - 1 else "")
        if skip >= len(text):
            skip -= len(text)
            continue
        text, skip = text[skip:], 0
        pieces += [PieceText(text[i:i + PIECE_CHARS], page.number) for i in range(0, len(text), PIECE_CHARS)]
    return pieces


def ingest(session: Session, engine: Engine, cache: MemoryCache | None, uploads: list[Upload],
           password: str | None = None, max_bytes: int | None = None,
           batch_segments: int = BATCH_SEGMENTS) -> Iterator[Progress]:
    """Add uploads to the session's memory, yielding Progress; a bad upload is reported and skipped, several new
    documents are read together, a cancel keeps what was read (the documents being read stay, marked as partly
    read), and nothing read before is lost."""
    report = RunReport()
    changed = session.check_model(engine.fingerprint)
    if changed:
        report.notes.append(changed)
    fingerprint = engine.fingerprint
    expect = engine.expected_memory()
    session.cancel_requested = False
    pending: list[_Pending] = []
    seen: set[str] = set()
    for n, upload in enumerate(uploads):
        if session.cancel_requested:
            break
        try:
            if upload.path is None:
                opened = open_text(upload.text or "", upload.name)
            else:  # type, size, password and damage are checked here, before any page is extracted
                opened = open_document(upload.path, upload.name, password or None, max_bytes)
            known = session.has_digest(opened.digest)
            resumes = known if known is not None and opened.digest in session.partial else None
            if (known is not None and resumes is None) or opened.digest in seen:
                report.notes.append(f"“{upload.name}” is already in memory"
                                    f"{' as “' + known.name + '”' if known else ''}.")
                continue
            seen.add(opened.digest)
            # the text of a password-protected PDF is never written to disk, so it is not cached
            key = entry_key(opened.digest, fingerprint) if cache is not None and not opened.encrypted else None
            hit = _cached(cache, key, expect, upload.name, report) if key and resumes is None else None
            if hit is not None:
                state, info = hit
                if len(state.sentences) < state.num_segments:
                    engine.embed_sentences(state, fingerprint)
                record = DocumentRecord(session.unique_name(upload.name), opened.digest, info.get("kind", "?"),
                                        info.get("pages", 0), 0, 0, info.get("tokens", 0), from_cache=True)
                session.add(state, record, engine.memory_segments)
                report.notes.append(_read_note(upload.name))
                yield Progress("extract", (n + 1) / len(uploads), _read_note(upload.name), report)
                continue
            document = yield from _extract(session, opened, n / len(uploads), 1 / len(uploads), report)
            if document is None:
                break
            pending.append(_Pending(document, opened.digest, key, resumes=resumes))
        except ExtractionError as err:
            report.errors.append(err.message)
        except Exception:  # a bug or an unforeseen file problem must not lose the other files
            logger.exception("could not read %s", upload.name)
            report.errors.append(f"“{upload.name}” could not be read because of an unexpected problem in the app. "
                                 "Try another copy of the file, or save it as PDF or text first.")
    if session.cancel_requested:
        yield _cancelled(session, report)
        return
    if pending:
        yield from _read_all(session, engine, cache, pending, expect, batch_segments, report)
        return
    yield Progress("done", 1.0, _summary(session), report)


def _read_note(name: str) -> str:
    """The note for a document now in memory: the same whether it was read now or its memory came from the cache,
    so that no session learns what another one read (the server's log says which)."""
    return f"Read “{name}”."


def _cached(cache: MemoryCache, key: str, expect: Expect, name: str, report: RunReport
            ) -> tuple[MemoryState, dict] | None:
    """The cached memory of a document, or None: not cached, or damaged (dropped, with a note, to be read again)."""
    try:
        hit = cache.get(key, expect)
    except CacheDamaged:
        report.notes.append(f"The stored memory of “{name}” was damaged, so it was read again.")
        return None
    if hit is not None:
        logger.info("“%s”: memory loaded from the cache entry %s", name, key)
    return hit


def _extract(session: Session, opened: OpenedDocument, start: float, share: float,
             report: RunReport) -> Generator[Progress, None, Document | None]:
    """Extract an opened document page by page, yielding Progress now and then; returns the Document (None if
    cancelled)."""
    pages, last = [], 0.0
    for page in opened.pages:
        if session.cancel_requested:
            return None
        if page.text:
            pages.append(page)
        if time.monotonic() - last > PROGRESS_SECONDS:
            last = time.monotonic()
            yield Progress("extract", start + share * page.number / max(opened.page_count, 1),
                           f"Extracting “{opened.name}”: page {page.number} of {opened.page_count}", report)
    return Document(opened.name, pages, opened.kind)


def _read_all(session: Session, engine: Engine, cache: MemoryCache | None, pending: list[_Pending],
              expect: Expect, batch_segments: int, report: RunReport) -> Iterator[Progress]:
    """Read the extracted documents, each into its own memory, then into the session and the cache: several new
    ones together (_read_documents_together), else one by one."""
    fingerprint = expect.fingerprint
    L = engine.segment_length
    for item in pending:
        item.tokens = engine.count_tokens(item.document.text[_chars_read(session, item):])
    total_segments = sum(max(1, math.ceil(item.tokens / L)) for item in pending)
    report.total_tokens = sum(item.tokens for item in pending)
    if len(pending) > 1 and engine.has_recall and all(item.resumes is None for item in pending):
        yield from _read_documents_together(session, engine, cache, pending, expect, batch_segments, total_segments,
                                            report)
        return
    for number, item in enumerate(pending, 1):
        doc = item.document
        batch = min(SUMMARY_BATCH, batch_segments)  # a summary batch no larger than one bounded call's segments
        if item.resumes is None:
            reader, source, done = engine.new_reader(summary_batch=batch), doc.name, 0
        else:  # go on from the memory the cancelled read left, with the text after what it read
            reader = engine.new_reader(session.partial[item.digest], summary_batch=batch)
            source, done = next(iter(reader.state.sources)), _chars_read(session, item)
            report.notes.append(f"Continued “{item.resumes.name}” from where its reading stopped"
                                f"{f' (p. {item.resumes.last_page})' if item.resumes.last_page else ''}.")
        pieces = iter(pieces_of(doc, skip=done))
        label = f"“{doc.name}”" + (f" ({number} of {len(pending)})" if len(pending) > 1 else "")
        try:
            while not session.cancel_requested:
                start = time.monotonic()
                new = engine.read(reader, pieces, source, fingerprint, batch_segments)
                report.count(new, time.monotonic() - start)
                if not new:  # the pieces ran out
                    break
                yield Progress("read", min(report.segments / total_segments, 0.99),
                               _reading_line(label, reader, doc, report), report)
            cancelled = session.cancel_requested
            start = time.monotonic()
            report.count(engine.finish(reader, fingerprint), time.monotonic() - start)
        except GeneratorExit:
            _keep_after_closed(session, engine, cache, expect, [(item, reader, False)], doc.name)
            raise
        except EngineError as err:
            report.errors.append(str(err))
            yield Progress("done", 1.0, "Stopped: the model was changed.", report)
            return
        record = _keep(session, cache, item, reader, expect, complete=not cancelled, keep=engine.memory_segments)
        if cancelled:
            yield _cancelled(session, report, [record] if record is not None else [])
            return
        if record is not None:
            report.notes.append(_read_note(doc.name))
            logger.info("read “%s”: %d segments", doc.name, record.segments)
    logger.info("read %d tokens at %.0f tokens/s", report.tokens, report.rate)
    yield Progress("done", 1.0, _summary(session), report)


def _read_documents_together(session: Session, engine: Engine, cache: MemoryCache | None, pending: list[_Pending],
                             expect: Expect, batch_segments: int, total_segments: int, report: RunReport
                             ) -> Iterator[Progress]:
    """Read several new documents together, as rows of one batch, each into its own memory (Engine.read_together),
    in bounded steps with progress; then each into the session and the cache, in upload order. A cancel keeps every
    document as far as it was read, each marked partly read unless it was read to its end."""
    fingerprint = expect.fingerprint
    job = TogetherRead([engine.new_reader(summary_batch=1) for _ in pending],
                       [iter(pieces_of(item.document)) for item in pending],
                       [item.document.name for item in pending], [False] * len(pending))
    label = f"{len(pending)} documents together"
    steps = max(1, batch_segments // len(pending))  # about batch_segments segments per call, as when read alone
    try:
        while not session.cancel_requested:
            start = time.monotonic()
            new = engine.read_together(job, fingerprint, steps)
            report.count([segment for segments in new for segment in segments], time.monotonic() - start)
            if not any(new):  # every document has been read
                break
            yield Progress("read", min(report.segments / total_segments, 0.99),
                           f"Reading {label}: {report.segments} of about {total_segments} segments · "
                           f"{_speed(report)}", report)
        cancelled = session.cancel_requested
        for reader in job.readers:
            start = time.monotonic()
            report.count(engine.finish(reader, fingerprint), time.monotonic() - start)
    except GeneratorExit:
        _keep_after_closed(session, engine, cache, expect, list(zip(pending, job.readers, job.fed)), label)
        raise
    except EngineError as err:
        report.errors.append(str(err))
        yield Progress("done", 1.0, "Stopped: the model was changed.", report)
        return
    partial = []
    for item, reader, fed in zip(pending, job.readers, job.fed):  # fed: all its text given, so all of it read
        record = _keep(session, cache, item, reader, expect, complete=fed, keep=engine.memory_segments)
        if record is not None and fed:
            report.notes.append(_read_note(item.document.name))
        elif record is not None:
            partial.append(record)
    if cancelled:
        yield _cancelled(session, report, partial, later_files=False)
        return
    logger.info("read %d documents together: %d tokens at %.0f tokens/s", len(pending), report.tokens, report.rate)
    yield Progress("done", 1.0, _summary(session), report)


def _keep_after_closed(session: Session, engine: Engine, cache: MemoryCache | None, expect: Expect,
                       reads: list[tuple[_Pending, Reader, bool]], label: str) -> None:
    """Reading was cancelled from outside (an API client's job.cancel() closes the generator): keep what each
    reader read, as Cancel does, each document complete only if all its text was read (nothing is kept if the model
    was changed meanwhile)."""
    try:
        for _, reader, _ in reads:
            engine.finish(reader, expect.fingerprint)
    except EngineError:
        return
    for item, reader, complete in reads:
        _keep(session, cache, item, reader, expect, complete=complete, keep=engine.memory_segments)
    session.cancel_requested = False
    logger.info("reading %s was cancelled from outside after %d segments", label,
                sum(reader.state.num_segments for _, reader, _ in reads))


def _keep(session: Session, cache: MemoryCache | None, item: _Pending, reader: Reader, expect: Expect,
          complete: bool, keep: int) -> DocumentRecord | None:
    """Put what the reader read of a document into the session (and, when it read all of it, the cache); returns
    its record, or None when not one segment was read."""
    doc, state = item.document, reader.state
    if not state.num_segments:
        return None
    record = DocumentRecord(session.unique_name(doc.name), item.digest, doc.kind, len(doc.pages), 0, 0,
                            sum(s.num_tokens for s in state.segments), complete=complete,
                            last_page=state.segments[-1].page_end)
    if complete and cache is not None and item.key is not None:  # no key: not to be cached (an encrypted PDF)
        cache.put(item.key, state, expect, {"name": doc.name, "kind": doc.kind, "pages": len(doc.pages),
                                            "tokens": record.tokens})
    if complete:
        session.partial.pop(item.digest, None)
    else:  # kept so that adding the same file again goes on from here
        session.partial[item.digest] = state
    if item.resumes is not None:
        session.replace(item.resumes, state, record, keep)
    else:
        session.add(state, record, keep)
    return record


def _chars_read(session: Session, item: _Pending) -> int:
    """How many characters of a pending document its memory already holds: 0, or the length of the text its
    partly read memory was read from (the document's text from there on is what is left to read)."""
    if item.resumes is None:
        return 0
    return len(next(iter(session.partial[item.digest].sources.values())).text)


def _reading_line(label: str, reader: Reader, doc: Document, report: RunReport) -> str:
    """'Reading “book.pdf”: segment 12 (p. 7 of 29) · 430 tokens/s · about 25 s left'."""
    state = reader.state
    page = state.segments[-1].page_end if state.segments else None
    where = f"p. {page} of {doc.pages[-1].number}" if page is not None else ""
    return f"Reading {label}: segment {state.num_segments} ({where}) · {_speed(report)}"


def _speed(report: RunReport) -> str:
    """'430 tokens/s · about 25 s left'."""
    rate = report.rate
    left = (f"about {_duration((report.total_tokens - report.tokens) / rate)} left" if rate
            else "estimating time left")
    return f"{rate:.0f} tokens/s · {left}"


def _cancelled(session: Session, report: RunReport, partial: list[DocumentRecord] | None = None,
               later_files: bool = True) -> Progress:
    """The report after a cancel: what was kept (the documents partly read; later_files: the files after them were
    not begun)."""
    for record in partial or []:
        upto = f" up to p. {record.last_page}" if record.last_page is not None else ""
        rest = "; the files after it were not read." if later_files else "."
        report.notes.append(f"Cancelled: “{record.name}” was read{upto} and kept{rest}")
    if not partial:
        report.notes.append("Cancelled: nothing new was read; the memory is as it was.")
    session.cancel_requested = False
    return Progress("done", 1.0, "Cancelled. " + _summary(session), report)


def _summary(session: Session) -> str:
    """'Memory ready: 2 documents, 57 segments.' (the reading speed is shown while reading, and logged: a summary
    without it reads the same whether memories were read now or came from the cache)."""
    if not session.ready:
        return "No documents in memory yet."
    n_docs = len(session.documents)
    n_segments = session.memory.num_segments
    return (f"Memory ready: {n_docs} document{'s' if n_docs != 1 else ''}, "
            f"{n_segments} segment{'s' if n_segments != 1 else ''}.")
