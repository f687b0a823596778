"""Train the evidence ranker (hmt_core.evidence_ranker) on training SQuAD articles only.

Each answerable question of the training articles becomes one ranking: the sentence that holds its answer (where
SQuAD marks it, cut into sentences as hmt_core.evidence cuts them) against `--negatives` others: some of the same
paragraph (what a recalled passage holds beside it) and the sentences elsewhere in the article that share the most
of the question's rare words (what recall brings beside it). A sentence that holds a gold answer anywhere is never a
negative. The loss is the cross-entropy of the positive among its ranking's scores. CHOICE_ARTICLES are kept out:
the development articles of the answer adapter and the four training articles whose saved evidence rows
(bench/results/evidence_adapter3/) choose the ranker's weight in the evidence rule. The held-out articles are never
read. Writes <out>/evidence_ranker.safetensors, evidence_ranker.json and train_log.jsonl.

    python -m hmt_core.training.train_evidence --out assets/evidence-ranker-minilm --bf16
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from ..evidence import sentence_spans
from ..embedder import DEFAULT_EMBEDDER
from ..evidence_ranker import new_ranker, save_ranker
from ..recall.lexical import terms
from .corpora import fetch, load_squad
from .train_answer import DEV_ARTICLES

# training articles left out of the ranker's training: those whose saved evidence rows choose its weight
CHOICE_ARTICLES = (*DEV_ARTICLES, "Normans", "Sky_(United_Kingdom)", "Southern_California", "Victoria_(Australia)")


def article_sentences(article: dict) -> list[tuple[int, int, int]]:
    """The article's sentences as (paragraph index, start, end), spans in the article's text."""
    out = []
    for n, (a, b) in enumerate(article["paragraph_spans"]):
        out += [(n, a + s, a + e) for s, e in sentence_spans(article["context"][a:b])]
    return out


def ranking_examples(articles: list[dict], negatives: int = 11, same_paragraph: int = 5,
                     seed: int = 0) -> list[dict]:
    """One {question, positive, negatives} per answerable question whose first marked answer lies inside one
    sentence: up to `same_paragraph` other sentences of its paragraph, drawn at random, and the rest of the
    `negatives` the sentences outside it sharing the most of the question's idf weight."""
    rng = random.Random(seed)
    examples = []
    for article in articles:
        text = article["context"]
        sentences = article_sentences(article)
        found = [set(terms(text[a:b])) for _, a, b in sentences]
        df: dict[str, int] = {}
        for t in (t for f in found for t in f):
            df[t] = df.get(t, 0) + 1
        idf = {t: math.log(1 + len(sentences) / d) for t, d in df.items()}
        for q in article["questions"]:
            start, answer = q["answer_starts"][0], q["answers"][0]
            holder = [i for i, (_, a, b) in enumerate(sentences) if a <= start and start + len(answer) <= b]
            if not holder:
                continue
            gold = holder[0]
            golds = [a.lower() for a in q["answers"] if a.strip()]
            usable = [i for i, (_, a, b) in enumerate(sentences)
                      if i != gold and not any(g in text[a:b].lower() for g in golds)]
            paragraph = [i for i in usable if sentences[i][0] == sentences[gold][0]]
            chosen = rng.sample(paragraph, min(same_paragraph, len(paragraph)))
            wanted = set(terms(q["question"]))
            elsewhere = sorted((i for i in usable if sentences[i][0] != sentences[gold][0]),
                               key=lambda i: (-sum(idf.get(t, 0.0) for t in wanted & found[i]), i))
            chosen += elsewhere[:negatives - len(chosen)]
            if not chosen:
                continue
            examples.append({"question": q["question"], "positive": text[sentences[gold][1]:sentences[gold][2]],
                             "negatives": [text[sentences[i][1]:sentences[i][2]] for i in chosen],
                             "article": article["title"]})
    rng.shuffle(examples)
    return examples


