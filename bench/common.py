"""What the benchmarks share: the machine description, long real text, and writing JSON plus a markdown table."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATA = ROOT / "data"


def machine() -> dict:
    """Enough about the machine to read absolute numbers with care."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "torch": torch.__version__}


def long_text(min_chars: int) -> str:
    """Real public-domain prose of at least min_chars characters: Moby-Dick and Austen, fetched offline once."""
    from hmt_core.training.corpora import fetch, load_texts

    fetch(DATA, ["mobydick", "austen"])
    texts = load_texts(DATA)
    text = texts["mobydick"] + "\n\n" + "\n\n".join(v for k, v in sorted(texts.items()) if k.startswith("austen"))
    if len(text) < min_chars:
        raise ValueError(f"only {len(text)} characters of text available, {min_chars} needed")
    return text


def training_steps(folder: str | Path) -> int | None:
    """The training steps a checkpoint's metadata records: 'steps' for a run's final/, 'step' for its last/."""
    from hmt_core.checkpoint import read_checkpoint_meta

    extra = read_checkpoint_meta(folder).get("extra", {})
    return extra.get("steps", extra.get("step"))


def describe_weights(folder: str | None) -> str:
    """For table headers and rows: 'untrained', or the checkpoint's folder and its training steps."""
    if not folder:
        return "untrained"
    steps = training_steps(folder)
    return f"{folder} ({'?' if steps is None else steps} steps)"


def write_results(name: str, data: dict, table: str, folder: Path = RESULTS) -> None:
    """<folder>/<name>.json and <name>.md (folder: bench/results unless a test or a trial run says otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    (folder / f"{name}.md").write_text(table, encoding="utf-8")
    print(table)
