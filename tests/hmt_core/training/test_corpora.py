"""Offline tests of hmt_core.training.corpora: SQuAD records, the article split, R lazy-load decoding, archive
reading."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

from hmt_core.training import corpora
from hmt_core.training.corpora import (CorpusError, RReader, build_squad_articles, build_squad_unanswerable, fetch,
                                      read_lazyload, split_articles)

RAW_SQUAD = {
    "version": "v2.0",
    "data": [
        {
            "title": "Normans",
            "paragraphs": [
                {
                    "context": "The Normans lived in France.",
                    "qas": [
                        {
                            "question": "Where did the Normans live?",
                            "id": "q1",
                            "answers": [
                                {"text": "France", "answer_start": 21},
                                {"text": "France", "answer_start": 21},
                                {"text": "in France", "answer_start": 18},
                            ],
                            "is_impossible": False,
                        },
                        {
                            "question": "Where did the Vikings live?",
                            "id": "q2",
                            "answers": [],
                            "plausible_answers": [{"text": "France", "answer_start": 21}],
                            "is_impossible": True,
                        },
                    ],
                },
                {
                    "context": "Rollo led them.\nHe swore fealty.",
                    "qas": [
                        {
                            "question": "Who led them?",
                            "id": "q3",
                            "answers": [{"text": "Rollo", "answer_start": 0}],
                            "is_impossible": False,
                        }
                    ],
                },
            ],
        },
        {
            "title": "Oxygen",
            "paragraphs": [{"context": "Oxygen is O.", "qas": []}],
        },
    ],
}


def test_squad_articles_join_paragraphs_and_move_answer_offsets() -> None:
    normans, oxygen = build_squad_articles(RAW_SQUAD)
    assert normans["context"] == "The Normans lived in France.\n\nRollo led them.\nHe swore fealty."
    for (start, end), paragraph in zip(normans["paragraph_spans"], RAW_SQUAD["data"][0]["paragraphs"]):
        assert normans["context"][start:end] == paragraph["context"]
    assert [q["id"] for q in normans["questions"]] == ["q1", "q3"]
    q1, q3 = normans["questions"]
    assert q1["answers"] == ["France", "in France"] and q1["answer_starts"] == [21, 18]
    assert q3["answer_starts"] == [30]
    for q in normans["questions"]:
        for text, start in zip(q["answers"], q["answer_starts"]):
            assert normans["context"][start : start + len(text)] == text
    assert oxygen == {"title": "Oxygen", "context": "Oxygen is O.", "paragraph_spans": [[0, 12]], "questions": []}


def test_squad_unanswerable_questions_are_kept_apart_with_their_paragraph() -> None:
    normans, oxygen = build_squad_unanswerable(RAW_SQUAD)
    assert normans == {"title": "Normans",
                       "questions": [{"id": "q2", "question": "Where did the Vikings live?", "paragraph": 0}]}
    assert oxygen == {"title": "Oxygen", "questions": []}


def test_squad_articles_reject_misplaced_answers() -> None:
    raw = json.loads(json.dumps(RAW_SQUAD))
    raw["data"][0]["paragraphs"][1]["qas"][0]["answers"][0]["answer_start"] = 3
    with pytest.raises(ValueError, match="q3"):
        build_squad_articles(raw)


def test_split_is_deterministic_disjoint_and_by_article() -> None:
    articles = [{"title": f"article_{i}", "questions": [{"id": f"{i}.{j}"} for j in range(3)]} for i in range(35)]
    train, evaluation = split_articles(articles)
    assert (len(train), len(evaluation)) == (25, 10)
    train_titles, eval_titles = {a["title"] for a in train}, {a["title"] for a in evaluation}
    assert not train_titles & eval_titles and train_titles | eval_titles == {a["title"] for a in articles}
    again_train, again_eval = split_articles(list(reversed(articles)))
    assert {a["title"] for a in again_eval} == eval_titles and {a["title"] for a in again_train} == train_titles
    _, other_eval = split_articles(articles, seed=1)
    assert {a["title"] for a in other_eval} != eval_titles
    assert split_articles(articles[:1]) == (articles[:1], [])
    with pytest.raises(ValueError):
        split_articles(articles[:2] + articles[:1])


def _flags(kind: int, attr: bool = False, tag: bool = False, levels: int = 0) -> bytes:
    return struct.pack(">i", kind | (attr << 9) | (tag << 10) | (levels << 12))


def _char(s: str | None, latin1: bool = False) -> bytes:
    if s is None:
        return _flags(9) + struct.pack(">i", -1)
    raw = s.encode("latin-1" if latin1 else "utf-8")
    return _flags(9, levels=4 if latin1 else 8) + struct.pack(">i", len(raw)) + raw


def _strs(values: list[str | None], names_attr: bytes = b"") -> bytes:
    body = b"".join(_char(v) for v in values)
    return _flags(16, attr=bool(names_attr)) + struct.pack(">i", len(values)) + body + names_attr


def _names(names: list[str], first: bool) -> bytes:
    tag = _flags(1) + _char("names") if first else _flags(255 | (1 << 8))
    return _flags(2, tag=True) + tag + _strs(names) + _flags(254)


def _serialize(body: bytes) -> bytes:
    return b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8" + body


def test_r_reader_decodes_character_vectors_names_and_encodings() -> None:
    body = _flags(16) + struct.pack(">i", 3) + _char("caf\u00e9") + _char("na\u00efve", latin1=True) + _char(None)
    assert RReader(_serialize(body)).read() == ["caf\u00e9", "na\u00efve", None]
    named = _strs(["a", "b"], _names(["x", "y"], first=True))
    assert RReader(_serialize(named)).read() == {"x": "a", "y": "b"}
    with pytest.raises(ValueError, match="XDR"):
        RReader(b"A\n" + body).read()


def test_read_lazyload_decodes_rdx_index_and_zlib_records() -> None:
    objects = {"persuasion": ["Chapter 1", "", "Sir Walter Elliot"], "emma": ["EMMA"]}
    rdb, offsets = b"", {}
    for name, lines in objects.items():
        payload = zlib.compress(_serialize(_strs(lines)))
        record = struct.pack(">I", len(_serialize(_strs(lines)))) + payload
        offsets[name] = (len(rdb), len(record))
        rdb += record
    variables = b"".join(_flags(13) + struct.pack(">iii", 2, *offsets[n]) for n in objects)
    index = (
        _flags(19, attr=True) + struct.pack(">i", 3)
        + _flags(19, attr=True) + struct.pack(">i", len(objects)) + variables + _names(list(objects), first=True)
        + _flags(19, attr=True) + struct.pack(">i", 0) + _names([], first=False)
        + _flags(10) + struct.pack(">ii", 1, 1)
        + _names(["variables", "references", "compressed"], first=False)
    )
    assert read_lazyload(gzip.compress(_serialize(index)), rdb) == objects


def _deb(files: dict[str, bytes]) -> bytes:
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = b"!<arch>\n"
    for name, data in [("debian-binary", b"2.0\n"), ("control.tar.xz", b"x"), ("data.tar.xz", tar_bytes.getvalue())]:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += header + data + b"\n" * (len(data) % 2)
    return out


def test_member_reads_files_from_deb(tmp_path: Path) -> None:
    deb = tmp_path / "r-cran-x_1.0_all.deb"
    deb.write_bytes(_deb({"./usr/lib/R/site-library/x/data/Rdata.rdx": b"index"}))
    assert corpora._member(deb, "/x/data/Rdata.rdx") == b"index"
    with pytest.raises(CorpusError):
        corpora._member(deb, "missing.rdb")


def test_text_helpers() -> None:
    raw = ("\ufeffheader\r\n*** START OF THIS EBOOK ***\r\nCall me Ishmael.\r\n\r\n"
           "End of Project Gutenberg's X\r\n*** END OF\r\nlicense")
    assert corpora.strip_gutenberg(raw) == "Call me Ishmael.\n"
    verses = [
        {"book": "Genesis", "chapter": 1, "verse": 1, "text": "In the beginning."},
        {"book": "Exodus", "chapter": 1, "verse": 1, "text": "Now these."},
    ]
    jsonl = "\n".join(json.dumps(v) for v in verses)
    assert corpora.bible_text(jsonl) == "Genesis\n1:1 In the beginning.\n\nExodus\n1:1 Now these.\n"


def test_fetch_skips_present_sources_and_loads_them(tmp_path: Path) -> None:
    (tmp_path / "text").mkdir()
    (tmp_path / "text/mobydick.txt").write_text("Call me Ishmael.\n", encoding="utf-8")
    assert fetch(tmp_path, ["mobydick"]) == {"mobydick": [tmp_path / "text/mobydick.txt"]}
    assert corpora.load_texts(tmp_path) == {"mobydick": "Call me Ishmael.\n"}
    with pytest.raises(ValueError, match="unknown"):
        fetch(tmp_path, ["gutenberg"])


def test_fetch_says_which_command_to_run_without_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpora.shutil, "which", lambda _: None)
    with pytest.raises(CorpusError, match="apt-get download r-cran-janeaustenr"):
        fetch(tmp_path, ["austen"])
    assert not (tmp_path / "text").exists()
