"""The Gradio page's layout: the components, where they sit, and which handler (handlers.py) each event runs. The
flow itself (what a click or an upload does) lives in handlers.py, where tests drive it without a browser."""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from app import views
from app.engine import DEFAULT_WEIGHTS, DEVICES
from app.extract import KINDS
from app.handlers import ADMIN_OFF, Handlers, new_session
from app.session import Session
from app.uploads import UploadsNotServed
from hmt_core import DEFAULT_BACKBONE

# Events running at once, per kind; reading and answering have their own slots, so two long reads never keep a
# question waiting in Gradio's queue, and every event takes its model steps in turn (turns.py: answers first).
READ_CONCURRENCY = 2
ANSWER_CONCURRENCY = 2
RENDER_CONCURRENCY = 2  # cited pages are drawn in slots of their own, without the model (app/pages.py)
UPLOAD_SWEEP = (600, 3600)  # every 10 minutes Gradio deletes uploads older than an hour that no handler deleted
ANSWER_MODE_CHOICES = [("Recall and re-read (cites pages)", "reread"), ("Faithful HMT (memory only)", "faithful")]
CHANNEL_INFO = ("What ranks the recalled segments. HMT memory only = the paper's HMT; nothing ticked = memory only. "
                "Offered: the channels the loaded weights weigh.")
ADAPTER_LABEL = "Answer adapter (short answers taken from the passages; re-read mode)"
NOT_FOUND_LABEL = "Say “not found” when unsure"
NOT_FOUND_INFO = ("When no passage seems to hold the answer (recall is unsure, or the answer adapter's probe reads "
                  "that its passage does not say), say so and show the closest passages instead of guessing.")
