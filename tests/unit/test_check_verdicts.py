"""Each shipped hypothesis check's verdict on crafted statistics: it passes where the hypothesis holds and
fails, saying why in the user's terms, where it does not. The checks are called as plain functions.

The prompts are crafted so that every statistic is known exactly: per layer, the centred noise of each set is
scaled so that the mean variance grows by ``growth`` per layer (``mid`` by ``mid_over_pre`` more, ``post`` by
``growth``: the next layer's ``pre``), and the two
sets' means separate as ``spread(layer)``, so their cosine falls with depth when ``spread`` increases.
"""

from __future__ import annotations

import numpy as np
import pytest

from geomcheck import thresholds
from geomcheck.checks import test_cosine_falls as cosine_falls
from geomcheck.checks import test_streams_separate as streams_separate
from geomcheck.checks import test_variance_grows as variance_grows
from geomcheck.checks import test_weights_share_directions as weights_share_directions
from geomcheck.stats.geometry import Geometry, geometry_from_samples
from geomcheck.run.pipeline import WeightOverlap
from geomcheck.run.registry import ModelSpec

LAYERS, PROMPTS, FEATURES = 8, 24, 16
SHIPPED = thresholds.shipped()
PRE_LN = ModelSpec(name="crafted", hub_id="crafted")  # a Llama: its streams are the raw residual


def crafted(growth: float = 1.3, mid_over_pre: float = 1.5, spread=lambda layer: 0.5 * layer) -> Geometry:
    rng = np.random.default_rng(0)
    base, direction = np.ones(FEATURES), np.eye(FEATURES)
    samples: dict[str, dict[str, np.ndarray]] = {}
    for which, sign in (("harmful", 1.0), ("harmless", -1.0)):
        noise = rng.standard_normal((PROMPTS, LAYERS, FEATURES))
        noise = (noise - noise.mean(0)) / noise.std(0, ddof=1)  # per layer and feature: mean 0, variance 1
        means = np.stack([base + sign * spread(layer) * direction[1] for layer in range(LAYERS)])
        scale = growth ** (np.arange(LAYERS) / 2)[None, :, None]
        pre = means + noise * scale
        post = means + noise * scale * np.sqrt(growth)  # the next layer's pre: the layer's whole step
        samples[which] = {"pre": pre, "mid": means + noise * scale * np.sqrt(mid_over_pre), "post": post}
    return geometry_from_samples(samples, n_boot=20, seed=0)


def verdict(check, *args) -> tuple[list[str], str | None]:
    """The figures the check recorded and its failure message (None when it passed)."""
    recorded: list[str] = []
    try:
        check(*args, lambda text, control=None: recorded.append(text))
    except AssertionError as failure:
        return recorded, str(failure)
    return recorded, None


def test_variance_grows_passes_on_exponential_growth():
    recorded, failure = verdict(variance_grows.test_variance_grows, crafted(growth=1.3), "mid", SHIPPED["variance_grows"], None)
    assert failure is None
    assert recorded[0].startswith("harmful exponential ×1.3/layer R²=1.00, power law (l+1)^") and "excluded: none" in recorded[0]


def test_variance_grows_fails_on_shrinking_variance_naming_rate_and_threshold():
    _, failure = verdict(variance_grows.test_variance_grows, crafted(growth=0.98), "pre", SHIPPED["variance_grows"], None)
    assert failure is not None
    assert "mean variance (harmful) on stream pre: exponential ×0.98/layer R²=1.00" in failure
    assert "(need ≥ 1.05×, R² ≥ 0.8, ΔAIC ≤ 0.0: exponential beats the power law, nested exp(b) interval above 1.0" in failure
    assert "mean variance (harmless)" in failure


def test_streams_separate_passes_when_mid_is_larger():
    geometry = crafted(mid_over_pre=1.5)
    recorded, failure = verdict(streams_separate.test_streams_separate, geometry, SHIPPED["streams_separate"], None, PRE_LN)
    assert failure is None
    # The share of layers whose var_mean intervals are apart is reported as the geometry computes it; at 24
    # prompts var_mean's m-out-of-n interval (m = 5) is wide, so 7 of 8 layers, not all, are apart at ×1.5.
    apart = geometry.separation("harmful").fraction_separated
    assert "harmful mid/pre ×1.50" in recorded[0] and f"{apart:.0%} layers apart" in recorded[0] and apart >= 0.75


