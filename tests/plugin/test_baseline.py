"""Baselines: numeric comparison with tolerance, the file format, and the syrupy round trip end to end."""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from geomcheck.gate.baseline import FORMAT, BaselineFileError, baseline_payload, dumps, geometry_from_payload, parse_baseline
from geomcheck.gate.drift import Tolerance, compare, compare_all, drift_matrix, resolve_tolerance, tolerances_from_config
from geomcheck.gate.extension import BaselineMismatchWarning, GeometryBaselineExtension, failure_lines
from geomcheck.stats.geometry import geometry_from_samples
from geomcheck.stats.vocabulary import STAT_NAMES

ROOT = Path(__file__).resolve().parents[2]
META = {
    "model": "tiny",
    "name": "tiny",
    "source": "org/tiny",
    "revision": None,
    "weights": "sha256:" + "a" * 64,
    "tokenizer": "sha256:" + "b" * 64,
    "template_date": "2026-01-01",
    "dtype": "float32",
    "device": "cpu",
    "position": "last",
    "chat_template": True,
    "prompts_hash": "abc123",
    "n_prompts": {"harmful": 8, "harmless": 8},
    "geomcheck": "0.1.0",
}


def payload(curves: dict[str, list[float]], intervals: dict[str, tuple[list, list]] | None = None, **meta) -> dict:
    """A baseline payload from plain per-layer lists; no interval unless given."""
    intervals = intervals or {}
    statistics = {}
    for key, values in curves.items():
        lows, highs = intervals.get(key, ([None] * len(values), [None] * len(values)))
        statistics[key] = [
            {"layer": i, "value": v, "low": lo, "high": hi} for i, (v, lo, hi) in enumerate(zip(values, lows, highs))
        ]
    return {"format": FORMAT, "meta": {**META, **meta}, "statistics": statistics}


CURVES = {
    "mid/cosine": [0.99, 0.95, 0.90, 0.80],
    "mid/var_mean/harmful": [1.0, 2.0, 4.0, 8.0],
    "post/var_mean/harmful": [1.5, 3.0, 6.0, 12.0],
}


def perturbed(curves: dict[str, list[float]], key: str, layer: int, value: float) -> dict[str, list[float]]:
    out = {k: list(v) for k, v in curves.items()}
    out[key][layer] = value
    return out


# --- compare ---------------------------------------------------------------------------------------


def test_identical_payloads_have_no_drift():
    assert compare(payload(CURVES), payload(CURVES)) == []
    assert all(d.score == 0 and not d.exceeded for d in compare_all(payload(CURVES), payload(CURVES)))
    assert len(compare_all(payload(CURVES), payload(CURVES))) == 12


def test_one_perturbed_layer_is_the_only_drift_and_is_named():
    drifts = compare(payload(CURVES), payload(perturbed(CURVES, "mid/var_mean/harmful", 2, 5.0)))
    assert [(d.model, d.stream, d.statistic, d.layer) for d in drifts] == [("tiny", "mid", "var_mean/harmful", 2)]
    (drift,) = drifts
    assert (drift.baseline, drift.current) == (4.0, 5.0)
    assert drift.tolerance == pytest.approx(4e-3)  # rel 1e-3 × |4.0|
    assert drift.score == pytest.approx(1.0 / 4e-3)
    text = drift.describe()
    for part in ("tiny", "mid/var_mean/harmful", "layer 2", "baseline 4", "now 5", "tolerance 0.004"):
        assert part in text


def test_drifts_are_sorted_worst_first():
    current = perturbed(CURVES, "mid/var_mean/harmful", 1, 2.1)  # 0.1 / 2e-3 = 50 tolerances
    current = perturbed(current, "post/var_mean/harmful", 3, 24.0)  # 12 / 1.2e-2 = 1000 tolerances
    current = perturbed(current, "mid/cosine", 0, 0.98)  # 0.01 / 9.9e-4 ≈ 10 tolerances
    drifts = compare(payload(CURVES), payload(current))
    assert [(d.key, d.layer) for d in drifts] == [
        ("post/var_mean/harmful", 3),
        ("mid/var_mean/harmful", 1),
        ("mid/cosine", 0),
    ]
    assert drifts[0].score > drifts[1].score > drifts[2].score > 1


