"""Measured coverage of the shipped 95% intervals (``geometry_from_samples``) on Gaussian sets whose
truth is known.

Each of 1,800 layers is an independent trial (its own draw of both sets), so one bootstrap run measures
coverage over 1,800 trials: a binomial standard error of 0.5 points around 95%.
"""

import numpy as np
import pytest

from geomcheck.geometry import geometry_from_samples

LAYERS, FEATURES = 1800, 16


def _sets(n: int, apart: float, seed: int):
    """Shared mean on 8 features, ``apart`` on one more for the harmless set only (true cosine 0.943 at
    0.5, 0.994 at 0.15: means close, as in real models); variances spread over 0.5–2 with one feature
    at 8 (a massive activation, as in real models)."""
    rng = np.random.default_rng(seed)
    sd = np.sqrt(np.geomspace(0.5, 2.0, FEATURES))
    sd[0] = np.sqrt(8.0)
    mean_harmful = np.zeros(FEATURES)
    mean_harmful[:8] = 0.5
    mean_harmless = mean_harmful.copy()
    mean_harmless[8] = apart
    truth = {
        "cosine_debiased": mean_harmful @ mean_harmless / (np.linalg.norm(mean_harmful) * np.linalg.norm(mean_harmless)),
        "var_mean/harmful": np.mean(sd**2),
        "var_max/harmful": np.max(sd**2),
    }
    draw = lambda mean: (mean + sd * rng.normal(size=(n, LAYERS, FEATURES))).astype(np.float32)  # noqa: E731
    return {"harmful": {"mid": draw(mean_harmful)}, "harmless": {"mid": draw(mean_harmless)}}, truth


@pytest.mark.parametrize(("n", "apart"), [(64, 0.5), (256, 0.5), (64, 0.15)], ids=["n64", "n256", "n64-close-means"])
def test_intervals_cover_the_truth_95_percent_of_the_time(n, apart):
    samples, truth = _sets(n, apart, seed=n)
    geometry = geometry_from_samples(samples, n_boot=200, seed=1)
    for statistic, true_value in truth.items():
        interval = geometry.interval(f"mid/{statistic}")
        covered = np.mean((interval.low <= true_value) & (true_value <= interval.high))
        print(f"n={n} {statistic}: true {true_value:.4f}, coverage {covered:.3f} over {LAYERS} trials")  # pytest -rP shows it
        assert 0.92 <= covered <= 0.97, f"{statistic} at n={n}, true value {true_value:.4f}: coverage {covered:.3f}"
