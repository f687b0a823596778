"""What the benchmarks share, so that each bench module imports only this one (and hmt_core):
- where things are, and the machine description;
- the model: the command-line options, loading the weights (or fresh parameters), describing them in a header;
- the data: long real text, the SQuAD articles of either split, read into a memory; the passkey haystacks;
- rankings and answers to compare HMT with: BM25, MiniLM, the plain backbone with the document in its prompt;
- gold segments and ranks, bootstrap intervals;
- writing JSON plus a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hmt_core import DEFAULT_BACKBONE, HMT, HMTConfig, MemoryState, load_backbone, load_checkpoint, read_text
from hmt_core.answer import SYSTEM_PROMPT, chat_ids
from hmt_core.backbone import cache_argument
from hmt_core.config import RECALL_CHANNELS
from hmt_core.embedder import SentenceEmbedder, load_embedder
from hmt_core.quantize import QUANTIZATIONS, quantize_int8
from hmt_core.recall import available_channels
from hmt_core.training.fit_recall import read_document

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATA = ROOT / "data"


def machine() -> dict:
    """Enough about the machine to read absolute numbers with care."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "torch": torch.__version__}


# The model

def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options load_model reads: --model, --hmt-weights, --quantize and, for fresh parameters,
    --segment-length."""
    parser.add_argument("--model", default=DEFAULT_BACKBONE)
    parser.add_argument("--hmt-weights", default=None)
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                        help="int8: the backbone's linear layers in int8 (hmt_core.quantize; cpu only)")
    parser.add_argument("--segment-length", type=int, default=256, help="only without --hmt-weights")


def untrained_hmt(backbone: torch.nn.Module, segment_length: int = 256) -> HMT:
    """HMT with its parameters freshly initialised from seed 0: what 'untrained' means in every table."""
    torch.manual_seed(0)
    return HMT(backbone, HMTConfig(segment_length=segment_length))


def load_model(args: argparse.Namespace, device: str = "cpu", dtype: str = "auto"):
    """(HMT, tokenizer): the given weights, else fresh parameters with a fixed seed; --quantize int8 then
    quantises the backbone."""
    backbone, tokenizer = load_backbone(args.model, device=device, dtype=dtype)
    model = load_checkpoint(args.hmt_weights, backbone) if args.hmt_weights else untrained_hmt(backbone,
                                                                                                 args.segment_length)
    if args.quantize == "int8":  # after the checkpoint, whose LoRA adapters merge into fp32 weights
        quantize_int8(backbone, tokenizer)
    return model, tokenizer


def training_steps(folder: str | Path) -> int | None:
    """The training steps a checkpoint's metadata records: 'steps' for a run's final/, 'step' for its last/."""
    from hmt_core.checkpoint import read_checkpoint_meta

    extra = read_checkpoint_meta(folder).get("extra", {})
    return extra.get("steps", extra.get("step"))


def describe_weights(folder: str | None) -> str:
    """For table headers and rows: 'untrained', or the checkpoint's folder and its training steps."""
    if not folder:
        return "untrained"
    steps = training_steps(folder)
    return f"{folder} ({'?' if steps is None else steps} steps)"


# The data

def long_text(min_chars: int) -> str:
    """Real public-domain prose of at least min_chars characters: Moby-Dick and Austen, fetched offline once."""
    from hmt_core.training.corpora import fetch, load_texts

    fetch(DATA, ["mobydick", "austen"])
    texts = load_texts(DATA)
    text = texts["mobydick"] + "\n\n" + "\n\n".join(v for k, v in sorted(texts.items()) if k.startswith("austen"))
    if len(text) < min_chars:
        raise ValueError(f"only {len(text)} characters of text available, {min_chars} needed")
    return text


def squad_articles(part: str) -> list[dict]:
    """The SQuAD articles of one part of split.json, fetched offline once: "eval" (held out: never read in training
    or in fitting the recall) or "train"."""
    from hmt_core.training.corpora import fetch, load_squad

    fetch(DATA, ["squad"])
    split = json.loads((DATA / "squad" / "split.json").read_text())
    return [a for a in load_squad(DATA) if a["title"] in set(split[part])]


def squad_unanswerable(part: str = "eval") -> list[dict]:
    """SQuAD 2.0's unanswerable questions of the articles of one part of split.json ({"title", "questions"})."""
    from hmt_core.training.corpora import fetch, load_squad

    fetch(DATA, ["squad"])
    split = json.loads((DATA / "squad" / "split.json").read_text())
    return [a for a in load_squad(DATA, "unanswerable") if a["title"] in set(split[part])]


def read_article(model, tokenizer, article: dict, state: MemoryState | None = None) -> MemoryState:
    """Read a whole article paragraph by paragraph into a memory that keeps every segment recallable (or on into
    `state`, after what it holds)."""
    paragraphs = [article["context"][start:end] for start, end in article["paragraph_spans"]]
    return read_document(model, tokenizer, paragraphs, article["title"], state)


# The passkey haystacks (bench.passkey, and bench.needle_memory's diagnosis of its failures)

FILLER = ("The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ", "There and back again. ")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
PASSKEY_QUESTION = "What is the pass key? Answer with the number only."
KEEP = 100_000  # memories kept recallable when answering: every segment of the longest haystack


@dataclass
class Haystack:
    """One trial's document: filler with the needle starting at character `needle_start`."""

    text: str
    key: int
    needle_start: int
    tokens: int


