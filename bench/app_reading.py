"""App reading benchmark (README, 'Reading speed'): the same text read through the app's ingest (opening the text,
bounded model calls, progress lines, the cache write) and through bench.ingest's Reader loop with the app's summary
batch (app.engine.SUMMARY_BATCH), and with summary passes one at a time, in one process, interleaved over rounds (the
app first in every second round), with one model; and how right the progress line's tokens/s and time left were.

    python -m bench.app_reading                                        # 20k tokens, 4 rounds, fp32
    python -m bench.app_reading --quantize int8                        # the same with the int8 backbone
    python -m bench.app_reading --tokens 200000 --rounds 1 --app-only  # a 500-page book through the app
    python -m bench.app_reading --documents 4 --rounds 2               # the text as 4 uploads, read together

With --documents N the text is cut into N uploads of whole pages that the app reads together (several new documents
in one upload are read as rows of one batch), against bench.ingest's read_documents of the same parts; the "one at a
time" column stays the text as one document, one summary pass per segment (app_reading_documents.*).

The progress line is judged at every report until 90% of the tokens are read (after that the time left is a few
seconds and any relative error is large): its tokens/s against the rate the whole read turned out to have (tokens /
wall seconds from the start of reading to the end), its time left against the time the read then still took.

Writes bench/results/app_reading.json and .md (app_reading_int8.* with --quantize int8).
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

from app.cache import MemoryCache
from app.engine import SUMMARY_BATCH, Engine
from app.ingest import Upload, ingest
from app.session import Session
from bench.common import long_text, machine, write_results
from bench.ingest import document_parts, read, text_of_tokens, timed_read
from hmt_core import DEFAULT_BACKBONE
from hmt_core.quantize import QUANTIZATIONS

PROGRESS = re.compile(r"· (\d+) tokens/s · about (?:(\d+) min )?(\d+) s left")
JUDGED_UNTIL = 0.9  # the share of tokens read up to which progress lines are judged


def shown(message: str) -> tuple[float, float] | None:
    """(tokens/s, seconds left) as a progress line shows them, None for a line without an estimate."""
    m = PROGRESS.search(message)
    if m is None:
        return None
    return float(m[1]), 60 * float(m[2] or 0) + float(m[3])


def app_read(engine: Engine, text: str, cache_dir: Path, documents: int = 1) -> dict:
    """Read text through the app's ingest (as one upload, or cut into `documents` uploads sent together) into a
    fresh session and cache; the wall time of the whole ingest, the tokens read and, per progress line, (seconds since
    the start, tokens read, tokens/s shown, seconds left shown)."""
    session, cache = Session(), MemoryCache(cache_dir)
    lines, reading_started = [], None
    parts = ["".join(pages) for pages in document_parts(text, documents)] if documents > 1 else [text]
    uploads = [Upload(f"book{n + 1}.txt", text=part) for n, part in enumerate(parts)]
    start = time.perf_counter()
    for progress in ingest(session, engine, cache, uploads):
        now = time.perf_counter() - start
        if progress.phase == "read":
            if reading_started is None:  # the first bounded call ended; reading began when it began
                reading_started = now - progress.report.seconds
            estimate = shown(progress.message)
            if estimate is not None:
                lines.append((now, progress.report.tokens, *estimate))
        if progress.errors:
            raise RuntimeError(f"the app could not read the text: {progress.errors}")
    wall = time.perf_counter() - start
    tokens = sum(document.tokens for document in session.documents)
    return {"seconds": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "reading_started_s": reading_started,
            "lines": lines}


def progress_errors(run: dict) -> dict:
    """Relative errors of the progress lines judged (see the module's docstring): shown tokens/s against the read's
    own rate, shown time left against the time the read still took."""
    end, tokens, started = run["seconds"], run["tokens"], run["reading_started_s"]
    true_rate = tokens / (end - started)
    judged = [line for line in run["lines"] if line[1] <= JUDGED_UNTIL * tokens]
    rate_err = [abs(rate - true_rate) / true_rate for _, _, rate, _ in judged]
    left_err = [abs(left - (end - now)) / (end - now) for now, _, _, left in judged]
    within = lambda errs: sum(e <= 0.2 for e in errs) / len(errs) if errs else None  # noqa: E731
    return {"lines_judged": len(judged), "true_tokens_per_s": true_rate,
            "rate_error_median": statistics.median(rate_err) if rate_err else None,
            "rate_error_max": max(rate_err, default=None), "rate_within_20pct": within(rate_err),
            "left_error_median": statistics.median(left_err) if left_err else None,
            "left_error_max": max(left_err, default=None), "left_within_20pct": within(left_err)}


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_BACKBONE)
    parser.add_argument("--hmt-weights", default=None, help="default: the app's (assets/hmt-smollm2-135m)")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default="none")
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--app-only", action="store_true", help="read through the app only (app_reading_book.*)")
    parser.add_argument("--documents", type=int, default=1, help="cut the text into this many uploads")
    args = parser.parse_args()
    engine = Engine()
    description = engine.load(args.model, args.hmt_weights, "cpu", quantize=args.quantize)
    text = text_of_tokens(engine.tokenizer, long_text(max(200_000, 6 * args.tokens)), args.tokens)
    read(engine.model, engine.tokenizer, text[:20_000])  # warm-up
    started, rounds = time.time(), []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            app_first = bool(i % 2)  # every second round reads through the app first: order favours neither path
            bench = unbatched = None
            if app_first or args.app_only:
                app = app_read(engine, text, Path(tmp) / f"cache{i}", args.documents)
            if not args.app_only:  # bench.ingest's Reader loop as the app reads, and one at a time
                bench = timed_read(engine.model, engine.tokenizer, text, SUMMARY_BATCH, args.documents)
                unbatched = timed_read(engine.model, engine.tokenizer, text)
            if not (app_first or args.app_only):
                app = app_read(engine, text, Path(tmp) / f"cache{i}", args.documents)
            rounds.append({"bench_tokens_per_s": bench, "bench_unbatched_tokens_per_s": unbatched, "app": app,
                           "app_first": app_first,
                           "app_ratio_vs_bench": None if bench is None else app["tokens_per_s"] / bench,
                           "app_ratio_vs_unbatched": None if unbatched is None else app["tokens_per_s"] / unbatched,
                           "progress": progress_errors(app)})
            print(f"round {i + 1}: bench {bench or 0:.0f} tokens/s (unbatched {unbatched or 0:.0f}), "
                  f"app {app['tokens_per_s']:.0f} tokens/s ({app['seconds']:.0f} s)", flush=True)
    ratio = None if args.app_only else statistics.median(r["app_ratio_vs_bench"] for r in rounds)
    result = {"model": description, "quantize": args.quantize, "summary_batch": SUMMARY_BATCH,
              "documents": args.documents, "machine": machine(),
              "tokens": rounds[0]["app"]["tokens"], "rounds": rounds, "app_ratio_vs_bench": ratio,
              "wall_seconds": time.time() - started}
    m = result["machine"]
    as_read = (f"as {args.documents} documents read together" if args.documents > 1
               else f"summary passes in batches of {SUMMARY_BATCH}")
    lines = [f"{result['tokens']:,} tokens of Moby-Dick read through the app's ingest"
             + (f" ({args.documents} uploads)" if args.documents > 1 else "")
             + ("" if args.app_only else f" and through bench.ingest's Reader loop ({as_read}, as the app reads, and "
                "as one document, one summary pass at a time)")
             + f", {args.rounds} round(s), one process; {description}; {m['cpu']}, {m['torch_threads']} threads; "
             f"{result['wall_seconds']:.0f} s.", "",
             "| round (first) | bench tokens/s (as the app reads / one at a time) | app tokens/s | app / bench as "
             "the app reads (goal >= 0.9) | app / bench one at a time | app wall time | progress lines judged | "
             "tokens/s shown: median error, within 20% | time left shown: median error, within 20% |",
             "|---|---|---|---|---|---|---|---|---|"]
    num = lambda x, f="{:.0f}": "-" if x is None else f.format(x)  # noqa: E731
    for i, r in enumerate(rounds, 1):
        p = r["progress"]
        first = "app" if r["app_first"] or args.app_only else "bench"
        lines.append(f"| {i} ({first}) | {num(r['bench_tokens_per_s'])} / {num(r['bench_unbatched_tokens_per_s'])} | "
                     f"{r['app']['tokens_per_s']:.0f} | {num(r['app_ratio_vs_bench'], '{:.2f}')} | "
                     f"{num(r['app_ratio_vs_unbatched'], '{:.2f}')} | {r['app']['seconds']:.0f} s | "
                     f"{p['lines_judged']} | {pct(p['rate_error_median'])}, {pct(p['rate_within_20pct'])} | "
                     f"{pct(p['left_error_median'])}, {pct(p['left_within_20pct'])} |")
    if ratio is not None:
        lines += ["", f"Median app / bench (as the app reads) over the rounds: {ratio:.2f}."]
    name = ("app_reading" + ("_book" if args.app_only else "") + ("_documents" if args.documents > 1 else "")
            + ("_int8" if args.quantize == "int8" else ""))
    write_results(name, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
