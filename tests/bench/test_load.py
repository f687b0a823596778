"""The load benchmark's arithmetic and table (the benchmark itself launches the real app: python -m bench.load)."""

from bench.load import markdown, percentile


def test_percentile_interpolates_between_ranks():
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert abs(percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) - 4.8) < 1e-9


def test_the_table_compares_each_level_with_idle():
    def level(readers: int, p95: float) -> dict:
        return {"readers": readers, "questions": 20, "first_token": {"p50": p95 / 2, "p95": p95},
                "total": {"p50": 3.0, "p95": 4.0}}

    data = {"settings": {"max_new_tokens": 32, "pages": 100}, "machine": {"cpu": "test cpu", "torch_threads": 2},
            "levels": [level(0, 1.0), level(2, 2.5)]}
    table = markdown(data)
    assert "| 0 | 20 | 0.50 / 1.00 | 1.00 |" in table and "| 2 | 20 | 1.25 / 2.50 | 2.50 |" in table
