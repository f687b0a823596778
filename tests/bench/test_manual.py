"""bench.manual: where a hand-written question's answer stands in the read PDF, how answers are scored, and a whole
run through the app's engine (a tiny model; the benchmark itself reads a real manual with the real one)."""

import sys

import torch
from tiny_models import make_backbone

from app.engine import Engine
from bench.common import ROOT
from bench.manual import (answer_place, at_thresholds, contains_and_f1, fit_probe_above, gold_segments, report, run,
                          shares, with_probe)
from hmt_core import HMT, HMTConfig, save_checkpoint
from hmt_core.state import MemoryState, SegmentInfo, SourceText

sys.path.insert(0, str(ROOT / "tests" / "app"))
from pdf_factory import make_pdf  # noqa: E402 (after the path set-up above)

PAGE_1 = "Vectors are made with the function c. A list holds objects of any mode."
PAGE_2 = "Assignment uses the operator <- in R. The function c also appears here. Plots use plot."


def two_pages() -> MemoryState:
    text = PAGE_1 + "\n\n" + PAGE_2
    second = len(PAGE_1) + 2
    segments = [SegmentInfo(0, "m.pdf", 0, 40, 1, 1, 10), SegmentInfo(1, "m.pdf", 40, second + 30, 1, 2, 10),
                SegmentInfo(2, "m.pdf", second + 30, len(text), 2, 2, 10)]
    return MemoryState("hmt", torch.zeros(0, 4), segments=segments,
                       sources={"m.pdf": SourceText("m.pdf", text, [0, second], [1, 2])})


def test_the_answer_is_found_inside_its_quoted_sentence_on_its_page():
    state = two_pages()
    q = {"page": 2, "answers": ["c"], "quote": "The function c also appears here."}
    text = state.sources["m.pdf"].text
    a, b = answer_place(state, "m.pdf", q)
    assert text[a - 9:b + 5] == "function c also"  # not the c of page 1, nor the c in 'function'
    assert gold_segments(state, "m.pdf", q) == {2}
    assert gold_segments(state, "m.pdf", {"page": 1, "answers": ["c"], "quote": None}) == {0}
    nowhere = {"page": 1, "answers": ["zebra"], "quote": None}
    assert answer_place(state, "m.pdf", nowhere) is None
    assert gold_segments(state, "m.pdf", nowhere) == {0, 1}  # every segment of its page


def test_answers_are_squad_normalised_but_an_operator_is_compared_as_written():
    assert contains_and_f1("Use the function c()", ["c"]) == (1.0, 0.5)
    assert contains_and_f1("x <- 5", ["<-"]) == (1.0, 0.0) and contains_and_f1("x = 5", ["<-"]) == (0.0, 0.0)
    assert contains_and_f1("<-", ["<-"]) == (1.0, 1.0)


def test_a_run_reads_the_pdf_as_the_app_does_and_scores_every_question(tokenizer, tmp_path):
    torch.manual_seed(0)
    config = HMTConfig(segment_length=32, sensory_size=4, token_key_layer=1, token_key_width=8,
                       token_keys_per_segment=4, recall_fusion={"memory": 0.3, "lexical": 0.5, "token": 0.2})
    save_checkpoint(HMT(make_backbone("llama"), config), tmp_path / "w")
    engine = Engine()
    engine.attach(make_backbone("llama"), tokenizer, tmp_path / "w", "tiny-fused")
    pdf = make_pdf(tmp_path / "m.pdf", [PAGE_1, "", PAGE_2])  # an empty page is skipped, as the app skips it
    questions = [{"question": "Which operator assigns?", "answers": ["<-"], "page": 3,
                  "quote": "Assignment uses the operator <- in R."},
                 {"question": "What holds objects of any mode?", "answers": ["A list"], "page": 1, "quote": None},
                 {"question": "How do I deploy R to the cloud?", "answers": [], "page": None, "quote": None,
                  "unanswerable": True}]
    result = run(engine, pdf, questions)
    assert result["pages"] == 2 and result["answerable"] == 2 and result["unanswerable"] == 1
    rows = result["rows"]
    assert all(set(r["ranks"]) == {"memory", "lexical", "token", "fused", "bm25"} for r in rows[:2])
    assert all(1 <= rank <= result["segments"] for r in rows[:2] for rank in r["ranks"].values())
    assert all(r["gold_segments"] for r in rows[:2])
    assert set(result["recall"]) == {"memory", "lexical", "token", "fused", "bm25"}
    for r in rows:  # every answer is the engine's, with the pages it showed
        assert isinstance(r["answer"], str) and r["passages"]
    table = report(result)
    assert "| all channels fused (the app's ranking) |" in table
    assert "'not found' on questions the manual does not answer" in table


def answered(score: float | None, found: bool = True, by: str | None = None, unanswerable: bool = False) -> dict:
    return {"unanswerable": unanswerable, "found": found, "not_found_by": by, "unanswerable_score": score,
            "contains": 1.0, "f1": 1.0, "cited": True, "evidence_holds": True, "evidence_on_page": True}


def test_a_run_with_the_probe_off_is_scored_at_any_threshold():
    rows = [answered(0.9), answered(0.2), answered(None, found=False, by="recall"), answered(0.7, unanswerable=True)]
    at = shares(with_probe(rows, 0.5))
    assert at["not_found_answerable"]["mean"] == 2 / 3 and at["contains"]["mean"] == 1 / 3
    assert at["not_found_unanswerable"]["mean"] == 1.0
    assert shares(with_probe(rows, 0.95))["not_found_answerable"]["mean"] == 1 / 3  # the recall rule's alone
    assert rows[0]["found"]  # the rows themselves are left as run
    columns = at_thresholds(rows, [0.5, 0.95], shipped=0.5)
    assert list(columns) == ["probe above 0.500 (shipped)", "probe above 0.950"]
    assert columns["probe above 0.500 (shipped)"] == at


def test_the_probe_threshold_is_fitted_as_fit_not_found_fits_it():
    rows = [answered(s / 100) for s in range(100)] + [answered(None, found=False, by="recall")]
    assert fit_probe_above(rows, miss=0.03) == 0.96  # three of the 101 answerable questions lie above it
    assert fit_probe_above([answered(None, found=False, by="recall")]) is None
