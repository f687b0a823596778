"""bench.qa_goals pairs saved bench.qa runs question by question and reads the goals off them."""

from bench.qa_goals import goals, oracle_of, ratio, report, with_probe_threshold


def answer(f1: float, contains: float, found: bool = True, below: bool = False) -> dict:
    return {"f1": f1, "contains": contains, "found": found, "below_threshold": below, "reader_above": False}


def rate(mean: float) -> dict:
    return {"mean": mean, "ci": [mean, mean], "n": 2}


def test_ratio_is_of_sums_and_its_interval_holds_it():
    r = ratio([1.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5])
    assert r["ratio"] == 1.5 and r["ci"][0] <= 1.5 <= r["ci"][1]
    assert ratio([2.0] * 5, [1.0] * 5)["ci"] == [2.0, 2.0]


def test_goals_pair_the_runs_by_question_and_count_not_found_as_wrong_for_the_app():
    run = {"app_method": "reread_adapter_1", "answer_adapter": "new", "rows": [
        {"article": "A", "question": "q1", "reread_adapter_1": answer(0.5, 1.0), "oracle_adapter": answer(1.0, 1.0)},
        {"article": "A", "question": "q2", "reread_adapter_1": answer(0.5, 0.0, below=True),
         "oracle_adapter": answer(1.0, 0.0)},
        {"article": "B", "question": "q3", "reread_adapter_1": answer(1.0, 1.0), "oracle_adapter": answer(1.0, 1.0)}],
        "not_found": {"answerable": {"app": rate(0.5)}, "squad2": {"app": rate(0.25)}}}
    untuned = {"rows": [{"article": "A", "question": "q2", "oracle": answer(0.25, 1.0)},
                        {"article": "A", "question": "q1", "oracle": answer(0.25, 1.0)}]}
    before = {"answer_adapter": "old", "app_method": "reread_adapter_1", "rows": [
        {"article": "A", "question": "q1", "reread_adapter_1": answer(0.0, 0.0), "oracle_adapter": answer(0.5, 0.0)},
        {"article": "A", "question": "q2", "reread_adapter_1": answer(0.5, 0.0), "oracle_adapter": answer(0.5, 1.0)}]}
    g = goals(run, untuned, before, "old.json")
    assert g["questions"] == 2  # q3 has no untuned answer to pair with
    assert g["oracle_f1_vs_untuned"]["ratio"] == 4.0 and g["oracle_contains_vs_untuned"]["ratio"] == 0.5
    assert g["reread_f1_vs_oracle"]["ratio"] == 0.5
    assert g["app_f1_vs_oracle"]["ratio"] == 0.25  # q2 was told "not found"
    assert g["before"]["reread_f1"]["difference"] == 0.25 and g["before"]["app_f1"]["difference"] == 0.0
    assert g["before"]["answerable_not_found"]["difference"] == 0.5
    table = report(g)
    assert "| token F1 with the gold segment / the untuned reader's | 4.000 [4.000, 4.000] | >= 2 |" in table
    assert "Paired differences against old.json (2 questions)" in table


def test_the_oracle_of_a_quoted_reread_is_the_quoted_oracle():
    assert oracle_of("reread_adapter_1") == "oracle_adapter"
    assert oracle_of("reread_adapter_1_quoted") == "oracle_adapter_quoted"
    assert oracle_of("reread_1") == "oracle"


def test_a_run_is_scored_again_at_another_probe_threshold_from_its_saved_scores():
    def probed(score: float, found: bool = True) -> dict:
        return {**answer(1.0, 1.0, found=found), "unanswerable_score": score, "probe_above": score > 0.5}

    run = {"app_method": "reread_adapter_1",
           "rows": [{"article": "A", "question": "q1", "reread_adapter_1": probed(0.9)},
                    {"article": "A", "question": "q2", "reread_adapter_1": probed(0.2)}],
           "negatives": [{**probed(0.7), "kind": "squad2"}, {**probed(0.1, found=False), "kind": "other_article"}]}
    higher = with_probe_threshold(run, 1.0)
    assert higher["not_found"]["answerable"]["app"]["mean"] == 0.0  # the probe no longer fires on q1
    assert higher["not_found"]["squad2"]["app"]["mean"] == 0.0
    assert higher["not_found"]["other_article"]["app"]["mean"] == 1.0  # the reader said so itself
    assert with_probe_threshold(run, 0.5)["not_found"]["answerable"]["app"]["mean"] == 0.5
    assert run["rows"][0]["reread_adapter_1"]["probe_above"]  # the saved run is left as it was
