import pytest
import torch
from safetensors.torch import save_file
from tiny_models import CORPUS, make_backbone

from hmt_core import (HMT, RMT, CheckpointError, HMTConfig, MemoryState, RMTConfig, import_reference,
                      load_checkpoint, read_text, save_checkpoint)


def test_memory_state_round_trips_exactly(backbone, tokenizer, tmp_path):
    model = HMT(backbone, HMTConfig(segment_length=16, sensory_size=4))
    state = read_text(model, tokenizer, " ".join(CORPUS * 3), source="a.txt")
    state.save(tmp_path / "mem")
    loaded = MemoryState.load(tmp_path / "mem")
    assert torch.equal(loaded.cache, state.cache)
    assert loaded.segments == state.segments and loaded.sources == state.sources
    assert loaded.sensory_ids == state.sensory_ids and loaded.cache_segments == state.cache_segments
    state.save(tmp_path / "mem")  # overwriting an existing folder works and leaves no temporary folder behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mem"]


def test_the_cache_capacity_is_kept_and_read_from_older_states(backbone, tokenizer, tmp_path):
    import json

    model = HMT(backbone, HMTConfig(segment_length=16, sensory_size=4, cache_size=3))
    state = model.new_state(keep=500)
    assert state.capacity == 500
    state = read_text(model, tokenizer, " ".join(CORPUS * 3), source="a.txt", state=state)
    assert state.cache.shape[0] == state.num_segments  # 500 kept, though reading recalls over the newest 3
    state.save(tmp_path / "mem")
    assert MemoryState.load(tmp_path / "mem").capacity == 500
    data = json.loads((tmp_path / "mem" / "state.json").read_text())
    data["meta"] = {"cache_size": 7}  # how states saved before the capacity field said it
    del data["capacity"]
    (tmp_path / "mem" / "state.json").write_text(json.dumps(data))
    assert MemoryState.load(tmp_path / "mem").capacity == 7
    assert RMT(backbone, RMTConfig(segment_length=16)).new_state().capacity == 0


def test_memory_state_moves_between_devices_and_dtypes(backbone, tokenizer):
    state = read_text(HMT(backbone, HMTConfig(segment_length=16)), tokenizer, CORPUS[0])
    moved = state.copy().to("cpu", torch.bfloat16)
    assert moved.cache.dtype == torch.bfloat16 and state.cache.dtype == torch.float32


def test_damaged_memory_state_is_reported(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="missing or damaged"):
        MemoryState.load(tmp_path / "bad")


@pytest.mark.parametrize("cls,config", [(HMT, HMTConfig(segment_length=16, cache_size=7)),
                                        (RMT, RMTConfig(segment_length=16, num_memory_tokens=3))])
def test_checkpoint_round_trips_exactly(cls, config, tmp_path):
    model = cls(make_backbone("llama"), config)
    save_checkpoint(model, tmp_path / "ckpt", extra={"steps": 5})
    loaded = load_checkpoint(tmp_path / "ckpt", make_backbone("llama"))
    assert type(loaded) is cls and loaded.config == model.config
    for name, p in model.memory_parameters().items():
        assert torch.equal(loaded.memory_parameters()[name], p)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["memory_config.json", "memory_params.safetensors"]


def test_checkpoint_for_another_backbone_is_refused(tmp_path):
    save_checkpoint(HMT(make_backbone("llama", seed=0)), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="embedding weights differ"):
        load_checkpoint(tmp_path / "ckpt", make_backbone("llama", seed=1))
    with pytest.raises(CheckpointError, match="model_type"):
        load_checkpoint(tmp_path / "ckpt", make_backbone("gpt2"))
    with pytest.raises(CheckpointError, match="no readable"):
        load_checkpoint(tmp_path / "missing", make_backbone("llama"))


def test_checkpoint_survives_a_dtype_change(tmp_path):
    save_checkpoint(HMT(make_backbone("llama")), tmp_path / "ckpt")
    model = load_checkpoint(tmp_path / "ckpt", make_backbone("llama").to(torch.bfloat16))
    assert model.wq.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("prefix", ["", "module."])
def test_reference_layout_imports(prefix, tmp_path):
    backbone = make_backbone("llama")
    d, h = 32, 48
    ref = {"mem": torch.randn(1, 1, d), "memory_cell.memory": torch.randn(1, d),
           "cross_attn.wq.weight": torch.randn(h, d), "cross_attn.wk.weight": torch.randn(h, d)}
    ref.update({f"memory_cell.model.{k}": v.clone() * 0 for k, v in backbone.state_dict().items()})
    ref = {prefix + k: v for k, v in ref.items()}
    save_file({k: v.contiguous() for k, v in ref.items() if "lm_head" not in k}, str(tmp_path / "ref.safetensors"))
    model = import_reference(tmp_path / "ref.safetensors", backbone)
    assert model.config.recall_size == h
    assert torch.equal(model.summary_prompt, ref[prefix + "mem"].reshape(1, d))
    assert torch.equal(model.initial_memory, ref[prefix + "memory_cell.memory"])
    assert torch.equal(model.wq.weight, ref[prefix + "cross_attn.wq.weight"])
    assert backbone.get_input_embeddings().weight.abs().sum() > 0  # backbone untouched unless asked
    import_reference(ref, backbone, load_backbone_weights=True)
    assert backbone.get_input_embeddings().weight.abs().sum() == 0
    with pytest.raises(CheckpointError, match="not an HMT-pytorch"):
        import_reference({"foo": torch.zeros(1)}, backbone)
