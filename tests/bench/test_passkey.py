"""The passkey benchmark: haystack construction, finding the needle's segment, resuming, and the results table."""

import argparse
import json
import random

import pytest
import torch

from bench import common, passkey
from hmt_core import HMT, HMTConfig, save_checkpoint


@pytest.fixture
def model(backbone):
    torch.manual_seed(0)
    return HMT(backbone, HMTConfig(segment_length=32, sensory_size=4))


def run(model, tokenizer, folder, trials=1, modes=("reread", "faithful"), seed=0):
    """The benchmark at 300 tokens into `folder`, as main() runs it without HMT weights."""
    args = argparse.Namespace(model="tiny-llama", hmt_weights=None, quantize="none", seed=seed,
                              max_new_tokens=8)
    return passkey.run_benchmark(model, tokenizer, passkey.settings_for(args, model), [300], trials, list(modes),
                                 folder, "passkey_untrained")


@pytest.mark.parametrize("trial", range(6))
def test_haystack_has_the_target_length_and_one_needle_at_a_sentence_boundary(tokenizer, trial):
    haystack = common.make_haystack(tokenizer, 300, random.Random(trial))
    assert abs(haystack.tokens - 300) <= 0.05 * 300
    assert haystack.tokens == len(tokenizer(haystack.text, add_special_tokens=False)["input_ids"])
    needle = common.NEEDLE.format(key=haystack.key)
    assert 10000 <= haystack.key <= 99999
    assert haystack.text.count(needle) == 1 and haystack.text.count(str(haystack.key)) == 2
    assert haystack.text.count("pass key") == 2
    assert haystack.text.index(needle) == haystack.needle_start
    assert haystack.needle_start == 0 or haystack.text[:haystack.needle_start].endswith(". ")


def test_needle_depth_spreads_over_the_document(tokenizer):
    depths = [h.needle_start / len(h.text) for h in (common.make_haystack(tokenizer, 300, random.Random(i))
                                                    for i in range(30))]
    assert min(depths) < 0.25 and max(depths) > 0.75


def test_the_needle_segment_covers_the_needle_start(model, tokenizer):
    for trial in range(4):
        haystack = common.make_haystack(tokenizer, 300, random.Random(trial))
        state = common.read_haystack(model, tokenizer, haystack.text)
        assert sum(s.num_tokens for s in state.segments) == haystack.tokens
        assert state.cache.shape[0] == state.num_segments  # every segment stays recallable
        seg = state.segments[common.needle_segment(state, haystack.needle_start)]
        assert seg.char_start <= haystack.needle_start < seg.char_end
        needle, covered = common.NEEDLE.format(key=haystack.key), haystack.text[haystack.needle_start:seg.char_end]
        assert covered.startswith(needle) or needle.startswith(covered)


def test_answering_leaves_the_read_state_as_it_was(model, tokenizer):
    haystack = common.make_haystack(tokenizer, 300, random.Random(0))
    state = common.read_haystack(model, tokenizer, haystack.text)
    cache, segments, text = state.cache.clone(), list(state.segments), state.sources["haystack"].text
    first = [passkey.hmt_answer(model, tokenizer, state, mode, 8) for mode in ("reread", "faithful")]
    assert torch.equal(state.cache, cache) and state.segments == segments
    assert state.sources["haystack"].text == text and list(state.sources) == ["haystack"]
    assert first[0][1].shape == (state.num_segments,)
    again = [passkey.hmt_answer(model, tokenizer, state, mode, 8) for mode in ("reread", "faithful")]
    assert [a for a, _ in first] == [a for a, _ in again]


def test_a_trial_records_every_method_and_the_needle_rank(model, tokenizer):
    result = passkey.run_trial(model, tokenizer, 300, 0, 0, ["reread", "faithful"], 8)
    assert set(result["hmt"]) == {"reread", "faithful"}
    assert all(isinstance(r["pass"], bool) for r in result["hmt"].values())
    assert 1 <= result["needle_rank"] <= result["segments"]
    assert result["needle_rank"] == result["hmt"]["reread"]["needle_rank"]
    assert result["hmt"]["faithful"]["needle_rank"] >= 1
    assert result["plain"]["fits"] and isinstance(result["plain"]["answer"], str)


