"""Fair turns on the model: a question's step never waits behind more than the one reading step running."""

from __future__ import annotations

import threading
import time

from app.turns import ANSWER, READ, ModelTurns


def _take(turns: ModelTurns, priority: int, name: str, order: list[str], hold: float = 0.0) -> threading.Thread:
    """A thread that takes one turn, notes its name and holds the model for `hold` seconds."""
    def run() -> None:
        with turns.turn(priority):
            order.append(name)
            time.sleep(hold)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_queued(turns: ModelTurns, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(turns._waiting) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(turns._waiting) == n


def test_a_waiting_answer_goes_before_readers_that_came_first():
    turns, order = ModelTurns(answer_gap=0.0), []
    first = _take(turns, READ, "reading 1", order, hold=0.2)
    time.sleep(0.05)
    later = [_take(turns, READ, "reading 2", order), _take(turns, READ, "reading 3", order)]
    _wait_queued(turns, 2)
    question = _take(turns, ANSWER, "answer", order)
    _wait_queued(turns, 3)
    for thread in [first, *later, question]:
        thread.join(5)
    assert order == ["reading 1", "answer", "reading 2", "reading 3"]  # readers among themselves: arrival order


def test_reading_waits_between_the_steps_of_a_streaming_answer():
    turns = ModelTurns(answer_gap=0.3)
    with turns.turn(ANSWER):
        pass
    ended = time.monotonic()
    with turns.turn(READ):
        waited = time.monotonic() - ended
    assert waited >= 0.25  # the gap in which the answer's next token step would have come


def test_an_abandoned_answer_holds_readers_back_only_for_the_gap():
    turns = ModelTurns(answer_gap=0.1)
    with turns.turn(ANSWER):
        pass  # and the answer never comes back
    start = time.monotonic()
    with turns.turn(READ):
        assert time.monotonic() - start < 1.0
    with turns.turn(ANSWER):  # an answer never waits for the gap
        pass


def test_a_step_that_fails_gives_the_model_back():
    turns = ModelTurns()
    try:
        with turns.turn(READ):
            raise RuntimeError("a model call failed")
    except RuntimeError:
        pass
    done = []
    thread = _take(turns, READ, "next", done)
    thread.join(2)
    assert done == ["next"] and not turns._busy and not turns._waiting
