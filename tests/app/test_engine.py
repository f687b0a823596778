"""Reading and answering through the app's engine and ingest pipeline, on a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from apptools import run, tiny_engine
from pdf_factory import make_pdf
from tiny_models import make_backbone, save_tiny_adapter, tiny_bert

import app.engine as engine_module
from app.engine import UNTRAINED_NOTE, Engine, EngineError, untrained_hmt
from app.handlers import Handlers
from app.extract import Document, open_document
from app.ingest import Upload, ingest, pieces_of
from app.session import Session
from app.views import documents_markdown, unescape
from hmt_core import save_checkpoint
from hmt_core.answer import NOT_FOUND, NOT_FOUND_FILE, NotFoundRule


def test_ingest_reports_progress_then_a_ready_memory(engine, cache, pdf):
    session = Session()
    reports = list(ingest(session, engine, cache, [Upload("keeper.pdf", path=pdf)], batch_segments=1))
    phases = [r.phase for r in reports]
    assert phases[-1] == "done" and "read" in phases
    reading = [r.fraction for r in reports if r.phase == "read"]
    assert reading == sorted(reading) and all(0 < f < 1 for f in reading)
    assert any("tokens/s" in r.message for r in reports if r.phase == "read")
    assert session.ready and session.documents[0].pages == 3
    state = session.memory
    assert state.num_segments == session.documents[0].segments == state.cache.shape[0]
    assert {s.page_start for s in state.segments} <= {1, 2, 3}
    assert state.cache.device.type == "cpu"
    assert "Memory ready: 1 document" in reports[-1].message


def test_reading_in_pieces_matches_reading_at_once(engine, pdf):
    opened = open_document(pdf)
    document = Document(opened.name, [page for page in opened.pages if page.text], opened.kind)
    reader = engine.new_reader()
    for piece in pieces_of(document):
        reader.feed(piece.text, source="keeper.pdf", page=piece.page)
    reader.finish()
    session = Session()
    reports = list(ingest(session, engine, None, [Upload("keeper.pdf", path=pdf)], batch_segments=1))
    assert reports[-1].phase == "done"
    assert torch.allclose(session.memory.cache, reader.state.cache, atol=1e-5)


def test_cached_document_loads_without_reading(engine, cache, pdf, monkeypatch):
    first = Session()
    list(ingest(first, engine, cache, [Upload("keeper.pdf", path=pdf)]))
    monkeypatch.setattr(Engine, "read", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read again")))
    second = Session()
    reports = list(ingest(second, engine, cache, [Upload("renamed.pdf", path=pdf)]))
    assert reports[-1].notes == ["Read “renamed.pdf”."]  # as a fresh read says it: nothing about the cache
    assert second.documents[0].from_cache and second.documents[0].name == "renamed.pdf"
    assert torch.equal(second.memory.cache, first.memory.cache)
    assert set(second.memory.sources) == {"renamed.pdf"}


def test_untrained_memory_is_the_same_after_a_restart(tokenizer):
    """Seeded initialisation: two processes (engines) get the same fingerprint, so the disk cache stays valid."""
    assert tiny_engine(tokenizer).fingerprint == tiny_engine(tokenizer).fingerprint
    assert tiny_engine(tokenizer).fingerprint != tiny_engine(tokenizer, seed=1).fingerprint
    a, b = untrained_hmt(make_backbone("llama")), untrained_hmt(make_backbone("llama"))
    assert torch.equal(a.summary_prompt, b.summary_prompt)


def test_missing_weights_are_said_plainly(engine, tmp_path):
    assert not engine.trained and engine.weights_note.startswith(UNTRAINED_NOTE)
    assert engine.channels() == ("memory",)  # untrained weights weigh HMT's own recall only
    other = Engine()
    other.attach(make_backbone("llama"), engine.tokenizer, str(tmp_path / "nowhere"), "tiny")
    assert UNTRAINED_NOTE in other.weights_note and "nowhere" in other.weights_note


def test_trained_weights_are_loaded_and_change_the_fingerprint(engine, tmp_path):
    trained = untrained_hmt(make_backbone("llama"))
    with torch.no_grad():
        trained.wq.weight.mul_(2)
    save_checkpoint(trained, tmp_path / "ckpt")
    other = Engine()
    other.attach(make_backbone("llama"), engine.tokenizer, str(tmp_path / "ckpt"), "tiny")
    assert other.trained and "Trained HMT weights" in other.weights_note
    assert other.fingerprint != engine.fingerprint


def test_int8_engine_reads_with_a_quantised_backbone_and_its_own_fingerprint(engine, tmp_path):
    other = Engine()
    other.attach(make_backbone("llama"), engine.tokenizer, str(tmp_path / "nowhere"), "tiny", quantize="int8")
    assert other.quantize == "int8" and "linear layers in int8" in other.describe_model()
    assert "int8" not in engine.describe_model()
    assert other.fingerprint != engine.fingerprint  # memories read in fp32 are not served to int8, nor back
    reader = other.new_reader()
    reader.feed("The passkey is 12345. " * 40, source="a.txt", page=1)
    reader.finish()
    assert reader.state.num_segments >= 1 and torch.isfinite(reader.state.cache).all()
    with pytest.raises(EngineError, match="Unknown quantisation"):
        other.load("tiny", quantize="int4")
    gpt2 = Engine()
    with pytest.raises(EngineError, match="Llama-style"):
        gpt2.attach(make_backbone("gpt2"), engine.tokenizer, None, "tiny gpt2", quantize="int8")
    assert not gpt2.loaded  # the failed quantisation replaced nothing


def test_weights_for_another_backbone_fall_back_to_untrained(engine, tmp_path):
    save_checkpoint(untrained_hmt(make_backbone("qwen2")), tmp_path / "qwen")
    other = Engine()
    other.attach(make_backbone("llama"), engine.tokenizer, str(tmp_path / "qwen"), "tiny")
    assert not other.trained and other.weights_note.startswith(UNTRAINED_NOTE)


def test_answer_streams_tokens_cites_pages_and_remembers_the_turn(handlers, ready):
    updates = list(handlers.ask("What is the passkey?", ready, "reread", 12, 0.0))
    chats = [u["chat"] for u in updates if "chat" in u]
    lengths = [len(c[-1]["content"]) for c in chats[1:-1]]
    assert len(lengths) >= 2 and lengths == sorted(lengths)  # the answer grows token by token
    final = run(iter(updates))
    assert final["result"]["citations"] and final["result"]["citations"][0]["source"] == "keeper.pdf"
    assert "Recalled from: keeper.pdf" in unescape(final["chat"][-1]["content"])
    assert '<mark class="hmt-word">passkey</mark>' in final["passages"].lower()
    assert "not used for this recall" in final["passages"]  # these weights weigh memory only
    assert final["result"]["citations"][0]["recall_channels"] == ["memory"]
    assert "Sensory memory" in final["memory"]
    assert ready.memory.sources["chat"].page_numbers == [1]
    run(handlers.ask("And the storm?", ready, "faithful", 8, 0.0))
    assert ready.memory.sources["chat"].page_numbers == [1, 2]
    assert len(ready.chat) == 4


def _long_pdf(tmp_path: Path) -> Path:
    """An 8-page PDF, long enough to be cancelled while it is read."""
    return make_pdf(tmp_path / "long.pdf", [f"Page {n}. " + "The tide rose and fell again. " * 40
                                            for n in range(1, 9)])


def _cancel_once_reading(handlers, session: Session, path: Path) -> dict:
    """Ingest `path`, press Cancel at the first 'Reading' progress, run the rest; returns the final update."""
    steps = handlers.ingest([str(path)], "", "", session)
    for update in steps:
        if "Reading" in update.get("progress", ""):
            handlers.cancel(session)
            break
    return run(steps)


def test_cancel_keeps_what_was_read_and_the_earlier_memory(handlers, ready, tmp_path):
    before = ready.memory.num_segments
    long_pdf = _long_pdf(tmp_path)
    final = _cancel_once_reading(handlers, ready, long_pdf)
    assert "Cancelled" in final["status"] and "up to p." in unescape(final["status"])
    assert ready.documents[0].name == "keeper.pdf" and ready.memory.num_segments > before
    assert not ready.documents[1].complete
    assert not ready.busy and not ready.cancel_requested
    assert len(handlers.cache) == 1  # a partly read document is not cached


def test_a_read_closed_from_outside_stops_and_keeps_what_was_read(handlers, ready, tmp_path):
    """What Gradio does when a client cancels a job or goes away: it stops iterating and the generator is closed."""
    before = ready.memory.num_segments
    long_pdf = _long_pdf(tmp_path)
    steps = handlers.api_ingest([str(long_pdf)], "", "", ready)
    for line, _ in steps:
        if line.startswith("Reading"):
            break
    steps.close()
    assert ready.memory.num_segments > before and not ready.documents[1].complete
    assert ready.documents[1].last_page < 8 and not ready.busy and not ready.cancel_requested
    assert len(handlers.cache) == 1  # a partly read document is not cached
    summary, _ = next(handlers.api_ingest([], "", "", ready))
    assert "partly read" in summary


def test_several_new_documents_are_read_together_into_the_memories_each_gets_alone(fused, cache, pdf, tmp_path):
    engine, long_pdf = fused, _long_pdf(tmp_path)  # the engine with every recall channel: token keys too
    together = Session()
    reports = list(ingest(together, engine, cache, [Upload("keeper.pdf", path=pdf), Upload("long.pdf", path=long_pdf)],
                          batch_segments=2))
    reading = [r.message for r in reports if r.phase == "read"]
    assert len(reading) > 2 and all("2 documents together" in line and "tokens/s" in line for line in reading)
    assert reports[-1].notes == ["Read “keeper.pdf”.", "Read “long.pdf”."] and len(cache) == 2
    alone = [Session(), Session()]
    for session, (name, path) in zip(alone, [("keeper.pdf", pdf), ("long.pdf", long_pdf)]):
        list(ingest(session, engine, None, [Upload(name, path=path)]))
    assert [d.name for d in together.documents] == ["keeper.pdf", "long.pdf"]
    assert all(d.complete for d in together.documents)
    assert [(s.source, s.char_start, s.char_end, s.page_start, s.num_tokens) for s in together.memory.segments] == [
        (s.source, s.char_start, s.char_end, s.page_start, s.num_tokens) for a in alone for s in a.memory.segments]
    torch.testing.assert_close(together.memory.cache, torch.cat([a.memory.cache for a in alone]), rtol=1e-4,
                               atol=1e-4)
    torch.testing.assert_close(together.memory.token_keys.float(),
                               torch.cat([a.memory.token_keys.float() for a in alone]), rtol=1e-2, atol=1e-2)


def test_a_cancel_while_reading_together_keeps_each_document_as_far_as_it_was_read(handlers, tmp_path):
    session = Session()
    paths = [_long_pdf(tmp_path), make_pdf(tmp_path / "other.pdf", [f"Page {n}. " + "Gulls fly over the harbour. " * 40
                                                                     for n in range(1, 9)])]
    steps = handlers.ingest([str(p) for p in paths], "", "", session)
    for update in steps:
        if "documents together" in update.get("progress", ""):
            handlers.cancel(session)
            break
    final = run(steps)
    status = unescape(final["status"])
    assert "“long.pdf” was read up to p." in status and "“other.pdf” was read up to p." in status
    assert "files after it" not in status and len(handlers.cache) == 0  # nothing partly read is cached
    assert [d.complete for d in session.documents] == [False, False]
    final = run(handlers.ingest([str(p) for p in paths], "", "", session))  # each goes on where it stopped
    status = unescape(final["status"])
    assert "Continued “long.pdf”" in status and "Continued “other.pdf”" in status
    assert [d.complete for d in session.documents] == [True, True] and len(handlers.cache) == 2


def test_documents_read_together_and_closed_from_outside_keep_what_was_read(handlers, tmp_path):
    session = Session()
    paths = [_long_pdf(tmp_path), make_pdf(tmp_path / "other.pdf", ["Gulls fly over the harbour. " * 40] * 8)]
    steps = handlers.api_ingest([str(p) for p in paths], "", "", session)
    for line, _ in steps:
        if "documents together" in line:
            break
    steps.close()
    assert [d.name for d in session.documents] == ["long.pdf", "other.pdf"]
    assert [d.complete for d in session.documents] == [False, False] and len(handlers.cache) == 0
    assert not session.busy and not session.cancel_requested


def test_changing_the_model_clears_memories_with_a_message(handlers, ready, tokenizer):
    handlers.engine.attach(make_backbone("llama", seed=3), tokenizer, None, "another tiny")
    final = run(handlers.ask("What is the passkey?", ready))
    assert "model was changed" in final["ask_status"]
    assert not ready.ready and ready.memory is None


def test_a_looping_answer_is_cut_after_its_first_round():
    from hmt_core.answer import cut_repetition

    loop = "but to be considered the proper morary of his character is not to be considered, "
    assert cut_repetition("Mr. Bingley is a rich young man who has taken Netherfield Park.") is None
    cut = cut_repetition("The answer is that " + loop * 4)
    assert cut is not None and cut.startswith("The answer is that") and cut.count("morary") == 1


def test_engine_reads_in_bounded_calls_and_returns_the_segments_it_read(engine, pdf):
    opened = open_document(pdf)
    document = Document(opened.name, [page for page in opened.pages if page.text], opened.kind)
    reader = engine.new_reader(summary_batch=1)  # the short document would fill no batch of 8
    pieces = iter(pieces_of(document))
    calls = []
    while new := engine.read(reader, pieces, "keeper.pdf", engine.fingerprint, 2):
        calls.append(new)
    calls.append(engine.finish(reader, engine.fingerprint))
    assert len(calls) > 2 and all(len(call) >= 2 for call in calls[:-2])  # each call reads about max_segments
    read = [segment for call in calls for segment in call]
    assert read == reader.state.segments  # every segment reported once, in order
    assert engine.read(reader, pieces, "keeper.pdf", engine.fingerprint, 2) == []  # the pieces have run out


def test_a_reading_step_gives_way_after_one_segment_when_an_answer_waits(engine, pdf, monkeypatch):
    assert engine.new_reader().summary_batch == engine_module.SUMMARY_BATCH > 1
    opened = open_document(pdf)
    document = Document(opened.name, [page for page in opened.pages if page.text], opened.kind)
    reader = engine.new_reader(summary_batch=2)  # a batch the short document fills
    pieces = iter(pieces_of(document))
    monkeypatch.setattr(engine.turns, "answer_waiting", lambda: True)
    first = engine.read(reader, pieces, "keeper.pdf", engine.fingerprint, 8)
    assert len(first) == 1 and reader.pending_tokens >= engine.segment_length  # the rest waits for the next step
    monkeypatch.setattr(engine.turns, "answer_waiting", lambda: False)
    while engine.read(reader, pieces, "keeper.pdf", engine.fingerprint, 8):
        pass
    engine.finish(reader, engine.fingerprint)
    alone = engine.new_reader()
    for piece in pieces_of(document):
        alone.feed(piece.text, source="keeper.pdf", page=piece.page)
    alone.finish()
    assert reader.state.segments == alone.state.segments
    torch.testing.assert_close(reader.state.cache, alone.state.cache, rtol=1e-4, atol=1e-5)


def test_the_page_never_shows_server_paths(handlers):
    from app.engine import PROJECT_ROOT
    from app.ui import build_ui

    note = handlers.model_note()
    assert "HMT weights" in note or "untrained" in note
    page = json.dumps(build_ui(handlers).config, default=str)
    for text in (note, page):
        assert str(PROJECT_ROOT) not in text and str(Path.home()) not in text


def test_a_partly_read_document_goes_on_from_where_it_stopped(handlers, ready, tmp_path):
    long_pdf = _long_pdf(tmp_path)
    _cancel_once_reading(handlers, ready, long_pdf)
    partly = ready.documents[1]
    assert not partly.complete and "read the rest" in unescape(documents_markdown(ready))
    read_before = len(ready.memory.sources["long.pdf"].text)
    final = run(handlers.ingest([str(long_pdf)], "", "", ready))
    assert "Continued “long.pdf”" in unescape(final["status"]) and "already in memory" not in final["status"]
    assert [d.name for d in ready.documents] == ["keeper.pdf", "long.pdf"]
    whole = ready.documents[1]
    assert whole.complete and whole.last_page == 8 and not ready.partial
    assert whole.segments > partly.segments and len(handlers.cache) == 2  # now read in full, so cached
    state = ready.memory
    mine = [s.index for s in state.segments if s.source == "long.pdf"]
    assert mine == list(range(whole.first_segment, whole.first_segment + whole.segments))
    text = state.sources["long.pdf"].text
    assert len(text) > read_before and "".join(state.segment_text(i) for i in mine) == text  # nothing skipped twice
    assert text == "\n\n".join(p.text for p in open_document(long_pdf, "long.pdf", None, None).pages if p.text)
    assert len(state.lexical) == state.num_segments and state.cache.shape[0] == state.num_segments



def test_the_answer_adapter_is_loaded_when_it_fits_and_said_why_not_otherwise(engine, tmp_path, monkeypatch):
    save_tiny_adapter(tmp_path / "adapter")
    monkeypatch.setattr(engine_module, "DEFAULT_ADAPTER", tmp_path / "adapter")
    fits = Engine()
    fits.attach(make_backbone("llama"), engine.tokenizer, None, "tiny")
    assert fits.adapter is not None and fits.adapter_note.startswith("Answer adapter adapter (LoRA rank 4")
    assert fits.fingerprint == engine.fingerprint  # memories do not depend on the adapter, which is off while reading
    int8 = Engine()
    int8.attach(make_backbone("llama"), engine.tokenizer, None, "tiny", quantize="int8")
    assert int8.adapter is None and "full-precision" in int8.adapter_note
    other = Engine()
    other.attach(make_backbone("llama", seed=5), engine.tokenizer, None, "tiny")
    assert other.adapter is None and "another backbone" in other.adapter_note
    monkeypatch.setattr(engine_module, "DEFAULT_ADAPTER", tmp_path / "none")
    none = Engine()
    none.attach(make_backbone("llama"), engine.tokenizer, None, "tiny")
    assert none.adapter is None and none.adapter_note == "No answer adapter is shipped for this backbone."


def test_settings_switch_the_adapter_and_not_found(tokenizer, cache, pdf, tmp_path, monkeypatch):
    save_tiny_adapter(tmp_path / "adapter")
    monkeypatch.setattr(engine_module, "DEFAULT_ADAPTER", tmp_path / "adapter")
    weights = tmp_path / "weights"
    save_checkpoint(untrained_hmt(make_backbone("llama")), weights)
    (weights / NOT_FOUND_FILE).write_text(json.dumps({"confidence": "weight_top", "below": 2.0}))  # never sure
    engine = Engine()
    engine.attach(make_backbone("llama"), tokenizer, weights, "tiny")
    assert engine.not_found == NotFoundRule("weight_top", 2.0)
    handlers = Handlers(engine, cache)
    session = Session()
    run(handlers.ingest([str(pdf)], "", "", session))
    said = run(handlers.ask("What is the passkey?", session, "reread", 8, 0.0))
    assert said["result"]["answer"] == NOT_FOUND and said["result"]["found"] is False
    assert said["result"]["citations"]  # the closest passages, still shown
    closest = said["result"]["evidence"]  # with the sentence nearest the question, not as support for an answer
    assert closest["supports_answer"] is False and "passkey" in closest["text"]
    assert closest["not_found_by"] == "recall" and closest["answer_span"] is None
    chat = unescape(said["chat"][-1]["content"])
    assert "Closest passages" in chat and "Closest sentence (" in chat and "Evidence (" not in chat
    assert "Why “not found”: recall found no passage that seems to hold the answer." in chat
    shown = unescape(said["passages"])
    assert "Closest sentence (no answer found)" in shown and "the closest sentence</mark>" in shown
    assert "the evidence</mark>" not in shown
    on = run(handlers.ask("What is the passkey?", session, "reread", 8, 0.0, None, True, False))
    off = run(handlers.ask("What is the passkey?", session, "reread", 8, 0.0, None, False, False))
    assert on["result"]["found"] and off["result"]["found"]
    assert on["result"]["answer"] != off["result"]["answer"]  # the adapter changes what is generated
    assert handlers.adapter_update()["value"] is True


def test_the_sentence_embedder_is_loaded_once_and_its_absence_is_no_error(tokenizer, monkeypatch):
    """Without the embedder (offline, no wheel, no hub) the engine still answers, with evidence chosen without it;
    with it, every answer's evidence is weighed by it."""
    from hmt_core.backbone import BackboneError
    from hmt_core.embedder import SentenceEmbedder

    engine = tiny_engine(tokenizer)
    calls = []

    def unavailable():
        calls.append(1)
        raise BackboneError("no wheel, no hub")

    monkeypatch.setattr(engine_module, "load_embedder", unavailable)
    engine._load_embedder()
    assert engine.embedder is None and calls == [1]
    embedder = SentenceEmbedder(tiny_bert(), tokenizer)
    monkeypatch.setattr(engine_module, "load_embedder", lambda: embedder)
    engine._load_embedder()
    engine._load_embedder()
    assert engine.embedder is embedder
    session = Session()
    list(ingest(session, engine, None, [Upload("keeper.txt", text="The keeper counted nine ships. " * 40)]))
    asked = []
    real = embedder.similarities
    monkeypatch.setattr(embedder, "similarities", lambda q, s: asked.append(q) or real(q, s))
    done = list(engine.answer(session.memory, "How many ships?", session.fingerprint, max_new_tokens=4))[-1]
    assert done.kind == "done" and asked == ["How many ships?"]
