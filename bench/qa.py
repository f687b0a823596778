"""Long-document QA (README, 'Long-document QA') on the held-out SQuAD articles, the whole article as the document.

Methods, all on the same backbone with the same greedy decoding: full context (the article in the prompt, cut to the
backbone's 8k window; the article's part of the prompt is computed once per article and reused, which gives the same
tokens), segment-only (the question alone: no document, no memory), faithful HMT, HMT recall-and-re-read with the
fused recall (the app's default) and with the memory channel alone (the paper's HMT), and the same re-read prompt
with passages ranked by MiniLM and by plain-word BM25. Intervals are 95% bootstrap intervals over questions.

    python -m bench.qa --hmt-weights assets/hmt-smollm2-135m --questions-per-article 10

The reader's rows (the answer adapter, the prompt, one passage or three, the gold segment as an oracle) and the
honest "not found" (SQuAD 2.0's unanswerable questions and another article's questions):

    python -m bench.qa --hmt-weights assets/hmt-smollm2-135m --answer-adapter assets/answer-lora-smollm2-135m \
        --unanswerable 10 [--articles dev]

Writes bench/results/qa.json and qa.md (qa_untrained.* without weights; qa_reader.* with an adapter, qa_reader_dev.*
on the development articles; --results names another).
"""

from __future__ import annotations

import argparse
import copy
import re
import string
import time
from collections import Counter

import torch

from bench.common import (add_model_arguments, bm25_scores, bootstrap, describe_weights, full_context_messages,
                          load_model, machine, needle_segment, plain_answer, read_article, squad_articles,
                          sentence_embedder, squad_unanswerable, table_head, table_row, write_results)
from hmt_core import stream_answer
from hmt_core.answer import ANSWER_PROMPT, SYSTEM_PROMPT, chat_ids, load_not_found
from hmt_core.answer_adapter import load_answer_adapter
from hmt_core.training.train_answer import DEV_ARTICLES
from hmt_core.backbone import cache_argument

# Re-read variants with the fused recall's passages or the gold segment alone (the oracle): (passages, how many in
# the prompt, system prompt, answer adapter on, answers kept quotes of the passages); three recalled passages are shown
# either way. "sentences" is SYSTEM_PROMPT (one or two sentences), "short" ANSWER_PROMPT (a short phrase from the
# passages, or NOT_FOUND), the prompt the adapter was trained with. "quoted" rows keep the answer a verbatim quote of
# the passages in the prompt (hmt_core.quoting); the others never do, whatever the adapter's answering.json says.
VARIANTS = {
    "reread_1": ("recall", 1, "sentences", False, False),
    "reread_short": ("recall", 3, "short", False, False),
    "reread_short_1": ("recall", 1, "short", False, False),
    "reread_adapter": ("recall", 3, "short", True, False),
    "reread_adapter_1": ("recall", 1, "short", True, False),
    "reread_adapter_1_quoted": ("recall", 1, "short", True, True),
    "reread_adapter_quoted": ("recall", 3, "short", True, True),
    "oracle": ("gold", 1, "sentences", False, False),
    "oracle_short": ("gold", 1, "short", False, False),
    "oracle_adapter": ("gold", 1, "short", True, False),
    "oracle_adapter_quoted": ("gold", 1, "short", True, True),
}
PROMPTS = {"sentences": SYSTEM_PROMPT, "short": ANSWER_PROMPT}
METHODS = ("full_context", "segment_only", "hmt_faithful", "hmt_reread", "memory_reread", "minilm_reread",
           "bm25_reread", *VARIANTS)
DEFAULT_METHODS = ("full_context", "segment_only", "hmt_faithful", "hmt_reread", "memory_reread", "bm25_reread")
ADAPTER_METHODS = ("hmt_reread", *VARIANTS)  # --answer-adapter: the reader's rows


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


