"""One record per statistic: adding one is one record, seen everywhere it matters; a changed vocabulary is
never served from the geometry cache; the records agree with the intervals a geometry states."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geomcheck.gate.drift import DEFAULT_TOLERANCES
from geomcheck.stats import vocabulary
from geomcheck.stats.geometry import geometry_from_samples
from geomcheck.stats.vocabulary import RECORDS, Statistic

ROOT = Path(__file__).resolve().parents[2]

NEW_RECORD = '''
RECORDS = (*RECORDS, Statistic("var_min/{set}", "curve", "smallest per-feature variance", "variances", POSITIVE,
                               "basic", (2e-3, 1e-9), of_variances=lambda var: var.min(axis=-1)))
'''
# What the edited package shows of the new statistic, printed as JSON by a fresh interpreter.
PROBE = '''
import json
import numpy as np
from geomcheck.gate.baseline import baseline_payload
from geomcheck.gate.drift import resolve_tolerance
from geomcheck.stats import vocabulary
from geomcheck.stats.geometry import geometry_from_samples

rng = np.random.default_rng(0)
samples = {s: {t: rng.normal(size=(8, 3, 5)) for t in ("pre", "mid")} for s in ("harmful", "harmless")}
geometry = geometry_from_samples(samples, n_boot=40, seed=1)
payload = baseline_payload(geometry, {"model": "m"})
print(json.dumps({
    "value": geometry.values["mid/var_min/harmless"].tolist(),
    "expected": np.var(samples["harmless"]["mid"], axis=0, ddof=1).min(axis=-1).tolist(),
    "interval": "mid/var_min/harmless" in geometry.intervals,
    "baseline": [row["value"] for row in payload["statistics"]["mid/var_min/harmless"]],
    "tolerance": resolve_tolerance("mid", "var_min/harmless").rel,
    "table": [line for line in vocabulary.markdown_table().splitlines() if "var_min" in line],
    "digest": vocabulary.digest(),
}))
'''


@pytest.mark.slow
def test_adding_a_statistic_is_one_record(tmp_path):
    """A copy of the package with one record appended to the vocabulary, and nothing else changed: the new
    statistic is computed in the geometry with an interval, stored in the baseline, gets its tolerance, has a
    row in the generated table, and changes the cache digest."""
    package = tmp_path / "geomcheck"
    shutil.copytree(ROOT / "geomcheck", package, ignore=shutil.ignore_patterns("__pycache__"))
    source = package / "stats" / "vocabulary.py"
    text = source.read_text()
    anchor = "BY_NAME: dict[str, Statistic]"
    source.write_text(text.replace(anchor, NEW_RECORD.strip() + "\n" + anchor, 1))
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    np.testing.assert_allclose(seen["value"], seen["expected"])
    assert seen["interval"]
    np.testing.assert_allclose(seen["baseline"], seen["expected"])
    assert seen["tolerance"] == 2e-3
    assert len(seen["table"]) == 1 and "smallest per-feature variance" in seen["table"][0]
    assert seen["digest"] != vocabulary.digest()


def test_the_digest_follows_what_decides_the_values_not_the_words(monkeypatch):
    before = vocabulary.digest()
    reworded = tuple(Statistic(**{**r.__dict__, "meaning": r.meaning + "!"}) for r in RECORDS)
    monkeypatch.setattr(vocabulary, "RECORDS", reworded)
    assert vocabulary.digest() == before
    reranged = tuple(Statistic(**{**r.__dict__, "range": (0.0, 2.0)}) if r.name == "cosine_slope" else r for r in RECORDS)
    monkeypatch.setattr(vocabulary, "RECORDS", reranged)
    assert vocabulary.digest() != before


def test_a_changed_vocabulary_misses_the_geometry_cache(tmp_path, tiny_llama_dir, monkeypatch):
    from geomcheck.run import pipeline
    from geomcheck.run.pipeline import ModelRun, RunOptions

    computed = []
    original = pipeline.geometry_from_samples
    monkeypatch.setattr(pipeline, "geometry_from_samples", lambda *a, **k: computed.append(1) or original(*a, **k))
    options = RunOptions(cache_dir=tmp_path / "cache", max_prompts=4, n_boot=0, progress=False)
    ModelRun(str(tiny_llama_dir), options).geometry
    ModelRun(str(tiny_llama_dir), options).geometry
    assert len(computed) == 1  # the second run is served from the cache
    monkeypatch.setattr(vocabulary, "digest", lambda: "another vocabulary")
    ModelRun(str(tiny_llama_dir), options).geometry
    assert len(computed) == 2


def test_each_record_states_the_interval_a_geometry_gives_it():
    rng = np.random.default_rng(2)
    samples = {s: {t: rng.normal(size=(10, 4, 6)) + 0.5 for t in ("pre", "mid")} for s in ("harmful", "harmless")}
    geometry = geometry_from_samples(samples, n_boot=40, seed=0)
    for key in geometry.values:
        record = vocabulary.BY_NAME[key.split("/", 1)[1]]
        assert (key in geometry.intervals) == (record.interval != "none"), key
        low, high = record.range
        if record.interval == "basic":  # clipped to the range (a studentized one holds its debiased estimate)
            bounds = geometry.intervals[key]
            assert np.all((np.nan_to_num(bounds.low, nan=low) >= low) & (np.nan_to_num(bounds.high, nan=high) <= high)), key


def test_the_gate_tolerances_are_the_records():
    assert {family: (t.rel, t.abs) for family, t in DEFAULT_TOLERANCES.items()} == {
        r.family: r.tolerance for r in RECORDS if r.tolerance is not None
    }
    assert all(r.shape == "curve" and r.computed in ("moments", "variances") for r in RECORDS if r.tolerance is not None)


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"computed": "variances"}, "exactly that formula"),
        ({"computed": "variances", "of_variances": np.max, "from_curves": lambda v, s, p: 0.0}, "exactly that formula"),
        ({"computed": "curves", "shape": "summary", "from_curves": lambda v, s, p: 0.0, "tolerance": (1e-3, 0.0)}, "tolerance"),
    ],
)
def test_a_record_that_cannot_be_computed_is_refused(fields, problem):
    with pytest.raises(ValueError, match=problem):
        Statistic(**{"name": "x", "shape": "curve", "meaning": "m", **fields})


def test_the_table_has_a_row_per_record_and_spells_infinite_ranges():
    rows = vocabulary.markdown_table().splitlines()[2:]
    assert [row.split("|")[1].strip().strip("`") for row in rows] == [r.name for r in RECORDS]
    cosine, variance = (next(row for row in rows if row.startswith(f"| `{name}`")) for name in ("cosine", "var_mean/{set}"))
    assert "| [-1, 1] |" in cosine and "| [0, ∞] |" in variance


def test_a_summary_that_is_not_one_value_per_set_of_curves_is_refused(monkeypatch):
    """The bootstrap derives the summaries of all replicates at once: a formula that ignores the curves' leading
    axis (here a constant) would give every replicate the same value and a zero-width interval, so it is refused
    by name; one that reads the last axis gives each replicate its own value."""
    last = Statistic("cosine_last", "summary", "cosine at the last layer", "curves", from_curves=lambda v, s, p: v[f"{s}/cosine"][..., -1])
    constant = Statistic("cosine_one", "summary", "one", "curves", from_curves=lambda v, s, p: 1.0)
    rng = np.random.default_rng(0)
    replicates = {"pre/cosine": rng.uniform(0.5, 1.0, (20, 4)), **{f"pre/var_mean/{s}": rng.uniform(1.0, 2.0, (20, 4)) for s in ("harmful", "harmless")}}
    monkeypatch.setattr(vocabulary, "RECORDS", (*RECORDS, last))
    summaries = vocabulary.derived(replicates, ["pre"])
    np.testing.assert_array_equal(summaries["pre/cosine_last"], replicates["pre/cosine"][:, -1])
    assert summaries["pre/growth_rate/harmful"].shape == (20,)
    monkeypatch.setattr(vocabulary, "RECORDS", (*RECORDS, constant))
    with pytest.raises(ValueError, match=r"statistic cosine_one: from_curves gave shape \(\) for curves of leading shape \(20,\)"):
        vocabulary.derived(replicates, ["pre"])
