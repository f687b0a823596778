"""LoRA adapters on the backbone (peft): added in place for training, saved with a checkpoint, merged for inference."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from peft import LoraModel

ADAPTER = "default"


def linear_layer_names(backbone: nn.Module) -> list[str]:
    """Short names of the backbone's linear layers (attention and MLP projections), never the LM head's."""
    from transformers.pytorch_utils import Conv1D

    head = backbone.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in backbone.named_modules()
                   if isinstance(module, (nn.Linear, Conv1D)) and module is not head})


def add_lora(backbone: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
             targets: list[str] | None = None) -> LoraModel:
    """Insert LoRA matrices into the `targets` layers (default: every linear layer but the head) in place; returns
    peft's LoraModel around the backbone, which can merge them."""
    from peft import LoraConfig, LoraModel

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(targets or linear_layer_names(backbone)))
    return LoraModel(backbone, config, ADAPTER)


def lora_settings(backbone: nn.Module) -> dict | None:
    """Rank, alpha, dropout and target layers of the backbone's adapters, or None when it carries none."""
    config = getattr(backbone, "peft_config", {}).get(ADAPTER)
    if config is None:
        return None
    return {"rank": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "targets": sorted(config.target_modules)}


def lora_parameters(backbone: nn.Module) -> list[nn.Parameter]:
    """The LoRA matrices of the backbone (empty when it carries none)."""
    return [p for name, p in backbone.named_parameters() if "lora_" in name]


def lora_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights under peft's names (without the adapter name), on the CPU."""
    from peft import get_peft_model_state_dict

    tensors = get_peft_model_state_dict(backbone, adapter_name=ADAPTER, save_embedding_layers=False)
    return {name: t.detach().contiguous().cpu() for name, t in tensors.items()}


def load_lora(backbone: nn.Module, settings: dict, tensors: dict[str, torch.Tensor], merge: bool) -> None:
    """Give the backbone the adapters `settings` describe, with weights `tensors`, merged into its base weights
    (inference: a plain backbone at full speed) or kept as adapters; a backbone that already carries adapters
    (a training run) gets the weights loaded into them."""
    from peft import set_peft_model_state_dict

    current = lora_settings(backbone)
    tuner = None
    if current is None:
        tuner = add_lora(backbone, settings["rank"], settings["alpha"], settings["dropout"], settings["targets"])
    elif any(current[key] != settings[key] for key in ("rank", "alpha", "targets")):
        raise ValueError(f"the backbone carries LoRA adapters {current}, the checkpoint has {settings}")
    expected = set(lora_state_dict(backbone))
    if set(tensors) != expected:
        raise ValueError(f"LoRA tensors {sorted(set(tensors) ^ expected)[:4]} do not match the adapters")
    with torch.no_grad():
        set_peft_model_state_dict(backbone, tensors, adapter_name=ADAPTER)
    if merge and tuner is not None:
        tuner.merge_and_unload()
