"""Train the answer adapter (hmt_core.answer_adapter) on the training SQuAD articles only.

Each example is the app's recall-and-re-read prompt (answer.reread_messages with the adapter's system prompt) and a
short target. Answerable questions get the segment holding the answer as the only passage, or with the two segments
BM25 ranks next beside it (in document order, as recall gives them), and the gold answer span as the target.
SQuAD 2.0's unanswerable questions of the same articles get their BM25 passages (which look relevant: the questions
were written against them) and NOT_FOUND as the target. The loss is on the target tokens and the end of turn only.
Segments are cut exactly as the Reader cuts them (256 tokens of the text as read paragraph by paragraph), without
running the memory path. DEV_ARTICLES are kept out of training, for choosing the prompt and the passages.

    python -m hmt_core.training.train_answer --out assets/answer-lora-smollm2-135m

Resumes from <out>/checkpoint.pt after an interruption; logs every step to <out>/train_log.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from ..answer import ANSWER_PROMPT, NOT_FOUND, chat_ids, recall_passages, reread_messages
from ..answer_adapter import add_answer_lora, adapter_tensors, save_answer_adapter
from ..backbone import DEFAULT_BACKBONE, final_hidden_states, load_backbone, lm_logits
from ..reader import TextChunker
from ..state import MemoryState, SegmentInfo, SourceText
from .corpora import PARAGRAPH_SEPARATOR, fetch, load_squad
from .lora import linear_layer_names

DEV_ARTICLES = ("Jacksonville,_Florida", "Construction")  # training articles the adapter never sees


def text_state(tokenizer, title: str, paragraphs: list[str], segment_length: int) -> MemoryState:
    """A memory state with the segments, text and lexical index that reading `paragraphs` as one document gives,
    but no memory (nothing is run through the model): enough to build re-read prompts."""
    text = "".join(p + PARAGRAPH_SEPARATOR for p in paragraphs)
    spans: list[tuple[int, int]] = []
    for offset, chunk in TextChunker().push(text, final=True):
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
        spans.extend((offset + a, offset + b) for a, b in enc["offset_mapping"])
    state = MemoryState("hmt", torch.zeros(0, 1))
    state.sources[title] = SourceText(title, text)
    for i in range(0, len(spans), segment_length):
        part = spans[i:i + segment_length]
        info = SegmentInfo(state.num_segments, title, part[0][0], max(b for _, b in part), None, None, len(part))
        state.add_segment(info, None)
    state.lexical.build()
    return state


def segment_at(state: MemoryState, char: int) -> int:
    """The segment whose span holds character `char`."""
    return next(s.index for s in state.segments if s.char_start <= char < s.char_end)


def passages_for(state: MemoryState, question: str, gold: int | None, top: int) -> list:
    """The re-read passages of a question: `gold` (when given) first, then the segments BM25 ranks highest, `top`
    in all, widened and in document order as recall_passages gives them."""
    weights = state.lexical.scores(question) + 1e-6  # every segment is a candidate, BM25 orders them
    weights = weights / weights.max()
    if gold is not None:
        weights[gold] = 2.0
    return recall_passages(state, weights, top)


def build_examples(tokenizer, articles: list[dict], unanswerable: dict[str, list[dict]], answerable: int,
                   not_found: int, segment_length: int, three: float = 0.5, seed: int = 0) -> list[dict]:
    """Training examples {prompt, target, kind}: `answerable` questions and `not_found` unanswerable ones drawn
    at random (seeded) from `articles`, each with three passages (a fraction `three` of them) or one."""
    rng = random.Random(seed)
    pool_a, pool_u = [], []
    for article in articles:
        paragraphs = [article["context"][a:b] for a, b in article["paragraph_spans"]]
        state = text_state(tokenizer, article["title"], paragraphs, segment_length)
        pool_a += [(state, q) for q in article["questions"]]
        pool_u += [(state, q) for q in unanswerable.get(article["title"], [])]
    examples = []
    for (state, q), kind in ([(x, "answer") for x in rng.sample(pool_a, min(answerable, len(pool_a)))]
                             + [(x, "not_found") for x in rng.sample(pool_u, min(not_found, len(pool_u)))]):
        top = 3 if rng.random() < three else 1
        gold = segment_at(state, q["answer_starts"][0]) if kind == "answer" else None
        passages = passages_for(state, q["question"], gold, top)
        prompt = chat_ids(tokenizer, reread_messages(q["question"], passages, ANSWER_PROMPT))
        target = q["answers"][0] if kind == "answer" else NOT_FOUND
        examples.append({"prompt": prompt, "target": target, "kind": kind, "passages": top})
    rng.shuffle(examples)
    return examples


def example_loss(backbone, tokenizer, prompt: list[int], target: str, end_id: int) -> torch.Tensor:
    """Cross-entropy of the target's tokens and the end of turn after the prompt (LM head on those positions only)."""
    answer = tokenizer(target, add_special_tokens=False)["input_ids"] + [end_id]
    ids = torch.tensor([prompt + answer])  # [1, P + A]
    hidden, _ = final_hidden_states(backbone, backbone.get_input_embeddings()(ids))  # [1, P + A, d]
    logits = lm_logits(backbone, hidden[0, len(prompt) - 1:-1]).float()  # [A, V]
    return torch.nn.functional.cross_entropy(logits, torch.tensor(answer))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=DEFAULT_BACKBONE)
    parser.add_argument("--data", default="data")
    parser.add_argument("--answerable", type=int, default=480)
    parser.add_argument("--not-found", type=int, default=120)
    parser.add_argument("--three-passages", type=float, default=0.3,
                        help="fraction of examples with three passages (the rest have one)")
    parser.add_argument("--first-layer", type=int, default=15,
                        help="adapt decoder layers from this one (0-based) up; the backward pass stops there")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--accumulate", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=8, help="optimizer steps of linear warm-up")
    parser.add_argument("--segment-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=10, help="optimizer steps")
    parser.add_argument("--bf16", action="store_true",
                        help="run forward and backward under bfloat16 autocast (the LoRA weights stay fp32); "
                             "about 1.4x faster on a CPU with AMX")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    fetch(Path(args.data), ["squad"])
    split = json.loads((Path(args.data) / "squad/split.json").read_text())
    train_titles = set(split["train"]) - set(DEV_ARTICLES)
    articles = [a for a in load_squad(Path(args.data)) if a["title"] in train_titles]
    unanswerable = {a["title"]: a["questions"] for a in load_squad(Path(args.data), "unanswerable")}
    for article in articles:  # an unanswerable question's record carries no answer; give it the same fields
        for q in unanswerable[article["title"]]:
            q.setdefault("answers", [])
    backbone, tokenizer = load_backbone(args.model, device="cpu", dtype="float32")
    examples = build_examples(tokenizer, articles, unanswerable, args.answerable, args.not_found,
                              args.segment_length, args.three_passages, args.seed)
    targets = linear_layer_names(backbone)
    layers = list(range(args.first_layer, backbone.config.num_hidden_layers))
    add_answer_lora(backbone, args.rank, args.alpha, args.dropout, targets, layers)
    params = [p for name, p in backbone.named_parameters() if "lora_" in name]
    for name, p in backbone.named_parameters():
        p.requires_grad_("lora_" in name)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    steps = math.ceil(len(examples) / args.accumulate)

    def lr_at(step: int) -> float:  # linear warm-up, then linear decay to 0
        return args.lr * min((step + 1) / args.warmup, max(0.0, (steps - step) / max(1, steps - args.warmup)))

    step, checkpoint = 0, out / "checkpoint.pt"
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        backbone.load_state_dict(saved["adapter"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        step = saved["step"]
        print(f"resuming at step {step} of {steps}", flush=True)
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    backbone.train()
    log = open(out / "train_log.jsonl", "a")
    started = time.time()
    while step < steps:
        batch = examples[step * args.accumulate:(step + 1) * args.accumulate]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        losses = {"answer": [], "not_found": []}
        for ex in batch:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = example_loss(backbone, tokenizer, ex["prompt"], ex["target"], end_id)
            (loss / len(batch)).backward()
            losses[ex["kind"]].append(loss.item())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        record = {"step": step, "steps": steps, "lr": lr_at(step - 1),
                  "loss": sum(losses["answer"] + losses["not_found"]) / len(batch),
                  "loss_answer": sum(losses["answer"]) / max(1, len(losses["answer"])),
                  "loss_not_found": sum(losses["not_found"]) / max(1, len(losses["not_found"])),
                  "prompt_tokens": sum(len(ex["prompt"]) for ex in batch), "seconds": round(time.time() - started, 1)}
        log.write(json.dumps(record) + "\n")
        log.flush()
        print(record, flush=True)
        if step % args.checkpoint_every == 0 or step == steps:
            adapter = {k: v for k, v in backbone.state_dict().items() if "lora_" in k}
            torch.save({"adapter": adapter, "optimizer": optimizer.state_dict(), "step": step}, checkpoint)
    backbone.eval()
    kinds = [ex["kind"] for ex in examples]
    save_answer_adapter(backbone, out, {
        "prompt": ANSWER_PROMPT, "not_found": NOT_FOUND,
        "lora": {"rank": args.rank, "alpha": args.alpha, "dropout": args.dropout, "targets": targets,
                 "layers": layers},
        "training": {"examples": len(examples), "answerable": kinds.count("answer"),
                     "not_found": kinds.count("not_found"),
                     "three_passages": sum(ex["passages"] == 3 for ex in examples), "articles": sorted(train_titles),
                     "held_out_for_choices": list(DEV_ARTICLES), "lr": args.lr, "accumulate": args.accumulate,
                     "optimizer_steps": steps, "seed": args.seed, "segment_length": args.segment_length,
                     "bf16_autocast": args.bf16}})
    checkpoint.unlink()
    print(f"saved {len(adapter_tensors(backbone))} tensors to {out}", flush=True)


if __name__ == "__main__":
    main()
