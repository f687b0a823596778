"""What the sentence recall channel costs while reading (README, 'Recall quality'): the time to embed a document's
sentences against the time to read it, and the bytes its vectors take, on a long held-out text.

The text is read once with the model's sentence embedder detached (reading alone), then its sentences are embedded as
Reader.finish does; both on the same machine, one after the other, so their ratio is what the channel adds to
reading a document.

    python -m bench.sentence_cost --hmt-weights assets/hmt-smollm2-135m [--chars 200000]

Writes bench/results/sentence_cost.json and .md.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import DATA, add_model_arguments, load_model, machine, write_results
from hmt_core import read_text
from hmt_core.recall import embed_sentences
from hmt_core.training.corpora import fetch

TEXT = "text/austen_persuasion.txt"  # held out from training, as in the perplexity benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--chars", type=int, default=200_000, help="of the text, from its start")
    args = parser.parse_args()
    model, tokenizer = load_model(args)
    embedder = model.embedder
    if embedder is None:
        raise SystemExit("these weights do not weigh the sentence channel (or its embedder could not be loaded)")
    fetch(DATA, ["austen"])
    text = (DATA / TEXT).read_text(encoding="utf-8")[:args.chars]
    model.embedder = None  # reading alone
    started = time.perf_counter()
    state = read_text(model, tokenizer, text, source="book", state=model.new_state(keep=100_000))
    read_seconds = time.perf_counter() - started
    model.embedder = embedder
    started = time.perf_counter()
    embed_sentences(model, state)
    embed_seconds = time.perf_counter() - started
    vectors = state.sentences.vectors
    segments = state.num_segments
    result = {"model": args.model, "hmt_weights": args.hmt_weights, "machine": machine(),
              "torch_threads": torch.get_num_threads(), "text": TEXT, "chars": len(text), "segments": segments,
              "sentences": int(vectors.shape[0]), "read_seconds": read_seconds, "embed_seconds": embed_seconds,
              "embed_over_read": embed_seconds / read_seconds,
              "vector_bytes_per_segment": vectors.numel() * vectors.element_size() / segments,
              "token_key_bytes_per_segment": (state.token_keys[0].numel() * state.token_keys.element_size()
                                              if state.token_keys is not None else None)}
    table = "\n".join([
        f"The sentence channel's cost on the first {len(text):,} characters of {TEXT} ({segments} segments, "
        f"{result['sentences']:,} sentences); {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"{result['torch_threads']} torch threads.", "",
        "| reading (HMT, no embedder) | embedding the sentences | embedding / reading | vectors per segment |",
        "|---|---|---|---|",
        f"| {read_seconds:.1f} s ({read_seconds / segments * 1000:.0f} ms per segment) | {embed_seconds:.1f} s "
        f"({embed_seconds / segments * 1000:.0f} ms per segment) | {result['embed_over_read']:.3f} | "
        f"{result['vector_bytes_per_segment'] / 1024:.1f} KB ({result['sentences'] / segments:.1f} sentences) |",
        ""])
    write_results("sentence_cost", result, table)


if __name__ == "__main__":
    main()
