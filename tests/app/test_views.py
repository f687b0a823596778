import torch

from app import views
from app.views import reflow
from hmt_core.answer import Passage
from hmt_core.evidence import Evidence
from hmt_core.state import MemoryState, SourceText


def test_reflow_joins_pdf_line_wraps_and_keeps_paragraphs():
    text = ("The wind came from the\nnorth and the gulls turned.  \n\n  The Keepers\n\n\n"
            "Every evening the keeper\n climbed.")
    assert reflow(text) == ("The wind came from the north and the gulls turned.\n\nThe Keepers\n\n"
                            "Every evening the keeper climbed.")
    assert reflow("one line") == "one line"
    assert reflow("\n\n") == ""



def test_the_answer_is_found_word_for_word_in_its_evidence():
    text = "The Spanish renamed the fort San\nMateo, and the French left."
    assert views.answer_spans(text, "san mateo.") == [(29, 38)]  # case, the line break and the full stop aside
    assert views.answer_spans(text, " the French …") == [(44, 54)]  # an answer cut at a loop
    assert views.answer_spans(text, "Santa Fe") == [] and views.answer_spans(text, "  ") == []


def test_evidence_that_a_passage_edge_cuts_still_belongs_to_that_passage():
    passage = Passage([0], "m.pdf", 1, 1, 100, 200, "x" * 100, 0.5)
    whole = Evidence("a sentence begun before the passage", "m.pdf", 1, 1, 80, 140, 1.0)
    elsewhere = Evidence("a sentence after it", "m.pdf", 1, 1, 200, 240, 2.0)
    assert views.evidence_in(passage, [elsewhere, whole]) is whole
    assert views.evidence_in(passage, [elsewhere]) is None


def test_the_evidence_box_marks_the_answer_in_the_evidence_but_not_after_a_not_found():
    state = MemoryState("hmt", torch.zeros(0, 1))
    text = "The Spanish renamed the fort San Mateo. The French left."
    state.sources["book"] = SourceText("book", text)
    passage = Passage([0], "book", None, None, 0, len(text), text, 1.0)
    evidence = [Evidence(text[:38], "book", None, None, 0, 38, 1.0)]
    shown = views.passages_html(state, [passage], "What was it renamed?", evidence, True, "San Mateo")
    box = shown[shown.index("hmt-evidence-box"):shown.index('class="hmt-passage"')]
    assert '<mark class="hmt-evidence hmt-answer">San Mateo</mark>' in box
    assert '<mark class="hmt-evidence">The Spanish renamed the fort </mark>' in box
    closest = views.passages_html(state, [passage], "What was it renamed?", evidence, False, "San Mateo")
    assert "hmt-answer\">" not in closest[closest.index("hmt-evidence-box"):closest.index('class="hmt-passage"')]


def test_the_api_evidence_gives_where_the_answer_stands_in_the_document():
    text = "Intro. The Spanish renamed the fort San Mateo. The French left."
    passage = Passage([0], "book", None, None, 0, len(text), text, 1.0)
    evidence = [Evidence(text[7:46], "book", None, None, 7, 46, 1.0)]
    data = views.evidence_data(evidence, [passage], True, "san mateo")
    assert text[data["answer_span"][0]:data["answer_span"][1]] == "San Mateo" and data["citation"] == 1
    assert views.evidence_data(evidence, [passage], True, "Santa Fe")["answer_span"] is None
    assert views.evidence_data(evidence, [passage], False, "San Mateo")["answer_span"] is None  # 'not found'
    assert data["not_found_by"] is None
    after = views.evidence_data(evidence, [passage], False, "The documents do not seem to say.", "probe")
    assert after["not_found_by"] == "probe" and after["supports_answer"] is False
    assert views.evidence_data(evidence, [passage], True, "San Mateo", "probe")["not_found_by"] is None  # an answer


def test_a_not_found_answer_says_what_said_it():
    for by in ("recall", "probe", "reply_score", "reader"):
        line = views.not_found_line(by)
        assert line.startswith("Why “not found”: ") and line.endswith(".") and views.NOT_FOUND_WHY[by] in line
    assert "probe" in views.not_found_line("probe") and "recall" in views.not_found_line("recall")
    assert views.not_found_line(None) == "" and views.not_found_line("bm25") == ""


def test_the_sentence_closest_to_the_question_is_marked_and_explained():
    state = MemoryState("hmt", torch.zeros(0, 1))
    text = "The harbour froze early.\nShips waited outside for weeks. Salt grew dear."
    state.sources["book"] = SourceText("book", text)
    passage = Passage([0], "book", None, None, 0, len(text), text, 1.0, {"sentence": 0.5}, {"sentence": 1.2},
                      sentences=[(25, 57)])
    shown = views.passages_html(state, [passage], "How long did the boats stay?")
    assert '<mark class="hmt-sentence">Ships waited outside for weeks.</mark>' in shown  # reflowed: same text
    assert "closest to the question in meaning" in shown and "sentences +1.20" in shown


def test_the_memory_panel_shows_the_sentence_vectors():
    from app.session import Session
    from hmt_core.recall.sentences import SentenceIndex

    session = Session()
    session.memory = MemoryState("hmt", torch.zeros(0, 4))
    session.memory.sources["book"] = SourceText("book", "One. Two.")
    assert "Sentence vectors" not in views.memory_html(session, "", "model")
    session.memory.sentences = SentenceIndex(torch.zeros(5, 384, dtype=torch.float16), torch.tensor([0, 0, 1, 1, 1]),
                                             2)
    assert "Sentence vectors</th><td>5 sentences of 2 segments × 384 dims, 3.8 KB" in views.memory_html(
        session, "", "model")