def reread(model, tokenizer, state, question: str, method: str, max_new_tokens: int, rankings: dict,
           adapter, rule) -> dict:
    """One HMT answer of `method` (hmt_faithful, hmt_reread, memory_reread, a retriever's *_reread or a VARIANTS
    row) with what the page would show of it: the answer, whether the reader said not found, whether the not-found
    `rule` would have said so before generating (the answer is generated anyway, so one run scores both), the
    seconds to the first streamed token and the answer's length in words. With the adapter, also its
    not_found_score and whether the adapter's threshold would have said 'not found' (reader_above), and its
    answerability probe's score and whether the probe's threshold would have (probe_above)."""
    mode = "faithful" if method == "hmt_faithful" else "reread"
    channels = ("memory",) if method == "memory_reread" else None
    top, system, use, quote = None, None, None, None
    ranking = rankings.get(method)
    if method in VARIANTS:
        passages, top, prompt, on, quote = VARIANTS[method]
        ranking = rankings["gold"] if passages == "gold" else None
        system, use = PROMPTS[prompt], adapter if on else None
    started, first = time.perf_counter(), None
    done, below = None, False
    # cut_loops=False: every method is scored on its whole generated text, as plain_answer's is
    scored = use is not None and use.not_found_above is not None  # the score costs time only where the app uses it
    for event in stream_answer(model, tokenizer, state, question, mode=mode, channels=channels,
                               max_new_tokens=max_new_tokens, ranking=ranking, prompt_passages=top,
                               cut_loops=False, adapter=use, system=system, score_not_found=scored, quote=quote):
        if event.kind == "recall" and event.recall is not None and rule is not None and not below:
            below = rule.says_not_found(event.recall)
        if event.kind == "token" and first is None:
            first = time.perf_counter() - started
        if event.kind == "done":
            done = event
    score, probed = done.not_found_score, done.unanswerable_score
    above = rule is not None and scored and use.says_not_found(score)
    probe_above = rule is not None and probed is not None and use.probe_says_not_found(probed)
    return {"answer": done.text, "below_threshold": below, "not_found_score": score, "reader_above": above,
            "unanswerable_score": probed, "probe_above": probe_above,
            "found": done.found, "first_token_seconds": first, "words": len(done.text.split())}


def rate(values: list[float]) -> dict:
    """A mean with its bootstrap interval."""
    return {"mean": sum(values) / len(values), "ci": bootstrap(values), "n": len(values)}


def cell(r: dict) -> str:
    return f"{r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--questions-per-article", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--methods", nargs="*", choices=METHODS, default=None,
                        help=f"default: {' '.join(DEFAULT_METHODS)}; with --answer-adapter: "
                             f"{' '.join(ADAPTER_METHODS)}")
    parser.add_argument("--answer-adapter", default=None, help="an answer adapter folder, for the VARIANTS rows")
    parser.add_argument("--articles", choices=("eval", "dev"), default="eval",
                        help="eval: the held-out articles; dev: the training articles the answer adapter never saw "
                             "(train_answer.DEV_ARTICLES), on which the app's answering choices are made")
    parser.add_argument("--unanswerable", type=int, default=0,
                        help="per held-out article: this many SQuAD 2.0 unanswerable questions and as many questions "
                             "of the next held-out article, answered as the app does (the adapter's row with as many "
                             "passages as the adapter's answering.json says, or hmt_reread without an adapter), to "
                             "measure 'not found'")
    parser.add_argument("--end-bias", type=float, default=None,
                        help="nats taken from the end of a quoted answer (hmt_core.quoting), instead of the adapter's "
                             "answering.json end_bias")
    parser.add_argument("--results", default=None, help="the results' file name (default: from the options)")
    args = parser.parse_args()
    methods = args.methods or list(ADAPTER_METHODS if args.answer_adapter else DEFAULT_METHODS)
    if any(VARIANTS.get(m, (0, 0, 0, False, False))[3] for m in methods) and not args.answer_adapter:
        parser.error("the adapter rows need --answer-adapter")
    model, tokenizer = load_model(args)
    adapter = load_answer_adapter(model.backbone, args.answer_adapter) if args.answer_adapter else None
    if adapter is not None and args.end_bias is not None:
        adapter.end_bias = args.end_bias
    rule = load_not_found(args.hmt_weights) if args.hmt_weights else None
    app_method = "hmt_reread"
    if adapter is not None:
        app_method = next(m for m, v in VARIANTS.items()
                          if v == ("recall", adapter.passages, "short", True, adapter.quote))
    backbone = model.backbone
    window = backbone.config.max_position_embeddings
    minilm = sentence_embedder(model) if "minilm_reread" in methods else None
    part = "eval" if args.articles == "eval" else "train"
    articles = [a for a in squad_articles(part) if args.articles == "eval" or a["title"] in DEV_ARTICLES]
    unanswerable = {a["title"]: a["questions"] for a in squad_unanswerable(part)}
    rows, negatives, started, truncated = [], [], time.time(), 0
    for n_article, article in enumerate(articles):
        state = read_article(model, tokenizer, article)
        texts = [state.segment_text(i) for i in range(state.num_segments)]
        seg_emb = minilm.embed(texts) if minilm is not None else None
        if len(tokenizer(article["context"], add_special_tokens=False)["input_ids"]) > window - 300:
            truncated += 1
        prefix = None
        if "full_context" in methods:
            prefix = PrefixCache(backbone, shared_prefix(tokenizer, article["context"], window))
        for q in article["questions"][:args.questions_per_article]:
            question = q["question"]
            gold = torch.zeros(state.num_segments)
            gold[needle_segment(state, q["answer_starts"][0])] = 1.0
            rankings = {"bm25_reread": torch.tensor(bm25_scores(question, texts)), "gold": gold}
            if minilm is not None:
                rankings["minilm_reread"] = (seg_emb @ minilm.embed([question])[0]).clamp(min=0)
            row = {"article": article["title"], "question": question, "answers": q["answers"]}
            for method in methods:
                if method == "full_context":
                    messages = full_context_messages(tokenizer, article["context"], question, window, 300)
                    result = {"answer": plain_answer(backbone, tokenizer, messages, args.max_new_tokens, prefix)}
                elif method == "segment_only":
                    result = {"answer": plain_answer(backbone, tokenizer, [{"role": "user", "content": question}],
                                                     args.max_new_tokens)}
                else:
                    result = reread(model, tokenizer, state, question, method, args.max_new_tokens, rankings,
                                    adapter, rule)
                result["contains"], result["f1"] = score(result["answer"], q["answers"])
                row[method] = result
            rows.append(row)
            print(len(rows), {m: round(row[m]["f1"], 2) for m in methods}, flush=True)
        if args.unanswerable:
            other = articles[(n_article + 1) % len(articles)]
            asked = ([("squad2", q["question"]) for q in unanswerable[article["title"]][:args.unanswerable]]
                     + [("other_article", q["question"]) for q in other["questions"][:args.unanswerable]])
            for kind, question in asked:
                result = reread(model, tokenizer, state, question, app_method, args.max_new_tokens, {}, adapter,
                                rule)
                negatives.append({"article": article["title"], "kind": kind, "question": question, **result})
                print(kind, result["below_threshold"], result["found"], result["answer"][:60], flush=True)
    result = summarize(args, model, methods, rows, negatives, rule, app_method, truncated, window, started)
    result["adapter_not_found_above"] = adapter.not_found_above if adapter is not None else None
    result["adapter_probe_above"] = adapter.probe_above if adapter is not None else None
    result["end_bias"] = adapter.end_bias if adapter is not None else None
    name = "qa" if args.hmt_weights else "qa_untrained"
    name += ("_reader" if adapter is not None else "") + ("_dev" if args.articles == "dev" else "")
    write_results(args.results or name, result, report(result, methods))


