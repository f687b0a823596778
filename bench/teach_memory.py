"""Teaching the memory channel (issue on recall, part 4): train Wq, Wk on cached features of a frozen backbone.

HMT's memory recall scores a query's summary S against every cached memory embedding M (one per 256-token segment,
the last final hidden state of its main pass) as S Wq (M Wk)^T / sqrt(h). S does not depend on Wq, Wk, and M only
through what reading recalls, so both are computed once with the shipped weights and kept on disk; Wq, Wk
(initialised from the shipped values) are then trained in seconds on

- sentence pairs: a sentence of a training article's segment (in the chat template, truncated to summary_length,
  exactly as memory_scores builds a query) against that segment;
- question pairs: a real SQuAD training question against the segment(s) whose span covers its answer;

with a listwise softmax cross-entropy on the raw recall logits, negatives being the other segments of the pair's own
article ("article") or every training article's segments as one document ("pooled", as fit_recall pools them).
Two parameterisations: every entry of Wq, Wk ("full"), and a gain per recall dimension ("diag", h parameters), since
a few hundred distinct training segments are all the keys there are, and 2 h d free entries memorise them.

Only the TRAINING articles of data/squad/split.json are read here; the last --val-articles of them are held out as
the validation set (learning rate, pair source, negative set and step chosen on their real questions). Because Wq, Wk
also decide what each segment recalls while reading (and so change M), the chosen weights are also checked on a
re-read of the validation articles. The held-out (eval) articles are never read here: bench.recall does that with the
saved weights.

    python -m bench.teach_memory --hmt-weights assets/hmt-smollm2-135m --out-weights runs/teach/weights --no-reread
    # held-out numbers: bench.recall re-reads with the saved weights (it writes bench/results/recall.*: copy them
    # away and git checkout bench/results); the shipped weights' run on all questions is the committed recall.json
    python -m bench.recall --hmt-weights runs/teach/weights
    cp bench/results/recall.json runs/teach/recall_teach_full.json && git checkout bench/results
    git show HEAD:bench/results/recall.json > runs/teach/recall_shipped_full_committed.json
    python -m bench.teach_memory --no-reread --heldout "shipped=runs/teach/recall_shipped_full_committed.json" \
        "taught=runs/teach/recall_teach_full.json"

bench.recall's --max-questions N takes each article's FIRST N questions, which SQuAD lists in paragraph order: on
the held-out articles 92% of the first 25 have their answer in segments 0-2 (17% of all questions), so such a
sample measures recall of an article's opening segments, not recall; compare on every question.

Features are kept per article in runs/teach/features/ (delete them to collect again). Writes
bench/results/teach_memory.json and teach_memory.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import re
import time
from pathlib import Path

import torch

from bench.common import DATA, RESULTS, ROOT, machine, write_results
from hmt_core import load_backbone, load_checkpoint, save_checkpoint
from hmt_core.answer import chat_ids
from hmt_core.checkpoint import read_checkpoint_meta
from hmt_core.training.fit_recall import gold_segments, read_document
from hmt_core.hmt import SegmentResult

CACHE = ROOT / "runs" / "teach"
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(])")
SETTINGS = ("article", "pooled")


def training_articles() -> list[dict]:
    """The TRAINING SQuAD articles of split.json, in its order (never the eval ones)."""
    split = json.loads((DATA / "squad" / "split.json").read_text())
    by_title = {a["title"]: a for a in map(json.loads, (DATA / "squad" / "articles.jsonl").read_text().splitlines())}
    assert not set(split["train"]) & set(split["eval"])
    return [by_title[t] for t in split["train"]]


def sentences(text: str, min_words: int = 5) -> list[str]:
    """A segment's text cut at sentence ends; pieces shorter than min_words words are dropped."""
    pieces = [p.strip() for block in text.split("\n") for p in SENTENCE_END.split(block)]
    return [p for p in pieces if len(p.split()) >= min_words]


