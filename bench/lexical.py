"""Lexical recall engines for a 4,096-segment memory: bm25s (hmt_core.recall.lexical) vs tantivy over the same terms.

Real prose (Moby-Dick, Austen) cut into ~1,100-character segments (about 256 tokens each). Both engines see the same
terms (hmt_core.recall.lexical.terms; tantivy gets them joined by spaces, through its whitespace tokenizer) and the same
BM25 parameters (k1 1.2, b 0.75). Measured: indexing every segment, adding one segment and searching again, search
latency of question-like queries returning a score for every segment, size on disk, load time, and how far the
top-10 rankings agree.

    python -m bench.lexical [--segments 4096] [--queries 200]

Writes bench/results/lexical.json and lexical.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import long_text, machine, table_head, table_row, write_results
from hmt_core.recall.lexical import K1, B, LexicalIndex, terms

try:
    import tantivy
except ImportError:  # only the comparison needs it; main() says how to install it
    tantivy = None

SEGMENT_CHARS = 1100
WH = ("What", "Who", "Why", "Where", "When", "How")


def cut(text: str, n: int) -> list[str]:
    """n segments of about SEGMENT_CHARS characters, each ending before a space."""
    segments, i = [], 0
    while len(segments) < n:
        j = text.find(" ", i + SEGMENT_CHARS)
        j = len(text) if j < 0 else j
        segments.append(text[i:j])
        i = j
    return segments


def questions(text: str, n: int, seed: int = 0) -> list[str]:
    """n question-like queries: a wh-word and the first 4-10 words of a random sentence of the text."""
    rng = random.Random(seed)
    sentences = [s.split() for s in re.split(r"(?<=[.!?])\s+", text)]
    sentences = [s for s in sentences if 6 <= len(s) <= 40]
    return [f"{rng.choice(WH)} {' '.join(s[:rng.randint(4, 10)])}?" for s in rng.sample(sentences, n)]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


class Tantivy:
    """A tantivy index of pre-tokenised segments: `body` holds the terms joined by spaces, `seg` the segment index."""

    def __init__(self, folder: Path, index: tantivy.Index | None = None) -> None:
        if index is None:
            schema = (tantivy.SchemaBuilder()
                      .add_text_field("body", tokenizer_name="whitespace", index_option="freq")
                      .add_unsigned_field("seg", fast=True).build())
            folder.mkdir()
            index = tantivy.Index(schema, path=str(folder))
        self.index, self.schema = index, index.schema
        self.writer = None
        self.searcher = index.searcher()

    @classmethod
    def open(cls, folder: Path) -> Tantivy:
        return cls(folder, tantivy.Index.open(str(folder)))

    def add(self, texts: list[str], start: int) -> None:
        """Add segments start, start + 1, ..., commit, and make them searchable."""
        if self.writer is None:
            self.writer = self.index.writer(heap_size=50_000_000, num_threads=1)
        for i, text in enumerate(texts):
            doc = tantivy.Document()
            doc.add_text("body", " ".join(terms(text)))
            doc.add_unsigned("seg", start + i)
            self.writer.add_document(doc)
        self.writer.commit()
        self.index.reload()
        self.searcher = self.index.searcher()

    def scores(self, query: str, n: int) -> torch.Tensor:
        """BM25 score of every segment, float32 [n], 0 where no term matches."""
        out = torch.zeros(n, dtype=torch.float32)
        words = LexicalIndex.query_terms(query)
        if not words:
            return out
        q = tantivy.Query.boolean_query([(tantivy.Occur.Should, tantivy.Query.term_query(self.schema, "body", w))
                                         for w in words])
        hits = self.searcher.search(q, limit=n, count=False).hits
        if hits:
            segs = self.searcher.fast_field_values("seg", [address for _, address in hits])
            out[torch.tensor(segs)] = torch.tensor([score for score, _ in hits])
        return out


def latency(fn, queries: list[str]) -> dict:
    times = []
    for q in queries:
        start = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * statistics.median(times), "p95_ms": 1000 * float(np.percentile(times, 95))}


def top10(scores: torch.Tensor) -> list[int]:
    k = min(10, int((scores > 0).sum()))
    return scores.topk(k).indices.tolist() if k else []


def agreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict:
    """How far two engines' top-10 segments agree over the same queries, and the ratio of their scores."""
    overlap, same, first, ratios = [], [], [], []
    for sa, sb in zip(a, b):
        ta, tb = top10(sa), top10(sb)
        overlap.append(len(set(ta) & set(tb)) / max(len(ta), len(tb), 1))
        same.append(ta == tb)
        first.append(ta[:1] == tb[:1])
        both = (sa > 0) & (sb > 0)
        ratios += (sb[both] / sa[both]).tolist()
    return {"mean_top10_overlap": statistics.mean(overlap), "identical_top10": statistics.mean(same),
            "same_top1": statistics.mean(first), "score_ratio_median": statistics.median(ratios),
            "score_ratio_min": min(ratios), "score_ratio_max": max(ratios)}


