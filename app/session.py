"""One browser session's documents, memory and chat; sessions share nothing but the model.

A session's memory is the concatenation of its documents' memories (each document is read from an empty memory,
which is what makes a document cacheable on its own) followed by the chat turns written into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.pages import Cited, KeptPdf, ViewCache
from hmt_core import MemoryState
from hmt_core.answer import CHAT_SOURCE


@dataclass
class DocumentRecord:
    """A document in a session's memory: where its segments are and how it got there."""

    name: str
    digest: str
    kind: str
    pages: int
    first_segment: int
    segments: int
    tokens: int
    from_cache: bool = False
    complete: bool = True
    last_page: int | None = None


@dataclass
class Session:
    """Per-browser-session data, kept in a gr.State (Gradio gives each session its own copy)."""

    memory: MemoryState | None = None
    fingerprint: str = ""
    documents: list[DocumentRecord] = field(default_factory=list)
    chat: list[dict] = field(default_factory=list)
    busy: bool = False
    cancel_requested: bool = False
    # the document's own memory of each partly read document, by digest, so that reading it again continues it
    partial: dict[str, MemoryState] = field(default_factory=dict)
    # the bytes of its PDFs by digest, in memory only, to render cited pages (app/pages.keep_originals)
    originals: dict[str, KeptPdf] = field(default_factory=dict)
    cited: dict[str, Cited] = field(default_factory=dict)  # what each citation of the last answer shows
    viewing: tuple[Cited, int] | None = None  # the citation on view and the page shown
    views: ViewCache = field(default_factory=ViewCache)  # the newest page views, made on demand

    @property
    def ready(self) -> bool:
        """True when there is at least one document's memory to answer from."""
        return self.memory is not None and any(doc.segments for doc in self.documents)

    def has_digest(self, digest: str) -> DocumentRecord | None:
        """The document with these bytes, if it is already in memory."""
        return next((doc for doc in self.documents if doc.digest == digest), None)

    def unique_name(self, name: str) -> str:
        """name, or 'name (2)' when another document in memory already has that name."""
        taken = {doc.name for doc in self.documents} | {CHAT_SOURCE}
        if name not in taken:
            return name
        stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
        n = 2
        while (candidate := f"{stem} ({n}){dot}{ext}") in taken:
            n += 1
        return candidate

    def add(self, state: MemoryState, record: DocumentRecord, keep: int) -> None:
        """Append a document's memory (read on its own) to the session memory, under record.name, keeping the
        newest `keep` cached memories (MemoryState.extend)."""
        state = state.renamed(next(iter(state.sources), record.name), record.name)
        record.first_segment = self.memory.num_segments if self.memory is not None else 0
        record.segments = state.num_segments
        self.memory = state.copy().to("cpu") if self.memory is None else self.memory.extend(state, keep)
        self.documents.append(record)

    def replace(self, old: DocumentRecord, state: MemoryState, record: DocumentRecord, keep: int) -> None:
        """Put a document's continued memory (state: read on its own) in place of its partly read one `old`: the old
        segments leave the memory and the document joins at the end, under the same name."""
        self.memory = self.memory.without(old.name)
        self.documents.remove(old)
        if not self.memory.num_segments:
            self.memory = None
        record.name = old.name
        self.add(state, record, keep)
        for doc in self.documents:
            doc.first_segment = next(s.index for s in self.memory.segments if s.source == doc.name)

    def check_model(self, fingerprint: str) -> str | None:
        """Clear a memory built by another model; returns the message to show when that happened."""
        if self.fingerprint == fingerprint:
            return None
        had = bool(self.documents)
        self.clear()
        self.fingerprint = fingerprint
        if had:
            return ("The model was changed, so the memory built with the previous model was cleared. "
                    "Add your documents again to read them with the new model.")
        return None

    def clear(self) -> None:
        """Forget every document (with the PDF bytes kept for its pages and the page views) and the chat."""
        self.memory = None
        self.documents = []
        self.chat = []
        self.partial = {}
        self.originals = {}
        self.cited = {}
        self.viewing = None
        self.views = ViewCache()

    def document(self, name: str) -> DocumentRecord | None:
        """The document in memory under this name."""
        return next((doc for doc in self.documents if doc.name == name), None)

