"""Fair turns on the one shared model: answers go before reading, and each kind is served in arrival order.

Every model call the app makes is one short step (a bounded reading call of about eight segments, one step of an
answer: its recall, its prompt, one token). A plain lock hands the model back to whoever asks fastest, and a reader
asks again the moment it lets go, so a question used to wait behind a whole book. Here a step waits for its turn:

- a waiting answer step always goes before a waiting reading step;
- a reading step also waits while an answer is streaming (an answer step ended less than ANSWER_GAP seconds ago),
  so a question's tokens are not spread out by reading steps in between; a streaming answer that was abandoned
  stops holding readers back after that gap;
- among steps of the same kind, first come, first served.

A reading step that sees an answer waiting ends at its next piece of text (about two segments), so a question's
first token waits for at most part of the one reading step already running.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

ANSWER = 0  # priorities: lower goes first
READ = 1
ANSWER_GAP = 0.5  # seconds after an answer step during which reading still waits (the gap between two tokens)


class ModelTurns:
    """A lock whose waiters are served by priority (ANSWER before READ), then by arrival; not reentrant."""

    def __init__(self, answer_gap: float = ANSWER_GAP) -> None:
        self.answer_gap = answer_gap
        self._cond = threading.Condition()
        self._busy = False
        self._waiting: list[tuple[int, int]] = []  # heap of (priority, ticket)
        self._tickets = itertools.count()
        self._last_answer = float("-inf")  # time.monotonic() when an answer step last ended

    def _blocked(self, me: tuple[int, int]) -> float | None:
        """None when `me` may go now; else how long to wait at most before looking again (inf: until notified)."""
        if self._busy or self._waiting[0] != me:
            return float("inf")
        if me[0] == READ:
            left = self._last_answer + self.answer_gap - time.monotonic()
            if left > 0:
                return left
        return None

    def answer_waiting(self) -> bool:
        """Whether an answer step is waiting for the model: a reading step then ends early, at its next piece."""
        with self._cond:
            return any(priority == ANSWER for priority, _ in self._waiting)

    @contextmanager
    def turn(self, priority: int) -> Iterator[None]:
        """Hold the model for one step of the given priority (ANSWER or READ)."""
        with self._cond:
            me = (priority, next(self._tickets))
            heapq.heappush(self._waiting, me)
            try:
                while (wait := self._blocked(me)) is not None:
                    self._cond.wait(None if wait == float("inf") else wait)
            finally:
                self._waiting.remove(me)
                heapq.heapify(self._waiting)
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                if priority == ANSWER:
                    self._last_answer = time.monotonic()
                self._cond.notify_all()
