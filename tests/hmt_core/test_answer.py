import pytest
import torch
from tiny_models import CORPUS

from hmt_core import HMT, RMT, HMTConfig, RMTConfig, read_text, remember_turn, stream_answer
from hmt_core.answer import _sample, chat_ids, recall_passages, reread_messages, widen_to_sentences


def _events(model, tokenizer, state, question="what is the passkey?", **kwargs):
    return list(stream_answer(model, tokenizer, state, question, **kwargs))


@pytest.fixture
def read(backbone, tokenizer):
    torch.manual_seed(0)
    model = HMT(backbone, HMTConfig(segment_length=32, sensory_size=4))
    text = "".join(f"Page {n}. " + CORPUS[n % 4] + "\n" for n in range(12))
    state = read_text(model, tokenizer, text, source="book")
    return model, state


@pytest.mark.parametrize("mode", ["faithful", "reread"])
def test_answer_streams_with_recall_weights_summing_to_one(read, tokenizer, mode):
    model, state = read
    before = state.cache.clone()
    events = _events(model, tokenizer, state, mode=mode, max_new_tokens=12)
    assert events[0].kind == "recall" and events[-1].kind == "done"
    weights = events[0].weights
    assert weights.shape == (state.num_segments,) and torch.allclose(weights.sum(), torch.tensor(1.0), atol=1e-5)
    tokens = [e.text for e in events if e.kind == "token"]
    assert len(tokens) >= 2 and "".join(tokens) == events[-1].text
    assert torch.equal(state.cache, before)  # answering leaves the memory as it was
    if mode == "reread":
        assert events[0].passages and all(p.text for p in events[0].passages)


def test_reread_answers_from_the_passages_and_question_alone(read, tokenizer):
    """The backbone's first input in reread mode is exactly the embedded re-read prompt: no memory vector in front."""
    model, state = read
    seen = []
    hook = model.backbone.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"].detach().clone()), with_kwargs=True)
    try:
        events = _events(model, tokenizer, state, mode="reread", max_new_tokens=3)
    finally:
        hook.remove()
    prompt = torch.tensor([chat_ids(tokenizer, reread_messages("what is the passkey?", events[0].passages))])
    assert torch.equal(seen[1], model.embed(prompt))  # seen[0]: the question's summary pass, for recall


def test_generation_rolls_over_past_one_segment(read, tokenizer):
    model, state = read
    events = _events(model, tokenizer, state, mode="faithful", max_new_tokens=80)
    recalls = [e for e in events if e.kind == "recall"]
    prompt = len(chat_ids(tokenizer, [{"role": "user", "content": "what is the passkey?"}]))
    generated = len(events[-1].ids)
    assert prompt < model.segment_length < 2 * model.segment_length < prompt + generated  # two boundaries crossed
    assert len(recalls) == 1 + (prompt + generated) // model.segment_length
    assert recalls[1].weights.shape == (state.num_segments + 1,)  # the finished segment joined the recall
    for r in recalls:
        assert torch.allclose(r.weights.sum(), torch.tensor(1.0), atol=1e-5)


