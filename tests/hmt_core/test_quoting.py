import torch
from tiny_models import CORPUS

from hmt_core import HMT, HMTConfig, read_text, stream_answer
from hmt_core.answer import NOT_FOUND
from hmt_core.quoting import MARGIN, QuoteGuard

PASSAGE = "The quick brown fox jumps over\nthe lazy dog."


def _guard(tokenizer, stops=(0,)):
    return QuoteGuard(tokenizer, [PASSAGE], NOT_FOUND, set(stops))


def test_a_quote_is_a_stretch_of_a_passage_or_the_start_of_the_reply(tokenizer):
    guard = _guard(tokenizer)
    assert guard.quotes("brown fox")
    assert guard.quotes(" Over  the LAZY")  # case, leading space and runs of white space (the line end) aside
    assert guard.quotes("The documents do not")
    assert guard.quotes("")
    assert not guard.quotes("brown dog")
    assert not guard.quotes("The documents do say")


def test_a_quote_may_end_only_on_a_whole_word(tokenizer):
    guard = _guard(tokenizer)
    assert guard.can_end("quick brown") and guard.can_end(" over the") and guard.can_end("dog.")
    assert not guard.can_end("quick bro") and not guard.can_end("uick") and not guard.can_end("")
    assert guard.can_end("The documents do not seem to say.") and not guard.can_end("The documents do not")
    french = QuoteGuard(tokenizer, ["Un café noir."], NOT_FOUND, {0})
    assert french.can_end("café") and not french.can_end("caf")  # a letter beyond ASCII is part of the word


def test_restrict_keeps_only_the_tokens_that_go_on_quoting(tokenizer):
    guard = _guard(tokenizer)
    so_far = tokenizer("quick", add_special_tokens=False)["input_ids"]
    go_on = tokenizer("quick brown", add_special_tokens=False)["input_ids"][len(so_far)]
    astray = tokenizer("quick money", add_special_tokens=False)["input_ids"][len(so_far)]
    logits = torch.zeros(len(tokenizer))
    logits[astray], logits[go_on] = 5.0 + MARGIN - 0.5, 5.0
    masked = guard.restrict(logits, so_far)
    assert int(masked.argmax()) == go_on and masked[astray] == float("-inf")
    assert masked[0] == logits[0]  # the end of the answer is allowed after a whole word (can_end)


def test_a_quote_that_cannot_go_on_leaves_the_rest_of_the_answer_free(tokenizer):
    guard = QuoteGuard(tokenizer, ["zzzz"], "zzzz", {0})
    logits = torch.full((len(tokenizer),), -100.0)
    logits[[t for t in range(len(tokenizer)) if {"z", "\ufffd"} & set(tokenizer.decode([t]))]] = -1e4
    logits[tokenizer(" money", add_special_tokens=False)["input_ids"][0]] = 5.0
    assert torch.equal(guard.restrict(logits, []), logits) and guard.released
    zs = tokenizer("zz", add_special_tokens=False)["input_ids"]
    logits[zs[0]] = 9.0
    assert torch.equal(guard.restrict(logits, []), logits)  # released: free from then on, even where a quote would do


def test_quoted_reread_answers_begin_with_a_quote_of_their_passages(backbone, tokenizer):
    torch.manual_seed(0)
    model = HMT(backbone, HMTConfig(segment_length=32, sensory_size=4))
    state = read_text(model, tokenizer, "".join(CORPUS[n % 4] + "\n" for n in range(8)), source="book")
    quoted, free = [], []
    for question in ("what is the passkey?", "who is Ishmael?", "what did the fox do?", "why?"):
        for quote, out in ((True, quoted), (False, free)):
            events = list(stream_answer(model, tokenizer, state, question, max_new_tokens=8, quote=quote,
                                        cut_loops=False))
            guard = QuoteGuard(tokenizer, [p.text for p in events[0].passages], NOT_FOUND, set())
            first = next(e.text for e in events if e.kind == "token")
            out.append((first, guard.quotes(first)))
    assert all(ok for _, ok in quoted), quoted
    assert not all(ok for _, ok in free)  # the random model's free answers are not quotes: the guard did the work


def test_a_token_that_keeps_the_quote_is_chosen_only_within_the_margin_of_the_likeliest(tokenizer):
    so_far = tokenizer("quick", add_special_tokens=False)["input_ids"]
    go_on = tokenizer("quick brown", add_special_tokens=False)["input_ids"][len(so_far)]
    astray = tokenizer("quick money", add_special_tokens=False)["input_ids"][len(so_far)]
    logits = torch.zeros(len(tokenizer))
    logits[astray], logits[go_on] = 5.0 + MARGIN + 0.5, 5.0
    guard = _guard(tokenizer)
    assert torch.equal(guard.restrict(logits, so_far), logits) and guard.released  # a far miss is the reader's own


def test_an_end_bias_lets_a_quote_go_on_where_going_on_is_nearly_as_likely_as_ending(tokenizer):
    so_far = tokenizer("quick", add_special_tokens=False)["input_ids"]
    go_on = tokenizer("quick brown", add_special_tokens=False)["input_ids"][len(so_far)]
    logits = torch.zeros(len(tokenizer))
    logits[0], logits[go_on] = 6.0, 5.0  # ending (token 0) is one nat likelier than going on
    assert int(_guard(tokenizer).restrict(logits, so_far).argmax()) == 0
    biased = QuoteGuard(tokenizer, [PASSAGE], NOT_FOUND, {0}, end_bias=2.0).restrict(logits, so_far)
    assert int(biased.argmax()) == go_on and biased[0] == 4.0


def test_the_end_bias_never_keeps_the_not_found_reply_going(tokenizer):
    reply = tokenizer(NOT_FOUND, add_special_tokens=False)["input_ids"]
    guard = QuoteGuard(tokenizer, [PASSAGE + " " + NOT_FOUND + " Then more."], NOT_FOUND, {0}, end_bias=2.0)
    then = tokenizer(NOT_FOUND + " Then", add_special_tokens=False)["input_ids"][len(reply)]
    logits = torch.zeros(len(tokenizer))
    logits[0], logits[then] = 6.0, 5.0
    masked = guard.restrict(logits, reply)
    assert int(masked.argmax()) == 0 and masked[0] == 6.0  # the whole reply ends as likely as the reader says
