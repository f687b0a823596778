"""The sentence recall channel: reading embeds every segment's sentences, a segment scores as its best sentence, the
vectors follow the state (copied, saved, loaded, appended, a source taken out) and are embedded on the first
question when a state has none; a checkpoint that weighs the channel gets an embedder, or recalls without it."""

import json

import pytest
import torch
from tiny_models import CORPUS, make_backbone, make_tokenizer, tiny_bert

import hmt_core.checkpoint as checkpoint
from hmt_core import HMT, HMTConfig, MemoryState, load_checkpoint, read_text, save_checkpoint, stream_answer
from hmt_core.answer import chat_ids, mark_matches, recall_passages
from hmt_core.backbone import BackboneError
from hmt_core.embedder import SentenceEmbedder
from hmt_core.recall import available_channels, matched_sentence, recall, standardize
from hmt_core.recall.lexical import terms
from hmt_core.recall.sentences import SPLITTING, SentenceIndex, segment_sentences

FUSION = {"memory": 0.2, "lexical": 0.3, "token": 0.2, "sentence": 0.3}
TEXT = "".join(f"Page {n}. " + CORPUS[n % 4] + "\n" for n in range(12))


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder(tiny_bert(), make_tokenizer())


@pytest.fixture
def model(embedder) -> HMT:
    torch.manual_seed(0)
    model = HMT(make_backbone("llama"), HMTConfig(segment_length=32, sensory_size=4, token_key_layer=1,
                                                    token_key_width=8, token_keys_per_segment=4,
                                                    recall_fusion=FUSION, recall_temperature=0.5))
    model.embedder = embedder
    return model


@pytest.fixture
def state(model, tokenizer) -> MemoryState:
    return read_text(model, tokenizer, TEXT, source="book", state=model.new_state(keep=1000))


def _expected(embedder, state, question: str) -> torch.Tensor:
    """Each segment's best sentence cosine, computed the long way."""
    out = []
    for i in range(state.num_segments):
        sims = embedder.similarities(question, segment_sentences(state.segment_text(i)))
        out.append(max(sims) if sims else float("-inf"))
    return torch.tensor(out)


def test_reading_embeds_every_segment_and_a_segment_scores_as_its_best_sentence(model, state, embedder):
    index = state.sentences
    assert len(index) == state.num_segments
    counts = [len(segment_sentences(state.segment_text(i))) for i in range(state.num_segments)]
    assert index.vectors.shape[0] == sum(counts) and index.vectors.dtype == torch.float16
    assert index.owners.tolist() == [i for i, c in enumerate(counts) for _ in range(c)]
    question = "who jumps over the lazy dog?"
    scores = index.scores(embedder.embed([question])[0], state.num_segments)
    assert torch.allclose(scores, _expected(embedder, state, question), atol=2e-3)  # fp16 vectors


def test_the_channel_is_fused_with_the_others_and_needs_an_embedder(model, state, tokenizer, embedder):
    question = "what is the passkey?"
    ids = chat_ids(tokenizer, [{"role": "user", "content": question}])
    detail = recall(model, tokenizer, state, question, ids)
    assert detail.channels == ("memory", "lexical", "token", "sentence")
    logits = sum(FUSION[c] * standardize(detail.scores[c]) for c in detail.channels) / 0.5
    assert torch.allclose(detail.weights, torch.softmax(logits, -1), atol=1e-5)
    assert torch.allclose(detail.contributions["sentence"], FUSION["sentence"] * standardize(
        detail.scores["sentence"]) / 0.5)
    best = int(detail.scores["sentence"].argmax())
    passages = recall_passages(state, detail.weights, 3, detail)
    mark_matches(model, tokenizer, state, passages, question, detail)
    for passage in passages:  # each recalled segment's closest sentence, marked where it stands in the source
        assert len(passage.sentences) == len(passage.segments)
    start, end = matched_sentence(state, best, detail.query_vector)
    closest = state.sources["book"].text[start:end]
    assert embedder.similarities(question, [closest])[0] == pytest.approx(float(detail.scores["sentence"][best]),
                                                                          abs=2e-3)
    model.embedder = None
    assert available_channels(model, state) == ("memory", "lexical", "token")
    assert "sentence" not in recall(model, tokenizer, state, question, ids).scores


def test_a_state_without_vectors_is_embedded_on_its_first_question_and_copies_grow_apart(model, state, tokenizer):
    full = state.sentences
    state.sentences = SentenceIndex()
    work = state.copy()
    question = "call me Ishmael"
    recall(model, tokenizer, work, question, chat_ids(tokenizer, [{"role": "user", "content": question}]))
    assert len(work.sentences) == state.num_segments and torch.equal(work.sentences.owners, full.owners)
    assert torch.allclose(work.sentences.vectors.float(), full.vectors.float(), atol=1e-3)
    assert len(state.sentences) == 0  # the copy grew, the original did not


