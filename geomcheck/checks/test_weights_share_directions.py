"""Hypothesis 4: weight matrices of different layers share directions: the top-k output directions of the
matrices that write into the residual stream overlap across layers more than random subspaces do.

Null rejected: each layer's top-k subspace is uniformly random, independently of the others (each matrix
turned by its own random rotation). It cannot tell shared *learned* directions from a privileged basis: a
few coordinates (massive activations, a norm's scale) that every layer writes into are shared directions too."""

from __future__ import annotations

from typing import TYPE_CHECKING

from geomcheck.stats.weights import OverlapSummary, excess_shared_dimensions, summarize_overlap

if TYPE_CHECKING:
    from geomcheck.run.pipeline import WeightOverlap


def overlaps(weights: WeightOverlap) -> dict[str, tuple[OverlapSummary, float, str]]:
    """Per writer kind: its overlap against the rotation null, the directions shared beyond chance and the
    recorded figure, for the checkpoint and its untrained twin alike."""
    found = {}
    for kind, matrix in weights.matrices.items():
        summary = summarize_overlap(matrix, weights.k, weights.d_model)
        excess = excess_shared_dimensions(summary.mean_offdiag, weights.k, weights.d_model)
        text = (
            f"{kind} {summary.mean_offdiag:.3f} = {summary.ratio:.1f}× chance k/d = {weights.k}/{weights.d_model}, "
            f"{excess:.2f} of {weights.k} directions shared beyond chance; rotation null {summary.chance:.4f} ± "
            f"{summary.null_sd:.2g}, z = {summary.null_z:.1f} (adjacent {summary.mean_adjacent:.3f})"
        )
        found[kind] = (summary, excess, text)
    return found


def test_weights_share_directions(weights, thresholds, geomcheck_control_weights, geomcheck_record):
    """Mean overlap (mean squared cosine of principal angles) between layers ≥ min_ratio × chance (k/d), ≥
    min_null_z standard deviations above it under the rotation null, and ≥ min_excess_dims directions shared
    beyond chance (k · (overlap − k/d), the same claim at every width), for the attention output and the MLP
    down projections. Weights are fixed, so there is no interval; the null says how far chance alone could
    reach with this many layers and this d. The untrained twin's overlaps are reported beside them
    (``--geomcheck-control``)."""
    found, problems = overlaps(weights), []
    twin = overlaps(geomcheck_control_weights) if geomcheck_control_weights is not None else None
    geomcheck_record("; ".join(text for _, _, text in found.values()), control="; ".join(text for _, _, text in twin.values()) if twin else None)
    for kind, (summary, excess, _) in found.items():
        matrix = weights.matrices[kind]
        if summary.ratio < thresholds["min_ratio"]:
            problems.append(
                f"{kind}: mean overlap of top-{weights.k} directions between layers is {summary.mean_offdiag:.4f}, "
                f"{summary.ratio:.2f}× the chance level {summary.chance:.4f} (need ≥ {thresholds['min_ratio']}×)"
            )
        if not summary.null_z >= thresholds["min_null_z"]:  # NaN (k = d: no null to stand out from) fails too
            problems.append(
                f"{kind}: mean overlap {summary.mean_offdiag:.4f} is z = {summary.null_z:.2f} standard deviations above "
                f"the rotation null {summary.chance:.4f} ± {summary.null_sd:.2g} of {len(matrix)} layers with random "
                f"top-{weights.k} subspaces of R^{weights.d_model} (need z ≥ {thresholds['min_null_z']})"
            )
        if not excess >= thresholds["min_excess_dims"]:
            problems.append(
                f"{kind}: a pair of layers shares {excess:.2f} of its top-{weights.k} directions beyond chance, "
                f"k·(overlap − k/d) = {weights.k}·({summary.mean_offdiag:.4f} − {summary.chance:.4f}) "
                f"(need ≥ {thresholds['min_excess_dims']})"
            )
    assert not problems, "\n".join(problems)
