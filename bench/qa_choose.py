"""Choose an answering setting between saved bench.qa runs of the same questions (development articles only).

Each run is one candidate value of a setting (an end bias, a prompt); the first is the one shipped. For each method
the runs share (the gold segment's `oracle_*` row, the re-read's `reread_*` row), the table gives contains-match,
token F1, their mean and the answers' length, each candidate paired with the first on the same questions (95%
bootstrap intervals). The rule it applies, written down before the runs (README, 'The answer adapter and "not
found"'): the candidate with the highest mean of contains and F1 on the `--decide` rows is chosen, if its paired gain
in that mean over the first has an interval above 0 and the `--guard` rows' same mean does not fall; else the
first stays. No model is loaded.

    python -m bench.qa_choose bench/results/endbias/qa_dev_end{0,1,2,3}.json --names 0 1 2 3 \
        --decide oracle_adapter_quoted --guard reread_adapter_1_quoted --results endbias/choice

Writes bench/results/<results>.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import bootstrap, table_head, table_row, write_results
from bench.qa_goals import by_question, difference


def mean_score(row: dict) -> float:
    """The mean of a method row's contains-match and token F1."""
    return (row["contains"] + row["f1"]) / 2


def compare(runs: list[dict], names: list[str], methods: list[str]) -> dict:
    """Per method and candidate: contains, F1, their mean (with intervals), words, and the mean's paired difference
    from the first run, on the questions every run has."""
    rows = [by_question(r) for r in runs]
    keys = [k for k in rows[0] if all(k in r for r in rows[1:])]
    out = {}
    for m in methods:
        first = [mean_score(rows[0][k][m]) for k in keys]
        out[m] = {}
        for name, by in zip(names, rows):
            mine = [by[k][m] for k in keys]
            means = [mean_score(r) for r in mine]
            out[m][name] = {
                "contains": sum(r["contains"] for r in mine) / len(mine),
                "f1": sum(r["f1"] for r in mine) / len(mine),
                "mean": sum(means) / len(means), "mean_ci": bootstrap(means),
                "words": sum(r["words"] for r in mine) / len(mine),
                "against_first": difference(means, first)}
    return {"questions": len(keys), "methods": out}


def choose(result: dict, names: list[str], decide: str, guard: str | None) -> str:
    """The pre-registered rule (module docstring): the chosen candidate's name."""
    scores = result["methods"][decide]
    best = max(names, key=lambda n: scores[n]["mean"])
    if best == names[0] or scores[best]["against_first"]["ci"][0] <= 0:
        return names[0]
    if guard is not None and result["methods"][guard][best]["against_first"]["difference"] < 0:
        return names[0]
    return best


def report(result: dict, names: list[str]) -> str:
    lines = [f"# Answering setting, chosen on {result['questions']} development questions", ""]
    for m, scores in result["methods"].items():
        lines += [f"## {m}", "", *table_head("candidate", "contains", "token F1", "mean of the two",
                                             "paired with the first", "words")]
        for n in names:
            s, d = scores[n], scores[n]["against_first"]
            lines.append(table_row(n, f"{s['contains']:.3f}", f"{s['f1']:.3f}",
                                   f"{s['mean']:.3f} [{s['mean_ci'][0]:.3f}, {s['mean_ci'][1]:.3f}]",
                                   f"{d['difference']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]",
                                   f"{s['words']:.1f}"))
        lines.append("")
    lines.append(f"Chosen: **{result['chosen']}** (decided on {result['decide']}, guarded by {result['guard']}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="bench.qa result files, the shipped setting first")
    parser.add_argument("--names", nargs="+", required=True, help="one name per run")
    parser.add_argument("--decide", required=True, help="the method row the rule decides on")
    parser.add_argument("--guard", default=None, help="a method row whose mean must not fall")
    parser.add_argument("--results", required=True)
    args = parser.parse_args()
    if len(args.names) != len(args.runs):
        parser.error("give one name per run")
    runs = [json.loads(Path(p).read_text()) for p in args.runs]
    if any(r.get("articles") != "dev" for r in runs):
        parser.error("choose on the development articles' runs only (bench.qa --articles dev)")
    methods = [args.decide] + ([args.guard] if args.guard else [])
    result = compare(runs, args.names, methods)
    result.update(runs=args.runs, decide=args.decide, guard=args.guard,
                  chosen=choose(result, args.names, args.decide, args.guard))
    write_results(args.results, result, report(result, args.names))


if __name__ == "__main__":
    main()
