"""Int8 reading: SmoothQuant-style smoothing computes what the backbone computed; quantize_int8 turns the right
linear layers into dynamic int8 ones and refuses backbones it cannot handle."""

import copy

import pytest
import torch
from tiny_models import make_backbone
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from hmt_core.backbone import BackboneError
from hmt_core.quantize import KEEP_FP32, quantization, quantize_int8, smooth_activations


def test_smoothing_keeps_the_outputs_and_evens_the_input_ranges(backbone):
    ids = torch.randint(0, 400, (1, 48))
    with torch.no_grad():
        backbone.model.layers[0].input_layernorm.weight.mul_(torch.linspace(0.1, 30.0, 32))  # outlier channels
        before = backbone(input_ids=ids).logits
    smoothed = copy.deepcopy(backbone)
    smooth_activations(smoothed, ids[0].tolist(), alpha=0.8, window=16)
    with torch.no_grad():
        after = smoothed(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)
    norm_before = backbone.model.layers[0].input_layernorm.weight
    norm_after = smoothed.model.layers[0].input_layernorm.weight
    assert not torch.allclose(norm_before, norm_after)
    spread = lambda w: (w.abs().max() / w.abs().min()).item()  # noqa: E731
    assert spread(norm_after) < spread(norm_before)


def test_quantize_int8_quantises_all_but_the_down_projections(backbone, tokenizer):
    ids = torch.randint(0, 400, (1, 24))
    with torch.no_grad():
        before = backbone(input_ids=ids).logits
    assert quantization(backbone) == "none"
    quantize_int8(backbone, tokenizer)
    assert quantization(backbone) == "int8"
    for layer in backbone.model.layers:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert isinstance(getattr(layer.self_attn, name), DynamicLinear)
        assert isinstance(layer.mlp.gate_proj, DynamicLinear) and isinstance(layer.mlp.up_proj, DynamicLinear)
        assert type(layer.mlp.down_proj) is torch.nn.Linear and KEEP_FP32 == ("down_proj",)
    assert type(backbone.lm_head) is torch.nn.Linear
    with torch.no_grad():
        after = backbone(input_ids=ids).logits
    assert after.shape == before.shape and torch.isfinite(after).all()
    assert torch.nn.functional.cosine_similarity(after.flatten(), before.flatten(), dim=0) > 0.95


def test_quantize_int8_refuses_what_it_cannot_handle(tokenizer):
    with pytest.raises(BackboneError, match="cpu fp32"):
        quantize_int8(make_backbone("llama").to(torch.bfloat16), tokenizer)
    with pytest.raises(BackboneError, match="Llama-style"):
        quantize_int8(make_backbone("gpt2"), tokenizer)
