"""Fit the "not found" rule (hmt_core.answer.NotFoundRule) of a set of HMT weights on training SQuAD articles only.

Each article is read whole into memory; then three kinds of question recall from it: its own answerable
questions, SQuAD 2.0's unanswerable questions written against it, and answerable questions of another training
article (whose answers are not in this one). For every way of reading the recall's confidence (CONFIDENCES), the
threshold is the `--miss` quantile of the answerable questions' confidences (so about that share of answerable
questions would be told "not found"); the rule kept is the one that then says "not found" most often on the two
unanswerable kinds together.

With an answer adapter, the questions of the development articles (train_answer.DEV_ARTICLES, which the adapter
never saw) are also answered as the app answers them, with the adapter and `--passages` passages in its prompt, to
fit the adapter's own threshold: how likely it finds answering NOT_FOUND (hmt_core.answer.not_found_score). The
threshold lets a further `--reader-miss` of those articles' answerable questions, beyond those the recall rule
already tells "not found", be told so too. It is written as `fitted_not_found_above`, and used (`not_found_above`)
only with `--use-reader-threshold`: on the first adapter it caught twice as many unanswerable questions as it cost
answerable ones (0.08 against 0.04) for a quarter more time to the first token (1.27x in bench.qa), too little
to pay; on the third (shipped) one, 0.11 against 0.04 on the development articles. When the adapter has an
answerability probe (hmt_core.answerability), its threshold is fitted the same way (`--probe-miss`), written as
`fitted_probe_above`, and used (`probe_above`) with `--use-probe-threshold`, raised to `--probe-at-least` when that
is higher: the same rule fitted on a development manual (bench.manual), where the probe, fitted on Wikipedia prose,
told over half of the answerable questions "not found" at the SQuAD threshold.

    python -m hmt_core.training.fit_not_found --hmt-weights assets/hmt-smollm2-135m \
        [--answer-adapter assets/answer-lora-smollm2-135m --passages 1]

Writes <hmt-weights>/not_found.json (the rule, and every candidate's rates on the training questions) and, with an
adapter, <answer-adapter>/answering.json (passages, not_found_above, and the rates on the development questions;
what the file already holds beside them, such as `quote`, is kept).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from ..answer import CONFIDENCES, NOT_FOUND_FILE, chat_ids, recall_confidence, stream_answer
from ..answer_adapter import ANSWERING_FILE, load_answer_adapter
from ..backbone import DEFAULT_BACKBONE, load_backbone
from ..checkpoint import load_checkpoint
from ..recall import recall
from .corpora import fetch, load_squad
from .fit_recall import read_document
from .train_answer import DEV_ARTICLES

ARTICLES = (*DEV_ARTICLES, "Normans", "Black_Death")  # training articles (split.json's "train")
KINDS = ("answerable", "squad2", "other_article")


def confidences(model, tokenizer, state, question: str, adapter=None, passages: int = 3) -> dict[str, float]:
    """The question's recall confidence read every CONFIDENCES way; with an adapter, also the answer's
    not_found_score ("reader") with `passages` passages in the prompt, as the app computes it (one token generated),
    and its answerability probe's score ("probe") when it has one."""
    reader = {}
    if adapter is None:
        detail = recall(model, tokenizer, state, question,
                        chat_ids(tokenizer, [{"role": "user", "content": question}]))
    else:
        events = list(stream_answer(model, tokenizer, state, question, max_new_tokens=1, adapter=adapter,
                                    prompt_passages=passages, score_not_found=True))
        detail, reader = events[0].recall, {"reader": events[-1].not_found_score}
        if events[-1].unanswerable_score is not None:
            reader["probe"] = events[-1].unanswerable_score
    return {**{kind: recall_confidence(detail, kind) for kind in CONFIDENCES}, **reader}


def choose(samples: list[dict], miss: float) -> tuple[str, float, dict]:
    """(confidence kind, threshold, every candidate's rates): the threshold leaves `miss` of the answerable
    questions below it; the kind is the one with the highest mean not-found rate over the unanswerable kinds."""
    candidates = {}
    for kind in CONFIDENCES:
        answerable = sorted(s[kind] for s in samples if s["kind"] == "answerable")
        below = answerable[int(miss * len(answerable))]
        rates = {k: sum(s[kind] < below for s in samples if s["kind"] == k) / sum(s["kind"] == k for s in samples)
                 for k in KINDS}
        candidates[kind] = {"below": below, "not_found_rate": rates,
                            "unanswerable_mean": (rates["squad2"] + rates["other_article"]) / 2}
    best = max(candidates, key=lambda k: candidates[k]["unanswerable_mean"])
    return best, candidates[best]["below"], candidates


def above_for_miss(passed: list[float], answerable: int, miss: float) -> float:
    """The score above which about `miss` of `answerable` questions lie, from the scores of those the recall rule let
    through (`passed`, not empty): the threshold of the adapter's and its probe's 'not found'."""
    ranked = sorted(passed, reverse=True)
    return ranked[min(int(miss * answerable), len(ranked) - 1)]


