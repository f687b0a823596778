"""Training the evidence ranker: each ranking puts the sentence holding a question's answer against sentences of its
paragraph and lexically close ones elsewhere, none holding a gold answer; a whole tiny run saves a ranker that
loads, and never reads the articles kept out for choosing its weight or the held-out ones."""

import json
from pathlib import Path

from tiny_models import make_tokenizer, tiny_bert

from hmt_core.evidence_ranker import load_ranker
from hmt_core.training.train_evidence import CHOICE_ARTICLES, article_sentences, main, ranking_examples

FIRST = "The lighthouse stood on Skerry Rock. Its keeper was Thomas Wren. Wren lit the lamp at dusk."
SECOND = "Ships passed the rock at night. A storm in 1911 cut the island off. The keeper's lamp burned on."
TEXT = FIRST + "\n\n" + SECOND


def article(title: str = "Skerry") -> dict:
    questions = [
        {"id": "a", "question": "Who was the keeper of the lighthouse?", "answers": ["Thomas Wren"],
         "answer_starts": [TEXT.index("Thomas Wren")]},
        {"id": "b", "question": "When did a storm cut the island off?", "answers": ["1911", "in 1911"],
         "answer_starts": [TEXT.index("1911")]},
        {"id": "c", "question": "What did Wren do at dusk and what passed?",  # crosses two sentences: left out
         "answers": ["lit the lamp at dusk.\n\nShips"], "answer_starts": [TEXT.index("lit the lamp")]}]
    return {"title": title, "context": TEXT, "paragraph_spans": [[0, len(FIRST)], [len(FIRST) + 2, len(TEXT)]],
            "questions": questions}


def test_sentences_are_cut_per_paragraph_in_the_articles_coordinates():
    spans = article_sentences(article())
    assert [TEXT[a:b] for _, a, b in spans][:2] == ["The lighthouse stood on Skerry Rock.",
                                                    "Its keeper was Thomas Wren."]
    assert [n for n, _, _ in spans] == [0, 0, 0, 1, 1, 1]


def test_a_ranking_holds_its_answer_first_and_no_answer_among_the_rest():
    examples = {e["question"]: e for e in ranking_examples([article()], negatives=3, same_paragraph=1)}
    assert len(examples) == 2  # the answer across two sentences makes no ranking
    keeper = examples["Who was the keeper of the lighthouse?"]
    assert keeper["positive"] == "Its keeper was Thomas Wren."
    assert len(keeper["negatives"]) == 3
    assert sum(n in FIRST for n in keeper["negatives"]) == 1  # one of its own paragraph
    assert "The keeper's lamp burned on." in keeper["negatives"]  # elsewhere, sharing 'keeper'
    storm = examples["When did a storm cut the island off?"]
    assert storm["positive"] == "A storm in 1911 cut the island off."
    assert not any("1911" in n for n in storm["negatives"])


def test_a_tiny_run_saves_a_ranker_that_loads(tmp_path: Path):
    encoder, data, out = tmp_path / "encoder", tmp_path / "data", tmp_path / "ranker"
    tiny_bert().save_pretrained(encoder)
    make_tokenizer().save_pretrained(encoder)
    (data / "squad").mkdir(parents=True)
    titles = ["Skerry", *CHOICE_ARTICLES]
    (data / "squad/articles.jsonl").write_text("".join(json.dumps(article(t)) + "\n" for t in [*titles, "Held"]))
    (data / "squad/unanswerable.jsonl").write_text("")
    (data / "squad/split.json").write_text(json.dumps({"train": titles, "eval": ["Held"]}))
    main(["--out", str(out), "--data", str(data), "--encoder", str(encoder), "--negatives", "3", "--batch", "1",
          "--rank", "2", "--warmup", "1"])
    record = json.loads((out / "evidence_ranker.json").read_text())
    assert record["training"]["articles"] == ["Skerry"] and record["training"]["questions"] == 2
    assert record["training"]["optimizer_steps"] == 2
    assert not (out / "checkpoint.pt").exists()
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2
    assert len(load_ranker(out).scores("Who was the keeper?", ["Its keeper was Thomas Wren."])) == 1
