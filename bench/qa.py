"""Long-document QA (README, 'Long-document QA') on the held-out SQuAD articles, the whole article as the document.

Methods, all on the same backbone with the same greedy decoding: full context (the article in the prompt, cut to the
backbone's 8k window; the article's part of the prompt is computed once per article and reused, which gives the same
tokens), segment-only (the question alone: no document, no memory), faithful HMT, HMT recall-and-re-read with the
fused recall (the app's default) and with the memory channel alone (the paper's HMT), and the same re-read prompt
with passages ranked by MiniLM and by plain-word BM25. Intervals are 95% bootstrap intervals over questions.

    python -m bench.qa --hmt-weights assets/hmt-smollm2-135m --questions-per-article 10

Writes bench/results/qa.json and qa.md (qa_untrained.* without weights).
"""

from __future__ import annotations

import argparse
import copy
import re
import string
import time
from collections import Counter

import torch

from bench.common import (MiniLM, add_model_arguments, bm25_scores, bootstrap, describe_weights, full_context_messages,
                          load_model, machine, plain_answer, read_article, squad_articles, table_head, table_row,
                          with_interval, write_results)
from hmt_core import stream_answer
from hmt_core.answer import chat_ids
from hmt_core.backbone import cache_argument

METHODS = ("full_context", "segment_only", "hmt_faithful", "hmt_reread", "memory_reread", "minilm_reread",
           "bm25_reread")
DEFAULT_METHODS = ("full_context", "segment_only", "hmt_faithful", "hmt_reread", "memory_reread", "bm25_reread")


def normalize(text: str) -> str:
    """SQuAD answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(prediction: str, answers: list[str]) -> tuple[float, float]:
    """(contains-match, best token F1) of a prediction against the gold answers."""
    contains = any(normalize(a) and normalize(a) in normalize(prediction) for a in answers)
    return float(contains), max(token_f1(prediction, a) for a in answers)


class PrefixCache:
    """The kv cache of the prompt's beginning that every question about one article shares (system prompt and the
    article), computed once; each question gets a copy, so generation gives the same tokens as without it."""

    def __init__(self, backbone, ids: list[int]) -> None:
        from transformers import DynamicCache

        self.ids = ids
        self.cache = DynamicCache(config=backbone.config)
        with torch.no_grad():
            backbone(torch.tensor([ids]), use_cache=True, **{cache_argument(type(backbone)): self.cache})

    def cache_for(self, ids: list[int]):
        if ids[:len(self.ids)] != self.ids or len(ids) <= len(self.ids):
            return None
        return copy.deepcopy(self.cache)


def shared_prefix(tokenizer, context: str, window: int) -> list[int]:
    """The token ids that every full-context prompt about `context` starts with (two questions' common part,
    less a few tokens so that the question's first token never merges with it)."""
    a = chat_ids(tokenizer, full_context_messages(tokenizer, context, "Who?", window, 300))
    b = chat_ids(tokenizer, full_context_messages(tokenizer, context, "What is it?", window, 300))
    n = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return a[:max(n - 4, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--questions-per-article", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--methods", nargs="*", choices=METHODS, default=list(DEFAULT_METHODS))
    args = parser.parse_args()
    model, tokenizer = load_model(args)
    backbone = model.backbone
    window = backbone.config.max_position_embeddings
    minilm = MiniLM()
    rows, started, truncated = [], time.time(), 0
    for article in squad_articles("eval"):
        state = read_article(model, tokenizer, article)
        texts = [state.segment_text(i) for i in range(state.num_segments)]
        seg_emb = minilm.embed(texts)
        if len(tokenizer(article["context"], add_special_tokens=False)["input_ids"]) > window - 300:
            truncated += 1
        prefix = None
        if "full_context" in args.methods:
            prefix = PrefixCache(backbone, shared_prefix(tokenizer, article["context"], window))
        for q in article["questions"][:args.questions_per_article]:
            question = q["question"]
            rankings = {"minilm_reread": (seg_emb @ minilm.embed([question])[0]).clamp(min=0),
                        "bm25_reread": torch.tensor(bm25_scores(question, texts))}
            row = {"article": article["title"], "question": question, "answers": q["answers"]}
            for method in args.methods:
                if method == "full_context":
                    messages = full_context_messages(tokenizer, article["context"], question, window, 300)
                    answer = plain_answer(backbone, tokenizer, messages, args.max_new_tokens, prefix)
                elif method == "segment_only":
                    answer = plain_answer(backbone, tokenizer, [{"role": "user", "content": question}],
                                          args.max_new_tokens)
                else:
                    mode = "faithful" if method == "hmt_faithful" else "reread"
                    channels = ("memory",) if method == "memory_reread" else None
                    # cut_loops=False: every method is scored on its whole generated text, as plain_answer's is
                    events = stream_answer(model, tokenizer, state, question, mode=mode, channels=channels,
                                           max_new_tokens=args.max_new_tokens, ranking=rankings.get(method),
                                           cut_loops=False)
                    answer = [e for e in events if e.kind == "done"][0].text
                contains, f1 = score(answer, q["answers"])
                row[method] = {"answer": answer, "contains": contains, "f1": f1}
            rows.append(row)
            print(len(rows), {m: round(row[m]["f1"], 2) for m in args.methods}, flush=True)
    n = len(rows)
    scores = {}
    for m in args.methods:
        contains, f1 = [r[m]["contains"] for r in rows], [r[m]["f1"] for r in rows]
        scores[m] = {"contains": sum(contains) / n, "contains_ci": bootstrap(contains), "f1": sum(f1) / n,
                     "f1_ci": bootstrap(f1)}
    result = {"model": args.model, "hmt_weights": args.hmt_weights, "config": vars(model.config),
              "machine": machine(), "questions": n, "articles_over_window": truncated,
              "wall_seconds": time.time() - started, "scores": scores, "rows": rows}
    lines = [f"QA on {n} questions ({args.questions_per_article} per held-out SQuAD article, the whole article as "
             f"the document; {truncated} articles longer than the {window}-token window were cut for full context); "
             f"backbone {args.model}, segment L {model.config.segment_length}, cache N {model.config.cache_size} "
             f"while reading (recall ranks every segment), sensory k {model.config.sensory_size}, HMT weights "
             f"{describe_weights(args.hmt_weights)}, greedy, {args.max_new_tokens} new tokens; "
             f"{result['wall_seconds']:.0f} s on {result['machine']['cpu']}, {result['machine']['cores']} cores. "
             "Brackets: 95% bootstrap intervals over questions.", "", *table_head("method", "contains", "token F1")]
    for m in args.methods:
        lines.append(table_row(m, with_interval(scores[m], "contains"), with_interval(scores[m], "f1")))
    write_results("qa" if args.hmt_weights else "qa_untrained", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