def test_streams_separate_fails_when_the_curves_coincide():
    _, failure = verdict(streams_separate.test_streams_separate, crafted(mid_over_pre=1.0), SHIPPED["streams_separate"], None, PRE_LN)
    assert failure is not None
    assert "pre and mid coincide (harmful): mean log(mid/pre) = " in failure
    assert "need |·| ≥ 0.0953 with an interval excluding 0" in failure


def test_streams_separate_skips_without_both_streams():
    geometry = crafted()
    geometry.streams = ("pre", "post")
    with pytest.raises(pytest.skip.Exception, match="needs streams pre, mid and post"):
        verdict(streams_separate.test_streams_separate, geometry, SHIPPED["streams_separate"], None, PRE_LN)


def test_cosine_falls_passes_when_the_means_separate_with_depth():
    recorded, failure = verdict(cosine_falls.test_cosine_falls, crafted(), "post", SHIPPED["cosine_falls"], None)
    assert failure is None
    assert recorded[0].startswith("debiased ρ=-1.00") and "early − late half " in recorded[0]


def test_cosine_falls_fails_when_the_cosine_rises_naming_rho_and_slope():
    geometry = crafted(spread=lambda layer: 0.5 * (LAYERS - layer))
    _, failure = verdict(cosine_falls.test_cosine_falls, geometry, "mid", SHIPPED["cosine_falls"], None)
    assert failure is not None
    assert "the debiased cosine of the means does not fall with depth on stream mid: Spearman ρ = 1.00 (need ≤ -0.5)" in failure
    assert "at layer 7" in failure
    assert "the fall of the debiased cosine on stream mid is not resolved: early − late half " in failure
    assert "(95% interval, need its lower end > 0.0)" in failure


def overlap(offdiag: float, k: int = 4, d: int = 64, layers: int = LAYERS) -> WeightOverlap:
    matrix = np.full((layers, layers), offdiag)
    np.fill_diagonal(matrix, 1.0)
    return WeightOverlap(matrices={"attn_out": matrix, "mlp_out": matrix}, k=k, d_model=d)


def test_weights_share_directions_passes_well_above_chance():
    recorded, failure = verdict(weights_share_directions.test_weights_share_directions, overlap(0.5), SHIPPED["weights_share_directions"], None)
    assert failure is None
    assert recorded[0].startswith("attn_out 0.500 = 8.0× chance k/d = 4/64, 1.75 of 4 directions shared beyond chance; "
                                  "rotation null 0.0625 ± 0.0039, z = 112.6 (adjacent 0.500)")


def test_weights_share_directions_fails_at_chance_naming_the_matrix_and_chance_level():
    _, failure = verdict(weights_share_directions.test_weights_share_directions, overlap(4 / 64), SHIPPED["weights_share_directions"], None)
    assert failure is not None
    assert "attn_out: mean overlap of top-4 directions between layers is 0.0625, 1.00× the chance level 0.0625 (need ≥ 1.5×)" in failure
    assert "attn_out: mean overlap 0.0625 is z = 0.00 standard deviations above the rotation null 0.0625 ± 0.0039" in failure
    assert "mlp_out:" in failure


def test_weights_share_directions_fails_above_min_ratio_when_the_rotation_null_reaches_it():
    """3 layers of R^8, top-2: overlap 0.4 is 1.6× chance 0.25, but the rotation null's sd over 3 pairs is
    0.073, so chance reaches it (z = 2.05 < 3)."""
    _, failure = verdict(weights_share_directions.test_weights_share_directions, overlap(0.4, k=2, d=8, layers=3), SHIPPED["weights_share_directions"], None)
    assert failure is not None and "need ≥ 1.5×" not in failure
    assert ("attn_out: mean overlap 0.4000 is z = 2.05 standard deviations above the rotation null 0.2500 ± 0.073 "
            "of 3 layers with random top-2 subspaces of R^8 (need z ≥ 3.0)") in failure


@pytest.mark.parametrize("d", [384, 5120])
def test_weights_share_directions_fails_below_one_shared_direction_at_every_width(d):
    """Half a direction of the top 16 shared beyond chance: 1.8× chance at d = 384 but 11× at d = 5120, z far
    above 3 at both; the excess shared dimensions, 0.50 at both widths, is what fails."""
    _, failure = verdict(weights_share_directions.test_weights_share_directions, overlap(0.5 / 16 + 16 / d, k=16, d=d, layers=30),
                         SHIPPED["weights_share_directions"], None)
    assert failure is not None and "need ≥ 1.5×" not in failure and "need z ≥" not in failure
    assert "attn_out: a pair of layers shares 0.50 of its top-16 directions beyond chance" in failure and "(need ≥ 1.0)" in failure
