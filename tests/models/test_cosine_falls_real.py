"""Hypothesis 3 on SmolLM2's activations for the built-in prompts: the harmful/harmless contrast passes on
every stream, and no split without a contrast does — random halves of one set, or one set's shortest half
against its longest (the length control: the built-in sets are length-matched, issue #24)."""

from __future__ import annotations

import numpy as np
import pytest

from geomcheck import thresholds
from geomcheck.checks.test_cosine_falls import test_cosine_falls as cosine_falls
from geomcheck.stats.geometry import geometry_from_samples
from geomcheck.run.pipeline import ModelRun, RunOptions
from geomcheck.run.prompts import builtin_prompts

THRESHOLDS = thresholds.shipped()["cosine_falls"]


@pytest.fixture(scope="module")
def samples() -> dict[str, dict[str, np.ndarray]]:
    return ModelRun("smollm2-135m", RunOptions(progress=False)).capture.samples


def _figures(two_sets: dict[str, dict[str, np.ndarray]], n_boot: int) -> dict[str, str | None]:
    """Per stream, the check's failure message, or None where it passes (its figures are printed)."""
    geometry = geometry_from_samples(two_sets, n_boot=n_boot, seed=0)
    verdicts: dict[str, str | None] = {}
    for stream in geometry.streams:
        recorded: list[str] = []
        try:
            cosine_falls(geometry, stream, THRESHOLDS, None, lambda text, control=None: recorded.append(text))
            verdicts[stream] = None
        except AssertionError as failure:
            verdicts[stream] = str(failure)
        print(f"{stream}: {'passes' if verdicts[stream] is None else 'fails'}; {recorded[0]}")
    return verdicts


def _halves(readings: dict[str, np.ndarray], order: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    half = len(order) // 2
    return {"harmful": {s: r[order[:half]] for s, r in readings.items()}, "harmless": {s: r[order[half:]] for s, r in readings.items()}}


def test_the_real_contrast_passes_on_every_stream(samples):
    assert all(failure is None for failure in _figures(samples, n_boot=200).values())


@pytest.mark.parametrize("prompt_set", ["harmful", "harmless"])
@pytest.mark.parametrize("split", ["random", "by length"])
def test_no_split_of_one_set_passes(samples, prompt_set, split):
    lengths = np.array([len(p.split()) for p in builtin_prompts(prompt_set)])
    order = np.argsort(lengths, kind="stable") if split == "by length" else np.random.default_rng(0).permutation(len(lengths))
    verdicts = _figures(_halves(samples[prompt_set], order), n_boot=100)
    assert all(failure is not None for failure in verdicts.values()), verdicts
