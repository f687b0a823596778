"""The lexical recall channel: BM25 over the text of every segment read, one document per segment.

HMT's recall attention finds segments by meaning; a question naming a rare word, a number or an identifier
(`max_new_tokens`, "chapter 42") is better found by the words themselves. This index keeps each segment's terms as
the segment is read and scores all segments with BM25 (the bm25s library) when a question comes.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import zipfile
import zlib
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
import torch
from bm25s.stopwords import STOPWORDS_EN_PLUS

TOKENIZER_VERSION = "1"  # bump whenever terms() returns anything different for some text
LEXICAL_FORMAT = 1
FILE = "lexical.npz"
K1, B = 1.2, 0.75  # Lucene's (and tantivy's) BM25 parameters

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana and Han: written without spaces between words
# A word: one CJK character, or a run of other word characters, joined by single dots or hyphens (os.path.join,
# snake-case, 3.2); underscores are word characters, so max_new_tokens is one word too.
WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+(?:[.\-][^\W{_CJK}]+)*")
_SEPARATORS = re.compile(r"[._\-]+")
_CAMEL = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")  # getLogger -> get Logger, HTTPServer -> HTTP Server
STOP_WORDS = frozenset(STOPWORDS_EN_PLUS)  # NLTK's English list
_STEMMER = Stemmer.Stemmer("english")
_STEMMER_LOCK = threading.Lock()  # a Stemmer has internal state and must not be called concurrently
logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets DEBUG, which logs every build wherever logging is on


def _words(token: str) -> list[str]:
    """The case-folded words one WORD match stands for: itself, and for an identifier also its parts."""
    whole = token.casefold()
    if token.isalnum() and (token.islower() or token.istitle()):  # the common case in prose: a plain word
        return [whole]
    parts = []
    for piece in _SEPARATORS.split(token):
        if piece.isascii() and not (piece.islower() or piece.isupper() or piece.istitle()):
            parts += _CAMEL.findall(piece)
        elif piece:
            parts.append(piece)
    return [whole] + [p for p in (part.casefold() for part in parts) if p != whole]


def _stem(words: list[str]) -> list[str]:
    with _STEMMER_LOCK:
        return _STEMMER.stemWords(words)


def terms(text: str) -> list[str]:
    """The BM25 terms of a text, in order: case-folded, English stop words removed, Snowball-stemmed; an identifier
    gives its whole and its parts (getLogger -> getlogg, get, logger), so that either finds it."""
    return _stem([w for token in WORD.findall(text) for w in _words(token) if w not in STOP_WORDS])


class LexicalIndex:
    """BM25 scores of a query against every segment read so far.

    add() tokenises one segment and keeps its term ids; that is all reading costs. bm25s builds its index in one go,
    so scores() builds a retriever from all segments when some were added since the last build and keeps it until
    the next add.
    """

    def __init__(self) -> None:
        self._vocab: dict[str, int] = {}  # term -> id, ids 0..V-1 in order of first appearance
        self._docs: list[np.ndarray] = []  # per segment: int32 [its number of terms], never modified in place
        self._retriever: bm25s.BM25 | None = None
        self._built = 0  # segments in self._retriever

    def __len__(self) -> int:
        return len(self._docs)

    @property
    def num_terms(self) -> int:
        """Distinct terms indexed so far."""
        return len(self._vocab)

    def add(self, text: str) -> None:
        """Append one segment's text (empty text is an empty segment)."""
        ids = [self._vocab.setdefault(t, len(self._vocab)) for t in terms(text)]
        self._docs.append(np.array(ids, dtype=np.int32))

    @classmethod
    def from_texts(cls, texts: list[str]) -> LexicalIndex:
        """An index of these segments, in order."""
        index = cls()
        for text in texts:
            index.add(text)
        return index

    def copy(self) -> LexicalIndex:
        """A copy that can be extended without touching this one (term id arrays and the retriever are shared)."""
        other = LexicalIndex()
        other._vocab, other._docs = dict(self._vocab), list(self._docs)
        other._retriever, other._built = self._retriever, self._built
        return other

    @staticmethod
    def query_terms(query: str) -> list[str]:
        """The distinct terms of a query, in order; each counts once in the score."""
        return list(dict.fromkeys(terms(query)))

    def build(self) -> None:
        """Build the retriever now if segments were added since the last build, so that the next query does not wait
        for it (a reader calls this when it finishes a document; copies made afterwards share it)."""
        if self._docs:
            self._retriever_now()

    def _retriever_now(self) -> bm25s.BM25:
        if self._retriever is None or self._built != len(self._docs):
            retriever = bm25s.BM25(k1=K1, b=B)
            retriever.index(([d.tolist() for d in self._docs], self._vocab), create_empty_token=False,
                            show_progress=False)
            self._retriever, self._built = retriever, len(self._docs)
        return self._retriever

    def scores(self, query: str) -> torch.Tensor:
        """BM25 score of every segment for the query: float32 [len(self)], 0 where no term matches."""
        ids = [self._vocab[t] for t in self.query_terms(query) if t in self._vocab]
        if not ids:
            return torch.zeros(len(self), dtype=torch.float32)
        return torch.from_numpy(self._retriever_now().get_scores_from_ids(ids).astype(np.float32, copy=False))

    @staticmethod
    def matches(query: str, text: str) -> list[tuple[int, int]]:
        """Character spans (start, end) in `text` of the words whose terms match a term of the query, for
        highlighting; an identifier matched by one part is highlighted whole."""
        wanted = set(terms(query))
        spans = []
        for m in WORD.finditer(text):
            words = [w for w in _words(m.group()) if w not in STOP_WORDS]
            if words and wanted.intersection(_stem(words)):
                spans.append(m.span())
        return spans

    def save(self, folder: Path) -> None:
        """Write lexical.npz into an existing folder: the vocabulary and every segment's term ids, zip-compressed
        (the retriever is rebuilt from them on the first query after load)."""
        lengths = np.array([len(d) for d in self._docs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # [n + 1]
        ids = np.concatenate(self._docs) if self._docs else np.zeros(0, dtype=np.int32)  # [total terms]
        meta = {"format": LEXICAL_FORMAT, "tokenizer": TOKENIZER_VERSION, "segments": len(self._docs),
                "terms": len(self._vocab)}
        np.savez_compressed(Path(folder) / FILE, meta=_bytes(json.dumps(meta)),
                            vocab=_bytes("\n".join(self._vocab)), ids=ids.astype(np.int32), offsets=offsets)

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        """Read what save() wrote; raises ValueError on a missing, damaged, other-format or other-tokenizer file."""
        path = Path(folder) / FILE
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(data["meta"].tobytes().decode("utf-8"))
                vocab = data["vocab"].tobytes().decode("utf-8")
                ids, offsets = data["ids"], data["offsets"]
        except (OSError, RuntimeError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise ValueError(f"lexical index {path} is missing or damaged: {err}") from err
        if not isinstance(meta, dict) or meta.get("format") != LEXICAL_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise ValueError(f"lexical index {path} has format {found}, expected {LEXICAL_FORMAT}")
        if meta.get("tokenizer") != TOKENIZER_VERSION:
            raise ValueError(f"lexical index {path} was tokenised by version {meta.get('tokenizer')}, this is "
                             f"version {TOKENIZER_VERSION}: the text must be indexed again")
        words = vocab.split("\n") if vocab else []
        n = meta.get("segments")
        vocab_ids = dict(zip(words, range(len(words))))
        if (not isinstance(n, int) or len(vocab_ids) != meta.get("terms") or len(words) != len(vocab_ids)
                or ids.dtype != np.int32 or offsets.dtype != np.int64 or offsets.shape != (n + 1,)
                or offsets[0] != 0 or offsets[-1] != len(ids) or np.any(np.diff(offsets) < 0)
                or (len(ids) and (ids.min() < 0 or ids.max() >= len(words)))):
            raise ValueError(f"lexical index {path} is damaged: its arrays do not fit together")
        index = cls()
        index._vocab = vocab_ids
        index._docs = np.split(ids, offsets[1:-1]) if n else []
        return index


def _bytes(text: str) -> np.ndarray:
    """UTF-8 text as a uint8 array, so that np.load needs no pickle."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
