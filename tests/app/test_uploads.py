"""Uploads live in a private folder of the app's own and are deleted once read or rejected (the route-level checks,
with a real server, are in test_server.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from apptools import FACTS, run

from app.handlers import EXAMPLE, Handlers
from app.session import Session
from app.views import unescape
from app.uploads import PREFIX, discard, inside, make_upload_folder


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_upload_folder_is_private_and_left_overs_of_ended_servers_are_removed(tmp_path):
    ended = tmp_path / f"{PREFIX}{dead_pid()}-abc"
    running = tmp_path / f"{PREFIX}{os.getpid()}-def"  # another server in this process, still running
    other = tmp_path / "hmt-something-else"
    for folder in (ended, running, other):
        (folder / "x").mkdir(parents=True)
    folder = make_upload_folder(tmp_path)
    assert folder.parent == tmp_path.resolve() and folder.name.startswith(f"{PREFIX}{os.getpid()}-")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and not any(folder.iterdir())
    assert not ended.exists() and running.exists() and other.exists()


def upload(folder: Path, name: str, data: bytes) -> Path:
    """A file where Gradio puts an upload: a folder per file (named by a hash of its bytes) in the upload folder."""
    path = folder / "0a1b2c" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_discard_deletes_uploads_only(tmp_path):
    folder = make_upload_folder(tmp_path / "uploads-parent")
    inside_file = upload(folder, "notes.txt", b"notes")
    outside_file = tmp_path / "mine.txt"
    outside_file.write_bytes(b"mine")
    sneaky = folder / ".." / "mine.txt"  # names a file outside through the upload folder
    discard([inside_file, outside_file, sneaky, folder, EXAMPLE], folder)
    assert not inside_file.exists() and not inside_file.parent.exists()  # Gradio's per-file folder goes too
    assert outside_file.exists() and folder.is_dir() and EXAMPLE.exists()
    assert inside(folder / "a" / "b", folder) and not inside(sneaky, folder)


@pytest.fixture
def uploading(engine, cache, tmp_path) -> Handlers:
    """Handlers whose uploads folder is a private folder of the test's own."""
    return Handlers(engine, cache, max_file_mb=1.0, uploads=make_upload_folder(tmp_path))


def test_ingest_deletes_the_uploads_it_was_given_read_or_rejected(uploading):
    good = upload(uploading.uploads, "keeper.txt", "\n".join(FACTS).encode())
    bad = upload(uploading.uploads, "report.docx", b"PK\x03\x04 not a document")
    session = Session()
    final = run(uploading.ingest([str(good), str(bad)], "", "", session))
    assert [d.name for d in session.documents] == ["keeper.txt"] and "report.docx" in unescape(final["status"])
    assert not good.exists() and not bad.exists()
    assert final["files"] is None  # the upload box is emptied: what it showed is gone
    empty = upload(uploading.uploads, "empty.txt", b"")
    run(uploading.ingest([str(empty)], "", "", session))
    assert not empty.exists()


def test_files_outside_the_upload_folder_are_kept(uploading, tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("The keeper's own notes. " * 20)
    run(uploading.ingest([str(mine)], "", "", Session()))
    assert mine.exists()


def test_an_upload_two_calls_read_at_once_is_deleted_when_the_last_ends(uploading):
    shared = upload(uploading.uploads, "keeper.txt", "\n".join(FACTS).encode())  # Gradio stores equal files once
    first = uploading.ingest([str(shared)], "", "", Session())
    next(first)  # started, still reading
    run(uploading.ingest([str(shared)], "", "", Session()))
    assert shared.exists()
    run(first)
    assert not shared.exists()


def test_an_upload_that_is_gone_gets_a_clear_message(uploading):
    gone = uploading.uploads / "0a1b2c" / "notes.txt"
    final = run(uploading.ingest([str(gone)], "", "", Session()))
    assert "no longer on the server" in final["status"] and "Add the file again" in final["status"]


def test_a_busy_session_refuses_and_still_deletes_the_uploads(uploading, ready):
    ready.busy = True
    path = upload(uploading.uploads, "later.txt", b"Later notes. " * 20)
    final = run(uploading.ingest([str(path)], "", "", ready))
    assert "Still busy" in final["status"] and "add your files or text again" in final["status"]
    assert not path.exists() and final["files"] is None
    ready.busy = False
