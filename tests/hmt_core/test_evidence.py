"""Evidence selection: the sentence (or two) of the recalled passages that shares the most rare words with the
answer and the question, with its span in the source's text and its pages; and the 'done' event that carries it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from tiny_models import CORPUS

from hmt_core import HMT, HMTConfig, read_text, stream_answer
from hmt_core.answer import WITHHELD, Passage
from hmt_core.evidence import (LIKELIHOOD_PROMPT, LIKELIHOOD_WEIGHT, LONG_SENTENCE, SHORTLIST, Evidence,
                               passage_sentences, question_likelihoods, rank_evidence, sentence_spans)
from hmt_core.state import MemoryState, SourceText

GUILD = ("The Guild\n\nThe keepers of the northern lights formed a guild in 1902. The secret password of the "
         "keepers' guild was 'blue heron', and it was written only inside the cover of each logbook. Mr. Wren kept "
         "his logbook in a tin box.")
STORM = "In the winter of 1911 a storm cut the island off for nineteen days. Wren kept the lamp burning every night."


def state_of(texts: dict[str, tuple[str, list[int], list[int]]]) -> MemoryState:
    """A memory state holding only the sources' texts and pages, which is all evidence selection reads."""
    sources = {name: SourceText(name, text, starts, numbers) for name, (text, starts, numbers) in texts.items()}
    return MemoryState("hmt", torch.zeros(0, 4), sources=sources)


def passage(state: MemoryState, name: str, start: int = 0, end: int | None = None, weight: float = 0.5) -> Passage:
    src = state.sources[name]
    end = len(src.text) if end is None else end
    return Passage([0], name, src.page_at(start), src.page_at(end - 1), start, end, src.text[start:end].strip(),
                   weight)


def texts(text: str) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text)]


def test_sentences_end_at_stops_and_blank_lines_but_not_after_abbreviations():
    assert texts(GUILD) == [
        "The Guild", "The keepers of the northern lights formed a guild in 1902.",
        "The secret password of the keepers' guild was 'blue heron', and it was written only inside the cover of each "
        "logbook.", "Mr. Wren kept his logbook in a tin box."]
    assert texts('He said "Stop!" Then J. R. Smith left, e.g. at noon?  Yes.') == [
        'He said "Stop!"', "Then J. R. Smith left, e.g. at noon?", "Yes."]
    assert texts("") == [] and texts("  \n\n ") == [] and texts("no stop at the end") == ["no stop at the end"]


def test_a_long_run_without_stops_is_cut_at_line_ends_and_semicolons():
    items = "\n".join(f"item {n}: a part of the machine and its number" for n in range(12))
    parts = texts(items + "; the end")
    assert len(parts) == 13 and parts[0] == "item 0: a part of the machine and its number"
    assert all(len(p) < 60 for p in parts)


def test_a_long_run_keeps_its_hard_wrapped_sentences_whole_and_cuts_before_code_and_headings():
    # PDF text as a manual has it: prose wrapped at line ends, running into code lines with no full stop between
    prose = ("For large\nmatrices it is better to avoid computing the eigenvectors if they are not needed by using\n"
             "the expression\n> evals <- eigen(Sm, only.values = TRUE)$values\n5.7.4 Singular value decomposition\n"
             "The function svd(M) takes an arbitrary matrix argument, M, and calculates the singular\nvalue "
             "decomposition of M, a matrix of orthonormal columns U with the same column space as M,\nand a second "
             "matrix of orthonormal columns V whose column space is the row space of M")
    assert len(prose) > LONG_SENTENCE
    assert texts(prose) == [
        "For large\nmatrices it is better to avoid computing the eigenvectors if they are not needed by using\n"
        "the expression", "> evals <- eigen(Sm, only.values = TRUE)$values", "5.7.4 Singular value decomposition",
        prose[prose.index("The function svd"):]]
    short = "Comments start with a hashmark, everything to the\nend of the line is a comment."
    assert texts(short) == [short]  # a sentence under LONG_SENTENCE is never cut at its line ends


