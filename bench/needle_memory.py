"""Does a segment's memory embedding register a passkey needle? The diagnostic behind memory recall's passkey
failures (README, 'Passkey retrieval, memory recall only').

Reads the passkey benchmark's haystacks (same filler, needle and question) and reports, per trial, for the segment
holding the needle:
- its outlier rank among the segments' memories: distance from the median of the other segments' vectors, 1 = the
  most unusual (the first segment, read with no memory yet, is left out), for raw memory embeddings M and for the
  recall keys M Wk;
- its rank under the recall weights for the benchmark's question;
- the mean cosine of its memory to the filler memories, next to filler against filler;
and, over trials, the mean cosine between the needle's key deviations (its key minus the filler keys' mean): near 1
would mean one direction a trained query could look for, near 0 none.

    python -m bench.needle_memory --hmt-weights assets/hmt-smollm2-135m [--tokens 4000 --trials 6]

Writes bench/results/needle_memory.json and needle_memory.md (needle_memory_untrained.* without weights).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import (PASSKEY_QUESTION, RESULTS, add_model_arguments, describe_weights, load_model, machine,
                          make_haystack, needle_segment, rank_of, read_haystack, table_head, table_row, write_results)
from hmt_core import HMT
from hmt_core.answer import chat_ids


def outlier_rank(vectors: torch.Tensor, index: int) -> int:
    """1-based rank of row `index` of vectors [n, d] by distance from the median of the other rows but the first."""
    others = [j for j in range(1, vectors.shape[0]) if j != index]
    distance = (vectors - vectors[others].median(0).values).norm(dim=-1)  # [n]
    return int((distance[others] > distance[index]).sum()) + 1


@torch.no_grad()
def needle_trial(model: HMT, tokenizer, tokens: int, rng: random.Random) -> tuple[dict, torch.Tensor] | None:
    """One haystack: the needle segment's ranks and cosines, and its key's deviation from the filler keys [h];
    None when the needle lands in the first segment, which is read with no memory and is not compared."""
    haystack = make_haystack(tokenizer, tokens, rng)
    state = read_haystack(model, tokenizer, haystack.text)
    memories = state.cache.float()  # [n, d]
    n, needle = memories.shape[0], needle_segment(state, haystack.needle_start)
    if n < 4:
        raise ValueError(f"{tokens} tokens give only {n} segments; the comparison needs at least 4")
    if needle == 0:
        return None
    keys = model.wk(memories.to(model.device, model.wk.weight.dtype)).float().cpu()  # [n, h]
    weights = model.recall_weights(state, chat_ids(tokenizer, [{"role": "user", "content": PASSKEY_QUESTION}]))
    filler = [j for j in range(1, n) if j != needle]
    unit = F.normalize(memories, dim=-1)
    cosine = unit @ unit.T  # [n, n]
    off_diagonal = ~torch.eye(len(filler), dtype=torch.bool)
    row = {"segments": n, "needle_segment": needle, "outlier_rank_memory": outlier_rank(memories, needle),
           "outlier_rank_key": outlier_rank(keys, needle), "recall_rank": rank_of(weights, needle),
           "cos_needle_filler": float(cosine[needle, filler].mean()),
           "cos_filler_filler": float(cosine[filler][:, filler][off_diagonal].mean())}
    return row, keys[needle] - keys[filler].mean(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1, help="of the haystacks (keys and depths)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args)
    rng, started, rows, deviations, skipped = random.Random(args.seed), time.time(), [], [], 0
    while len(rows) < args.trials:
        trial = needle_trial(model, tokenizer, args.tokens, rng)
        if trial is None:
            skipped += 1
            continue
        rows.append(trial[0])
        deviations.append(trial[1])
        print(trial[0], flush=True)
    unit = F.normalize(torch.stack(deviations), dim=-1)
    pairs = (unit @ unit.T)[~torch.eye(len(rows), dtype=torch.bool)]
    agreement = float(pairs.mean()) if len(rows) > 1 else float("nan")
    result = {"model": args.model, "hmt_weights": args.hmt_weights, "config": vars(model.config), "tokens": args.tokens,
              "seed": args.seed, "machine": machine(), "wall_seconds": time.time() - started, "trials": rows,
              "skipped_needle_in_first_segment": skipped,
              "needle_deviation_agreement": agreement}
    cfg = model.config
    lines = [f"Does the needle's memory stand out? {len(rows)} passkey haystacks of about {args.tokens} tokens "
             f"(seed {args.seed}); backbone {args.model}, segment L {cfg.segment_length}, sensory k "
             f"{cfg.sensory_size}, every segment kept; HMT weights {describe_weights(args.hmt_weights)}; "
             f"{result['wall_seconds']:.0f} s on {result['machine']['cpu']}. Outlier ranks count the segments after "
             f"the first (1 = the most unusual); {skipped} haystacks with the needle in the first segment skipped.",
             "", *table_head("trial", "segments", "needle segment", "outlier rank, memory", "outlier rank, recall key",
                             "recall rank", "cos needle-filler", "cos filler-filler")]
    for t, r in enumerate(rows):
        lines.append(table_row(t, r["segments"], r["needle_segment"],
                               f"{r['outlier_rank_memory']} of {r['segments'] - 1}",
                               f"{r['outlier_rank_key']} of {r['segments'] - 1}",
                               f"{r['recall_rank']} of {r['segments']}", f"{r['cos_needle_filler']:.4f}",
                               f"{r['cos_filler_filler']:.4f}"))
    lines += ["", f"Mean cosine between trials of the needle's key deviation: {agreement:.3f}"]
    name = "needle_memory" if args.hmt_weights else "needle_memory_untrained"
    write_results(name, result, "\n".join(lines) + "\n", args.results_dir)


if __name__ == "__main__":
    main()