def reader_says(r: dict) -> bool:
    """Whether the reader's side says 'not found': the adapter's not_found_score or its answerability probe's
    score above its threshold, or the generated answer being NOT_FOUND."""
    return r["reader_above"] or r.get("probe_above", False) or not r["found"]


def said_not_found(r: dict) -> bool:
    """Whether the app would answer 'not found': the recall below the rule's threshold, the adapter's
    not_found_score above its own, or the reader saying so."""
    return r["below_threshold"] or reader_says(r)


def summarize(args, model, methods, rows, negatives, rule, app_method, truncated, window, started) -> dict:
    scores = {}
    for m in methods:
        scores[m] = {"contains": rate([r[m]["contains"] for r in rows]), "f1": rate([r[m]["f1"] for r in rows])}
        if "words" in rows[0][m]:
            scores[m]["words"] = sum(r[m]["words"] for r in rows) / len(rows)
            scores[m]["not_found"] = rate([float(not r[m]["found"]) for r in rows])
    if app_method in methods:  # the app as it answers: below the threshold, 'not found' at once
        kept = [0.0 if said_not_found(r[app_method]) else 1.0 for r in rows]
        scores["app"] = {"contains": rate([k * r[app_method]["contains"] for k, r in zip(kept, rows)]),
                         "f1": rate([k * r[app_method]["f1"] for k, r in zip(kept, rows)]),
                         "not_found": rate([1.0 - k for k in kept])}
    not_found = {}
    if negatives and app_method in methods:
        for kind in ("squad2", "other_article"):
            group = [n for n in negatives if n["kind"] == kind]
            not_found[kind] = {
                "threshold": rate([float(n["below_threshold"]) for n in group]),
                "reader": rate([float(reader_says(n)) for n in group]),
                "app": rate([float(said_not_found(n)) for n in group])}
        answerable = [r[app_method] for r in rows]
        not_found["answerable"] = {
            "threshold": rate([float(r["below_threshold"]) for r in answerable]),
            "reader": rate([float(reader_says(r)) for r in answerable]),
            "app": rate([float(said_not_found(r)) for r in answerable])}
    latency = {}
    twin = None  # the app's row with the adapter off: same prompt and passages
    if app_method in VARIANTS:
        twin = next((m for m, v in VARIANTS.items() if v == (*VARIANTS[app_method][:3], False, False)), None)
    if app_method in methods and twin in methods:
        pairs = [(r[app_method]["first_token_seconds"], r[twin]["first_token_seconds"]) for r in rows
                 if r[app_method]["first_token_seconds"] and r[twin]["first_token_seconds"]]
        on, off = sorted(a for a, _ in pairs), sorted(b for _, b in pairs)
        latency = {"on": app_method, "off": twin, "questions": len(pairs), "median_on": on[len(on) // 2],
                   "median_off": off[len(off) // 2], "ratio": on[len(on) // 2] / off[len(off) // 2]}
    return {"model": args.model, "hmt_weights": args.hmt_weights, "answer_adapter": args.answer_adapter,
            "articles": args.articles, "app_method": app_method,
            "not_found_rule": vars(rule) if rule else None, "config": vars(model.config), "machine": machine(),
            "questions": len(rows),
            "articles_over_window": truncated, "window": window, "max_new_tokens": args.max_new_tokens,
            "questions_per_article": args.questions_per_article, "wall_seconds": time.time() - started,
            "scores": scores, "not_found": not_found, "first_token": latency, "rows": rows, "negatives": negatives}


def report(result: dict, methods: list[str]) -> str:
    """The markdown tables of a run."""
    config, n = result["config"], result["questions"]
    which = "held-out" if result["articles"] == "eval" else "development (training, unseen by the adapter)"
    lines = [f"QA on {n} questions ({result['questions_per_article']} per {which} SQuAD article, the whole article "
             f"as the document; {result['articles_over_window']} articles longer than the {result['window']}-token "
             f"window were cut for full context); backbone {result['model']}, segment L {config['segment_length']}, "
             f"cache N {config['cache_size']} while reading (recall ranks every segment), sensory k "
             f"{config['sensory_size']}, HMT weights {describe_weights(result['hmt_weights'])}, answer adapter "
             f"{result['answer_adapter'] or 'none'}, greedy, {result['max_new_tokens']} new tokens; "
             f"{result['wall_seconds']:.0f} s on {result['machine']['cpu']}, {result['machine']['cores']} cores. "
             "Brackets: 95% bootstrap intervals over questions. Variants: (passages, how many, prompt, adapter, "
             "quoted) = " + "; ".join(f"{m} {VARIANTS[m]}" for m in methods if m in VARIANTS) + ".", "",
             *table_head("method", "contains", "token F1", "words", "says not found")]
    for m in [*methods, "app"]:
        r = result["scores"].get(m)
        if r:
            words = f"{r['words']:.1f}" if "words" in r else ""
            nf = cell(r["not_found"]) if "not_found" in r else ""
            lines.append(table_row(m, cell(r["contains"]), cell(r["f1"]), words, nf))
    if result["not_found"]:
        rule = result["not_found_rule"]
        above = result.get("adapter_not_found_above")
        probe = result.get("adapter_probe_above")
        reader = (f"the answer adapter's not_found_score above {above:.3f}, fitted on development articles, or "
                  if above is not None else "")
        reader += (f"its answerability probe's score above {probe:.3f}, fitted on development articles, or "
                   if probe is not None else "")
        lines += ["", f"'Not found' (recall confidence {rule and rule['confidence']} below {rule and rule['below']}, "
                  f"fitted on training articles; or {reader}the reader saying so), as the app answers "
                  f"({result['app_method']}), share of questions:", "",
                  *table_head("questions", "threshold", "reader", "app (either)")]
        for kind, r in result["not_found"].items():
            lines.append(table_row(f"{kind} ({r['app']['n']})", cell(r["threshold"]), cell(r["reader"]),
                                   cell(r["app"])))
    if result["first_token"]:
        f = result["first_token"]
        lines += ["", f"First token (recall + prompt), median over {f['questions']} questions, same prompt and "
                  f"passages: adapter on ({f['on']}) {f['median_on']:.3f} s, off ({f['off']}) "
                  f"{f['median_off']:.3f} s, ratio {f['ratio']:.2f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