def test_the_plain_backbone_is_skipped_past_its_window(model, tokenizer, tmp_path):
    haystack = common.make_haystack(tokenizer, 300, random.Random(0))
    model.backbone.config.max_position_embeddings = 300
    assert passkey.plain_result(model.backbone, tokenizer, haystack, 8) == {"fits": False}
    run(model, tokenizer, tmp_path, 1, ["faithful"])
    assert "| does not fit |" in (tmp_path / "passkey_untrained.md").read_text()


def test_a_rerun_skips_finished_trials_and_renders_the_table(model, tokenizer, tmp_path, monkeypatch, capsys):
    run(model, tokenizer, tmp_path, 1)
    saved = json.loads((tmp_path / "passkey_untrained.json").read_text())
    calls, run_trial = [], passkey.run_trial
    monkeypatch.setattr(passkey, "run_trial", lambda *a: calls.append(a[2:4]) or run_trial(*a))
    data = run(model, tokenizer, tmp_path, 2)
    assert calls == [(300, 1)]
    assert data["trials"][0] == saved["trials"][0] and [t["trial"] for t in data["trials"]] == [0, 1]
    assert json.loads((tmp_path / "passkey_untrained.json").read_text())["summary"][0]["trials"] == 2
    run(model, tokenizer, tmp_path, 2)
    assert len(calls) == 1  # nothing left to do
    table = (tmp_path / "passkey_untrained.md").read_text().splitlines()
    assert table[0].startswith("Passkey retrieval") and "segment L 32, cache N 300, sensory k 4" in table[0]
    assert common.PASSKEY_QUESTION in table[0] and "HMT weights untrained" in table[0]
    assert table[2].startswith("| tokens") and table[3] == "|---" * 12 + "|"
    assert len(table) == 5 and table[4].startswith("| 300 / ") and table[4].count("(") == 6  # 3 answers, 3 ranks
    assert "300 tokens, trial 2/2:" in capsys.readouterr().out


def test_a_run_with_other_settings_is_refused(model, tokenizer, tmp_path):
    run(model, tokenizer, tmp_path, 1, ["faithful"])
    with pytest.raises(SystemExit, match="other settings"):
        run(model, tokenizer, tmp_path, 1, ["faithful"], seed=1)


def test_a_missing_mode_reruns_the_trial_and_an_empty_column_reads_as_such(model, tokenizer, tmp_path):
    data = run(model, tokenizer, tmp_path, 1, ["faithful"])
    assert "| - |" in (tmp_path / "passkey_untrained.md").read_text()
    assert data["summary"][0]["hmt_reread"] == [0, 0]
    data = run(model, tokenizer, tmp_path, 1)
    assert len(data["trials"]) == 1 and set(data["trials"][0]["hmt"]) == {"reread", "faithful"}


@pytest.mark.slow
def test_the_real_backbone_at_1000_tokens(tmp_path):
    passkey.main(["--lengths", "1000", "--trials", "1", "--results-dir", str(tmp_path)])
    data = json.loads((tmp_path / "passkey_untrained.json").read_text())
    (trial,) = data["trials"]
    assert abs(trial["tokens"] - 1000) <= 30 and trial["segments"] == 4
    assert trial["plain"]["fits"] and set(trial["hmt"]) == {"reread", "faithful"}
    assert data["settings"]["window"] == 8192
    table = (tmp_path / "passkey_untrained.md").read_text()
    assert "segment L 256, cache N 300, sensory k 32" in table and "| 1,000 / " in table


def test_trained_weights_and_their_steps_reach_the_header(model, tokenizer, tmp_path):
    save_checkpoint(model, tmp_path / "weights", extra={"steps": 7})
    args = argparse.Namespace(model="tiny-llama", hmt_weights=str(tmp_path / "weights"), quantize="none",
                              seed=0, max_new_tokens=8)
    settings = passkey.settings_for(args, model)
    assert settings["hmt_steps"] == 7
    data = passkey.run_benchmark(model, tokenizer, settings, [300], 1, ["faithful"], tmp_path, "passkey")
    assert f"HMT weights {tmp_path / 'weights'} (7 training steps)" in passkey.markdown(data)
