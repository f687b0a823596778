"""Long-text perplexity (README, 'Long-text perplexity') on a novel no training run reads: Austen's Persuasion.

Every method scores the same tokens (all but the text's first) with the same backbone:
- segment-only: each segment of L tokens alone, after the tokenizer's start token (no memory at all);
- sliding window: each token sees up to W = L + k + 2 previous tokens (HMT's backbone input length), scored in
  blocks of --stride tokens, so every token past the start sees at least W - stride tokens;
- full context: non-overlapping windows of the backbone's full length (8k for SmolLM2), each after a start token;
- HMT sensory only: HMT's main pass with the k sensory tokens and no memory vector (an ablation);
- HMT (untrained and trained weights) and RMT (trained weights), reading the text segment by segment;
- with --int8 instead, segment-only and HMT with the fp32 backbone and with a copy in int8 (hmt_core.quantize),
  written to ppl_int8.*.

    python -m bench.ppl --hmt-weights assets/hmt-smollm2-135m --rmt-weights runs/rmt-smollm2-135m/final
    python -m bench.ppl --hmt-weights assets/hmt-smollm2-135m --int8

Writes bench/results/ppl.json and ppl.md.
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F

from bench.common import DATA, describe_weights, machine, table_head, table_row, untrained_hmt, write_results
from hmt_core import DEFAULT_BACKBONE, load_backbone, load_checkpoint
from hmt_core.backbone import final_hidden_states, lm_logits
from hmt_core.quantize import quantize_int8

HELD_OUT = "austen_persuasion"


def held_out_ids(tokenizer, tokens: int) -> list[int]:
    """The first `tokens` token ids of the held-out novel, fetched offline once."""
    from hmt_core.training.corpora import fetch, load_texts

    fetch(DATA, ["austen"])
    ids = tokenizer(load_texts(DATA)[HELD_OUT], add_special_tokens=False)["input_ids"]
    if len(ids) < tokens:
        raise SystemExit(f"{HELD_OUT} has only {len(ids)} tokens, {tokens} asked")
    return ids[:tokens]


def start_token(tokenizer) -> int:
    """The id a document starts with: the tokenizer's BOS, else its EOS (SmolLM2: <|endoftext|>)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def blocks_nll(backbone, ids: list[int], start: int, block: int, context: int) -> tuple[float, int]:
    """(summed NLL, count) of ids[1:] scored in blocks of `block` tokens, each block in one backbone call after up
    to `context` previous tokens, or after the start token where there are none."""
    total, count = 0.0, 0
    for s in range(0, len(ids), block):
        prefix = ids[max(0, s - context):s] or [start]
        target = ids[s:s + block]
        x = torch.tensor([prefix + target])
        hidden, _ = final_hidden_states(backbone, backbone.get_input_embeddings()(x))
        logits = lm_logits(backbone, hidden[0, len(prefix) - 1:-1]).float()  # [len(target), V]
        nll = F.cross_entropy(logits, torch.tensor(target), reduction="none")
        skip = 1 if s == 0 else 0  # the text's first token: no method predicts it
        total, count = total + float(nll[skip:].sum()), count + len(target) - skip
    return total, count


