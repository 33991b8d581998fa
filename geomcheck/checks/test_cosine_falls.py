"""Hypothesis 3: layers "untangle" the space: the cosine of the harmful and harmless mean vectors falls
with depth — the *debiased* cosine (the plain cosine of sample means falls from sampling noise alone, as the
variance grows), with an interval, and by more than shuffled labels make the plain cosine fall.

Null rejected: the true cosine of the means is the same at every depth (fall interval above ``min_fall``),
and the two sets are one distribution (``min_null_ratio``)."""

from dataclasses import dataclass

import numpy as np

from geomcheck.spelling import flag
from geomcheck.stats.geometry import Geometry
from geomcheck.stats.estimators import Interval
from geomcheck.stats.trends import cosine_trend, early_late_fall


@dataclass(frozen=True)
class CosineFall:
    """What the check reads off one geometry (the checkpoint's, and its untrained twin's alike)."""

    debiased: np.ndarray
    spearman: float
    fall: Interval
    fall_text: str
    null_text: str
    text: str  # the recorded figure


def cosine_fall(geometry: Geometry, stream: str) -> CosineFall:
    """The debiased cosine's trend, its early − late fall with its interval, and its ratio to shuffled labels."""
    ratio_key, fall_key = f"{stream}/cosine_null_ratio", f"{stream}/cosine_fall"
    assert ratio_key in geometry.values, (
        f"hypothesis 3 is tested against shuffled labels and with an interval, which need the samples: run with {flag('n-boot')} > 0"
    )
    debiased = geometry.curve(stream, "cosine_debiased")
    geometry.derive(fall_key, lambda values: early_late_fall(values[f"{stream}/cosine_debiased"]))
    spearman = cosine_trend(debiased).spearman
    fall_text = f"early − late half {geometry.describe(fall_key, '.3g')}"
    null_text = (
        f"1 − cos at layer {len(debiased) - 1} is {geometry.describe(ratio_key, '.3g')}× the shuffled-label level "
        f"(p = {float(geometry.value(stream, 'cosine_null_p')):.3g})"
    )
    text = (
        f"debiased ρ={spearman:.2f}, {geometry.describe(f'{stream}/cosine_debiased', '.4f', layer=0)} → "
        f"{geometry.describe(f'{stream}/cosine_debiased', '.4f', layer=-1)}, {fall_text}; {null_text}"
    )
    return CosineFall(debiased, spearman, geometry.interval(fall_key), fall_text, null_text, text)


def test_cosine_falls(geometry, stream, thresholds, geomcheck_control, geomcheck_record):
    """The debiased cosine falls with depth: Spearman ρ against the layer ≤ max_spearman, and the 95% interval
    of its early-half mean minus its late-half mean lies above min_fall; and 1 − cosine at the last layer is
    ≥ min_null_ratio × its level for label-shuffled sets. The untrained twin's figures are reported beside
    them (``--geomcheck-control``)."""
    seen = cosine_fall(geometry, stream)
    twin = cosine_fall(geomcheck_control, stream) if geomcheck_control is not None else None
    geomcheck_record(seen.text, control=twin.text if twin else None)
    debiased, last, ratio_key = seen.debiased, len(seen.debiased) - 1, f"{stream}/cosine_null_ratio"
    problems = []
    if not seen.spearman <= thresholds["max_spearman"]:
        problems.append(
            f"the debiased cosine of the means does not fall with depth on stream {stream}: Spearman ρ = "
            f"{seen.spearman:.2f} (need ≤ {thresholds['max_spearman']}); {debiased[0]:.4f} at layer 0, {debiased[-1]:.4f} at layer {last}"
        )
    if not seen.fall.low > thresholds["min_fall"]:  # nan (the means not resolved in a half) fails too
        problems.append(
            f"the fall of the debiased cosine on stream {stream} is not resolved: {seen.fall_text} (95% interval, need its "
            f"lower end > {thresholds['min_fall']}); a constant true cosine, with noise growing with depth, gives this"
        )
    if not float(geometry.value(ratio_key)) >= thresholds["min_null_ratio"]:
        problems.append(
            f"the fall of the cosine on stream {stream} is not above what shuffled labels give: {seen.null_text} "
            f"(need ≥ {thresholds['min_null_ratio']}×); the two sets' means are not resolved from sampling noise"
        )
    assert not problems, "\n".join(problems)
