"""Fixtures for the app tests: an engine around a tiny random backbone, a disk cache, handlers, a small PDF and a
session that has read it; and the same with a tiny model that weighs every recall channel (memory, lexical, token
keys)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from apptools import FACTS, NOTES, fused_engine, run, tiny_engine
from pdf_factory import make_pdf

from app.cache import MemoryCache
from app.engine import Engine
from app.session import Session
from app.handlers import Handlers


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


@pytest.fixture
def ready(handlers, pdf) -> Session:
    """A session that has read keeper.pdf."""
    session = Session()
    run(handlers.ingest([str(pdf)], "", "", session))
    assert session.ready
    return session
