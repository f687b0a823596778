"""Quoted answers: decoding that keeps a short answer a verbatim quote of the passages the reader was given.

The answer adapter is asked for "a short phrase from the passages", and mostly gives one; but about one answer in
eight on the development articles was not in the passages ("6 to nine percent" for "six to nine percent",
"transport accidents" for "transportation accidents", a name of the right kind that the passage never says), and
those scored a third of the others' token F1. A quoted answer can also be found, word for word, in the passage a
person checks it against.

At each step, among the CANDIDATES likeliest tokens within MARGIN nats of the likeliest, only those that keep the
answer so far a substring of a passage (case and runs of white space aside), or a beginning of the reply the reader
was trained to give when the passages do not say, may be chosen; the end of the answer only after a whole word of a
passage (not "comp" of "compounding"). When no such token is likely enough, the rest of the answer is left to the
reader: the guard mends near misses and never forces a far one. Chosen on the development articles (README, "The
answer adapter and 'not found'"): forcing the quote to go on with any of the 32 candidates, or to end where it
could not go on, turned "by the traditional old boy network" into "by 2010" and "planning, design, and execution"
into "planning,". There, re-read F1 rose from 0.437 to 0.460; held out it did not move (0.394 to 0.393): 15 of
100 answers changed, mostly wrong ones now spelt as the passage spells them ("simentary" to "sedimentary").
"""

from __future__ import annotations

import re

import torch

CANDIDATES = 32  # the likeliest tokens at each step that are tried against the passages
MARGIN = 3.0  # nats below the likeliest token within which another may be chosen to keep the quote
_SPACES = re.compile(r"\s+")


def _flat(text: str) -> str:
    return _SPACES.sub(" ", text).lower()


class QuoteGuard:
    """Masks a step's logits to the tokens that keep an answer a quote of `passages` or a prefix of `reply`. One
    guard per answer: once released, it leaves the rest of that answer free. `end_bias` (nats, >= 0) is taken from
    the end of a quote (not of the reply), so that the quote goes on where a token that keeps it is within that
    much of the end: a longer stretch of the passage instead of a part of the phrase the question asks for."""

    def __init__(self, tokenizer, passages: list[str], reply: str, stops: set[int], end_bias: float = 0.0) -> None:
        self.tokenizer = tokenizer
        self.passages = [_flat(p) for p in passages if p.strip()]
        self.reply = _flat(reply)
        self.stops = sorted(stops)
        self.end_bias = end_bias
        self.released = False

    def quotes(self, text: str) -> bool:
        """Whether text (leading space aside) is a stretch of a passage or a beginning of the reply. Text that ends
        in an unfinished multi-byte character is given the benefit of the doubt."""
        flat = _flat(text).lstrip()
        if flat.endswith("\ufffd"):
            flat = flat[:-1]
        return not flat or self.reply.startswith(flat) or any(flat in p for p in self.passages)

    def can_end(self, text: str) -> bool:
        """Whether a quote may end after text: where a passage has it as whole words (not 'comp' of 'compounding'),
        or it is the whole reply."""
        flat = _flat(text).strip()
        if not flat or flat.endswith("\ufffd"):
            return False
        before = r"(?<!\w)" if flat[0].isalnum() else ""  # no letter or digit right before or after it
        after = r"(?!\w)" if flat[-1].isalnum() else ""
        whole = re.compile(before + re.escape(flat) + after)
        return flat == self.reply or any(whole.search(p) for p in self.passages)

    def restrict(self, logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """logits [V] with every token but the allowed ones at -inf; `ids` are the answer's tokens so far."""
        if self.released:
            return logits
        before = self.tokenizer.decode(ids, skip_special_tokens=True)
        top = float(logits.max())
        going_on = []
        for t in logits.topk(min(CANDIDATES, logits.shape[-1])).indices.tolist():
            if float(logits[t]) < top - MARGIN:
                break
            after = self.tokenizer.decode(ids + [t], skip_special_tokens=True)
            # a special token adds nothing; white space alone does not begin an answer
            if t not in self.stops and len(after) > len(before) and after.strip() and self.quotes(after):
                going_on.append(t)
        if not going_on:  # nothing likely enough goes on quoting: the rest of the answer is the reader's own
            self.released = True
            return logits
        ends = self.stops if self.can_end(before) else []
        masked = torch.full_like(logits, float("-inf"))
        masked[going_on] = logits[going_on]
        if ends:
            bias = 0.0 if _flat(before).strip() == self.reply else self.end_bias
            masked[ends] = logits[ends] - bias
        return masked
