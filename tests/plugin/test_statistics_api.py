"""The hypothesis author's API: the README's vocabulary is the code's, one key form reads every value,
and a user's own statistic gets an interval from the geometry's own resamples."""

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import write_docs_example

from geomcheck.stats.geometry import bootstrap_samples, geometry_from_arrays, geometry_from_samples, geometry_to_arrays
from geomcheck.stats.resampling import basic_interval
from geomcheck.stats.vocabulary import CURVES, SUMMARIES, expand, markdown_table
from geomcheck.stats.trends import growth_fit

ROOT = Path(__file__).resolve().parents[2]


def _samples(n: int = 12, layers: int = 5, d: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    grow = 1.3 ** np.arange(layers)[:, None]
    return {
        which: {stream: shift + grow * rng.normal(size=(n, layers, d)) for stream in ("pre", "mid", "post")}
        for which, shift in (("harmful", 1.0), ("harmless", 0.8))
    }


@pytest.fixture(scope="module")
def geometry():
    return geometry_from_samples(_samples(), n_boot=20, seed=3)


def test_the_docs_table_is_the_vocabulary_of_the_code():
    docs = (ROOT / "docs" / "statistics.md").read_text()
    table = re.search(r"<!-- vocabulary -->\n(.*?)<!-- /vocabulary -->", docs, re.S).group(1)
    assert table == markdown_table(), "regenerate: python -m geomcheck.stats.vocabulary docs/statistics.md"


def test_every_value_of_a_geometry_is_a_stream_and_a_statistic_of_the_vocabulary(geometry):
    names = set(expand(CURVES)) | set(expand(SUMMARIES))
    found = set()
    for key, value in geometry.values.items():
        stream, _, statistic = key.partition("/")
        assert stream in geometry.streams and statistic in names, key
        per_layer = statistic in expand(CURVES)
        assert np.shape(value) == ((geometry.n_layers,) if per_layer else ()), key
        found.add(statistic)
    assert found == names  # nothing in the vocabulary that the code does not compute


def test_one_key_form_reads_values_intervals_and_growth(geometry):
    key = "mid/var_max/harmful"
    np.testing.assert_array_equal(geometry.value(key), geometry.curve("mid", "var_max/harmful"))
    assert geometry.interval(key) is geometry.interval("mid", "var_max", "harmful")
    assert geometry.growth(key).rate == growth_fit(geometry.value(key)).rate
    assert geometry.describe("mid/growth_rate/harmful").count("[") == 1


def test_a_derived_statistic_gets_its_interval_from_the_stored_replicates(geometry):
    key = "mid/max_over_mean_growth"
    rate = lambda values, statistic: growth_fit(values[f"mid/{statistic}/harmful"]).rate  # noqa: E731
    value = geometry.derive(key, lambda v: rate(v, "var_max") / rate(v, "var_mean"))
    assert value == rate(geometry.values, "var_max") / rate(geometry.values, "var_mean")
    interval = geometry.interval(key)
    assert interval.low < value < interval.high
    # the same function of an existing statistic reproduces that statistic's own interval
    geometry.derive("mid/growth_rate_again", lambda v: growth_fit(v["mid/var_mean/harmful"]).rate)
    assert geometry.interval("mid/growth_rate_again").low == pytest.approx(geometry.interval("mid/growth_rate/harmful").low)


def test_replicates_survive_the_cache(geometry):
    restored = geometry_from_arrays(geometry_to_arrays(geometry))
    assert restored.seed == 3 and restored.replicates.keys() == geometry.replicates.keys()
    derived = restored.derive("pre/var_q99_last", lambda v: v["pre/var_q99/harmful"][-1])  # basic, as a derived one
    assert restored.interval("pre/var_q99_last").low == pytest.approx(float(geometry.interval("pre/var_q99/harmful").low[-1]))
    assert derived == geometry.values["pre/var_q99/harmful"][-1]


def test_bootstrap_samples_draws_the_same_resamples_as_the_geometry(geometry):
    mean_variance = lambda s: s["harmful"]["mid"].var(axis=0, ddof=1).mean(axis=-1)  # noqa: E731
    value, interval = bootstrap_samples(_samples(), mean_variance, n_boot=20, seed=3)
    np.testing.assert_allclose(value, geometry.value("mid/var_mean/harmful"))
    # the geometry's replicates of the same statistic, pivoted on the estimate, give the same interval
    expected = basic_interval(value, geometry.replicates["mid/var_mean/harmful"])
    np.testing.assert_allclose(interval.low, expected.low)
    np.testing.assert_allclose(interval.high, expected.high)


@pytest.mark.usefixtures("opted_in")
def test_readme_user_statistic_example_runs_as_written(pytester: pytest.Pytester, tiny_llama_dir, tmp_path):
    write_docs_example("user-statistic", pytester.path)
    result = pytester.runpytest("--model", str(tiny_llama_dir), "--max-prompts", "6", "--n-boot", "40",
                                "--geomcheck-cache-dir", str(tmp_path), "-v", "-p", "no:randomly")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 4 and "error" not in outcomes, result.stdout.str()
    text = result.stdout.str()
    assert re.search(r"largest/smallest step [\d.e+-]+ \[[\d.e+-]+, [\d.e+-]+\]", text), text
    assert re.search(r"growth of max / growth of mean variance: [\d.e+-]+ \[", text), text


def test_bootstrap_samples_takes_several_statistics_in_one_pass(geometry):
    calls = []

    def mean_variance(s):
        calls.append(1)
        return s["harmful"]["mid"].var(axis=0, ddof=1).mean(axis=-1)

    last_norm = lambda s: float(np.linalg.norm(s["harmless"]["post"][:, -1].mean(axis=0)))  # noqa: E731
    both = bootstrap_samples(_samples(), {"var": mean_variance, "norm": last_norm}, n_boot=20, seed=3)
    assert len(calls) == 21  # the estimate and one call per resample
    alone_value, alone = bootstrap_samples(_samples(), mean_variance, n_boot=20, seed=3)
    value, interval = both["var"]
    np.testing.assert_array_equal(value, alone_value)
    np.testing.assert_array_equal(interval.low, alone.low)
    assert value.shape == (5,) and np.ndim(both["norm"][0]) == 0
    assert both["norm"][1].low <= both["norm"][0] <= both["norm"][1].high


def test_the_statistics_bench_tables_the_engine_beside_its_floor(monkeypatch, tmp_path):
    """The bench's statistics table on a tiny shape: one row per model, the ratio and the memory columns
    filled from what was measured, and the README block replaced between its markers (no timing asserted)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from geomcheck_bench import statistics as bench

    row = bench.measure(3, 16, n_boot=10)
    assert row["floor"] > 0 and row["seconds"] > 0 and row["samples_mb"] == pytest.approx((139 + 136) * 3 * 3 * 16 * 4 / 2**20)
    lines = bench.table({"tiny": row}).splitlines()
    assert lines[2].startswith("| tiny | 3 × 16 |") and lines[2].count("|") == 9
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{bench.BEGIN}\nold\n{bench.END}\nb\n", encoding="utf-8")
    bench.write_readme(readme, "new")
    assert readme.read_text(encoding="utf-8") == f"a\n{bench.BEGIN}\nnew\n{bench.END}\nb\n"
