"""Issue 26: nothing silently wrong, nothing lost, nothing red on a first run.

One test (or one parametrized case) per defect found by probing; each fails on the code before the fix.
Start-up cases run pytest through pytester and expect a usage error that names the input
(:func:`test_badinput.run_bad`); the rest call the layer that was wrong directly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_badinput import run_bad

from geomcheck.report import ci
from geomcheck.run import fingerprint
from geomcheck.gate.baseline import BaselineFileError, baseline_payload, dumps, parse_baseline
from geomcheck.run.fingerprint import StatIndex, of_directory
from geomcheck.stats.geometry import geometry_from_samples
from geomcheck.errors import OptionError
from geomcheck.options import MAX_N_BOOT, MIN_N_BOOT
from geomcheck.thresholds import validate_thresholds
from geomcheck.gate.extension import GeometryBaselineExtension, failure_lines
from geomcheck.thresholds import shipped as shipped_thresholds

pytestmark = pytest.mark.usefixtures("opted_in")

META = {"model": "tiny", "dtype": "float32"}


def _samples(n: int = 10, layers: int = 4, d: int = 5) -> dict:
    rng = np.random.default_rng(0)
    return {
        which: {stream: shift + rng.normal(size=(n, layers, d)) for stream in ("pre", "mid", "post")}
        for which, shift in (("harmful", 1.0), ("harmless", 0.8))
    }


@pytest.fixture(scope="module")
def geometry():
    return geometry_from_samples(_samples(), n_boot=0)


@pytest.fixture(scope="module")
def payload(geometry) -> dict:
    return parse_baseline(dumps(baseline_payload(geometry, META)))


# 1. a model's own code is part of its fingerprint


def test_changing_only_a_models_own_code_changes_its_fingerprint_from_a_warm_index(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "custom", "auto_map": {"AutoModel": "custom_model.Custom"}}')
    code = folder / "custom_model.py"
    code.write_text("SCALE = 1.0\n")
    index = StatIndex(tmp_path / "index.json")
    before = of_directory(folder, index)
    index.save()
    code.write_text("SCALE = 2.0\n")
    after = of_directory(folder, StatIndex(tmp_path / "index.json"))
    assert "custom_model.py" in after.files
    assert before.weights != after.weights and before.tokenizer == after.tokenizer


# 2. derive cannot overwrite a built-in statistic


def test_derive_refuses_a_built_in_key_and_keeps_its_value(geometry):
    kept = geometry.value("mid/cosine").copy()
    with pytest.raises(ValueError, match="would overwrite the built-in statistic 'mid/cosine'"):
        geometry.derive("mid/cosine", lambda v: 0.5)
    np.testing.assert_array_equal(geometry.value("mid/cosine"), kept)
    geometry.derive("mine/peak", lambda v: np.max(v["mid/cosine"]))  # a name of its own, derived again: fine
    assert geometry.derive("mine/peak", lambda v: np.max(v["mid/cosine"])) == np.max(kept)


# 3. a baseline missing a stream, or with unknown statistics, is a failure naming them


def test_a_baseline_with_renamed_statistics_is_broken_and_names_them(payload):
    renamed = {**payload, "statistics": {key + "_old": rows for key, rows in payload["statistics"].items()}}
    with pytest.raises(BaselineFileError, match="unknown statistic.*'mid/cosine_old'"):
        parse_baseline(json.dumps(renamed), "b.json")


def test_a_baseline_whose_meta_lists_a_stream_it_does_not_hold_is_broken(payload):
    statistics = {key: rows for key, rows in payload["statistics"].items() if not key.startswith("post/")}
    with pytest.raises(BaselineFileError, match="no statistic of post"):
        parse_baseline(json.dumps({**payload, "statistics": statistics}), "b.json")


def test_a_baseline_missing_a_stream_the_run_computes_does_not_match(payload):
    statistics = {key: rows for key, rows in payload["statistics"].items() if not key.startswith("post/")}
    baseline = dumps({**payload, "meta": {**payload["meta"], "streams": ["pre", "mid"]}, "statistics": statistics})
    extension = GeometryBaselineExtension()
    extension.configure(defer_warnings=True)  # this payload has no fingerprint; that warning is not the point here
    assert not extension.matches(serialized_data=dumps(payload), snapshot_data=baseline)
    assert not extension.comparison.drifts  # every shared value matches: the missing stream alone fails it
    message = "\n".join(failure_lines(dumps(payload), baseline, "b.json"))
    assert "holds no statistic of the stream(s) post" in message and "--snapshot-update" in message


# 4. baselines are written atomically


class _Collection:
    def __init__(self, location: Path, data: str) -> None:
        self.location, self.data = str(location), data

    def __iter__(self):
        return iter([self])


def test_a_baseline_write_killed_midway_leaves_the_old_file_whole(tmp_path, monkeypatch, payload):
    target = tmp_path / "baselines" / "test_matches_baseline.json"
    target.parent.mkdir()
    target.write_text("old baseline")

    def killed(fd: int) -> None:
        raise KeyboardInterrupt  # what SIGKILL does to a write in flight, as far as the file is concerned

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        GeometryBaselineExtension.write_snapshot_collection(snapshot_collection=_Collection(target, dumps(payload)))
    assert target.read_text() == "old baseline"
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp file left behind
    monkeypatch.undo()
    GeometryBaselineExtension.write_snapshot_collection(snapshot_collection=_Collection(target, dumps(payload)))
    assert parse_baseline(target.read_text()) == payload
    assert target.stat().st_mode & 0o777 == 0o644


# 5.–7. start-up problems are usage errors that name the input

STARTUP = [
    (["--n-boot", "1"], ["--n-boot", "'1'", f"at least {MIN_N_BOOT}", "0 for point values"]),
    (["--n-boot", str(MIN_N_BOOT - 1)], ["--n-boot", "95% interval"]),
    (["--n-boot", "1000000000"], ["--n-boot", "'1000000000'", "GiB", f"at most {MAX_N_BOOT:,}"]),
    (["--model", "A/b..c"], ["A/b..c", "not a valid hub id"]),
    (["--model", "org/na--me"], ["org/na--me", "not a valid hub id"]),
]


@pytest.mark.parametrize(("args", "words"), STARTUP, ids=[" ".join(a) for a, _ in STARTUP])
def test_a_bad_start_up_value_is_a_usage_error_naming_it(pytester: pytest.Pytester, tmp_path, args, words):
    message = run_bad(pytester, tmp_path, *args)
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_threshold_is_refused(value):
    data = shipped_thresholds()
    with pytest.raises(OptionError, match=f"min_rate = {value}.* must be a finite number"):
        validate_thresholds({**data, "variance_grows": {**data["variance_grows"], "min_rate": float(value)}})
    with pytest.raises(OptionError, match="my_check.limit = nan must be a finite number"):
        validate_thresholds({**data, "my_check": {"limit": float("nan")}})


def test_a_non_finite_threshold_in_a_file_is_a_usage_error(pytester: pytest.Pytester, tmp_path):
    text = (Path(__file__).resolve().parents[2] / "geomcheck" / "data" / "thresholds.toml").read_text()
    path = tmp_path / "thresholds.toml"
    path.write_text(text.replace("min_rate = 1.05", "min_rate = nan"))
    assert "min_rate = nan must be a finite number" in run_bad(pytester, tmp_path, "--thresholds", str(path))


def test_thresholds_that_are_not_a_table_in_pyproject_are_a_usage_error(pytester: pytest.Pytester, tmp_path):
    pytester.makepyprojecttoml('[tool.geomcheck]\nthresholds = "strict"\n')
    message = run_bad(pytester, tmp_path)
    assert "tool.geomcheck.thresholds = 'strict' must be a table" in message and "pyproject.toml" in message


def test_a_prompt_file_linked_to_a_device_is_a_usage_error(pytester: pytest.Pytester, tmp_path):
    link = tmp_path / "zeros.txt"
    link.symlink_to("/dev/zero")
    message = run_bad(pytester, tmp_path, "--harmful", str(link))
    assert "--harmful" in message and "zeros.txt" in message and "not a regular file" in message


def test_a_prompt_file_too_large_is_refused(tmp_path, monkeypatch):
    from geomcheck.run import prompts

    monkeypatch.setattr(prompts, "MAX_PROMPT_FILE_BYTES", 100)
    path = tmp_path / "big.txt"
    path.write_text("how do I bake bread\n" * 10)
    with pytest.raises(prompts.PromptFileError, match="big.txt.*larger than"):
        prompts.load_prompts(path)


# 8. a fingerprint index that is JSON but not an object is rebuilt


@pytest.mark.parametrize("text", ["[]", "null", '{"x": 3}', '"text"'])
def test_a_malformed_fingerprint_index_is_rebuilt(tmp_path, text, tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(fingerprint, "RACY_NS", -1)  # the session's model was just written: trust its stat anyway
    path = tmp_path / "fingerprints" / "index.json"
    path.parent.mkdir()
    path.write_text(text)
    index = StatIndex(path)
    found = of_directory(tiny_llama_dir, index)
    index.save()
    rebuilt = json.loads(path.read_text())
    assert isinstance(rebuilt, dict) and len(rebuilt) == len(found.files)
    assert of_directory(tiny_llama_dir, StatIndex(path)) == found


# 9. the step summary never fails a run


def test_an_unwritable_step_summary_is_reported_not_raised(tmp_path, capsys):
    ci.append_step_summary(tmp_path, "## geomcheck\n")  # a directory
    ci.append_step_summary(tmp_path / "missing" / "summary.md", "## geomcheck\n")
    err = capsys.readouterr().err
    assert err.count("could not write the job summary") == 2 and str(tmp_path) in err


# Poor: the message they need


def test_geomcheck_cache_set_to_a_file_is_a_usage_error(pytester: pytest.Pytester, tmp_path, monkeypatch):
    cache_file = tmp_path / "cache-file"
    cache_file.write_text("not a folder")
    monkeypatch.setenv("GEOMCHECK_CACHE", str(cache_file))
    pytester.makepyfile("def test_x(geometry): pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "$GEOMCHECK_CACHE" in result.stderr.str() and str(cache_file) in result.stderr.str()


@pytest.mark.parametrize(("table", "near"), [("variance_grow", "variance_grows"), ("cosine_fall", "cosine_falls")])
def test_a_misspelled_threshold_table_names_the_close_match(table, near):
    with pytest.raises(OptionError, match=rf"\[{table}\] is not a shipped check; did you mean \[{near}\]"):
        validate_thresholds({**shipped_thresholds(), table: {"min_rate": 1.2}})
    validate_thresholds({**shipped_thresholds(), "my_check": {"limit": 1.0}})  # a name of its own stays a user check
