"""The needle-memory diagnostic: outlier ranks and one trial on a tiny model."""

import random

import pytest
import torch

from bench import common, needle_memory
from hmt_core import HMT, HMTConfig


def test_outlier_rank_finds_the_odd_row_and_ignores_the_first():
    vectors = torch.zeros(6, 3)
    vectors[0] = 100.0  # the first segment: left out of the comparison
    vectors[4] = 5.0
    vectors[2] = 1.0
    assert needle_memory.outlier_rank(vectors, 4) == 1
    assert needle_memory.outlier_rank(vectors, 2) == 2
    assert needle_memory.outlier_rank(vectors, 3) == 3  # ties count in its favour


@pytest.fixture
def model(backbone):
    torch.manual_seed(0)
    return HMT(backbone, HMTConfig(segment_length=32, sensory_size=4))


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_a_trial_reports_ranks_within_the_segments_read(model, tokenizer, seed):
    row, deviation = needle_memory.needle_trial(model, tokenizer, 300, random.Random(seed))
    assert 1 <= row["needle_segment"] < row["segments"]
    assert 1 <= row["outlier_rank_memory"] < row["segments"] and 1 <= row["outlier_rank_key"] < row["segments"]
    assert 1 <= row["recall_rank"] <= row["segments"]
    assert -1 <= row["cos_needle_filler"] <= 1 and -1 <= row["cos_filler_filler"] <= 1
    assert deviation.shape == (model.config.recall_size,) and deviation.norm() > 0


def test_a_needle_in_the_first_segment_is_skipped(model, tokenizer):
    haystack = common.make_haystack(tokenizer, 300, random.Random(2))
    assert len(tokenizer(haystack.text[:haystack.needle_start])["input_ids"]) < 32  # seed 2 puts it there
    assert needle_memory.needle_trial(model, tokenizer, 300, random.Random(2)) is None


def test_too_few_segments_is_refused(backbone, tokenizer):
    model = HMT(backbone, HMTConfig(segment_length=256, sensory_size=4))
    with pytest.raises(ValueError, match="at least 4"):
        needle_memory.needle_trial(model, tokenizer, 300, random.Random(0))
