"""Passkey retrieval: a 5-digit key hidden once in a long run of filler sentences (README, 'Passkey retrieval with
the fused recall').

Per length and trial a seeded haystack of the standard filler ("The grass is green. The sky is blue. ...") with one
needle ("The pass key is 12345. Remember it. 12345 is the pass key.") at a random sentence boundary. HMT reads it once
into a memory that keeps every segment recallable, then answers in each mode from that same state; the plain
backbone answers with the whole haystack in its prompt where it fits the window. A trial passes when the key's five
digits appear in the answer; the needle segment's rank under HMT's recall weights explains failures.

    python -m bench.passkey --hmt-weights assets/hmt-smollm2-135m [--lengths 1000 4000 16000 64000 128000]

HMT recalls with every channel its weights weigh (fused); each channel's own rank of the needle segment is reported
beside it. Resumable: each finished (length, trial) is saved at once and skipped on a rerun. Writes
bench/results/passkey.json and passkey.md (passkey_untrained.* without weights).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import (KEEP, PASSKEY_QUESTION, RESULTS, Haystack, add_model_arguments, full_context_messages,
                          load_model, machine, make_haystack, needle_segment, plain_answer, rank_of, read_haystack,
                          scored_channels, table_head, table_row, training_steps, write_results)
from hmt_core import HMT, MemoryState, stream_answer
from hmt_core.answer import ANSWER_MODES, chat_ids
from hmt_core.config import RECALL_CHANNELS
from hmt_core.recall import channel_scores

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

def hmt_answer(model: HMT, tokenizer: PreTrainedTokenizerBase, state: MemoryState, mode: str,
               max_new_tokens: int) -> tuple[str, torch.Tensor]:
    """(greedy answer, recall weights over every segment) of HMT in one mode; the state is left as it was."""
    events = list(stream_answer(model, tokenizer, state, PASSKEY_QUESTION, mode=mode, max_new_tokens=max_new_tokens,
                                cut_loops=False))  # the whole generated text, as the plain backbone's is scored
    return events[-1].text, events[0].weights


def plain_result(backbone: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, haystack: Haystack,
                 max_new_tokens: int) -> dict:
    """The plain backbone with the whole haystack and the question in its prompt, or fits=False past its window."""
    window = backbone.config.max_position_embeddings
    if haystack.tokens + max_new_tokens > window:
        return {"fits": False}
    messages = full_context_messages(tokenizer, haystack.text, PASSKEY_QUESTION, window, max_new_tokens)
    if len(chat_ids(tokenizer, messages)) + max_new_tokens > window:
        return {"fits": False}
    answer = plain_answer(backbone, tokenizer, messages, max_new_tokens)
    return {"fits": True, "answer": answer, "pass": str(haystack.key) in answer}


def run_trial(model: HMT, tokenizer: PreTrainedTokenizerBase, length: int, trial: int, seed: int,
              modes: list[str], max_new_tokens: int) -> dict:
    """One haystack: HMT reads it once and answers in every mode from that state, then the plain backbone.

    Both modes recall with the question as the query, so the needle's rank is the same in both unless the question
    is longer than a segment (then faithful mode reads its head into memory first); the trial's rank is reread's.
    """
    started = time.time()
    haystack = make_haystack(tokenizer, length, random.Random(f"passkey-{seed}-{length}-{trial}"))
    state = read_haystack(model, tokenizer, haystack.text)
    read_seconds = time.time() - started
    segment = needle_segment(state, haystack.needle_start)
    hmt = {}
    for mode in modes:
        answer, weights = hmt_answer(model, tokenizer, state, mode, max_new_tokens)
        hmt[mode] = {"answer": answer, "pass": str(haystack.key) in answer, "needle_rank": rank_of(weights, segment)}
    rank = hmt["reread" if "reread" in hmt else modes[0]]["needle_rank"]
    query = chat_ids(tokenizer, [{"role": "user", "content": PASSKEY_QUESTION}])
    scores = channel_scores(model, tokenizer, state, PASSKEY_QUESTION, query, scored_channels(model, state))
    channel_ranks = {c: rank_of(s, segment) for c, s in scores.items()}
    return {"length": length, "trial": trial, "tokens": haystack.tokens, "key": haystack.key,
            "needle_char": haystack.needle_start, "depth": haystack.needle_start / len(haystack.text),
            "segments": state.num_segments, "needle_segment": segment, "needle_rank": rank, "hmt": hmt,
            "channel_ranks": channel_ranks,
            "plain": plain_result(model.backbone, tokenizer, haystack, max_new_tokens),
            "read_seconds": read_seconds, "seconds": time.time() - started}


def load_progress(path: Path, settings: dict) -> list[dict]:
    """The trials already saved at `path` by a run with the same settings (none when there is no file)."""
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("settings") != settings:
        raise SystemExit(f"{path} holds a run with other settings ({data.get('settings')}); "
                         "delete it or pass another --results-dir")
    return data["trials"]


def save_progress(path: Path, data: dict) -> None:
    """Write the JSON atomically, so that stopping the run never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)


def summarize(trials: list[dict]) -> list[dict]:
    """Per length: trials, mean tokens and segments, accuracy of every method, mean needle rank."""
    rows = []
    for length in sorted({t["length"] for t in trials}):
        group = [t for t in trials if t["length"] == length]
        row = {"length": length, "trials": len(group), "tokens": sum(t["tokens"] for t in group) / len(group),
               "segments": sum(t["segments"] for t in group) / len(group)}
        for mode in ANSWER_MODES:
            done = [t["hmt"][mode]["pass"] for t in group if mode in t["hmt"]]
            row[f"hmt_{mode}"] = [sum(done), len(done)]
        fits = [t["plain"]["pass"] for t in group if t["plain"]["fits"]]
        row["plain"] = [sum(fits), len(fits)]
        ranks = [t["needle_rank"] for t in group if t["needle_rank"] is not None]
        row["mean_needle_rank"] = sum(ranks) / len(ranks) if ranks else None
        row["needle_first"] = [sum(r == 1 for r in ranks), len(ranks)]
        for channel in RECALL_CHANNELS:
            first = [t["channel_ranks"][channel] == 1 for t in group if channel in t.get("channel_ranks", {})]
            row[f"first_{channel}"] = [sum(first), len(first)]
        rows.append(row)
    return rows


