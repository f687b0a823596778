import random

import pytest
import torch
from tiny_models import CORPUS

from hmt_core import HMT, HMTConfig, Reader, read_text
from hmt_core.reader import HARD_CHUNK, SOFT_CHUNK, TextChunker, read_step, read_together

TEXT = "\n".join(CORPUS * 12) + " " + "word " * 900 + "x" * (HARD_CHUNK + 50) + " tail."


def _pieces(text: str, rng: random.Random) -> list[str]:
    pieces, i = [], 0
    while i < len(text):
        n = rng.choice([1, 2, 7, 50, 333, 4000])
        pieces.append(text[i:i + n])
        i += n
    return pieces


def test_chunker_cuts_depend_on_the_text_only():
    whole = TextChunker().push(TEXT, final=True)
    chunker, pieced = TextChunker(), []
    for piece in _pieces(TEXT, random.Random(1)):
        pieced += chunker.push(piece)
    pieced += chunker.push("", final=True)
    assert pieced == whole
    assert "".join(c for _, c in whole) == TEXT
    assert all(len(c) <= HARD_CHUNK for _, c in whole)
    assert any(len(c) > SOFT_CHUNK for _, c in whole)


def _model(backbone, **kwargs) -> HMT:
    torch.manual_seed(0)
    return HMT(backbone, HMTConfig(segment_length=32, sensory_size=4, cache_size=400, **kwargs))


@pytest.mark.parametrize("seed", [0, 1])
def test_reading_in_pieces_equals_reading_at_once(backbone, tokenizer, seed):
    model = _model(backbone)
    once = read_text(model, tokenizer, TEXT)
    reader = Reader(model, tokenizer)
    memories = []
    for piece in _pieces(TEXT, random.Random(seed)):
        memories += [r.memory for r in reader.feed(piece)]
    memories += [r.memory for r in reader.finish()]
    pieced = reader.state
    assert pieced.num_segments == once.num_segments > 10
    assert torch.equal(pieced.cache, once.cache)
    assert torch.equal(torch.stack(memories[-once.cache.shape[0]:]), once.cache)
    assert pieced.segments == once.segments and pieced.sensory_ids == once.sensory_ids


