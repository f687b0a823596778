"""Multi-channel recall: memory alone is HMT's own recall; the lexical and token-key channels, their fusion, the
state's finer levels (saved, loaded, rebuilt, appended) and odd questions."""

import json

import pytest
import torch
from tiny_models import CORPUS, make_backbone

from hmt_core import HMT, HMTConfig, MemoryState, load_checkpoint, read_text, save_checkpoint, stream_answer
from hmt_core.answer import chat_ids
from hmt_core.backbone import capture_hidden, final_hidden_states
from hmt_core.recall import available_channels, fuse, key_windows, matched_windows, recall, standardize
from hmt_core.recall.token_keys import fit_whitening, maxsim, select_keys

FUSION = {"memory": 0.3, "lexical": 0.5, "token": 0.2}
TEXT = "".join(f"Page {n}. " + CORPUS[n % 3] + "\n" for n in range(9)) + "The passkey is 12345. Remember it.\n" + \
    "".join(f"Page {n}. " + CORPUS[n % 3] + "\n" for n in range(9, 15))


def _model(backbone, **kwargs) -> HMT:
    torch.manual_seed(0)
    return HMT(backbone, HMTConfig(segment_length=32, sensory_size=4, **kwargs))


@pytest.fixture
def fused(backbone, tokenizer):
    model = _model(backbone, token_key_layer=1, token_key_width=8, token_keys_per_segment=4, recall_fusion=FUSION,
                   recall_temperature=0.5)
    state = read_text(model, tokenizer, TEXT, source="book", state=model.new_state(keep=1000))
    return model, state


def _ids(tokenizer, question):
    return chat_ids(tokenizer, [{"role": "user", "content": question}])


def test_memory_alone_is_hmts_own_recall(fused, tokenizer):
    model, state = fused
    question = "what is the passkey?"
    alone = recall(model, tokenizer, state, question, _ids(tokenizer, question), channels=["memory"])
    assert alone.channels == ("memory",)
    assert torch.allclose(alone.weights, model.recall_weights(state, _ids(tokenizer, question)), atol=1e-6)


def test_an_old_config_recalls_with_memory_only(backbone, tokenizer):
    model = _model(backbone)
    state = read_text(model, tokenizer, TEXT)
    assert model.config.channels == ("memory",) and available_channels(model, state) == ("memory",)
    detail = recall(model, tokenizer, state, "passkey", _ids(tokenizer, "passkey"))
    assert torch.allclose(detail.weights, model.recall_weights(state, _ids(tokenizer, "passkey")), atol=1e-6)


def test_fused_recall_is_the_softmax_of_weighted_standardised_scores(fused, tokenizer):
    model, state = fused
    question = "what is the passkey?"
    detail = recall(model, tokenizer, state, question, _ids(tokenizer, question))
    assert detail.channels == ("memory", "lexical", "token")
    logits = sum(FUSION[c] * standardize(detail.scores[c]) / 0.5 for c in detail.channels)
    assert torch.allclose(detail.weights, torch.softmax(logits, -1), atol=1e-6)
    assert torch.allclose(sum(detail.contributions.values()), logits, atol=1e-5)
    needle = next(s.index for s in state.segments if "passkey" in state.segment_text(s.index))
    assert int(detail.scores["lexical"].argmax()) == needle  # only that segment has the word
    assert "passkey" in detail.query_terms


def test_a_question_with_no_word_in_common_still_gets_memory_recall(fused, tokenizer):
    model, state = fused
    question = "zebra quantum"  # no term of the documents
    detail = recall(model, tokenizer, state, question, _ids(tokenizer, question), channels=["memory", "lexical"])
    assert torch.all(detail.scores["lexical"] == 0) and torch.all(detail.contributions["lexical"] == 0)
    assert int(detail.weights.argmax()) == int(detail.scores["memory"].argmax())