def accuracy_cell(passed: int, total: int, missing: str) -> str:
    """'0.90 (9/10)', or `missing` when the method did not run."""
    return f"{passed / total:.2f} ({passed}/{total})" if total else missing


def markdown(data: dict) -> str:
    """The header line and the per-length table."""
    s, m = data["settings"], data["machine"]
    weights = f"{s['hmt_weights']} ({s['hmt_steps']} training steps)" if s["hmt_weights"] else "untrained"
    int8 = " in int8 (hmt_core.quantize)" if s.get("quantize") == "int8" else ""
    header = (f"Passkey retrieval: one needle (a random 5-digit key) at a random sentence boundary of the standard "
              f"filler, question \"{s['question']}\"; backbone {s['model']}{int8} (window {s['window']}), HMT "
              f"segment L "
              f"{s['config']['segment_length']}, cache N {s['config']['cache_size']}, sensory k "
              f"{s['config']['sensory_size']}, every segment recallable when answering; HMT weights {weights}; "
              f"greedy, {s['max_new_tokens']} new tokens, seed {s['seed']}; wall time {data['wall_seconds']:.0f} s "
              f"summed over trials; {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads.")
    columns = ("tokens (target / mean)", "trials", "segments", "HMT reread", "HMT faithful", "plain backbone",
               "mean needle rank", "needle first (recall)", "first: memory", "first: lexical", "first: token keys",
               "first: sentences")
    lines = [header, "", *table_head(*columns)]
    for r in data["summary"]:
        rank = f"{r['mean_needle_rank']:.1f} of {r['segments']:.0f}" if r["mean_needle_rank"] is not None else "-"
        lines.append(table_row(f"{r['length']:,} / {r['tokens']:,.0f}", r["trials"], f"{r['segments']:.0f}",
                               accuracy_cell(*r["hmt_reread"], "-"), accuracy_cell(*r["hmt_faithful"], "-"),
                               accuracy_cell(*r["plain"], "does not fit"), rank,
                               *(accuracy_cell(*r.get(k, [0, 0]), "-") for k in
                                 ("needle_first", "first_memory", "first_lexical", "first_token",
                                  "first_sentence"))))
    return "\n".join(lines) + "\n"


def run_benchmark(model: HMT, tokenizer: PreTrainedTokenizerBase, settings: dict, lengths: list[int], trials: int,
                  modes: list[str], folder: Path, name: str) -> dict:
    """Every (length, trial) not yet saved in folder/name.json, saving after each; then the JSON and table."""
    path = folder / f"{name}.json"
    done = load_progress(path, settings)
    data = {"settings": settings, "machine": machine(), "trials": done}
    for length in lengths:
        for trial in range(trials):
            old = next((t for t in done if t["length"] == length and t["trial"] == trial), None)
            if old is not None and all(mode in old["hmt"] for mode in modes):
                continue
            result = run_trial(model, tokenizer, length, trial, settings["seed"], modes, settings["max_new_tokens"])
            done = [t for t in done if t is not old] + [result]
            data["trials"] = sorted(done, key=lambda t: (t["length"], t["trial"]))
            save_progress(path, data)
            verdicts = [f"{m} {'pass' if result['hmt'][m]['pass'] else 'FAIL'}" for m in modes]
            plain = result["plain"]
            verdicts.append(f"plain {'pass' if plain.get('pass') else 'FAIL'}" if plain["fits"] else "plain n/a")
            print(f"{length} tokens, trial {trial + 1}/{trials}: {', '.join(verdicts)}, needle rank "
                  f"{result['needle_rank']} of {result['segments']}, {result['seconds']:.1f} s", flush=True)
    data["summary"] = summarize(data["trials"])
    data["wall_seconds"] = sum(t["seconds"] for t in data["trials"])
    write_results(name, data, markdown(data), folder)
    return data


def settings_for(args: argparse.Namespace, model: HMT) -> dict:
    """What a resumed run must share with the saved trials: backbone (and its quantisation, when there is one, so
    that fp32 runs saved before it existed still resume), weights, config, seed, question, decoding."""
    steps = training_steps(args.hmt_weights) if args.hmt_weights else None
    settings = {"model": args.model, "hmt_weights": args.hmt_weights, "hmt_steps": steps, "config": vars(model.config),
                "seed": args.seed, "question": PASSKEY_QUESTION, "max_new_tokens": args.max_new_tokens,
                "window": model.backbone.config.max_position_embeddings, "keep": KEEP}
    if args.quantize != "none":
        settings["quantize"] = args.quantize
    return settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 4000, 16000, 64000, 128000])
    parser.add_argument("--trials", type=int, default=10, help="per length")
    parser.add_argument("--modes", nargs="+", choices=ANSWER_MODES, default=list(ANSWER_MODES))
    parser.add_argument("--seed", type=int, default=0, help="of the haystacks (keys and depths)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args)
    name = ("passkey" if args.hmt_weights else "passkey_untrained") + ("_int8" if args.quantize == "int8" else "")
    run_benchmark(model, tokenizer, settings_for(args, model), args.lengths, args.trials, args.modes,
                  args.results_dir, name)


if __name__ == "__main__":
    main()
