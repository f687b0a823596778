"""bench.qa's reader rows on a tiny model and its scoring of 'not found' (the benchmark itself reads held-out
articles with the real model: python -m bench.qa)."""

import argparse

import torch
from tiny_models import CORPUS, make_backbone, save_tiny_adapter

from bench.qa import VARIANTS, reread, report, score, summarize
from hmt_core import HMT, HMTConfig, read_text
from hmt_core.answer import NotFoundRule
from hmt_core.answer_adapter import load_answer_adapter
from hmt_core.answerability import AnswerabilityProbe


def test_reader_rows_answer_from_the_gold_segment_or_the_recall(tokenizer, tmp_path):
    save_tiny_adapter(tmp_path)
    model = HMT(make_backbone("llama"), HMTConfig(segment_length=32, sensory_size=4))
    adapter = load_answer_adapter(model.backbone, tmp_path)
    state = read_text(model, tokenizer, "".join(CORPUS) * 3, source="book")
    gold = torch.zeros(state.num_segments)
    gold[2] = 1.0
    for method in VARIANTS:
        r = reread(model, tokenizer, state, "what is the passkey?", method, 6, {"gold": gold}, adapter,
                   NotFoundRule("weight_top", 2.0))
        assert set(r) == {"answer", "below_threshold", "not_found_score", "reader_above", "unanswerable_score",
                          "probe_above", "found", "first_token_seconds", "words"}
        assert r["below_threshold"] and r["answer"]  # a weight is never above 1; the answer is generated anyway
        assert r["not_found_score"] is None and not r["reader_above"]  # the tiny adapter has no threshold
        assert r["unanswerable_score"] is None and not r["probe_above"]  # nor a probe
    plain = reread(model, tokenizer, state, "what is the passkey?", "reread_short", 6, {}, adapter, None)
    tuned = reread(model, tokenizer, state, "what is the passkey?", "reread_adapter", 6, {}, adapter, None)
    assert plain["answer"] != tuned["answer"] and not plain["below_threshold"]
    adapter.not_found_above = -1e9  # the adapter's own threshold, in use and crossed by any log-probability
    again = reread(model, tokenizer, state, "what is the passkey?", "reread_adapter", 6, {}, adapter,
                   NotFoundRule("weight_top", -1.0))
    assert again["reader_above"] and not again["below_threshold"] and again["answer"] == tuned["answer"]
    assert again["not_found_score"] < 0
    adapter.probe = AnswerabilityProbe([1], torch.ones(model.backbone.config.hidden_size), 0.0)
    adapter.probe_above = -1e9  # an answerability probe, in use and crossed by any score
    probed = reread(model, tokenizer, state, "what is the passkey?", "reread_adapter", 6, {}, adapter,
                    NotFoundRule("weight_top", -1.0))
    assert probed["probe_above"] and isinstance(probed["unanswerable_score"], float)
    assert probed["answer"] == tuned["answer"]  # generated anyway: one run scores every rule
    unruled = reread(model, tokenizer, state, "what is the passkey?", "reread_adapter", 6, {}, adapter, None)
    assert not unruled["probe_above"] and unruled["unanswerable_score"] == probed["unanswerable_score"]


def test_the_app_row_counts_a_not_found_answer_as_wrong_and_the_tables_say_each_part():
    def answer(text, below=False, found=True, above=False):
        return {"answer": text, "below_threshold": below, "reader_above": above, "found": found,
                "first_token_seconds": 0.1,
                "words": len(text.split()), **dict(zip(("contains", "f1"), score(text, ["Rollo"])))}
    rows = [{"reread_adapter": answer("Rollo"), "reread_short": answer("Rollo was")},
            {"reread_adapter": answer("Rollo", below=True), "reread_short": answer("no")},
            {"reread_adapter": answer("The documents do not seem to say.", found=False),
             "reread_short": answer("Rollo")}]
    negatives = [{"kind": "squad2", **answer("x", below=True)}, {"kind": "squad2", **answer("y")},
                 {"kind": "squad2", **answer("w", above=True)}, {"kind": "other_article", **answer("z", found=False)},
                 {"kind": "squad2", **answer("v"), "probe_above": True}]  # the answerability probe's threshold
    args = argparse.Namespace(model="tiny", hmt_weights=None, answer_adapter="a", articles="eval", max_new_tokens=8,
                              questions_per_article=3)
    model = argparse.Namespace(config=argparse.Namespace(segment_length=32, cache_size=8, sensory_size=4))
    result = summarize(args, model, ["reread_adapter", "reread_short"], rows, negatives,
                       NotFoundRule("fused_top", 1.0), "reread_adapter", 0, 1024, 0.0)
    scores, not_found = result["scores"], result["not_found"]
    assert scores["reread_adapter"]["contains"]["mean"] == 2 / 3
    assert scores["app"]["contains"]["mean"] == 1 / 3  # the second answer was cut off by the threshold
    assert scores["app"]["not_found"]["mean"] == 2 / 3
    assert not_found["squad2"]["threshold"]["mean"] == 1 / 4 and not_found["squad2"]["app"]["mean"] == 3 / 4
    assert not_found["squad2"]["reader"]["mean"] == 2 / 4  # the adapter's or its probe's score above its threshold
    assert not_found["other_article"]["reader"]["mean"] == 1.0
    assert not_found["answerable"]["app"]["mean"] == 2 / 3
    assert result["first_token"]["ratio"] == 1.0
    table = report(result, ["reread_adapter", "reread_short"])
    assert "| app |" in table and "squad2 (4)" in table and "ratio 1.00" in table
