"""The answer issue's goals, from saved bench.qa runs on the same held-out questions (README, 'The answer adapter and
"not found"').

The reader's goals are ratios between two runs: the adapter given the gold segment against the untuned reader given
the same segment (its `oracle` rows, bench/results/qa_reader.json), and the app's re-read against its own oracle (the
gold segment read the same way: the same adapter, prompt and quoting). With --probe-above, the run is scored as if the
answerability probe's threshold had been that (every answer and probe score is in the run).
Greedy decoding makes each answer the same in any run, so the runs pair up question by question; a ratio's interval
resamples the questions (both sides of each pair together). With --before, the same run of an earlier adapter gives
paired differences. No model is loaded.

    python -m bench.qa_goals bench/results/qa_app_v4.json --untuned bench/results/qa_reader.json \
        --before bench/results/qa_app_v2.json --results qa_goals

Writes bench/results/<results>.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.common import bootstrap, table_head, table_row, write_results
from bench.qa import VARIANTS, rate, said_not_found

SAMPLES = 2000


def ratio(num: list[float], den: list[float], samples: int = SAMPLES, seed: int = 0) -> dict:
    """sum(num) / sum(den) over paired questions, with a 95% bootstrap interval (each question's pair resampled
    together)."""
    n, d = torch.tensor(num, dtype=torch.float64), torch.tensor(den, dtype=torch.float64)
    idx = torch.randint(len(n), (samples, len(n)), generator=torch.Generator().manual_seed(seed))
    ratios = (n[idx].sum(1) / d[idx].sum(1).clamp_min(1e-12)).sort().values
    return {"ratio": float(n.sum() / d.sum()), "ci": [float(ratios[int(0.025 * samples)]),
                                                      float(ratios[int(0.975 * samples) - 1])]}


def difference(after: list[float], before: list[float]) -> dict:
    """The mean paired difference after - before, with a 95% bootstrap interval."""
    diffs = [a - b for a, b in zip(after, before)]
    return {"difference": sum(diffs) / len(diffs), "ci": bootstrap(diffs)}


def app_score(row: dict, metric: str) -> float:
    """The app's score on an answerable question: the re-read's, or 0 when the app said "not found"."""
    return 0.0 if said_not_found(row) else row[metric]


def oracle_of(app: str) -> str:
    """The oracle row that goes with the app's re-read `app`: the gold segment alone, read as `app` reads (the same
    prompt, adapter and quoting)."""
    _, _, prompt, adapter, quote = VARIANTS[app]
    return next(m for m, v in VARIANTS.items() if v == ("gold", 1, prompt, adapter, quote))


def by_question(run: dict) -> dict[tuple[str, str], dict]:
    """A run's rows by (article, question)."""
    return {(r["article"], r["question"]): r for r in run["rows"]}


def with_probe_threshold(run: dict, above: float) -> dict:
    """The run as the app would have answered with its answerability probe's threshold at `above`: each app answer's
    and each negative's probe decision taken again from its saved score (bench.qa generates every answer whatever the
    probe says, so nothing else changes), and the 'not found' rates counted again."""
    app = run["app_method"]

    def decided(r: dict) -> dict:
        score = r.get("unanswerable_score")
        return {**r, "probe_above": score is not None and score > above}

    rows = [{**r, app: decided(r[app])} for r in run["rows"]]
    negatives = [decided(n) for n in run["negatives"]]
    not_found = {kind: {"app": rate([float(said_not_found(n)) for n in negatives if n["kind"] == kind])}
                 for kind in ("squad2", "other_article")}
    not_found["answerable"] = {"app": rate([float(said_not_found(r[app])) for r in rows])}
    return {**run, "rows": rows, "negatives": negatives, "not_found": not_found, "probe_above": above}


