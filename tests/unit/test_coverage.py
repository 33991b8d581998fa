"""Measured coverage of the shipped 95% intervals (``geometry_from_samples``) on sets whose truth is known,
under Gaussian and Student-t(3) noise, with and without a massive feature, at the seed prompt counts.

Each layer is an independent trial (its own draw of both sets), so one bootstrap run measures coverage
over ``LAYERS`` trials: a binomial standard error of 0.5–0.7 points around 95%–90%.
``pytest tests/unit/test_coverage.py -s -q`` prints every row of the table the README quotes.
"""

import numpy as np
import pytest

from geomcheck.stats.geometry import geometry_from_samples

LAYERS, FEATURES = 1800, 16
TARGET = {"gaussian": 0.93, "t3": 0.90}  # issue #24: ≥ 0.93 Gaussian, ≥ 0.90 under t3, for var_mean and var_max


def _sets(n: int, apart: float, seed: int, noise: str = "gaussian", massive: bool = True):
    """Shared mean on 8 features, ``apart`` on one more for the harmless set only (true cosine 0.943 at
    0.5, 0.994 at 0.15: means close, as in real models); variances spread over 0.5–2, with one feature at
    8 where ``massive`` (a massive activation, as in real models). t3 noise is scaled to the same variance."""
    rng = np.random.default_rng(seed)
    sd = np.sqrt(np.geomspace(0.5, 2.0, FEATURES))
    if massive:
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
    unit = (lambda size: rng.standard_t(3, size=size) / np.sqrt(3.0)) if noise == "t3" else rng.normal  # noqa: E731
    draw = lambda mean: (mean + sd * unit(size=(n, LAYERS, FEATURES))).astype(np.float32)  # noqa: E731
    return {"harmful": {"mid": draw(mean_harmful)}, "harmless": {"mid": draw(mean_harmless)}}, truth


def _coverage(samples, truth, label):
    geometry = geometry_from_samples(samples, n_boot=200, seed=1)
    out = {"kurtosis": float(geometry.value("mid/kurtosis/harmful"))}
    print(f"{label} kurtosis/harmful: {out['kurtosis']:.2f} (the summary's feature kurtosis of this regime)")
    for statistic, true_value in truth.items():
        interval = geometry.interval(f"mid/{statistic}")
        out[statistic] = float(np.mean((interval.low <= true_value) & (true_value <= interval.high)))
        width = f", median width (high/low) {np.median(interval.high / interval.low):.3g}" if statistic.startswith("var") else ""
        print(f"{label} {statistic}: true {true_value:.4f}, coverage {out[statistic]:.3f} over {LAYERS} trials{width}")  # -rP shows it
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("n", "apart"), [(64, 0.5), (256, 0.5), (64, 0.15)], ids=["n64", "n256", "n64-close-means"])
def test_intervals_cover_the_truth_95_percent_of_the_time(n, apart):
    covered = _coverage(*_sets(n, apart, seed=n), f"gaussian massive n={n} apart={apart}")
    for statistic, value in covered.items():
        if statistic == "kurtosis":
            continue
        assert 0.92 <= value <= 0.97, f"{statistic} at n={n}: coverage {value:.3f}"


REGIMES = [(noise, massive, n) for noise in ("gaussian", "t3") for massive in (True, False) for n in (64, 139)]


@pytest.mark.slow
@pytest.mark.parametrize(("noise", "massive", "n"), REGIMES, ids=[f"{a}-{'massive' if b else 'flat'}-n{c}" for a, b, c in REGIMES])
def test_variance_intervals_hold_under_heavy_tails(noise, massive, n):
    """var_mean and var_max reach the issue's coverage (≥ 0.93 Gaussian, ≥ 0.90 under t3; both log-studentized
    by fourth-moment errors, var_mean from an m-out-of-n bootstrap, var_max the bootstrap's symmetric
    interval, its upper end raised to the top feature's m-out-of-n one); the cosine's studentized interval stays in
    [0.92, 0.98] in every regime. The printed widths are var_max's price: under t3 without a massive feature its upper end is far."""
    label = f"{noise} {'massive' if massive else 'flat'} n={n}"
    covered = _coverage(*_sets(n, 0.5, seed=1000 + n + 7 * massive, noise=noise, massive=massive), label)
    assert 0.92 <= covered["cosine_debiased"] <= 0.98, covered
    for statistic in ("var_mean/harmful", "var_max/harmful"):
        assert covered[statistic] >= TARGET[noise], f"{statistic} under {label}: coverage {covered[statistic]:.3f}"
