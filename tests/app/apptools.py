"""Helpers for the app tests, imported by name: small documents, an engine around a tiny random backbone, one whose
tiny model weighs every recall channel (memory, lexical, token keys), and a driver for handler generators. The
fixtures built from them are in conftest.py."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import httpx
import pytest
import torch
from tiny_models import make_backbone

from app.engine import Engine
from app.ui import serve
from hmt_core import HMT, AnswerEvent, HMTConfig, save_checkpoint

FACTS = [
    "Chapter One\nThe lighthouse keeper counted ships every evening. " * 6,
    "Chapter Two\nA storm arrived from the west on the ninth day. The passkey is 12345. " * 6,
    "Chapter Three\nThe keeper's logbook was found dry in a tin box. " * 6,
]


FUSION = {"memory": 0.3, "lexical": 0.5, "token": 0.2}
# One line, and so about one segment, names the zebra: the word only the lexical channel can find for sure.
NOTES = "".join(f"Note {n}. The keeper counted ships every evening.\n" for n in range(12)) + \
    "Note 12. The zebra slept in the cellar.\n" + \
    "".join(f"Note {n}. The keeper counted ships every evening.\n" for n in range(13, 24))


def tiny_engine(tokenizer, seed: int = 0) -> Engine:
    """An Engine around a tiny random llama (d = 32) and the test tokenizer; no weights folder."""
    engine = Engine()
    engine.attach(make_backbone("llama", seed=seed), tokenizer, None, f"tiny-llama-{seed}")
    return engine


def fused_engine(tokenizer, folder: Path) -> Engine:
    """An Engine whose tiny HMT weighs all three recall channels, loaded from a checkpoint written to `folder` (as a
    trained checkpoint with channels would be)."""
    torch.manual_seed(0)
    config = HMTConfig(segment_length=32, sensory_size=4, token_key_layer=1, token_key_width=8,
                       token_keys_per_segment=4, recall_fusion=dict(FUSION))
    save_checkpoint(HMT(make_backbone("llama"), config), folder)
    engine = Engine()
    engine.attach(make_backbone("llama"), tokenizer, folder, "tiny-fused")
    return engine


def scripted_answer(engine: Engine, pieces: list[str]):
    """engine.answer with the real recall but the answer given: `pieces`, streamed one by one (for what the page
    does with text a model could produce)."""
    real = engine.answer

    def answer(*args, **kwargs):
        for event in real(*args, **kwargs):
            if event.kind == "recall":
                yield event
        for piece in pieces:
            yield AnswerEvent("token", text=piece)
        yield AnswerEvent("done", text="".join(pieces))
    return answer


def run(gen) -> dict:
    """Drive a handler generator to its end; returns every update merged, later values winning."""
    merged: dict = {}
    for update in gen:
        merged.update(update)
    return merged


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(handlers) -> Iterator[tuple[str, gr.Blocks]]:
    """The app served as app.py serves it (app.ui.serve) on a free loopback port, in this process; yields its URL
    and Blocks. Gradio's upload folder setting is put back afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(handlers.uploads))
        port = free_port()
        demo = serve(handlers, port=port, block=False)
        try:
            yield f"http://127.0.0.1:{port}", demo
        finally:
            demo.close()


def fn_index(demo: gr.Blocks, handler) -> int:
    """The fn_index of the event that runs `handler` (a Handlers method), as a page or a raw client would send it."""
    return next(i for i, fn in demo.fns.items() if getattr(fn.fn, "__wrapped__", fn.fn) == handler)


def queue_call(url: str, index: int, data: list, session_hash: str | None = None) -> dict:
    """One anonymous call through Gradio's queue, as any HTTP client can make it without the page: POST
    /gradio_api/queue/join with an fn_index, then read the event stream to its end; returns the last message."""
    session_hash = session_hash or uuid.uuid4().hex[:10]
    joined = httpx.post(f"{url}/gradio_api/queue/join", json={"data": data, "fn_index": index, "event_data": None,
                                                              "session_hash": session_hash, "trigger_id": None})
    joined.raise_for_status()
    with httpx.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session_hash},
                      timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the queue closed without completing the call")
