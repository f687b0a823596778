"""bench.recall's rankings on a tiny model (the benchmark itself reads the held-out articles with the real model:
python -m bench.recall): every channel alone, memory-only and all fused, and the baselines; a channel the model does
not have is left out, never scored as a tie."""

import torch
from tiny_models import CORPUS, make_backbone, make_tokenizer, tiny_bert

from bench.recall import RANKINGS, question_ranks
from hmt_core import HMT, HMTConfig, read_text
from hmt_core.embedder import SentenceEmbedder

TEXT = "".join(f"Page {n}. " + CORPUS[n % 3] + "\n" for n in range(9)) + "The passkey is 12345. Remember it.\n" + \
    "".join(f"Page {n}. " + CORPUS[n % 3] + "\n" for n in range(9, 15))
QUESTION = {"question": "what is the passkey?"}


def _ranks(model, tokenizer, embedder):
    state = read_text(model, tokenizer, TEXT, source="book", state=model.new_state(keep=1000))
    texts = [state.segment_text(i) for i in range(state.num_segments)]
    gold = {i for i, t in enumerate(texts) if "passkey" in t}
    ranks = question_ranks(model, tokenizer, state, texts, embedder.embed(texts), QUESTION,
                           embedder.embed([QUESTION["question"]])[0], gold, torch.Generator().manual_seed(0))
    return state, gold, ranks


def test_every_channel_is_ranked_alone_and_fused(tokenizer):
    embedder = SentenceEmbedder(tiny_bert(), make_tokenizer())
    torch.manual_seed(0)
    fusion = {"memory": 0.1, "lexical": 0.4, "token": 0.2, "sentence": 0.3}
    model = HMT(make_backbone("llama"), HMTConfig(segment_length=32, sensory_size=4, token_key_layer=1,
                                                    token_key_width=8, token_keys_per_segment=4,
                                                    recall_fusion=fusion, recall_temperature=0.5))
    model.embedder = embedder
    state, gold, ranks = _ranks(model, tokenizer, embedder)
    assert set(ranks) == set(RANKINGS) and all(1 <= r <= state.num_segments for r in ranks.values())
    assert ranks["lexical"] == 1  # the only segment with 'passkey' in it
    model.embedder = None  # without the sentence channel: not ranked, and the fused ranking leaves it out
    _, _, without = _ranks(model, tokenizer, embedder)
    assert "sentence" not in without and set(without) == set(RANKINGS) - {"sentence"}
    assert without["lexical"] == ranks["lexical"] and without["memory+token"] == ranks["memory+token"]
