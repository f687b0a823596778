import pytest
import torch
import torch.nn.functional as F
from tiny_models import FAMILIES, make_backbone

from hmt_core import HMT, HMTConfig
from hmt_core.backbone import final_hidden_states, lm_logits


@pytest.mark.parametrize("family", FAMILIES)
def test_segment_mode_with_k0_is_the_plain_backbone(family):
    backbone = make_backbone(family)
    model = HMT(backbone, HMTConfig(segment_length=24, sensory_size=0))
    ids = torch.randint(0, 400, (2, 24))
    out = model(ids, mode="segment", return_logits=True)
    plain = backbone(ids).logits
    assert torch.equal(out.logits[0], plain)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_in_recall_mode(family):
    model = HMT(make_backbone(family), HMTConfig(segment_length=8, sensory_size=2, cache_size=4))
    out = model(torch.randint(0, 400, (2, 40)), mode="recall")
    assert torch.isfinite(out.loss) and out.num_tokens == 80
    assert [w.shape[1] for w in out.recall_weights] == [0, 1, 2, 3, 4]  # the cache keeps the newest N = 4
    for w in out.recall_weights[1:]:
        assert torch.allclose(w.sum(-1), torch.ones(2))
    out.loss.backward()
    assert model.wq.weight.grad.abs().sum() > 0 and model.wk.weight.grad.abs().sum() > 0
    assert model.summary_prompt.grad.abs().sum() > 0


def test_recall_is_softmax_of_scaled_projections(backbone):
    model = HMT(backbone, HMTConfig(recall_size=16))
    summary, cache = torch.randn(1, 32), torch.randn(1, 5, 32)
    memory, weights = model.recall(summary, cache)
    expected = torch.softmax(model.wq(summary) @ model.wk(cache[0]).T / 4.0, -1)
    assert torch.allclose(weights, expected, atol=1e-6)
    assert torch.allclose(memory, weights @ cache[0], atol=1e-6)
    empty_memory, empty_weights = model.recall(summary, None)
    assert torch.equal(empty_memory, model.initial_memory) and empty_weights.shape == (1, 0)


def test_parameter_count_matches_the_design_notes(backbone):
    model = HMT(backbone, HMTConfig())
    d, h = 32, 64  # h defaults to the MLP width
    assert model.config.recall_size == h
    assert sum(p.numel() for p in model.memory_parameters().values()) == 2 * d * h + 2 * d


def _grad_of_first_segment(model, ids, **kwargs):
    """Gradient of the last segment's loss with respect to the first segment's token embeddings in its main pass."""
    embeds = model.backbone.get_input_embeddings()
    captured = {}

    def hook(_module, _inputs, output):
        if "first" not in captured and output.shape[1] == model.segment_length:
            output.retain_grad()
            captured["first"] = output
    handle = embeds.register_forward_hook(hook)
    try:
        out = model(ids, loss_on="last", **kwargs)
        out.loss.backward()
    finally:
        handle.remove()
    return captured["first"].grad


@pytest.mark.parametrize("mode", ["recall", "direct"])
def test_bptt_reaches_earlier_segments_and_truncation_stops_it(backbone, mode):
    model = HMT(backbone, HMTConfig(segment_length=8, sensory_size=0))
    ids = torch.randint(0, 400, (1, 32))  # four segments; loss on the last
    full = _grad_of_first_segment(model, ids, mode=mode)
    assert full.abs().sum() > 0
    model.zero_grad()
    cut = _grad_of_first_segment(model, ids, mode=mode, bptt_depth=2)
    assert cut.abs().sum() == 0


def test_loss_on_last_counts_only_the_last_segment(backbone):
    model = HMT(backbone, HMTConfig(segment_length=8, sensory_size=2))
    ids = torch.randint(0, 400, (1, 20))
    assert model(ids, loss_on="last").num_tokens == 4
    assert model(ids, loss_on="all").num_tokens == 20


def test_padded_batch_equals_each_row_alone(backbone):
    model = HMT(backbone, HMTConfig(segment_length=8, sensory_size=2, cache_size=3))
    long, short = torch.randint(0, 400, (1, 30)), torch.randint(0, 400, (1, 13))
    batch = torch.zeros(2, 30, dtype=torch.long)
    mask = torch.zeros(2, 30, dtype=torch.long)
    batch[0], mask[0] = long[0], 1
    batch[1, :13], mask[1, :13] = short[0], 1
    together = model(batch, attention_mask=mask, loss_on="last", return_logits=True)
    alone_long = model(long, loss_on="last", return_logits=True)
    alone_short = model(short, loss_on="last", return_logits=True)
    assert together.num_tokens == alone_long.num_tokens + alone_short.num_tokens
    assert torch.allclose(together.logits[-1][0], alone_long.logits[-1][0], atol=1e-5)
    assert torch.allclose(together.logits[1][1, :5], alone_short.logits[1][0], atol=1e-5)
    expected = ((alone_long.loss * alone_long.num_tokens + alone_short.loss * alone_short.num_tokens)
                / together.num_tokens)
    assert torch.allclose(together.loss, expected, atol=1e-5)


