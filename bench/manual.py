"""A real manual (README, 'A real manual'): questions written about a PDF manual, asked as a person asks them.

The PDF is opened and read as the app reads it (app.extract, app.ingest.pieces_of, the engine's reader with its
summary batch, its sentences embedded when it is finished), then each question goes through the engine as the chat
sends it (every recall channel fused, the answer adapter with quoted answers, "not found", evidence). The questions
(bench/data/, see its README) name the page that answers them; they were written from the extracted text before any
run. Nothing is fitted or chosen on the evaluation manuals' questions; the development manual's (dev_*.jsonl) are
where an answering setting may be fitted (the answerability probe's threshold was: fit_probe_above).

Per answerable question:
- recall: the rank of the best segment that holds the answer on its page (its span covers the answer's place in the
  quoted sentence), by each channel alone, the channels fused (the app's ranking) and plain-word BM25, as hit@1,
  hit@3 and MRR;
- the cited pages: whether one of the three passages shown covers the answer's page;
- the answer: contains-match and token F1 against the answers (SQuAD-normalised, an answer that is all punctuation
  such as "<-" compared as written), "not found" counted as wrong and also on its own;
- the evidence: whether the evidence sentence holds an answer, and whether it lies on the answer's page.
Per unanswerable question (the manual never says it): whether the app says "not found".
Intervals are 95% bootstrap intervals over questions.

    python -m bench.manual --pdf /usr/share/R/doc/manual/R-intro.pdf \
        --questions bench/data/r_intro_questions.jsonl --results manual_r_intro

With --probe off the answerability probe never says "not found", every answer is generated with the probe's score
kept, and the table also scores the same answers at the shipped threshold (and at any --probe-at); --rescore scores a
saved run of that kind at further --probe-at thresholds without the model.

Writes bench/results/<results>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from app.engine import Engine
from app.extract import Document, open_document
from app.ingest import pieces_of
from bench.common import machine, rank_of_gold, table_head, table_row, write_results
from bench.qa import normalize, token_f1
from bench.qa import rate as qa_rate
from bench.recall import app_rankings, summary
from hmt_core import MemoryState
from hmt_core.recall import available_channels
from hmt_core.training.fit_not_found import above_for_miss

PROBE_MISS = 0.03  # as the shipped probe's threshold was fitted (answering.json's probe_miss)
RANKINGS = ("memory", "lexical", "token", "sentence", "fused", "bm25")
LABELS = {"memory": "memory channel alone (HMT's own recall)", "lexical": "lexical channel alone",
          "token": "token-key channel alone", "sentence": "sentence channel alone",
          "fused": "all channels fused (the app's ranking)", "bm25": "BM25 baseline (plain words)"}


def _flexible(text: str) -> re.Pattern:
    """A case-insensitive pattern for text with any run of white space where it has one, and, where it begins or
    ends with a letter or digit, none right before or after it (the function c, not the c of 'function')."""
    before = r"(?<!\w)" if text.strip()[:1].isalnum() else ""
    after = r"(?!\w)" if text.strip()[-1:].isalnum() else ""
    return re.compile(before + r"\s+".join(re.escape(w) for w in text.split()) + after, re.IGNORECASE)


def page_span(state: MemoryState, source: str, page: int) -> tuple[int, int]:
    """The character span of a page in the source's text."""
    src = state.sources[source]
    i = src.page_numbers.index(page)
    end = src.page_starts[i + 1] if i + 1 < len(src.page_starts) else len(src.text)
    return src.page_starts[i], end


def answer_place(state: MemoryState, source: str, q: dict) -> tuple[int, int] | None:
    """Where the question's answer stands on its page: inside its quoted sentence when that is found, else its first
    occurrence on the page; None when neither is found."""
    start, end = page_span(state, source, q["page"])
    text = state.sources[source].text
    quote = _flexible(q["quote"]).search(text, start, end) if q.get("quote") else None
    lo, hi = (quote.start(), quote.end()) if quote else (start, end)
    for answer in q["answers"]:
        found = _flexible(answer).search(text, lo, hi)
        if found:
            return found.start(), found.end()
    return (lo, hi) if quote else None


