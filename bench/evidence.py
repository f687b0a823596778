"""How often the answer's evidence holds the gold answer: held-out SQuAD questions (the 10 articles never read in
training or in fitting the recall), each article read as its own document, asked as the app asks (recall and re-read,
every recall channel the weights fuse, greedy), counted only where a recalled document passage holds a gold answer
(recall is measured by bench.recall; this measures the choice of sentence inside what was recalled).

A hit: the evidence (the done event's evidence[0], hmt_core/evidence.py) contains a gold answer, after SQuAD's
normalisation. Beside the app's rule, from the same passages and the same answers: the same without the sentence
similarity, without the backbone's likelihood of the question, and without both (the lexical overlap alone), the
question's words alone, the answer's words alone, and the first sentence of the strongest passage (what a reader
sees first without evidence).
Each row keeps the recalled passages' text, the question and the answer, so other rules can be scored on a run's
JSON without the model.
Goal: >= 90% for the app's rule. Brackets: 95% bootstrap intervals over questions.

    python -m bench.evidence --hmt-weights assets/hmt-smollm2-135m --questions-per-article 30

--split train runs the same on training articles (evidence_train.*); --split dev on the two training articles the
answer adapter never saw (evidence_dev.*), where a rule for the adapter's answers is to be chosen. --answer-adapter
answers as the app does by default (the adapter on, its own prompt and passage count, and its "not found": the recall
rule fitted with --hmt-weights and the adapter's answerability probe, after which the sentence closest to the question
is the evidence; the results' names end in _adapter); without it, the plain reader answers from three passages.

    python -m bench.evidence --hmt-weights assets/hmt-smollm2-135m \
        --answer-adapter assets/answer-lora-smollm2-135m --questions-per-article 30     # the app as shipped

--rescore FILE [FILE ...] scores the rows saved in such runs' JSON (their passages, questions and answers) again
under other weights of the question and the answer (WEIGHT_GRID), the lexical overlap alone, with no model; with
--likelihood it loads the backbone (--model) and the sentence embedder and also scores the shortlist weighed by the
backbone's likelihood of the question, and the app's rule (that and the sentence similarity). Each against the
app's lexical weights, with paired bootstrap intervals; an answer that says "not found" is scored, as the app shows
it, by the sentence closest to the question alone; a withheld answer has no evidence and counts as a miss. For
choosing the weights on development or training runs only (evidence_weights.*).

Writes bench/results/evidence.json and evidence.md (--results elsewhere, e.g. for a trial run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bench.common import (RESULTS, add_model_arguments, bootstrap, describe_weights, load_model, machine,
                          read_article, sentence_embedder, squad_articles, table_head, table_row, with_interval,
                          write_results)
from bench.qa import normalize
from hmt_core import stream_answer
from hmt_core.answer import CHAT_SOURCE, Passage, evidence_answer, load_not_found, says_not_found
from hmt_core.answer_adapter import load_answer_adapter
from hmt_core.backbone import load_backbone
from hmt_core.embedder import load_embedder
from hmt_core.evidence import (ANSWER_WEIGHT, LIKELIHOOD_WEIGHT, QUESTION_WEIGHT, SHORTLIST, SIMILARITY_WEIGHT,
                               rank_evidence, sentence_spans, shortlist_weighers)
from hmt_core.state import MemoryState, SourceText
from hmt_core.training.train_answer import DEV_ARTICLES

RULES = ("app", "without_similarity", "without_likelihood", "lexical", "question_only", "answer_only",
         "first_sentence")
WEIGHT_GRID = ((1.0, 0.0), (1.0, 0.1), (1.0, 0.25), (1.0, 0.5), (1.0, 1.0))  # (question, answer) for --rescore


def holds(text: str | None, answers: list[str]) -> bool:
    """Whether text contains one of the gold answers, both SQuAD-normalised."""
    if not text:
        return False
    said = normalize(text)
    return any(normalize(a) and normalize(a) in said for a in answers)


def first_sentence(text: str) -> str:
    """The first sentence of a passage's text."""
    spans = sentence_spans(text)
    return text[spans[0][0]:spans[0][1]] if spans else ""


