"""Multi-stage BPTT training of HMT on one CPU, one GPU or several GPUs (accelerate); see README, 'Training'.

    python -m hmt_core.training.train --stage 1 --texts data/text --out runs/stage1 --steps 200
    python -m hmt_core.training.train --stage 2 --init runs/stage1/final --texts data/text --squad data/squad \\
        --out runs/stage2 --steps 300 --segments 6 --recall-loss 1.0
    python -m hmt_core.training.train ... --tune lora --lora-rank 8 --lora-alpha 16  # LoRA adapters on the backbone
    accelerate launch -m hmt_core.training.train ...      # several GPUs; --mixed-precision bf16 on GPU

Stage 1 passes each memory embedding straight to the next segment (no recall) over 2 segments; stage 2 starts from
stage 1's initial memory with fresh T, Wq, Wk and recall, unrolled over --segments. The loss is the LM cross-entropy
on every segment's tokens (--loss-on last: only the final segment's), or on the answer tokens for QA rows, plus an
optional recall loss (cross-entropy of the final segment's recall weights toward the segment holding the answer).
QA rows come from SQuAD articles (--squad) and, with --passkey-fraction, from synthetic passkeys hidden in the
--texts prose (a 5-digit key to recall from the segment that holds it).
--tune frozen trains the memory parameters only; --tune lora also trains LoRA adapters on the backbone's linear layers
(saved in the checkpoint and merged into the backbone by load_checkpoint); --tune full trains the whole backbone.
The run resumes from out/last when it exists; metrics go to out/log.jsonl.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..backbone import DEFAULT_BACKBONE, load_backbone
from ..checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from ..config import MEMORY_INPUT_NORMS, HMTConfig, RMTConfig
from ..hmt import HMT
from ..rmt import RMT
from .data import Example, LMWindows, PasskeyQA, SquadQA, collate, read_text_files
from .lora import add_lora, lora_parameters


def build_model(args: argparse.Namespace, backbone) -> HMT | RMT:
    """A fresh HMT or RMT, or stage 2 from a stage-1 checkpoint (keeping its initial memory and LoRA adapters, fresh
    T, Wq, Wk)."""
    norm = {"memory_input_norm": args.memory_input_norm} if args.memory_input_norm else {}  # else the kind's default
    if args.kind == "rmt":
        return RMT(backbone, RMTConfig(segment_length=args.segment_length, num_memory_tokens=args.memory_tokens,
                                       **norm))
    config = HMTConfig(segment_length=args.segment_length, sensory_size=args.sensory_size, cache_size=args.cache_size,
                       **norm)
    model = HMT(backbone, config)
    if args.init:
        stage1 = load_checkpoint(args.init, backbone, merge_lora=args.tune == "full")
        with torch.no_grad():
            model.initial_memory.copy_(stage1.initial_memory)
            if args.keep_recall:
                model.summary_prompt.copy_(stage1.summary_prompt)
                model.wq.weight.copy_(stage1.wq.weight)
                model.wk.weight.copy_(stage1.wk.weight)
    return model


def trainable_parameters(model: HMT | RMT, tune: str) -> list[torch.nn.Parameter]:
    """The memory parameters, plus the backbone's LoRA matrices (lora) or all its weights (full); the rest is frozen."""
    model.backbone.requires_grad_(False)
    tuned = {"frozen": [], "lora": lora_parameters(model.backbone), "full": list(model.backbone.parameters())}[tune]
    for p in tuned:
        p.requires_grad_(True)
    return list(model.memory_parameters().values()) + tuned


def recall_loss(weights: torch.Tensor, answer_segment: torch.Tensor) -> torch.Tensor:
    """Mean -log of the recall weight on the segment that holds the answer, over rows that have one."""
    rows = answer_segment >= 0
    if not rows.any() or weights.shape[1] == 0:
        return weights.new_zeros(())
    picked = weights[rows].gather(1, answer_segment[rows, None].clamp(max=weights.shape[1] - 1))
    return -(picked + 1e-9).log().mean()


@torch.no_grad()
def init_recall_from_windows(model: HMT, qa: SquadQA, windows: int, rng: random.Random) -> None:
    """HMT.init_recall on the memories of `windows` document windows and the summaries of up to 32 questions
    about each (whitening needs many more samples than the width d)."""
    summaries, memories = [], []
    for _ in range(windows):
        window, examples = qa.sample_window(rng, 32)
        memories.append(read_window(model, window)[0][0])
        questions = [[t for t, label in zip(e.input_ids, e.labels) if label == -100][:model.config.summary_length]
                     for e in examples]  # the question alone, as recall is queried when answering
        batch = collate([Example(q, q) for q in questions], pad_id=0)
        summaries.append(model.summarize(batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)))
    model.init_recall(torch.cat(summaries), torch.cat(memories))