def gold_segments(state: MemoryState, source: str, q: dict) -> set[int]:
    """The segments whose span covers the answer's place (or, failing that, that start inside it); without a
    place, every segment of the answer's page."""
    place = answer_place(state, source, q)
    segments = [s for s in state.segments if s.source == source]
    if place is None:
        return {s.index for s in segments if s.page_start <= q["page"] <= (s.page_end or s.page_start)}
    a, b = place
    return ({s.index for s in segments if s.char_start <= a and b <= s.char_end}
            or {s.index for s in segments if s.char_start <= a < s.char_end})


def contains_and_f1(prediction: str, answers: list[str]) -> tuple[float, float]:
    """SQuAD's contains-match and best token F1; an answer that normalises to nothing (an operator such as '<-') is
    looked for as written, case aside."""
    contains, f1 = False, 0.0
    for a in answers:
        if normalize(a):
            contains |= normalize(a) in normalize(prediction)
            f1 = max(f1, token_f1(prediction, a))
        else:
            hit = a.strip().lower() in prediction.lower()
            contains |= hit
            f1 = max(f1, float(hit and prediction.strip().lower() == a.strip().lower()))
    return float(contains), f1


def read_pdf(engine: Engine, path: Path) -> tuple[MemoryState, Document]:
    """The PDF read as the app reads one upload."""
    opened = open_document(path)
    doc = Document(opened.name, [p for p in opened.pages if p.text], opened.kind)  # as app.ingest keeps them
    reader = engine.new_reader()
    pieces = iter(pieces_of(doc))
    while engine.read(reader, pieces, doc.name, engine.fingerprint, max_segments=64):
        pass
    engine.finish(reader, engine.fingerprint)
    return reader.state, doc


def ranks(engine: Engine, state: MemoryState, texts: list[str], question: str, gold: set[int]) -> dict[str, int]:
    """The best gold segment's rank under each ranking."""
    ranked = app_rankings(engine.model, engine.tokenizer, state, texts, question)
    return {name: rank_of_gold(ranked[name].float(), gold) for name in RANKINGS if name in ranked}


def ask(engine: Engine, state: MemoryState, question: str) -> dict:
    """The app's answer to one question: its text, whether it is 'not found' and by what, its passages' pages and
    its evidence."""
    passages, done, started = [], None, time.perf_counter()
    for event in engine.answer(state, question, engine.fingerprint):  # the chat's defaults
        if event.kind == "recall" and event.passages:
            passages = event.passages
        if event.kind == "done":
            done = event
    evidence = done.evidence[0] if done.evidence else None
    return {"answer": done.text, "found": done.found, "not_found_by": done.not_found_by,
            "unanswerable_score": done.unanswerable_score, "confidence": done.confidence,
            "seconds": time.perf_counter() - started,
            "passages": [[p.page_start, p.page_end or p.page_start] for p in passages],
            "evidence": None if evidence is None else {"text": evidence.text, "page": evidence.page,
                                                       "page_end": evidence.page_end or evidence.page}}


def rate(values: list[float]) -> dict:
    """bench.qa's mean with its interval, or {} for no questions."""
    return qa_rate(values) if values else {}


def cell(r: dict) -> str:
    return f"{r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" if r else "n/a"


