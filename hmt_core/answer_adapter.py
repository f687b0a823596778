"""The answer adapter: a LoRA adapter on the backbone that answers short and grounded from re-read passages.

It is switched on only around the backbone calls that generate an answer (AnswerAdapter.on), so that everything the
memory path computes (reading, summaries, recall queries, token keys) sees the backbone the HMT weights were trained
on, and memories written with and without the adapter loaded are the same. It stays unmerged: merging and unmerging
around every answer would drift the base weights by rounding. Trained by hmt_core.training.train_answer.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from .answerability import AnswerabilityProbe, load_probe
from .backbone import backbone_identity, identity_mismatch

ADAPTER_NAME = "answer"  # peft's adapter name, apart from the HMT checkpoints' own ("default")
WEIGHTS_FILE = "answer_adapter.safetensors"
CONFIG_FILE = "answer_adapter.json"
# How the app answers with the adapter, chosen and fitted on training articles it never saw
# (hmt_core.training.fit_not_found --answer-adapter): how many passages its prompt holds, and the score of its
# own NOT_FOUND reply above which it is taken at its word, and the answerability probe's threshold.
ANSWERING_FILE = "answering.json"
FORMAT = 1


class AdapterError(ValueError):
    """An adapter that cannot be used with this backbone (another backbone, a quantised one, a bad folder)."""


class AnswerAdapter:
    """A loaded answer adapter: off except inside `with adapter.on():`. `prompt` is the system prompt it was trained
    with (answers follow it best) and `not_found` the reply it was trained to give when the passages do not say.
    From ANSWERING_FILE when the folder has one: `passages`, how many of the recalled passages its prompt holds (the
    rest are still shown), and `not_found_above`, the mean log-probability per token of answering `not_found` above
    which the answer is "not found" (hmt_core.answer.not_found_score), `quote`, whether answers are kept verbatim
    quotes of the passages (hmt_core.quoting), `end_bias`, the nats taken from the end of such a quote
    (hmt_core.quoting.QuoteGuard), and `probe_above`, the answerability probe's score above which the answer is
    "not found"; without the file, 3 passages, no such thresholds, no quoting and no end bias. `probe` is the
    answerability probe saved beside the adapter (hmt_core.answerability), if any."""

    def __init__(self, backbone: nn.Module, folder: Path, settings: dict) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.folder = folder
        self.settings = settings
        self.prompt: str = settings["prompt"]
        self.not_found: str = settings["not_found"]
        answering = json.loads((folder / ANSWERING_FILE).read_text()) if (folder / ANSWERING_FILE).exists() else {}
        self.passages: int = int(answering.get("passages", 3))
        above = answering.get("not_found_above")
        self.not_found_above: float | None = None if above is None else float(above)
        self.quote: bool = bool(answering.get("quote", False))
        self.end_bias: float = float(answering.get("end_bias", 0.0))
        self.probe: AnswerabilityProbe | None = load_probe(folder)
        probe_above = answering.get("probe_above") if self.probe is not None else None
        self.probe_above: float | None = None if probe_above is None else float(probe_above)
        self.layers = [m for m in backbone.modules() if isinstance(m, BaseTunerLayer)]
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.switch(False)

    def switch(self, on: bool) -> None:
        """Turn the adapter's LoRA layers on or off (the base weights are never touched)."""
        for layer in self.layers:
            layer.enable_adapters(on)
            if on:  # peft's enable_adapters marks the adapter trainable again; answering never trains it
                for p in layer.parameters():
                    p.requires_grad_(False)

    def says_not_found(self, score: float) -> bool:
        """Whether a prompt's not_found_score is above the adapter's threshold (never, without one)."""
        return self.not_found_above is not None and score > self.not_found_above

    def probe_says_not_found(self, score: float) -> bool:
        """Whether the answerability probe's score of a prompt is above its threshold (never, without one)."""
        return self.probe_above is not None and score > self.probe_above

    @contextmanager
    def on(self) -> Iterator[None]:
        """The adapter on for the calls inside, off again afterwards even when they fail."""
        self.switch(True)
        try:
            yield
        finally:
            self.switch(False)

    def describe(self) -> str:
        s = self.settings
        quoted = ", answers kept quotes of the passage" if self.quote else ""
        probe = ""
        if self.probe is not None:
            probe = ", an answerability probe" + (" saying 'not found'" if self.probe_above is not None else "")
        return f"LoRA rank {s['lora']['rank']}, trained on {s['training']['examples']} examples{quoted}{probe}"


