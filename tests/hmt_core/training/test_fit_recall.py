"""The recall fit's reading helpers, which bench.token_keys and the benchmarks' gold segments share."""

import torch

from hmt_core import HMT, HMTConfig
from hmt_core.recall.token_keys import select_keys
from hmt_core.training.fit_recall import TokenStates, gold_segments, read_document, read_with_token_states

from tiny_models import CORPUS

PARAGRAPHS = [" ".join(CORPUS[i % 3] for i in range(n, n + 4)) for n in range(3)] + [CORPUS[3]]


def _model(backbone) -> HMT:
    torch.manual_seed(0)
    return HMT(backbone, HMTConfig(segment_length=32, sensory_size=4, token_key_layer=1, token_key_width=8,
                                   token_keys_per_segment=4))


def test_token_states_are_each_segments_own_tokens_of_its_main_pass(backbone, tokenizer):
    model = _model(backbone)
    state, states = read_with_token_states(model, tokenizer, PARAGRAPHS, "doc")
    assert state.num_segments > 3 and len(states) == state.num_segments
    assert [t.shape[0] for t in states] == [s.num_tokens for s in state.segments]
    assert all(t.dtype == torch.float16 for t in states)
    for t, keys in zip(states, state.token_keys):  # the keys reading computed come from the same token states
        again = select_keys(t.float(), model.token_key_mean, model.token_key_proj, 4)
        assert torch.allclose(again, keys.float(), atol=2e-3)


def test_token_states_clear_and_unhook(backbone, tokenizer):
    model = _model(backbone)
    with TokenStates(model.backbone, [1, 2]) as recorder:
        read_document(model, tokenizer, PARAGRAPHS[:1], "doc")
        assert recorder.calls[1] and len(recorder.calls[1]) == len(recorder.calls[2])
        recorder.clear()
        assert recorder.calls == {1: [], 2: []}
    read_document(model, tokenizer, PARAGRAPHS[:1], "doc")
    assert recorder.calls == {1: [], 2: []}


def test_gold_segments_cover_the_answer_or_where_it_starts(backbone, tokenizer):
    model = _model(backbone)
    state = read_document(model, tokenizer, PARAGRAPHS[:2], "first")
    state = read_document(model, tokenizer, PARAGRAPHS[2:], "second", state)
    text = state.sources["second"].text
    start = text.index("passkey is 12345")
    question = {"answers": ["12345"], "answer_starts": [start + len("passkey is ")]}
    gold = gold_segments(state, question, "second")
    assert len(gold) == 1
    (segment,) = (state.segments[g] for g in gold)
    assert segment.source == "second" and segment.char_start <= question["answer_starts"][0] < segment.char_end
    assert gold_segments(state, question, "first") != gold  # the same offsets in the other source
    cut = next(s for s in state.segments if s.source == "second" and s.char_end < len(text))
    straddling = {"answers": [text[cut.char_end - 3:cut.char_end + 3]], "answer_starts": [cut.char_end - 3]}
    assert gold_segments(state, straddling, "second") == {cut.index}
