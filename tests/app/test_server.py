"""Through a real server on loopback (the app's own `serve`, a tiny random model, in this process): what any HTTP
client can do without the page. Switching the model by fn_index is refused and logged; uploads live in a private
folder, are deleted once read or rejected and are never served back; Gradio refuses uploads over the app's limit."""

from __future__ import annotations

import logging
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import httpx
import pytest
from apptools import fn_index, queue_call, served, tiny_engine
from gradio_client import Client, handle_file

from app.cache import MemoryCache
from app.extract import MB
from app.handlers import ADMIN_OFF, Handlers
from app.uploads import make_upload_folder

NOTES = "The lighthouse keeper counted ships every evening. The passkey is 12345. " * 12


@dataclass
class Live:
    url: str
    demo: gr.Blocks
    handlers: Handlers

    def upload(self, name: str, data: bytes) -> str:
        """POST a file to Gradio's /upload, as the page and gradio_client do; returns the server's path for it."""
        response = httpx.post(f"{self.url}/gradio_api/upload", files={"files": (name, data)})
        response.raise_for_status()
        return response.json()[0]

    def fetch(self, path: str) -> int:
        """The status of a GET for a server file by path, on both of Gradio's file routes (the worse of the two)."""
        codes = [httpx.get(f"{self.url}/gradio_api/{route}{path}").status_code for route in ("file=", "file/")]
        return min(codes, key=lambda code: code != 200)  # 200 if either route served it


@pytest.fixture(scope="module")
def live(tokenizer, tmp_path_factory):
    """The app served on a free loopback port with a 0.25 MB limit, its own upload folder and disk cache."""
    folder = tmp_path_factory.mktemp("server")
    handlers = Handlers(tiny_engine(tokenizer), MemoryCache(folder / "cache"), max_file_mb=0.25,
                        uploads=make_upload_folder(folder))
    with served(handlers) as (url, demo):
        yield Live(url, demo, handlers)


def test_switching_the_model_by_fn_index_is_refused_and_logged(live, monkeypatch, caplog):
    alice = Client(live.url, verbose=False)
    endpoints = alice.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/ingest", "/ask"} <= set(endpoints) and not any("load" in name for name in endpoints)
    alice.predict(files=[], text=NOTES, password="", api_name="/ingest")
    loads = []
    monkeypatch.setattr(live.handlers.engine, "load", lambda *args: loads.append(args) or "another model")
    fingerprint = live.handlers.engine.fingerprint
    # the Settings button's event: gradio_client does not offer it, but any HTTP client can join the queue with it
    index = fn_index(live.demo, live.handlers.load_model)
    with caplog.at_level(logging.INFO, logger="app.handlers"):
        done = queue_call(live.url, index, ["HuggingFaceTB/x", "/no/such/folder", "cpu", "", None], "mallory1")
    assert done["success"] and ADMIN_OFF in done["output"]["data"][0]
    assert loads == [] and live.handlers.engine.fingerprint == fingerprint
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused == ["model load refused for session mallory1 from 127.0.0.1: backbone='HuggingFaceTB/x' "
                       "weights='/no/such/folder' device='cpu'"]
    answer, citations, evidence = alice.predict(question="What is the passkey?", max_new_tokens=16, api_name="/ask")
    assert citations and citations[0]["source"] == "pasted text"  # alice's memory is still there
    assert evidence["source"] == "pasted text" and evidence["citation"] in range(1, len(citations) + 1)


def test_an_upload_is_never_served_and_is_deleted_once_read(live):
    uploads = live.handlers.uploads
    assert stat.S_IMODE(uploads.stat().st_mode) == 0o700
    path = live.upload("keeper.txt", NOTES.encode())
    assert Path(path).parent.parent == uploads and Path(path).exists()
    assert live.fetch(path) in (403, 404)  # not even while it waits to be read
    client = Client(live.url, verbose=False)
    summary = client.predict(files=[handle_file(path)], text="", password="", api_name="/ingest")
    assert "keeper" in summary and "segments" in summary
    assert not Path(path).exists() and live.fetch(path) in (403, 404)
    assert list(uploads.rglob("*.txt")) == []


def test_a_rejected_upload_is_deleted_too(live):
    path = live.upload("report.docx", b"PK\x03\x04 not really a document")
    summary = Client(live.url, verbose=False).predict(files=[handle_file(path)], text="", password="",
                                                      api_name="/ingest")
    assert "report.docx" in summary and "No documents in memory" in summary
    assert not Path(path).exists() and live.fetch(path) in (403, 404)


def test_gradio_refuses_uploads_over_the_apps_limit(live):
    limit = live.handlers.max_bytes
    assert limit == MB // 4
    response = httpx.post(f"{live.url}/gradio_api/upload", files={"files": ("big.txt", b"x" * (limit + 1))})
    assert response.status_code == 413
    assert list(live.handlers.uploads.rglob("big.txt")) == []
    path = live.upload("fits.txt", b"\0" * limit)  # exactly the limit: stored, and within the app's limit too
    assert Path(path).stat().st_size == limit
    summary = Client(live.url, verbose=False).predict(files=[handle_file(path)], text="", password="",
                                                      api_name="/ingest")
    assert "binary data" in summary and "limit" not in summary  # refused for what it is, not for its size
    assert not Path(path).exists()


def test_a_cancelled_api_job_stops_reading_and_sending_the_file_again_reads_the_rest(live, tmp_path):
    """gradio_client's job.cancel() stops the read at its next step, keeping what was read (the same as the page's
    Cancel); the same client sending the same file again goes on from there instead of saying it is in memory."""
    book = tmp_path / "book.txt"
    book.write_text("".join(f"Chapter {n}. " + "The tide rose and fell again on the grey shore. " * 20 + "\n\n"
                            for n in range(1, 181)))
    cached = len(live.handlers.cache)
    client = Client(live.url, verbose=False)
    job = client.submit([handle_file(str(book))], "", "", api_name="/ingest")
    deadline = time.monotonic() + 120
    while not any(str(out).startswith("Reading") for out in job.outputs()):
        assert not job.done() and time.monotonic() < deadline, "the read ended before it could be cancelled"
        time.sleep(0.05)
    job.cancel()
    summary = "Still busy"
    while "Still busy" in summary:  # the cancelled read lets go of the session at its next step
        assert time.monotonic() < deadline, "the cancelled read did not stop"
        time.sleep(0.2)
        summary = client.predict([], "", "", api_name="/ingest")
    assert "book.txt" in summary and "partly read" in summary
    assert len(live.handlers.cache) == cached  # nothing half read is cached
    summary = client.predict([handle_file(str(book))], "", "", api_name="/ingest")
    assert "Continued “book.txt”" in summary and "partly read" not in summary and "already in memory" not in summary
    assert len(live.handlers.cache) == cached + 1
