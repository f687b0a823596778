"""Questions under load: does a question's first token still come quickly while other sessions read long books?

For each load level (0, 1, 2 and 4 readers) a fresh `python app.py` is started on loopback with the real model and
no disk cache. A question session first reads a short text; then each reader session sends a 100-page text of
real prose to /ingest (each its own slice, so no two are the same document) and, once reading has begun, the
question session asks its questions one after another through /ask_stream, which streams the answer as it grows.
Per question: the first-token latency (the first streamed output holding answer text) and the total latency. The
server is stopped after each level, so no reading spills into the next. Bounded: `--questions` per level and
`--max-seconds` per level, loopback only.

    python -m bench.load --hmt-weights assets/hmt-smollm2-135m [--questions 20] [--readers 0 1 2 4]

Goal: p95 first-token latency under load within 3x the idle p95 (0 readers) of the same run. Writes
bench/results/load.json and load.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from bench.common import ROOT, bootstrap, long_text, machine, table_head, table_row, write_results

PAGE_CHARS = 3000  # the app's pseudo-page of plain text
QUESTIONS = ["Who is the captain of the ship?", "What does the narrator call himself?", "Where does the voyage start?",
             "What is the whale's colour?", "Who shares a room with Ishmael?"]
SHORT = ("Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, "
         "I thought I would sail about a little and see the watery part of the world. The ship was the Pequod and "
         "its captain was Ahab, who hunted the white whale. Queequeg shared a room with Ishmael in New Bedford.\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(weights: str | None, log: Path) -> tuple[subprocess.Popen, str]:
    """`python app.py` on a free loopback port with no disk cache; returns (process, base URL) once it answers."""
    port = free_port()
    command = [sys.executable, "app.py", "--port", str(port), "--no-cache", "--max-file-size", "50"]
    if weights:
        command += ["--hmt-weights", weights]
    out = log.open("w")
    proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited early; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError(f"the app did not start within 300 s; see {log}")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def reader(url: str, text: str, stop: threading.Event, seen: list[str]) -> None:
    """One session reading a long text through /ingest (it is left to run; the server is stopped afterwards).
    Appends to `seen` the last progress line it had when the questions ended, the proof that it was reading."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    job = client.submit(files=[], text=text, password="", api_name="/ingest")
    while not stop.is_set() and not job.done():
        time.sleep(0.5)
    outputs = job.outputs()
    seen.append(str(outputs[-1][0] if isinstance(outputs[-1], (list, tuple)) else outputs[-1]) if outputs
                else "no progress")


def ask(client, question: str, max_new_tokens: int) -> dict:
    """One question through /ask_stream: seconds to the first streamed answer text and to the end."""
    start = time.monotonic()
    job = client.submit(question=question, mode="reread", max_new_tokens=max_new_tokens, temperature=0.0,
                        channels=None, api_name="/ask_stream")
    first = None
    for output in job:
        if first is None and output and output[0]:
            first = time.monotonic() - start
    total = time.monotonic() - start
    if job.exception() is not None:
        raise RuntimeError(f"/ask_stream failed on {question!r}: {job.exception()}")
    return {"question": question, "first_token_s": first if first is not None else total, "total_s": total,
            "answer": job.outputs()[-1][0] if job.outputs() else ""}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def run_level(readers: int, args: argparse.Namespace, texts: list[str], logs: Path) -> dict:
    """One load level on a fresh server: the question session's latencies while `readers` sessions read."""
    from gradio_client import Client

    proc, url = start_app(args.hmt_weights, logs / f"app-{readers}.log")
    stop = threading.Event()
    try:
        asker = Client(url, verbose=False)
        asker.predict(files=[], text=SHORT, password="", api_name="/ingest")
        seen: list[str] = []
        threads = [threading.Thread(target=reader, args=(url, texts[i], stop, seen), daemon=True)
                   for i in range(readers)]
        for thread in threads:
            thread.start()
        time.sleep(args.warmup if readers else 0)
        results, started = [], time.monotonic()
        for n in range(args.questions):
            if time.monotonic() - started > args.max_seconds:
                break
            results.append(ask(asker, QUESTIONS[n % len(QUESTIONS)], args.max_new_tokens))
            print(f"{readers} readers, question {n + 1}: first token {results[-1]['first_token_s']:.2f} s, "
                  f"total {results[-1]['total_s']:.2f} s", flush=True)
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    finally:
        stop.set()
        stop_app(proc)
    first = [r["first_token_s"] for r in results]
    total = [r["total_s"] for r in results]
    return {"readers": readers, "questions": len(results), "results": results, "readers_at_the_end": seen,
            "first_token": {"p50": statistics.median(first), "p95": percentile(first, 95),
                            "mean": statistics.mean(first), "mean_ci": bootstrap(first)},
            "total": {"p50": statistics.median(total), "p95": percentile(total, 95), "mean": statistics.mean(total)}}


def markdown(data: dict) -> str:
    idle = next(level for level in data["levels"] if level["readers"] == 0)
    lines = [f"Questions through /ask_stream (reread, {data['settings']['max_new_tokens']} new tokens, greedy) while "
             f"other sessions read {data['settings']['pages']}-page texts; {data['machine']['cpu']}, "
             f"{data['machine']['torch_threads']} threads; a fresh server per row.", "",
             *table_head("readers", "questions", "first token p50 / p95 (s)", "p95 / idle p95", "total p50 / p95 (s)")]
    for level in data["levels"]:
        ratio = level["first_token"]["p95"] / idle["first_token"]["p95"]
        lines.append(table_row(level["readers"], level["questions"],
                               f"{level['first_token']['p50']:.2f} / {level['first_token']['p95']:.2f}",
                               f"{ratio:.2f}", f"{level['total']['p50']:.2f} / {level['total']['p95']:.2f}"))
    lines += ["", "Goal: p95 first-token latency under load within 3x idle.", "",
              "Where each reader was when the last question ended (its last /ingest progress line):"]
    lines += [f"- {level['readers']} readers: " + "; ".join(level.get("readers_at_the_end", []))
              for level in data["levels"] if level["readers"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hmt-weights", default=None, help="default: the app's shipped weights")
    parser.add_argument("--readers", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--questions", type=int, default=20, help="per load level")
    parser.add_argument("--max-seconds", type=float, default=300, help="per load level, for the questions")
    parser.add_argument("--pages", type=int, default=100, help="of each reader's text")
    parser.add_argument("--warmup", type=float, default=10, help="seconds of reading before the first question")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    size = args.pages * PAGE_CHARS
    prose = long_text(size * max(args.readers))
    texts = [prose[i * size:(i + 1) * size] for i in range(max(args.readers))]
    logs = ROOT / "runs" / "load"
    logs.mkdir(parents=True, exist_ok=True)
    levels = [run_level(readers, args, texts, logs) for readers in sorted(set([0, *args.readers]))]
    settings = {k: v for k, v in vars(args).items() if k != "results_dir"}
    data = {"settings": settings, "machine": machine(), "levels": levels}
    write_results("load", data, markdown(data), args.results_dir)


if __name__ == "__main__":
    main()