def run(engine: Engine, pdf: Path, questions: list[dict]) -> dict:
    """Read the PDF and ask every question; the rows and the shares of the module docstring."""
    started = time.time()
    state, doc = read_pdf(engine, pdf)
    read_seconds = time.time() - started
    texts = [state.segment_text(i) for i in range(state.num_segments)]
    print(f"read {doc.name}: {len(doc.pages)} pages, {state.num_segments} segments in {read_seconds:.0f} s",
          flush=True)
    rows = []
    for q in questions:
        row = {"question": q["question"], "answers": q["answers"], "page": q.get("page"),
               "unanswerable": bool(q.get("unanswerable")), **ask(engine, state, q["question"])}
        if not row["unanswerable"]:
            gold = gold_segments(state, doc.name, q)
            row["gold_segments"] = sorted(gold)
            row["ranks"] = ranks(engine, state, texts, q["question"], gold)
            row["contains"], row["f1"] = contains_and_f1(row["answer"], q["answers"])
            row["cited"] = any(a is not None and a <= q["page"] <= b for a, b in row["passages"])
            ev = row["evidence"]
            row["evidence_holds"] = bool(ev) and contains_and_f1(ev["text"], q["answers"])[0] == 1.0
            row["evidence_on_page"] = bool(ev) and ev["page"] is not None and ev["page"] <= q["page"] <= ev["page_end"]
        rows.append(row)
        print(len(rows), row["found"], row.get("ranks", {}).get("fused"), repr(row["answer"][:60]), flush=True)
    answerable = [r for r in rows if not r["unanswerable"]]
    recall = {name: summary([r["ranks"][name] for r in answerable]) for name in RANKINGS
              if answerable and all(name in r["ranks"] for r in answerable)}
    return {"pdf": str(pdf), "document": doc.name, "model": engine.describe_model(), "adapter": engine.adapter_note,
            "probe_above": engine.adapter.probe_above if engine.adapter is not None else None,
            "machine": machine(), "pages": len(doc.pages), "segments": state.num_segments,
            "read_seconds": read_seconds, "channels": list(available_channels(engine.model, state, None)),
            "wall_seconds": time.time() - started, "answerable": len(answerable),
            "unanswerable": len(rows) - len(answerable), "recall": recall, "answers": shares(rows),
            "answer_seconds_median": sorted(r["seconds"] for r in rows)[len(rows) // 2], "rows": rows}


def with_probe(rows: list[dict], above: float) -> list[dict]:
    """The rows as the app would have answered with the answerability probe's threshold at `above`: an answer whose
    prompt the probe scores above it becomes 'not found' (the rows of a run with the probe off hold every answer
    and its score, so any threshold can be scored from them). The evidence stays the one chosen with the answer,
    where the app would show the sentence closest to the question."""
    out = []
    for r in rows:
        score = r.get("unanswerable_score")
        if r["found"] and score is not None and score > above:
            r = {**r, "found": False, "not_found_by": "probe"}
        out.append(r)
    return out


def fit_probe_above(rows: list[dict], miss: float = PROBE_MISS) -> float | None:
    """fit_not_found's rule for the probe's threshold (choose_reader) on a manual's answerable questions, from a run
    with the probe off: of those the recall rule let through, the probe score above which `miss` of all of them
    lie. Fitted on the development manual only; on an evaluation manual it is reported, never used."""
    answerable = [r for r in rows if not r["unanswerable"]]
    passed = [r["unanswerable_score"] for r in answerable
              if r["not_found_by"] != "recall" and r["unanswerable_score"] is not None]
    return above_for_miss(passed, len(answerable), miss) if passed else None


def at_thresholds(rows: list[dict], thresholds: list[float], shipped: float | None) -> dict[str, dict]:
    """shares() of a --probe off run's rows at each probe threshold, by a column name."""
    return {f"probe above {t:.3f}" + (" (shipped)" if t == shipped else ""): shares(with_probe(rows, t))
            for t in thresholds}


def shares(rows: list[dict]) -> dict:
    """The app's answers, as shares of the questions: the cited page, the answer ('not found' counted wrong), the
    evidence, and 'not found' on answerable and unanswerable questions."""
    answerable = [r for r in rows if not r["unanswerable"]]
    negatives = [r for r in rows if r["unanswerable"]]
    return {"cited": rate([float(r["cited"]) for r in answerable]),
            "contains": rate([r["contains"] * r["found"] for r in answerable]),
            "f1": rate([r["f1"] * r["found"] for r in answerable]),
            "evidence_holds": rate([float(r["evidence_holds"]) for r in answerable]),
            "evidence_on_page": rate([float(r["evidence_on_page"]) for r in answerable]),
            "not_found_answerable": rate([float(not r["found"]) for r in answerable]),
            "not_found_unanswerable": rate([float(not r["found"]) for r in negatives])}


def report(result: dict) -> str:
    lines = [f"{result['answerable']} answerable and {result['unanswerable']} unanswerable questions about "
             f"{result['document']} ({result['pages']} pages with text, {result['segments']} segments, read in "
             f"{result['read_seconds']:.0f} s); {result['model']}; {result['adapter']}; channels "
             f"{', '.join(result['channels'])}; {result['wall_seconds']:.0f} s on {result['machine']['cpu']}, "
             f"{result['machine']['cores']} cores. Brackets: 95% bootstrap intervals over questions.",
             "", *table_head("recall ranking (the segment holding the answer)", "hit@1", "hit@3", "MRR")]
    for name, r in result["recall"].items():
        lines.append(table_row(LABELS[name], *(f"{r[m]:.3f} [{r[m + '_ci'][0]:.3f}, {r[m + '_ci'][1]:.3f}]"
                                               for m in ("hit@1", "hit@3", "mrr"))))
    columns = {"as run": result["answers"], **result.get("at_probe_threshold", {})}
    lines += ["", *table_head("the app's answer", *columns)]
    for key, label in (("cited", "a passage shown covers the answer's page"),
                       ("contains", "the answer contains a gold answer ('not found' counted wrong)"),
                       ("f1", "the answer's token F1 ('not found' counted wrong)"),
                       ("evidence_holds", "the evidence sentence holds a gold answer"),
                       ("evidence_on_page", "the evidence is on the answer's page"),
                       ("not_found_answerable", "'not found' on answerable questions"),
                       ("not_found_unanswerable", "'not found' on questions the manual does not answer")):
        lines.append(table_row(label, *(cell(c[key]) for c in columns.values())))
    if result.get("fitted_probe_above") is not None:
        lines.append(f"\nThe probe threshold that would tell {PROBE_MISS:.0%} of these answerable questions "
                     f"'not found' (fit_not_found's rule): {result['fitted_probe_above']:.3f}.")
    lines.append(f"\nMedian seconds per answer (recall, answer, evidence): {result['answer_seconds_median']:.2f}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pdf", help="the manual (with --questions)")
    parser.add_argument("--questions", help="a JSON-lines file of bench/data/")
    parser.add_argument("--rescore", type=Path, default=None,
                        help="instead of running: a saved --probe off run, scored again at --probe-at")
    parser.add_argument("--hmt-weights", default=None, help="default: the shipped weights")
    parser.add_argument("--probe", default="shipped",
                        help="the answerability probe's threshold: 'shipped' (the adapter's answering.json), 'off' "
                             "(every answer generated with its probe score kept; the table then also scores the "
                             "shipped threshold and any --probe-at), or a number")
    parser.add_argument("--probe-at", type=float, nargs="*", default=[],
                        help="with --probe off, further probe thresholds to score the same answers at")
    parser.add_argument("--results", required=True)
    args = parser.parse_args()
    if args.rescore is not None:
        result = json.loads(args.rescore.read_text())
        if result.get("probe") != "off":
            parser.error("--rescore needs a run made with --probe off")
        result["at_probe_threshold"].update(at_thresholds(result["rows"], args.probe_at, None))
        write_results(args.results, result, report(result))
        return
    if not (args.pdf and args.questions):
        parser.error("give --pdf and --questions (or --rescore)")
    questions = [json.loads(line) for line in Path(args.questions).read_text().splitlines() if line.strip()]
    engine = Engine()
    engine.load(weights=args.hmt_weights)
    shipped = engine.adapter.probe_above if engine.adapter is not None else None
    if engine.adapter is not None and args.probe != "shipped":
        engine.adapter.probe_above = None if args.probe == "off" else float(args.probe)
    result = run(engine, Path(args.pdf), questions)
    result.update(questions_file=args.questions, hmt_weights=args.hmt_weights or "shipped", probe=args.probe)
    if args.probe == "off":
        thresholds = ([shipped] if shipped is not None else []) + args.probe_at
        result["fitted_probe_above"] = fit_probe_above(result["rows"])
        result["at_probe_threshold"] = at_thresholds(result["rows"], thresholds, shipped)
    write_results(args.results, result, report(result))


if __name__ == "__main__":
    main()
