"""The evidence benchmark's scoring (the benchmark itself reads held-out articles with the real model:
python -m bench.evidence), and the render benchmark's choice of evidence on a page."""

import json

import pytest
import torch
from tiny_models import tiny_bert

from bench.evidence import (WEIGHT_GRID, compare_weights, evidence_row, first_sentence, holds, remembered,
                            rescore)
from bench.render import middle_sentence
from hmt_core.answer import NOT_FOUND, WITHHELD, Passage
from hmt_core.embedder import SentenceEmbedder
from hmt_core.evidence import (ANSWER_WEIGHT, LIKELIHOOD_WEIGHT, QUESTION_WEIGHT, SIMILARITY_WEIGHT,
                               rank_evidence)
from hmt_core.state import MemoryState, SourceText

TEXT = ("The Normans were the people who gave their name to Normandy. They descended from Norse raiders. "
        "Their leader Rollo swore fealty to King Charles III of West Francia in 911.")


def one_passage() -> tuple[MemoryState, list[Passage]]:
    state = MemoryState("hmt", torch.zeros(0, 4), sources={"Normans": SourceText("Normans", TEXT, [0], [1])})
    return state, [Passage([0], "Normans", 1, 1, 0, len(TEXT), TEXT, 0.9)]


def test_a_hit_is_a_normalised_gold_answer_inside_the_text():
    assert holds("Rollo swore fealty to King Charles III.", ["Charles III"])
    assert holds("the year was 911!", ["in 911", "911"]) and not holds("It was 912.", ["911"])
    assert not holds(None, ["911"]) and not holds("The a an.", ["the"])  # an answer that normalises to nothing
    assert first_sentence(TEXT) == "The Normans were the people who gave their name to Normandy."


def test_a_row_scores_every_rule_on_the_same_passages_and_skips_answers_not_recalled():
    state, passages = one_passage()
    question, answer = "To whom did Rollo swear fealty?", "Rollo swore fealty to the king."
    evidence = rank_evidence(state, passages, question, answer)
    row = evidence_row(state, passages, question, ["King Charles III"], answer, evidence)
    assert row["hits"] == {"app": True, "without_similarity": True, "without_likelihood": True, "lexical": True,
                           "question_only": True, "answer_only": True, "first_sentence": False}
    sentences = []  # what the app's models are asked to weigh: the shortlist
    weighed = evidence_row(state, passages, question, ["King Charles III"], answer, evidence,
                           likelihood=lambda texts: sentences.append(texts) or [0.0] * len(texts),
                           similarity=lambda texts: sentences.append(texts) or [0.0] * len(texts))
    assert weighed["hits"] == row["hits"] and len(sentences) == 2  # each rule leaves one model out
    assert row["evidence"]["app"] == evidence[0].text and row["passages"] == [{"text": TEXT, "weight": 0.9}]
    assert evidence_row(state, passages, question, ["Paris"], answer, evidence) is None  # not in what was recalled
    missing = evidence_row(state, passages, question, ["King Charles III"], answer, [])
    assert missing["hits"]["app"] is False  # no evidence counts as a miss
    told = evidence_row(state, passages, question, ["King Charles III"], NOT_FOUND, [])
    assert told["hits"]["lexical"] is True  # after 'not found', the sentence closest to the question is shown
    assert evidence_row(state, passages, question, ["King Charles III"], WITHHELD, [])["hits"]["lexical"] is False


def test_saved_rows_are_scored_again_under_other_weights_without_the_model(tmp_path):
    # the question points to the sentence with Rollo; the (wrong) answer's words to the first sentence
    row = {"question": "To whom did Rollo swear fealty?", "answers": ["King Charles III"],
           "answer": "the people of Normandy", "passages": [{"text": TEXT, "weight": 0.9}]}
    assert rescore([row], 1.0, 0.0) == [True] and rescore([row], 0.0, 1.0) == [False]
    # 'not found' is scored by the sentence closest to the question, as the app shows it; a withheld answer has none
    assert rescore([{**row, "answer": NOT_FOUND}, {**row, "answer": WITHHELD}], 1.0, 0.0) == [True, False]
    run = tmp_path / "evidence_dev_adapter.json"
    run.write_text(json.dumps({"split": "dev", "rows": [row, row]}))
    compare_weights([run], tmp_path)
    results = {(r["question"], r["answer"]): r for r in json.loads((tmp_path / "evidence_weights.json").read_text())
               ["results"]}
    assert results[(1.0, 0.0)]["hit"] == 1.0 and results[(1.0, 1.0)]["hit"] == 0.0
    held_out = tmp_path / "evidence.json"
    held_out.write_text(json.dumps({"split": "eval", "rows": [row]}))
    with pytest.raises(SystemExit, match="held-out"):
        compare_weights([held_out], tmp_path)


def test_with_the_models_every_answer_weight_is_scored_beside_the_likelihood_and_the_similarity(
        tmp_path, backbone, tokenizer):
    row = {"question": "To whom did Rollo swear fealty?", "answers": ["King Charles III"],
           "answer": "the people of Normandy", "passages": [{"text": TEXT, "weight": 0.9}]}
    run = tmp_path / "evidence_dev_adapter.json"
    run.write_text(json.dumps({"split": "dev", "rows": [row]}))
    compare_weights([run], tmp_path, backbone, tokenizer, "tiny", SentenceEmbedder(tiny_bert(), tokenizer))
    results = json.loads((tmp_path / "evidence_weights.json").read_text())["results"]
    full = {(r["question"], r["answer"]) for r in results
            if (r["likelihood"], r["similarity"]) == (LIKELIHOOD_WEIGHT, SIMILARITY_WEIGHT)}
    assert full == set(WEIGHT_GRID) | {(QUESTION_WEIGHT, ANSWER_WEIGHT)}
    assert any((r["likelihood"], r["similarity"]) == (LIKELIHOOD_WEIGHT, 0.0) for r in results)
    weighed = []  # each shortlist is weighed once across passes, with the same values as without the memo
    likelihood = lambda sentences: weighed.append(sentences) or [float(len(s)) for s in sentences]  # noqa: E731
    memo: dict = {}
    kept = remembered({"likelihood": likelihood, "similarity": None}, "q", memo)
    assert kept["similarity"] is None
    assert kept["likelihood"](["a", "bb"]) == kept["likelihood"](["a", "bb"]) == [1.0, 2.0] and len(weighed) == 1
    assert kept["likelihood"](["bb", "a"]) == [2.0, 1.0] and len(weighed) == 2
    assert rescore([row] * 3, 1.0, 0.5, backbone, tokenizer, memo=memo) == rescore([row] * 3, 1.0, 0.5, backbone,
                                                                                     tokenizer)


def test_the_render_benchmark_cites_a_full_sentence_from_the_middle_of_a_page():
    sentence, near = middle_sentence(TEXT)  # of the sentences of 40 characters or more, the middle one
    assert sentence.startswith("Their leader Rollo") and sentence.endswith("in 911.")
    assert near == TEXT.index(sentence) / len(TEXT)
    assert middle_sentence("Short one. Tiny.") == ("Tiny.", 11 / 16)  # none that long: any sentence
