"""The answer adapter: saved and loaded, off except around answer generation, never touching memories; the honest
'not found' rule."""

import json

import pytest
import torch
from tiny_models import CORPUS, make_backbone, save_tiny_adapter

from hmt_core import HMT, HMTConfig, read_text, stream_answer
from hmt_core.answer import (NOT_FOUND, NOT_FOUND_FILE, CONFIDENCES, NotFoundRule, load_not_found, recall_confidence,
                             says_not_found)
from hmt_core.answer_adapter import AdapterError, adapter_tensors, load_answer_adapter
from hmt_core.backbone import final_hidden_states
from hmt_core.recall import recall

def hidden(backbone, ids):
    return final_hidden_states(backbone, backbone.get_input_embeddings()(ids))[0]


def test_adapter_is_off_until_switched_on_and_round_trips(tmp_path) -> None:
    trained = save_tiny_adapter(tmp_path)
    plain, backbone = make_backbone("llama"), make_backbone("llama")
    adapter = load_answer_adapter(backbone, tmp_path)
    assert adapter.prompt == "Answer short." and adapter.not_found == NOT_FOUND
    saved = adapter_tensors(trained)
    assert set(adapter_tensors(backbone)) == set(saved)
    assert all(torch.equal(adapter_tensors(backbone)[k], saved[k]) for k in saved)
    ids = torch.tensor([[5, 9, 33, 7, 12]])
    with torch.no_grad():
        off = hidden(backbone, ids)
        with adapter.on():
            on = hidden(backbone, ids)
        again = hidden(backbone, ids)
    assert torch.allclose(off, hidden(plain, ids).detach(), atol=1e-6)  # off: exactly the base backbone
    assert not torch.allclose(on, off, atol=1e-3)
    assert torch.equal(off, again)
    assert not any(p.requires_grad for p in backbone.parameters())


def test_adapter_switches_off_after_an_error(tmp_path) -> None:
    save_tiny_adapter(tmp_path)
    adapter = load_answer_adapter(make_backbone("llama"), tmp_path)
    with pytest.raises(RuntimeError):
        with adapter.on():
            raise RuntimeError("boom")
    assert all(layer.disable_adapters for layer in adapter.layers)


def test_adapter_refuses_another_backbone_a_bad_folder_and_a_second_adapter(tmp_path) -> None:
    save_tiny_adapter(tmp_path)
    with pytest.raises(AdapterError, match="another backbone"):
        load_answer_adapter(make_backbone("llama", seed=3), tmp_path)
    with pytest.raises(AdapterError, match="holds no answer adapter"):
        load_answer_adapter(make_backbone("llama"), tmp_path / "missing")
    backbone = make_backbone("llama")
    load_answer_adapter(backbone, tmp_path)
    with pytest.raises(AdapterError, match="already carries"):
        load_answer_adapter(backbone, tmp_path)


def test_memories_and_recall_are_the_same_with_the_adapter_loaded(tmp_path, tokenizer) -> None:
    """Reading, and reading between the steps of an answer, sees the plain backbone: the adapter is on only inside
    the answer's own backbone calls."""
    save_tiny_adapter(tmp_path)
    text = "".join(CORPUS) * 3
    plain = HMT(make_backbone("llama"), HMTConfig(segment_length=32, sensory_size=4))
    with_adapter = HMT(make_backbone("llama"), HMTConfig(segment_length=32, sensory_size=4))
    with_adapter.load_state_dict(plain.state_dict(), strict=False)
    adapter = load_answer_adapter(with_adapter.backbone, tmp_path)
    a = read_text(plain, tokenizer, text, source="book")
    steps = stream_answer(with_adapter, tokenizer, read_text(with_adapter, tokenizer, text, source="book"),
                          "what is the passkey?", max_new_tokens=8, adapter=adapter)
    for event in steps:  # between two steps of the answer, the adapter is off and reading is unchanged
        assert all(layer.disable_adapters for layer in adapter.layers)
        b = read_text(with_adapter, tokenizer, text, source="book")
        assert torch.allclose(a.cache, b.cache, atol=1e-6)
        if event.kind == "done":
            break


def test_adapter_changes_the_answer_and_uses_its_own_prompt(tmp_path, tokenizer) -> None:
    save_tiny_adapter(tmp_path)
    model = HMT(make_backbone("llama"), HMTConfig(segment_length=32, sensory_size=4))
    adapter = load_answer_adapter(model.backbone, tmp_path)
    state = read_text(model, tokenizer, "".join(CORPUS) * 3, source="book")
    question = "what is the passkey?"
    with_it = list(stream_answer(model, tokenizer, state, question, max_new_tokens=12, adapter=adapter))[-1]
    without = list(stream_answer(model, tokenizer, state, question, max_new_tokens=12))[-1]
    same_prompt = list(stream_answer(model, tokenizer, state, question, max_new_tokens=12,
                                     system=adapter.prompt))[-1]
    assert with_it.ids != same_prompt.ids  # the adapter, not only the prompt, changes what is generated
    assert without.kind == with_it.kind == "done"


def test_not_found_rule_answers_at_once_with_the_passages(tokenizer) -> None:
    model = HMT(make_backbone("llama"), HMTConfig(segment_length=32, sensory_size=4))
    state = read_text(model, tokenizer, "".join(CORPUS) * 3, source="book")
    question = "what is the passkey?"
    events = list(stream_answer(model, tokenizer, state, question, max_new_tokens=8,
                                not_found=NotFoundRule("weight_top", 2.0)))  # a weight is never above 1
    assert [e.kind for e in events] == ["recall", "done"]
    assert events[0].passages and events[-1].text == NOT_FOUND and not events[-1].found
    assert events[-1].evidence == []
    kept = list(stream_answer(model, tokenizer, state, question, max_new_tokens=8,
                              not_found=NotFoundRule("weight_top", -1.0)))
    assert kept[-1].found and any(e.kind == "token" for e in kept)


def test_confidences_of_a_recall(tokenizer) -> None:
    model = HMT(make_backbone("llama"), HMTConfig(segment_length=32, sensory_size=4,
                                                  recall_fusion={"memory": 0.5, "lexical": 0.5}))
    state = read_text(model, tokenizer, "".join(CORPUS) * 3, source="book")
    question = "what is the passkey?"
    detail = recall(model, tokenizer, state, question, tokenizer(question)["input_ids"])
    assert recall_confidence(detail, "weight_top") == pytest.approx(float(detail.weights.max()))
    fused = sum(detail.contributions.values())
    assert recall_confidence(detail, "fused_top") == pytest.approx(float(fused.max()))
    per_term = float(detail.scores["lexical"].max()) / len(detail.query_terms)
    assert recall_confidence(detail, "lexical_per_term") == pytest.approx(per_term)
    assert recall_confidence(detail, "token_per_key") == 0.0  # no token channel here
    assert set(CONFIDENCES) == {"fused_top", "weight_top", "lexical_per_term", "token_per_key"}


def test_says_not_found_and_load_not_found(tmp_path) -> None:
    assert says_not_found(NOT_FOUND) and says_not_found("the documents do not seem to say, sorry")
    assert not says_not_found("In 1066.") and not says_not_found("")
    assert load_not_found(tmp_path) is None
    (tmp_path / NOT_FOUND_FILE).write_text(json.dumps({"confidence": "fused_top", "below": 1.5}))
    assert load_not_found(tmp_path) == NotFoundRule("fused_top", 1.5)
    (tmp_path / NOT_FOUND_FILE).write_text(json.dumps({"confidence": "unknown", "below": 1.5}))
    assert load_not_found(tmp_path) is None
