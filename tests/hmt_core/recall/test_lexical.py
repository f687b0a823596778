import math

import numpy as np
import pytest
import torch

from hmt_core.recall import lexical
from hmt_core.recall.lexical import FILE, K1, B, LexicalIndex, terms

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune must want a wife.",
    "Question: what is the passkey? Answer: the passkey is 12345. Numbers 0 1 2 3 4 5 6 7 8 9.",
]
CODE = [
    "Call getLogger(__name__) once per module and keep the result.",
    "The logger wrote in the logbook; a logger is also a lumberjack.",
    "Pass max_new_tokens to generate() to bound the answer.",
    "An HTTPServer answers requests; see os.path.join for paths and snake-case for names.",
    "Whales, ships and the sea.",
]


def stems(*words: str) -> set[str]:
    return set(lexical._STEMMER.stemWords(list(words)))


@pytest.mark.parametrize("text,expected", [
    ("getLogger", ("getlogger", "get", "logger")),
    ("max_new_tokens", ("max_new_tokens", "max", "new", "tokens")),
    ("HTTPServer", ("httpserver", "http", "server")),
    ("os.path.join", ("os.path.join", "os", "path", "join")),
    ("snake-case", ("snake-case", "snake", "case")),
])
def test_identifiers_give_their_whole_and_their_parts(text, expected):
    assert set(terms(text)) == stems(*expected)


def test_terms_fold_case_stem_drop_stop_words_and_keep_numbers():
    assert terms("The Whales were RUNNING") == ["whale", "run"]
    assert terms("STRASSE") == terms("straße")  # casefold, not lower
    assert terms("page 12345, version 3.2") == ["page", "12345", "version", "3.2", "3", "2"]
    assert terms("the of and is") == []


def test_other_scripts_give_terms():
    assert terms("机器学习") == ["机", "器", "学", "习"]
    assert terms("Привет, мир") == ["привет", "мир"]
    assert len(terms("Λόγος και αριθμός")) == 3
    index = LexicalIndex.from_texts(["机器学习很有趣", "Привет, мир", "Whales"])
    assert index.scores("学习")[0] > 0 and index.scores("学习")[1:].eq(0).all()
    assert index.scores("мир").argmax() == 1


@pytest.mark.parametrize("query,segment", [
    ("logger", 0), ("get", 0), ("getLogger", 0), ("max_new_tokens", 2), ("tokens", 2), ("new", 2),
    ("HTTPServer", 3), ("server", 3), ("http", 3), ("os.path.join", 3), ("join", 3), ("snake case", 3),
])
def test_identifiers_are_found_by_part_and_whole(query, segment):
    scores = LexicalIndex.from_texts(CODE).scores(query)
    assert scores[segment] > 0
    if query != "logger":
        assert scores.argmax() == segment


def test_whole_identifier_ranks_its_segment_first():
    index = LexicalIndex.from_texts(CODE)
    logger = index.scores("logger")
    assert logger[0] > 0 and logger[1] > logger[0]  # "logger" twice in a short segment wins for the part alone
    assert index.scores("getLogger").argmax() == 0  # the whole identifier puts its own segment first


def test_stemming_matches_other_forms():
    scores = LexicalIndex.from_texts(["He runs every morning.", "She sat quietly."]).scores("running")
    assert scores[0] > 0 and scores[1] == 0


def test_case_does_not_matter():
    index = LexicalIndex.from_texts(["THE WHITE WHALE", "a black cat"])
    assert torch.equal(index.scores("white whale"), index.scores("White WHALE"))
    assert index.scores("whale")[0] > 0 and index.scores("whale")[1] == 0


def test_scores_are_lucene_bm25():
    index = LexicalIndex.from_texts(["whale ship", "ship ship sea", "sea"])
    scores = index.scores("whale")
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    idf = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    average = (2 + 3 + 1) / 3
    expected = idf * 1 / (1 + K1 * (1 - B + B * 2 / average))
    assert scores[0].item() == pytest.approx(expected, rel=1e-5)
    assert scores[1:].tolist() == [0.0, 0.0]
    assert index.scores("whale whale").tolist() == scores.tolist()  # a repeated query term counts once


@pytest.mark.parametrize("query", ["", "   ", "the of and is", "?!... ;-)", "机器学习", "🙂🐋", "x" * 10_000,
                                   "the whale " * 1000, "\x00\ufffd", "🐋 whale"])  # no whales in CORPUS
def test_odd_queries_never_raise(query):
    index = LexicalIndex.from_texts(CORPUS + [""])
    scores = index.scores(query)
    assert scores.dtype == torch.float32 and scores.shape == (len(CORPUS) + 1,)
    assert scores.eq(0).all()
    assert LexicalIndex.matches(query, CORPUS[0]) == []
    empty = LexicalIndex().scores(query)
    assert empty.shape == (0,) and empty.dtype == torch.float32


def test_empty_segments_are_segments():
    index = LexicalIndex.from_texts(["", "whale", ""])
    assert len(index) == 3
    assert index.scores("whale").tolist()[::2] == [0.0, 0.0] and index.scores("whale")[1] > 0


