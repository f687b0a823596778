"""Sessions are isolated, and a session's memory is its documents' memories one after another."""

from __future__ import annotations

import torch
from apptools import FACTS, NOTES, run

from app.session import Session
from hmt_core import MemoryState, read_text


def test_two_sessions_never_see_each_other(handlers, tmp_path):
    (tmp_path / "alpha.txt").write_text("The alpha report says the bridge is red. " * 30)
    (tmp_path / "beta.txt").write_text("The beta report says the tower is green. " * 30)
    alice, bob = Session(), Session()
    run(handlers.ingest([str(tmp_path / "alpha.txt")], "", "", alice))
    run(handlers.ingest([str(tmp_path / "beta.txt")], "", "", bob))
    assert set(alice.memory.sources) == {"alpha.txt"} and set(bob.memory.sources) == {"beta.txt"}
    answer = run(handlers.ask("What colour is it?", alice, "reread", 4, 0.0))
    assert {c["source"] for c in answer["result"]["citations"]} <= {"alpha.txt"}
    assert bob.chat == [] and "chat" not in bob.memory.sources
    assert alice.memory.cache.data_ptr() != bob.memory.cache.data_ptr()


def test_new_sessions_start_empty():
    from app.handlers import new_session

    a, b = new_session(), new_session()
    a.documents.append("x")
    assert b.documents == [] and not b.ready


def test_extending_a_memory_renumbers_segments_and_keeps_sources(engine):
    one = read_text(engine.model, engine.tokenizer, FACTS[0] * 3, source="one.txt")
    two = read_text(engine.model, engine.tokenizer, FACTS[1] * 3, source="two.txt")
    both = one.copy().extend(two, 100)
    assert both.num_segments == one.num_segments + two.num_segments
    assert [s.index for s in both.segments] == list(range(both.num_segments))
    assert both.cache_segments == list(range(both.num_segments))
    assert both.segment_text(one.num_segments) == two.segment_text(0)
    assert torch.equal(both.cache[one.num_segments:], two.cache)
    assert both.sensory_ids == two.sensory_ids
    kept = one.copy().extend(two, 3)
    assert kept.cache.shape[0] == 3 and kept.cache_segments[-1] == kept.num_segments - 1


def test_same_name_different_bytes_gets_a_new_name(handlers, tmp_path):
    session = Session()
    first, second = tmp_path / "a" / "notes.txt", tmp_path / "b" / "notes.txt"
    for path, text in ((first, "First notes about apples. " * 20), (second, "Second notes about pears. " * 20)):
        path.parent.mkdir()
        path.write_text(text)
    run(handlers.ingest([str(first)], "", "", session))
    final = run(handlers.ingest([str(second), str(first)], "", "", session))
    assert [d.name for d in session.documents] == ["notes.txt", "notes (2).txt"]
    assert "already in memory" in final["status"]
    assert set(session.memory.sources) == {"notes.txt", "notes (2).txt"}


def test_appending_a_document_extends_the_memory_with_its_word_index_and_token_keys(fused_handlers, notes_ready,
                                                                                 monkeypatch, tmp_path):
    calls = []
    extend = MemoryState.extend
    monkeypatch.setattr(MemoryState, "extend", lambda self, other, keep: calls.append(keep) or extend(self, other,
                                                                                                      keep))
    first = notes_ready.memory.num_segments
    (tmp_path / "zoo.txt").write_text("The okapi lives in the forest of the Congo. " * 8)
    run(fused_handlers.ingest([str(tmp_path / "zoo.txt")], "", "", notes_ready))
    assert calls == [fused_handlers.engine.memory_segments]
    state = notes_ready.memory
    assert state.num_segments > first and len(state.lexical) == state.num_segments
    assert state.token_keys.shape[0] == state.num_segments
    okapi = state.lexical.scores("okapi")
    assert int(okapi.argmax()) >= first and float(okapi[:first].max()) == 0  # found where it was appended
    zebra = next(i for i in range(first) if "zebra" in state.segment_text(i))
    assert int(state.lexical.scores("zebra").argmax()) == zebra


def test_a_renamed_source_keeps_the_word_index_token_keys_and_notes(fused):
    state = read_text(fused.model, fused.tokenizer, NOTES, source="notes.txt")
    state.notes.append("Rebuilt the word index from the text: a test.")
    renamed = state.renamed("notes.txt", "copy.txt")
    assert set(renamed.sources) == {"copy.txt"} and {s.source for s in renamed.segments} == {"copy.txt"}
    assert torch.equal(renamed.token_keys, state.token_keys) and renamed.notes == state.notes
    assert torch.equal(renamed.lexical.scores("zebra"), state.lexical.scores("zebra"))
    assert set(state.sources) == {"notes.txt"}  # the original is untouched


def test_a_memory_without_a_source_keeps_the_rest_renumbered_with_its_index(fused):
    one = read_text(fused.model, fused.tokenizer, NOTES, source="one.txt")
    two = read_text(fused.model, fused.tokenizer, "The okapi lives in the forest of the Congo. " * 8,
                    source="two.txt")
    both = one.copy().extend(two, 100)
    rest = both.without("one.txt")
    assert set(rest.sources) == {"two.txt"} and rest.num_segments == two.num_segments
    assert [s.index for s in rest.segments] == list(range(two.num_segments))
    assert rest.cache_segments == list(range(two.num_segments))
    assert torch.equal(rest.cache, two.cache) and torch.equal(rest.token_keys, two.token_keys)
    assert rest.segment_text(0) == two.segment_text(0) and len(rest.lexical) == rest.num_segments
    assert int(rest.lexical.scores("okapi").argmax()) == 0 and both.num_segments == one.num_segments + two.num_segments
    assert both.without("absent.txt") is both
