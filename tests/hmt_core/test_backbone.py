import pytest
import torch
from tiny_models import CORPUS, make_backbone

from hmt_core import HMT, HMTConfig, BackboneError, load_backbone, read_text, stream_answer
from hmt_core.backbone import pick_device, pick_dtype


def test_a_missing_local_model_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match="HF_HUB_OFFLINE"):
        load_backbone("no-such-org/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="local model folder"):
        load_backbone(str(tmp_path / "empty"))


def test_a_local_folder_loads_with_the_requested_dtype(tmp_path, tokenizer):
    make_backbone("llama").save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    model, tok = load_backbone(str(tmp_path / "tiny"), device="cpu", dtype="bf16")
    assert model.dtype == torch.bfloat16 and tok.pad_token_id is not None and not model.training


def test_device_and_dtype_choice():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cuda", "mps", "cpu")
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        pick_dtype("fp8", torch.device("cpu"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reading_and_answering_follow_the_backbone_dtype(tokenizer, dtype):
    model = HMT(make_backbone("llama").to(dtype), HMTConfig(segment_length=32, sensory_size=4))
    state = read_text(model, tokenizer, " ".join(CORPUS * 3))
    assert state.cache.dtype == dtype
    events = list(stream_answer(model, tokenizer, state, "what is the passkey?", max_new_tokens=4))
    assert torch.allclose(events[0].weights.sum(), torch.tensor(1.0), atol=1e-3)