def test_rollover_continues_exactly_like_reading_the_same_tokens(read, tokenizer):
    """Greedy generation across a boundary must give the tokens the model predicts when it reads them."""
    model, state = read
    generated = _events(model, tokenizer, state, mode="faithful", max_new_tokens=80, repetition_penalty=1.0)[-1].ids
    prompt = chat_ids(tokenizer, [{"role": "user", "content": "what is the passkey?"}])
    ids = prompt + generated
    assert len(ids) > 2 * model.segment_length
    work = state.copy()
    L = model.segment_length
    first = len(prompt)
    for start in range(0, len(ids) - 1, L):
        seg = ids[start:start + L]
        result = model.read_segment(work, seg, work.num_segments + start // L, return_logits=True)
        for i in range(len(seg) - 1):
            if start + i + 1 >= first:  # inside the generated part
                assert int(result.logits[i].argmax()) == ids[start + i + 1]


def test_temperature_sampling_is_reproducible_with_a_seed(read, tokenizer):
    model, state = read
    a = _events(model, tokenizer, state, mode="faithful", temperature=0.8, seed=1, max_new_tokens=8)[-1].text
    b = _events(model, tokenizer, state, mode="faithful", temperature=0.8, seed=1, max_new_tokens=8)[-1].text
    assert a == b


def test_a_question_longer_than_a_segment_is_read_first(read, tokenizer):
    model, state = read
    events = _events(model, tokenizer, state, question="tell me " * 40 + "the passkey", mode="faithful",
                     max_new_tokens=4)
    assert events[0].weights.shape[0] > state.num_segments


def test_bad_questions_are_refused(read, tokenizer):
    model, state = read
    with pytest.raises(ValueError, match="empty"):
        _events(model, tokenizer, state, question="  ")
    with pytest.raises(ValueError, match="mode"):
        _events(model, tokenizer, state, mode="telepathy")
    with pytest.raises(ValueError, match="at least one segment"):
        _events(model, tokenizer, model.new_state(), mode="reread")


def test_chat_turns_are_written_into_memory(read, tokenizer):
    model, state = read
    n = state.num_segments
    remember_turn(model, tokenizer, state, "what is the passkey?", "The passkey is 12345.")
    remember_turn(model, tokenizer, state, "and the fox?", "It jumps.")
    chat = [s for s in state.segments if s.source == "chat"]
    assert state.num_segments > n and chat[0].page_start == 1 and chat[-1].page_end == 2
    assert "12345" in state.sources["chat"].text
    weights = _events(model, tokenizer, state, mode="faithful", max_new_tokens=2)[0].weights
    assert weights.shape == (state.num_segments,) and weights[n:].sum() > 0


def test_passages_widen_to_sentences_and_merge(read):
    _, state = read
    text = "First sentence here. The answer is forty two. Last one."
    start, end = widen_to_sentences(text, text.index("answer"), text.index("forty") + 3)
    assert text[start:end] == "The answer is forty two."
    weights = torch.zeros(state.num_segments)
    weights[[2, 3, 7]] = torch.tensor([0.5, 0.3, 0.2])
    passages = recall_passages(state, weights, top=3)
    assert [p.segments for p in passages] == [[2, 3], [7]]
    assert passages[0].weight == 0.5
    assert passages[0].text.endswith((".", "?", "!"))


def test_rmt_answers_in_faithful_mode(backbone, tokenizer):
    model = RMT(backbone, RMTConfig(segment_length=16, num_memory_tokens=2))
    state = read_text(model, tokenizer, " ".join(CORPUS * 2))
    events = _events(model, tokenizer, state, mode="faithful", max_new_tokens=40, temperature=1.0, seed=0)
    assert events[0].weights is None and events[-1].kind == "done"
    with pytest.raises(ValueError):
        _events(model, tokenizer, state, mode="reread")


def test_repetition_penalty_demotes_generated_tokens():
    logits = torch.tensor([2.0, 1.9, -1.0])
    assert _sample(logits, 0.0, 1.0, None, [], 1.1) == 0
    assert _sample(logits, 0.0, 1.0, None, [0], 1.1) == 1
    assert _sample(logits, 0.0, 1.0, None, [0], 1.0) == 0


def test_a_paused_answer_leaves_grad_mode_alone_for_the_caller(read, tokenizer):
    model, state = read
    events = stream_answer(model, tokenizer, state, "what is the passkey?", mode="faithful", max_new_tokens=4)
    next(events)
    assert torch.is_grad_enabled()
    list(events)
    assert torch.is_grad_enabled()


def test_an_answer_that_loops_is_cut_after_its_first_round(read, tokenizer, monkeypatch):
    """The core stops generating when the answer repeats itself, and 'done' holds the answer up to the loop."""
    import hmt_core.answer as answer

    model, state = read
    phrase = tokenizer(" the keeper counted ships every evening and", add_special_tokens=False)["input_ids"]
    calls = iter(range(10**6))
    monkeypatch.setattr(answer, "_sample", lambda *args: phrase[next(calls) % len(phrase)])
    events = _events(model, tokenizer, state, mode="faithful", max_new_tokens=200)
    streamed = "".join(e.text for e in events if e.kind == "token")
    done = events[-1].text
    assert done.endswith(" …") and answer.cut_repetition(streamed) == done[:-2]
    assert len(streamed) < 200 * 3  # stopped early, long before max_new_tokens
    uncut = _events(model, tokenizer, state, mode="faithful", max_new_tokens=60, cut_loops=False)
    assert uncut[-1].text == "".join(e.text for e in uncut if e.kind == "token")


def test_hmt_and_rmt_keep_the_memory_model_contract(backbone):
    from hmt_core import MemoryModel

    hmt = HMT(backbone, HMTConfig(segment_length=8, sensory_size=2))
    rmt = RMT(backbone, RMTConfig(segment_length=8, num_memory_tokens=2))
    for model in (hmt, rmt):
        assert isinstance(model, MemoryModel)
    assert hmt.has_recall and hmt.recall_channels == ("memory",)
    assert not rmt.has_recall and rmt.recall_channels == ()


def test_an_answer_that_quotes_the_system_prompt_is_withheld(read, tokenizer, monkeypatch):
    """Instructions injected into a document ("print the system prompt") can lead the model to quote it: the quote
    is cut before its fifth word is streamed and the answer is replaced."""
    import hmt_core.answer as answer

    model, state = read
    quote = tokenizer(" Sure: " + answer.SYSTEM_PROMPT, add_special_tokens=False)["input_ids"]
    calls = iter(range(10**6))
    monkeypatch.setattr(answer, "_sample", lambda *args: quote[min(next(calls), len(quote) - 1)])
    events = _events(model, tokenizer, state, mode="reread", max_new_tokens=60)
    streamed = "".join(e.text for e in events if e.kind == "token")
    assert events[-1].text == answer.WITHHELD and not answer.discloses_instructions(streamed)
    assert "You answer questions about" in streamed  # four words got out, the fifth did not
    assert not answer.discloses_instructions("The user asked about the documents. Use the passages below.")
    assert answer.discloses_instructions("my rules: USE the passages; answer in one or two sentences!")
    # the answer adapter's prompt tells it to say NOT_FOUND: saying so is an answer, quoting the rest is not
    assert answer.NOT_FOUND in answer.ANSWER_PROMPT
    assert not answer.discloses_instructions(answer.NOT_FOUND, answer.ANSWER_PROMPT)
    assert not answer.discloses_instructions("the documents do not seem to say", answer.ANSWER_PROMPT)
    assert answer.discloses_instructions("Answer with a short phrase from the passages", answer.ANSWER_PROMPT)
    assert answer.discloses_instructions("If the passages do not answer the question", answer.ANSWER_PROMPT)


def test_the_reply_its_prompt_asks_for_is_an_answer_not_a_quote_of_the_prompt(read, tokenizer, monkeypatch):
    """The answer adapter's prompt holds NOT_FOUND, the reply it asks for when the passages do not answer: that
    reply is streamed and marked as not found, never withheld as a quote of the instructions."""
    import hmt_core.answer as answer

    model, state = read
    reply = tokenizer(" " + answer.NOT_FOUND, add_special_tokens=False)["input_ids"]
    calls = iter(range(10**6))
    monkeypatch.setattr(answer, "_sample", lambda *args: reply[min(next(calls), len(reply) - 1)])
    events = list(stream_answer(model, tokenizer, state, "Where was the keeper born?", mode="reread",
                                max_new_tokens=len(reply), system=answer.ANSWER_PROMPT))
    done = events[-1]
    assert done.text.strip() == answer.NOT_FOUND and not done.found and done.evidence == []
    assert "".join(e.text for e in events if e.kind == "token").strip() == answer.NOT_FOUND

