"""The perplexity benchmark's scoring: every method scores the same tokens, each from the context it claims."""

import torch
import torch.nn.functional as F

from bench.ppl import blocks_nll, memory_nll
from hmt_core import HMT, RMT, HMTConfig, RMTConfig


def hf_nll(backbone, ids: list[int]) -> float:
    """Summed NLL of ids[1:] from one plain forward over ids."""
    logits = backbone(torch.tensor([ids])).logits[0, :-1].float()
    return float(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))


def test_one_block_after_the_start_token_is_a_plain_forward(backbone):
    ids = torch.randint(0, 400, (40,)).tolist()
    nll, count = blocks_nll(backbone, ids, start=7, block=len(ids), context=0)
    assert count == len(ids) - 1
    assert abs(nll - (hf_nll(backbone, [7] + ids) - hf_nll(backbone, [7, ids[0]]))) < 1e-3


def test_a_window_longer_than_the_text_gives_every_token_its_whole_past(backbone):
    ids = torch.randint(0, 400, (30,)).tolist()
    nll, count = blocks_nll(backbone, ids, start=7, block=1, context=100)
    assert count == len(ids) - 1
    assert abs(nll - hf_nll(backbone, ids)) < 1e-3


def test_short_windows_lose_context(backbone):
    ids = torch.randint(0, 400, (48,)).tolist()
    whole, _ = blocks_nll(backbone, ids, start=7, block=4, context=100)
    short, count = blocks_nll(backbone, ids, start=7, block=4, context=2)
    assert count == len(ids) - 1 and abs(whole - short) > 1e-3


def test_memory_models_score_every_token_but_the_first(backbone):
    ids = torch.randint(0, 400, (50,)).tolist()
    hmt = HMT(backbone, HMTConfig(segment_length=16, sensory_size=4))
    rmt = RMT(backbone, RMTConfig(segment_length=16, num_memory_tokens=2))
    for model, mode in ((hmt, "recall"), (hmt, "segment"), (rmt, "direct")):
        nll, count = memory_nll(model, ids, mode)
        assert count == len(ids) - 1 and nll > 0