def add_answer_lora(backbone: nn.Module, rank: int, alpha: float, dropout: float, targets: list[str],
                    layers: list[int] | None = None) -> None:
    """Insert the answer adapter's LoRA matrices into the `targets` linear layers of the decoder layers `layers`
    (0-based; default all) of the backbone, in place. Adapting only the upper layers makes training cheaper: the
    backward pass stops at the lowest adapted layer."""
    from peft import LoraConfig, LoraModel

    if any("lora_" in name for name, _ in backbone.named_parameters()):
        raise AdapterError("the backbone already carries LoRA adapters: load the answer adapter on a plain (merged) "
                           "backbone")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        layers_to_transform=layers)
    LoraModel(backbone, config, ADAPTER_NAME)


def adapter_tensors(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The answer adapter's weights under peft's names (without the adapter name), on the CPU."""
    from peft import get_peft_model_state_dict

    tensors = get_peft_model_state_dict(backbone, adapter_name=ADAPTER_NAME, save_embedding_layers=False)
    return {name: t.detach().contiguous().cpu() for name, t in tensors.items()}


def save_answer_adapter(backbone: nn.Module, folder: str | Path, settings: dict) -> None:
    """Write the adapter's weights and its settings (LoRA shape, prompt, not-found reply, training) to `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_tensors(backbone), str(folder / WEIGHTS_FILE))
    record = {"format": FORMAT, **settings, "backbone": backbone_identity(backbone)}
    (folder / CONFIG_FILE).write_text(json.dumps(record, indent=1) + "\n")


def load_answer_adapter(backbone: nn.Module, folder: str | Path) -> AnswerAdapter:
    """Add the adapter saved in `folder` to the backbone (off until AnswerAdapter.on). Refuses another backbone's
    adapter, a quantised backbone (its linear layers are no longer the ones the adapter wraps) and a backbone that
    already carries LoRA layers."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from .quantize import quantization

    folder = Path(folder)
    if not (folder / CONFIG_FILE).exists() or not (folder / WEIGHTS_FILE).exists():
        raise AdapterError(f"{folder} holds no answer adapter ({CONFIG_FILE} and {WEIGHTS_FILE})")
    settings = json.loads((folder / CONFIG_FILE).read_text())
    if settings.get("format") != FORMAT:
        raise AdapterError(f"{folder}: answer adapter format {settings.get('format')}, this code reads {FORMAT}")
    mismatch = identity_mismatch(settings["backbone"], backbone)
    if mismatch:
        raise AdapterError(f"the answer adapter in {folder} was trained on another backbone: {mismatch}")
    if quantization(backbone) != "none":
        raise AdapterError("the answer adapter needs the full-precision backbone; it cannot wrap int8 layers")
    lora = settings["lora"]
    add_answer_lora(backbone, lora["rank"], lora["alpha"], 0.0, lora["targets"], lora.get("layers"))
    tensors = load_file(str(folder / WEIGHTS_FILE))
    expected = set(adapter_tensors(backbone))
    if set(tensors) != expected:
        raise AdapterError(f"{folder}: adapter tensors {sorted(set(tensors) ^ expected)[:4]} do not match its settings")
    device = next(backbone.parameters()).device
    dtype = next(backbone.parameters()).dtype
    with torch.no_grad():
        set_peft_model_state_dict(backbone, {k: v.to(device, dtype) for k, v in tensors.items()},
                                  adapter_name=ADAPTER_NAME)
    return AnswerAdapter(backbone, folder, settings)
