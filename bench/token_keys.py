"""Choosing the token-key channel on the training SQuAD articles only (README, 'Recall quality': how the token keys
were chosen).

Reads every training article with the HMT weights while keeping the hidden states of several middle layers for every
token of every main pass, and the same layers for each training question (the bare question, as recall runs it).
Then scores each candidate (layer, projection width, keys per segment and how they are picked, which question tokens
count) by recall hit@1 / hit@3 / MRR within the article, late-interaction style (each question token takes its best
match among a segment's keys, summed). The held-out articles are never read here.

    python -m bench.token_keys --hmt-weights assets/hmt-smollm2-135m [--questions-per-article 60]

Features are kept in runs/token_keys/features.pt (delete it to collect again). Writes bench/results/token_keys.json
and token_keys.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import (ROOT, add_model_arguments, describe_weights, load_model, machine, read_article,
                          squad_articles, table_head, table_row, write_results)
from hmt_core.answer import chat_ids
from hmt_core.recall.token_keys import fit_whitening, maxsim, project, question_token_mask, select_keys
from hmt_core.training.fit_recall import TokenStates, gold_segments

LAYERS = [4, 8, 12, 16, 20, 24, 28]
FEATURES = ROOT / "runs" / "token_keys" / "features.pt"


@torch.no_grad()
def collect(model, tokenizer, per_article: int, max_articles: int) -> dict:
    """Token states of every segment's own tokens (main pass) and of each question, at every layer in LAYERS."""
    articles = []
    with TokenStates(model.backbone, LAYERS) as recorder:
        for article in squad_articles("train")[:max_articles]:
            started = time.time()
            recorder.clear()
            state = read_article(model, tokenizer, article)
            tokens = {i: recorder.segments(model, state, i) for i in LAYERS}  # [n, d] fp16 per segment
            questions = []
            for q in article["questions"][:per_article]:
                recorder.clear()
                ids = chat_ids(tokenizer, [{"role": "user", "content": q["question"]}])
                summary = model.summarize(torch.tensor([ids[:model.config.summary_length]]))[0]
                bare = tokenizer(q["question"], add_special_tokens=False)["input_ids"]
                model.backbone.base_model(inputs_embeds=model.embed(torch.tensor([bare])))
                questions.append({"summary": summary, "ids": bare, "gold": sorted(gold_segments(state, q)),
                                  "tokens": {i: recorder.calls[i][-1] for i in LAYERS}})
            articles.append({"title": article["title"], "cache": state.cache.clone(), "tokens": tokens,
                             "segments": state.num_segments, "texts": [state.segment_text(i)
                                                                      for i in range(state.num_segments)],
                             "questions": questions})
            print(f"{article['title']}: {state.num_segments} segments, {len(questions)} questions, "
                  f"{time.time() - started:.0f} s", flush=True)
    return {"layers": LAYERS, "articles": articles}


def ranking_metrics(scores: list[torch.Tensor], golds: list[list[int]]) -> dict:
    """hit@1, hit@3 and MRR of score vectors against gold segment lists."""
    h1 = h3 = rr = 0.0
    for s, gold in zip(scores, golds):
        order = torch.argsort(s, descending=True).tolist()
        rank = min(order.index(g) for g in gold) + 1
        h1, h3, rr = h1 + (rank == 1), h3 + (rank <= 3), rr + 1 / rank
    n = max(len(scores), 1)
    return {"hit@1": h1 / n, "hit@3": h3 / n, "mrr": rr / n}


def evaluate(features: dict, layer: int, width: int, keys: int, pick: str, query: str, tokenizer) -> dict:
    """Recall of the token-key channel alone for one candidate, over every collected training question."""
    sample = torch.cat([t for a in features["articles"] for t in a["tokens"][layer]])[::7].float()
    mean, proj = fit_whitening(sample, width)
    scores, golds = [], []
    for article in features["articles"]:
        seg_keys = torch.stack([select_keys(t.float(), mean, proj, keys, pick) for t in article["tokens"][layer]])
        for q in article["questions"]:
            qk = project(q["tokens"][layer], mean, proj)  # [q, r]
            if query == "content":
                keep = question_token_mask(tokenizer, q["ids"])
                qk = qk[keep] if keep.any() else qk
            scores.append(maxsim(qk, seg_keys))
            golds.append(q["gold"])
    return ranking_metrics(scores, golds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--questions-per-article", type=int, default=40)
    parser.add_argument("--articles", type=int, default=12, help="the first ones of the 25 training articles")
    args = parser.parse_args()
    model, tokenizer = load_model(args)
    started = time.time()
    if FEATURES.exists():
        features = torch.load(FEATURES)
    else:
        features = collect(model, tokenizer, args.questions_per_article, args.articles)
        FEATURES.parent.mkdir(parents=True, exist_ok=True)
        torch.save(features, FEATURES)
    rows = []

    def run(candidate: tuple) -> dict:
        row = {"layer": candidate[0], "width": candidate[1], "keys": candidate[2], "pick": candidate[3],
               "query": candidate[4], **evaluate(features, *candidate, tokenizer)}
        rows.append(row)
        print(row, flush=True)
        return row

    # First the layer at a default shape, then, at the best layer, one setting at a time, then wider keys.
    best = max((run((layer, 128, 16, "window", "content")) for layer in LAYERS), key=lambda r: r["mrr"])
    layer = best["layer"]
    for candidate in [(layer, 128, k, "window", "content") for k in (4, 8, 32, 256)] + [
            (layer, w, 16, "window", "content") for w in (64, 256)] + [
            (layer, 128, 16, "norm", "content"), (layer, 128, 16, "window", "all")] + [
            (layer, 256, k, "window", "content") for k in (32, 64, 256)] + [
            (other, 256, 64, "window", "content") for other in (8, 12)]:
        run(candidate)
    questions = sum(len(a["questions"]) for a in features["articles"])
    result = {"hmt_weights": args.hmt_weights, "machine": machine(), "questions": questions,
              "articles": len(features["articles"]), "rows": rows, "wall_seconds": time.time() - started}
    lines = [f"Token-key channel alone on {questions} questions of {len(features['articles'])} training SQuAD "
             f"articles (never the held-out ones), within each article; HMT weights "
             f"{describe_weights(args.hmt_weights)}.", "",
             *table_head("layer", "width", "keys / segment", "pick", "question tokens", "hit@1", "hit@3", "MRR")]
    for r in rows:
        lines.append(table_row(r["layer"], r["width"], r["keys"], r["pick"], r["query"], f"{r['hit@1']:.3f}",
                               f"{r['hit@3']:.3f}", f"{r['mrr']:.3f}"))
    write_results("token_keys", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
