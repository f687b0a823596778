"""The app reading benchmark: it reads through the app's own ingest, and judges the progress line by what it shows."""

from tiny_models import CORPUS, make_backbone

from app.engine import Engine
from bench.app_reading import app_read, progress_errors, shown


def test_shown_reads_the_progress_line():
    assert shown("Reading “b.txt”: segment 12 (p. 7 of 29) · 430 tokens/s · about 25 s left") == (430.0, 25.0)
    assert shown("Reading “b.txt”: segment 80 (p. 9 of 29) · 301 tokens/s · about 3 min 05 s left") == (301.0, 185.0)
    assert shown("Reading “b.txt”: segment 1 (p. 1 of 29) · 0 tokens/s · estimating time left") is None


def test_progress_errors_compare_what_was_shown_with_what_happened():
    # 1000 tokens read from 0 s to 10 s: a true 100 tokens/s; at 5 s, 5 s were left
    run = {"seconds": 10.0, "tokens": 1000, "reading_started_s": 0.0,
           "lines": [(5.0, 500, 100.0, 5.0), (8.0, 800, 150.0, 1.0), (9.5, 950, 10.0, 100.0)]}
    errors = progress_errors(run)
    assert errors["lines_judged"] == 2  # the line after 90% of the tokens is not judged
    assert errors["rate_within_20pct"] == 0.5 and abs(errors["rate_error_max"] - 0.5) < 1e-9
    assert errors["left_within_20pct"] == 0.5 and abs(errors["left_error_max"] - 0.5) < 1e-9


def test_app_read_goes_through_ingest_and_the_cache(tmp_path, tokenizer):
    engine = Engine()
    engine.attach(make_backbone("llama"), tokenizer, None, "tiny")
    run = app_read(engine, " ".join(CORPUS * 40), tmp_path / "cache")
    assert run["tokens"] > 2 * engine.segment_length and run["seconds"] > 0
    assert 0 <= run["reading_started_s"] < run["seconds"]
    assert any((tmp_path / "cache").iterdir())  # the memory was written to the cache, as the app does
