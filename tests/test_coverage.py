"""Measured coverage of the 95% bootstrap intervals on Gaussian sets whose truth is known.

Each of 600 layers is an independent trial (its own draw of both sets), so one bootstrap run measures
coverage over 600 trials: a binomial standard error of 0.9 points around 95%.
"""

import functools

import numpy as np
import pytest

from geomcheck.resampling import bootstrap
from geomcheck.stats import statistics_from_samples

LAYERS, FEATURES = 600, 16
# The cosine's interval is conservative (measured 0.96–0.98 over seeds): in the bootstrap's world the two
# means lie as far apart as the *sample* means, further than the true ones, so its replicates spread wider.
UPPER = {"cosine_debiased": 0.985}


def _sets(n: int, seed: int):
    """Shared mean on 8 features, one more feature apart (true cosine 0.943); variances spread over
    0.5–2 with one feature at 8 (a massive activation, as in real models)."""
    rng = np.random.default_rng(seed)
    sd = np.sqrt(np.geomspace(0.5, 2.0, FEATURES))
    sd[0] = np.sqrt(8.0)
    mu_p = np.zeros(FEATURES)
    mu_p[:8] = 0.5
    mu_n = mu_p.copy()
    mu_n[8] = 0.5
    truth = {
        "cosine_debiased": mu_p @ mu_n / (np.linalg.norm(mu_p) * np.linalg.norm(mu_n)),
        "var_mean/harmful": np.mean(sd**2),
        "var_max/harmful": np.max(sd**2),
    }
    draw = lambda mu: mu + sd * rng.normal(size=(n, LAYERS, FEATURES))  # noqa: E731
    return draw(mu_p), draw(mu_n), truth


@pytest.mark.parametrize("n", [64, 256])
def test_intervals_cover_the_truth_95_percent_of_the_time(n):
    P, N, truth = _sets(n, seed=n)
    intervals = bootstrap(
        P, N, statistics_from_samples, n_boot=200, seed=1, plug_in=functools.partial(statistics_from_samples, plug_in=True)
    )
    for key, true_value in truth.items():
        covered = np.mean((intervals[key].low <= true_value) & (true_value <= intervals[key].high))
        assert 0.92 <= covered <= UPPER.get(key, 0.97), f"{key} at n={n}: coverage {covered:.3f}"
