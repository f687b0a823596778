"""No anonymous administration: switching or reloading the shared model (which clears every session's memory) is
off unless the server was started to allow it, refused inside the handler for everyone else, and logged with the
Gradio session and client address either way. The same refusal through a real server is in test_server.py."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from apptools import run

from app.handlers import ADMIN_NOT_LOCAL, ADMIN_OFF, ADMIN_WRONG, Admin, is_loopback
from app.session import Session
from app.ui import build_ui

ROOT = Path(__file__).resolve().parents[2]


def request(host: str, session_hash: str = "s3ss10n") -> SimpleNamespace:
    """What Gradio hands a handler as gr.Request: the session hash and the client's address."""
    return SimpleNamespace(session_hash=session_hash, client=SimpleNamespace(host=host))


@pytest.fixture
def loads(handlers, monkeypatch) -> list:
    """The engine.load calls made (each returns a description, so a load 'succeeds' without a real model)."""
    calls = []
    monkeypatch.setattr(handlers.engine, "load", lambda *args: calls.append(args) or "another model")
    return calls


def load(handlers, secret: str, host: str, session: Session | None = None) -> str:
    final = run(handlers.load_model("other/model", "/srv/nowhere", "cpu", secret, session or Session(),
                                    request(host)))
    return final["model_status"]


def test_switching_the_model_is_off_by_default_and_refused_in_the_handler(handlers, ready, loads, caplog):
    fingerprint, segments = handlers.engine.fingerprint, ready.memory.num_segments
    with caplog.at_level(logging.INFO, logger="app.handlers"):
        for host in ("203.0.113.9", "127.0.0.1"):  # the handler refuses whoever asks: off is off
            status = load(handlers, "", host)
            assert ADMIN_OFF in status and "--admin-secret" in status and "--local-admin" in status
    assert loads == [] and handlers.engine.fingerprint == fingerprint
    assert ready.check_model(handlers.engine.fingerprint) is None and ready.memory.num_segments == segments
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 2 and all("s3ss10n" in line for line in refused)
    assert "203.0.113.9" in refused[0] and "'/srv/nowhere'" in refused[0]


def test_the_admin_secret_lets_an_operator_switch_the_model(handlers, loads, caplog):
    handlers.admin = Admin(secret="correct horse battery staple")
    with caplog.at_level(logging.INFO, logger="app.handlers"):
        for wrong in ("", "correct horse", "correct horse battery staple "):
            assert ADMIN_WRONG in load(handlers, wrong, "203.0.113.9")
        assert loads == []
        assert "Loaded: another model" in load(handlers, "correct horse battery staple", "203.0.113.9")
    assert loads == [("other/model", "/srv/nowhere", "cpu")]
    lines = [r.getMessage() for r in caplog.records]
    assert sum("refused" in line for line in lines) == 3
    assert any(line.startswith("model load by session s3ss10n from 203.0.113.9") for line in lines)
    assert not any("battery" in line for line in lines)  # the secret itself is never logged


def test_local_admin_allows_this_machine_only(handlers, loads):
    handlers.admin = Admin(local=True)
    assert "Loaded" in load(handlers, "", "127.0.0.1") and "Loaded" in load(handlers, "", "::1")
    assert ADMIN_NOT_LOCAL in load(handlers, "", "192.168.1.20")
    handlers.admin = Admin(secret="s3cret", local=True)  # both: the secret works from anywhere
    assert "Loaded" in load(handlers, "s3cret", "192.168.1.20")
    assert ADMIN_WRONG in load(handlers, "guess", "192.168.1.20")
    assert len(loads) == 3


def test_without_a_request_nobody_is_local(handlers, loads):
    handlers.admin = Admin(local=True)
    final = run(handlers.load_model("other/model", "", "cpu", "", Session()))
    assert ADMIN_NOT_LOCAL in final["model_status"] and loads == []


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("10.0.0.2", False),
                                            ("example.org", False), ("", False), (None, False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def component(demo, elem_id: str) -> dict:
    return next(c["props"] for c in demo.config["components"] if c["props"].get("elem_id") == elem_id)


def test_the_page_disables_the_load_controls_and_says_how_to_enable_them(handlers):
    demo = build_ui(handlers)
    for elem_id in ("load", "backbone", "weights", "device"):
        assert component(demo, elem_id)["interactive"] is False
    assert component(demo, "admin-secret")["visible"] is False
    assert component(demo, "model-status")["value"] == ADMIN_OFF
    handlers.admin = Admin(secret="s3cret")
    demo = build_ui(handlers)
    assert component(demo, "load")["interactive"] is not False
    secret = component(demo, "admin-secret")
    assert secret["visible"] is True and secret["type"] == "password"


def app_main():
    """app.py (a module named like the app package, so loaded from its path)."""
    spec = importlib.util.spec_from_file_location("app_main", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_flags(monkeypatch):
    main = app_main()
    assert main.admin_from(main.parse_args([])) == Admin()
    assert main.admin_from(main.parse_args(["--local-admin"])) == Admin(local=True)
    for flags in (["--local-admin", "--host", "0.0.0.0"], ["--local-admin", "--share"]):
        with pytest.raises(SystemExit, match="loopback only"):
            main.admin_from(main.parse_args(flags))
    monkeypatch.setenv("HMT_ADMIN_SECRET", "from-the-environment")
    assert main.admin_from(main.parse_args([])) == Admin(secret="from-the-environment")
    assert main.admin_from(main.parse_args(["--admin-secret", "typed"])).secret == "typed"