def test_ids_in_pieces_equal_ids_at_once_with_the_same_logits(backbone):
    model = _model(backbone)
    ids = torch.randint(0, 400, (100,)).tolist()
    one = Reader(model, None)
    whole = one.feed_ids(ids) + one.finish()
    two = Reader(model, None)
    parts = []
    for i in range(0, 100, 7):
        parts += two.feed_ids(ids[i:i + 7])
    parts += two.finish()
    assert [r.info for r in parts] == [r.info for r in whole]
    assert torch.equal(one.state.cache, two.state.cache)
    # the same segments re-read one by one give the same logits, and match the training forward
    state = model.new_state()
    logits = [model.read_segment(state, ids[i:i + 32], i // 32, return_logits=True).logits for i in range(0, 100, 32)]
    forward = model(torch.tensor([ids]), mode="recall", return_logits=True)
    for a, b in zip(logits, forward.logits):
        assert torch.allclose(a, b[0], atol=1e-5)
    assert torch.allclose(state.cache, one.state.cache, atol=1e-5)


def test_recall_weights_cover_every_earlier_segment_and_sum_to_one(backbone, tokenizer):
    reader = Reader(_model(backbone), tokenizer)
    results = reader.feed(TEXT[:3000]) + reader.finish()
    assert results[0].recall_weights is None
    for r in results[1:]:
        assert r.recall_weights.shape == (r.info.index,)
        assert torch.allclose(r.recall_weights.sum(), torch.tensor(1.0), atol=1e-5)


def test_cache_keeps_the_newest_n_and_old_segments_get_zero_weight(backbone):
    model = HMT(backbone, HMTConfig(segment_length=8, sensory_size=2, cache_size=3))
    reader = Reader(model, None)
    results = reader.feed_ids(list(range(80))) + reader.finish()
    assert reader.state.cache.shape[0] == 3 and reader.state.cache_segments == [7, 8, 9]
    last = results[-1].recall_weights
    assert last.shape == (9,) and torch.all(last[:6] == 0) and torch.allclose(last[6:].sum(), torch.tensor(1.0))


def test_pages_and_character_spans_are_kept(backbone, tokenizer):
    reader = Reader(_model(backbone), tokenizer)
    pages = [f"Page {n} says something about topic {n}. " * 6 for n in range(1, 5)]
    for n, text in enumerate(pages, 1):
        reader.feed(text, source="book.pdf", page=n)
    reader.feed("Another file entirely. " * 5, source="notes.txt")
    reader.finish()
    state = reader.state
    book = [s for s in state.segments if s.source == "book.pdf"]
    assert book[0].page_start == 1 and book[-1].page_end == 4
    assert all(s.page_start <= s.page_end for s in book)
    src = state.sources["book.pdf"].text
    assert "".join(state.segment_text(s.index) for s in book) == src.rstrip() or src.startswith(state.segment_text(0))
    assert state.segments[-1].source == "notes.txt"  # a new source starts a new segment
    assert state.segment_text(state.segments[-1].index).strip().endswith("entirely.")
    for s in book:
        text = state.segment_text(s.index)
        page = int(text.split("Page ")[1].split()[0]) if "Page " in text else None
        if page is not None:
            assert s.page_start <= page <= s.page_end


def test_a_state_can_keep_more_memories_than_reading_recalls_over(backbone):
    model = HMT(backbone, HMTConfig(segment_length=8, sensory_size=2, cache_size=3))
    reader = Reader(model, None, model.new_state(keep=100))
    results = reader.feed_ids(list(range(80))) + reader.finish()
    state = reader.state
    assert state.cache.shape[0] == 10  # everything kept
    last = results[-1].recall_weights  # reading recalled over the newest N = 3 only, as in training
    assert torch.all(last[:6] == 0) and torch.allclose(last[6:].sum(), torch.tensor(1.0))
    weights = model.recall_weights(state, [1, 2, 3])  # answering recalls over all ten
    assert weights.shape == (10,) and torch.all(weights > 0)
    assert torch.equal(weights, model.begin_segment(state, [], query_ids=[1, 2, 3])[1])
    assert model.recall_weights(model.new_state(), [1, 2, 3]) is None


@pytest.mark.parametrize("batch", [2, 5])
def test_batched_summary_passes_write_the_same_memories_as_one_at_a_time(backbone, tokenizer, batch):
    model = _model(backbone, token_key_layer=1, token_key_width=8, token_keys_per_segment=4)
    text = TEXT[:3000] + " a short last segment."
    one = Reader(model, tokenizer)
    one_done = one.feed(text, "doc") + one.finish()
    batched = Reader(model, tokenizer, summary_batch=batch)
    batched_done = []
    for piece in _pieces(text, random.Random(3)):
        batched_done += batched.feed(piece, "doc")
    batched_done += batched.finish()
    assert one_done[-1].info.num_tokens < model.segment_length  # a padded row in the last batch
    assert [s.info for s in batched_done] == [s.info for s in one_done]
    torch.testing.assert_close(batched.state.cache, one.state.cache, rtol=1e-4, atol=1e-4)
    for a, b in zip(batched_done, one_done):
        if b.recall_weights is not None:
            torch.testing.assert_close(a.recall_weights, b.recall_weights, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched.state.token_keys.float(), one.state.token_keys.float(), rtol=1e-2, atol=1e-2)


def test_a_reader_with_summary_batches_returns_segments_only_in_whole_batches(backbone, tokenizer):
    model = _model(backbone)
    reader = Reader(model, tokenizer, summary_batch=3)
    done = reader.feed(TEXT[:3000], "doc")
    assert len(done) % 3 == 0 and reader.pending_tokens < 3 * model.segment_length
    with pytest.raises(ValueError):
        Reader(model, tokenizer, summary_batch=0)


def test_a_stop_mid_batch_keeps_its_summaries_for_the_segments_still_pending(backbone, tokenizer):
    model = _model(backbone)
    text = TEXT[:3000] + " a short last segment."
    one = Reader(model, tokenizer)
    one.feed(text, "doc")
    one.finish()
    batches = []
    summarize = model.summarize_segments
    model.summarize_segments = lambda heads: batches.append(len(heads)) or summarize(heads)
    reader = Reader(model, tokenizer, summary_batch=4)
    first = reader.feed(text[:1500], "doc", stop=lambda: True)
    assert len(first) == 1 and batches == [4]  # one batch of summaries, one main pass, then it gave way
    done = first + reader.feed(text[1500:], "doc", stop=lambda: True)
    assert len(done) == 2 and batches == [4]  # the next segment used a summary already made
    done += reader.finish()
    assert [s.info for s in done] == one.state.segments
    assert sum(batches) == len(done) and all(b <= 4 for b in batches)  # every summary made once
    torch.testing.assert_close(reader.state.cache, one.state.cache, rtol=1e-4, atol=1e-4)
    stopped = Reader(model, tokenizer, summary_batch=4)
    stopped.feed(text, "doc", stop=lambda: True)  # summaries made, their segments still pending
    with pytest.raises(ValueError, match="read=False"):
        read_together([stopped])


def test_documents_read_together_get_the_memories_they_get_alone(backbone, tokenizer):
    model = _model(backbone, token_key_layer=1, token_key_width=8, token_keys_per_segment=4)
    texts = [TEXT[:2500], TEXT[1000:1400] + " a short one.", TEXT[200:1900]]  # different numbers of segments
    alone = [Reader(model, tokenizer) for _ in texts]
    for reader, text in zip(alone, texts):
        reader.feed(text[:700], "doc", page=1)
        reader.feed(text[700:], "doc", page=2)
        reader.finish()
    together = [Reader(model, tokenizer) for _ in texts]
    for reader, text in zip(together, texts):
        assert reader.feed(text[:700], "doc", page=1, read=False) == []
        reader.feed(text[700:], "doc", page=2, read=False)
    done = read_together(together)
    counts = [a.state.num_segments for a in alone]
    assert len(set(counts)) == 3 and [len(d) for d in done] == counts
    for a, t in zip(alone, together):
        assert t.state.segments == a.state.segments
        assert t.state.sensory_ids == a.state.sensory_ids and t.state.cache_segments == a.state.cache_segments
        torch.testing.assert_close(t.state.cache, a.state.cache, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(t.state.token_keys.float(), a.state.token_keys.float(), rtol=1e-2, atol=1e-2)
        assert torch.equal(t.state.lexical.scores("Ishmael money"), a.state.lexical.scores("Ishmael money"))
    with pytest.raises(ValueError, match="one HMT model"):
        read_together([Reader(model, tokenizer), Reader(_model(backbone), tokenizer)])


def test_a_step_reads_a_documents_last_partial_segment_only_once_all_of_it_was_fed(backbone, tokenizer):
    model = _model(backbone)
    readers = [Reader(model, tokenizer) for _ in range(3)]
    readers[0].feed("A short one.", "a", read=False)
    readers[1].feed("A short two.", "b", read=False)
    readers[2].feed(TEXT[:2000], "c", read=False)
    step = read_step(readers, [False, True, False])
    assert step[0] is None and readers[0].state.num_segments == 0  # more of "a" may still come
    assert step[1].info.source == "b" and readers[1].pending_tokens == 0
    assert step[2].info.num_tokens == model.segment_length
    assert read_step(readers[:2], [False, True]) == [None, None]