def test_a_url_cut_at_its_dot_by_a_line_end_does_not_end_the_sentence():
    # as R's manuals come out of a PDF: the line ends inside the URL, right after one of its dots
    assert texts("The back-ends are ROracle (https://CRAN.\nR-project.org/package=ROracle) and\nRSQLite. Next.") == [
        "The back-ends are ROracle (https://CRAN.\nR-project.org/package=ROracle) and\nRSQLite.", "Next."]
    assert texts("Oracle (https://www.oracle.\ncom); Sybase. It ran on www.apple.\ncom too.") == [
        "Oracle (https://www.oracle.\ncom); Sybase.", "It ran on www.apple.\ncom too."]
    # a URL that ends its sentence still does: before a capital word, a number, a blank line, or after a bracket
    assert texts("See https://mariadb.org.\nThe notes follow.") == ["See https://mariadb.org.", "The notes follow."]
    assert texts("See https://example.org/notes.html.\n1.8 Serialization") == [
        "See https://example.org/notes.html.", "1.8 Serialization"]
    assert texts("See https://example.\n\ncom is next.") == ["See https://example.", "com is next."]
    assert texts("Use xml2 (https://CRAN.R-project.org/package=xml2).\nread.table reads it.") == [
        "Use xml2 (https://CRAN.R-project.org/package=xml2).", "read.table reads it."]
    assert texts("It costs 5.\nmore later.") == ["It costs 5.", "more later."]  # not a URL: an end as before


def test_a_sentence_cut_by_the_passage_edge_is_evidence_whole():
    text = ("Arrays are kept with their dims. The official way to coerce an array back to a simple\nvector object "
            "is to use as.vector(). Gulls nest on the rocks.")
    state = state_of({"m.pdf": (text, [0], [9])})
    cut = text.index("a simple") + len("a simple")  # the passage (a segment) ends mid-sentence
    assert passage_sentences(text, 0, cut) == [(0, 32), (33, text.index(" Gulls"))]
    best = rank_evidence(state, [passage(state, "m.pdf", 0, cut)], "How do I turn an array into a vector?",
                         "as.vector()")[0]
    assert best.text.startswith("The official way") and best.text.endswith("as.vector().")
    run = "x " * 3 * LONG_SENTENCE  # a run longer than the widened window on both sides is clipped to the passage
    assert passage_sentences(run, 1000, 1100) == [(1000, 1099)]


def test_the_sentence_the_question_points_to_with_its_span_in_the_source():
    state = state_of({"d.pdf": (GUILD, [0], [3])})
    best = rank_evidence(state, [passage(state, "d.pdf")], "What was the secret password of the keepers' guild?",
                         "The password was blue heron.")[0]
    assert best.text.startswith("The secret password") and best.text.endswith("each logbook.")
    assert state.sources["d.pdf"].text[best.char_start:best.char_end] == best.text
    assert (best.source, best.page, best.page_end) == ("d.pdf", 3, 3) and best.score > 1.2
    founded = rank_evidence(state, [passage(state, "d.pdf")], "When did the keepers form a guild?", "In 1902.")[0]
    assert founded.text == "The keepers of the northern lights formed a guild in 1902."


def test_among_the_sentences_the_question_points_to_the_answer_decides():
    text = "The keeper lit the lamp at dusk. The keeper lit the lamp with oil from the cellar."
    state = state_of({"a.txt": (text, [0], [1])})
    question = "How did the keeper light the lamp?"
    assert rank_evidence(state, [passage(state, "a.txt")], question, "At dusk.")[0].text == \
        "The keeper lit the lamp at dusk."
    assert rank_evidence(state, [passage(state, "a.txt")], question, "With oil.")[0].text == \
        "The keeper lit the lamp with oil from the cellar."
    # a wrong answer does not pull the evidence away from what the question asks about
    gulls = text + " Gulls nested on the rocks."
    state = state_of({"b.txt": (gulls, [0], [1])})
    assert "lamp" in rank_evidence(state, [passage(state, "b.txt")], question, "The gulls nested.")[0].text


def test_an_answer_drawn_from_two_sentences_takes_both():
    text = "The engineer was Margaret Ellory. She was born in Leith. The lamp was lit in 1887. Gulls nested there."
    state = state_of({"a.txt": (text, [0], [1])})
    best = rank_evidence(state, [passage(state, "a.txt")], "Who was the engineer and where was she born?",
                         "Margaret Ellory, born in Leith.")[0]
    assert best.text == "The engineer was Margaret Ellory. She was born in Leith."


