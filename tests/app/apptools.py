"""Shared fixtures for the app tests (import them by name): an engine around a tiny random backbone, a disk cache,
handlers, a small PDF and a session that has read it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_backbone
from pdf_factory import make_pdf

from app.cache import MemoryCache
from app.engine import Engine
from app.session import Session
from app.ui import Handlers

FACTS = [
    "Chapter One\nThe lighthouse keeper counted ships every evening. " * 6,
    "Chapter Two\nA storm arrived from the west on the ninth day. The passkey is 12345. " * 6,
    "Chapter Three\nThe keeper's logbook was found dry in a tin box. " * 6,
]


def tiny_engine(tokenizer, seed: int = 0) -> Engine:
    """An Engine around a tiny random llama (d = 32) and the test tokenizer; no weights folder."""
    engine = Engine()
    engine.attach(make_backbone("llama", seed=seed), tokenizer, None, f"tiny-llama-{seed}")
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