def test_adding_segments_one_by_one_scores_like_indexing_at_once():
    texts = CORPUS + CODE
    queries = ["passkey 12345", "getLogger", "the best of times", "quick fox"]
    incremental = LexicalIndex()
    for i, text in enumerate(texts):
        incremental.add(text)
        assert incremental.scores(queries[i % len(queries)]).shape == (i + 1,)  # builds in between
    at_once = LexicalIndex.from_texts(texts)
    for q in queries:
        assert torch.equal(incremental.scores(q), at_once.scores(q))
        assert at_once.scores(q).max() > 0


def test_copies_are_independent():
    original = LexicalIndex.from_texts(CORPUS)
    before = original.scores("the passkey")
    copy = original.copy()
    copy.add("passkey passkey passkey: a brand new segment")
    assert len(original) == len(CORPUS) and len(copy) == len(CORPUS) + 1
    assert torch.equal(original.scores("the passkey"), before)
    assert copy.scores("the passkey").argmax() == len(CORPUS)
    assert original.scores("brand").eq(0).all()
    original.add("brand")
    assert len(copy) == len(CORPUS) + 1 and copy.scores("brand")[-1] > 0 and copy.scores("brand")[:-1].eq(0).all()


def test_save_and_load_round_trip(tmp_path):
    index = LexicalIndex.from_texts(CORPUS + ["", "机器学习"] + CODE)
    index.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [FILE]
    loaded = LexicalIndex.load(tmp_path)
    assert len(loaded) == len(index)
    for q in ["passkey 12345", "getLogger", "学习", "Ishmael's money", "nothing matches zzz"]:
        assert torch.equal(loaded.scores(q), index.scores(q))
    loaded.add("Ishmael")  # a loaded index keeps growing
    assert loaded.scores("Ishmael").argmax() == len(index)
    (tmp_path / "empty").mkdir()
    LexicalIndex().save(tmp_path / "empty")
    assert len(LexicalIndex.load(tmp_path / "empty")) == 0


def test_missing_or_damaged_files_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="missing or damaged"):
        LexicalIndex.load(tmp_path)
    LexicalIndex.from_texts(CORPUS).save(tmp_path)
    data = (tmp_path / FILE).read_bytes()
    (tmp_path / FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="missing or damaged"):
        LexicalIndex.load(tmp_path)
    (tmp_path / FILE).write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="missing or damaged"):
        LexicalIndex.load(tmp_path)


def test_a_flipped_byte_raises_value_error_or_changes_nothing(tmp_path):
    index = LexicalIndex.from_texts(CORPUS + CODE)
    index.save(tmp_path)
    data = (tmp_path / FILE).read_bytes()
    raised = 0
    for pos in range(0, len(data), len(data) // 40):
        (tmp_path / FILE).write_bytes(data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:])
        try:
            loaded = LexicalIndex.load(tmp_path)
        except ValueError:
            raised += 1
            continue
        assert torch.equal(loaded.scores("passkey getLogger whales"), index.scores("passkey getLogger whales"))
    assert raised > 20


def test_arrays_that_do_not_fit_raise_value_error(tmp_path):
    LexicalIndex.from_texts(CORPUS).save(tmp_path)
    with np.load(tmp_path / FILE) as data:
        arrays = dict(data)
    arrays["ids"] = arrays["ids"] + 10_000  # term ids beyond the vocabulary
    np.savez_compressed(tmp_path / FILE, **arrays)
    with pytest.raises(ValueError, match="do not fit"):
        LexicalIndex.load(tmp_path)


@pytest.mark.parametrize("name,value,message", [("LEXICAL_FORMAT", 99, "format 99"),
                                                ("TOKENIZER_VERSION", "0-old", "tokenised by version 0-old")])
def test_other_format_or_tokenizer_raises_value_error(tmp_path, monkeypatch, name, value, message):
    with monkeypatch.context() as patch:
        patch.setattr(lexical, name, value)
        LexicalIndex.from_texts(CORPUS).save(tmp_path)
    with pytest.raises(ValueError, match=message):
        LexicalIndex.load(tmp_path)


def test_matches_are_character_spans_of_matching_words():
    text = "Call getLogger once; the Logger runs, then it ran. Max_New_Tokens = 5"
    spans = LexicalIndex.matches("logger running tokens", text)
    assert [text[a:b] for a, b in spans] == ["getLogger", "Logger", "runs", "Max_New_Tokens"]
    assert spans[0] == (5, 14)
    assert LexicalIndex.matches("the of", text) == []
    assert LexicalIndex.matches("学", "机器学习") == [(2, 3)]
    assert LexicalIndex.matches("学习", "机器学习") == [(2, 3), (3, 4)]


def test_query_terms_are_distinct_and_in_order():
    assert LexicalIndex.query_terms("Whales? whale, WHALES and ships") == ["whale", "ship"]
    assert LexicalIndex.query_terms("?!") == []