@torch.no_grad()
def summaries(model, tokenizer, texts: list[str], batch: int = 16) -> torch.Tensor:
    """S [n, d] of each text as a recall query: the chat-template ids truncated to summary_length (memory_scores's
    query), batched with a padding mask (equal to the unbatched pass to ~1e-5)."""
    j = model.config.summary_length
    ids = [chat_ids(tokenizer, [{"role": "user", "content": t}])[:j] for t in texts]
    out = torch.zeros(len(ids), model.summary_prompt.shape[1])
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for b in range(0, len(order), batch):
        rows = order[b:b + batch]
        width = max(len(ids[i]) for i in rows)
        x = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, i in enumerate(rows):
            x[r, :len(ids[i])] = torch.tensor(ids[i])
            mask[r, :len(ids[i])] = 1
        out[rows] = model.summarize(x, mask).float().cpu()
    return out


def article_features(model, tokenizer, article: dict, sentences_per_segment: int, questions: int,
                     with_sentences: bool = True) -> dict:
    """Read one article as bench.recall / fit_recall do; M [n, d] of its segments, S of sampled sentences of each
    segment (with their segment) and of its first `questions` questions (with their gold segments)."""
    paragraphs = [article["context"][s:e] for s, e in article["paragraph_spans"]]
    state = read_document(model, tokenizer, paragraphs, article["title"])
    out = {"title": article["title"], "memories": state.cache.float().cpu().clone(),
           "segments": state.num_segments}
    assert state.cache_segments == list(range(state.num_segments))
    if with_sentences:
        rng = random.Random(article["title"])
        texts, owner = [], []
        for i in range(state.num_segments):
            found = sentences(state.segment_text(i))
            for text in rng.sample(found, min(sentences_per_segment, len(found))):
                texts.append(text)
                owner.append(i)
        out.update(sentence_texts=texts, sentence_segment=owner, sentence_summaries=summaries(model, tokenizer, texts))
    qs = article["questions"][:questions]
    out.update(question_texts=[q["question"] for q in qs],
               question_gold=[gold_segments(state, q) for q in qs],
               question_summaries=summaries(model, tokenizer, [q["question"] for q in qs]))
    return out


class SpansOnly:
    """Stands in for the HMT in a Reader to cut a document into exactly the segments reading makes (same text
    pieces, tokens and cuts) without running the backbone: segment spans for gold segments, no memories."""

    def __init__(self, model):
        self.model = model
        self.segment_length = model.segment_length

    def new_state(self, keep: int | None = None):
        return self.model.new_state(keep)

    def read_segment(self, state, ids: list[int], segment_index: int, return_logits: bool = False) -> SegmentResult:
        memory = torch.zeros(self.model.initial_memory.shape[1])
        self.model._write(state, memory, ids, segment_index)
        return SegmentResult(memory, None)


def all_question_features(model, tokenizer, article: dict, folder: Path, log) -> dict:
    """S and gold segments of EVERY question of an article (folder/<title>.questions.pt): the first questions of a
    SQuAD article are about its first paragraphs, so a first-N sample favours early segments."""
    path = folder / f"{article['title']}.questions.pt"
    if not path.exists():
        started = time.time()
        paragraphs = [article["context"][s:e] for s, e in article["paragraph_spans"]]
        state = read_document(SpansOnly(model), tokenizer, paragraphs, article["title"])
        qs = article["questions"]
        torch.save({"segments": state.num_segments, "question_texts": [q["question"] for q in qs],
                    "question_gold": [gold_segments(state, q) for q in qs],
                    "question_summaries": summaries(model, tokenizer, [q["question"] for q in qs])}, path)
        log(f"all {len(qs)} questions of {article['title']} ({time.time() - started:.0f} s)")
    return torch.load(path)