@torch.no_grad()
def read_window(model: HMT | RMT, window: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a document window once, without a graph, for all the questions asked about it: the cache [1, n, d]
    and sensory ids [1, k] that the question segments continue from (BPTT stops at the question, as with
    --bptt-depth equal to the window's segment count)."""
    state = model.new_state()
    L = model.segment_length
    for s in range(0, len(window), L):
        model.read_segment(state, window[s:s + L], s // L)
    sensory = torch.tensor([state.sensory_ids], dtype=torch.long, device=model.device).reshape(1, -1)
    return state.cache[None], sensory


def save_run(model: HMT | RMT, tokenizer, folder: Path, extra: dict, tune: str, optimizer=None, scheduler=None,
             args: argparse.Namespace | None = None) -> None:
    """A checkpoint of the memory parameters (plus, with --tune full, the whole backbone and its tokenizer in
    folder/backbone) and, with an optimizer, what resuming needs (optimizer, scheduler, step, RNG states)."""
    save_checkpoint(model, folder, extra=extra)
    if tune == "full":
        model.backbone.save_pretrained(folder / "backbone")
        tokenizer.save_pretrained(folder / "backbone")
    if optimizer is not None:
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": extra["step"],
                    "python_rng": args.rng.getstate(), "torch_rng": torch.get_rng_state()}, folder / "train_state.pt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_BACKBONE)
    p.add_argument("--kind", choices=["hmt", "rmt"], default="hmt")
    p.add_argument("--stage", type=int, choices=[1, 2], default=2)
    p.add_argument("--init", default=None, help="stage-1 checkpoint to start stage 2 from")
    p.add_argument("--keep-recall", action="store_true", help="also keep T, Wq, Wk from --init")
    p.add_argument("--texts", nargs="*", default=[],
                   help="LM objective: .txt/.jsonl files or folders, or hf:NAME[:CONFIG] datasets (needs `datasets`)")
    p.add_argument("--squad", default=None, help="folder holding articles.jsonl and split.json (QA objective)")
    p.add_argument("--qa-fraction", type=float, default=0.5, help="share of steps that are QA when both exist")
    p.add_argument("--passkey-fraction", type=float, default=0.0,
                   help="share of QA steps that are synthetic passkeys hidden in the --texts prose")
    p.add_argument("--init-recall", type=int, default=0, metavar="WINDOWS",
                   help="before training, start Wq, Wk as whitened similarity estimated on this many QA windows")
    p.add_argument("--questions-per-window", type=int, default=8,
                   help="QA: questions asked about each document window read (the batch of a QA step)")
    p.add_argument("--recall-loss", type=float, default=0.0, help="weight of the recall loss on QA rows")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--segments", type=int, default=None, help="segments unrolled (stage 1: 2, stage 2: 6)")
    p.add_argument("--bptt-depth", type=int, default=None)
    p.add_argument("--loss-on", choices=["all", "last"], default="all")
    p.add_argument("--segment-length", type=int, default=256)
    p.add_argument("--sensory-size", type=int, default=32)
    p.add_argument("--cache-size", type=int, default=300)
    p.add_argument("--memory-tokens", type=int, default=16, help="RMT only")
    p.add_argument("--memory-input-norm", choices=MEMORY_INPUT_NORMS, default=None,
                   help="feed memory vectors at the token embeddings' norm, or as they are ('none', the paper's code); "
                        "default: HMT none (better recall), RMT embedding")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-decay-every", type=int, default=100)
    p.add_argument("--lr-decay", type=float, default=0.7)
    p.add_argument("--tune", choices=["frozen", "lora", "full"], default="frozen")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--lora-targets", type=lambda s: [t.strip() for t in s.split(",") if t.strip()], default=None,
                   help="comma-separated layer names (default: every linear layer of the backbone but the LM head)")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--save-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.segments = args.segments or (2 if args.stage == 1 else 6)
    return args


def main(argv: list[str] | None = None) -> None:
    from accelerate import Accelerator

    args = parse_args(argv)
    args.command = "python -m hmt_core.training.train " + " ".join(argv if argv is not None
                                                                  else __import__("sys").argv[1:])
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    args.rng = random.Random(args.seed)
    out, last = Path(args.out), Path(args.out) / "last"
    tuned = last / "backbone"  # a full fine-tuning run resumes from its own backbone
    source = str(tuned) if args.tune == "full" and (tuned / "config.json").exists() else args.model
    backbone, tokenizer = load_backbone(source, device=str(accelerator.device), dtype="fp32")
    if args.tune == "lora":
        add_lora(backbone, args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_targets)
    model = build_model(args, backbone)
    params = trainable_parameters(model, args.tune)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, args.lr_decay_every, args.lr_decay)
    step = 0
    if (last / "train_state.pt").exists():
        resumed = load_checkpoint(last, backbone, merge_lora=False)
        with torch.no_grad():
            for name, p in model.memory_parameters().items():
                p.copy_(resumed.memory_parameters()[name])
        saved = torch.load(last / "train_state.pt", weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        step = saved["step"]
        args.rng.setstate(saved["python_rng"])
        torch.set_rng_state(saved["torch_rng"])
        scheduler.load_state_dict(saved["scheduler"])
        accelerator.print(f"resumed from {last} at step {step} ({read_checkpoint_meta(last)['extra']})")
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)
    L = args.segment_length
    lm = LMWindows(tokenizer, read_text_files(args.texts), args.segments * L) if args.texts else None
    qa = None
    if args.squad:
        articles = [json.loads(x) for x in (Path(args.squad) / "articles.jsonl").read_text().splitlines() if x]
        train_titles = set(json.loads((Path(args.squad) / "split.json").read_text())["train"])
        qa = SquadQA(tokenizer, [a for a in articles if a["title"] in train_titles], args.segments - 1, L)
    passkeys = PasskeyQA(tokenizer, lm.ids, args.segments - 1, L) if lm and args.passkey_fraction > 0 else None
    if lm is None and qa is None:
        raise SystemExit("give --texts and/or --squad")
    mode = "direct" if args.stage == 1 or args.kind == "rmt" else "recall"
    if args.init_recall and step == 0 and qa is not None and isinstance(core, HMT):
        init_recall_from_windows(core, qa, args.init_recall, random.Random(args.seed + 1))
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "log.jsonl").open("a", encoding="utf-8")
    model.train()
    bar = tqdm(total=args.steps, initial=step, disable=not accelerator.is_local_main_process)
    started = time.time()
    while step < args.steps:
        use_qa = (qa or passkeys) is not None and (lm is None or args.rng.random() < args.qa_fraction)
        source = passkeys if passkeys and (qa is None or args.rng.random() < args.passkey_fraction) else qa
        t0 = time.time()
        extra = {}
        if use_qa:
            window, examples = source.sample_window(args.rng, args.questions_per_window)
            memory_cache, sensory = read_window(core, window)
            extra = {"memory_cache": memory_cache.expand(len(examples), -1, -1),
                     "sensory_ids": sensory.expand(len(examples), -1)}
        else:
            examples = [lm.sample(args.rng) for _ in range(args.batch_size)]
        batch = collate(examples, tokenizer.pad_token_id)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        if use_qa and isinstance(core, HMT):  # recall is queried by the question alone, as when answering
            extra["query_mask"] = batch["labels"] == -100
        with accelerator.autocast():
            output = model(batch["input_ids"], batch["attention_mask"], batch["labels"], mode=mode,
                           bptt_depth=args.bptt_depth, loss_on=args.loss_on, **extra)
            r_loss = recall_loss(output.recall_weights[-1], batch["answer_segment"]) \
                if use_qa and output.recall_weights else output.loss.new_zeros(())
            loss = output.loss + args.recall_loss * r_loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        tokens = int(batch["attention_mask"].sum()) + (len(window) if use_qa else 0)
        kind = ("passkey" if source is passkeys else "qa") if use_qa else "lm"
        record = {"step": step, "kind": kind, "loss": output.loss.item(),
                  "recall_loss": r_loss.item(), "lr": scheduler.get_last_lr()[0], "tokens": tokens,
                  "tokens_per_s": tokens / (time.time() - t0), "elapsed_s": time.time() - started}
        log.write(json.dumps(record) + "\n")
        log.flush()
        bar.set_postfix(loss=f"{record['loss']:.3f}", recall=f"{record['recall_loss']:.3f}",
                        tok_s=f"{record['tokens_per_s']:.0f}")
        bar.update(1)
        if accelerator.is_main_process and (step % args.save_every == 0 or step == args.steps):
            save_run(core, tokenizer, last, {"step": step, "stage": args.stage, "tune": args.tune,
                                             "command": args.command}, args.tune, optimizer, scheduler, args)
    if accelerator.is_main_process:
        save_run(core, tokenizer, out / "final", {"steps": step, "stage": args.stage, "tune": args.tune,
                                                  "command": args.command}, args.tune)
    bar.close()


if __name__ == "__main__":
    main()
