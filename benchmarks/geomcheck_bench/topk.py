"""The weights check's top-k at the seed models' real writer shapes, beside a float64 full SVD.

Per writer shape (``o_proj`` and ``down_proj`` of each registry model with published dimensions, shapes read
from the model built on the ``meta`` device), the CPU time of :func:`geomcheck.stats.weights.top_left_singular_vectors`
(exact top-k by ARPACK) on a synthetic Gaussian float32 matrix: its top singular values lie closer together
than trained writers' do, which is Lanczos' hard case, so real weights converge no slower. The float64 full SVD it replaces is measured at one reference
shape only (at the largest seed sizes it takes minutes to hours) and scaled to the others by its flop count,
``m · n · min(m, n)``; the table says which cells are extrapolated. At the reference shape the two bases are
compared: their subspace overlap must be ≥ 0.9999, or the row says so.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

import numpy as np

from geomcheck.stats.weights import subspace_overlap, top_left_singular_vectors

K = 16
MIN_OVERLAP = 0.9999


@dataclass(frozen=True)
class TopkRow:
    """One writer shape's timings (CPU seconds); ``full_measured`` tells a measured full SVD from a scaled one."""

    model: str
    kind: str
    shape: tuple[int, int]
    layers: int
    topk_s: float
    full_s: float
    full_measured: bool

    @property
    def speedup(self) -> float:
        return self.full_s / self.topk_s


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def synthetic_writer(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A Gaussian float32 ``(d_model, d_in)`` matrix: a flat top spectrum, the slow case for the top-k."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def timed_topk(weight: np.ndarray, k: int = K) -> tuple[np.ndarray, float]:
    start = cpu_seconds()
    basis = top_left_singular_vectors(weight, k)
    return basis, cpu_seconds() - start


def timed_full_svd(weight: np.ndarray, k: int = K) -> tuple[np.ndarray, float]:
    start = cpu_seconds()
    u = np.linalg.svd(weight.astype(np.float64), full_matrices=False)[0][:, :k]
    return u, cpu_seconds() - start


def svd_flops(shape: tuple[int, int]) -> float:
    m, n = shape
    return m * n * min(m, n)


def writer_shapes(name: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """A registry model's layer count and the ``(d_model, d_in)`` shape of each writer kind, from its meta model."""
    from geomcheck.run import registry
    from geomcheck.run.families import WRITERS, layout
    from geomcheck.run.models import meta_model

    resolved = layout(meta_model(registry.resolve(name)))
    block = resolved.blocks[0]
    shapes = {}
    for kind, writer in zip(WRITERS, resolved.family.writers):
        out_in = tuple(resolved.module(block, writer.path).weight.shape)
        shapes[kind] = (out_in[1], out_in[0]) if writer.transposed else out_in
    return len(resolved.blocks), shapes


Shapes = dict[str, tuple[int, dict[str, tuple[int, int]]]]  # model -> (layers, writer kind -> shape)


def measure(models: Shapes, reference: tuple[int, int], log=print) -> tuple[list[TopkRow], float]:
    """Every model's writer shapes (see :func:`writer_shapes`) timed; the rows and the overlap at the reference."""
    weight = synthetic_writer(reference)
    full_basis, full_ref = timed_full_svd(weight)
    basis, _ = timed_topk(weight)
    overlap = subspace_overlap(basis, full_basis)
    log(f"top-k: float64 full SVD at {reference[0]}×{reference[1]} took {full_ref:.1f} CPU s; overlap with top-{K} {overlap:.7f}")
    rows = []
    for name, (layers, shapes) in models.items():
        for kind, shape in shapes.items():
            _, topk_s = timed_topk(synthetic_writer(shape))
            measured = shape == reference
            full_s = full_ref if measured else full_ref * svd_flops(shape) / svd_flops(reference)
            rows.append(TopkRow(name, kind, shape, layers, topk_s, full_s, measured))
            log(f"top-k: {name} {kind} {shape[0]}×{shape[1]}: {topk_s:.2f} CPU s")
    return rows, overlap


def all_layers(rows: list[TopkRow], model: str) -> tuple[float, float]:
    """A model's all-layer weights check, top-k and full SVD, in CPU seconds: layers × each writer's time."""
    mine = [r for r in rows if r.model == model]
    return sum(r.layers * r.topk_s for r in mine), sum(r.layers * r.full_s for r in mine)


def table(rows: list[TopkRow], overlap: float, reference: tuple[int, int]) -> str:
    """The README's top-k table, with the all-layer totals per model and the reference overlap."""
    lines = [
        f"Top-{K} writer subspaces (`top_left_singular_vectors`, ARPACK `svds`, float32) against a float64 full SVD, "
        "CPU seconds per matrix, one thread, on Gaussian float32 matrices of each seed model's writer shapes (a flatter "
        f"top spectrum than trained weights': the slow case for the top-k). Full SVD measured at {reference[0]}×{reference[1]} and scaled by m·n·min(m, n) "
        "elsewhere (marked ~).",
        "",
        "| model | writer | shape | top-k s | full SVD s | × faster | all layers: top-k | all layers: full SVD |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for model in dict.fromkeys(r.model for r in rows):
        topk_total, full_total = all_layers(rows, model)
        for i, r in enumerate(x for x in rows if x.model == model):
            full = f"{r.full_s:.1f}" if r.full_measured else f"~{r.full_s:.0f}"
            totals = f"{topk_total / 60:.1f} min | ~{full_total / 3600:.1f} h" if i == 0 else " | "
            lines.append(f"| {model} | {r.kind} | {r.shape[0]}×{r.shape[1]} | {r.topk_s:.2f} | {full} | {r.speedup:.0f} | {totals} |")
    verdict = "" if overlap >= MIN_OVERLAP else f" — **below {MIN_OVERLAP}: the top-k is not the full SVD's subspace**"
    lines += ["", f"- subspace overlap of the top-{K} with the full SVD's at {reference[0]}×{reference[1]}: {overlap:.7f}{verdict}."]
    return "\n".join(lines)