def cached_features(model, tokenizer, articles: list[dict], folder: Path, args, log) -> list[dict]:
    """article_features of each article, from folder/<title>.pt when already computed (restarts redo nothing)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for article in articles:
        path = folder / f"{article['title']}.pt"
        if not path.exists():
            started = time.time()
            feats = article_features(model, tokenizer, article, args.sentences_per_segment, args.questions_per_article)
            torch.save(feats, path)
            log(f"features {article['title']}: {feats['segments']} segments, {len(feats['sentence_texts'])} "
                f"sentences, {len(feats['question_texts'])} questions ({time.time() - started:.0f} s)")
        out.append(torch.load(path))
    return out


class Pairs:
    """Queries S [Q, d] against candidate memories M [N, d] (articles concatenated), each query with its article's
    candidate range and a multi-hot gold mask [Q, N]."""

    def __init__(self, feats: list[dict], source: str):
        memories, summ, golds, articles, ranges = [], [], [], [], []
        offset = 0
        for a, f in enumerate(feats):
            n = f["segments"]
            memories.append(f["memories"])
            ranges.append((offset, offset + n))
            items = []
            if source in ("sentences", "both"):
                items += [(s, [g]) for s, g in zip(f["sentence_summaries"], f["sentence_segment"])]
            if source in ("questions", "both"):
                items += [(s, g) for s, g in zip(f["question_summaries"], f["question_gold"]) if g]
            for s, gold in items:
                summ.append(s)
                golds.append([offset + g for g in gold])
                articles.append(a)
            offset += n
        self.memories = torch.cat(memories)  # [N, d]
        self.summaries = torch.stack(summ)  # [Q, d]
        self.article = torch.tensor(articles)  # [Q]
        self.ranges = torch.tensor(ranges)  # [A, 2]
        self.gold = torch.zeros(len(golds), offset, dtype=torch.bool)
        for q, gold in enumerate(golds):
            self.gold[q, gold] = True
        seg = torch.arange(offset)
        lo, hi = self.ranges[self.article, 0], self.ranges[self.article, 1]
        self.own = (seg[None] >= lo[:, None]) & (seg[None] < hi[:, None])  # [Q, N]

    def __len__(self) -> int:
        return self.summaries.shape[0]

    def candidates(self, setting: str) -> torch.Tensor:
        return self.own if setting == "article" else torch.ones_like(self.own)


def logits(wq: torch.Tensor, wk: torch.Tensor, s: torch.Tensor, m: torch.Tensor, h: int | None = None
           ) -> torch.Tensor:
    """Raw recall scores S Wq (M Wk)^T / sqrt(h): s [Q, d], m [N, d] -> [Q, N] (h: the full recall width when wq,
    wk hold only its active rows)."""
    return (s @ wq.T) @ (m @ wk.T).T / math.sqrt(h or wq.shape[0])


def listwise_loss(scores: torch.Tensor, candidates: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy of the gold segments among the candidates, on raw logits [Q, N]."""
    inf = torch.tensor(float("-inf"))
    return (torch.logsumexp(torch.where(candidates, scores, inf), 1)
            - torch.logsumexp(torch.where(gold & candidates, scores, inf), 1)).mean()


def ranking_metrics(scores: torch.Tensor, pairs: Pairs, setting: str) -> dict:
    """hit@1, hit@3 and MRR of scores [pairs, segments] over the setting's candidates; ties count against the
    gold (as bench.recall)."""
    cand = pairs.candidates(setting)
    masked = scores.masked_fill(~cand, float("-inf"))
    best = masked.masked_fill(~pairs.gold, float("-inf")).max(1).values
    rank = ((masked >= best[:, None]) & cand & ~pairs.gold).sum(1) + 1
    return {"hit@1": float((rank == 1).float().mean()), "hit@3": float((rank <= 3).float().mean()),
            "mrr": float((1.0 / rank).float().mean()), "questions": len(pairs)}


@torch.no_grad()
def evaluate(wq: torch.Tensor, wk: torch.Tensor, pairs: Pairs) -> dict:
    """hit@1, hit@3, MRR of the memory channel in each setting; ties count against the gold (as bench.recall)."""
    scores = logits(wq, wk, pairs.summaries, pairs.memories)  # rank-based: the 1/sqrt(h) scale does not matter
    out = {}
    for setting in SETTINGS:
        out[setting] = ranking_metrics(scores, pairs, setting)
    return out