def test_an_answer_embeds_a_state_without_vectors_into_the_state_once(model, state, tokenizer, monkeypatch):
    full = state.sentences
    state.sentences = SentenceIndex()  # as MemoryState.load leaves a state split by an older rule
    embedded = []  # (first segment, end) of every update that embeds, on the state or on an answer's copy of it
    update = SentenceIndex.update

    def counted(index, segment_text, num_segments, embedder):
        if index.segments < num_segments:
            embedded.append((index.segments, num_segments))
        update(index, segment_text, num_segments, embedder)

    monkeypatch.setattr(SentenceIndex, "update", counted)
    list(stream_answer(model, tokenizer, state, "call me Ishmael", mode="reread", max_new_tokens=2,
                       channels=["memory", "lexical"]))
    assert embedded == [] and len(state.sentences) == 0  # a recall without the channel embeds nothing
    list(stream_answer(model, tokenizer, state, "call me Ishmael", mode="reread", max_new_tokens=2))
    assert embedded == [(0, state.num_segments)]  # into the caller's state, which the copy then shares
    assert torch.equal(state.sentences.owners, full.owners)
    assert torch.allclose(state.sentences.vectors.float(), full.vectors.float(), atol=1e-3)
    list(stream_answer(model, tokenizer, state, "who jumps over the lazy dog?", mode="reread", max_new_tokens=2))
    assert embedded == [(0, state.num_segments)]  # the next question embeds nothing again


def test_the_vectors_round_trip_and_follow_extend_and_without(model, state, tokenizer, tmp_path):
    state.save(tmp_path / "mem")
    loaded = MemoryState.load(tmp_path / "mem")
    assert not loaded.notes and len(loaded.sentences) == state.num_segments
    assert torch.equal(loaded.sentences.vectors, state.sentences.vectors)
    other = read_text(model, tokenizer, CORPUS[2] + " The zebra is striped.", source="other")
    both = loaded.extend(other, keep=1000)
    assert len(both.sentences) == both.num_segments
    assert torch.equal(both.sentences.owners, torch.cat([state.sentences.owners,
                                                         other.sentences.owners + state.num_segments]))
    back = both.without("book")
    assert len(back.sentences) == other.num_segments
    assert torch.equal(back.sentences.owners, other.sentences.owners)
    assert torch.equal(back.sentences.vectors, other.sentences.vectors)
    partial = SentenceIndex(segments=0)
    assert len(partial.extended(other.sentences, 3)) == 0  # a part not embedded yet stays to embed


def test_vectors_that_do_not_match_the_segments_are_embedded_again(model, state, tokenizer, tmp_path):
    state.sentences = SentenceIndex(state.sentences.vectors, state.sentences.owners + 100, state.num_segments)
    state.save(tmp_path / "mem")
    loaded = MemoryState.load(tmp_path / "mem")
    assert loaded.notes and "sentence vectors" in loaded.notes[0] and len(loaded.sentences) == 0
    data = json.loads((tmp_path / "mem" / "state.json").read_text())
    assert data["sentence_segments"] == state.num_segments


def test_vectors_split_by_an_older_rule_are_embedded_again(state, tmp_path):
    state.save(tmp_path / "mem")
    data = json.loads((tmp_path / "mem" / "state.json").read_text())
    assert data["sentence_splitting"] == SPLITTING
    del data["sentence_splitting"]  # as states saved before the rule had a version
    (tmp_path / "mem" / "state.json").write_text(json.dumps(data))
    loaded = MemoryState.load(tmp_path / "mem")
    assert loaded.notes and "older rule" in loaded.notes[0] and len(loaded.sentences) == 0


def test_a_checkpoint_weighing_sentences_gets_an_embedder_or_recalls_without(model, embedder, tmp_path,
                                                                                 monkeypatch):
    save_checkpoint(model, tmp_path / "ckpt")
    assert load_checkpoint(tmp_path / "ckpt", make_backbone("llama"), embedder=embedder).embedder is embedder

    def offline():
        raise BackboneError("no wheel and no hub")

    monkeypatch.setattr(checkpoint, "load_embedder", offline)
    loaded = load_checkpoint(tmp_path / "ckpt", make_backbone("llama"))
    assert loaded.embedder is None and loaded.config.channels == ("memory", "lexical", "token", "sentence")
    assert loaded.recall_channels == ("memory", "lexical", "token")  # what Settings offers
    empty = loaded.new_state(keep=10)
    assert "sentence" not in available_channels(loaded, empty)


@pytest.mark.slow
def test_the_real_encoder_finds_a_sentence_that_shares_no_word_with_the_question():
    from hmt_core.embedder import load_embedder

    real = load_embedder()
    texts = ["The harbour froze early that winter. Ships waited outside for weeks.",
             "The old man who kept the lighthouse climbed its stairs each night to light the lamp.",
             "Taxes on salt rose twice in a decade, and the markets emptied."]
    index = SentenceIndex()
    index.update(texts.__getitem__, len(texts), real)
    question = "How did prices of seasoning change?"
    assert not set(terms(question)) & {t for text in texts for t in terms(text)}  # the word index finds nothing
    scores = index.scores(real.embed([question])[0], len(texts))
    assert int(scores.argmax()) == 2
