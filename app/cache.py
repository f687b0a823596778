"""Disk cache of read documents' memory states, so a document read before loads in about a second.

An entry is a folder named by its key (sha256 of the file bytes + the model fingerprint) holding the MemoryState
(state/) and entry.json, the last file written: the document's description, the model fingerprint, when the entry
was made, and a manifest with the sha256 of every file. Entries are built in a private temporary folder and renamed
into place, so a crash leaves a stray temporary folder (ignored, later swept) and never a half-written entry.

A load checks the manifest and then the memory itself against what the loaded model reads (Expect: memory width
and dtype, token keys' shape, finite values); an entry that fails any check is deleted and reported as damaged
(CacheDamaged), so the document is read again. Everything is written private to the server's user (folders 0700,
files 0600). The cache keeps at most `max_mb` (least recently used entries go first; a hit counts as a use) and
no entry older than `max_days`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from hmt_core import MemoryState

logger = logging.getLogger(__name__)

ENTRY_FORMAT = 2  # 2: the manifest (sha256 of every file) and the model fingerprint in entry.json
ENTRY_FILE = "entry.json"
STATE_DIR = "state"
TMP_MARK = ".tmp-"
STALE_SECONDS = 3600
MAX_MB = 2000.0
MAX_DAYS = 30.0
DAY = 86400.0


class CacheDamaged(ValueError):
    """A cache entry was there but could not be used; it has been deleted. The message says what was wrong."""


@dataclass(frozen=True)
class Expect:
    """What a memory read by the loaded model looks like, so that an entry that parses but would not fit is never
    served: the model fingerprint, the state kind ('hmt' or 'rmt'), the memory width d and dtype, the token keys'
    [K, r] per segment (None when the model keeps no token keys; they are float16) and the vocabulary size."""

    fingerprint: str
    kind: str
    width: int
    dtype: torch.dtype
    token_keys: tuple[int, int] | None = None
    vocab_size: int | None = None


def entry_key(content_digest: str, model_fingerprint: str) -> str:
    """The cache key of a document read by a model: one hash of both."""
    return hashlib.sha256(f"{content_digest}:{model_fingerprint}".encode()).hexdigest()[:40]


def check_state(state: MemoryState, expect: Expect) -> None:
    """Raise ValueError when the state does not fit the model `expect` describes: its kind, the memory's width,
    dtype and values, the token keys' shape, dtype and values, and the bookkeeping recall and the page index by."""
    n, cache = state.num_segments, state.cache
    if state.kind != expect.kind:
        raise ValueError(f"a {state.kind} memory, but the model reads {expect.kind} memories")
    if cache.ndim != 2 or cache.shape[1] != expect.width:
        raise ValueError(f"memory of shape {list(cache.shape)}, but the model's memories are {expect.width} wide")
    if cache.dtype != expect.dtype:
        raise ValueError(f"memory in {cache.dtype}, but the model's memories are {expect.dtype}")
    if not bool(torch.isfinite(cache).all()):
        raise ValueError("the memory holds values that are not finite")
    rows = state.cache_segments
    if state.kind == "hmt" and (cache.shape[0] != len(rows) or rows != sorted(set(rows))
                                or any(not 0 <= i < n for i in rows)):
        raise ValueError("the memory's rows do not match its segments")
    keys = state.token_keys
    if expect.token_keys is None and keys is not None:
        raise ValueError("token keys, but the model keeps none")
    if expect.token_keys is not None:
        if keys is None or list(keys.shape) != [n, *expect.token_keys] or keys.dtype != torch.float16:
            shape = "none" if keys is None else f"{list(keys.shape)} in {keys.dtype}"
            raise ValueError(f"token keys {shape}, but the model keeps [{n}, {expect.token_keys[0]}, "
                             f"{expect.token_keys[1]}] in torch.float16")
        if not bool(torch.isfinite(keys).all()):
            raise ValueError("the token keys hold values that are not finite")
    if [s.index for s in state.segments] != list(range(n)):
        raise ValueError("the segments are not numbered in order")
    for s in state.segments:
        if s.source not in state.sources or not 0 <= s.char_start <= s.char_end <= len(state.sources[s.source].text):
            raise ValueError(f"segment {s.index} points outside the text it was read from")
    if expect.vocab_size and any(not 0 <= i < expect.vocab_size for i in state.sensory_ids):
        raise ValueError("the sensory memory holds tokens the model does not know")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> dict[str, Path]:
    """Every file under folder but entry.json, by its path relative to folder."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and p != folder / ENTRY_FILE}


def _make_private(folder: Path) -> None:
    """Folders 0700 and files 0600 from folder down: nobody but the server's user can read what was read."""
    folder.chmod(0o700)
    for path in folder.rglob("*"):
        path.chmod(0o700 if path.is_dir() else 0o600)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class MemoryCache:
    """Memory states of single documents on disk, keyed by entry_key(); safe against crashes and damaged entries,
    private to the server's user, bounded in size (least recently used first) and in age."""

    def __init__(self, root: str | Path, max_mb: float = MAX_MB, max_days: float = MAX_DAYS) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.max_seconds = max_days * DAY
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.sweep()
        self.prune()

    def _folder(self, key: str) -> Path:
        if not key.isalnum():
            raise ValueError(f"bad cache key {key!r}")
        return self.root / key

    def get(self, key: str, expect: Expect) -> tuple[MemoryState, dict] | None:
        """The cached (state, info) for key, checked against `expect`, or None (no entry, an entry past the age
        limit or of an older format, which is deleted). Raises CacheDamaged, after deleting the entry, when the
        entry does not pass every check."""
        folder = self._folder(key)
        if not folder.is_dir():
            return None
        try:
            os.utime(folder / ENTRY_FILE)  # its time is when the entry was last used (prune keeps the recent ones)
            info = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
            if info.get("format") != ENTRY_FORMAT or time.time() - info["created"] > self.max_seconds:
                shutil.rmtree(folder, ignore_errors=True)
                return None
            self._check_files(folder, info, key, expect)
            state = MemoryState.load(folder / STATE_DIR)
            if state.num_segments != info.get("segments"):
                raise ValueError("the memory does not match its description")
            check_state(state, expect)
        except Exception as err:  # a damaged file can fail in many ways (safetensors raises its own error type)
            logger.warning("dropping damaged cache entry %s: %s", folder, err)
            shutil.rmtree(folder, ignore_errors=True)
            raise CacheDamaged(str(err)) from err
        return state, info

    @staticmethod
    def _check_files(folder: Path, info: dict, key: str, expect: Expect) -> None:
        """The entry belongs here and to this model, and its files are exactly those of its manifest, unchanged."""
        if info.get("key") != key or info.get("fingerprint") != expect.fingerprint:
            raise ValueError("entry.json does not belong to this entry or to this model")
        manifest, files = info.get("files"), _files(folder)
        if not isinstance(manifest, dict) or set(manifest) != set(files):
            raise ValueError("the entry's files are not those of its manifest")
        for name, path in files.items():
            if _sha256(path) != manifest[name]:
                raise ValueError(f"{name} was changed after it was written")

    def put(self, key: str, state: MemoryState, expect: Expect, info: dict | None = None) -> None:
        """Store a state read by the model `expect` describes under key, atomically and privately; if another
        writer got there first, keep theirs. A state that does not fit the model, or larger than the whole cache,
        is not stored."""
        folder = self._folder(key)
        tmp = self.root / f"{key}{TMP_MARK}{uuid.uuid4().hex}"
        try:
            check_state(state, expect)
            tmp.mkdir(mode=0o700)
            state.save(tmp / STATE_DIR)
            _make_private(tmp)
            manifest = {name: _sha256(path) for name, path in _files(tmp).items()}
            size = _size(tmp)
            if size > self.max_bytes:
                logger.info("not caching %s: %d bytes, over the cache's %d", key, size, self.max_bytes)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            entry = {**(info or {}), "format": ENTRY_FORMAT, "key": key, "fingerprint": expect.fingerprint,
                     "segments": state.num_segments, "created": time.time(), "files": manifest}
            fd = os.open(tmp / ENTRY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f)
            if folder.exists():
                shutil.rmtree(tmp, ignore_errors=True)
                return
            tmp.rename(folder)
        except (OSError, ValueError) as err:
            logger.warning("could not write cache entry %s: %s", folder, err)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        self.prune()

    def prune(self) -> int:
        """Delete entries past the age limit, of an older format or unreadable, then the least recently used ones
        until the cache fits its size bound; returns how many were deleted."""
        now, kept, removed = time.time(), [], 0
        for folder in self._entries():
            try:
                info = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
                fresh = info.get("format") == ENTRY_FORMAT and now - float(info["created"]) <= self.max_seconds
                used = (folder / ENTRY_FILE).stat().st_mtime
            except (OSError, ValueError, KeyError, TypeError):
                fresh = False
            if fresh:
                kept.append((used, _size(folder), folder))
            else:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        total = sum(size for _, size, _ in kept)
        for _, size, folder in sorted(kept):  # least recently used first
            if total <= self.max_bytes:
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            removed += 1
        if removed:
            logger.info("cache %s: deleted %d entries (age, format or size bound)", self.root, removed)
        return removed

    def sweep(self, older_than: float = STALE_SECONDS) -> int:
        """Delete temporary folders left by writers that crashed (older than `older_than` seconds); returns how many."""
        now, removed = time.time(), 0
        for path in self.root.glob(f"*{TMP_MARK}*"):
            try:
                if now - path.stat().st_mtime >= older_than:
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
            except OSError:
                continue
        return removed

    def _entries(self) -> list[Path]:
        return [p for p in self.root.iterdir() if p.is_dir() and TMP_MARK not in p.name]

    def __len__(self) -> int:
        return len(self._entries())
