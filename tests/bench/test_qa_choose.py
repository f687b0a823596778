"""bench.qa_choose pairs saved bench.qa runs of candidate settings and applies the pre-registered rule."""

import json
import subprocess
import sys

from bench.qa_choose import choose, compare, report


def row(question: str, oracle: tuple[float, float], reread: tuple[float, float], words: int = 2) -> dict:
    return {"article": "A", "question": question,
            "oracle": {"contains": oracle[0], "f1": oracle[1], "words": words},
            "reread": {"contains": reread[0], "f1": reread[1], "words": words}}


def run(rows: list[dict]) -> dict:
    return {"articles": "dev", "rows": rows}


SHIPPED = run([row(f"q{i}", (0.0, 0.5), (0.0, 0.5)) for i in range(20)])
BETTER = run([row(f"q{i}", (1.0, 0.5), (0.0, 0.5), words=4) for i in range(20)])  # the oracle gains everywhere


def test_a_candidate_is_chosen_when_its_paired_gain_is_sure_and_the_guard_holds():
    result = compare([SHIPPED, BETTER], ["0", "2"], ["oracle", "reread"])
    assert result["questions"] == 20
    assert result["methods"]["oracle"]["2"]["against_first"]["difference"] == 0.5
    assert result["methods"]["oracle"]["2"]["words"] == 4
    assert choose(result, ["0", "2"], "oracle", "reread") == "2"


def test_the_shipped_setting_stays_when_the_guard_falls_or_the_gain_is_unsure():
    worse_reread = run([row(f"q{i}", (1.0, 0.5), (0.0, 0.25)) for i in range(20)])
    result = compare([SHIPPED, worse_reread], ["0", "2"], ["oracle", "reread"])
    assert choose(result, ["0", "2"], "oracle", "reread") == "0"
    unsure = run([row(f"q{i}", (float(i == 0), 0.5), (0.0, 0.5)) for i in range(20)])  # one question gained
    result = compare([SHIPPED, unsure], ["0", "2"], ["oracle", "reread"])
    assert result["methods"]["oracle"]["2"]["against_first"]["ci"][0] <= 0
    assert choose(result, ["0", "2"], "oracle", None) == "0"


def test_only_the_questions_every_run_has_are_compared():
    fewer = run(BETTER["rows"][:5])
    result = compare([SHIPPED, fewer], ["0", "2"], ["oracle"])
    assert result["questions"] == 5


def test_the_command_refuses_held_out_runs(tmp_path):
    held_out = tmp_path / "eval.json"
    held_out.write_text(json.dumps({**SHIPPED, "articles": "eval"}))
    out = subprocess.run([sys.executable, "-m", "bench.qa_choose", str(held_out), str(held_out), "--names", "a", "b",
                          "--decide", "oracle", "--results", "x"], capture_output=True, text=True)
    assert out.returncode != 0 and "development articles" in out.stderr


def test_the_report_names_the_choice():
    result = compare([SHIPPED, BETTER], ["0", "2"], ["oracle"])
    result.update(decide="oracle", guard=None, chosen="2")
    table = report(result, ["0", "2"])
    assert "| 2 | 1.000 | 0.500 | 0.750 [0.750, 0.750] | +0.500 [+0.500, +0.500] | 4.0 |" in table
    assert "Chosen: **2**" in table