@torch.no_grad()
def position_baseline(pairs: Pairs) -> dict:
    """The same metrics for a ranking that knows no content: the earliest segment of each article first (in the
    pooled setting, article by article in reading order)."""
    n = pairs.memories.shape[0]
    local = torch.arange(n) - pairs.ranges[torch.bucketize(torch.arange(n), pairs.ranges[:, 1], right=True), 0]
    out = {}
    for setting in SETTINGS:
        scores = (-local if setting == "article" else -torch.arange(n)).float()[None].expand(len(pairs), -1)
        out[setting] = ranking_metrics(scores, pairs, setting)
    return out


def score(metrics: dict) -> float:
    """The validation criterion: MRR averaged over the two settings."""
    return sum(metrics[s]["mrr"] for s in SETTINGS) / len(SETTINGS)


def train(wq0: torch.Tensor, wk0: torch.Tensor, pairs: Pairs, val: Pairs, negatives: str, lr: float, steps: int,
          batch: int, every: int, param: str = "full", seed: int = 0) -> dict:
    """Adam on Wq, Wk from the shipped values; the validation MRR picks the step (early stopping).

    Rows of Wq and Wk that are both zero (init_recall fills only the first d of h rows) get zero gradient and stay
    zero under any gradient method, so only the active rows are trained; the scale keeps the full h.
    param 'full' trains every entry of those rows; 'diag' only a gain per recall dimension (Wq <- diag(g) Wq, g
    from 1: as many parameters as h, against 2 h d), the strongly regularised variant."""
    gen = torch.Generator().manual_seed(seed)
    h = wq0.shape[0]
    active = (wq0.abs().sum(1) > 0) | (wk0.abs().sum(1) > 0)
    if param == "full":
        wq_p, wk_p = wq0[active].clone().requires_grad_(True), wk0[active].clone().requires_grad_(True)

        def weights():
            return wq_p, wk_p

        opt = torch.optim.Adam([wq_p, wk_p], lr=lr)
    elif param == "diag":
        gain = torch.ones(int(active.sum()), 1, requires_grad=True)

        def weights():
            return gain * wq0[active], wk0[active]

        opt = torch.optim.Adam([gain], lr=lr)
    else:
        raise ValueError(f"unknown param {param!r}")
    cand_all = pairs.candidates(negatives)
    best = {"step": 0, "val": evaluate(wq0, wk0, val), "wq": wq0, "wk": wk0}
    best["criterion"] = score(best["val"])
    curve = [{"step": 0, "val_mrr": best["criterion"]}]
    for step in range(1, steps + 1):
        rows = torch.randint(len(pairs), (batch,), generator=gen)
        cand = cand_all[rows]
        used = cand.any(0)  # only the memories some query of the batch competes over
        wq, wk = weights()
        scores = logits(wq, wk, pairs.summaries[rows], pairs.memories[used], h)
        loss = listwise_loss(scores, cand[:, used], pairs.gold[rows][:, used])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            full_q, full_k = wq0.clone(), wk0.clone()
            full_q[active], full_k[active] = (w.detach() for w in weights())
            metrics = evaluate(full_q, full_k, val)
            curve.append({"step": step, "loss": float(loss.detach()), "val_mrr": score(metrics)})
            if score(metrics) > best["criterion"]:
                best = {"step": step, "val": metrics, "criterion": score(metrics), "wq": full_q, "wk": full_k}
    best["curve"] = curve
    # the fit on its own training pairs (in its negative setting) and on validation, at the start and the last step
    best["train_fit"] = {"start": evaluate(wq0, wk0, pairs)[negatives],
                         "last": evaluate(full_q, full_k, pairs)[negatives]}
    best["val_last"] = metrics
    return best


@torch.no_grad()
def reread_features(model, tokenizer, articles: list[dict], old: list[dict]) -> list[dict]:
    """Validation features after re-reading with the model's (new) Wq, Wk: new M; S reused (no Wq/Wk in them)."""
    out = []
    for article, f in zip(articles, old):
        paragraphs = [article["context"][s:e] for s, e in article["paragraph_spans"]]
        state = read_document(model, tokenizer, paragraphs, article["title"])
        assert state.num_segments == f["segments"]
        out.append({**f, "memories": state.cache.float().cpu().clone()})
    return out


