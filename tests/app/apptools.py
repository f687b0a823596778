"""Shared fixtures for the app tests (import them by name): an engine around a tiny random backbone, a disk cache,
handlers, a small PDF and a session that has read it; and the same with a tiny model that weighs every recall
channel (memory, lexical, token keys)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import make_backbone
from pdf_factory import make_pdf

from app.cache import MemoryCache
from app.engine import Engine
from app.session import Session
from app.handlers import Handlers
from hmt_core import HMT, HMTConfig, save_checkpoint

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


@pytest.fixture
def engine(tokenizer) -> Engine:
    return tiny_engine(tokenizer)


@pytest.fixture
def cache(tmp_path) -> MemoryCache:
    return MemoryCache(tmp_path / "cache")


@pytest.fixture
def handlers(engine, cache) -> Handlers:
    return Handlers(engine, cache, max_file_mb=1.0)


@pytest.fixture(scope="session")
def fused(tokenizer, tmp_path_factory) -> Engine:
    """The all-channel engine, shared by the tests (none of them changes it)."""
    return fused_engine(tokenizer, tmp_path_factory.mktemp("weights") / "fused")


@pytest.fixture
def fused_handlers(fused, cache) -> Handlers:
    return Handlers(fused, cache, max_file_mb=1.0)


@pytest.fixture(scope="session")
def notes_read(fused) -> Session:
    """NOTES (pasted) read once with the all-channel model."""
    session = Session()
    run(Handlers(fused, None).ingest([], NOTES, "", session))
    assert session.ready
    return session


@pytest.fixture
def notes_ready(notes_read) -> Session:
    """A session of its own that has read NOTES with the all-channel model (a copy of notes_read)."""
    return Session(notes_read.memory.copy(), notes_read.fingerprint, [replace(d) for d in notes_read.documents])


@pytest.fixture
def pdf(tmp_path) -> Path:
    return make_pdf(tmp_path / "keeper.pdf", FACTS)


def run(gen) -> dict:
    """Drive a handler generator to its end; returns every update merged, later values winning."""
    merged: dict = {}
    for update in gen:
        merged.update(update)
    return merged


@pytest.fixture
def ready(handlers, pdf) -> Session:
    """A session that has read keeper.pdf."""
    session = Session()
    run(handlers.ingest([str(pdf)], "", "", session))
    assert session.ready
    return session