def test_final_hidden_states_keep_only_the_last_layer(backbone):
    embeds = backbone.get_input_embeddings()(torch.randint(0, 400, (1, 6)))
    hidden, _ = final_hidden_states(backbone, embeds)
    plain = backbone(inputs_embeds=embeds, output_hidden_states=True)
    assert torch.allclose(hidden, plain.hidden_states[-1], atol=1e-6)
    assert torch.allclose(lm_logits(backbone, hidden), plain.logits, atol=1e-5)


def test_unknown_mode_is_refused(backbone):
    with pytest.raises(ValueError, match="mode"):
        HMT(backbone)(torch.zeros(1, 4, dtype=torch.long), mode="bogus")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_parameters_follow_the_backbone_dtype(dtype):
    model = HMT(make_backbone("llama").to(dtype), HMTConfig(segment_length=8, sensory_size=2))
    assert model.summary_prompt.dtype == dtype and model.wq.weight.dtype == dtype
    out = model(torch.randint(0, 400, (1, 24)))
    assert torch.isfinite(out.loss)


def test_segments_without_labels_after_the_last_cut_build_no_graph(backbone):
    model = HMT(backbone, HMTConfig(segment_length=8, sensory_size=2))
    ids = torch.randint(0, 400, (1, 40))
    labels = torch.full_like(ids, -100)
    labels[0, -3:] = ids[0, -3:]  # the loss sits on the final segment only, like a QA answer
    out = model(ids, labels=labels, mode="recall", bptt_depth=4)
    assert [w.requires_grad for w in out.recall_weights] == [False, False, False, False, True]
    out.loss.backward()
    assert model.wk.weight.grad.abs().sum() > 0 and torch.is_grad_enabled()
    full = model(ids, labels=labels, mode="recall")  # without truncation every segment feeds the loss
    assert all(w.requires_grad for w in full.recall_weights[1:])


def test_query_mask_hides_the_answer_from_the_summary_pass(backbone):
    model = HMT(backbone, HMTConfig(segment_length=16, sensory_size=2))
    doc, question, answer = torch.randint(0, 400, (1, 32)), torch.randint(0, 400, (1, 5)), torch.randint(0, 400, (1, 3))
    ids = torch.cat([doc, question, answer], 1)
    query = torch.ones_like(ids, dtype=torch.bool)
    query[0, -3:] = False
    masked = model(ids, query_mask=query).recall_weights[-1]
    alone = model(torch.cat([doc, question], 1)).recall_weights[-1]
    seen = model(ids).recall_weights[-1]
    assert torch.allclose(masked, alone, atol=1e-5) and not torch.allclose(seen, alone, atol=1e-5)


def test_init_recall_ranks_by_whitened_similarity(backbone):
    """A shared direction and one loud direction decide the raw dot product; the whitened one finds the match."""
    torch.manual_seed(0)
    model = HMT(backbone, HMTConfig())
    common, loud = torch.randn(32) * 10, torch.zeros(32)
    loud[0] = 1.0
    memories = common + torch.randn(200, 32) + 30 * torch.randn(200, 1) * loud
    summaries = common + torch.randn(100, 32) + 30 * torch.randn(100, 1) * loud
    model.init_recall(summaries, memories)
    query = common + (memories[3] - common) * (1 - loud)  # memory 3's content, without its loud component
    _, weights = model.recall(query[None], memories[None])
    assert int(weights.argmax()) == 3
    assert int((query @ memories.T).argmax()) != 3
    scores = model.wq(summaries) @ model.wk(memories).T / model.config.recall_size ** 0.5
    assert 1.0 < float(scores.detach().std(dim=1).mean()) < 4.0


@pytest.mark.parametrize("norm", ["embedding", "none"])
def test_memory_vectors_enter_the_backbone_at_the_token_embeddings_norm(backbone, norm):
    from hmt_core.backbone import embedding_norm
    model = HMT(backbone, HMTConfig(memory_input_norm=norm))
    memory = torch.randn(2, 32) * 40  # final hidden states are far louder than token embeddings
    embeds, _, x_start = model.main_embeds(memory, torch.zeros(2, 0, dtype=torch.long), torch.randint(0, 400, (2, 5)))
    want = torch.full((2,), embedding_norm(backbone)) if norm == "embedding" else memory.norm(dim=-1)
    for position in (0, -1):
        assert torch.allclose(embeds[:, position].norm(dim=-1), want, rtol=1e-4)
    if norm == "embedding":
        assert torch.allclose(F.normalize(embeds[:, 0], dim=-1), F.normalize(memory, dim=-1), atol=1e-5)


def test_rmt_memory_enters_at_the_token_embeddings_norm(backbone):
    from hmt_core import RMT, RMTConfig
    from hmt_core.backbone import embedding_norm
    model = RMT(backbone, RMTConfig(num_memory_tokens=2))
    embeds, _, m = model.main_embeds(torch.randn(1, 2, 32) * 40, torch.randint(0, 400, (1, 5)))
    assert torch.allclose(embeds[0, :m].norm(dim=-1), torch.full((2,), embedding_norm(backbone)), rtol=1e-4)


def test_checkpoints_from_before_the_norm_option_feed_memories_as_they_are():
    from hmt_core.config import config_from_dict
    assert config_from_dict({"segment_length": 8, "kind": "hmt"}).memory_input_norm == "none"
    assert HMTConfig().memory_input_norm == "none"  # 'embedding' cost recall on SmolLM2 (config docstring)
    with pytest.raises(ValueError):
        HMTConfig(memory_input_norm="loud")
