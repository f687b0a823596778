"""The answerability probe: fitted by logistic regression, saved beside the answer adapter, read from the prompt's
hidden states with the adapter on, and answering 'not found' above its threshold only where the app's rules apply."""

import json

import pytest
import torch
from tiny_models import CORPUS, make_backbone, save_tiny_adapter

from hmt_core import HMT, HMTConfig, read_text, stream_answer
from hmt_core.answer import NOT_FOUND, NotFoundRule, chat_ids, reread_messages
from hmt_core.answer_adapter import ANSWERING_FILE, load_answer_adapter
from hmt_core.answerability import AnswerabilityProbe, auc, fit_probe, load_probe, save_probe
from hmt_core.backbone import capture_hidden, final_hidden_states
from hmt_core.training.fit_not_found import choose_reader


def test_auc_counts_pairs_and_half_of_the_ties():
    assert auc(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 0.0])) == 1.0
    assert auc(torch.tensor([0.0]), torch.tensor([1.0])) == 0.0
    assert auc(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0])) == pytest.approx((0.5 + 0 + 1 + 0) / 4)


def test_the_probe_learns_a_direction_on_raw_features_whatever_their_scale():
    torch.manual_seed(0)
    x = torch.randn(400, 12) * torch.linspace(0.1, 50.0, 12) + 7.0  # [N, F], features of very different scales
    y = (x[:, 3] + torch.randn(400) * 3.0 > 7.0).long()  # feature 3 (scale about 14) decides, with noise
    probe = fit_probe(x[:300], y[:300], [1, 2], l2=0.01)
    s = x[300:] @ probe.weight + probe.bias  # the standardisation is folded in: raw features score directly
    assert auc(s[y[300:] == 1], s[y[300:] == 0]) > 0.95
    assert (probe.weight * x.std(0)).abs().argmax() == 3  # per standard deviation, feature 3 weighs most
    heavy = fit_probe(x[:300], y[:300], [1, 2], l2=100.0)  # a heavy penalty shrinks the weights
    assert heavy.weight.norm() < probe.weight.norm() / 5


def test_the_probe_round_trips_and_is_absent_without_its_file(tmp_path):
    probe = AnswerabilityProbe([2, 1], torch.randn(8), 0.25)
    assert load_probe(tmp_path) is None
    save_probe(probe, tmp_path, {"l2": 1.0})
    again = load_probe(tmp_path)
    assert again.layers == [2, 1] and torch.equal(again.weight, probe.weight) and again.bias == 0.25
    captured = {1: torch.randn(1, 5, 4), 2: torch.randn(1, 5, 4)}
    assert again.score(captured) == pytest.approx(float(torch.cat([captured[2][0, -1], captured[1][0, -1]])
                                                        @ probe.weight) + 0.25, abs=1e-5)


def test_the_app_reads_the_probe_from_the_prompt_with_the_adapter_on_and_says_not_found_above_it(tmp_path, tokenizer):
    save_tiny_adapter(tmp_path)
    model = HMT(make_backbone("llama"), HMTConfig(segment_length=32, sensory_size=4))
    d = model.backbone.config.hidden_size
    torch.manual_seed(3)
    save_probe(AnswerabilityProbe([1, 2], torch.randn(2 * d), 0.1), tmp_path, {})
    (tmp_path / ANSWERING_FILE).write_text(json.dumps({"passages": 1}))
    adapter = load_answer_adapter(model.backbone, tmp_path)
    assert adapter.probe is not None and adapter.probe_above is None  # fitted, not in use without a threshold
    assert adapter.describe().endswith(", an answerability probe")
    state = read_text(model, tokenizer, "".join(CORPUS) * 3, source="book")
    question = "what is the passkey?"
    events = list(stream_answer(model, tokenizer, state, question, max_new_tokens=8, adapter=adapter, top_segments=1,
                                not_found=NotFoundRule("weight_top", -1.0)))
    score = events[-1].unanswerable_score
    assert events[-1].found and isinstance(score, float)
    ids = torch.tensor([chat_ids(tokenizer, reread_messages(question, events[0].passages, adapter.prompt))])
    scores = {}
    for on in (True, False):
        adapter.switch(on)
        with torch.no_grad(), capture_hidden(model.backbone, [1, 2]) as captured:
            final_hidden_states(model.backbone, model.embed(ids))
        scores[on] = adapter.probe.score(captured)
    adapter.switch(False)
    assert scores[True] == pytest.approx(score, abs=1e-4) and scores[False] != pytest.approx(score, abs=1e-4)

    adapter.probe_above = score - 1.0  # crossed: 'not found' at once, when the app's rules apply
    said = list(stream_answer(model, tokenizer, state, question, max_new_tokens=8, adapter=adapter, top_segments=1,
                              not_found=NotFoundRule("weight_top", -1.0)))
    assert [e.kind for e in said] == ["recall", "done"] and said[-1].text == NOT_FOUND and not said[-1].found
    assert said[-1].unanswerable_score == pytest.approx(score) and said[-1].not_found_by == "probe"
    free = list(stream_answer(model, tokenizer, state, question, max_new_tokens=8, adapter=adapter, top_segments=1))
    assert free[-1].found and free[-1].ids == events[-1].ids  # without a rule the threshold is not used
    adapter.probe_above = score + 1.0
    kept = list(stream_answer(model, tokenizer, state, question, max_new_tokens=8, adapter=adapter, top_segments=1,
                              not_found=NotFoundRule("weight_top", -1.0)))
    assert kept[-1].found and kept[-1].ids == events[-1].ids
    (tmp_path / ANSWERING_FILE).write_text(json.dumps({"passages": 1, "probe_above": 0.5}))
    again = load_answer_adapter(make_backbone("llama"), tmp_path)
    assert again.probe_above == 0.5 and again.describe().endswith(", an answerability probe saying 'not found'")


def test_the_probes_threshold_is_fitted_on_what_the_recall_rule_lets_through():
    samples = ([{"kind": "answerable", "c": 1.0, "probe": float(i)} for i in range(10)]
               + [{"kind": "answerable", "c": 0.0, "probe": 100.0}]  # already 'not found' by the recall rule
               + [{"kind": "squad2", "c": 1.0, "probe": p} for p in (9.5, 8.5, 1.0, 0.0)]
               + [{"kind": "other_article", "c": 0.0, "probe": 0.0}])
    above, rates = choose_reader(samples, "c", 0.5, 0.1, "probe")
    assert above == 8.0  # one of the eleven answerable (0.1 of them) above it, among those the rule lets through
    assert rates["squad2"] == {"recall": 0.0, "probe": 0.5, "either": 0.5}
    assert rates["answerable"]["either"] == pytest.approx(2 / 11)
