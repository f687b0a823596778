"""What the page can ask the server to do: reading uploads, answering, the model and the panels. Each handler
takes plain values and a Session and yields (or returns) {name: value} dicts of only what changes, so tests drive
the whole flow without a browser; ui.py lays out the page and wires these to its components by name."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from app import pages, views
from app.cache import MemoryCache
from app.engine import Engine, EngineError
from app.extract import MB
from app.ingest import Progress, Upload, ingest
from app.pages import Cited
from app.session import Session
from app.uploads import discard
from hmt_core import DEFAULT_BACKBONE, MemoryState, Passage
from hmt_core.answer import CHAT_SOURCE
from hmt_core.config import RECALL_CHANNELS
from hmt_core.evidence import Evidence

logger = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 2000
TEXT_VIEW_CHARS = 6000  # most of a text page shown around the evidence (an EPUB chapter can be far longer)
EXAMPLE = Path(__file__).resolve().parent.parent / "assets" / "pride_and_prejudice_ch1-7.pdf"
CHANNEL_CHOICES = [("HMT memory", "memory"), ("Words (lexical index)", "lexical"), ("Token keys", "token"),
                   ("Sentences (sentence embeddings)", "sentence")]
Update = dict[str, Any]
ADMIN_OFF = ("Switching the model is turned off on this server. An operator turns it on by starting the app with "
             "`--admin-secret` (or the `HMT_ADMIN_SECRET` environment variable), or with `--local-admin` when it "
             "listens on 127.0.0.1 only.")
ADMIN_WRONG = ("That admin secret is not correct. Type the secret the server was started with in the **Admin secret** "
               "box, then press **Load model** again.")
ADMIN_NOT_LOCAL = ("Switching the model is allowed only from the server's own machine (`--local-admin`). Open the "
                   "page there, or ask the operator to start the app with `--admin-secret`.")


def is_loopback(host: str | None) -> bool:
    """Whether an address or host name is this machine's loopback (127.0.0.0/8, ::1 or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def who(request: gr.Request | None) -> str:
    """'session 1a2b3c from 203.0.113.9': the Gradio session and client address of a request, for the log."""
    client = getattr(request, "client", None)
    return f"session {getattr(request, 'session_hash', None)} from {getattr(client, 'host', None)}"


@dataclass(frozen=True)
class Admin:
    """Who may switch or reload the one shared model (which clears every session's memory): nobody by default;
    whoever types `secret` (--admin-secret); and, with `local` (--local-admin, which app.py allows only when the
    server listens on loopback alone), clients on this machine."""

    secret: str | None = None
    local: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.secret) or self.local

    def refusal(self, secret: str | None, request: gr.Request | None) -> str | None:
        """Why this request may not switch the model, as a message for the page; None when it may."""
        client = getattr(getattr(request, "client", None), "host", None)
        if self.local and is_loopback(client):
            return None
        if self.secret:
            given = (secret or "").encode()
            return None if hmac.compare_digest(given, self.secret.encode()) else ADMIN_WRONG
        return ADMIN_NOT_LOCAL if self.local else ADMIN_OFF


