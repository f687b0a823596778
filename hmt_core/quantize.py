"""Int8 reading on CPU: SmoothQuant-style smoothing, then torch's dynamic int8 quantisation of the linear layers.

Plain dynamic int8 (torch.ao quantize_dynamic) quantises each linear layer's input with one scale per call, so a few
outlier channels decide the scale for every token. SmolLM2 has them: the down projections of layers 11 and 28 see
inputs above 2,000 while most channels stay below 20, and plain int8 of every linear layer takes perplexity from
about 40 to about 136. SmoothQuant (Xiao et al. 2023) moves that range into the weights: for a linear layer with
input x and weight W, x_j / s_j and W[:, j] * s_j give the same product, and the divisions fold into the RMSNorm
before q/k/v and before gate/up, so the smoothed model computes what the original computes (to float rounding)
before anything is quantised. s_j = max|x_j|^a / max|W[:, j]|^(1-a) from a short calibration text (calibration.txt,
a page of Moby-Dick, a training text of the HMT weights). The residual stream, the final norm and so HMT's memory
embeddings and token keys are untouched by the smoothing itself.

Even smoothed, the down projections' inputs are too uneven for one scale per call, so they stay fp32; everything
else (q, k, v, o, gate, up) is int8. bench.ingest, bench.recall, bench.ppl and bench.passkey measure the result.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .backbone import BackboneError, decoder_layers

QUANTIZATIONS = ("none", "int8")
CALIBRATION_TEXT = Path(__file__).with_name("calibration.txt")
SMOOTHING_ALPHA = 0.8  # chosen on a training text (Emma) against 0.5, 0.65 and 0.9
KEEP_FP32 = ("down_proj",)


def quantize_int8(model: nn.Module, tokenizer, alpha: float = SMOOTHING_ALPHA) -> nn.Module:
    """Smooth (smooth_activations on calibration.txt), then dynamic int8 of the decoder's linear layers except the
    down projections, in place: weights int8 per output channel, activations quantised on the fly, results fp32.
    The embeddings and the LM head stay fp32, so token and memory embeddings and the checkpoint's identity probe
    are unchanged. For reading and answering only: quantised layers have no gradients, and LoRA adapters (a
    checkpoint's, merged by load_checkpoint) must be in the weights before this runs."""
    first = next(model.parameters())
    if first.device.type != "cpu" or first.dtype != torch.float32:
        raise BackboneError(f"int8 quantisation runs on a cpu fp32 backbone, not {first.device.type} "
                            f"{str(first.dtype).replace('torch.', '')}; on a GPU use bf16 or fp16 instead")
    ids = tokenizer(CALIBRATION_TEXT.read_text(), add_special_tokens=False)["input_ids"]
    smooth_activations(model, ids, alpha)
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {name: per_channel_dynamic_qconfig for name, module in model.base_model.named_modules()
            if isinstance(module, nn.Linear) and not name.endswith(KEEP_FP32)}
    with warnings.catch_warnings():  # torch marks these kernels deprecated in favour of torchao; they run here
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        quantize_dynamic(model.base_model, spec, inplace=True)
    return model


def quantization(model: nn.Module) -> str:
    """'int8' when the backbone's linear layers are dynamically quantised (quantize_int8), else 'none'."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return "int8" if any(isinstance(m, DynamicLinear) for m in model.modules()) else "none"


@torch.no_grad()
def smooth_activations(model: nn.Module, ids: list[int], alpha: float = SMOOTHING_ALPHA, window: int = 256) -> None:
    """Rescale a Llama-style backbone in place so that the inputs of q/k/v and of gate/up have even channel
    ranges, without changing what it computes: per decoder layer, the input ranges max|x_j| over `ids` (read in
    windows of `window` tokens) and the weight ranges max|W[:, j]| give s_j; the RMSNorm weight is divided by s
    and the columns of the weights that read it are multiplied by s. (down_proj stays fp32, so it is not smoothed.)"""
    layers = decoder_layers(model)
    needed = ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")
    if not all(hasattr(layer, name) for layer in layers for name in needed):
        raise BackboneError("int8 quantisation needs a Llama-style backbone (input_layernorm, self_attn.q/k/v_proj, "
                            "post_attention_layernorm, mlp.gate/up/down_proj), as SmolLM2, Llama, Qwen2, Mistral")
    ranges: dict[nn.Module, torch.Tensor] = {}  # linear layer -> max |input| per input channel [d_in]

    def keep(module, inputs, _output):
        x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)  # [d_in]
        ranges[module] = torch.maximum(ranges[module], x) if module in ranges else x

    readers = [m for layer in layers for m in (layer.self_attn.q_proj, layer.mlp.gate_proj)]
    hooks = [m.register_forward_hook(keep) for m in readers]
    try:
        device = next(model.parameters()).device
        for i in range(0, len(ids), window):
            model.base_model(input_ids=torch.tensor([ids[i:i + window]], device=device))
    finally:
        for hook in hooks:
            hook.remove()
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        for norm, linears in ((layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj]),
                              (layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])):
            x_range = ranges[linears[0]].clamp(min=1e-5)  # [d_in]
            w_range = torch.cat([lin.weight for lin in linears]).abs().amax(0).clamp(min=1e-5)  # [d_in]
            s = (x_range ** alpha / w_range ** (1 - alpha)).clamp(min=1e-5)  # [d_in]
            norm.weight.div_(s)
            for lin in linears:
                lin.weight.mul_(s)
