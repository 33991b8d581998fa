"""Hypothesis 1: the mean over features of the per-feature variance grows near-exponentially with depth.

Null rejected: the curve grows no faster than ``min_rate``× per layer, or polynomially, (l+1)^p (the
note's own explanation, linearly growing norms, predicts p = 2). R² alone cannot reject the power law
(it gives the same R² for every p), so the exponential must also fit better than the power law, and
its term must be needed beside the power law's: in the nested fit log v = a + b·l + c·log(l+1) the
95% interval of exp(b) lies above ``min_nested_rate``. ΔAIC alone passes a coin flip where the two
fits are equally good (a 6-layer random-init Llama: ΔAIC −0.3 to −2.7); the nested interval does not.
"""

from geomcheck.stats.geometry import SETS
from geomcheck.stats.trends import describe_layers, growth_shape


def test_variance_grows(geometry, stream, thresholds, geomcheck_control, geomcheck_record):
    """On the layers that can carry a trend (leading layers with zero variance or ≥ ``degenerate_jump``×
    below the next, i.e. template-degenerate, are left out and named): log(mean variance) against the
    layer index grows ≥ min_rate× per layer with R² ≥ min_r2, and ΔAIC of that exponential against the
    power law log v = a + p·log(l+1) is ≤ max_delta_aic (both have two parameters: the exponential leaves
    the smaller residuals), and the nested fit's exp(b) has a 95% interval above min_nested_rate, for both
    prompt sets. The untrained twin's fits are reported beside them
    (``--geomcheck-control``); with ``min_rate_over_control`` > 0 the rate must also exceed the twin's
    by that factor."""
    figures, twins, problems = [], [], []
    for prompt_set in SETS:
        shape = growth_shape(geometry.curve(stream, "var_mean", prompt_set), thresholds["degenerate_jump"])
        fit = shape.exponential
        excluded = describe_layers(shape.excluded) if shape.excluded else "none"
        figure = f"{prompt_set} {shape.describe()} (excluded: {excluded}; all layers ×{geometry.describe(f'{stream}/growth_rate/{prompt_set}')})"
        if geomcheck_control is not None:
            twin = growth_shape(geomcheck_control.curve(stream, "var_mean", prompt_set), thresholds["degenerate_jump"])
            twins.append(f"{prompt_set} {twin.describe()}")
            if thresholds["min_rate_over_control"] > 0 and fit.rate < twin.exponential.rate * thresholds["min_rate_over_control"]:
                problems.append(
                    f"mean variance ({prompt_set}) grows ×{fit.rate:.3g}/layer on stream {stream}, not ≥ {thresholds['min_rate_over_control']}× "
                    f"the untrained twin's ×{twin.exponential.rate:.3g}: the growth holds for any network of this shape"
                )
        figures.append(figure)
        if fit.rate < thresholds["min_rate"] or fit.r2 < thresholds["min_r2"] or shape.delta_aic > thresholds["max_delta_aic"] or not shape.nested_rate[0] > thresholds["min_nested_rate"]:
            problems.append(
                f"mean variance ({prompt_set}) on stream {stream}: {shape.describe()} (need ≥ {thresholds['min_rate']}×, "
                f"R² ≥ {thresholds['min_r2']}, ΔAIC ≤ {thresholds['max_delta_aic']}: exponential beats the power law, nested exp(b) interval above "
                f"{thresholds['min_nested_rate']}: the exponential term is needed beside the power law's); "
                f"{fit.describe_outliers()} break the trend; excluded (zero or template-degenerate variance): {excluded}"
            )
    geomcheck_record("; ".join(figures), control="; ".join(twins) if twins else None)
    assert not problems, "\n".join(problems)