def choose_reader(samples: list[dict], confidence: str, below: float, miss: float,
                  key: str = "reader") -> tuple[float, dict]:
    """(threshold, rates): the adapter's score `key` (its not_found_score, "reader", or its answerability probe's,
    "probe") above which the answer is "not found", so that `miss` of the answerable samples that the recall rule
    (`confidence` below `below`) lets through are above it, and the share of each kind then told "not found" by
    either rule."""
    answerable = [s for s in samples if s["kind"] == "answerable"]
    above = above_for_miss([s[key] for s in answerable if s[confidence] >= below], len(answerable), miss)
    rates = {}
    for k in KINDS:
        group = [s for s in samples if s["kind"] == k]
        rates[k] = {"recall": sum(s[confidence] < below for s in group) / len(group),
                    key: sum(s[key] > above for s in group) / len(group),
                    "either": sum(s[confidence] < below or s[key] > above for s in group) / len(group)}
    return above, rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hmt-weights", required=True)
    parser.add_argument("--model", default=DEFAULT_BACKBONE)
    parser.add_argument("--data", default="data")
    parser.add_argument("--per-kind", type=int, default=50, help="questions of each kind per article")
    parser.add_argument("--miss", type=float, default=0.05,
                        help="share of answerable training questions the threshold may tell 'not found'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--answer-adapter", default=None, help="also fit this adapter's not-found threshold")
    parser.add_argument("--passages", type=int, default=3,
                        help="passages in the adapter's prompt (chosen with bench.qa --articles dev)")
    parser.add_argument("--use-reader-threshold", action="store_true",
                        help="let the app use the adapter's fitted threshold (answering.json's not_found_above)")
    parser.add_argument("--reader-miss", type=float, default=0.04,
                        help="further share of answerable development questions the adapter's threshold may tell "
                             "'not found'")
    parser.add_argument("--use-probe-threshold", action="store_true",
                        help="let the app use the answerability probe's fitted threshold (answering.json's "
                             "probe_above)")
    parser.add_argument("--probe-miss", type=float, default=0.03,
                        help="further share of answerable development questions the probe's threshold may tell "
                             "'not found'")
    parser.add_argument("--probe-at-least", type=float, default=None,
                        help="the probe's threshold is at least this: the same rule fitted on other development "
                             "text (bench.manual --probe off on the development manual), so that neither kind of "
                             "text loses more than its share of answerable questions to the probe")
    args = parser.parse_args(argv)
    data = Path(args.data)
    fetch(data, ["squad"])
    train = set(json.loads((data / "squad/split.json").read_text())["train"])
    if not set(ARTICLES) <= train:
        raise SystemExit(f"{sorted(set(ARTICLES) - train)} are not training articles")
    articles = {a["title"]: a for a in load_squad(data) if a["title"] in ARTICLES}
    unanswerable = {a["title"]: a["questions"] for a in load_squad(data, "unanswerable")}
    backbone, tokenizer = load_backbone(args.model, device="cpu", dtype="float32")
    model = load_checkpoint(args.hmt_weights, backbone)
    adapter = load_answer_adapter(backbone, args.answer_adapter) if args.answer_adapter else None
    rng = random.Random(args.seed)
    samples = []
    for n, title in enumerate(ARTICLES):
        article = articles[title]
        state = read_document(model, tokenizer, [article["context"][a:b] for a, b in article["paragraph_spans"]],
                              title)
        other = articles[ARTICLES[(n + 1) % len(ARTICLES)]]
        asked = {"answerable": article["questions"], "squad2": unanswerable[title], "other_article": other["questions"]}
        reader = adapter if title in DEV_ARTICLES else None
        for kind, questions in asked.items():
            for q in rng.sample(questions, min(args.per_kind, len(questions))):
                samples.append({"article": title, "kind": kind,
                                **confidences(model, tokenizer, state, q["question"], reader, args.passages)})
        print(title, state.num_segments, "segments", flush=True)
    best, below, candidates = choose(samples, args.miss)
    record = {"confidence": best, "below": below, "miss": args.miss, "articles": list(ARTICLES),
              "questions": {k: sum(s["kind"] == k for s in samples) for k in KINDS}, "candidates": candidates,
              "command": " ".join(["python -m hmt_core.training.fit_not_found", *sys.argv[1:]])}
    (Path(args.hmt_weights) / NOT_FOUND_FILE).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "candidates"}), flush=True)
    for kind, c in candidates.items():
        print(kind, round(c["below"], 4), {k: round(v, 3) for k, v in c["not_found_rate"].items()}, flush=True)
    if adapter is not None:
        dev = [s for s in samples if "reader" in s]
        above, rates = choose_reader(dev, best, below, args.reader_miss)
        file = Path(args.answer_adapter) / ANSWERING_FILE
        kept = json.loads(file.read_text()) if file.exists() else {}  # choices made elsewhere ("chosen", "quote")
        probe = {}
        if adapter.probe is not None:
            probe_above, probe_rates = choose_reader(dev, best, below, args.probe_miss, "probe")
            used = probe_above if args.probe_at_least is None else max(probe_above, args.probe_at_least)
            probe = {"probe_above": used if args.use_probe_threshold else None,
                     "fitted_probe_above": probe_above, "probe_at_least": args.probe_at_least,
                     "probe_miss": args.probe_miss,
                     "probe_not_found_rate": probe_rates}
        answering = {**kept, "passages": args.passages, "not_found_above": above if args.use_reader_threshold else None,
                     "fitted_not_found_above": above, "reader_miss": args.reader_miss, **probe,
                     "articles": list(DEV_ARTICLES), "hmt_weights": Path(args.hmt_weights).name,
                     "questions": {k: sum(s["kind"] == k for s in dev) for k in KINDS}, "not_found_rate": rates,
                     "command": record["command"]}
        file.write_text(json.dumps(answering, indent=1) + "\n")
        print(json.dumps(answering), flush=True)


if __name__ == "__main__":
    main()
