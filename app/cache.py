"""Disk cache of read documents' memory states, so a document read before loads in about a second.

An entry is a folder named by its key (sha256 of the file bytes + the model fingerprint) holding the MemoryState
(state/) and entry.json, the last file written. Entries are built in a temporary folder and renamed into place, so a
crash leaves a stray temporary folder (ignored, later swept) and never a half-written entry; an entry that fails
to load is dropped and the document is read again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from pathlib import Path

from hmt_core import MemoryState

logger = logging.getLogger(__name__)

ENTRY_FORMAT = 1
ENTRY_FILE = "entry.json"
STATE_DIR = "state"
TMP_MARK = ".tmp-"
STALE_SECONDS = 3600


def entry_key(content_digest: str, model_fingerprint: str) -> str:
    """The cache key of a document read by a model: one hash of both."""
    return hashlib.sha256(f"{content_digest}:{model_fingerprint}".encode()).hexdigest()[:40]


class MemoryCache:
    """Memory states of single documents on disk, keyed by entry_key(); safe against crashes and damaged entries."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep()

    def _folder(self, key: str) -> Path:
        if not key.isalnum():
            raise ValueError(f"bad cache key {key!r}")
        return self.root / key

    def get(self, key: str) -> tuple[MemoryState, dict] | None:
        """The cached (state, info) for key, or None; a damaged entry is deleted and reported as a miss."""
        folder = self._folder(key)
        if not folder.is_dir():
            return None
        try:
            info = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
            if info.get("format") != ENTRY_FORMAT or info.get("key") != key:
                raise ValueError("entry.json does not belong to this entry")
            state = MemoryState.load(folder / STATE_DIR)
            if state.cache.shape[0] != len(state.cache_segments) or state.num_segments != info.get("segments"):
                raise ValueError("the memory does not match its description")
        except Exception as err:  # a damaged file can fail in many ways (safetensors raises its own error type)
            logger.warning("dropping damaged cache entry %s: %s", folder, err)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return state, info

    def put(self, key: str, state: MemoryState, info: dict | None = None) -> None:
        """Store a state under key atomically; if another writer got there first, keep theirs."""
        folder = self._folder(key)
        tmp = self.root / f"{key}{TMP_MARK}{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
            state.save(tmp / STATE_DIR)
            entry = {**(info or {}), "format": ENTRY_FORMAT, "key": key, "segments": state.num_segments,
                     "created": time.time()}
            (tmp / ENTRY_FILE).write_text(json.dumps(entry), encoding="utf-8")
            if folder.exists():
                shutil.rmtree(tmp, ignore_errors=True)
                return
            tmp.rename(folder)
        except OSError as err:
            logger.warning("could not write cache entry %s: %s", folder, err)
            shutil.rmtree(tmp, ignore_errors=True)

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

    def __len__(self) -> int:
        return sum(1 for p in self.root.iterdir() if p.is_dir() and TMP_MARK not in p.name)