@pytest.mark.parametrize("question", ["the of and", "?!?...", "这是什么", "🙂", "x" * 3000])
def test_odd_questions_neither_crash_nor_return_nothing(fused, tokenizer, question):
    model, state = fused
    detail = recall(model, tokenizer, state, question, _ids(tokenizer, question))
    assert detail.weights.shape == (state.num_segments,)
    assert torch.isfinite(detail.weights).all() and abs(float(detail.weights.sum()) - 1) < 1e-5
    events = list(stream_answer(model, tokenizer, state, question, max_new_tokens=3))
    assert events[0].passages


def test_standardize_handles_constant_and_infinite_scores():
    assert torch.equal(standardize(torch.ones(4)), torch.zeros(4))
    z = standardize(torch.tensor([1.0, 2.0, 3.0, float("-inf")]))
    assert z[3] == 0 and torch.allclose(z[:3], torch.tensor([-1.0, 0.0, 1.0]))
    weights, parts = fuse({"memory": torch.tensor([0.0, 1.0])}, None, 1.0)
    assert torch.allclose(weights, torch.softmax(torch.tensor([0.0, 1.0]), -1))


def test_capture_hidden_matches_output_hidden_states(backbone):
    embeds = torch.randn(1, 7, 32)
    with capture_hidden(backbone, [1, 2]) as captured:
        final, _ = final_hidden_states(backbone, embeds)
    reference = backbone.base_model(inputs_embeds=embeds, output_hidden_states=True).hidden_states
    assert torch.allclose(captured[1], reference[1], atol=1e-6)
    assert captured[2].shape == (1, 7, 32) and not torch.allclose(captured[2], final)  # before the final norm


def test_each_segment_leaves_token_keys_taken_from_its_main_pass(fused):
    model, state = fused
    assert state.token_keys.shape == (state.num_segments, 4, 8) and state.token_keys.dtype == torch.float16
    norms = state.token_keys.float().norm(dim=-1)
    assert torch.allclose(norms[norms > 0], torch.ones_like(norms[norms > 0]), atol=1e-2)  # unit keys (or padding)


def test_token_key_helpers():
    states = torch.randn(200, 16) * torch.linspace(0.1, 10, 16)
    mean, proj = fit_whitening(states, 8)
    white = (states - mean) @ proj
    assert torch.allclose(torch.cov(white.T), torch.eye(8), atol=0.05)  # whitened: unit variance, uncorrelated
    keys = select_keys(states[:10], mean, proj, 4)
    assert keys.shape == (4, 8)
    short = select_keys(states[:2], mean, proj, 4)
    assert torch.equal(short[2:], torch.zeros(2, 8))  # fewer tokens than keys: zero keys pad
    query = keys[1:2]
    scores = maxsim(query, torch.stack([keys, -keys]))
    assert scores[0] > scores[1] and abs(float(scores[0]) - 1) < 1e-5


def test_the_finer_levels_round_trip_and_append(fused, tokenizer, tmp_path):
    model, state = fused
    state.save(tmp_path / "mem")
    loaded = MemoryState.load(tmp_path / "mem")
    assert torch.equal(loaded.token_keys, state.token_keys) and not loaded.notes
    assert torch.equal(loaded.lexical.scores("passkey"), state.lexical.scores("passkey"))
    other = read_text(model, tokenizer, CORPUS[1] + " The zebra is striped.", source="other")
    both = loaded.extend(other, keep=1000)
    n = state.num_segments
    assert both.num_segments == n + other.num_segments and [s.index for s in both.segments] == list(
        range(both.num_segments))
    assert torch.equal(both.token_keys, torch.cat([state.token_keys, other.token_keys]))
    assert len(both.lexical) == both.num_segments
    assert int(both.lexical.scores("zebra").argmax()) >= n  # the appended segments are searchable at their place
    assert int(both.lexical.scores("passkey").argmax()) == int(state.lexical.scores("passkey").argmax())