def table(result: dict) -> str:
    """The markdown report."""
    pairs = ", ".join(f"{k} {v}" for k, v in result["pairs"].items())
    intro = (f"Teaching the memory channel: Wq, Wk trained on cached features (frozen backbone, HMT weights "
             f"{result['hmt_weights']}) of {len(result['train_articles'])} training SQuAD articles, validated on "
             f"{len(result['val_articles'])} other training articles (all their {result['val_questions']} real "
             "questions); "
             f"training pairs per source: {pairs}. Memory channel alone, hit@1 / hit@3 / MRR; 'article' = the "
             "question's own article is the document, 'pooled' = all validation articles as one document; val MRR = "
             "the mean of the two MRRs, the selection criterion (the chosen run is the best of all rows on these "
             "same questions, so its validation gain is optimistic). "
             f"{result['wall_seconds']:.0f} s on "
             f"{result['machine']['cpu']} (features cached).")
    header = ("| Wq, Wk | pairs | negatives | trained | lr | best step | article hit@1 | article hit@3 | pooled hit@1 "
              "| pooled hit@3 | val MRR | val MRR, last step | training pairs hit@1, start -> last step |")
    lines = [intro, "", "**Validation (training articles held out from the fit), cached M from the shipped reading**",
             "", header, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def row(name, r):
        v = r["val"]
        return (f"| {name} | {r.get('source', '-')} | {r.get('negatives', '-')} | {r.get('param', '-')} | "
                f"{r.get('lr', '-')} | {r.get('step', '-')} | {v['article']['hit@1']:.3f} | "
                f"{v['article']['hit@3']:.3f} | {v['pooled']['hit@1']:.3f} | {v['pooled']['hit@3']:.3f} | "
                f"{score(v):.3f} | " + (f"{score(r['val_last']):.3f} | {r['train_fit']['start']['hit@1']:.3f} -> "
                                        f"{r['train_fit']['last']['hit@1']:.3f} |" if "train_fit" in r else "- | - |"))

    lines.append(row("none: earliest segment first", {"val": result["val_position_baseline"]}))
    lines.append(row("shipped", {"val": result["val_before"]}))
    for r in result["runs"]:
        lines.append(row("trained" + (" (chosen)" if r == result["chosen"] else ""), r))
    gp = result.get("val_gold_position")
    if gp:
        lines += ["", "Where the validation questions' answers are (SQuAD lists an article's questions in paragraph "
                  "order): " + "; ".join(f"{k}: {v['gold in segments 0-2']:.0%} in segments 0-2, mean gold segment "
                                         f"{v['mean gold segment']:.1f}" for k, v in gp.items())
                  + ". A first-N sample of questions therefore measures recall of an article's first segments."]
    sp = result["val_sentences"]
    lines += ["", ("Validation sentence pairs (the self-supervised task itself), hit@1 / hit@3: "
                   + "; ".join(f"{name} article {sp[name]['article']['hit@1']:.3f} / "
                               f"{sp[name]['article']['hit@3']:.3f}, "
                          f"pooled {sp[name]['pooled']['hit@1']:.3f} / {sp[name]['pooled']['hit@3']:.3f}"
                               for name in ("shipped", "chosen")))]
    if result.get("val_reread"):
        lines += ["", ("**Validation after re-reading the validation articles with the chosen Wq, Wk** (reading "
                       "recalls with them, so M changes)"), "",
                  "| Wq, Wk | article hit@1 | article hit@3 | article MRR | pooled hit@1 | pooled hit@3 | pooled MRR |",
                  "|---|---|---|---|---|---|---|"]
        for name, v in (("earliest segment first", result["val_position_baseline"]), ("shipped", result["val_before"]),
                        ("chosen, cached M", result["chosen"]["val"]),
                        ("chosen, re-read M", result["val_reread"])):
            lines.append(f"| {name} | " + " | ".join(f"{v[s][m]:.3f}" for s in SETTINGS
                                                      for m in ("hit@1", "hit@3", "mrr")) + " |")
    if result.get("heldout"):
        lines += ["", "**Held-out SQuAD articles (bench.recall), 95% bootstrap intervals over questions**", ""]
        for setting, title in (("article", "each article its own document"),
                               ("all_articles", "all held-out articles as one document")):
            lines += [f"*{title}*", "", "| weights | questions | ranking | hit@1 | hit@3 | MRR |",
                      "|---|---|---|---|---|---|"]
            for name, h in result["heldout"].items():
                for ranking in ("memory", "memory+token", "fused"):
                    r = h["settings"][setting][ranking]
                    cells = [f"{r[m]:.3f} [{r[m + '_ci'][0]:.3f}, {r[m + '_ci'][1]:.3f}]"
                             for m in ("hit@1", "hit@3", "mrr")]
                    lines.append(f"| {name} | {h['questions']} | {ranking} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hmt-weights", default="assets/hmt-smollm2-135m")
    parser.add_argument("--train-articles", type=int, default=21, help="the first N training articles")
    parser.add_argument("--val-articles", type=int, default=4, help="the last N training articles")
    parser.add_argument("--sentences-per-segment", type=int, default=4)
    parser.add_argument("--questions-per-article", type=int, default=60)
    parser.add_argument("--sources", nargs="+", default=["sentences", "questions", "both"])
    parser.add_argument("--negatives", nargs="+", default=list(SETTINGS))
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4])
    parser.add_argument("--params", nargs="+", default=["full", "diag"], help="what is trained (see train)")
    parser.add_argument("--diag-lrs", type=float, nargs="+", default=[1e-3, 1e-2], help="learning rates of 'diag'")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--every", type=int, default=5, help="validate every N steps")
    parser.add_argument("--features-only", action="store_true")
    parser.add_argument("--no-reread", action="store_true", help="skip re-reading the validation articles")
    parser.add_argument("--out-weights", type=Path, default=CACHE / "weights")
    parser.add_argument("--heldout", nargs="*", default=[], help="name=bench.recall json to add to the report")
    parser.add_argument("--report-only", action="store_true", help="only add --heldout to the last run's report")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:5.0f} s] {message}", flush=True)

    if args.report_only:  # add held-out bench.recall results to the last run's report, without training again
        result = json.loads((RESULTS / "teach_memory.json").read_text())
        result["heldout"] = {name: json.loads(Path(path).read_text()) for name, path in
                             (item.split("=", 1) for item in args.heldout)}
        write_results("teach_memory", result, table(result))
        return
    articles = training_articles()
    val_articles = articles[-args.val_articles:]
    train_articles = articles[:args.train_articles]
    assert not {a["title"] for a in val_articles} & {a["title"] for a in train_articles}
    backbone, tokenizer = load_backbone(device="cpu")
    model = load_checkpoint(args.hmt_weights, backbone).eval()
    # validation first: nothing can be chosen without it
    val = cached_features(model, tokenizer, val_articles, CACHE / "features", args, log)
    feats = cached_features(model, tokenizer, train_articles, CACHE / "features", args, log)
    if args.features_only:
        return
    wq0, wk0 = model.wq.weight.detach().float().clone(), model.wk.weight.detach().float().clone()
    # validation on EVERY question of the validation articles (their first questions favour early segments)
    val = [{**f, **{k: q[k] for k in ("question_texts", "question_gold", "question_summaries")}} for f, q in
           zip(val, (all_question_features(model, tokenizer, a, CACHE / "features", log) for a in val_articles))]
    val_pairs = Pairs(val, "questions")
    before = evaluate(wq0, wk0, val_pairs)
    first_n = args.questions_per_article
    golds = [(i, min(g)) for f in val for i, g in enumerate(f["question_gold"]) if g]
    gold_position = {f"first {first_n} questions" if first else "all questions": {
        "questions": len(sel), "gold in segments 0-2": sum(g < 3 for g in sel) / len(sel),
        "mean gold segment": sum(sel) / len(sel)} for first in (True, False)
        for sel in [[g for i, g in golds if i < first_n or not first]]}
    log(f"shipped: {json.dumps(before)}")
    position = position_baseline(val_pairs)
    log(f"earliest segment first: {json.dumps(position)}")
    runs = []
    for source in args.sources:
        pairs = Pairs(feats, source)
        for negatives in args.negatives:
            for param, lr in [("full", lr) for lr in args.lrs if "full" in args.params] + [
                    ("diag", lr) for lr in args.diag_lrs if "diag" in args.params]:
                t = time.time()
                r = train(wq0, wk0, pairs, val_pairs, negatives, lr, args.steps, args.batch, args.every, param)
                r.update(source=source, negatives=negatives, param=param, lr=lr, pairs=len(pairs),
                         seconds=time.time() - t)
                runs.append(r)
                log(f"{source:9s} {negatives:7s} {param} lr {lr:g}: best step {r['step']}, val MRR "
                    f"{r['criterion']:.3f} (article hit@1/3 {r['val']['article']['hit@1']:.3f}/"
                    f"{r['val']['article']['hit@3']:.3f}, pooled {r['val']['pooled']['hit@1']:.3f}/"
                    f"{r['val']['pooled']['hit@3']:.3f}) [{r['seconds']:.0f} s]")
    chosen = max(runs, key=lambda r: r["criterion"])
    result = {"hmt_weights": args.hmt_weights, "command": "python -m bench.teach_memory " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]), "machine": machine(),
              "train_articles": [a["title"] for a in train_articles],
              "val_articles": [a["title"] for a in val_articles],
              "val_questions": len(val_pairs), "pairs": {s: len(Pairs(feats, s)) for s in args.sources},
              "settings": vars(args) | {"out_weights": str(args.out_weights)}, "val_before": before,
              "val_position_baseline": position, "val_gold_position": gold_position}
    result["runs"] = [{k: v for k, v in r.items() if k not in ("wq", "wk")} for r in runs]
    result["chosen"] = result["runs"][runs.index(chosen)]
    sentence_pairs = Pairs(val, "sentences")  # for information: the self-supervised task itself, on validation
    result["val_sentences"] = {"shipped": evaluate(wq0, wk0, sentence_pairs),
                               "chosen": evaluate(chosen["wq"], chosen["wk"], sentence_pairs)}
    log(f"validation sentence pairs: {json.dumps(result['val_sentences'])}")
    if chosen["step"] > 0:
        with torch.no_grad():
            model.wq.weight.copy_(chosen["wq"].to(model.wq.weight))
            model.wk.weight.copy_(chosen["wk"].to(model.wk.weight))
        extra = copy.deepcopy(read_checkpoint_meta(args.hmt_weights).get("extra", {}))
        extra["teach_memory"] = {"command": result["command"], "chosen": {
            k: chosen[k] for k in ("source", "negatives", "param", "lr", "step")}}
        save_checkpoint(model, args.out_weights, extra=extra)
        log(f"saved {args.out_weights}")
        if not args.no_reread:
            path = CACHE / "reread_val.pt"
            key = [float(chosen["wq"].sum()), float(chosen["wk"].sum())]
            if path.exists() and torch.load(path)["key"] == key:
                reread = torch.load(path)["feats"]
            else:
                reread = reread_features(model, tokenizer, val_articles, val)
                torch.save({"key": key, "feats": reread}, path)
            result["val_reread"] = evaluate(chosen["wq"], chosen["wk"], Pairs(reread, "questions"))
            log(f"re-read validation: {json.dumps(result['val_reread'])}")
    for item in args.heldout:
        name, path = item.split("=", 1)
        result.setdefault("heldout", {})[name] = json.loads(Path(path).read_text())
    result["wall_seconds"] = time.time() - started
    write_results("teach_memory", result, table(result))


if __name__ == "__main__":
    main()
