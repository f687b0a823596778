"""Whether the passages in the re-read prompt hold the answer, read off the backbone's hidden states.

SQuAD 2.0's unanswerable questions were written against a paragraph to look answerable by it, so recall is as sure
of them as of answerable ones, and the answer adapter seldom says "not found" to them: how likely it finds the
first token of that reply tells them apart hardly better than chance (AUC 0.54 on the development articles). A linear
probe on the hidden states of a few decoder layers at the prompt's last position (where the answer's first token is
predicted), with the adapter on, does better (AUC 0.77 there, fitted on other training articles): the middle and upper
layers hold more of "this passage does not say" than the output head lets through. The probe is fitted by
hmt_core.training.train_answerability and saved beside the adapter it reads; its threshold is fitted on the
development articles by hmt_core.training.fit_not_found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

PROBE_FILE = "answerability.safetensors"


@dataclass
class AnswerabilityProbe:
    """score = weight . [h_l for l in layers] + bias, h_l the hidden state after decoder layer l (1-based) at the
    prompt's last position: the logit that the passages do NOT hold the answer (higher: less likely to)."""

    layers: list[int]
    weight: torch.Tensor  # [len(layers) * d]
    bias: float

    def score(self, captured: dict[int, torch.Tensor]) -> float:
        """The score of one prompt, from capture_hidden's states of its backbone call."""
        return float(self.scores(last_states(captured, self.layers)))

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """The scores of prompts' features ([..., len(layers) * d], as last_states gives them): [...]."""
        return features @ self.weight + self.bias


def last_states(captured: dict[int, torch.Tensor], layers: list[int]) -> torch.Tensor:
    """A probe's input from capture_hidden's states [1, n, d]: those of `layers` at the last position, joined,
    [len(layers) * d], in float32 on the CPU where the probe's weight is (whatever the backbone's device and dtype)."""
    return torch.cat([captured[i][0, -1].float().cpu() for i in layers])


def fit_probe(features: torch.Tensor, unanswerable: torch.Tensor, layers: list[int],
              l2: float = 1.0) -> AnswerabilityProbe:
    """Logistic regression of `unanswerable` [N] (1 or 0) on `features` [N, F], standardised per feature, with an L2
    penalty `l2` on the standardised weights (the features are many and the examples few: the penalty matters more
    than the solver); the standardisation is folded into the returned weight and bias."""
    mean, std = features.mean(0), features.std(0) + 1e-6  # [F]
    z = (features - mean) / std  # [N, F]
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")
    target = unanswerable.float()

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, target) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight = (w / std).detach()
    return AnswerabilityProbe(layers, weight, float(b.detach() - (mean * weight).sum()))


def auc(unanswerable_scores: torch.Tensor, answerable_scores: torch.Tensor) -> float:
    """How often an unanswerable question scores above an answerable one (ties count half)."""
    above = (unanswerable_scores[:, None] > answerable_scores[None, :]).float()
    ties = (unanswerable_scores[:, None] == answerable_scores[None, :]).float()
    return float((above + ties / 2).mean())


def save_probe(probe: AnswerabilityProbe, folder: str | Path, record: dict) -> None:
    """Write the probe to folder/PROBE_FILE, its layers and `record` (how it was fitted) in the file's metadata."""
    from safetensors.torch import save_file

    save_file({"weight": probe.weight.contiguous(), "bias": torch.tensor([probe.bias])}, str(Path(folder) / PROBE_FILE),
              metadata={"layers": json.dumps(probe.layers), "record": json.dumps(record)})


def load_probe(folder: str | Path) -> AnswerabilityProbe | None:
    """The probe saved in folder, or None when there is none."""
    from safetensors import safe_open

    path = Path(folder) / PROBE_FILE
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as f:
        layers = json.loads(f.metadata()["layers"])
        return AnswerabilityProbe(layers, f.get_tensor("weight"), float(f.get_tensor("bias")[0]))