def test_one_best_sentence_per_passage_strongest_first_and_none_without_a_shared_word():
    state = state_of({"d.pdf": (GUILD + "\n\n" + STORM, [0, len(GUILD) + 2], [3, 4])})
    guild, storm = passage(state, "d.pdf", 0, len(GUILD), 0.2), passage(state, "d.pdf", len(GUILD) + 2, None, 0.7)
    ranked = rank_evidence(state, [guild, storm], "How long did the storm cut Wren off?", "For nineteen days.")
    assert [e.page for e in ranked] == [4, 3]  # the storm's sentence first, then the guild passage's best one
    assert ranked[0].text == "In the winter of 1911 a storm cut the island off for nineteen days."
    assert all(isinstance(e, Evidence) for e in ranked)
    assert rank_evidence(state, [guild, storm], "Quantum chromodynamics?", "Gluons.") == []
    assert rank_evidence(state, [], "What was the password?", "blue heron") == []


def test_ties_go_to_the_passage_recalled_more_strongly():
    text = "The lamp was lit at dusk.\n\nThe lamp was lit at dusk."
    state = state_of({"a.txt": (text, [0], [1])})
    weak, strong = passage(state, "a.txt", 0, 25, 0.1), passage(state, "a.txt", 27, None, 0.9)
    best = rank_evidence(state, [weak, strong], "When was the lamp lit?", "At dusk.")[0]
    assert best.char_start == 27


def test_the_done_event_carries_the_evidence_from_the_recalled_passages(backbone, tokenizer):
    torch.manual_seed(0)
    model = HMT(backbone, HMTConfig(segment_length=32, sensory_size=4))
    text = "".join(f"Page {n}. " + CORPUS[n % 4] + "\n" for n in range(12))
    state = read_text(model, tokenizer, text, source="book")
    events = list(stream_answer(model, tokenizer, state, "what is the passkey?", max_new_tokens=6))
    passages, done = events[0].passages, events[-1]
    assert done.kind == "done" and done.evidence
    for found in done.evidence:  # every one lies inside a recalled passage and is the source's text there
        assert any(p.source == found.source and p.char_start <= found.char_start < found.char_end <= p.char_end
                   for p in passages)
        assert state.sources["book"].text[found.char_start:found.char_end] == found.text
    weigh = lambda sentences: question_likelihoods(backbone, tokenizer, "what is the passkey?", sentences)  # noqa: E731
    assert done.evidence == rank_evidence(state, passages, "what is the passkey?", done.text, likelihood=weigh)


