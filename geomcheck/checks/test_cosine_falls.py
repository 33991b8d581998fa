"""Hypothesis 3: layers "untangle" the space: the cosine of the harmful and harmless mean vectors falls
with depth."""


def test_cosine_falls(geometry, stream, thresholds, geomcheck_record):
    """Spearman ρ of cosine vs layer ≤ max_spearman and least-squares slope < max_slope."""
    trend = geometry.cosine_trend(stream)
    cosine = geometry.curve(stream, "cosine")
    geomcheck_record(
        f"ρ={geometry.describe(f'{stream}/cosine_spearman', '.2f')}, cosine {cosine[0]:.3f} → {cosine[-1]:.3f}"
    )
    assert trend.spearman <= thresholds["max_spearman"] and trend.slope < thresholds["max_slope"], (
        f"cosine of the means does not fall with depth on stream {stream}: Spearman ρ = "
        f"{geometry.describe(f'{stream}/cosine_spearman', '.2f')} (need ≤ {thresholds['max_spearman']}), "
        f"slope {trend.slope:.2e}/layer (need < {thresholds['max_slope']}); cosine {cosine[0]:.4f} at layer 0, "
        f"{cosine[-1]:.4f} at layer {len(cosine) - 1}"
    )