def test_the_drift_matrix_marks_exactly_the_drifting_cells_with_their_sign():
    current = perturbed(CURVES, "mid/var_mean/harmful", 1, 2.1)  # up 0.1 = +50 tolerances
    current = perturbed(current, "post/var_mean/harmful", 3, 11.0)  # down 1 ≈ −83 tolerances
    current = perturbed(current, "mid/cosine", 2, 0.9004)  # up 4e-4, within its 9e-4 tolerance
    scored = compare_all(payload(CURVES), payload(current))
    matrix = drift_matrix(scored)
    assert matrix.rows == ("mid/cosine", "mid/var_mean/harmful", "post/var_mean/harmful")  # stream, then statistic
    assert matrix.scores.shape == matrix.exceeded.shape == (3, 4)
    assert {(matrix.rows[r], int(c)) for r, c in zip(*np.nonzero(matrix.exceeded))} == {
        ("mid/var_mean/harmful", 1),
        ("post/var_mean/harmful", 3),
    }
    assert {(d.key, d.layer) for d in compare(payload(CURVES), payload(current))} == {
        (matrix.rows[r], int(c)) for r, c in zip(*np.nonzero(matrix.exceeded))
    }
    assert matrix.scores[1, 1] == pytest.approx(50.0)
    assert matrix.scores[2, 3] == pytest.approx(-1.0 / 12e-3)
    assert 0 < matrix.scores[0, 2] < 1  # moved, but within tolerance: coloured, not outlined
    untouched = np.ones((3, 4), dtype=bool)
    untouched[[1, 2, 0], [1, 3, 2]] = False
    assert np.all(matrix.scores[untouched] == 0)
    assert matrix.first_layer == 1


def test_the_drift_matrix_of_a_missing_layer_and_of_no_drift():
    short = {key: values[:3] for key, values in CURVES.items()}
    matrix = drift_matrix(compare_all(payload(CURVES), payload(short)))
    assert matrix.exceeded[:, 3].all() and not matrix.exceeded[:, :3].any()
    assert np.isinf(matrix.scores[:, 3]).all()
    assert matrix.first_layer == 3
    same = drift_matrix(compare_all(payload(CURVES), payload(CURVES)))
    assert same.first_layer is None and not same.exceeded.any()