def test_question_likelihoods_match_each_sentence_scored_alone(backbone, tokenizer):
    """The batched, right-padded call gives each sentence the mean log-probability per token of the question after
    it, as one unpadded forward per sentence does."""
    question = "When did the keepers form a guild?"
    sentences = texts(GUILD)
    batched = question_likelihoods(backbone, tokenizer, question, sentences)
    asked = tokenizer(" " + question, add_special_tokens=False)["input_ids"]
    for sentence, value in zip(sentences, batched):
        front = tokenizer(LIKELIHOOD_PROMPT.format(sentence=sentence), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = backbone(input_ids=torch.tensor([front + asked])).logits[0].float()  # [F + Q, V]
        alone = logits[len(front) - 1:-1].log_softmax(-1).gather(-1, torch.tensor(asked)[:, None]).mean().item()
        assert abs(value - alone) < 1e-4
    assert question_likelihoods(backbone, tokenizer, question, []) == []


def test_the_likelihood_reorders_the_lexical_shortlist_only():
    """A shortlisted sentence that predicts the question better wins over one sharing a little more of its words;
    only the SHORTLIST lexically best sentences are weighed, and one off the list never wins."""
    facts = [f"The guild's ledger {n} lists the keeper of lamp {n}." for n in range(SHORTLIST + 3)]
    text = " ".join(["The keeper of the lamp wrote the guild's ledger at dusk."] + facts)
    state = state_of({"a.txt": (text, [0], [1])})
    question, asked = "Who wrote the guild's ledger at dusk?", []

    def favour(word: str):
        def weigh(sentences: list[str]) -> list[float]:
            asked.append(list(sentences))
            return [0.0 if word in s else -1.0 / LIKELIHOOD_WEIGHT for s in sentences]
        return weigh

    plain = rank_evidence(state, [passage(state, "a.txt")], question, "")[0].text
    assert plain.startswith("The keeper of the lamp wrote")
    assert rank_evidence(state, [passage(state, "a.txt")], question, "", likelihood=favour("ledger 0 "))[0].text \
        .startswith("The guild's ledger 0 ")
    assert len(asked[-1]) == SHORTLIST and asked[-1][0] == plain
    assert rank_evidence(state, [passage(state, "a.txt")], question, "",
                         likelihood=favour(f"ledger {SHORTLIST + 2} "))[0].text == plain
    assert not any(f"ledger {SHORTLIST + 2} " in s for s in asked[-1])


def test_a_withheld_answer_names_no_evidence(backbone, tokenizer, monkeypatch):
    import hmt_core.answer as answer

    torch.manual_seed(0)
    model = HMT(backbone, HMTConfig(segment_length=32, sensory_size=4))
    state = read_text(model, tokenizer, "".join(CORPUS) * 3, source="book")
    # as if it quoted the system prompt
    monkeypatch.setattr(answer, "discloses_instructions", lambda text, prompt="": True)
    done = list(stream_answer(model, tokenizer, state, "what is the passkey?", max_new_tokens=6))[-1]
    assert done.text == WITHHELD and done.evidence == []


COVERED = """
from hmt_core.evidence import _covered
idf = {"keeper": 1e16, "guild": 1.0, "heron": 1.0, "logbook": 1.0}  # an order in which to add them changes the sum
print(_covered({"keeper", "guild", "heron", "logbook"}, {"keeper", "guild", "heron", "logbook"}, idf).hex(),
      _covered({"guild", "heron", "logbook"}, {"keeper", "guild", "heron", "logbook"}, idf).hex())
"""


def test_the_evidence_scores_do_not_depend_on_the_process_string_hashing():
    """Sets of terms iterate in an order that follows PYTHONHASHSEED, and float sums in another order round
    differently: the scores must be the same to the last bit in every process, or ties between sentences could fall
    differently from one run of the app to the next."""
    root = Path(__file__).resolve().parents[2]
    runs = {subprocess.run([sys.executable, "-c", COVERED], cwd=root, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(8)}
    assert len(runs) == 1


def test_a_sentence_opening_with_a_pronoun_is_shown_with_the_one_before():
    """'It includes large public works…' says what the question asks about; the sentence before says what 'it' is,
    which is the answer."""
    text = ("Construction has three sectors. Infrastructure is often called heavy civil. It includes large public "
            "works, dams, bridges and highways. Buildings are the second sector.")
    state = state_of({"a.txt": (text, [0], [1])})
    best = rank_evidence(state, [passage(state, "a.txt")], "Large public works, dams and bridges are in what sector?",
                         "")[0]
    assert best.text == "Infrastructure is often called heavy civil. It includes large public works, dams, bridges " \
                        "and highways."
    plain = rank_evidence(state, [passage(state, "a.txt")], "Which sector are the buildings?", "")[0]
    assert plain.text == "Buildings are the second sector."  # no pronoun: alone


def test_the_similarity_reorders_the_shortlist_beside_the_likelihood():
    """The sentence embedder's cosines weigh the same shortlist as the likelihood, SIMILARITY_WEIGHT per unit."""
    facts = [f"The guild's ledger {n} lists the keeper of lamp {n}." for n in range(SHORTLIST + 3)]
    text = " ".join(["The keeper of the lamp wrote the guild's ledger at dusk."] + facts)
    state = state_of({"a.txt": (text, [0], [1])})
    question, asked = "Who wrote the guild's ledger at dusk?", []

    def similar(sentences: list[str]) -> list[float]:
        asked.append(list(sentences))
        return [1.0 if "ledger 1 " in s else 0.0 for s in sentences]

    flat = lambda sentences: [0.0] * len(sentences)  # noqa: E731
    best = rank_evidence(state, [passage(state, "a.txt")], question, "", likelihood=flat, similarity=similar)[0]
    assert best.text.startswith("The guild's ledger 1 ") and len(asked[-1]) == SHORTLIST
    alone = rank_evidence(state, [passage(state, "a.txt")], question, "", similarity=similar)[0]
    assert alone.text == best.text  # it needs no likelihood