def run(args: argparse.Namespace, work: Path) -> dict:
    texts = cut(long_text(args.segments * SEGMENT_CHARS + 2 * SEGMENT_CHARS * args.adds), args.segments + args.adds)
    texts, extra = texts[:args.segments], texts[args.segments:]
    queries = questions("".join(texts), args.queries)
    n = len(texts)
    tokenise, counts = seconds(lambda: [len(terms(t)) for t in texts])

    # bm25s: tokenise and keep term ids as segments are read, then one lazy build on the first query
    add_all, bm = seconds(lambda: LexicalIndex.from_texts(texts))
    build, _ = seconds(lambda: bm.scores(queries[0]))
    (work / "bm25s").mkdir()
    bm.save(work / "bm25s")
    bm_load, loaded = seconds(lambda: LexicalIndex.load(work / "bm25s"))
    bm_first, _ = seconds(lambda: loaded.scores(queries[0]))

    ta_index, ta = seconds(lambda: Tantivy(work / "tantivy"))
    ta_add, _ = seconds(lambda: ta.add(texts, 0))
    ta.writer.wait_merging_threads()
    ta.writer = None
    ta_size = folder_bytes(work / "tantivy")
    ta_load, ta_loaded = seconds(lambda: Tantivy.open(work / "tantivy"))
    ta_first, _ = seconds(lambda: ta_loaded.scores(queries[0], n))

    bm_latency = latency(bm.scores, queries)
    ta_latency = latency(lambda q: ta.scores(q, n), queries)
    agree = agreement([bm.scores(q) for q in queries], [ta.scores(q, n) for q in queries])

    bm_adds, ta_adds = [], []
    for i, text in enumerate(extra):  # one segment more, then the next query sees it
        q = queries[i % len(queries)]
        start = time.perf_counter()
        bm.add(text)
        bm.scores(q)
        bm_adds.append(time.perf_counter() - start)
        start = time.perf_counter()
        ta.add([text], n + i)
        ta.scores(q, n + i + 1)
        ta_adds.append(time.perf_counter() - start)
    return {
        "segments": n, "queries": len(queries), "mean_segment_chars": statistics.mean(map(len, texts)),
        "mean_terms_per_segment": statistics.mean(counts), "vocabulary": len(bm._vocab),
        "tokenise_all_s": tokenise, "example_queries": queries[:5],
        "bm25s": {"version": importlib.metadata.version("bm25s"), "index_all_s": add_all + build, "add_all_s": add_all,
                  "first_build_s": build, "add_one_and_search_s": statistics.median(bm_adds),
                  "search": bm_latency, "disk_bytes": folder_bytes(work / "bm25s"), "load_s": bm_load,
                  "load_and_first_search_s": bm_load + bm_first},
        "tantivy": {"version": importlib.metadata.version("tantivy"), "index_all_s": ta_index + ta_add,
                    "add_one_and_search_s": statistics.median(ta_adds), "search": ta_latency, "disk_bytes": ta_size,
                    "load_s": ta_load, "load_and_first_search_s": ta_load + ta_first},
        "agreement": agree, "params": {"k1": K1, "b": B, "adds": args.adds},
    }


def table(r: dict) -> str:
    bm, ta, ag = r["bm25s"], r["tantivy"], r["agreement"]

    def ms(s: float) -> str:
        return f"{1000 * s:.1f} ms"

    head = (f"{r['segments']:,} segments of real prose ({r['mean_segment_chars']:.0f} characters, "
            f"{r['mean_terms_per_segment']:.0f} terms each; {r['vocabulary']:,} distinct terms), {r['queries']} "
            f"question-like queries, each returning a score for every segment; k1 {r['params']['k1']}, "
            f"b {r['params']['b']}; {r['machine']['cpu']}, {r['machine']['cores']} cores, one thread. Tokenising "
            f"(hmt_core.recall.lexical.terms, the same for both): {r['tokenise_all_s']:.2f} s for all segments, "
            f"{1000 * r['tokenise_all_s'] / r['segments']:.2f} ms per segment.")
    rows = [
        (f"index all {r['segments']:,} segments (incl. tokenising)",
         f"{bm['index_all_s']:.2f} s ({bm['add_all_s']:.2f} s add + {bm['first_build_s']:.2f} s build)",
         f"{ta['index_all_s']:.2f} s"),
        (f"add one segment, then search (median of {r['params']['adds']})",
         f"{ms(bm['add_one_and_search_s'])} (full rebuild)", f"{ms(ta['add_one_and_search_s'])} (commit + reload)"),
        ("search, median / p95", f"{bm['search']['median_ms']:.2f} / {bm['search']['p95_ms']:.2f} ms",
         f"{ta['search']['median_ms']:.2f} / {ta['search']['p95_ms']:.2f} ms"),
        ("on disk", f"{bm['disk_bytes'] / 2**20:.2f} MB", f"{ta['disk_bytes'] / 2**20:.2f} MB"),
        ("load", ms(bm["load_s"]), ms(ta["load_s"])),
        ("load, then first search", ms(bm["load_and_first_search_s"]), ms(ta["load_and_first_search_s"])),
    ]
    lines = [head, "", *table_head("measure", f"bm25s {bm['version']} (hmt_core.recall.lexical)",
                                   f"tantivy {ta['version']}")]
    lines += [table_row(*row) for row in rows]
    lines += ["", (f"Top-10 agreement over the {r['queries']} queries: {100 * ag['mean_top10_overlap']:.1f}% of the "
                   f"top 10 shared, {100 * ag['identical_top10']:.0f}% identical top-10 lists, "
                   f"{100 * ag['same_top1']:.0f}% the same top segment. Score ratio tantivy / bm25s where both "
                   f"match: median {ag['score_ratio_median']:.3f} (range {ag['score_ratio_min']:.3f}-"
                   f"{ag['score_ratio_max']:.3f})."), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=4096)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--adds", type=int, default=5, help="segments added one at a time after indexing")
    args = parser.parse_args()
    if tantivy is None:
        raise SystemExit("the tantivy comparison needs: pip install 'tantivy>=0.27,<0.28'")
    torch.set_num_threads(1)
    started = time.time()
    with tempfile.TemporaryDirectory() as work:
        result = run(args, Path(work))
    result["machine"] = machine()
    result["wall_seconds"] = time.time() - started
    write_results("lexical", result, table(result))


if __name__ == "__main__":
    main()