def batch_loss(ranker, batch: list[dict], chunk: int = 32) -> tuple[torch.Tensor, float]:
    """The mean cross-entropy of each ranking's positive (first) among its sentences, and the share of rankings
    whose positive scores highest. The pairs are read `chunk` at a time, sorted by length."""
    questions, sentences, sizes = [], [], []
    for ex in batch:
        group = [ex["positive"], *ex["negatives"]]
        questions += [ex["question"]] * len(group)
        sentences += group
        sizes.append(len(group))
    order = sorted(range(len(sentences)), key=lambda i: len(questions[i]) + len(sentences[i]))
    by_length = torch.cat([ranker(ranker.encode([questions[j] for j in order[i:i + chunk]],
                                                [sentences[j] for j in order[i:i + chunk]]))
                           for i in range(0, len(order), chunk)]).float()  # pairs of like length together
    scores = by_length[torch.argsort(torch.tensor(order))]  # [sum(sizes)], back in the rankings' order
    losses, right = [], 0
    for group in torch.split(scores, sizes):
        losses.append(torch.nn.functional.cross_entropy(group[None], torch.zeros(1, dtype=torch.long)))
        right += int(group.argmax().item() == 0)
    return torch.stack(losses).mean(), right / len(batch)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", default="data")
    parser.add_argument("--encoder", default=DEFAULT_EMBEDDER, help="the sentence encoder under the ranker")
    parser.add_argument("--negatives", type=int, default=11)
    parser.add_argument("--same-paragraph", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="rankings (questions) per optimizer step")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--head-lr-scale", type=float, default=10.0, help="the head's learning rate over --lr")
    parser.add_argument("--warmup", type=int, default=20, help="optimizer steps of linear warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=50, help="optimizer steps")
    parser.add_argument("--bf16", action="store_true", help="forward and backward under bfloat16 autocast")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    fetch(Path(args.data), ["squad"])
    split = json.loads((Path(args.data) / "squad/split.json").read_text())
    titles = set(split["train"]) - set(CHOICE_ARTICLES)
    articles = [a for a in load_squad(Path(args.data)) if a["title"] in titles]
    examples = ranking_examples(articles, args.negatives, args.same_paragraph, args.seed)
    ranker = new_ranker(args.rank, args.alpha, args.dropout, args.encoder)
    lora = [p for name, p in ranker.named_parameters() if "lora_" in name]
    head = list(ranker.head.parameters())
    for name, p in ranker.named_parameters():
        p.requires_grad_("lora_" in name or name.startswith("head."))
    params = lora + head
    # the head starts at zero (every score 0) and must grow before LoRA gets any gradient: it learns faster
    optimizer = torch.optim.AdamW([{"params": lora, "scale": 1.0}, {"params": head, "scale": args.head_lr_scale}],
                                  lr=args.lr, weight_decay=0.0)
    per_epoch = math.ceil(len(examples) / args.batch)
    steps = per_epoch * args.epochs

    def lr_at(step: int) -> float:  # linear warm-up, then linear decay to 0
        return args.lr * min((step + 1) / args.warmup, max(0.0, (steps - step) / max(1, steps - args.warmup)))

    step, checkpoint = 0, out / "checkpoint.pt"
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        ranker.load_state_dict(saved["ranker"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        step = saved["step"]
        print(f"resuming at step {step} of {steps}", flush=True)
    ranker.train()
    log = open(out / "train_log.jsonl", "a")
    started = time.time()
    while step < steps:
        first = (step % per_epoch) * args.batch
        batch = examples[first:first + args.batch]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step) * group["scale"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss, right = batch_loss(ranker, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        record = {"step": step, "steps": steps, "lr": lr_at(step - 1), "loss": round(loss.item(), 4),
                  "top1": right, "seconds": round(time.time() - started, 1)}
        log.write(json.dumps(record) + "\n")
        log.flush()
        print(record, flush=True)
        if step % args.checkpoint_every == 0 or step == steps:
            trained = {k: v for k, v in ranker.state_dict().items() if "lora_" in k or k.startswith("head.")}
            torch.save({"ranker": trained, "optimizer": optimizer.state_dict(), "step": step}, checkpoint)
    ranker.eval()
    save_ranker(ranker, out, {
        "questions": len(examples), "negatives": args.negatives, "same_paragraph": args.same_paragraph,
        "articles": sorted(titles), "kept_out_for_choices": list(CHOICE_ARTICLES), "epochs": args.epochs,
        "batch": args.batch, "lr": args.lr, "head_lr_scale": args.head_lr_scale, "warmup": args.warmup,
        "optimizer_steps": steps, "seed": args.seed, "bf16_autocast": args.bf16})
    checkpoint.unlink()
    print(json.dumps({"saved": str(out), "questions": len(examples), "seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    main()
