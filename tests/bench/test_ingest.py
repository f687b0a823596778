"""The ingest benchmark's reading rounds: every reading path is timed in each round and reported against the plain
forward of that round."""

import argparse

from tiny_models import make_backbone

from bench.ingest import PAGE_CHARS, document_parts, throughput, throughput_rows


def test_throughput_times_every_reading_path_in_each_round(tmp_path, tokenizer):
    make_backbone("llama").save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    args = argparse.Namespace(model=str(tmp_path / "tiny"), hmt_weights=None, quantize="none", segment_length=32,
                              device="cpu", throughput_tokens=300, rounds=2, summary_batch=4, documents=3,
                              low_precision=True, baseline_weights=None)
    t = throughput(args)
    assert t["low_precision"] == "int8" and len(t["rounds"]) == 2 and t["tokens"] >= 300
    for r in t["rounds"]:
        for name in ("hmt", "plain", "plain_hidden", "batched_summaries", "batched_documents", "int8",
                     "int8_batched_summaries", "int8_batched_documents"):
            assert r[f"{name}_tokens_per_s"] > 0
        assert abs(r["int8_ratio_vs_plain"] - r["int8_tokens_per_s"] / r["plain_tokens_per_s"]) < 1e-9
    rows = throughput_rows(t)
    assert any(row.startswith("| HMT ingest, int8 backbone, summaries in batches of 4 / plain forward |")
               and row.endswith("| >= 1.0 |") for row in rows)


def test_document_parts_are_whole_pages_that_together_are_the_text():
    text = "".join(chr(ord("a") + n % 26) * PAGE_CHARS for n in range(7)) + "tail"  # 8 pages, the last short
    parts = document_parts(text, 3)
    assert [len(pages) for pages in parts] == [3, 3, 2]
    assert "".join(page for pages in parts for page in pages) == text
    assert all(len(page) == PAGE_CHARS for pages in parts for page in pages[:-1])