def count_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """Backbone tokens of a text, without special tokens."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_haystack(tokenizer: PreTrainedTokenizerBase, target_tokens: int, rng: random.Random) -> Haystack:
    """Filler sentences totalling about target_tokens with the needle at a uniformly drawn sentence boundary."""
    key = rng.randint(10000, 99999)
    needle = NEEDLE.format(key=key)
    per_sentence = count_tokens(tokenizer, "".join(FILLER) * 8) / (8 * len(FILLER))
    n = max(1, round((target_tokens - count_tokens(tokenizer, needle)) / per_sentence))
    sentences = [FILLER[i % len(FILLER)] for i in range(n)]
    cut = rng.randint(0, n)
    before = "".join(sentences[:cut])
    text = before + needle + "".join(sentences[cut:])
    return Haystack(text, key, len(before), count_tokens(tokenizer, text))


def read_haystack(model: HMT, tokenizer: PreTrainedTokenizerBase, text: str) -> MemoryState:
    """Read the whole haystack once into a memory that keeps every segment recallable."""
    return read_text(model, tokenizer, text, "haystack", model.new_state(keep=KEEP))


# What HMT is compared with: other rankings of the same segments, the plain backbone

WORD = re.compile(r"\w+")


def bm25_scores(query: str, docs: list[str], k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Okapi BM25 of one query against each doc (lower-cased word tokens)."""
    tokenized = [WORD.findall(d.lower()) for d in docs]
    avg = sum(map(len, tokenized)) / max(len(tokenized), 1)
    df = Counter(w for doc in tokenized for w in set(doc))
    n = len(docs)
    scores = []
    for doc in tokenized:
        tf = Counter(doc)
        s = 0.0
        for w in set(WORD.findall(query.lower())):
            if w in tf:
                idf = math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5))
                s += idf * tf[w] * (k1 + 1) / (tf[w] + k1 * (1 - b + b * len(doc) / avg))
        scores.append(s)
    return scores


@torch.no_grad()
def plain_answer(backbone, tokenizer, messages: list[dict], max_new_tokens: int, prefix=None) -> str:
    """The plain backbone answering a chat, greedy with the same repetition penalty as stream_answer; `prefix`
    (bench.qa's PrefixCache) reuses the kv cache of a prompt's shared beginning."""
    ids = chat_ids(tokenizer, messages)
    extra = {} if prefix is None else {cache_argument(type(backbone)): prefix.cache_for(ids)}
    ids = torch.tensor([ids])
    out = backbone.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            do_sample=False, repetition_penalty=1.1, pad_token_id=tokenizer.pad_token_id, **extra)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def full_context_messages(tokenizer, context: str, question: str, window: int, reserve: int) -> list[dict]:
    """The document in the prompt, cut so that the prompt and the answer fit the backbone's window."""
    enc = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    budget = window - reserve
    if len(enc["input_ids"]) > budget:
        context = context[:enc["offset_mapping"][budget - 1][1]]
    user = f"Document:\n{context}\n\nQuestion: {question}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# Gold segments and ranks (the SQuAD answers' segments: hmt_core.training.fit_recall.gold_segments)

def needle_segment(state: MemoryState, char: int) -> int:
    """The segment whose character span covers `char` (the needle's start)."""
    return max(s.index for s in state.segments if s.char_start <= char)


def rank_of(weights: torch.Tensor, index: int) -> int:
    """1-based rank of segment `index` under recall weights (ties counted in its favour)."""
    return int((weights > weights[index]).sum()) + 1


def scored_channels(model, state: MemoryState) -> tuple[str, ...]:
    """The recall channels a benchmark scores alone, in RECALL_CHANNELS order: those the model and the state can use,
    and always the lexical one (the state's word index needs no fitted weight)."""
    usable = available_channels(model, state, RECALL_CHANNELS)
    return tuple(c for c in RECALL_CHANNELS if c in usable or c == "lexical")


def sentence_embedder(model) -> SentenceEmbedder:
    """The sentence embedder the model's recall already holds (the sentence channel's), else the default loaded now:
    one copy of all-MiniLM-L6-v2 per benchmark, not two."""
    return getattr(model, "embedder", None) or load_embedder()


def rank_of_gold(scores: torch.Tensor, gold: set[int]) -> int:
    """1-based rank of the best-ranked gold segment, ties counted against it (a channel that scores every segment
    alike, such as BM25 with no word in common, ranks the gold segment last, not first)."""
    index = sorted(gold)
    best = scores[index].max()
    others = torch.ones_like(scores, dtype=torch.bool)
    others[index] = False
    return int((scores[others] >= best).sum()) + 1


def bootstrap(values: list[float], samples: int = 2000, seed: int = 0) -> list[float]:
    """95% bootstrap interval of the mean."""
    t = torch.tensor(values, dtype=torch.float64)
    idx = torch.randint(len(t), (samples, len(t)), generator=torch.Generator().manual_seed(seed))
    means = t[idx].mean(1).sort().values
    return [float(means[int(0.025 * samples)]), float(means[int(0.975 * samples) - 1])]


# Writing the results

def table_head(*columns: str) -> list[str]:
    """A markdown table's header and rule lines."""
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def table_row(*cells: object) -> str:
    """One markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def with_interval(r: dict, key: str) -> str:
    """'0.258 [0.180, 0.350]': r[key] and its 95% interval r[key + '_ci']."""
    low, high = r[key + "_ci"]
    return f"{r[key]:.3f} [{low:.3f}, {high:.3f}]"


def write_results(name: str, data: dict, table: str, folder: Path = RESULTS) -> None:
    """<folder>/<name>.json and <name>.md (folder: bench/results unless a test or a trial run says otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    (folder / f"{name}.md").write_text(table, encoding="utf-8")
    print(table)
