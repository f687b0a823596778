import json

import pytest
import torch
from tiny_models import make_backbone

from hmt_core import HMT, RMT, CheckpointError, HMTConfig, RMTConfig, load_checkpoint, save_checkpoint
from hmt_core.training.lora import add_lora, linear_layer_names, lora_parameters, lora_settings
from hmt_core.training.train import trainable_parameters


def _lora_hmt(family: str = "llama", rank: int = 4) -> HMT:
    """A tiny HMT whose backbone carries LoRA adapters with non-zero B matrices (so they change the output)."""
    backbone = make_backbone(family)
    add_lora(backbone, rank=rank, alpha=8)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return HMT(backbone, HMTConfig(segment_length=8, sensory_size=2))


@pytest.mark.parametrize("family,names", [
    ("llama", ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]),
    ("gpt2", ["c_attn", "c_fc", "c_proj"])])
def test_default_targets_are_the_linear_layers_but_the_head(family, names):
    backbone = make_backbone(family)
    assert linear_layer_names(backbone) == names
    add_lora(backbone)
    assert lora_settings(backbone) == {"rank": 8, "alpha": 16.0, "dropout": 0.0, "targets": names}
    assert not [n for n, _ in backbone.get_output_embeddings().named_parameters() if "lora_" in n]


def test_lora_training_changes_only_the_adapters_and_the_memory():
    backbone = make_backbone("llama")
    add_lora(backbone, rank=4)
    model = HMT(backbone, HMTConfig(segment_length=8, sensory_size=2))
    params = trainable_parameters(model, "lora")
    trained = {id(p) for p in params}
    assert trained == {id(p) for p in lora_parameters(backbone)} | {id(p) for p in model.memory_parameters().values()}
    assert all(p.requires_grad == (id(p) in trained) for p in model.parameters())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(2):
        model(torch.randint(0, 400, (2, 24))).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert {name for name in changed if "lora_" not in name} == {"summary_prompt", "initial_memory", "wq.weight",
                                                                    "wk.weight"}
    assert any("lora_B" in name for name in changed)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_checkpoint_with_lora_reproduces_the_trained_logits(family, tmp_path):
    model = _lora_hmt(family)
    ids = torch.randint(0, 400, (1, 20))
    with torch.no_grad():
        expected = torch.cat(model(ids, return_logits=True).logits, 1)
    save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "lora.safetensors", "memory_config.json", "memory_params.safetensors"]
    meta = json.loads((tmp_path / "ckpt" / "memory_config.json").read_text())
    assert meta["lora"]["rank"] == 4 and meta["lora"]["alpha"] == 8 and meta["lora"]["targets"]
    for merge in (True, False):
        loaded = load_checkpoint(tmp_path / "ckpt", make_backbone(family), merge_lora=merge)
        assert bool(lora_parameters(loaded.backbone)) is not merge
        with torch.no_grad():
            logits = torch.cat(loaded(ids, return_logits=True).logits, 1)
        assert torch.allclose(logits, expected, atol=1e-5)
    plain = make_backbone(family)
    with torch.no_grad():
        base = torch.cat(HMT(plain, model.config)(ids, return_logits=True).logits, 1)
    assert not torch.allclose(base, expected, atol=1e-3)  # the adapters matter


def test_checkpoint_without_lora_leaves_the_backbone_alone(tmp_path):
    save_checkpoint(RMT(make_backbone("llama"), RMTConfig(segment_length=8)), tmp_path / "ckpt")
    assert "lora" not in json.loads((tmp_path / "ckpt" / "memory_config.json").read_text())
    backbone = make_backbone("llama")
    loaded = load_checkpoint(tmp_path / "ckpt", backbone)
    assert lora_settings(loaded.backbone) is None
    assert all(torch.equal(p, q) for p, q in zip(backbone.state_dict().values(),
                                                  make_backbone("llama").state_dict().values()))


def test_lora_checkpoint_that_does_not_fit_is_refused(tmp_path):
    save_checkpoint(_lora_hmt(rank=4), tmp_path / "ckpt")
    other = make_backbone("llama")
    add_lora(other, rank=2)
    with pytest.raises(CheckpointError, match="LoRA"):
        load_checkpoint(tmp_path / "ckpt", other, merge_lora=False)
    (tmp_path / "ckpt" / "lora.safetensors").unlink()
    with pytest.raises(CheckpointError, match="LoRA"):
        load_checkpoint(tmp_path / "ckpt", make_backbone("llama"))


def test_lora_checkpoint_is_refused_by_a_quantised_backbone(tmp_path, tokenizer):
    from hmt_core.quantize import quantize_int8

    save_checkpoint(_lora_hmt(rank=4), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="before quantising"):
        load_checkpoint(tmp_path / "ckpt", quantize_int8(make_backbone("llama"), tokenizer))
