"""Fit the answerability probe (hmt_core.answerability) of an answer adapter on training SQuAD articles only.

Prompts are built as train_answer builds them, with the adapter's own prompt and its number of passages: an
answerable question with the segment that holds its answer, a SQuAD 2.0 unanswerable question with the segments BM25
ranks highest for it (which look relevant: the question was written against one of them). The probe reads the hidden
states of `--layers` at the prompt's last position with the adapter on, as the app computes them before the answer's
first token. It is fitted on the training articles less train_answer.DEV_ARTICLES, and its AUC is reported on those
development articles' questions too (which choose its threshold, in fit_not_found). Writes
<answer-adapter>/answerability.safetensors and prints one JSON line per stage.

    python -m hmt_core.training.train_answerability --answer-adapter assets/answer-lora-smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from ..answer import chat_ids, reread_messages
from ..answer_adapter import load_answer_adapter
from ..answerability import auc, fit_probe, last_states, save_probe
from ..backbone import DEFAULT_BACKBONE, capture_hidden, final_hidden_states, load_backbone
from .corpora import fetch, load_squad
from .train_answer import DEV_ARTICLES, passages_for, segment_at, text_state


def questions_of(tokenizer, articles: list[dict], unanswerable: dict[str, list[dict]],
                 segment_length: int) -> list[tuple]:
    """Every (state, question, unanswerable 0/1) of the articles, the state holding the article's segments."""
    pool = []
    for article in articles:
        paragraphs = [article["context"][a:b] for a, b in article["paragraph_spans"]]
        state = text_state(tokenizer, article["title"], paragraphs, segment_length)
        pool += [(state, q, 0) for q in article["questions"]]
        pool += [(state, q, 1) for q in unanswerable.get(article["title"], [])]
    return pool


@torch.no_grad()
def features(backbone, tokenizer, adapter, layers: list[int], items: list[tuple], passages: int,
             label: str) -> torch.Tensor:
    """[len(items), len(layers) * d]: the hidden states after `layers` at the last position of each item's re-read
    prompt, with the adapter on."""
    rows, started = [], time.time()
    for n, (state, q, unanswerable) in enumerate(items):
        gold = None if unanswerable else segment_at(state, q["answer_starts"][0])
        prompt = chat_ids(tokenizer, reread_messages(q["question"], passages_for(state, q["question"], gold, passages),
                                                     adapter.prompt))
        with adapter.on(), capture_hidden(backbone, layers) as captured:
            final_hidden_states(backbone, backbone.get_input_embeddings()(torch.tensor([prompt])))
        rows.append(last_states(captured, layers))
        if (n + 1) % 200 == 0:
            print(json.dumps({"stage": label, "done": n + 1, "of": len(items),
                              "seconds": round(time.time() - started)}), flush=True)
    return torch.stack(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answer-adapter", required=True)
    parser.add_argument("--model", default=DEFAULT_BACKBONE)
    parser.add_argument("--data", default="data")
    parser.add_argument("--per-kind", type=int, default=2000,
                        help="answerable and unanswerable training questions each (drawn at random, seeded)")
    parser.add_argument("--dev-per-kind", type=int, default=300, help="the same, of the development articles")
    parser.add_argument("--layers", type=int, nargs="+", default=[10, 14, 18, 22, 26],
                        help="decoder layers (1-based) the probe reads")
    parser.add_argument("--l2", type=float, default=1.0)
    parser.add_argument("--segment-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    data = Path(args.data)
    fetch(data, ["squad"])
    train_titles = set(json.loads((data / "squad/split.json").read_text())["train"])
    unanswerable = {a["title"]: a["questions"] for a in load_squad(data, "unanswerable")}
    articles = [a for a in load_squad(data) if a["title"] in train_titles]
    backbone, tokenizer = load_backbone(args.model, device="cpu", dtype="float32")
    adapter = load_answer_adapter(backbone, args.answer_adapter)
    rng = random.Random(args.seed)
    sets = {}
    for name, titles, n in (("train", train_titles - set(DEV_ARTICLES), args.per_kind),
                            ("dev", set(DEV_ARTICLES), args.dev_per_kind)):
        pool = questions_of(tokenizer, [a for a in articles if a["title"] in titles], unanswerable, args.segment_length)
        items = [x for kind in (0, 1) for x in rng.sample([x for x in pool if x[2] == kind],
                                                           min(n, sum(x[2] == kind for x in pool)))]
        x = features(backbone, tokenizer, adapter, args.layers, items, adapter.passages, name)
        sets[name] = (x, torch.tensor([item[2] for item in items]))
    probe = fit_probe(*sets["train"], args.layers, args.l2)
    scores = {}
    for name, (x, y) in sets.items():
        s = probe.scores(x)
        scores[name] = {"auc": round(auc(s[y == 1], s[y == 0]), 4), "answerable": int((y == 0).sum()),
                        "unanswerable": int((y == 1).sum())}
    record = {"layers": args.layers, "l2": args.l2, "seed": args.seed, "passages": adapter.passages,
              "articles": sorted(train_titles - set(DEV_ARTICLES)), "dev_articles": list(DEV_ARTICLES),
              "scores": scores,
              "command": " ".join(["python -m hmt_core.training.train_answerability", *sys.argv[1:]])}
    save_probe(probe, args.answer_adapter, record)
    print(json.dumps({"stage": "fitted", **record}), flush=True)


if __name__ == "__main__":
    main()