EDGE_CASES = {
    # name: (tolerance, baseline value, interval, value at the edge)
    "abs": (Tolerance(rel=0.0, abs=0.5, z=0.0), 2.0, None, 2.5),
    "rel": (Tolerance(rel=0.25, abs=0.0, z=0.0), 4.0, None, 5.0),
    "se": (Tolerance(rel=0.0, abs=0.0, z=4.0), 0.0, (-1.96, 1.96), 4.0),  # SE = 3.92/3.92 = 1 → tolerance 4
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_a_value_exactly_at_the_tolerance_passes_and_just_beyond_fails(case):
    tol, value, interval, edge = EDGE_CASES[case]
    intervals = {"mid/cosine": ([interval[0]], [interval[1]])} if interval else None
    baseline = payload({"mid/cosine": [value]}, intervals)
    overrides = {"cosine": tol}

    def drifts(now: float):
        return compare(baseline, payload({"mid/cosine": [now]}), overrides)

    below = value - (edge - value)
    assert drifts(edge) == [] and drifts(below) == []
    # The next float out: chosen so that |now − baseline| is computed exactly (no rounding back onto the edge).
    for outside in (math.nextafter(edge, math.inf), math.nextafter(below, -math.inf)):
        assert abs(outside - value) > edge - value
        assert [d.layer for d in drifts(outside)] == [0]
    assert compare_all(baseline, payload({"mid/cosine": [edge]}), overrides)[0].tolerance == edge - value


def test_the_tolerance_is_the_largest_of_its_three_terms():
    tol = Tolerance(rel=0.1, abs=0.5, z=4.0)
    assert tol.tolerance(2.0) == 0.5  # abs beats rel·|2| = 0.2
    assert tol.tolerance(20.0) == 2.0  # rel beats abs
    assert tol.tolerance(2.0, 0.0, 3.92) == 4.0  # 4 SEs beat both
    assert tol.tolerance(2.0, 1.0, 1.0) == 0.5  # a zero-width interval adds nothing


def test_bfloat16_noise_floor_raises_the_relative_term():
    baseline = payload({"mid/cosine": [1.0]}, dtype="bfloat16")
    assert compare(baseline, payload({"mid/cosine": [1.03]}, dtype="bfloat16")) == []  # 4 × 2^-7 = 0.03125
    assert compare(baseline, payload({"mid/cosine": [1.04]}, dtype="bfloat16"))[0].statistic == "cosine"
    assert compare(payload({"mid/cosine": [1.0]}), payload({"mid/cosine": [1.03]}))  # float32: no such floor


def test_nan_and_missing_layers():
    nan = float("nan")
    assert compare(payload({"mid/cosine": [nan, 0.5]}), payload({"mid/cosine": [nan, 0.5]})) == []
    (drift,) = compare(payload({"mid/cosine": [0.9, 0.5]}), payload({"mid/cosine": [nan, 0.5]}))
    assert drift.layer == 0 and drift.score == math.inf
    (missing,) = compare(payload({"mid/cosine": [0.9, 0.5, 0.4]}), payload({"mid/cosine": [0.9, 0.5]}))
    assert missing.layer == 2 and math.isnan(missing.current)


def test_tolerance_overrides_most_specific_first():
    loose, tight = Tolerance(rel=0.5), Tolerance(rel=1e-9)
    overrides = {"var_mean": loose, "mid/var_mean/harmful": tight}
    assert resolve_tolerance("mid", "var_mean/harmful", overrides) is tight
    assert resolve_tolerance("pre", "var_mean/harmful", overrides) is loose
    assert resolve_tolerance("pre", "cosine", overrides) == Tolerance(rel=1e-3, abs=1e-6)
    config = tolerances_from_config({"tolerance": {"cosine": {"z": 6}, "mid/var_max/harmful": {"rel": 0.01}}})
    assert config["cosine"] == Tolerance(rel=1e-3, abs=1e-6, z=6.0)
    assert config["mid/var_max/harmful"] == Tolerance(rel=0.01, abs=1e-9, z=4.0)
    with pytest.raises(ValueError, match="rel, abs and z"):
        tolerances_from_config({"tolerance": {"cosine": {"relative": 1}}})
    with pytest.raises(ValueError, match="rel must be"):
        Tolerance(rel=-1.0)


def test_the_report_is_worst_first_and_capped():
    baseline = payload({"mid/var_mean/harmful": [1.0] * 15})
    current = payload({"mid/var_mean/harmful": [1.0 + 0.01 * (i + 1) for i in range(15)]})
    lines = failure_lines(dumps(current), dumps(baseline), "baselines/tiny/x.json")
    assert "tiny" in lines[0] and "15 of 15 values" in lines[0] and "baselines/tiny/x.json" in lines[0]
    value_lines = [line for line in lines if line.startswith("  tiny ")]
    assert len(value_lines) == 10
    assert "layer 14" in value_lines[0] and "layer 5" in value_lines[-1]  # worst (largest change) first
    assert "  … and 5 more" in lines
    assert any(line.startswith("first drifting layer: 0") for line in lines)
    assert "pytest checks/ --model tiny --snapshot-update" in lines[-1]


# --- the file --------------------------------------------------------------------------------------


def real_payload(n_boot: int = 10) -> dict:
    rng = np.random.default_rng(0)
    samples = {name: {s: rng.normal(size=(6, 3, 5)) * (1 + np.arange(3))[:, None] for s in ("pre", "mid")} for name in ("harmful", "harmless")}
    return baseline_payload(geometry_from_samples(samples, n_boot=n_boot), META)


def test_a_baseline_reads_back_as_a_geometry_for_the_overlay_figure():
    rng = np.random.default_rng(0)
    samples = {name: {s: rng.normal(size=(6, 3, 5)) for s in ("pre", "mid")} for name in ("harmful", "harmless")}
    original = geometry_from_samples(samples, n_boot=10)
    restored = geometry_from_payload(parse_baseline(dumps(baseline_payload(original, META))))
    assert restored.streams == ("pre", "mid") and restored.n_boot == 10
    for key in ("mid/cosine", "pre/var_mean/harmful", "mid/var_max/harmless"):
        np.testing.assert_array_equal(restored.curve(*key.split("/", 1)), original.curve(*key.split("/", 1)))
        np.testing.assert_array_equal(restored.interval(key).low, original.interval(key).low)


def test_serialization_round_trips_exactly_one_layer_per_line():
    original = real_payload()
    original["statistics"]["mid/cosine"][1]["value"] = float("nan")
    text = dumps(original)
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert list(strict["statistics"]) == sorted(strict["statistics"]) and list(strict["meta"]) == sorted(strict["meta"])
    back = parse_baseline(text)
    assert back["meta"] == original["meta"] and back["meta"]["n_boot"] == 10
    for key, rows in original["statistics"].items():
        for row, copy in zip(rows, back["statistics"][key], strict=True):
            for name in ("value", "low", "high"):
                assert copy[name] == row[name] or (math.isnan(copy[name]) and math.isnan(row[name]))
    assert set(original["statistics"]) == {f"{s}/{n}" for s in ("pre", "mid") for n in STAT_NAMES}
    assert original["statistics"]["mid/top_feature/harmful"][0]["low"] is None  # an index has no interval
    row_lines = [line for line in text.splitlines() if line.lstrip().startswith('{"layer"')]
    assert len(row_lines) == len(STAT_NAMES) * 2 * 3  # statistics × 2 streams × 3 layers
    assert '{"layer": 1, "value": "NaN", "low": ' in text
    assert dumps(back) == text  # stable: re-serializing changes nothing


def test_without_bootstrap_intervals_are_null_and_tolerance_falls_back_to_rel_and_abs():
    text = dumps(real_payload(n_boot=0))
    assert '"low": null, "high": null' in text
    back = parse_baseline(text)
    assert compare(back, back) == []


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"format": "geomcheck-baseline/1", "meta": {}', "invalid JSON at line 1"),
        ('{"format": "geomcheck-baseline/1", "meta": {"model": "m", "dtype": "float32"}}', "missing key(s) 'statistics'"),
        ("[1, 2]", "must be a JSON object"),
        ('{"format": "geomcheck-baseline/9", "meta": {}, "statistics": {}}', "this geomcheck reads"),
        ('{"format": "geomcheck-baseline/1", "meta": {"model": "m", "dtype": "f"}, '
         '"statistics": {"mid/cosine": [{"layer": 0, "value": 1.0, "low": 0.9}]}}', "row 0 lacks 'high'"),
        ('{"format": "geomcheck-baseline/1", "meta": {"model": "m", "dtype": "f"}, '
         '"statistics": {"mid/cosine": [{"layer": 1, "value": 1.0, "low": null, "high": null}]}}', "layers 0, 1, 2"),
        ('{"format": "geomcheck-baseline/1", "meta": {"model": "m", "dtype": "f"}, "statistics": '
         '{"mid/cosine": [{"layer": 0, "value": "__import__(\'os\')", "low": null, "high": null}]}}', "not a number"),
        ('{"format": "geomcheck-baseline/1", "format": "x"}', "duplicate key 'format'"),
    ],
)
def test_a_broken_file_names_the_file_the_problem_and_the_fix(text, problem):
    with pytest.raises(BaselineFileError) as info:
        parse_baseline(text, "baselines/m/test_baseline/test_matches_baseline.json")
    message = str(info.value)
    assert "baselines/m/test_baseline/test_matches_baseline.json" in message
    assert problem in message
    assert "--snapshot-update" in message and "left as it is" in message


