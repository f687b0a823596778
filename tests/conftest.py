"""Shared fixtures (a tiny tokenizer and a tiny random backbone, from tiny_models) and the skip of the browser tests
where Debian's chromium is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tiny_models import make_backbone, make_tokenizer
from transformers import PreTrainedTokenizerFast

NO_CHROMIUM = ("browser tests skipped: Debian's chromium is not installed; get it with `sudo apt-get install chromium` "
               "(CI installs it)")
SKIPPED_BROWSER = pytest.StashKey[int]()  # how many browser tests were skipped for want of chromium


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture
def backbone() -> torch.nn.Module:
    return make_backbone("llama")


def have_chromium() -> bool:
    """Debian's chromium, which the browser tests drive with Playwright (never a browser Playwright downloads)."""
    return Path("/usr/bin/chromium").exists() or shutil.which("chromium") is not None


def pytest_collection_modifyitems(config, items):
    """Without chromium, skip the `browser` tests (everything else runs) and say so once at the end."""
    if have_chromium():
        return
    browser = [item for item in items if "browser" in item.keywords]
    for item in browser:
        item.add_marker(pytest.mark.skip(reason=NO_CHROMIUM))
    config.stash[SKIPPED_BROWSER] = len(browser)


def pytest_terminal_summary(terminalreporter, config):
    if config.stash.get(SKIPPED_BROWSER, 0):
        terminalreporter.write_line(NO_CHROMIUM)
