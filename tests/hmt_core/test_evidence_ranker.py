"""The evidence ranker: a cross-encoder over (question, sentence) pairs on a sentence encoder with LoRA and a head;
its scores untrained (all equal) and after a few training steps (the positive first), padding that leaves a pair's
score as it is, saving and loading, and the folders it refuses. A tiny random encoder here; the shipped ranker on
the real all-MiniLM-L6-v2 in the slow test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import make_tokenizer, tiny_bert

from hmt_core.evidence_ranker import (CONFIG_FILE, WEIGHTS_FILE, RankerError, load_ranker, new_ranker,
                                      ranker_tensors, save_ranker)
from hmt_core.training.train_evidence import batch_loss

QUESTION = "Who kept the lamp burning?"
SENTENCES = ["Wren kept the lamp burning every night.", "The storm cut the island off for nineteen days.",
             "The guild met in 1902."]


@pytest.fixture
def encoder_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "encoder"
    tiny_bert().save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def trained(folder: Path, steps: int = 60):
    """A tiny ranker trained for a few steps to put SENTENCES[0] first for QUESTION."""
    torch.manual_seed(0)
    ranker = new_ranker(rank=4, alpha=8.0, dropout=0.0, encoder=str(folder))
    params = [p for name, p in ranker.named_parameters() if "lora_" in name or name.startswith("head.")]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    example = {"question": QUESTION, "positive": SENTENCES[0], "negatives": SENTENCES[1:]}
    ranker.train()
    for _ in range(steps):
        loss, _ = batch_loss(ranker, [example])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return ranker


def test_an_untrained_ranker_scores_every_sentence_alike(encoder_folder):
    ranker = new_ranker(encoder=str(encoder_folder))
    assert ranker.scores(QUESTION, SENTENCES) == [0.0, 0.0, 0.0]
    assert ranker.scores(QUESTION, []) == []
    assert all(p.requires_grad for name, p in ranker.named_parameters() if "lora_" in name)
    assert not any(p.requires_grad for name, p in ranker.encoder.named_parameters() if "lora_" not in name)
    assert not any("pooler" in name for name in ranker_tensors(ranker))  # LoRA on the encoder layers only


def test_training_puts_the_positive_first_and_padding_changes_no_score(encoder_folder):
    ranker = trained(encoder_folder)
    scores = ranker.scores(QUESTION, SENTENCES)
    assert scores[0] > max(scores[1:]) + 1.0
    alone = ranker.scores(QUESTION, SENTENCES[2:])  # unpadded, where beside the others it was padded
    assert alone[0] == pytest.approx(scores[2], abs=1e-4)
    loss, top1 = batch_loss(ranker.eval(), [{"question": QUESTION, "positive": SENTENCES[0],
                                             "negatives": SENTENCES[1:]}])
    assert top1 == 1.0 and loss.item() < 0.5


def test_a_saved_ranker_loads_with_the_same_scores_and_frozen(encoder_folder, tmp_path):
    ranker = trained(encoder_folder, steps=5)
    save_ranker(ranker, tmp_path / "ranker", {"questions": 1})
    loaded = load_ranker(tmp_path / "ranker")
    assert loaded.scores(QUESTION, SENTENCES) == pytest.approx(ranker.scores(QUESTION, SENTENCES), abs=1e-5)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert "LoRA rank 4" in loaded.describe() and "1 questions" in loaded.describe()


def test_folders_without_a_usable_ranker_are_refused(encoder_folder, tmp_path):
    with pytest.raises(RankerError, match="holds no evidence ranker"):
        load_ranker(tmp_path)
    ranker = trained(encoder_folder, steps=1)
    folder = tmp_path / "ranker"
    save_ranker(ranker, folder, {})
    record = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**record, "format": 99}))
    with pytest.raises(RankerError, match="format 99"):
        load_ranker(folder)
    (folder / CONFIG_FILE).write_text(json.dumps({**record, "lora": {**record["lora"], "rank": 2}}))
    with pytest.raises(RankerError, match="do not match"):
        load_ranker(folder)
    (folder / WEIGHTS_FILE).write_bytes(b"not tensors")
    with pytest.raises(RankerError, match="not a safetensors file"):
        load_ranker(folder)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(RankerError, match="holds no evidence ranker"):
        load_ranker(folder)
