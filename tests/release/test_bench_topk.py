"""The benchmark's top-k table on small shapes: its rows, its scaled full-SVD cells, its overlap line; and
the seed models' writer shapes as the registry publishes them. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def topk(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import geomcheck_bench.topk

    return geomcheck_bench.topk


def test_table_rows_scaled_cells_and_the_overlap_at_the_reference(topk):
    shapes = {"a": (3, {"attn_out": (96, 96), "mlp_out": (96, 192)}), "b": (2, {"attn_out": (128, 96), "mlp_out": (128, 256)})}
    rows, overlap = topk.measure(shapes, (96, 96), log=lambda _: None)
    assert overlap >= topk.MIN_OVERLAP
    assert [(r.model, r.kind, r.shape, r.full_measured) for r in rows] == [
        ("a", "attn_out", (96, 96), True), ("a", "mlp_out", (96, 192), False),
        ("b", "attn_out", (128, 96), False), ("b", "mlp_out", (128, 256), False),
    ]
    reference = rows[0].full_s
    assert rows[1].full_s == pytest.approx(reference * 2)  # 96·192·96 / 96³
    lines = topk.table(rows, overlap, (96, 96)).splitlines()
    body = [l for l in lines if l.startswith("| a ") or l.startswith("| b ")]
    assert len(body) == 4 and all(l.count("|") == 9 for l in body)
    assert "~" not in body[0].split("|")[5] and "~" in body[1].split("|")[5]
    assert any("overlap of the top-16 with the full SVD's at 96×96" in l for l in lines)


def test_a_top_k_that_misses_the_subspace_is_called_out(topk):
    rows = [topk.TopkRow("a", "attn_out", (8, 8), 2, 1.0, 10.0, True)]
    assert "below 0.9999" in topk.table(rows, 0.5, (8, 8))


def test_writer_shapes_come_from_the_registry_config(topk):
    layers, shapes = topk.writer_shapes("mistral-nemo-12b")
    assert layers == 40 and shapes == {"attn_out": (5120, 4096), "mlp_out": (5120, 14336)}  # 32 heads × 128 ≠ 5120
