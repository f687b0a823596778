"""Fitting multi-channel recall on training data only (see README, 'Training', the recall fit).

Starting from trained HMT weights, this
1. reads the training SQuAD articles, keeping the main-pass token states after --token-key-layer, fits the token
   keys' centring and whitening on those of --whitening-articles articles and computes every segment's keys;
2. scores questions against each article on its own and against all of them as one long document (what a manual
   looks like), and reads --passkeys windows of the --texts prose with a passkey needle hidden in them (the
   training passkeys of hmt_core.training.data, never the benchmark's filler);
3. scores every question with each channel (memory, lexical, token, sentence) and fits the fusion weights and
   temperature by the listwise softmax likelihood of the segment that holds the answer (the recall attention
   itself, raw logits);
4. saves the checkpoint with the fitted channels in its config and the fit's numbers in its metadata.

    python -m hmt_core.training.fit_recall --init assets/hmt-smollm2-135m --squad data/squad \\
        --texts data/text/austen_emma.txt --out runs/recall --token-key-layer 12

The held-out SQuAD articles (split.json's "eval") are never read here.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..answer import chat_ids
from ..backbone import DEFAULT_BACKBONE, decoder_layers, load_backbone
from ..checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from ..config import RECALL_CHANNELS, HMTConfig
from ..embedder import load_embedder
from ..hmt import HMT
from ..reader import Reader
from ..recall import channel_scores, standardize
from ..recall.token_keys import fit_whitening, select_keys
from ..state import MemoryState
from .data import PasskeyQA, read_text_files

if TYPE_CHECKING:
    from typing import Self

KEEP = 100_000  # every segment stays recallable, as in the app and the benchmarks


def with_token_keys(model: HMT, layer: int, width: int, keys: int) -> HMT:
    """A copy of model's memory parameters in an HMT whose config adds token keys (memory-only fusion for now)."""
    config = HMTConfig(**{**vars(model.config), "token_key_layer": layer, "token_key_width": width,
                          "token_keys_per_segment": keys, "recall_fusion": None, "recall_temperature": 1.0})
    out = HMT(model.backbone, config)
    with torch.no_grad():
        for name, p in model.memory_parameters().items():
            out.memory_parameters()[name].copy_(p)
    return out


def read_document(model: HMT, tokenizer, paragraphs: list[str], source: str, state: MemoryState | None = None
                  ) -> MemoryState:
    """Read paragraphs as one document into a memory that keeps every segment recallable (or on into `state`, after
    what it holds)."""
    reader = Reader(model, tokenizer, state if state is not None else model.new_state(keep=KEEP))
    for text in paragraphs:
        reader.feed(text + "\n\n", source=source)
    reader.finish()
    return reader.state


class TokenStates:
    """Forward hooks that keep every backbone call's hidden states [n, d] (fp16, on the CPU) after the chosen
    decoder layers (1-based), until removed; use as a context manager."""

    def __init__(self, backbone: torch.nn.Module, layers: list[int]) -> None:
        self.calls: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
        modules = decoder_layers(backbone)
        self.handles = [modules[i - 1].register_forward_hook(self._keep(i)) for i in layers]

    def _keep(self, i: int):
        def hook(_module, _inputs, output):
            self.calls[i].append((output[0] if isinstance(output, tuple) else output)[0].half().cpu())  # [n, d]
        return hook

    def clear(self) -> None:
        for calls in self.calls.values():
            calls.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc) -> None:
        self.remove()

    def segments(self, model: HMT, state: MemoryState, layer: int) -> list[torch.Tensor]:
        """Each segment's own token states [n, d] after `layer`, when the calls since the last clear() are exactly
        the reading of `state` from its first segment."""
        # calls alternate summary pass, main pass; the main pass is [P, sensory, x, P]
        states = []
        for s, seg in enumerate(state.segments):
            x_start = 1 + (0 if s == 0 else model.config.sensory_size)
            states.append(self.calls[layer][2 * s + 1][x_start:x_start + seg.num_tokens])
        return states


@torch.no_grad()
def read_with_token_states(model: HMT, tokenizer, paragraphs: list[str], source: str
                           ) -> tuple[MemoryState, list[torch.Tensor]]:
    """Read a document as read_document does, also keeping each segment's own token states [n, d] (fp16) after the
    token-key layer, so that the whitening can be fitted and the keys recomputed without reading twice."""
    layer = model.config.token_key_layer
    with TokenStates(model.backbone, [layer]) as recorder:
        state = read_document(model, tokenizer, paragraphs, source)
    return state, recorder.segments(model, state, layer)