def test_a_broken_baseline_does_not_match_and_the_report_says_why():
    extension = GeometryBaselineExtension()
    current = dumps(payload(CURVES))
    assert extension.matches(serialized_data=current, snapshot_data="{oops") is False
    (line,) = failure_lines(current, "{oops", "b.json")
    assert line.startswith("baseline file b.json is not a valid geomcheck baseline: invalid JSON")


def test_a_missing_baseline_says_how_to_create_it():
    lines = failure_lines(dumps(payload(CURVES)), None, "baselines/tiny/test_baseline/test_matches_baseline.json")
    assert lines[0] == "no baseline for tiny: expected baselines/tiny/test_baseline/test_matches_baseline.json"
    assert "pytest checks/ --model tiny --snapshot-update" in lines[1]


# --- metadata --------------------------------------------------------------------------------------


def test_a_different_dtype_prompt_set_or_version_warns_naming_old_and_new():
    extension = GeometryBaselineExtension()
    baseline = dumps(payload(CURVES))
    changed = dumps(payload(CURVES, dtype="bfloat16", prompts_hash="def456", geomcheck="0.2.0"))
    with pytest.warns(BaselineMismatchWarning) as record:
        assert extension.matches(serialized_data=changed, snapshot_data=baseline) is True  # values still match
    (warning,) = record
    text = str(warning.message)
    for part in ("dtype: baseline 'float32', now 'bfloat16'", "prompts_hash: baseline 'abc123', now 'def456'",
                 "geomcheck: baseline '0.1.0', now '0.2.0'", "tiny"):
        assert part in text


