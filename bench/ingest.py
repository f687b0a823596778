"""Ingest benchmark (README, 'Reading cost, memory and latency'): HMT reading throughput as a ratio to the plain
backbone over the same text, peak RSS while reading a short vs a long document, and first-token latency of an answer
after each.

    python -m bench.ingest                       # SmolLM2-135M-Instruct, 10k vs 200k tokens, CPU
    python -m bench.ingest --short 2000 --long 8000 --rounds 1   # a quick look
    python -m bench.ingest --hmt-weights assets/hmt-smollm2-135m --baseline-weights runs/memory-only
    python -m bench.ingest --throughput-only     # reading speed only: fp32, batched summaries, int8, same rounds
    python -m bench.ingest --device cuda --throughput-only   # on a GPU: fp32, bf16, batched summaries, documents

--baseline-weights also reads the same text with other HMT weights in the same rounds (e.g. the weights before token
keys were added), so the cost of a change is a ratio measured in one run.

Writes bench/results/ingest.json and ingest.md. Ratios compare runs made in the same process, interleaved.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from bench.common import ROOT, add_model_arguments, load_model, long_text, machine, write_results
from hmt_core import Reader, load_checkpoint, stream_answer
from hmt_core.reader import read_together
from hmt_core.quantize import quantize_int8

PAGE_CHARS = 3000
WARMUP_CHARS = 100_000  # read once before measuring; RSS settles after about this much (see README)
QUESTION = "What did the captain say about the white whale?"


def text_of_tokens(tokenizer, text: str, n_tokens: int, step: int = 20_000) -> str:
    """The prefix of `text` that tokenizes to about n_tokens tokens, counted a few thousand characters at a time so
    that the count itself leaves no large allocation behind in the measured process (and at most ~4 characters a
    token at a time, so that a short text does not overshoot)."""
    step = min(step, 4 * n_tokens)
    end, count = 0, 0
    while count < n_tokens and end < len(text):
        piece = text[end:end + step]
        count += len(tokenizer(piece, add_special_tokens=False)["input_ids"])
        end += len(piece)
    return text[:end]


def pages_of(text: str) -> list[str]:
    """text cut into pages of PAGE_CHARS characters, as the benchmarks feed it."""
    return [text[i:i + PAGE_CHARS] for i in range(0, len(text), PAGE_CHARS)]


def read(model, tokenizer, text: str, summary_batch: int = 1):
    """Read text page by page, as the app does; returns the memory state. summary_batch > 1 runs that many
    segments' summary passes as one batch (Reader's summary_batch)."""
    reader = Reader(model, tokenizer, summary_batch=summary_batch)
    for number, page in enumerate(pages_of(text), 1):
        reader.feed(page, source="book", page=number)
    reader.finish()
    return reader.state


def document_parts(text: str, documents: int) -> list[list[str]]:
    """text cut into `documents` parts of whole pages (pages_of), as several documents to read together: each
    part's pages."""
    pages = pages_of(text)
    per = -(-len(pages) // documents)
    return [pages[n * per:(n + 1) * per] for n in range(documents)]


def read_documents(model, tokenizer, text: str, documents: int) -> list:
    """Cut text into `documents` parts of whole pages and read them as rows of one batch, each into its own memory
    (hmt_core.reader.read_together); returns their states."""
    readers = []
    for n, pages in enumerate(document_parts(text, documents)):
        reader = Reader(model, tokenizer)
        for number, page in enumerate(pages, 1):
            reader.feed(page, source=f"book {n + 1}", page=number, read=False)
        readers.append(reader)
    read_together(readers)
    return [reader.state for reader in readers]


@torch.no_grad()
def plain_forward(backbone, ids: list[int], window: int, logits: bool) -> None:
    """The plain backbone over the same tokens in windows of one HMT segment: with the LM head (what a plain
    forward computes) or hidden states only (what reading needs)."""
    for i in range(0, len(ids), window):
        x = torch.tensor([ids[i:i + window]], device=backbone.device)
        backbone(x) if logits else backbone.base_model(input_ids=x)


def low_precision(model, tokenizer, device: str):
    """(name, copy of model): on CPU the backbone in int8 (hmt_core.quantize), on a GPU in bf16."""
    other = copy.deepcopy(model)
    if device == "cpu":
        quantize_int8(other.backbone, tokenizer)
        return "int8", other
    return "bf16", other.to(torch.bfloat16)


def timed_read(model, tokenizer, text: str, summary_batch: int = 1, documents: int = 1) -> float:
    """tokens/s of one read of text, as one document or as several read together (the GPU synchronised before the
    clock stops)."""
    t0 = time.perf_counter()
    if documents > 1:
        states = read_documents(model, tokenizer, text, documents)
    else:
        states = [read(model, tokenizer, text, summary_batch)]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return sum(s.num_tokens for state in states for s in state.segments) / (time.perf_counter() - t0)


def timed_plain(backbone, ids: list[int], window: int, logits: bool) -> float:
    t0 = time.perf_counter()
    plain_forward(backbone, ids, window, logits)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return len(ids) / (time.perf_counter() - t0)


def throughput(args: argparse.Namespace) -> dict:
    """tokens/s of HMT reading (fp32 one summary at a time, fp32 with batched summaries, the backbone in int8 on
    CPU or bf16 on a GPU with and without batched summaries, other weights) and of the plain fp32 backbone,
    interleaved over several rounds; every ratio is to the plain forward with LM head of the same round. The model
    loads in fp32 on any device (a GPU would default to bf16), so that fp32 is the base of every ratio."""
    model, tokenizer = load_model(args, args.device, dtype="fp32")
    text = text_of_tokens(tokenizer, long_text(200_000), args.throughput_tokens)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    others = {}  # name -> (model, summary batch, documents), read after the plain forwards in each round
    if args.summary_batch > 1:
        others["batched_summaries"] = (model, args.summary_batch, 1)
    if args.documents > 1:
        others["batched_documents"] = (model, 1, args.documents)
    precision = None
    if args.low_precision:
        precision, low = low_precision(model, tokenizer, args.device)
        others[precision] = (low, 1, 1)
        if args.summary_batch > 1:
            others[f"{precision}_batched_summaries"] = (low, args.summary_batch, 1)
        if args.documents > 1:
            others[f"{precision}_batched_documents"] = (low, 1, args.documents)
    if args.baseline_weights:
        others["baseline"] = (load_checkpoint(args.baseline_weights, model.backbone), 1, 1)
    for reader, batch, documents in [(model, 1, 1), *others.values()]:
        timed_read(reader, tokenizer, text[:20_000], batch, documents)  # warm-up
    rounds = []
    for _ in range(args.rounds):
        r = {"hmt_tokens_per_s": timed_read(model, tokenizer, text)}
        r["plain_tokens_per_s"] = timed_plain(model.backbone, ids, model.segment_length, logits=True)
        r["plain_hidden_tokens_per_s"] = timed_plain(model.backbone, ids, model.segment_length, logits=False)
        for name, (reader, batch, documents) in others.items():
            r[f"{name}_tokens_per_s"] = timed_read(reader, tokenizer, text, batch, documents)
        r["ratio_vs_plain"] = r["hmt_tokens_per_s"] / r["plain_tokens_per_s"]
        r["ratio_vs_plain_hidden"] = r["hmt_tokens_per_s"] / r["plain_hidden_tokens_per_s"]
        for name in others:
            if name != "baseline":
                r[f"{name}_ratio_vs_plain"] = r[f"{name}_tokens_per_s"] / r["plain_tokens_per_s"]
        if args.baseline_weights:
            r["ratio_vs_baseline"] = r["hmt_tokens_per_s"] / r["baseline_tokens_per_s"]
        rounds.append(r)
    out = {"tokens": len(ids), "rounds": rounds, "baseline_weights": args.baseline_weights,
           "summary_batch": args.summary_batch, "documents": args.documents, "low_precision": precision}
    for key in rounds[0]:
        if "ratio" in key:
            out[key] = statistics.median(r[key] for r in rounds)
    return out


def rss_mb() -> float:
    """Resident set size of this process now, in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def child(args: argparse.Namespace) -> dict:
    """In a fresh process: read n tokens while sampling RSS (summary passes in batches of --summary-batch, as the
    app reads), then time the first token of answers."""
    import resource

    model, tokenizer = load_model(args, args.device)
    source = long_text(int(args.child * 5) + WARMUP_CHARS)
    # the same warm-up for both lengths: the allocator's first growth
    read(model, tokenizer, source[-WARMUP_CHARS:], args.summary_batch)
    text = text_of_tokens(tokenizer, source, args.child)
    before = rss_mb()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss_mb())
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    state = read(model, tokenizer, text, args.summary_batch)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    latency = {}
    for mode in ("faithful", "reread"):
        times = []
        for _ in range(args.latency_repeats):
            start = time.perf_counter()
            for event in stream_answer(model, tokenizer, state, QUESTION, mode=mode, max_new_tokens=1):
                if event.kind in ("token", "done"):
                    times.append(time.perf_counter() - start)
                    break
        latency[mode] = statistics.median(times)
    return {"tokens": sum(s.num_tokens for s in state.segments), "segments": state.num_segments,
            "cache_rows": int(state.cache.shape[0]), "read_seconds": seconds, "rss_before_read_mb": before,
            "peak_rss_during_read_mb": max(peak[0], rss_mb()),
            "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "first_token_s": latency}


def run_child(args: argparse.Namespace, n_tokens: int) -> dict:
    cmd = [sys.executable, "-m", "bench.ingest", "--child", str(n_tokens), "--model", args.model,
           "--segment-length", str(args.segment_length), "--device", args.device,
           "--latency-repeats", str(args.latency_repeats), "--summary-batch", str(args.summary_batch)]
    if args.hmt_weights:
        cmd += ["--hmt-weights", args.hmt_weights]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def throughput_rows(t: dict) -> list[str]:
    """Table rows (measure, value, goal) of throughput()'s result: every reading path as a ratio to the plain fp32
    forward with LM head of the same rounds, then the plain path's tokens/s."""
    batch, documents, low = t["summary_batch"], t.get("documents", 1), t.get("low_precision")
    rows = [("HMT ingest, fp32 / plain forward (with LM head), same tokens, same run", t["ratio_vs_plain"], ">= 0.6"),
            ("HMT ingest, fp32 / plain forward (hidden states only)", t["ratio_vs_plain_hidden"],
             "(bound ~0.61 at k=32)")]
    if batch > 1:
        rows.append((f"HMT ingest, fp32, summaries in batches of {batch} / plain forward",
                     t["batched_summaries_ratio_vs_plain"], ">= 0.75"))
    if documents > 1:
        rows.append((f"HMT ingest, fp32, the text as {documents} documents read together / plain forward",
                     t["batched_documents_ratio_vs_plain"], ""))
    if low:
        rows.append((f"HMT ingest, {low} backbone / plain forward", t[f"{low}_ratio_vs_plain"], ""))
        if batch > 1:
            rows.append((f"HMT ingest, {low} backbone, summaries in batches of {batch} / plain forward",
                         t[f"{low}_batched_summaries_ratio_vs_plain"], ">= 1.0"))
        if documents > 1:
            rows.append((f"HMT ingest, {low} backbone, {documents} documents read together / plain forward",
                         t[f"{low}_batched_documents_ratio_vs_plain"], ""))
    if t.get("baseline_weights"):
        rows.append((f"HMT ingest / the same with {t['baseline_weights']}, same run", t["ratio_vs_baseline"], ">= 0.9"))
    lines = [f"| {measure} | {value:.2f} | {goal} |" for measure, value, goal in rows]
    for key, label in (("hmt", "HMT ingest, fp32"), ("plain", "plain forward (with LM head)")):
        tps = statistics.median(r[f"{key}_tokens_per_s"] for r in t["rounds"])
        lines.append(f"| {label}, tokens/s (median round) | {tps:.0f} | |")
    return lines


def table(result: dict) -> str:
    t, s, long = result["throughput"], result["short"], result["long"]
    rss = long["peak_rss_during_read_mb"] / s["peak_rss_during_read_mb"]
    lines = [
        f"Backbone {result['model']}, HMT segment {result['config']['segment_length']}, "
        f"k {result['config']['sensory_size']}, N {result['config']['cache_size']}; {result['machine']['cpu']}, "
        f"{result['machine']['torch_threads']} threads; the plain forwards in fp32.",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        *throughput_rows(t),
        f"| peak RSS reading {s['tokens']:,} tokens (summaries in batches of {t['summary_batch']}) | "
        f"{s['peak_rss_during_read_mb']:.0f} MB | |",
        f"| peak RSS reading {long['tokens']:,} tokens | {long['peak_rss_during_read_mb']:.0f} MB | |",
        f"| RSS growth, long vs short | {100 * (rss - 1):+.1f}% | < 5% |",
        f"| first token, faithful, {long['tokens']:,} / {s['tokens']:,} tokens read | "
        f"{long['first_token_s']['faithful']:.3f} s / {s['first_token_s']['faithful']:.3f} s = "
        f"{long['first_token_s']['faithful'] / s['first_token_s']['faithful']:.2f} | < 1.2 |",
        f"| first token, re-read, {long['tokens']:,} / {s['tokens']:,} tokens read | "
        f"{long['first_token_s']['reread']:.3f} s / {s['first_token_s']['reread']:.3f} s = "
        f"{long['first_token_s']['reread'] / s['first_token_s']['reread']:.2f} | < 1.2 |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)  # without weights: fresh parameters (speed and memory do not depend on their values)
    parser.add_argument("--baseline-weights", default=None, help="other HMT weights to read with in the same rounds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--short", type=int, default=10_000)
    parser.add_argument("--long", type=int, default=200_000)
    parser.add_argument("--throughput-tokens", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--summary-batch", type=int, default=8,
                        help="also read with this many summary passes per batch in the same rounds (1: do not)")
    parser.add_argument("--documents", type=int, default=4,
                        help="also read the text as this many documents together, rows of one batch (1: do not)")
    parser.add_argument("--low-precision", action=argparse.BooleanOptionalAction, default=True,
                        help="also read with the backbone in int8 (cpu) or bf16 (cuda) in the same rounds")
    parser.add_argument("--latency-repeats", type=int, default=5)
    parser.add_argument("--throughput-only", action="store_true",
                        help="only the reading rounds (no RSS or latency children); writes ingest_throughput.*")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    started = time.time()
    result = {"model": args.model, "machine": machine(), "throughput": throughput(args)}
    if args.throughput_only:
        t = result["throughput"]
        lines = [f"Reading throughput only, {t['tokens']:,} tokens, {args.rounds} interleaved rounds; "
                 f"{result['machine']['cpu']}, {result['machine']['torch_threads']} threads; "
                 f"{time.time() - started:.0f} s.", "", "| measure | value | goal |", "|---|---|---|",
                 *throughput_rows(t)]
        write_results("ingest_throughput", result, "\n".join(lines) + "\n")
        return
    result["short"] = run_child(args, args.short)
    result["long"] = run_child(args, args.long)
    model, _ = load_model(args, args.device)
    result["config"] = {k: v for k, v in vars(model.config).items()}
    result["wall_seconds"] = time.time() - started
    write_results("ingest", result, table(result))


if __name__ == "__main__":
    main()
