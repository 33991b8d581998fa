"""Hypothesis 4: weight matrices of different layers share directions: the top-k output directions of the
matrices that write into the residual stream overlap across layers more than random subspaces do."""

from geomcheck.weights import summarize_overlap


def test_weights_share_directions(weights, thresholds, geomcheck_record):
    """Mean overlap (mean squared cosine of principal angles) between layers ≥ min_ratio × chance (k/d), and
    ≥ min_null_z standard deviations above it under the rotation null (each layer's matrix turned by its own
    random rotation), for the attention output and the MLP down projections. Weights are fixed, so there is
    no interval; the null says how far chance alone could reach with this many layers and this d."""
    figures, problems = [], []
    for kind, matrix in weights.matrices.items():
        summary = summarize_overlap(matrix, weights.k, weights.d_model)
        figures.append(
            f"{kind} {summary.mean_offdiag:.3f} = {summary.ratio:.1f}× chance k/d = {weights.k}/{weights.d_model}; "
            f"rotation null {summary.chance:.4f} ± {summary.null_sd:.2g}, z = {summary.null_z:.1f} "
            f"(adjacent {summary.mean_adjacent:.3f})"
        )
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
    geomcheck_record("; ".join(figures))
    assert not problems, "\n".join(problems)