def test_the_same_setup_does_not_warn_and_another_device_or_local_path_is_not_a_mismatch():
    extension = GeometryBaselineExtension()
    baseline = dumps(payload(CURVES, source="/home/a/models/tiny"))
    current = dumps(payload(CURVES, device="cuda", source="/home/b/tiny"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extension.matches(serialized_data=current, snapshot_data=baseline) is True


def test_under_update_a_changed_setup_is_rewritten_but_noise_is_not():
    extension = GeometryBaselineExtension()
    extension.configure(updating=True)
    baseline = dumps(payload(CURVES))
    noisy = dumps(payload(perturbed(CURVES, "mid/cosine", 0, 0.99 + 1e-7)))
    assert extension.matches(serialized_data=noisy, snapshot_data=baseline) is True  # kept: no churn
    changed = dumps(payload(CURVES, dtype="bfloat16"))
    assert extension.matches(serialized_data=changed, snapshot_data=baseline) is False  # rewritten


def test_a_statistic_the_baseline_lacks_is_not_compared_but_added_on_update_one_the_run_lacks_warns():
    """A baseline older than a new statistic still holds for what it has; --snapshot-update adds the rest."""
    extension = GeometryBaselineExtension()
    full = {**CURVES, "post/cosine": [0.99, 0.95, 0.9, 0.8]}  # the baseline keeps the stream (a missing stream fails)
    smaller = {k: v for k, v in full.items() if k != "post/var_mean/harmful"}
    assert extension.matches(serialized_data=dumps(payload(full)), snapshot_data=dumps(payload(smaller))) is True
    updating = GeometryBaselineExtension()
    updating.configure(updating=True)
    assert updating.matches(serialized_data=dumps(payload(full)), snapshot_data=dumps(payload(smaller))) is False
    lines = failure_lines(dumps(payload(full)), dumps(payload(smaller)), "b.json")
    assert "lacks statistics this run computes: post/var_mean/harmful" in lines[-1]
    with pytest.warns(BaselineMismatchWarning, match="not computed in this run.*post/var_mean/harmful"):
        assert extension.matches(serialized_data=dumps(payload(smaller)), snapshot_data=dumps(payload(full))) is True


# --- end to end through syrupy ---------------------------------------------------------------------

BASELINE = Path("baselines/tiny-llama/test_baseline/test_matches_baseline.json")


@pytest.fixture(scope="module")
def activation_cache(tmp_path_factory) -> Path:
    """One activation cache for the module: the unperturbed model is captured once."""
    return tmp_path_factory.mktemp("activations")


@pytest.fixture
def checks(pytester: pytest.Pytester, tiny_llama_dir: Path, activation_cache: Path, monkeypatch):
    """A pytester project with the baseline check; returns a runner for a model directory."""
    # Under `pytest -n`, the subprocess would inherit the worker's variables, and syrupy would then act as
    # an xdist worker: no snapshot report and no unused-snapshot cleanup.
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    shutil.copy(ROOT / "geomcheck" / "checks" / "test_baseline.py", pytester.path / "test_baseline.py")
    pytester.makeini("[pytest]\n")

    def run(*extra: str, model: Path = tiny_llama_dir, cache: Path = activation_cache, target: str = "test_baseline.py"):
        # A run takes ~10 s alone but minutes on a loaded 2-core machine (120 s failed under `make test`
        # with other jobs beside it): the limit only catches a hang.
        return pytester.runpytest_subprocess(
            target, "-p", "geomcheck.activate", "--model", str(model), "--max-prompts", "8", "--n-boot", "40",
            "--geomcheck-cache-dir", str(cache), "-p", "no:cacheprovider", *extra, timeout=1800,
        )

    return run


def scaled_copy(source: Path, target: Path, factor: float) -> Path:
    """The same model with layer 1's MLP output scaled: a swapped or broken checkpoint."""
    import torch
    from transformers import AutoTokenizer, LlamaModel

    model = LlamaModel.from_pretrained(source)
    with torch.no_grad():
        model.layers[1].mlp.down_proj.weight.mul_(factor)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def test_the_packages_own_check_without_a_baseline_skips_naming_the_pyargs_command(checks):
    """A first run of the installed package has no baseline to compare with: a skip (the run is green) whose
    reason is the command that creates one, spelled ``--pyargs geomcheck.checks``, never a site-packages path;
    a project's own copy of the check (above) still fails."""
    first = checks("-rs", "--pyargs", target="geomcheck.checks.test_baseline")
    first.assert_outcomes(skipped=1)
    reason = next(line for line in first.outlines if line.startswith("SKIPPED"))
    fix = reason.split("Create it with: ", 1)[1]
    assert fix.startswith("pytest --pyargs geomcheck.checks --model ") and "tiny-llama --snapshot-update" in fix, reason
    assert str(ROOT) not in fix and "site-packages" not in fix, reason


def test_round_trip_create_pass_then_a_changed_checkpoint_fails(pytester, checks, tiny_llama_dir, tmp_path):
    missing = checks()
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines([f"no baseline for tiny-llama: expected {BASELINE}", "Create it with: pytest * --snapshot-update"])
    assert not (pytester.path / BASELINE).exists()

    created = checks("--snapshot-update")
    created.assert_outcomes(passed=1)
    created.stdout.fnmatch_lines(["*1 snapshot generated*"])
    text = (pytester.path / BASELINE).read_text()
    stored = parse_baseline(text, str(BASELINE))
    assert stored["meta"]["name"] == "tiny-llama" and stored["meta"]["n_prompts"] == {"harmful": 8, "harmless": 8}
    assert len(stored["statistics"]["post/cosine"]) == 4  # one row per layer of the tiny Llama
    assert not list(pytester.path.rglob("__snapshots__"))  # nothing beside the tests

    again = checks()
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines(["*1 snapshot passed*"])
    assert (pytester.path / BASELINE).read_text() == text

    other_prompts = checks("--max-prompts", "6")  # another prompt set: compared, but with a warning
    other_prompts.stdout.fnmatch_lines([
        "*test_baseline.py:*: BaselineMismatchWarning: the baseline of tiny-llama ("
        f"{BASELINE}) was made with another setup: prompts_hash: baseline *, now *"
    ])
    assert (pytester.path / BASELINE).read_text() == text

    # Same directory name (so the same model and baseline), different weights, a fresh cache.
    broken = scaled_copy(tiny_llama_dir, tmp_path / "perturbed" / "tiny-llama", 100.0)
    drifted = checks(model=broken, cache=tmp_path / "cache")
    drifted.assert_outcomes(failed=1)
    out = drifted.stdout.str()
    assert f"the geometry of tiny-llama drifted from its baseline ({BASELINE})" in out
    first = next(line for line in drifted.stdout.lines if line.startswith("  tiny-llama "))
    assert "post/var_" in first and "layer 1:" in first  # the scaled layer's output is the worst drift
    assert "first drifting layer: 1." in out
    assert "--snapshot-update" in out
    drift_map = pytester.path / "geomcheck-artifacts" / "tiny-llama" / "drift-map.png"
    assert f"tiny-llama: figure {drift_map}" in out and drift_map.read_bytes()[:4] == b"\x89PNG"
    assert (pytester.path / BASELINE).read_text() == text  # a failed run never rewrites the baseline


def test_a_broken_baseline_fails_untouched_until_updated_and_stale_ones_are_cleaned(pytester, checks):
    checks("--snapshot-update").assert_outcomes(passed=1)
    path = pytester.path / BASELINE
    path.write_text('{"format": "geomcheck-baseline/1",\n "meta": {}\n')

    failed = checks()
    failed.assert_outcomes(failed=1)
    failed.stdout.fnmatch_lines([f"baseline file {BASELINE} is not a valid geomcheck baseline: invalid JSON*--snapshot-update"])
    assert path.read_text() == '{"format": "geomcheck-baseline/1",\n "meta": {}\n'

    stale = path.with_name("test_removed_check.json")
    stale.write_text("{}")
    other_model = pytester.path / "baselines" / "another-model" / "test_baseline" / "test_matches_baseline.json"
    other_model.parent.mkdir(parents=True)
    other_model.write_text("{}")
    updated = checks("--snapshot-update")
    updated.assert_outcomes(passed=1)
    updated.stdout.fnmatch_lines(["*1 snapshot updated. 1 unused snapshot deleted.*"])
    assert parse_baseline(path.read_text())["meta"]["name"] == "tiny-llama"
    assert not stale.exists()
    assert other_model.exists()  # baselines of models not in the session are never touched


def test_the_drift_map_of_the_changed_checkpoint_marks_the_changed_layer(tiny_llama_dir, tmp_path):
    """The round trip's changed checkpoint (layer 1's MLP output ×100): its ``post`` stream and every stream
    after it leave tolerance; nothing before it moves at all, so the drift map's first drifting layer is 1.
    (×3 is not enough on this random-init model: it stays within 0.25 tolerances, and the gate passes.)"""
    from geomcheck.run.pipeline import ModelRun, RunOptions

    def drift_payload(model: Path, cache: str) -> dict:
        run = ModelRun(str(model), RunOptions(cache_dir=tmp_path / cache, max_prompts=8, n_boot=20, progress=False))
        return baseline_payload(run.geometry, run.meta())

    scaled = scaled_copy(tiny_llama_dir, tmp_path / "scaled" / "tiny-llama", 100.0)
    matrix = drift_matrix(compare_all(drift_payload(tiny_llama_dir, "a"), drift_payload(scaled, "b")))
    assert matrix.first_layer == 1
    before = [i for i, key in enumerate(matrix.rows) if not key.startswith("post/")]
    # computed before the MLP: no drift (pre at layer 1 is post at layer 0, compared once, as post: not a cell)
    assert np.all(matrix.scores[:, 0] == 0) and np.all(np.nan_to_num(matrix.scores[before, 1]) == 0)
    assert {matrix.rows[i].split("/", 1)[0] for i in np.flatnonzero(matrix.exceeded[:, 1])} == {"post"}


# --- identity: the gate never passes a swapped checkpoint -----------------------------------------


def loads(result) -> str:
    return next(line for line in result.stdout.lines if "model loaded" in line)


def test_a_cached_rerun_of_every_shipped_check_imports_no_torch(pytester, checks, tiny_llama_dir, tmp_path):
    """The README's "a re-run imports no torch", for the whole of ``pytest checks/``, the baseline check
    included (naming its folder once imported the model loader, hence torch). A conftest records what the
    session imported, in a fresh interpreter (``runpytest_subprocess``). transformers itself may load: the
    start-up validation of a local directory reads its table of model types, which needs no torch."""
    for check in (ROOT / "geomcheck" / "checks").glob("test_*.py"):
        shutil.copy(check, pytester.path / check.name)
    pytester.makeconftest(
        "import sys\nfrom pathlib import Path\n\n"
        "def pytest_sessionfinish(session):\n"
        "    Path('imported.txt').write_text(' '.join(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    cache = tmp_path / "cache"
    first = checks("--snapshot-update", cache=cache, target=".")
    first.stdout.fnmatch_lines(["*1 snapshot generated*"])
    assert (pytester.path / "imported.txt").read_text().split() == ["torch", "transformers"]  # the measuring run

    again = checks(cache=cache, target=".")
    assert again.parseoutcomes() == first.parseoutcomes()
    again.stdout.fnmatch_lines(["*1 snapshot passed*"])  # the baseline check compared against its baseline
    assert loads(again) == "tiny-llama: model loaded 0× (all from cache)"
    assert "torch" not in (pytester.path / "imported.txt").read_text().split()


def test_a_checkpoint_changed_in_place_under_a_warm_cache_is_measured_again(pytester, checks, tiny_llama_dir, tmp_path):
    model = Path(shutil.copytree(tiny_llama_dir, tmp_path / "models" / "tiny-llama"))
    cache = tmp_path / "cache"
    checks("--snapshot-update", model=model, cache=cache).assert_outcomes(passed=1)
    warm = checks(model=model, cache=cache)
    warm.assert_outcomes(passed=1)
    assert loads(warm) == "tiny-llama: model loaded 0× (all from cache)"
    weights = parse_baseline((pytester.path / BASELINE).read_text())["meta"]["weights"]

    # overwrite the weights file in place (same path, same size) with layer 1's MLP output scaled. ×3 is
    # what fails on smollm2-135m; in this random-init model the MLP writes ~1% of the residual, so ×3 stays
    # within the 4-SE tolerance of 8 prompts and ×100 stands in for it.
    scaled = scaled_copy(model, tmp_path / "scaled", 100.0)
    shutil.copyfile(scaled / "model.safetensors", model / "model.safetensors")
    changed = checks(model=model, cache=cache)
    changed.assert_outcomes(failed=1)
    assert loads(changed) == "tiny-llama: model loaded 1×"
    out = changed.stdout.str()
    assert "first drifting layer: 1." in out
    assert f"identity: weights {weights[7:14]} → " in out and "(model.safetensors)" in out

    os.utime(model / "model.safetensors")  # a touch: new mtime, same content
    touched = checks(model=model, cache=cache)
    touched.assert_outcomes(failed=1)
    assert loads(touched) == "tiny-llama: model loaded 0× (all from cache)"
    assert "first drifting layer: 1." in touched.stdout.str()

    template = model / "chat_template.jinja"
    template.write_text("<|end|> " + template.read_text())
    retemplated = checks(model=model, cache=cache)
    assert loads(retemplated) == "tiny-llama: model loaded 1×"  # new template, new activations
    assert "tokenizer " in retemplated.stdout.str() and "rendered inputs " in retemplated.stdout.str()


def test_a_fine_tune_is_compared_against_its_base_with_baseline(pytester, checks, tiny_llama_dir, tmp_path):
    checks("--snapshot-update").assert_outcomes(passed=1)  # the base: baselines/tiny-llama
    same = Path(shutil.copytree(tiny_llama_dir, tmp_path / "finetune"))
    matched = checks("--baseline", "tiny-llama", model=same)
    matched.assert_outcomes(passed=1)
    matched.stdout.fnmatch_lines(["*vs tiny-llama's baseline: checkpoint unchanged (weights *"])
    assert not (pytester.path / "baselines" / "finetune").exists()

    tuned = scaled_copy(tiny_llama_dir, tmp_path / "tuned", 100.0)
    drifted = checks("--baseline", "tiny-llama", model=tuned, cache=tmp_path / "cache")
    drifted.assert_outcomes(failed=1)
    out = drifted.stdout.str()
    assert f"drifted from its baseline ({BASELINE})" in out and "first drifting layer: 1." in out
    assert "vs tiny-llama's baseline: weights " in out

    refused = checks("--baseline", "tiny-llama", "--snapshot-update", model=tuned)
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*would overwrite tiny-llama's baseline*--model tiny-llama --snapshot-update*"])
    unknown = checks("--baseline", "llama-3.2-3b", model=tuned)
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(["*--baseline llama-3.2-3b: no baselines in *Create them with: pytest checks/ --model llama-3.2-3b --snapshot-update*"])


def test_two_checkpoint_folders_of_the_same_name_never_share_a_baseline_silently(pytester, checks, tmp_path):
    from conftest import save_tiny_llama

    first = save_tiny_llama(tmp_path / "runs" / "a" / "final", seed=1, num_layers=2)
    second = save_tiny_llama(tmp_path / "runs" / "b" / "final", seed=2, num_layers=2)
    both = checks("--model", str(second), model=first)
    assert both.ret == pytest.ExitCode.USAGE_ERROR
    both.stderr.fnmatch_lines([f"*two models would share the baselines of 'final': {first} and {second}*"])

    checks("--snapshot-update", model=first, cache=tmp_path / "cache").assert_outcomes(passed=1)
    other = checks(model=second, cache=tmp_path / "cache")
    assert f"source {first} → {second}" in other.stdout.str()  # the report says it is another folder


def test_a_top_feature_index_is_compared_only_where_that_feature_holds_most_of_the_variance():
    curves = {
        "mid/top_feature/harmful": [3.0, 3.0],
        "mid/top_share/harmful": [0.2, 0.9],  # layer 0: a near-tie, layer 1: a massive feature
    }
    def rows(values):
        return {k: [{"layer": i, "value": v, "low": None, "high": None} for i, v in enumerate(vs)] for k, vs in values.items()}
    baseline = {"meta": {}, "statistics": rows(curves)}
    flipped_tie = {"meta": {}, "statistics": rows({**curves, "mid/top_feature/harmful": [7.0, 3.0]})}
    moved_massive = {"meta": {}, "statistics": rows({**curves, "mid/top_feature/harmful": [3.0, 7.0]})}
    assert compare(baseline, flipped_tie) == []
    (drift,) = compare(baseline, moved_massive)
    assert (drift.statistic, drift.layer, drift.baseline, drift.current) == ("top_feature/harmful", 1, 3.0, 7.0)
