"""Hypothesis 4: weight matrices of different layers share directions: the top-k output directions of the
matrices that write into the residual stream overlap across layers more than random subspaces do."""

from geomcheck.weights import summarize_overlap


def test_weights_share_directions(weights, thresholds, geomcheck_record):
    """Mean overlap (mean squared cosine of principal angles) between layers ≥ min_ratio × chance (k/d),
    for the attention output and the MLP down projections. Weights are fixed, so there is no interval."""
    figures, problems = [], []
    for kind, matrix in weights.matrices.items():
        summary = summarize_overlap(matrix, weights.k, weights.d_model)
        figures.append(
            f"{kind} {summary.mean_offdiag:.3f} = {summary.ratio:.1f}× chance k/d = {weights.k}/{weights.d_model} "
            f"(adjacent {summary.mean_adjacent:.3f})"
        )
        if summary.ratio < thresholds["min_ratio"]:
            problems.append(
                f"{kind}: mean overlap of top-{weights.k} directions between layers is {summary.mean_offdiag:.4f}, "
                f"{summary.ratio:.2f}× the chance level {summary.chance:.4f} (need ≥ {thresholds['min_ratio']}×)"
            )
    geomcheck_record("; ".join(figures))
    assert not problems, "\n".join(problems)