@torch.no_grad()
def memory_nll(model, ids: list[int], mode: str) -> tuple[float, int]:
    """NLL of ids[1:] for HMT or RMT reading the whole text segment by segment (mode as in HMT.forward)."""
    x = torch.tensor([ids])
    labels = x.clone()
    labels[0, 0] = -100
    out = model(x, labels=labels, mode=mode)
    return float(out.loss) * out.num_tokens, out.num_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_BACKBONE)
    parser.add_argument("--hmt-weights", default=None)
    parser.add_argument("--rmt-weights", default=None)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--stride", type=int, default=64, help="sliding-window block size")
    parser.add_argument("--int8", action="store_true",
                        help="instead: segment-only and HMT (--hmt-weights) with the fp32 and the int8 backbone")
    args = parser.parse_args()
    if args.int8 and not args.hmt_weights:
        parser.error("--int8 compares HMT reading with both backbones: give --hmt-weights")
    backbone, tokenizer = load_backbone(args.model, device="cpu")
    untrained = untrained_hmt(backbone)
    cfg = untrained.config
    ids = held_out_ids(tokenizer, args.tokens)
    start = start_token(tokenizer)
    L, k, full = cfg.segment_length, cfg.sensory_size, backbone.config.max_position_embeddings
    width = L + k + 2
    runs = {
        "segment-only": lambda: blocks_nll(backbone, ids, start, L, 0),
        f"sliding window (W={width}, stride {args.stride})": lambda: blocks_nll(backbone, ids, start, args.stride,
                                                                               width - args.stride),
        f"full context ({full}-token windows)": lambda: blocks_nll(backbone, ids, start, full - 1, 0),
        f"HMT sensory only (k={k}, no memory)": lambda: memory_nll(untrained, ids, "segment"),
        "HMT untrained": lambda: memory_nll(untrained, ids, "recall"),
    }
    if args.hmt_weights:
        hmt = args.hmt_weights
        runs[f"HMT {describe_weights(hmt)}"] = lambda: memory_nll(load_checkpoint(hmt, backbone), ids, "recall")
    if args.rmt_weights:
        rmt = args.rmt_weights
        runs[f"RMT {describe_weights(rmt)}"] = lambda: memory_nll(load_checkpoint(rmt, backbone), ids, "direct")
    if args.int8:  # fp32 against int8 only: segment-only and HMT with each backbone, written to ppl_int8.*
        int8 = quantize_int8(copy.deepcopy(backbone), tokenizer)
        label = f"HMT {describe_weights(args.hmt_weights)}"
        runs = {"segment-only": runs["segment-only"], label: runs[label],
                "segment-only, int8 backbone": lambda: blocks_nll(int8, ids, start, L, 0),
                f"{label}, int8 backbone": lambda: memory_nll(load_checkpoint(args.hmt_weights, int8), ids, "recall")}
    results, started = {}, time.time()
    for name, run in runs.items():
        t0 = time.time()
        nll, count = run()
        results[name] = {"ppl": math.exp(nll / count), "tokens_scored": count, "seconds": time.time() - t0}
        print(name, results[name], flush=True)
    base = results["segment-only"]["ppl"]
    if args.int8:
        write_int8_results(args, ids, cfg, results, started)
        return
    sliding = next(v["ppl"] for n, v in results.items() if n.startswith("sliding"))
    result = {"model": args.model, "text": HELD_OUT, "tokens": len(ids), "config": vars(cfg), "machine": machine(),
              "wall_seconds": time.time() - started, "results": results}
    header = (f"Perplexity on the first {len(ids)} tokens of {HELD_OUT} (held out of every training run); backbone "
              f"{args.model}, segment L={L}, N={cfg.cache_size}, k={k}; {time.time() - started:.0f} s on "
              f"{machine()['cpu']}.")
    lines = [header, "", *table_head("method", "PPL", "ratio to segment-only", "ratio to sliding window")]
    for name, v in results.items():
        lines.append(table_row(name, f"{v['ppl']:.2f}", f"{v['ppl'] / base:.3f}", f"{v['ppl'] / sliding:.3f}"))
    write_results("ppl", result, "\n".join(lines) + "\n")


def write_int8_results(args: argparse.Namespace, ids: list[int], cfg, results: dict, started: float) -> None:
    """ppl_int8.*: each int8 row against its fp32 row of the same run (the CPU-default rule is within 1%)."""
    result = {"model": args.model, "text": HELD_OUT, "tokens": len(ids), "config": vars(cfg), "machine": machine(),
              "wall_seconds": time.time() - started, "results": results}
    lines = [f"Perplexity with the backbone in fp32 and in int8 (hmt_core.quantize) on the first {len(ids)} tokens of "
             f"{HELD_OUT} (held out of every training run); {time.time() - started:.0f} s on {machine()['cpu']}.",
             "", *table_head("method", "PPL fp32", "PPL int8", "int8 / fp32")]
    for name in [n for n in results if not n.endswith(", int8 backbone")]:
        fp32, int8 = results[name]["ppl"], results[f"{name}, int8 backbone"]["ppl"]
        lines.append(table_row(name, f"{fp32:.2f}", f"{int8:.2f}", f"{int8 / fp32:.3f}"))
    write_results("ppl_int8", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