def rekey(model: HMT, state: MemoryState, states: list[torch.Tensor]) -> None:
    """Recompute a state's token keys [S, K, r] from its segments' token states with the model's fitted whitening."""
    cfg = model.config
    state.token_keys = torch.stack([select_keys(t.float(), model.token_key_mean, model.token_key_proj,
                                                cfg.token_keys_per_segment) for t in states]).half()


def gold_segments(state: MemoryState, question: dict, source: str | None = None) -> set[int]:
    """Segments (of `source`, default any) whose span covers an annotated answer of a SQuAD question record; when
    every answer straddles a cut, the segments where one starts."""
    segments = [s for s in state.segments if source is None or s.source == source]
    gold = {s.index for s in segments for a, st in zip(question["answers"], question["answer_starts"])
            if s.char_start <= st and st + len(a) <= s.char_end}
    return gold or {s.index for s in segments for st in question["answer_starts"] if s.char_start <= st < s.char_end}


def passkey_documents(texts: list[str], count: int, chars: int, rng: random.Random) -> list[tuple[str, int, str]]:
    """(text, needle start, key): windows of training prose with PasskeyQA's needle at a random sentence start."""
    out = []
    for _ in range(count):
        text = rng.choice([t for t in texts if len(t) > 2 * chars])
        start = rng.randrange(len(text) - chars)
        window = text[start:start + chars]
        cuts = [i + 2 for i in range(len(window) - 2) if window[i] in ".!?" and window[i + 1] == " "] or [0]
        at = rng.choice(cuts)
        key = str(rng.randint(10000, 99999))
        out.append((window[:at] + PasskeyQA.NEEDLE.format(key=key) + " " + window[at:], at, key))
    return out


def features(model: HMT, tokenizer, state: MemoryState, question: str) -> torch.Tensor:
    """Standardised scores [C, S] of every channel (RECALL_CHANNELS order) for one question."""
    ids = chat_ids(tokenizer, [{"role": "user", "content": question}])
    scores = channel_scores(model, tokenizer, state, question, ids, RECALL_CHANNELS)
    return torch.stack([standardize(scores[c]) for c in RECALL_CHANNELS])


def ranks(z: torch.Tensor, theta: torch.Tensor, gold: list[int]) -> int:
    """1-based rank of the best gold segment under the fused score theta . z."""
    fused = theta @ z
    return int((fused > fused[gold].max()).sum()) + 1


def metrics(groups: list[tuple[torch.Tensor, list[int]]], theta: torch.Tensor) -> dict:
    r = torch.tensor([ranks(z, theta, gold) for z, gold in groups], dtype=torch.float32)
    return {"hit@1": float((r == 1).float().mean()), "hit@3": float((r <= 3).float().mean()),
            "mrr": float((1 / r).mean()), "questions": len(groups)}


