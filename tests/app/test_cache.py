"""The disk cache of document memories: hits, misses, restarts, damaged entries and crashes mid-write."""

from __future__ import annotations

import os
import time

import pytest
import torch
from apptools import FACTS

from app.cache import TMP_MARK, MemoryCache, entry_key
from app.extract import open_document, text_digest
from hmt_core import read_text


@pytest.fixture
def state(engine):
    return read_text(engine.model, engine.tokenizer, "\n".join(FACTS), source="keeper.txt")


def test_put_then_get_returns_the_same_memory(tmp_path, state):
    cache = MemoryCache(tmp_path)
    cache.put("abc123", state, {"name": "keeper.txt", "pages": 3})
    loaded, info = cache.get("abc123")
    assert torch.equal(loaded.cache, state.cache)
    assert loaded.segments == state.segments and loaded.sensory_ids == state.sensory_ids
    assert info["name"] == "keeper.txt" and info["segments"] == state.num_segments
    assert len(cache) == 1


def test_miss_for_unknown_key_and_entry_survives_a_restart(tmp_path, state):
    MemoryCache(tmp_path).put("abc123", state)
    again = MemoryCache(tmp_path)  # a new process opening the same folder
    assert again.get("def456") is None
    assert again.get("abc123") is not None


def test_key_depends_on_content_and_model(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("same text")
    digest = open_document(path).digest
    assert entry_key(digest, "model-a") != entry_key(digest, "model-b")
    assert entry_key(digest, "model-a") == entry_key(open_document(path).digest, "model-a")
    assert text_digest("same text") != digest


@pytest.mark.parametrize("damage", ["truncate_tensors", "garbage_json", "missing_entry", "wrong_segments"])
def test_damaged_entry_is_dropped_and_reported_as_a_miss(tmp_path, state, damage):
    cache = MemoryCache(tmp_path)
    cache.put("abc123", state)
    folder = tmp_path / "abc123"
    if damage == "truncate_tensors":
        tensors = folder / "state" / "memory.safetensors"
        tensors.write_bytes(tensors.read_bytes()[:100])
    elif damage == "garbage_json":
        (folder / "state" / "state.json").write_text("{not json")
    elif damage == "missing_entry":
        (folder / "entry.json").unlink()
    else:
        (folder / "entry.json").write_text('{"format": 1, "key": "abc123", "segments": 999}')
    assert cache.get("abc123") is None
    assert not folder.exists()
    cache.put("abc123", state)  # read again and stored again
    assert cache.get("abc123") is not None


def test_crash_mid_write_leaves_no_entry_and_is_swept(tmp_path, state):
    cache = MemoryCache(tmp_path)
    crashed = tmp_path / f"abc123{TMP_MARK}deadbeef"  # what a writer killed before its rename leaves behind
    (crashed / "state").mkdir(parents=True)
    (crashed / "state" / "memory.safetensors").write_bytes(b"partial")
    assert cache.get("abc123") is None
    assert len(cache) == 0
    cache.put("abc123", state)
    assert cache.get("abc123") is not None
    assert cache.sweep() == 0  # too recent: might be another process still writing
    old = time.time() - 7200
    os.utime(crashed, (old, old))
    assert MemoryCache(tmp_path).get("abc123") is not None  # opening the cache sweeps it
    assert not crashed.exists()


def test_second_writer_keeps_the_first_entry(tmp_path, state):
    cache = MemoryCache(tmp_path)
    cache.put("abc123", state, {"name": "first"})
    cache.put("abc123", state, {"name": "second"})
    assert cache.get("abc123")[1]["name"] == "first"
    assert not list(tmp_path.glob(f"*{TMP_MARK}*"))


def test_keys_cannot_escape_the_folder(tmp_path):
    with pytest.raises(ValueError):
        MemoryCache(tmp_path).get("../etc")