def parse_channels(value: list[str] | tuple[str, ...] | str | None) -> tuple[str, ...] | None:
    """The recall channels asked for, checked: None = every channel the model weighs; else names from
    RECALL_CHANNELS (a list, or one comma-separated string), where none at all means memory only (the paper's HMT).
    Raises ValueError with a message for the page on anything else."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [name.strip() for name in value.split(",") if name.strip()]
    known = ", ".join(RECALL_CHANNELS)
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"Recall channels must be a list of names ({known}), not {value!r}.")
    unknown = [name for name in value if name not in RECALL_CHANNELS]
    if unknown:
        raise ValueError(f"Unknown recall channel {', '.join(map(repr, unknown))}: choose from {known} "
                         "(an empty list means memory only).")
    return tuple(dict.fromkeys(value)) or ("memory",)


class Handlers:
    """Everything the page can ask the server to do, for one shared engine and disk cache. `uploads` is the folder
    Gradio stores uploads in (default: its upload folder); files given to ingest from there are deleted once read."""

    def __init__(self, engine: Engine, cache: MemoryCache | None, max_file_mb: float = 100.0,
                 admin: Admin | None = None, uploads: str | Path | None = None) -> None:
        self.engine = engine
        self.cache = cache
        self.max_bytes = int(max_file_mb * MB)
        self.admin = admin or Admin()
        self.uploads = Path(uploads or get_upload_folder())
        self._reading: Counter[str] = Counter()  # upload paths -> ingest calls using them
        self._reading_lock = threading.Lock()

    # --- reading ---------------------------------------------------------------------------------------------

    def ingest(self, files: list[str] | None, text: str | None, password: str | None,
               session: Session) -> Iterator[Update]:
        """Read uploaded files and pasted text into the session's memory, yielding progress. When the call ends
        (read, rejected, cancelled or the page closed), the bytes of the PDFs now in memory are kept in the session
        (to render cited pages; pages.keep_originals) and the uploads it was given are deleted, but for those another
        call is still reading (two sessions may upload the same file, which Gradio stores once)."""
        yield from self._read(files, text, password, session, keep_pages=True)

    def _read(self, files: list[str] | None, text: str | None, password: str | None, session: Session,
              keep_pages: bool) -> Iterator[Update]:
        paths = [str(f) for f in files or []]
        with self._reading_lock:
            self._reading.update(paths)
        try:
            yield from self._ingest(paths, text, password, session)
        finally:
            if keep_pages:
                pages.keep_originals(session, paths)
            with self._reading_lock:
                self._reading.subtract(paths)
                done = [path for path in paths if self._reading[path] <= 0]
            discard(done, self.uploads)

    def _ingest(self, files: list[str], text: str | None, password: str | None, session: Session
                ) -> Iterator[Update]:
        uploads = [Upload(Path(f).name, path=Path(f)) for f in files]
        if text and text.strip():
            uploads.append(Upload("pasted text", text=text))
        if not uploads:
            yield {"status": "Add a file (or paste text) first, then press **Read into memory**.", "session": session}
            return
        if session.busy:
            yield {"status": "Still busy with the previous request; wait for it (or press **Cancel**), then add "
                             "your files or text again.", "files": None, "session": session}
            return
        session.busy = True
        try:
            yield {"progress": views.progress_html(0.0, "Starting…"), "status": "", "cancel": gr.update(visible=True),
                   **self._chat_enabled(False)}
            last = Progress("done", 1.0, "")
            for last in ingest(session, self.engine, self.cache, uploads, password, self.max_bytes):
                state = "done" if last.phase == "done" else "running"
                yield {"progress": views.progress_html(last.fraction, last.message, state),
                       "progress_line": last.message, "status": self._status(last),
                       "documents": views.documents_markdown(session), "session": session}
        finally:
            session.busy = False
        yield {"progress": views.progress_html(1.0 if session.ready else 0.0, last.message,
                                               "done" if session.ready else "idle"),
               "status": self._status(last), "documents": views.documents_markdown(session),
               "memory": self.memory_panel(session), "cancel": gr.update(visible=False), "session": session,
               "files": None, **self._chat_enabled(session.ready)}

    def ingest_example(self, session: Session) -> Iterator[Update]:
        """Read the bundled example document (Pride and Prejudice, chapters 1-7)."""
        yield from self.ingest([str(EXAMPLE)], None, None, session)

    def cancel(self, session: Session) -> Update:
        """Ask a running read to stop after its current step; what was read is kept."""
        if not session.busy:
            return {"status": "Nothing is being read right now."}
        session.cancel_requested = True
        return {"status": "Cancelling after the current step…"}

    def clear(self, session: Session) -> Update:
        """Forget this session's documents and chat."""
        if session.busy:
            return {"status": "Still busy; press **Cancel** first."}
        session.clear()
        return {"status": "Memory cleared.", "documents": views.documents_markdown(session), "chat": [],
                "memory": self.memory_panel(session), "chart": self._chart(None, None), "passages":
                views.passages_html(None, [], ""), "progress": views.progress_html(0.0, "", "idle"),
                "session": session, **self._page_nav(session, views.page_empty_html()), **self._chat_enabled(False)}

    @staticmethod
    def _status(progress: Progress) -> str:
        """Problems first (one line each), then notes; as text (they name the user's files), never as Markdown."""
        lines = [f"⚠️ {views.md_text(e)}" for e in progress.errors] + [f"ℹ️ {views.md_text(n)}" for n in progress.notes]
        return "\n\n".join(lines)

    @staticmethod
    def _chat_enabled(enabled: bool) -> Update:
        placeholder = ("Ask about your documents…" if enabled
                       else "Add a document first; chat opens when memory is ready.")
        return {"question": gr.update(interactive=enabled, placeholder=placeholder),
                "ask": gr.update(interactive=enabled)}

    # --- answering -------------------------------------------------------------------------------------------

    def question_problem(self, question: str | None, session: Session) -> str | None:
        """Why a question cannot be answered now, or None."""
        changed = session.check_model(self.engine.fingerprint)
        if changed:
            return changed
        question = (question or "").strip()
        if session.busy:
            return "Wait until reading finishes (or press **Cancel**), then ask."
        if not session.ready:
            return "Add a document first: drop a file on the left or paste text, then ask about it."
        if not question:
            return "Type a question first."
        if len(question) > MAX_QUESTION_CHARS:
            return (f"Your question is {len(question):,} characters long; the limit is {MAX_QUESTION_CHARS:,}. "
                    "Shorten it and ask again.")
        return None

    def ask(self, question: str | None, session: Session, mode: str = "reread", max_new_tokens: int = 200,
            temperature: float = 0.0, channels: list[str] | str | None = None, use_adapter: bool = True,
            not_found: bool = True) -> Iterator[Update]:
        """Answer from memory with the recall channels asked for (parse_channels), with the answer adapter (when
        loaded and use_adapter) and an honest 'not found' (when not_found and recall, or the adapter's probe, is
        unsure), streaming the answer, the recall chart (split by channel) and the recalled passages (with why each
        was recalled)."""
        problem = self.question_problem(question, session)
        try:
            wanted = parse_channels(channels)
        except ValueError as err:
            problem = str(err)
        if problem:
            yield {"ask_status": problem, "chat": list(session.chat), "session": session,
                   **self._chat_enabled(session.ready and not session.busy)}
            return
        question = question.strip()
        state, fingerprint = session.memory, session.fingerprint
        session.busy = True
        # the chat shows the question and the answer as text: the model's Markdown, HTML or URLs never become live
        session.chat += [{"role": "user", "content": views.md_text(question)}, {"role": "assistant", "content": ""}]
        answer, passages, used, evidence, found, why = "", [], (), [], True, None
        result = {"answer": "", "citations": [], "evidence": None}
        try:
            yield {"chat": self._chat(session), "question": gr.update(value="", interactive=False),
                   "ask": gr.update(interactive=False), "ask_status": "Recalling from memory…"}
            recalled = False
            for event in self.engine.answer(state, question, fingerprint, mode, int(max_new_tokens),
                                            float(temperature), wanted, bool(use_adapter), bool(not_found)):
                if event.kind == "recall" and not recalled:  # the question's own recall (not a roll-over's)
                    recalled = True
                    passages, detail = event.passages, event.recall
                    used = detail.channels if detail is not None else ()
                    session.cited = self._targets(state, passages, [])
                    yield {"chart": self._chart(state, event.weights, detail),
                           "passages": views.passages_html(state, passages, question), "ask_status": "Answering…"}
                elif event.kind == "token":
                    answer += event.text
                    session.chat[-1] = {"role": "assistant", "content": views.md_text(answer)}
                    yield {"chat": self._chat(session)}
                elif event.kind == "done":
                    answer = event.text  # cut short, marked with " …", when the model started to loop
                    evidence, found, why = event.evidence, event.found, event.not_found_by
            cites = views.citation_line(passages, found)
            said = views.evidence_line(evidence, found)
            reason = views.not_found_line(why) if not found else ""
            shown = views.md_text(answer.strip() or "(The model gave no answer.)") + (
                f"\n\n*{views.md_text(reason)}*" if reason else "") + (
                f"\n\n*{views.md_text(cites)}*" if cites else "") + (f"\n\n{views.md_text(said)}" if said else "")
            session.chat[-1] = {"role": "assistant", "content": shown}
            session.cited = self._targets(state, passages, evidence, answer if found else "")
            self.engine.remember(state, question, answer, fingerprint)
            result = {"answer": answer.strip(), "citations": views.citations(passages, used),
                      "evidence": views.evidence_data(evidence, passages, found, answer, why),
                      "found": found}
            status = ""
        except EngineError as err:
            session.chat = session.chat[:-2]
            status = str(err)
            session.check_model(self.engine.fingerprint)
        finally:
            session.busy = False
        final = ({"passages": views.passages_html(state, passages, question, evidence, found, answer)} if passages
                 else {})
        yield {"chat": self._chat(session), "ask_status": status, "memory": self.memory_panel(session),
               "result": result, "session": session, "documents": views.documents_markdown(session),
               **final, **self._chat_enabled(session.ready)}

    @staticmethod
    def _targets(state: MemoryState, passages: list[Passage], evidence: list[Evidence],
                 answer: str = "") -> dict[str, Cited]:
        """What each citation shows when clicked: 'evidence' (the answer's evidence) and each document passage by
        its number (views.documents_first), with the passage's own best sentence marked, or before the answer
        is done the whole passage; inside the answer's evidence, where the answer (empty after a 'not found')
        stands in it word for word (views.answer_in)."""
        quoted = views.answer_in(evidence[0], answer) if evidence and answer else None
        targets = {}
        for n, passage in enumerate(views.documents_first(passages), 1):
            if passage.source == CHAT_SOURCE:
                continue
            best = views.evidence_in(passage, evidence)
            start, end = (best.char_start, best.char_end) if best else (passage.char_start, passage.char_end)
            page = best.page if best else passage.page_start
            inside = quoted if quoted and best is evidence[0] else (None, None)
            targets[str(n)] = Cited(passage.source, page, start, end, passage.char_start, passage.char_end, *inside)
            if evidence and best is evidence[0]:
                targets["evidence"] = targets[str(n)]
        source = state.sources
        return {k: v for k, v in targets.items() if v.source in source}

    # --- the cited page --------------------------------------------------------------------------------------

    def show_cited(self, session: Session, evt: gr.SelectData) -> Update:
        """Show the page of the citation clicked (evt.value: 'evidence' or a passage's number, from the passages'
        data-cite): a PDF's page as an image with the evidence's boxes, else the page's text with it marked."""
        cited = session.cited.get(str(evt.value))
        if cited is None or session.memory is None or cited.source not in session.memory.sources:
            return self._page_nav(session, views.page_empty_html())
        session.viewing = (cited, cited.page)
        return self._page_nav(session, self._page_view(session))

    def previous_page(self, session: Session) -> Update:
        """The page before the one on view (a PDF's pages all count, a text source's pages with text)."""
        return self._turn_page(session, -1)

    def next_page(self, session: Session) -> Update:
        """The page after the one on view."""
        return self._turn_page(session, +1)

    def _turn_page(self, session: Session, step: int) -> Update:
        if session.viewing is None or session.memory is None or session.viewing[0].source not in session.memory.sources:
            return self._page_nav(session, views.page_empty_html())
        cited, page = session.viewing
        numbers = self._page_numbers(session, cited.source)
        if page in numbers and 0 <= numbers.index(page) + step < len(numbers):
            session.viewing = (cited, numbers[numbers.index(page) + step])
        return self._page_nav(session, self._page_view(session))

    @staticmethod
    def _page_numbers(session: Session, name: str) -> list[int]:
        """The pages one can turn to in a source: every page of a kept PDF, else the pages that hold text."""
        record = session.document(name)
        if record is not None and record.digest in session.originals:
            return list(range(1, session.originals[record.digest].pages + 1))
        source = session.memory.sources.get(name) if session.memory is not None else None
        return list(source.page_numbers) if source is not None else []

    def _page_nav(self, session: Session, view: str) -> Update:
        """The page view with its previous and next buttons enabled where there is a page to turn to."""
        numbers = self._page_numbers(session, session.viewing[0].source) if session.viewing else []
        page = session.viewing[1] if session.viewing else None
        at = numbers.index(page) if page in numbers else None
        return {"page_view": view, "page_prev": gr.update(interactive=at is not None and at > 0),
                "page_next": gr.update(interactive=at is not None and at + 1 < len(numbers))}

    def _page_view(self, session: Session) -> str:
        """The page on view as HTML, from the session's LRU or made now (pages.render_pdf_page for a kept PDF)."""
        cited, page = session.viewing
        key = (cited, page)
        view = session.views.get(key)
        if view is None:
            view = self._make_page_view(session, cited, page)
            session.views.put(key, view)
        return view

    def _make_page_view(self, session: Session, cited: Cited, page: int | None) -> str:
        source = session.memory.sources[cited.source]
        part = pages.part_on_page(source, page, cited.char_start, cited.char_end) if page is not None else None
        quoted = (pages.part_on_page(source, page, cited.answer_start, cited.answer_end)
                  if page is not None and cited.answer_start is not None else None)
        note = "evidence and answer marked" if part and quoted else "evidence marked" if part else ""
        record = session.document(cited.source)
        kept = session.originals.get(record.digest) if record is not None and record.kind == "pdf" else None
        if kept is not None and page is not None:
            try:
                rendered = pages.render_pdf_page(kept.data, page, *(part or (None, 0.0)),
                                                 answer=quoted[0] if quoted else None)
                if part and not rendered.boxes:
                    note = "the evidence could not be found in this page's characters"
                elif quoted and not rendered.answer_boxes:
                    note = "evidence marked"
                return views.page_image_html(cited.source, page, rendered, note)
            except Exception:  # a page pdfium cannot render still shows as text
                logger.exception("could not render page %s of %s", page, cited.source)
                note = "this page could not be drawn, so its text is shown"
        elif record is not None and record.kind == "pdf":
            note = "; ".join(filter(None, [note, "page images are not kept for this PDF"]))
        return self._text_view(session, cited, page, note)

    def _text_view(self, session: Session, cited: Cited, page: int | None, note: str) -> str:
        """The page's text (or, on a long page, the part around the evidence), the passage and evidence marked."""
        source = session.memory.sources[cited.source]
        start, end = (pages.page_span(source, page) if page is not None else None) or (0, len(source.text))
        if end - start > TEXT_VIEW_CHARS:
            middle = (cited.char_start + cited.char_end) // 2 if start <= cited.char_start < end else start
            start = max(start, middle - TEXT_VIEW_CHARS // 2)
            end = min(end, start + TEXT_VIEW_CHARS)
        text = source.text[start:end]

        def local(a: int, b: int) -> list[tuple[int, int]]:
            a, b = max(a - start, 0), min(b - start, len(text))
            return [(a, b)] if a < b else []

        count = len(source.page_numbers)
        answer = local(cited.answer_start, cited.answer_end) if cited.answer_start is not None else []
        return views.page_text_html(cited.source, page, count, text, local(cited.char_start, cited.char_end),
                                    local(cited.passage_start, cited.passage_end), note, answer)

    @staticmethod
    def _chat(session: Session) -> list[dict]:
        return [dict(m) for m in session.chat]

    @staticmethod
    def _chart(state, weights, detail=None) -> dict:
        frame = views.recall_frame(state, weights, detail)
        if not len(frame):
            return gr.update(value=None)
        return gr.update(value=frame, y_lim=views.y_limit(frame))

    # --- model and panels ------------------------------------------------------------------------------------

    def memory_panel(self, session: Session) -> str:
        """The memory hierarchy panel for this session."""
        state = session.memory
        sensory = self.engine.decode(state.sensory_ids) if state is not None else ""
        return views.memory_html(session, sensory, self.engine.describe_model())

    def load_model(self, backbone: str, weights: str, device: str, secret: str | None, session: Session,
                   request: gr.Request | None = None) -> Iterator[Update]:
        """Load another backbone or HMT weights for everyone; memories built with the old model are cleared. Only
        an operator may (Admin): the check is here, so it holds whatever route the request took, and every
        attempt is logged with the Gradio session and client address."""
        refused = self.admin.refusal(secret, request)
        if refused:
            logger.warning("model load refused for %s: backbone=%r weights=%r device=%r", who(request), backbone,
                           weights, device)
            yield {"model_status": f"⚠️ {refused}"}
            return
        if session.busy:
            yield {"model_status": "Still busy; wait or press **Cancel** first."}
            return
        logger.info("model load by %s: backbone=%r weights=%r device=%r", who(request), backbone, weights, device)
        yield {"model_status": f"Loading {views.md_text(backbone or DEFAULT_BACKBONE)}…"}
        try:
            description = self.engine.load(backbone, weights or None, device)
        except EngineError as err:
            logger.warning("model load by %s failed: %s", who(request), err)
            yield {"model_status": f"⚠️ {views.md_text(str(err))} The previous model is still loaded."}
            return
        logger.info("model loaded by %s: %s", who(request), description)
        changed = session.check_model(self.engine.fingerprint)
        yield {"model_status": f"Loaded: {views.md_text(description)}" + (f"\n\n{changed}" if changed else ""),
               "model_note": self.model_note(), "memory": self.memory_panel(session),
               "documents": views.documents_markdown(session), "chat": self._chat(session), "session": session,
               "channels": self.channels_update(), "adapter": self.adapter_update(),
               **self._chat_enabled(session.ready)}

    def channel_choices(self) -> list[tuple[str, str]]:
        """The Settings choices of recall channels: those the loaded model weighs."""
        weighed = self.engine.channels()
        return [(label, name) for label, name in CHANNEL_CHOICES if name in weighed]

    def channels_update(self) -> dict:
        """The Settings checkboxes for the loaded model: its channels offered, all of them ticked."""
        return gr.update(choices=self.channel_choices(), value=list(self.engine.channels()))

    def adapter_update(self) -> dict:
        """The Settings checkbox of the answer adapter for the loaded model: ticked and usable when one is loaded,
        else unticked and greyed out, its note saying why."""
        loaded = self.engine.adapter is not None
        return gr.update(value=loaded, interactive=loaded, info=self.engine.adapter_note)

    def model_note(self) -> str:
        """A line under the title saying which model is loaded and, plainly, when recall is untrained."""
        warn = "" if self.engine.trained else "⚠️ "
        return f"{warn}{views.md_text(self.engine.describe_model())}"

    def on_load(self, session: Session) -> Update:
        """Fill the per-session panels when a page opens."""
        session.check_model(self.engine.fingerprint)
        return {"memory": self.memory_panel(session), "model_note": self.model_note(),
                "documents": views.documents_markdown(session), "session": session,
                "channels": self.channels_update(), "adapter": self.adapter_update(),
                **self._chat_enabled(session.ready)}

    # --- named API endpoints ---------------------------------------------------------------------------------

    def api_ingest(self, files: list[str] | None, text: str, password: str, session: Session
                   ) -> Iterator[tuple[str, Session]]:
        """API: read files (and/or text) into this client's memory, yielding the progress line as it reads and then
        a summary of what is in memory (and any problems). A job cancelled by the client (gradio_client's
        job.cancel()) stops reading at the next step and keeps what was read, as the page's Cancel does."""
        last: Update = {}
        for update in self._read(files, text, password, session, keep_pages=False):
            last.update({k: v for k, v in update.items() if k in ("progress", "status")})
            if "progress_line" in update and session.busy:
                yield update["progress_line"], session
        lines = [views.documents_markdown(session)]
        if last.get("status"):
            lines.append(last["status"])
        yield views.unescape("\n\n".join(lines)), session

    def api_ask(self, question: str, mode: str, max_new_tokens: float, temperature: float,
                channels: list[str] | str | None = None, use_adapter: bool = True, not_found: bool = True,
                session: Session | None = None) -> tuple[str, list[dict], dict | None, Session]:
        """API: answer a question from this client's memory; returns (answer, citations, evidence), evidence being
        views.evidence_data (None when no sentence of the passages shares a word with the question or answer).
        channels: a list of recall channel names (None, the default: every channel the model weighs; [] = memory
        only); use_adapter and not_found as in Settings. A 'not found' answer is the reply NOT_FOUND with the
        closest passages as citations and, as its evidence, the sentence closest to the question (supports_answer
        False). The session (a gr.State, always given by Gradio) comes last,
        so the settings can have defaults for older clients."""
        result, status = None, ""
        for update in self.ask(question, session, mode, max_new_tokens, temperature, channels, use_adapter,
                                not_found):
            result = update.get("result", result)
            status = update.get("ask_status", status)
        if result is None:
            raise gr.Error(status.replace("**", ""))
        return result["answer"], result["citations"], result["evidence"], session

    def api_ask_stream(self, question: str, mode: str, max_new_tokens: float, temperature: float,
                       channels: list[str] | str | None = None, use_adapter: bool = True, not_found: bool = True,
                       session: Session | None = None) -> Iterator[tuple[str, list[dict], dict | None, Session]]:
        """API: api_ask, streamed: yields (the answer so far, [], None, session) as its tokens come, then (answer,
        citations, evidence, session) once it is done."""
        result, status = None, ""
        for update in self.ask(question, session, mode, max_new_tokens, temperature, channels, use_adapter,
                                not_found):
            result = update.get("result", result)
            status = update.get("ask_status", status)
            chat = update.get("chat")
            if result is None and chat and chat[-1]["role"] == "assistant" and chat[-1]["content"]:
                yield chat[-1]["content"], [], None, session
        if result is None:
            raise gr.Error(status.replace("**", ""))
        yield result["answer"], result["citations"], result["evidence"], session


def new_session() -> Session:
    """A fresh session for each browser tab (gr.State calls this on page load)."""
    return Session()
