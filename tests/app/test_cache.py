"""The disk cache of document memories: hits, misses, restarts, crashes mid-write; entries that are damaged or that
parse but do not fit the model (dropped, never served); private files; the size bound and the age limit."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import replace

import pytest
import torch
from apptools import FACTS, FUSION, run
from safetensors.torch import load_file, save_file
from tiny_models import make_backbone, tiny_bert

from app.cache import ENTRY_FILE, STATE_DIR, TMP_MARK, CacheDamaged, MemoryCache, entry_key
from app.engine import Engine
from app.extract import MB, open_document, text_digest
from app.handlers import Handlers
from app.session import Session
from app.views import unescape
from hmt_core import HMT, HMTConfig, read_text, save_checkpoint
from hmt_core.embedder import SentenceEmbedder


@pytest.fixture
def state(engine):
    return read_text(engine.model, engine.tokenizer, "\n".join(FACTS), source="keeper.txt")


@pytest.fixture
def expect(engine):
    return engine.expected_memory()


def rewrite(folder, **tensors) -> None:
    """Replace tensors in an entry's memory file and write a manifest that matches: an entry that parses and
    whose hashes agree, but whose memory is wrong."""
    path = folder / STATE_DIR / "memory.safetensors"
    save_file({**load_file(str(path)), **tensors}, str(path))
    entry = json.loads((folder / ENTRY_FILE).read_text())
    entry["files"] = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in entry["files"]}
    (folder / ENTRY_FILE).write_text(json.dumps(entry))


def test_put_then_get_returns_the_same_memory(tmp_path, state, expect):
    cache = MemoryCache(tmp_path)
    cache.put("abc123", state, expect, {"name": "keeper.txt", "pages": 3})
    loaded, info = cache.get("abc123", expect)
    assert torch.equal(loaded.cache, state.cache)
    assert loaded.segments == state.segments and loaded.sensory_ids == state.sensory_ids
    assert info["name"] == "keeper.txt" and info["segments"] == state.num_segments
    assert info["fingerprint"] == expect.fingerprint and "state/memory.safetensors" in info["files"]
    assert len(cache) == 1


def test_miss_for_unknown_key_and_entry_survives_a_restart(tmp_path, state, expect):
    MemoryCache(tmp_path).put("abc123", state, expect)
    again = MemoryCache(tmp_path)  # a new process opening the same folder
    assert again.get("def456", expect) is None
    assert again.get("abc123", expect) is not None


def test_key_depends_on_content_and_model(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("same text")
    digest = open_document(path).digest
    assert entry_key(digest, "model-a") != entry_key(digest, "model-b")
    assert entry_key(digest, "model-a") == entry_key(open_document(path).digest, "model-a")
    assert text_digest("same text") != digest


@pytest.mark.parametrize("damage", ["truncate_tensors", "garbage_json", "missing_entry", "wrong_segments",
                                    "edited_text", "extra_file", "missing_file", "other_model", "wrong_width", "nan",
                                    "wrong_dtype", "rows_without_segments"])
def test_an_entry_that_does_not_pass_every_check_is_dropped(tmp_path, state, expect, damage):
    cache = MemoryCache(tmp_path)
    cache.put("abc123", state, expect)
    folder = tmp_path / "abc123"
    tensors = folder / STATE_DIR / "memory.safetensors"
    entry = json.loads((folder / ENTRY_FILE).read_text())
    if damage == "truncate_tensors":
        tensors.write_bytes(tensors.read_bytes()[:100])
    elif damage == "garbage_json":
        (folder / STATE_DIR / "state.json").write_text("{not json")
    elif damage == "missing_entry":
        (folder / ENTRY_FILE).unlink()
    elif damage == "wrong_segments":
        (folder / ENTRY_FILE).write_text(json.dumps({**entry, "segments": 999}))
    elif damage == "edited_text":  # valid JSON, another text: served as the document it is not
        path = folder / STATE_DIR / "state.json"
        path.write_text(path.read_text().replace("lighthouse keeper", "lighthouse robber"))
    elif damage == "extra_file":
        (folder / STATE_DIR / "extra.bin").write_bytes(b"x")
    elif damage == "missing_file":
        next((folder / STATE_DIR / "lexical").iterdir()).unlink()
    elif damage == "other_model":
        (folder / ENTRY_FILE).write_text(json.dumps({**entry, "fingerprint": "another model"}))
    elif damage == "wrong_width":
        rewrite(folder, cache=torch.zeros(state.cache.shape[0], 64))
    elif damage == "nan":
        rewrite(folder, cache=torch.full_like(state.cache, float("nan")))
    elif damage == "wrong_dtype":
        rewrite(folder, cache=state.cache.half())
    else:
        rewrite(folder, cache=torch.cat([state.cache, state.cache]))
    with pytest.raises(CacheDamaged):
        cache.get("abc123", expect)
    assert not folder.exists()
    cache.put("abc123", state, expect)  # read again and stored again
    assert cache.get("abc123", expect) is not None


@pytest.mark.parametrize("keys", ["none", "wrong_shape", "inf", "float32"])
def test_token_keys_must_fit_the_model(tmp_path, fused, keys):
    state = read_text(fused.model, fused.tokenizer, "\n".join(FACTS), source="keeper.txt")
    expect = fused.expected_memory()
    n = state.num_segments
    assert expect.token_keys == (4, 8) and list(state.token_keys.shape) == [n, 4, 8]
    cache = MemoryCache(tmp_path)
    cache.put("abc123", state, expect)
    folder = tmp_path / "abc123"
    if keys == "none":
        path = folder / STATE_DIR / "memory.safetensors"
        save_file({"cache": load_file(str(path))["cache"]}, str(path))
        rewrite(folder)
    elif keys == "wrong_shape":
        rewrite(folder, token_keys=torch.zeros(n, 4, 16, dtype=torch.float16))
    elif keys == "inf":
        rewrite(folder, token_keys=torch.full((n, 4, 8), float("inf"), dtype=torch.float16))
    else:
        rewrite(folder, token_keys=state.token_keys.float())
    with pytest.raises(CacheDamaged, match="token keys"):
        cache.get("abc123", expect)
    plain = MemoryCache(tmp_path / "plain")  # keys where the model keeps none do not fit either
    plain.put("abc123", state, replace(expect, token_keys=None))
    assert len(plain) == 0


def test_a_state_that_does_not_fit_the_model_is_not_stored(tmp_path, state, expect):
    cache = MemoryCache(tmp_path)
    cache.put("abc123", state, replace(expect, width=64))
    assert len(cache) == 0 and not list(tmp_path.glob(f"*{TMP_MARK}*"))


def test_an_entry_of_the_older_format_is_a_plain_miss(tmp_path, state, expect):
    cache = MemoryCache(tmp_path)
    cache.put("abc123", state, expect)
    entry = tmp_path / "abc123" / ENTRY_FILE
    entry.write_text(json.dumps({**json.loads(entry.read_text()), "format": 1}))
    assert cache.get("abc123", expect) is None and len(cache) == 0


def test_crash_mid_write_leaves_no_entry_and_is_swept(tmp_path, state, expect):
    cache = MemoryCache(tmp_path)
    crashed = tmp_path / f"abc123{TMP_MARK}deadbeef"  # what a writer killed before its rename leaves behind
    (crashed / "state").mkdir(parents=True)
    (crashed / "state" / "memory.safetensors").write_bytes(b"partial")
    assert cache.get("abc123", expect) is None
    assert len(cache) == 0
    cache.put("abc123", state, expect)
    assert cache.get("abc123", expect) is not None
    assert cache.sweep() == 0  # too recent: might be another process still writing
    old = time.time() - 7200
    os.utime(crashed, (old, old))
    assert MemoryCache(tmp_path).get("abc123", expect) is not None  # opening the cache sweeps it
    assert not crashed.exists()


def test_second_writer_keeps_the_first_entry(tmp_path, state, expect):
    cache = MemoryCache(tmp_path)
    cache.put("abc123", state, expect, {"name": "first"})
    cache.put("abc123", state, expect, {"name": "second"})
    assert cache.get("abc123", expect)[1]["name"] == "first"
    assert not list(tmp_path.glob(f"*{TMP_MARK}*"))


def test_keys_cannot_escape_the_folder(tmp_path, expect):
    with pytest.raises(ValueError):
        MemoryCache(tmp_path).get("../etc", expect)


def test_everything_is_written_private(tmp_path, state, expect):
    root = tmp_path / "memories"
    cache = MemoryCache(root)
    cache.put("abc123", state, expect)
    paths = [root, *root.rglob("*")]
    assert len(paths) > 5
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


def entry_size(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_the_least_recently_used_entries_go_when_the_cache_is_full(tmp_path, state, expect):
    MemoryCache(tmp_path / "probe").put("probe", state, expect)
    size = entry_size(tmp_path / "probe")
    cache = MemoryCache(tmp_path / "cache", max_mb=2.5 * size / MB)  # room for two entries
    cache.put("aaa", state, expect)
    cache.put("bbb", state, expect)
    long_ago = time.time() - 3600
    for key in ("aaa", "bbb"):
        os.utime(tmp_path / "cache" / key / ENTRY_FILE, (long_ago, long_ago))
    assert cache.get("aaa", expect) is not None  # a hit makes aaa the more recently used
    cache.put("ccc", state, expect)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["aaa", "ccc"]
    assert entry_size(tmp_path / "cache") <= cache.max_bytes
    tiny = MemoryCache(tmp_path / "tiny", max_mb=size / 2 / MB)  # one entry is larger than the whole cache
    tiny.put("aaa", state, expect)
    assert len(tiny) == 0


def test_entries_expire_after_the_age_limit(tmp_path, state, expect):
    cache = MemoryCache(tmp_path, max_days=30)
    cache.put("old", state, expect)
    cache.put("new", state, expect)
    entry = tmp_path / "old" / ENTRY_FILE
    entry.write_text(json.dumps({**json.loads(entry.read_text()), "created": time.time() - 31 * 86400}))
    assert cache.get("old", expect) is None and not (tmp_path / "old").exists()
    entry = tmp_path / "new" / ENTRY_FILE
    entry.write_text(json.dumps({**json.loads(entry.read_text()), "created": time.time() - 31 * 86400}))
    MemoryCache(tmp_path, max_days=30)  # opening the cache deletes what expired, used or not
    assert len(cache) == 0


# --- through the handlers: what a session sees ----------------------------------------------------------------


def page_view(final: dict) -> dict:
    """What the page shows after a read (status, progress, documents list), with nothing that differs by run."""
    return {k: final[k] for k in ("status", "progress", "documents")}


def test_a_hit_reads_like_any_finished_read(handlers, pdf):
    first, second = Session(), Session()
    fresh = run(handlers.ingest([str(pdf)], "", "", first))
    hit = run(handlers.ingest([str(pdf)], "", "", second))
    assert second.documents[0].from_cache and not first.documents[0].from_cache
    assert page_view(hit) == page_view(fresh)
    assert "ℹ️ Read “keeper.pdf”." in unescape(hit["status"])
    for word in ("cache", "before", "already"):
        assert word not in " ".join(page_view(hit).values()).lower()
    assert handlers.memory_panel(first) == handlers.memory_panel(second)
    summary, _ = list(handlers.api_ingest([str(pdf)], "", "", Session()))[-1]  # it streams; the last is the summary
    again, _ = list(handlers.api_ingest([str(pdf)], "", "", Session()))[-1]
    assert summary == again and "cache" not in summary.lower()


@pytest.mark.parametrize("damage", ["wrong_width", "nan", "edited_text"])
def test_a_wrong_entry_is_read_again_and_the_session_still_answers(handlers, pdf, damage):
    run(handlers.ingest([str(pdf)], "", "", Session()))
    (folder,) = [p for p in handlers.cache.root.iterdir() if p.is_dir()]
    cached = load_file(str(folder / STATE_DIR / "memory.safetensors"))["cache"]
    if damage == "wrong_width":  # the "mat1 and mat2 shapes cannot be multiplied" at every question
        rewrite(folder, cache=torch.zeros(cached.shape[0], 2 * cached.shape[1]))
    elif damage == "nan":  # the confident answers with no citations
        rewrite(folder, cache=torch.full_like(cached, float("nan")))
    else:  # the entry with edited text, served as the document
        path = folder / STATE_DIR / "state.json"
        path.write_text(path.read_text().replace("lighthouse keeper", "lighthouse robber"))
    session = Session()
    final = run(handlers.ingest([str(pdf)], "", "", session))
    assert "The stored memory of “keeper.pdf” was damaged, so it was read again." in unescape(final["status"])
    assert not session.documents[0].from_cache and "robber" not in session.memory.sources["keeper.pdf"].text
    assert bool(torch.isfinite(session.memory.cache).all())
    answer = run(handlers.ask("What is the passkey?", session, "reread", 8, 0.0))
    assert answer["ask_status"] == "" and answer["result"]["citations"]
    assert handlers.cache.get(next(p.name for p in handlers.cache.root.iterdir()),
                              handlers.engine.expected_memory()) is not None  # stored again, whole


def test_a_hit_whose_sentences_were_split_by_an_older_rule_is_embedded_once_on_loading(tokenizer, cache, pdf,
                                                                                        tmp_path):
    torch.manual_seed(0)
    config = HMTConfig(segment_length=32, sensory_size=4, token_key_layer=1, token_key_width=8,
                       token_keys_per_segment=4, recall_fusion={**FUSION, "sentence": 0.2})
    save_checkpoint(HMT(make_backbone("llama"), config), tmp_path / "weights")
    engine = Engine()
    engine.attach(make_backbone("llama"), tokenizer, tmp_path / "weights", "tiny-sentences")
    engine.model.embedder = SentenceEmbedder(tiny_bert(), tokenizer)
    handlers = Handlers(engine, cache, max_file_mb=1.0)
    first = Session()
    run(handlers.ingest([str(pdf)], "", "", first))
    assert len(first.memory.sentences) == first.memory.num_segments > 0
    (folder,) = [p for p in cache.root.iterdir() if p.is_dir()]
    saved = folder / STATE_DIR / "state.json"
    data = json.loads(saved.read_text())
    del data["sentence_splitting"]  # as memories cached before the splitting had a version
    saved.write_text(json.dumps(data))
    rewrite(folder)  # a manifest that matches
    second = Session()
    run(handlers.ingest([str(pdf)], "", "", second))
    assert second.documents[0].from_cache
    # embedded into the session's memory while it loads (under the loading's progress), not in the first answer
    assert len(second.memory.sentences) == second.memory.num_segments
    assert torch.equal(second.memory.sentences.vectors, first.memory.sentences.vectors)
