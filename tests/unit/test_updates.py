"""The note's mechanism on activations (geomcheck.stats.updates and the shipped check test_updates_share_directions):
the alignment statistic against a brute-force computation, its rotation null by Monte Carlo, and the check's
verdict where the layers' updates share a direction and where they do not."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from geomcheck import thresholds
from geomcheck.checks.test_updates_share_directions import test_updates_share_directions as updates_share_directions
from geomcheck.stats.updates import rotation_null_sd, update_alignment

SESSION = SimpleNamespace(options=SimpleNamespace(n_boot=200, seed=0))
THRESHOLDS = thresholds.shipped()["updates_share_directions"]


def test_alignment_is_the_mean_pairwise_cosine_and_skips_layers_that_do_not_move():
    rng = np.random.default_rng(0)
    before, after = rng.normal(size=(5, 6, 8)), rng.normal(size=(5, 6, 8))
    after[0, 2] = before[0, 2]  # prompt 0 does not move at layer 2
    steps = after - before
    expected = []
    for prompt in steps:
        units = [s / np.linalg.norm(s) for s in prompt if np.linalg.norm(s) > 0]
        expected.append(np.mean([units[i] @ units[j] for i in range(len(units)) for j in range(len(units)) if i != j]))
    np.testing.assert_allclose(update_alignment(before, after), expected, rtol=1e-12)


def test_the_rotation_null_sd_bounds_a_monte_carlo_of_random_rotations():
    """Each layer's updates turned by its own random rotation: the mean alignment's sd over 400 draws is at
    the bound where all prompts' updates at a layer point one way, and below it where they scatter."""
    rng = np.random.default_rng(1)
    layers, d, prompts = 5, 12, 20

    def rotated(steps):
        rotations = [np.linalg.qr(rng.normal(size=(d, d)))[0] for _ in range(layers)]
        return np.stack([steps[:, layer] @ rotations[layer] for layer in range(layers)], axis=1)

    one_way = np.broadcast_to(rng.normal(size=(1, layers, d)), (prompts, layers, d))
    scattered = rng.normal(size=(prompts, layers, d))
    bound = rotation_null_sd(d, layers)
    for steps, low in ((one_way, 0.85), (scattered, 0.0)):
        means = [np.mean(update_alignment(np.zeros_like(steps), rotated(steps))) for _ in range(400)]
        assert abs(np.mean(means)) < 3 * bound / np.sqrt(400)
        assert low * bound <= np.std(means) <= 1.1 * bound


def _readings(shared: float, layers: int = 10, d: int = 64, prompts: int = 40, seed: int = 0):
    """Each layer adds ``shared`` × one common direction plus its own random direction to every stream step."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=d)
    out = {}
    for prompt_set in ("harmful", "harmless"):
        pre = rng.normal(size=(prompts, layers, d))
        mid = pre + shared * common + rng.normal(size=(prompts, layers, d))
        out[prompt_set] = {"pre": pre, "mid": mid, "post": mid + shared * common + rng.normal(size=(prompts, layers, d))}
    return out


def _verdict(activations) -> tuple[list[str], str | None]:
    recorded: list[str] = []
    try:
        updates_share_directions(activations, SESSION, THRESHOLDS, None, lambda text, control=None: recorded.append(text))
    except AssertionError as failure:
        return recorded, str(failure)
    return recorded, None


def test_passes_when_every_layer_moves_the_state_along_a_shared_direction():
    recorded, failure = _verdict(_readings(shared=0.5))
    assert failure is None
    assert recorded[0].startswith("attention mid − pre: mean cosine across layers 0.")


def test_fails_when_each_layer_moves_the_state_in_its_own_direction():
    _, failure = _verdict(_readings(shared=0.0))
    assert failure is not None
    assert "attention mid − pre: mean cosine across layers" in failure and "mlp post − mid" in failure
    assert "(need a mean cosine ≥ 0.1)" in failure and "sd of the rotation null 0 ± " in failure and "(need z ≥ 3.0)" in failure


def test_skips_without_the_three_streams():
    activations = {name: {"pre": s["pre"], "mid": s["mid"]} for name, s in _readings(0.5).items()}
    with pytest.raises(pytest.skip.Exception, match="need streams pre, mid and post"):
        _verdict(activations)