def goals(run: dict, untuned: dict, before: dict | None = None, before_name: str = "") -> dict:
    """The goals' ratios (and, with `before`, named `before_name`, paired differences) on the questions `run` and
    `untuned` share."""
    app, plain = run["app_method"], by_question(untuned)
    oracle = oracle_of(app)
    rows = [r for r in run["rows"] if (r["article"], r["question"]) in plain]
    base = [plain[(r["article"], r["question"])]["oracle"] for r in rows]
    out = {"questions": len(rows), "app_method": app, "oracle_method": oracle, "answer_adapter": run["answer_adapter"],
           "oracle_f1_vs_untuned": ratio([r[oracle]["f1"] for r in rows], [b["f1"] for b in base]),
           "oracle_contains_vs_untuned": ratio([r[oracle]["contains"] for r in rows], [b["contains"] for b in base]),
           "reread_f1_vs_oracle": ratio([r[app]["f1"] for r in rows], [r[oracle]["f1"] for r in rows]),
           "app_f1_vs_oracle": ratio([app_score(r[app], "f1") for r in rows], [r[oracle]["f1"] for r in rows]),
           "not_found": {kind: rates["app"] for kind, rates in run["not_found"].items()}}
    if before is not None:
        earlier = by_question(before)
        pairs = [(r, earlier[(r["article"], r["question"])]) for r in rows if (r["article"], r["question"]) in earlier]
        then = before["app_method"]
        out["before"] = {"run": before_name, "answer_adapter": before["answer_adapter"], "app_method": then,
                         "questions": len(pairs)}
        for name, now_method, then_method, score in (
                ("reread_f1", app, then, lambda r: r["f1"]),
                ("oracle_f1", oracle, oracle_of(then), lambda r: r["f1"]),
                ("oracle_contains", oracle, oracle_of(then), lambda r: r["contains"]),
                ("app_f1", app, then, lambda r: app_score(r, "f1")),
                ("answerable_not_found", app, then, lambda r: float(said_not_found(r)))):
            out["before"][name] = difference([score(a[now_method]) for a, _ in pairs],
                                             [score(b[then_method]) for _, b in pairs])
    return out


def report(g: dict) -> str:
    """The markdown table of the goals."""
    def cell(r: dict, key: str) -> str:
        return f"{r[key]:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"

    lines = [f"The answer issue's goals on {g['questions']} held-out questions (adapter {g['answer_adapter']}, the "
             f"app's re-read {g['app_method']}); ratios of sums over the same questions, 95% bootstrap intervals.", "",
             *table_head("goal", "measured", "target"),
             table_row("token F1 with the gold segment / the untuned reader's",
                       cell(g["oracle_f1_vs_untuned"], "ratio"), ">= 2"),
             table_row("contains-match with the gold segment / the untuned reader's",
                       cell(g["oracle_contains_vs_untuned"], "ratio"), ">= 1.5"),
             table_row("the re-read's F1 / its own oracle's", cell(g["reread_f1_vs_oracle"], "ratio"), ">= 0.9"),
             table_row("the app's F1 (\"not found\" counted wrong) / the oracle's",
                       cell(g["app_f1_vs_oracle"], "ratio"), ""),
             *(table_row(f"\"not found\" on {kind} questions ({r['n']})",
                         f"{r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
                         "<= 0.10" if kind == "answerable" else ">= 0.70")
               for kind, r in g["not_found"].items())]
    if "before" in g:
        b = g["before"]
        lines += ["", f"Paired differences against {b['run']} ({b['questions']} questions):", "",
                  *table_head("measure", "difference"),
                  *(table_row(name, f"{r['difference']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]")
                    for name, r in b.items() if isinstance(r, dict))]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a bench.qa run with the adapter's re-read and oracle rows")
    parser.add_argument("--untuned", type=Path, default=Path("bench/results/qa_reader.json"),
                        help="a bench.qa run with the untuned reader's oracle rows on the same questions")
    parser.add_argument("--before", type=Path, default=None, help="the same run with an earlier adapter")
    parser.add_argument("--probe-above", type=float, default=None,
                        help="score the run as if the answerability probe's threshold had been this (from its saved "
                             "scores); --before is then the same run as made")
    parser.add_argument("--results", default="qa_goals")
    args = parser.parse_args()
    load = lambda path: json.loads(path.read_text())  # noqa: E731
    run = load(args.run)
    if args.probe_above is not None:
        run = with_probe_threshold(run, args.probe_above)
    g = goals(run, load(args.untuned), load(args.before) if args.before else None, str(args.before))
    write_results(args.results, {"run": str(args.run), "untuned": str(args.untuned), "probe_above": args.probe_above,
                                 "before": str(args.before) if args.before else None, **g}, report(g))


if __name__ == "__main__":
    main()