def evidence_row(state, passages, question: str, answers: list[str], answer: str, evidence, likelihood=None,
                 similarity=None) -> dict | None:
    """One question's evidence under every rule, or None when no recalled document passage holds a gold answer.
    `likelihood` and `similarity` are the app's (rank_evidence's), for the rules that leave one of them out."""
    documents = [p for p in passages if p.source != CHAT_SOURCE]
    if not any(holds(p.text, answers) for p in documents):
        return None
    by_question = rank_evidence(state, documents, question, "")
    by_answer = rank_evidence(state, documents, "", answer)
    said = evidence_answer(answer)  # as the app: none when withheld, the question's closest after a 'not found'

    def rule(**models) -> str | None:
        ranked = [] if said is None else rank_evidence(state, documents, question, said, **models)
        return ranked[0].text if ranked else None

    strongest = max(documents, key=lambda p: p.weight)
    texts = {"app": evidence[0].text if evidence else None,
             "without_similarity": rule(likelihood=likelihood),
             "without_likelihood": rule(similarity=similarity),
             "lexical": rule(),
             "question_only": by_question[0].text if by_question else None,
             "answer_only": by_answer[0].text if by_answer else None,
             "first_sentence": first_sentence(strongest.text)}
    return {"question": question, "answers": answers, "answer": answer, "evidence": texts,
            "passages": [{"text": p.text, "weight": round(p.weight, 5)} for p in documents],
            "hits": {rule: holds(text, answers) for rule, text in texts.items()},
            "sentences": len(sentence_spans(texts["app"] or "")), "chars": len(texts["app"] or "")}


def remembered(weighers: dict, question: str, memo: dict) -> dict:
    """shortlist_weighers' weighers with their values kept in `memo` per (weigher, question, sentences in order), so
    that passes over the same rows under other weights never weigh the same shortlist twice (same values: the same
    batch is never computed again)."""
    def keep(kind: str, weigh):
        def weigh_once(sentences: list[str]) -> list[float]:
            key = (kind, question, tuple(sentences))
            if key not in memo:
                memo[key] = weigh(sentences)
            return memo[key]
        return None if weigh is None else weigh_once

    return {kind: keep(kind, weigh) for kind, weigh in weighers.items()}


def rescore(rows: list[dict], question_weight: float, answer_weight: float, backbone=None,
            tokenizer=None, embedder=None, memo: dict | None = None) -> list[bool]:
    """Per saved row: whether the evidence these weights choose among its passages holds a gold answer (the
    passages' text stands in for the document; after a 'not found' answer, the sentence closest to the question, as
    the app shows it; a withheld answer has no evidence). With a backbone and its tokenizer, the shortlist is
    weighed by its likelihood of the question as in the app, and with an embedder by the sentence similarity too;
    without, the lexical overlap alone (no model). `memo`, shared across calls, keeps the models' values
    (remembered)."""
    hits = []
    for row in rows:
        state, text, passages = MemoryState("hmt", torch.zeros(0, 1)), "", []
        for p in row["passages"]:
            start = len(text)
            text += p["text"] + "\n\n"
            passages.append(Passage([], "passages", None, None, start, start + len(p["text"]), p["text"], p["weight"]))
        state.sources["passages"] = SourceText("passages", text)
        said = evidence_answer(row["answer"])  # as the app shows it
        weighers = shortlist_weighers(backbone, tokenizer, row["question"], embedder)
        if memo is not None:
            weighers = remembered(weighers, row["question"], memo)
        best = [] if said is None else rank_evidence(state, passages, row["question"], said, question_weight,
                                                     answer_weight, **weighers)
        hits.append(holds(best[0].text if best else None, row["answers"]))
    return hits


