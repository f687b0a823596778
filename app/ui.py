"""The Gradio page: layout, and handlers that turn a session's documents, reading progress and streamed answers into
component updates. Handlers yield {name: value} dicts (only what changes), so tests can drive them without a browser."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import inspect  # noqa: E402
import logging  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from app import views  # noqa: E402
from app.cache import MemoryCache  # noqa: E402
from app.engine import DEFAULT_WEIGHTS, DEVICES, Engine, EngineError  # noqa: E402
from app.extract import KINDS, MB  # noqa: E402
from app.ingest import Progress, Upload, ingest  # noqa: E402
from app.session import Session  # noqa: E402
from hmt_core import DEFAULT_BACKBONE  # noqa: E402
from hmt_core.config import RECALL_CHANNELS  # noqa: E402

logger = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 2000
MODEL_CONCURRENCY = 2  # model events running at once; they take turns on the model lock step by step
EXAMPLE = Path(__file__).resolve().parent.parent / "assets" / "pride_and_prejudice_ch1-7.pdf"
MODES = [("Recall and re-read (cites pages)", "reread"), ("Faithful HMT (memory only)", "faithful")]
CHANNEL_CHOICES = [("HMT memory", "memory"), ("Words (lexical index)", "lexical"), ("Token keys", "token")]
CHANNEL_INFO = ("What ranks the recalled segments. HMT memory only = the paper's HMT; nothing ticked = memory only. "
                "Offered: the channels the loaded weights weigh.")
CHANNEL_COLORS = {views.CHANNEL_NAMES["memory"]: "#6366f1", views.CHANNEL_NAMES["lexical"]: "#f59e0b",
                  views.CHANNEL_NAMES["token"]: "#0ea5e9"}  # words and token keys as their marks in the passages
Update = dict[str, Any]

CSS = """
.hmt-progress { margin: 4px 0 8px; }
.hmt-bar { height: 12px; border-radius: 6px; background: var(--neutral-200); overflow: hidden; }
.hmt-fill { height: 100%; background: var(--color-accent); transition: width .3s; }
.hmt-done .hmt-fill { background: #16a34a; }
.hmt-progress-text { font-size: .9em; margin-top: 4px; color: var(--body-text-color-subdued); }
.hmt-passage { border-left: 3px solid var(--color-accent); padding: 4px 10px; margin: 8px 0; }
.hmt-where { font-size: .85em; color: var(--body-text-color-subdued); margin-bottom: 4px; }
.hmt-text { white-space: pre-wrap; line-height: 1.45; }
.hmt-why { font-size: .85em; color: var(--body-text-color-subdued); margin-bottom: 4px; }
.hmt-passages mark { background: none; color: inherit; padding: 0; }
.hmt-passages mark.hmt-word, .hmt-passages mark.hmt-token { color: #1f2937; }  /* dark text on the light marks */
.hmt-passages mark.hmt-token { background: #e0f2fe; text-decoration: underline 2px #0ea5e9;
  text-underline-offset: 3px; }
.hmt-passages mark.hmt-word { background: #fde68a; padding: 0 1px; border-radius: 2px; }
.hmt-legend { font-size: .85em; color: var(--body-text-color-subdued); margin: 4px 0 8px; }
.hmt-memory th { text-align: left; padding-right: 12px; vertical-align: top; white-space: nowrap; }
.hmt-memory code { white-space: pre-wrap; word-break: break-word; }
.hmt-model { font-size: .85em; margin-bottom: 6px; color: var(--body-text-color-subdued); }
.hmt-empty { color: var(--body-text-color-subdued); font-style: italic; }
#model-note { font-size: .9em; }
"""

INTRO = """# Ask your documents · Hierarchical Memory Transformer
Drop PDFs, books (EPUB), HTML, Markdown or text files, or paste text. The model reads them segment by segment into a
compact memory; then ask questions. Every answer comes from **memory recall**, and you can see which passages the
recall attention retrieved."""


def cut_repetition(text: str, tail: int = 40, times: int = 3) -> str | None:
    """When text ends in a loop (its last `tail` characters occur `times` times), the text up to the end of the
    loop's first round; else None. Small models decoding greedily often loop, and a loop adds nothing."""
    if len(text) < tail * times:
        return None
    end = text[-tail:]
    if text.count(end) < times:
        return None
    return text[:text.find(end) + tail]


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
    """Everything the page can ask the server to do, for one shared engine and disk cache."""

    def __init__(self, engine: Engine, cache: MemoryCache | None, max_file_mb: float = 100.0) -> None:
        self.engine = engine
        self.cache = cache
        self.max_bytes = int(max_file_mb * MB)

    # --- reading ---------------------------------------------------------------------------------------------

    def ingest(self, files: list[str] | None, text: str | None, password: str | None,
               session: Session) -> Iterator[Update]:
        """Read uploaded files and pasted text into the session's memory, yielding progress."""
        uploads = [Upload(Path(f).name, path=Path(f)) for f in files or []]
        if text and text.strip():
            uploads.append(Upload("pasted text", text=text))
        if not uploads:
            yield {"status": "Add a file (or paste text) first, then press **Read into memory**.", "session": session}
            return
        if session.busy:
            yield {"status": "Still busy with the previous request; wait for it or press **Cancel**.",
                   "session": session}
            return
        session.busy = True
        try:
            yield {"progress": views.progress_html(0.0, "Starting…"), "status": "", "cancel": gr.update(visible=True),
                   **self._chat_enabled(False)}
            last = Progress("done", 1.0, "")
            for last in ingest(session, self.engine, self.cache, uploads, password, self.max_bytes):
                state = "done" if last.phase == "done" else "running"
                yield {"progress": views.progress_html(last.fraction, last.message, state),
                       "status": self._status(last), "documents": views.documents_markdown(session),
                       "session": session}
        finally:
            session.busy = False
        yield {"progress": views.progress_html(1.0 if session.ready else 0.0, last.message,
                                               "done" if session.ready else "idle"),
               "status": self._status(last), "documents": views.documents_markdown(session),
               "memory": self.memory_panel(session), "cancel": gr.update(visible=False), "session": session,
               **self._chat_enabled(session.ready)}

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
                "session": session, **self._chat_enabled(False)}

    @staticmethod
    def _status(progress: Progress) -> str:
        """Problems first (one line each), then notes."""
        lines = [f"⚠️ {e}" for e in progress.errors] + [f"ℹ️ {n}" for n in progress.notes]
        return "\n\n".join(lines)

    @staticmethod
    def _chat_enabled(enabled: bool) -> Update:
        placeholder = "Ask about your documents…" if enabled else "Add a document first; chat opens when memory is ready."
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
            temperature: float = 0.0, channels: list[str] | str | None = None) -> Iterator[Update]:
        """Answer from memory with the recall channels asked for (parse_channels), streaming the answer, the recall
        chart (split by channel) and the recalled passages (with why each was recalled)."""
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
        session.chat += [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
        answer, passages, used, result = "", [], (), {"answer": "", "citations": []}
        try:
            yield {"chat": self._chat(session), "question": gr.update(value="", interactive=False),
                   "ask": gr.update(interactive=False), "ask_status": "Recalling from memory…"}
            recalled = False
            for event in self.engine.answer(state, question, fingerprint, mode, int(max_new_tokens),
                                            float(temperature), wanted):
                if event.kind == "recall" and not recalled:
                    recalled = True
                    passages, detail = event.passages, event.recall
                    used = detail.channels if detail is not None else ()
                    windows = (self.engine.token_windows(state, question, [i for p in passages for i in p.segments],
                                                         fingerprint) if "token" in used else {})
                    yield {"chart": self._chart(state, event.weights, detail),
                           "passages": views.passages_html(state, passages, question, windows),
                           "ask_status": "Answering…"}
                elif event.kind == "token":
                    answer += event.text
                    looped = cut_repetition(answer)
                    if looped is not None:
                        answer = looped.rstrip() + " …"
                        break
                    session.chat[-1] = {"role": "assistant", "content": answer}
                    yield {"chat": self._chat(session)}
                elif event.kind == "done":
                    answer = event.text
            cites = views.citation_line(passages)
            shown = (answer.strip() or "(The model gave no answer.)") + (f"\n\n*{cites}*" if cites else "")
            session.chat[-1] = {"role": "assistant", "content": shown}
            self.engine.remember(state, question, answer, fingerprint)
            result = {"answer": answer.strip(), "citations": views.citations(passages, used)}
            status = ""
        except EngineError as err:
            session.chat = session.chat[:-2]
            status = str(err)
            session.check_model(self.engine.fingerprint)
        finally:
            session.busy = False
        yield {"chat": self._chat(session), "ask_status": status, "memory": self.memory_panel(session),
               "result": result, "session": session, "documents": views.documents_markdown(session),
               **self._chat_enabled(session.ready)}

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

    def load_model(self, backbone: str, weights: str, device: str, session: Session) -> Iterator[Update]:
        """Load another backbone or HMT weights for everyone; memories built with the old model are cleared."""
        if session.busy:
            yield {"model_status": "Still busy; wait or press **Cancel** first."}
            return
        yield {"model_status": f"Loading {backbone or DEFAULT_BACKBONE}…"}
        try:
            description = self.engine.load(backbone, weights or None, device)
        except EngineError as err:
            yield {"model_status": f"⚠️ {err} The previous model is still loaded."}
            return
        changed = session.check_model(self.engine.fingerprint)
        yield {"model_status": f"Loaded: {description}" + (f"\n\n{changed}" if changed else ""),
               "model_note": self.model_note(), "memory": self.memory_panel(session),
               "documents": views.documents_markdown(session), "chat": self._chat(session), "session": session,
               "channels": self.channels_update(), **self._chat_enabled(session.ready)}

    def channel_choices(self) -> list[tuple[str, str]]:
        """The Settings choices of recall channels: those the loaded model weighs."""
        weighed = self.engine.channels()
        return [(label, name) for label, name in CHANNEL_CHOICES if name in weighed]

    def channels_update(self) -> dict:
        """The Settings checkboxes for the loaded model: its channels offered, all of them ticked."""
        return gr.update(choices=self.channel_choices(), value=list(self.engine.channels()))

    def model_note(self) -> str:
        """A line under the title saying which model is loaded and, plainly, when recall is untrained."""
        warn = "" if self.engine.trained else "⚠️ "
        return f"{warn}{self.engine.describe_model()}"

    def on_load(self, session: Session) -> Update:
        """Fill the per-session panels when a page opens."""
        session.check_model(self.engine.fingerprint)
        return {"memory": self.memory_panel(session), "model_note": self.model_note(),
                "documents": views.documents_markdown(session), "session": session,
                "channels": self.channels_update(), **self._chat_enabled(session.ready)}

    # --- named API endpoints ---------------------------------------------------------------------------------

    def api_ingest(self, files: list[str] | None, text: str, password: str, session: Session) -> tuple[str, Session]:
        """API: read files (and/or text) into this client's memory; returns a summary of what is in memory."""
        last: Update = {}
        for update in self.ingest(files, text, password, session):
            last.update({k: v for k, v in update.items() if k in ("progress", "status")})
        lines = [views.documents_markdown(session)]
        if last.get("status"):
            lines.append(last["status"])
        return "\n\n".join(lines), session

    def api_ask(self, question: str, mode: str, max_new_tokens: float, temperature: float,
                channels: list[str] | str | None = None, session: Session | None = None
                ) -> tuple[str, list[dict], Session]:
        """API: answer a question from this client's memory; returns (answer, citations). channels: a list of
        recall channel names (None, the default: every channel the model weighs; [] = memory only). The session
        (a gr.State, always given by Gradio) comes last, so channels can have a default for older clients."""
        result, status = None, ""
        for update in self.ask(question, session, mode, max_new_tokens, temperature, channels):
            result = update.get("result", result)
            status = update.get("ask_status", status)
        if result is None:
            raise gr.Error(status.replace("**", ""))
        return result["answer"], result["citations"], session


def new_session() -> Session:
    """A fresh session for each browser tab (gr.State calls this on page load)."""
    return Session()


def _wire(fn, components: dict[str, gr.components.Component]):
    """Wrap a handler that yields or returns {name: value} into one that Gradio understands ({component: value})."""
    if inspect.isgeneratorfunction(fn):
        def run(*args):
            for update in fn(*args):
                yield {components[k]: v for k, v in update.items() if k in components}
    else:
        def run(*args):
            return {components[k]: v for k, v in fn(*args).items() if k in components}
    return run


def build_ui(handlers: Handlers) -> gr.Blocks:
    """The page: documents and reading on the left, chat on the right, recall and memory below, settings last."""
    engine = handlers.engine
    types = sorted(set(KINDS))
    with gr.Blocks(title="Ask your documents · HMT") as demo:
        session = gr.State(new_session)
        gr.Markdown(INTRO)
        model_note = gr.Markdown(handlers.model_note(), elem_id="model-note")
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                files = gr.File(label="Documents (PDF, EPUB, HTML, Markdown, text)", file_count="multiple",
                                file_types=types, elem_id="upload")
                with gr.Accordion("Paste text instead", open=False):
                    text = gr.Textbox(label="Text", lines=6, elem_id="paste")
                password = gr.Textbox(label="Password (only for protected PDFs)", type="password", elem_id="password")
                with gr.Row():
                    read = gr.Button("Read into memory", variant="primary", elem_id="read")
                    cancel = gr.Button("Cancel", variant="stop", visible=False, elem_id="cancel")
                    clear = gr.Button("Clear memory", elem_id="clear")
                example = gr.Button("Try an example: Pride and Prejudice, chapters 1-7", size="sm", elem_id="example")
                progress = gr.HTML(views.progress_html(0.0, "", "idle"), elem_id="progress")
                status = gr.Markdown(elem_id="status")
                documents = gr.Markdown(views.documents_markdown(Session()), elem_id="documents")
            with gr.Column(scale=3, min_width=400):
                chat = gr.Chatbot(label="Chat", height=420, elem_id="chat",
                                  placeholder="Add a document on the left, then ask about it here.")
                with gr.Row():
                    question = gr.Textbox(show_label=False, scale=5, interactive=False, max_lines=4,
                                          placeholder="Add a document first; chat opens when memory is ready.",
                                          elem_id="question")
                    ask = gr.Button("Ask", variant="primary", scale=1, interactive=False, elem_id="ask")
                ask_status = gr.Markdown(elem_id="ask-status")
        with gr.Row():
            with gr.Column(scale=3):
                gr.Markdown("### What was recalled")
                # starts empty (None): in Gradio 6.31 a plot whose first value is an empty table never draws updates
                chart = gr.BarPlot(None, x="segment", y="weight", color="channel", color_map=CHANNEL_COLORS,
                                   x_axis_format="d", y_lim=[0, 1],
                                   tooltip=["segment", "document", "pages", "channel", "weight", "recall"],
                                   x_title="segment read (in order)", y_title="recall attention",
                                   color_title="recall channel", elem_id="recall-chart",
                                   label="Recall attention over every segment read, each bar split by channel")
                passages = gr.HTML(views.passages_html(None, [], ""), elem_id="passages")
            with gr.Column(scale=2):
                gr.Markdown("### Memory")
                memory = gr.HTML(elem_id="memory")
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            with gr.Row():
                mode = gr.Radio(MODES, value="reread", label="Answer mode", elem_id="mode")
                max_tokens = gr.Slider(16, 512, value=200, step=8, label="Max new tokens", elem_id="max-tokens")
                temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)",
                                        elem_id="temperature")
                channels = gr.CheckboxGroup(handlers.channel_choices(), value=list(engine.channels()),
                                            label="Recall channels", info=CHANNEL_INFO, elem_id="channels")
            with gr.Row():
                backbone = gr.Textbox(engine.backbone_name or DEFAULT_BACKBONE, label="Backbone (hub id or folder)",
                                      elem_id="backbone")
                weights = gr.Textbox(str(DEFAULT_WEIGHTS), label="HMT weights folder", elem_id="weights")
                device = gr.Radio(list(DEVICES), value=engine.device, label="Device", elem_id="device")
            load = gr.Button("Load model (for everyone; clears memories built with the old one)", elem_id="load")
            model_status = gr.Markdown(elem_id="model-status")
        with gr.Row(visible=False):
            api_files = gr.File(file_count="multiple", label="files")
            api_text = gr.Textbox(label="text")
            api_password = gr.Textbox(label="password")
            api_summary = gr.Textbox(label="summary")
            api_question = gr.Textbox(label="question")
            api_channels = gr.JSON(label="channels")
            api_answer = gr.Textbox(label="answer")
            api_citations = gr.JSON(label="citations")
            api_ingest_button = gr.Button("ingest")
            api_ask_button = gr.Button("ask")

        c = {"session": session, "progress": progress, "status": status, "documents": documents, "chat": chat,
             "question": question, "ask": ask, "ask_status": ask_status, "chart": chart, "passages": passages,
             "memory": memory, "cancel": cancel, "model_status": model_status, "model_note": model_note,
             "channels": channels}
        model = {"concurrency_id": "model", "concurrency_limit": MODEL_CONCURRENCY}
        private = {"api_visibility": "private"}
        ingest_out = [session, progress, status, documents, memory, cancel, question, ask]
        for trigger, fn, inputs in ((files.upload, handlers.ingest, [files, text, password, session]),
                                    (read.click, handlers.ingest, [files, text, password, session]),
                                    (example.click, handlers.ingest_example, [session])):
            trigger(_wire(fn, c), inputs, ingest_out, show_progress="hidden", **model, **private)
        cancel.click(_wire(handlers.cancel, c), [session], [status], concurrency_limit=None, **private)
        clear.click(_wire(handlers.clear, c), [session],
                    [session, status, documents, chat, memory, chart, passages, progress, question, ask],
                    concurrency_limit=None, **private)
        ask_out = [session, chat, question, ask, ask_status, chart, passages, memory, documents]
        ask_in = [question, session, mode, max_tokens, temperature, channels]
        for trigger in (question.submit, ask.click):
            trigger(_wire(handlers.ask, c), ask_in, ask_out, show_progress="minimal", show_progress_on=[ask_status],
                    **model, **private)
        load.click(_wire(handlers.load_model, c), [backbone, weights, device, session],
                   [model_status, model_note, memory, documents, chat, session, channels, question, ask], **model,
                   **private)
        demo.load(_wire(handlers.on_load, c), [session],
                  [memory, model_note, documents, session, channels, question, ask], **private)
        api_ingest_button.click(handlers.api_ingest, [api_files, api_text, api_password, session],
                                [api_summary, session], api_name="ingest", **model)
        api_ask_button.click(handlers.api_ask, [api_question, mode, max_tokens, temperature, api_channels, session],
                             [api_answer, api_citations, session], api_name="ask", **model)
    demo.queue(default_concurrency_limit=MODEL_CONCURRENCY)
    return demo

