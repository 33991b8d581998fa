"""The research note's mechanism: each layer moves the state in similar directions. A prompt's updates at the
last token — attention ``mid − pre`` and MLP ``post − mid`` — point the same way at different layers.

Null rejected: each layer's updates are turned by their own random rotation (layers move the state in
unrelated directions: mean cosine 0, standard deviation at most √(1/d) over the number of layer pairs). Like
hypothesis 4's, this null cannot tell a learned shared direction from a privileged basis every layer writes
into; ``min_mean_cosine`` asks for an alignment large enough to be "similar", not merely non-random."""

from typing import Any, NamedTuple

import numpy as np
import pytest

from geomcheck.spelling import flag
from geomcheck.stats.resampling import basic_interval, resample_indices
from geomcheck.stats.estimators import Interval
from geomcheck.stats.updates import BRANCHES, rotation_null_sd, update_alignment


class Alignment(NamedTuple):
    """One branch's alignment across layers, with its interval over prompts and the rotation null's sd."""

    value: float
    interval: Interval
    null_sd: float
    layers: int
    d: int
    text: str  # the value and interval in words, for the figure and the failure messages

    @property
    def figure(self) -> str:
        return f"{self.text}, rotation null 0 ± {self.null_sd:.2g} (interval's low end z = {self.interval.low / self.null_sd:.1f})"


def alignments(activations: dict[str, dict[str, Any]], n_boot: int, seed: int) -> dict[str, Alignment]:
    """Per branch, the mean over prompts (both sets) of a prompt's mean cosine between its updates at two
    layers, for the checkpoint and its untrained twin alike."""
    found = {}
    for branch, (before, after) in BRANCHES.items():
        per_prompt = [update_alignment(readings[before], readings[after]) for readings in activations.values()]
        _, layers, d = activations["harmful"][before].shape
        value = np.nanmean(np.concatenate(per_prompt))
        draws = np.array([np.nanmean(np.concatenate([per_prompt[0][one], per_prompt[1][other]]))
                          for one, other in resample_indices((len(per_prompt[0]), len(per_prompt[1])), n_boot, seed)])
        interval = basic_interval(value, draws, bounds=(-1.0, 1.0))
        text = f"{branch} {after} − {before}: mean cosine across layers {value:.3f} [{interval.low:.3f}, {interval.high:.3f}]"
        found[branch] = Alignment(value, interval, rotation_null_sd(d, layers), layers, d, text)
    return found


def test_updates_share_directions(activations, geomcheck_session, thresholds, geomcheck_control_activations, geomcheck_record):
    """Per branch, the mean over prompts (both sets) of the mean cosine between a prompt's updates at two
    distinct layers: ≥ min_mean_cosine, and the lower end of its 95% bootstrap interval over prompts ≥
    min_null_z standard deviations of the rotation null (an upper bound on them) above 0. The untrained
    twin's alignments are reported beside them (``--geomcheck-control``)."""
    if not {"pre", "mid", "post"} <= set(activations["harmful"]):
        pytest.skip(f"the per-layer updates need streams pre, mid and post (run with {flag('streams')} pre,mid,post)")
    options, problems = geomcheck_session.options, []
    found = alignments(activations, options.n_boot, options.seed)
    twin = alignments(geomcheck_control_activations, options.n_boot, options.seed) if geomcheck_control_activations is not None else None
    geomcheck_record("; ".join(a.figure for a in found.values()), control="; ".join(a.figure for a in twin.values()) if twin else None)
    for branch, a in found.items():
        z_low = a.interval.low / a.null_sd
        if not a.value >= thresholds["min_mean_cosine"]:  # nan (no prompt with two moving layers) fails too
            problems.append(f"{a.text}: a prompt's {branch} updates at two layers are not similar in direction "
                            f"(need a mean cosine ≥ {thresholds['min_mean_cosine']})")
        if not z_low >= thresholds["min_null_z"]:
            problems.append(f"{a.text}: its interval's lower end is z = {z_low:.2f} sd of the rotation null 0 ± {a.null_sd:.2g} "
                            f"({a.layers} layers, d = {a.d}) above 0 (need z ≥ {thresholds['min_null_z']})")
    assert not problems, "\n".join(problems)