def test_an_old_state_loads_with_its_word_index_rebuilt(fused, tmp_path):
    model, state = fused
    state.save(tmp_path / "mem")
    data = json.loads((tmp_path / "mem" / "state.json").read_text())
    data["format"] = 1
    (tmp_path / "mem" / "state.json").write_text(json.dumps(data))
    for path in (tmp_path / "mem" / "lexical").iterdir():
        path.unlink()
    (tmp_path / "mem" / "lexical").rmdir()
    loaded = MemoryState.load(tmp_path / "mem")
    assert loaded.notes and "predates" in loaded.notes[0]
    assert torch.equal(loaded.lexical.scores("passkey remember"), state.lexical.scores("passkey remember"))


def test_a_damaged_word_index_is_rebuilt_with_a_note(fused, tmp_path):
    model, state = fused
    state.save(tmp_path / "mem")
    for path in (tmp_path / "mem" / "lexical").iterdir():
        path.write_bytes(b"garbage")
    loaded = MemoryState.load(tmp_path / "mem")
    assert loaded.notes and "damaged" in loaded.notes[0]
    assert torch.equal(loaded.lexical.scores("passkey"), state.lexical.scores("passkey"))


def test_token_keys_for_the_wrong_number_of_segments_are_refused(fused, tmp_path):
    model, state = fused
    state.token_keys = state.token_keys[:-1]
    state.save(tmp_path / "mem")
    with pytest.raises(ValueError, match="token keys"):
        MemoryState.load(tmp_path / "mem")


def test_checkpoints_keep_the_channels_and_old_ones_load_without_them(fused, tmp_path):
    model, state = fused
    with torch.no_grad():
        model.token_key_mean.normal_()
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt", make_backbone("llama"))
    assert loaded.config.recall_fusion == FUSION and loaded.config.token_key_layer == 1
    assert torch.equal(loaded.token_key_mean, model.token_key_mean)
    meta = json.loads((tmp_path / "ckpt" / "memory_config.json").read_text())
    old = {k: v for k, v in meta["config"].items()
           if k not in ("token_key_layer", "token_key_width", "token_keys_per_segment", "recall_fusion",
                        "recall_temperature")}
    plain = HMT(make_backbone("llama"), HMTConfig(**{**old, "recall_size": old["recall_size"]}))
    save_checkpoint(plain, tmp_path / "old")
    old_meta = json.loads((tmp_path / "old" / "memory_config.json").read_text())
    old_meta["config"] = old
    (tmp_path / "old" / "memory_config.json").write_text(json.dumps(old_meta))
    assert load_checkpoint(tmp_path / "old", make_backbone("llama")).config.channels == ("memory",)


def test_faithful_p_is_mixed_by_the_fused_weights(fused, tokenizer):
    model, state = fused
    events = list(stream_answer(model, tokenizer, state, "what is the passkey?", mode="faithful", max_new_tokens=2))
    detail = events[0].recall
    assert detail is not None and detail.channels == ("memory", "lexical", "token")
    assert torch.equal(events[0].weights, detail.weights) and events[0].passages
    cached = detail.weights[torch.tensor(state.cache_segments)]
    expected = (cached / cached.sum()) @ state.cache
    assert torch.allclose(model.mix(state, detail.weights)[0], expected, atol=1e-5)


def test_passages_carry_every_channels_score(fused, tokenizer):
    model, state = fused
    events = list(stream_answer(model, tokenizer, state, "what is the passkey?", max_new_tokens=2))
    for passage in events[0].passages:
        assert set(passage.scores) == {"memory", "lexical", "token"} == set(passage.contributions)


def test_matched_windows_point_inside_the_segment(fused, tokenizer):
    model, state = fused
    needle = next(s for s in state.segments if "passkey" in state.segment_text(s.index))
    spans = matched_windows(model, tokenizer, state, needle.index, "what is the passkey?")
    assert 1 <= len(spans) <= 2
    assert all(needle.char_start <= a < b <= needle.char_end for a, b in spans)
    windows = key_windows(tokenizer, state.segment_text(needle.index), 4)
    assert len(windows) == 4 and windows[0][0] == 0 and windows[-1][1] == len(state.segment_text(needle.index))