CHANNEL_COLORS = {views.CHANNEL_NAMES["memory"]: "#6366f1", views.CHANNEL_NAMES["lexical"]: "#f59e0b",
                  views.CHANNEL_NAMES["token"]: "#0ea5e9",  # words and token keys as their marks in the passages
                  views.CHANNEL_NAMES["sentence"]: "#a855f7"}  # as its dotted line under the closest sentence

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
.hmt-passages mark.hmt-sentence { border-bottom: 2px dotted #a855f7; }
.hmt-legend { font-size: .85em; color: var(--body-text-color-subdued); margin: 4px 0 8px; }
.hmt-memory th { text-align: left; padding-right: 12px; vertical-align: top; white-space: nowrap; }
.hmt-memory code { white-space: pre-wrap; word-break: break-word; }
.hmt-model { font-size: .85em; margin-bottom: 6px; color: var(--body-text-color-subdued); }
.hmt-empty { color: var(--body-text-color-subdued); font-style: italic; }
#model-note { font-size: .9em; }
.hmt-passages mark.hmt-evidence { background: #bbf7d0; color: #14532d; box-shadow: 0 0 0 1px #16a34a; }
.hmt-passages mark.hmt-answer { font-weight: 700; text-decoration: underline; }
.hmt-evidence-box { border-left: 3px solid #16a34a; padding: 4px 10px; margin: 8px 0; }
.hmt-cite { background: none; border: none; padding: 0; font: inherit; font-weight: bold; color: inherit;
  text-decoration: underline dotted; cursor: pointer; }
.hmt-page-head { font-size: .9em; margin: 4px 0; color: var(--body-text-color-subdued); }
.hmt-page { position: relative; display: inline-block; max-width: 100%; border: 1px solid var(--neutral-300); }
.hmt-page img.hmt-page-image { display: block; width: 100%; height: auto; }
.hmt-page mark.hmt-box { position: absolute; background: rgba(250, 204, 21, .45); mix-blend-mode: multiply;
  outline: 2px solid #f59e0b; border-radius: 2px; padding: 0; }
.hmt-page-text mark.hmt-cited { background: #e0e7ff; color: #1f2937; }
.hmt-page-text mark.hmt-evidence { background: #bbf7d0; color: #14532d; box-shadow: 0 0 0 1px #16a34a; }
.hmt-page-text mark.hmt-answer { font-weight: 700; text-decoration: underline; }
.hmt-page mark.hmt-answer-box { background: rgba(22, 163, 74, .25); outline: 2px solid #15803d; }
"""
# A click on a citation in the passages (a button with data-cite) asks for its page (handlers.show_cited).
CITE_CLICKS = """element.addEventListener('click', (event) => {
  const cite = event.target.closest('[data-cite]');
  if (cite) trigger('select', {index: cite.dataset.cite, value: cite.dataset.cite, selected: true});
});"""

INTRO = """# Ask your documents · Hierarchical Memory Transformer
Drop PDFs, books (EPUB), HTML, Markdown or text files, or paste text. The model reads them segment by segment into a
compact memory; then ask questions. Every answer comes from **memory recall**, and you can see which passages the
recall attention retrieved."""


def _wire(fn, components: dict[str, gr.components.Component]):
    """Wrap a handler that yields or returns {name: value} into one that Gradio understands ({component: value}).
    The wrapper shows Gradio the handler's signature and annotations, so that a `request: gr.Request` parameter
    is filled in, but not its name, which would take the public endpoints' names (/ask, /ingest)."""
    if inspect.isgeneratorfunction(fn):
        def run(*args):
            for update in fn(*args):
                yield {components[k]: v for k, v in update.items() if k in components}
    else:
        def run(*args):
            return {components[k]: v for k, v in fn(*args).items() if k in components}
    return functools.update_wrapper(run, fn, assigned=("__module__", "__doc__", "__annotations__"))


def build_ui(handlers: Handlers) -> gr.Blocks:
    """The page: documents and reading on the left, chat on the right; below, what was recalled beside the cited
    page and the memory; settings last."""
    engine = handlers.engine
    types = sorted(set(KINDS))
    with gr.Blocks(title="Ask your documents · HMT", delete_cache=UPLOAD_SWEEP) as demo:
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
                passages = gr.HTML(views.passages_html(None, [], ""), elem_id="passages", js_on_load=CITE_CLICKS)
            with gr.Column(scale=2):
                gr.Markdown("### The cited page")  # beside the passages, whose citations show their page here
                with gr.Row():
                    page_prev = gr.Button("◀ Previous page", size="sm", interactive=False, elem_id="page-prev")
                    page_next = gr.Button("Next page ▶", size="sm", interactive=False, elem_id="page-next")
                page_view = gr.HTML(views.page_empty_html(), elem_id="page-view")
                gr.Markdown("### Memory")
                memory = gr.HTML(elem_id="memory")
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            with gr.Row():
                mode = gr.Radio(ANSWER_MODE_CHOICES, value="reread", label="Answer mode", elem_id="mode")
                max_tokens = gr.Slider(16, 512, value=200, step=8, label="Max new tokens", elem_id="max-tokens")
                temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)",
                                        elem_id="temperature")
                channels = gr.CheckboxGroup(handlers.channel_choices(), value=list(engine.channels()),
                                            label="Recall channels", info=CHANNEL_INFO, elem_id="channels")
            with gr.Row():
                adapter = gr.Checkbox(engine.adapter is not None, label=ADAPTER_LABEL, info=engine.adapter_note,
                                      interactive=engine.adapter is not None, elem_id="adapter")
                not_found = gr.Checkbox(True, label=NOT_FOUND_LABEL, info=NOT_FOUND_INFO, elem_id="not-found")
            admin = handlers.admin  # switching the model is for an operator only; handlers.load_model checks it
            with gr.Row():
                local = Path(engine.backbone_name).is_dir()  # a server folder: not shown to visitors
                backbone = gr.Textbox("" if local else engine.backbone_name or DEFAULT_BACKBONE,
                                      label="Backbone (hub id or folder)", placeholder=f"empty: {DEFAULT_BACKBONE}",
                                      interactive=admin.enabled, elem_id="backbone")
                weights = gr.Textbox("", label="HMT weights folder",
                                     placeholder=f"empty: the shipped weights ({DEFAULT_WEIGHTS.name})",
                                     interactive=admin.enabled, elem_id="weights")
                device = gr.Radio(list(DEVICES), value=engine.device, label="Device", interactive=admin.enabled,
                                  elem_id="device")
            with gr.Row():
                secret = gr.Textbox(label="Admin secret", type="password", visible=bool(admin.secret), scale=1,
                                    placeholder="the secret the server was started with", elem_id="admin-secret")
                load = gr.Button("Load model (for everyone; clears memories built with the old one)", scale=2,
                                 interactive=admin.enabled, elem_id="load")
            model_status = gr.Markdown(ADMIN_OFF if not admin.enabled else "", elem_id="model-status")
        with gr.Row(visible=False):
            api_files = gr.File(file_count="multiple", label="files")
            api_text = gr.Textbox(label="text")
            api_password = gr.Textbox(label="password")
            api_summary = gr.Textbox(label="summary")
            api_question = gr.Textbox(label="question")
            api_channels = gr.JSON(label="channels")
            api_answer = gr.Textbox(label="answer")
            api_citations = gr.JSON(label="citations")
            api_evidence = gr.JSON(label="evidence")
            api_ingest_button = gr.Button("ingest")
            api_ask_button = gr.Button("ask")
            api_ask_stream_button = gr.Button("ask_stream")

        c = {"session": session, "files": files, "progress": progress, "status": status, "documents": documents,
             "chat": chat, "question": question, "ask": ask, "ask_status": ask_status, "chart": chart,
             "passages": passages, "memory": memory, "cancel": cancel, "model_status": model_status,
             "model_note": model_note, "channels": channels, "adapter": adapter, "page_view": page_view,
             "page_prev": page_prev, "page_next": page_next}
        reading = {"concurrency_id": "read", "concurrency_limit": READ_CONCURRENCY}
        answering = {"concurrency_id": "answer", "concurrency_limit": ANSWER_CONCURRENCY}
        private = {"api_visibility": "private"}
        ingest_out = [session, files, progress, status, documents, memory, cancel, question, ask]
        for trigger, fn, inputs in ((files.upload, handlers.ingest, [files, text, password, session]),
                                    (read.click, handlers.ingest, [files, text, password, session]),
                                    (example.click, handlers.ingest_example, [session])):
            trigger(_wire(fn, c), inputs, ingest_out, show_progress="hidden", **reading, **private)
        cancel.click(_wire(handlers.cancel, c), [session], [status], concurrency_limit=None, **private)
        clear.click(_wire(handlers.clear, c), [session],
                    [session, status, documents, chat, memory, chart, passages, progress, question, ask, page_view,
                     page_prev, page_next], concurrency_limit=None, **private)
        ask_out = [session, chat, question, ask, ask_status, chart, passages, memory, documents]
        ask_in = [question, session, mode, max_tokens, temperature, channels, adapter, not_found]
        for trigger in (question.submit, ask.click):
            trigger(_wire(handlers.ask, c), ask_in, ask_out, show_progress="minimal", show_progress_on=[ask_status],
                    **answering, **private)
        rendering = {"concurrency_id": "render", "concurrency_limit": RENDER_CONCURRENCY, "show_progress": "minimal"}
        page_out = [page_view, page_prev, page_next]
        passages.select(_wire(handlers.show_cited, c), [session], page_out, **rendering, **private)
        page_prev.click(_wire(handlers.previous_page, c), [session], page_out, **rendering, **private)
        page_next.click(_wire(handlers.next_page, c), [session], page_out, **rendering, **private)
        load.click(_wire(handlers.load_model, c), [backbone, weights, device, secret, session],
                   [model_status, model_note, memory, documents, chat, session, channels, adapter, question, ask],
                   **reading,
                   **private)
        demo.load(_wire(handlers.on_load, c), [session],
                  [memory, model_note, documents, session, channels, adapter, question, ask], **private)
        api_ingest_button.click(handlers.api_ingest, [api_files, api_text, api_password, session],
                                [api_summary, session], api_name="ingest", **reading)
        api_ask_in = [api_question, mode, max_tokens, temperature, api_channels, adapter, not_found, session]
        api_ask_button.click(handlers.api_ask, api_ask_in,
                             [api_answer, api_citations, api_evidence, session], api_name="ask", **answering)
        api_ask_stream_button.click(handlers.api_ask_stream,
                                    api_ask_in,
                                    [api_answer, api_citations, api_evidence, session], api_name="ask_stream",
                                    **answering)
    demo.queue(default_concurrency_limit=ANSWER_CONCURRENCY)
    return demo


def serve(handlers: Handlers, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
          block: bool = True) -> gr.Blocks:
    """Build the page and serve it (app.py and the tests that need a real server both come here).

    Uploads go to handlers.uploads (Gradio's upload folder is set to it before any component exists), are never
    served back (UploadsNotServed), and Gradio's own upload limit is the app's (handlers.max_bytes), so a larger
    file is refused before it is stored. No run history is kept in the browser."""
    os.environ["GRADIO_TEMP_DIR"] = str(handlers.uploads)
    demo = build_ui(handlers)
    demo.launch(server_name=host, server_port=port, share=share, css=CSS, max_file_size=handlers.max_bytes,
                footer_links=["api"], run_history=False, prevent_thread_lock=not block, quiet=not block,
                app_kwargs={"middleware": [Middleware(UploadsNotServed, folder=handlers.uploads)]})
    return demo