def fit_fusion(sets: dict[str, list[tuple[torch.Tensor, list[int]]]], steps: int = 200) -> torch.Tensor:
    """Channel weights theta [C] maximising the mean (over sets, then questions) log-probability that the softmax
    of theta . z puts on the gold segments; theta's size is the inverse temperature."""
    theta = torch.ones(len(RECALL_CHANNELS), requires_grad=True)
    optimizer = torch.optim.LBFGS([theta], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.zeros(())
        for groups in sets.values():
            terms = []
            for z, gold in groups:
                logits = theta @ z  # [S]
                terms.append(torch.logsumexp(logits, 0) - torch.logsumexp(logits[gold], 0))
            loss = loss + torch.stack(terms).mean() / len(sets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return theta.detach()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_BACKBONE)
    parser.add_argument("--init", required=True, help="trained HMT checkpoint folder")
    parser.add_argument("--squad", type=Path, required=True, help="folder with articles.jsonl and split.json")
    parser.add_argument("--texts", nargs="+", required=True, help="training prose for the passkey windows")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--token-key-layer", type=int, default=12)
    parser.add_argument("--token-key-width", type=int, default=128)
    parser.add_argument("--token-keys", type=int, default=16, help="keys per segment")
    parser.add_argument("--articles", type=int, default=25, help="the first N training articles")
    parser.add_argument("--whitening-articles", type=int, default=8, help="training articles the whitening sees")
    parser.add_argument("--questions-per-article", type=int, default=40)
    parser.add_argument("--passkeys", type=int, default=24, help="passkey windows of training prose")
    parser.add_argument("--passkey-chars", type=int, default=16_000)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    texts = read_text_files(args.texts)  # first: a missing file fails before the long reading, not after it
    started = time.time()
    rng = random.Random(args.seed)
    backbone, tokenizer = load_backbone(args.model, device="cpu")
    base = load_checkpoint(args.init, backbone)
    model = with_token_keys(base, args.token_key_layer, args.token_key_width, args.token_keys).eval()
    model.embedder = load_embedder()  # the sentence channel: documents read here embed their sentences
    split = json.loads((args.squad / "split.json").read_text())
    train = set(split["train"])
    articles = [a for a in map(json.loads, (args.squad / "articles.jsonl").read_text().splitlines())
                if a["title"] in train][:args.articles]
    paragraphs = [[a["context"][s:e] for s, e in a["paragraph_spans"]] for a in articles]
    states, token_states = [], []
    for article, paras in zip(articles, paragraphs):
        state, tokens = read_with_token_states(model, tokenizer, paras, article["title"])
        states.append(state)
        token_states.append(tokens)
        print(f"read {article['title']}: {state.num_segments} segments ({time.time() - started:.0f} s)", flush=True)
    sample = torch.cat([t for tokens in token_states[:args.whitening_articles] for t in tokens])[::3]
    model.init_token_keys(*fit_whitening(sample.float(), args.token_key_width))
    for state, tokens in zip(states, token_states):
        rekey(model, state, tokens)

    sets: dict[str, list] = {"article": [], "all_articles": [], "passkey": []}
    questions = []
    for a, (article, state) in enumerate(zip(articles, states)):
        for q in article["questions"][:args.questions_per_article]:
            gold = sorted(gold_segments(state, q))
            sets["article"].append((features(model, tokenizer, state, q["question"]), gold))
            questions.append((a, q))
    pooled, offsets = states[0], [0]
    for state in states[1:]:
        offsets.append(pooled.num_segments)
        pooled = pooled.extend(state, KEEP)
    for a, q in questions:
        # the context offsets of SourceText are per article, so gold segments come from the article's own state
        gold = sorted(g + offsets[a] for g in gold_segments(states[a], q))
        sets["all_articles"].append((features(model, tokenizer, pooled, q["question"]), gold))
    for text, at, key in passkey_documents(texts, args.passkeys, args.passkey_chars, rng):
        state = read_document(model, tokenizer, [text], "prose")
        end = at + len(PasskeyQA.NEEDLE.format(key=key))
        needle = [s.index for s in state.segments if s.char_start < end and at < s.char_end]  # may straddle a cut
        for question in PasskeyQA.QUESTIONS:
            sets["passkey"].append((features(model, tokenizer, state, question), needle))
    print(f"features done ({time.time() - started:.0f} s); fitting the fusion", flush=True)
    theta = fit_fusion(sets)
    total = float(theta.clamp(min=1e-6).sum())
    fusion = {c: float(t) / total for c, t in zip(RECALL_CHANNELS, theta)}
    model.config.recall_fusion, model.config.recall_temperature = fusion, 1.0 / total
    report = {"fusion": fusion, "temperature": 1.0 / total, "theta": theta.tolist(), "seconds": time.time() - started}
    alone = {c: torch.eye(len(RECALL_CHANNELS))[i] for i, c in enumerate(RECALL_CHANNELS)}
    memory_only = theta * torch.tensor([1.0 if c in ("memory", "token") else 0.0 for c in RECALL_CHANNELS])
    for name, groups in sets.items():
        report[name] = {"fused": metrics(groups, theta), "memory+token": metrics(groups, memory_only),
                        **{c: metrics(groups, v) for c, v in alone.items()}}
    print(json.dumps(report, indent=1), flush=True)
    command = "python -m hmt_core.training.fit_recall " + " ".join(sys.argv[1:] if argv is None else argv)
    extra = {**read_checkpoint_meta(args.init).get("extra", {}), "recall_fit": {"command": command, "report": report}}
    save_checkpoint(model, args.out, extra=extra)
    (args.out / "recall_fit.json").write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