def compare_weights(files: list[Path], folder: Path, backbone=None, tokenizer=None, model_name: str = "",
                    embedder=None) -> None:
    """The --rescore table: every WEIGHT_GRID pair on the rows of `files` pooled, against the app's lexical
    weights; with a backbone, also the app's weights with the shortlist weighed by its likelihood, and with the
    embedder too every WEIGHT_GRID pair beside both (the app's rule among them): how much the answer should weigh
    depends on how often the reader's answers are wrong."""
    rows, sources = [], []
    for file in files:
        run = json.loads(file.read_text())
        if run.get("split") == "eval":
            raise SystemExit(f"{file} is a held-out run: weights are chosen on development or training runs only")
        rows += run["rows"]
        sources.append({"file": file.name, "split": run.get("split"), "answer_adapter": run.get("answer_adapter"),
                        "questions": len(run["rows"])})
    grid = {(qw, aw, 0.0, 0.0): [float(h) for h in rescore(rows, qw, aw)] for qw, aw in WEIGHT_GRID}
    if (QUESTION_WEIGHT, ANSWER_WEIGHT, 0.0, 0.0) not in grid:  # the app's weights are in the grid unless they change
        grid[(QUESTION_WEIGHT, ANSWER_WEIGHT, 0.0, 0.0)] = [
            float(h) for h in rescore(rows, QUESTION_WEIGHT, ANSWER_WEIGHT)]
    app = grid[(QUESTION_WEIGHT, ANSWER_WEIGHT, 0.0, 0.0)]
    memo: dict = {}  # the models' values, shared by the passes below
    if backbone is not None:
        grid[(QUESTION_WEIGHT, ANSWER_WEIGHT, LIKELIHOOD_WEIGHT, 0.0)] = [
            float(h) for h in rescore(rows, QUESTION_WEIGHT, ANSWER_WEIGHT, backbone, tokenizer, memo=memo)]
    if backbone is not None and embedder is not None:
        for qw, aw in dict.fromkeys((*WEIGHT_GRID, (QUESTION_WEIGHT, ANSWER_WEIGHT))):
            grid[(qw, aw, LIKELIHOOD_WEIGHT, SIMILARITY_WEIGHT)] = [
                float(h) for h in rescore(rows, qw, aw, backbone, tokenizer, embedder, memo)]
    results = []
    for (qw, aw, lw, sw), hits in grid.items():
        results.append({"question": qw, "answer": aw, "likelihood": lw, "similarity": sw, "hit": sum(hits) / len(hits),
                        "hit_ci": bootstrap(hits), "minus_app": (sum(hits) - sum(app)) / len(hits),
                        "minus_app_ci": bootstrap([h - a for h, a in zip(hits, app)])})
    model = (f"likelihood from {model_name or 'the backbone'} on the {SHORTLIST} lexically best sentences"
             + (", and their sentence similarity (all-MiniLM-L6-v2)" if embedder is not None else "")
             if backbone is not None else "no model")
    lines = [f"Evidence weights scored again on {len(rows)} saved questions ({', '.join(s['file'] for s in sources)}; "
             f"{model}). A hit: the evidence holds a gold answer (after a 'not found', the sentence closest to the "
             "question, as the app shows it). Brackets: "
             f"95% bootstrap intervals; the difference is paired, against the app's lexical weights "
             f"({QUESTION_WEIGHT:g}, {ANSWER_WEIGHT:g}) alone.", "",
             *table_head("question weight", "answer weight", "likelihood weight", "similarity weight",
                         "holds the gold answer", "minus the app's lexical")]
    for r in results:
        lines.append(table_row(f"{r['question']:g}", f"{r['answer']:g}", f"{r['likelihood']:g}", f"{r['similarity']:g}",
                               with_interval(r, "hit"),
                               f"{r['minus_app']:+.3f} [{r['minus_app_ci'][0]:+.3f}, {r['minus_app_ci'][1]:+.3f}]"))
    write_results("evidence_weights", {"sources": sources, "results": results}, "\n".join(lines) + "\n", folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--articles", type=int, default=10, help="articles to use (10 are held out)")
    parser.add_argument("--split", choices=("eval", "train", "dev"), default="eval",
                        help="eval: the held-out articles (what to report); train or dev (the training articles the "
                             "answer adapter never saw): to choose a rule on")
    parser.add_argument("--answer-adapter", default=None, help="answer with this adapter, as the app does")
    parser.add_argument("--questions-per-article", type=int, default=30)
    parser.add_argument("--first-question", type=int, default=0, help="skip each article's questions before this")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for evidence.json and evidence.md")
    parser.add_argument("--rescore", type=Path, nargs="+", default=None,
                        help="score the rows of these runs' JSON again under WEIGHT_GRID (no model)")
    parser.add_argument("--likelihood", action="store_true",
                        help="with --rescore: also the app's rule, the backbone (--model) weighing the shortlist")
    args = parser.parse_args()
    if args.rescore:
        backbone, tokenizer = load_backbone(args.model, device="cpu", dtype="float32") if args.likelihood else (None,
                                                                                                            None)
        embedder = load_embedder() if args.likelihood else None
        compare_weights(args.rescore, args.results, backbone, tokenizer, args.model, embedder)
        return
    model, tokenizer = load_model(args)
    adapter = load_answer_adapter(model.backbone, args.answer_adapter) if args.answer_adapter else None
    embedder = sentence_embedder(model)  # as the app weighs its evidence
    # as the app says 'not found' (the recall rule fitted with the weights, the adapter's probe): its evidence is then
    # the sentence closest to the question
    not_found = load_not_found(args.hmt_weights) if adapter is not None and args.hmt_weights else None
    articles = squad_articles("eval" if args.split == "eval" else "train")
    if args.split != "eval":  # dev: only the articles the adapter never saw; train: never those
        articles = [a for a in articles if (a["title"] in DEV_ARTICLES) == (args.split == "dev")]
    rows, asked, started = [], 0, time.time()
    articles = articles[:args.articles]
    for article in articles:
        state = read_article(model, tokenizer, article)
        for q in article["questions"][args.first_question:args.first_question + args.questions_per_article]:
            asked += 1
            events = list(stream_answer(model, tokenizer, state, q["question"], mode="reread",
                                        max_new_tokens=args.max_new_tokens, adapter=adapter, not_found=not_found,
                                        embedder=embedder))
            done = events[-1]
            row = evidence_row(state, events[0].passages, q["question"], q["answers"], done.text, done.evidence,
                               **shortlist_weighers(model.backbone, tokenizer, q["question"], embedder))
            if row is not None:
                rows.append({"article": article["title"], **row})
                print(len(rows), asked, {r: int(v) for r, v in row["hits"].items()}, flush=True)
    n = len(rows)
    if not n:
        raise SystemExit("no question had its answer in the recalled passages")
    scores = {}
    for rule in RULES:
        hits = [float(r["hits"][rule]) for r in rows]
        scores[rule] = {"hit": sum(hits) / n, "hit_ci": bootstrap(hits)}
    result = {"model": args.model, "hmt_weights": args.hmt_weights, "answer_adapter": args.answer_adapter,
              "weights": {"question": QUESTION_WEIGHT, "answer": ANSWER_WEIGHT, "likelihood": LIKELIHOOD_WEIGHT,
                          "similarity": SIMILARITY_WEIGHT, "shortlist": SHORTLIST},
              "split": args.split, "machine": machine(),
              "asked": asked,
              "questions": n, "wall_seconds": time.time() - started, "scores": scores,
              "not_found_rule": None if not_found is None else {"recall": asdict(not_found),
                                                                 "probe_above": adapter.probe_above},
              "not_found_answers": sum(says_not_found(r["answer"]) for r in rows),
              "two_sentences": sum(r["sentences"] > 1 for r in rows) / n,
              "median_chars": statistics.median(r["chars"] for r in rows), "goal": 0.9, "rows": rows}
    m = result["machine"]
    held = {"eval": "held-out", "train": "TRAINING (not for reporting)",
            "dev": "development (training articles the answer adapter never saw; not for reporting)"}[args.split]
    reader = (f"the answer adapter {args.answer_adapter} ({adapter.passages} passage(s) in the prompt, three shown "
              "and searched for evidence)" if adapter else "the plain reader, three passages")
    lines = [f"Evidence on {n} {held} SQuAD questions whose gold answer is in a recalled passage (of {asked} asked, "
             f"up to {args.questions_per_article} per article, {len(articles)} articles, each read as its own "
             f"document); backbone {args.model}, HMT weights {describe_weights(args.hmt_weights)}, recall and "
             f"re-read, answered by {reader}, greedy, {args.max_new_tokens} new tokens; "
             f"{result['wall_seconds']:.0f} s on {m['cpu']}, {m['cores']} cores. A hit: the sentence chosen contains a "
             "gold answer. Brackets: 95% bootstrap intervals over questions.", "",
             *table_head("evidence rule", "holds the gold answer")]
    names = {"app": f"**the app's: idf-weighted overlap with the question (x{QUESTION_WEIGHT:g}) and the answer "
                    f"(x{ANSWER_WEIGHT:g}), its {SHORTLIST} best weighed by the backbone's likelihood of the question "
                    f"(x{LIKELIHOOD_WEIGHT:g}) and their sentence similarity to it (x{SIMILARITY_WEIGHT:g})**",
             "without_similarity": "the app's without the sentence similarity",
             "without_likelihood": "the app's without the likelihood",
             "lexical": "the app's overlap alone (neither)",
             "question_only": "the question's words alone", "answer_only": "the answer's words alone",
             "first_sentence": "first sentence of the strongest passage"}
    for rule in RULES:
        lines.append(table_row(names[rule], with_interval(scores[rule], "hit")))
    lines += ["", f"The app's evidence is two sentences for {result['two_sentences']:.0%} of the questions; median "
              f"length {result['median_chars']:.0f} characters. Goal: >= 0.90."]
    name = ("evidence" if args.split == "eval" else f"evidence_{args.split}") + ("_adapter" if adapter else "")
    write_results(name, result, "\n".join(lines) + "\n", folder=args.results)


if __name__ == "__main__":
    main()
