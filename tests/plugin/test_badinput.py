"""Bad input never passes, never poisons, never runs foreign code (issue 10).

Each start-up case runs pytest through pytester with one bad value and asserts three things: a usage error
(exit code 4), a message naming the option or file, the value and what is accepted, and that nothing was
written (no cache folder, no artifacts folder).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from geomcheck.run import cache as cache_module
from geomcheck.run.cache import ArrayCache, CacheError, CacheWarning
from geomcheck.errors import OptionError
from geomcheck.thresholds import validate_thresholds
from geomcheck.thresholds import shipped as shipped_thresholds

pytestmark = pytest.mark.usefixtures("opted_in")

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (ROOT / "geomcheck" / "data" / "thresholds.toml").read_text()

CHECK = "def test_x(geometry): pass\n"


def run_bad(pytester: pytest.Pytester, tmp_path: Path, *args: str, model: str | None = None) -> str:
    """Run with the given arguments; assert a usage error that wrote nothing; return stderr."""
    pytester.makepyfile(CHECK)
    cache = tmp_path / "cache"
    full = ["--geomcheck-cache-dir", str(cache), "-p", "no:cacheprovider", *args]
    if model is not None:
        full = ["--model", model, *full]
    result = pytester.runpytest(*full)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert not cache.exists() or cache.is_file()
    assert not (pytester.path / "geomcheck-artifacts").exists()
    return result.stderr.str()


# (arguments, words the error must contain)
BAD_OPTIONS = [
    (["--batch-size", "-3"], ["--batch-size", "'-3'", "≥ 1"]),
    (["--batch-size", "0"], ["--batch-size", "'0'", "≥ 1"]),
    (["--batch-size", "abc"], ["--batch-size", "'abc'"]),
    (["--max-prompts", "-1"], ["--max-prompts", "'-1'", "≥ 2"]),
    (["--max-prompts", "abc"], ["--max-prompts", "'abc'"]),
    (["--max-prompts", "1"], ["--max-prompts", "'1'", "≥ 2"]),
    (["--n-boot", "-1"], ["--n-boot", "'-1'", "≥ 0"]),
    (["--seed", "-5"], ["--seed", "'-5'"]),
    (["--seed", "1.5"], ["--seed", "'1.5'"]),
    (["--top-k", "0"], ["--top-k", "'0'", "≥ 1"]),
    (["--position", "first"], ["--position", "'first'", "last, mean"]),
    (["--streams", "mid,resid"], ["--streams", "'resid'", "pre,mid,post"]),
    (["--streams", "pre,pre"], ["--streams", "repeated"]),
    (["--streams", ","], ["--streams", "empty"]),
    (["--dtype", "float8"], ["--dtype", "'float8'", "float32, bfloat16, float16"]),
    (["--device", "gpu0"], ["--device", "'gpu0'", "cpu, cuda, cuda:N or mps"]),
    (["--device-map", "everywhere"], ["--device-map", "'everywhere'", "auto"]),
    (["--harmful", "missing.txt"], ["--harmful", "missing.txt"]),
    (["--snapshot-update", "--streams", "mid"], ["--snapshot-update", "drop the other streams", "--streams pre,mid,post"]),
]


@pytest.mark.parametrize(("args", "words"), BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_a_bad_option_is_a_usage_error_before_anything_runs(pytester: pytest.Pytester, tmp_path, args, words):
    message = run_bad(pytester, tmp_path, *args)
    for word in words:
        assert word in message, (word, message)


def test_cuda_without_a_gpu_is_a_clear_usage_error(pytester: pytest.Pytester, tmp_path):
    import torch

    if torch.cuda.is_available():  # pragma: no cover - this project's CI is CPU-only
        pytest.skip("a GPU is present: cuda is a valid device here")
    message = run_bad(pytester, tmp_path, "--device", "cuda")
    assert "--device (ini geomcheck_device) = 'cuda' is not available: this machine has 0 cuda device(s)" in message
    assert "dtype" not in message  # the old message blamed --dtype


def test_a_gpu_index_beyond_the_machines_gpus_is_refused(monkeypatch):
    """The GPU path without a GPU: torch reports one CUDA device."""
    import torch

    from geomcheck import options

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    options.device("cuda")
    options.device("cuda:0")
    with pytest.raises(OptionError, match="'cuda:1' is not available: this machine has 1 cuda device"):
        options.device("cuda:1")


def test_a_bad_ini_value_names_the_ini_key(pytester: pytest.Pytester, tmp_path):
    pytester.makeini("[pytest]\ngeomcheck_batch_size = -1\n")
    assert "geomcheck_batch_size" in run_bad(pytester, tmp_path)


def test_a_malformed_prompt_file_is_a_usage_error(pytester: pytest.Pytester, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "fine"}\n{not json\n')
    message = run_bad(pytester, tmp_path, "--harmless", str(tmp_path / "bad.jsonl"))
    assert "--harmless" in message and "bad.jsonl" in message and "line 2" in message


@pytest.mark.parametrize("what", ["cache-dir", "artifacts-dir"])
def test_a_file_where_a_folder_belongs_is_a_usage_error(pytester: pytest.Pytester, tmp_path, what):
    path = tmp_path / "cache" if what == "cache-dir" else tmp_path / "a-file"
    path.write_text("not a folder")
    option = "--geomcheck-cache-dir" if what == "cache-dir" else "--artifacts-dir"
    message = run_bad(pytester, tmp_path, option, str(path))
    assert f"{option} (ini geomcheck_{what.replace('-', '_')}) = '{path}' is a file, not a directory" in message
    assert path.read_text() == "not a folder"


# The thresholds file: (what is written, words the error must contain)
BAD_THRESHOLDS = {
    "malformed": ("[variance_grows\nmin_rate = 1", ["is not valid TOML"]),
    "misspelled check": (SHIPPED + '[models.tiny-llama.expected_failures]\n"varaince_grows[pre]" = "finding"\n', ["unknown check 'varaince_grows'"]),
    "unknown stream": (SHIPPED + '[models.tiny-llama.expected_failures]\n"variance_grows[resid]" = "finding"\n', ["unknown stream 'resid'"]),
    "empty reason": (SHIPPED + '[models.tiny-llama.expected_failures]\n"variance_grows[pre]" = "  "\n', ["needs a reason"]),
    "unknown override table": (SHIPPED + "[models.tiny-llama.cosine_fall]\nmax_spearman = 0\n", ["unknown check 'cosine_fall'"]),
    "unknown key": (SHIPPED.replace("min_rate = 1.05", "min_rate = 1.05\nmin_rat = 1.1"), ["unknown key(s) min_rat"]),
    "override unknown key": (SHIPPED + "[models.tiny-llama.cosine_falls]\nmax_spearmann = 0\n", ["unknown key(s) max_spearmann"]),
    "string value": (SHIPPED.replace("min_rate = 1.05", 'min_rate = "1.05"'), ["min_rate = '1.05' must be a number"]),
    "boolean value": (SHIPPED.replace("min_r2 = 0.80", "min_r2 = true"), ["min_r2 = True must be a number"]),
    "negative tolerance": (SHIPPED + "[matches_baseline.tolerance]\ncosine = { rel = -1 }\n", ["[matches_baseline]", "tolerance rel must be a finite number"]),
    "tolerance typo": (SHIPPED + "[models.tiny-llama.matches_baseline.tolerance]\ncosine = { rell = 1 }\n", ["must be a table of rel, abs and z"]),
    "not a table": ("variance_grows = 3\n" + SHIPPED.split("[variance_grows]")[1], ["'variance_grows' must be a table"]),
}


@pytest.mark.parametrize("case", list(BAD_THRESHOLDS))
def test_a_bad_thresholds_file_is_a_usage_error(pytester: pytest.Pytester, tmp_path, case):
    text, words = BAD_THRESHOLDS[case]
    path = tmp_path / "thresholds.toml"
    path.write_text(text)
    message = run_bad(pytester, tmp_path, "--thresholds", str(path))
    assert str(path) in message and "--thresholds" in message
    for word in words:
        assert word in message, (word, message)


def test_a_missing_thresholds_file_is_a_usage_error(pytester: pytest.Pytester, tmp_path):
    assert "does not exist" in run_bad(pytester, tmp_path, "--thresholds", str(tmp_path / "nope.toml"))


def test_the_shipped_thresholds_and_a_declared_own_check_are_valid():
    validate_thresholds(shipped_thresholds())
    data = {**shipped_thresholds(), "my_check": {}, "models": {"m": {"expected_failures": {"my_check[mid]": "measured"}}}}
    validate_thresholds(data)
    with pytest.raises(OptionError, match="unknown check 'my_chek'"):
        validate_thresholds({**data, "models": {"m": {"expected_failures": {"my_chek": "measured"}}}})


# Model directories


def custom_code_dir(path: Path) -> Path:
    """A directory whose config maps to its own Python file; importing that file leaves a marker."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({
        "model_type": "evil-model",
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"},
    }))
    (path / "evil.py").write_text(f"open({str(path / 'IMPORTED')!r}, 'w').write('ran')\n")
    return path


def test_a_custom_code_directory_is_refused_without_the_flag_even_with_y_on_stdin(pytester: pytest.Pytester, tmp_path):
    model = custom_code_dir(tmp_path / "evil")
    pytester.makepyfile(CHECK)
    result = pytester.run(sys.executable, "-m", "pytest", "--model", str(model), "--geomcheck-cache-dir", str(tmp_path / "cache"),
                          stdin=b"y\ny\ny\n")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--trust-remote-code" in result.stderr.str()
    assert not (model / "IMPORTED").exists()
    assert not (tmp_path / "cache").exists()


def test_the_memory_estimate_never_imports_custom_code_without_the_flag(tmp_path, monkeypatch):
    """The call that used to ask on stdin: AutoConfig in estimate_memory, now with trust_remote_code=False."""
    import io

    import torch

    from geomcheck.run import models

    model = custom_code_dir(tmp_path / "evil")
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 5))
    with pytest.raises(models.ModelLoadError, match="could not read the config"):
        models.estimate_memory(models.resolve(str(model)), torch.float32, batch_size=1, tokens=8)
    assert not (model / "IMPORTED").exists()


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ("{not json", ["config.json", "JSON"]),
        ("[1, 2]", ["config.json", "JSON object"]),
        (json.dumps({"model_type": "llamma"}), ["model_type 'llamma'", "transformers does not know"]),
    ],
    ids=["not json", "not an object", "unknown model_type"],
)
def test_a_broken_model_directory_is_a_usage_error(pytester: pytest.Pytester, tmp_path, config, words):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(config)
    message = run_bad(pytester, tmp_path, model=str(model))
    assert "INTERNALERROR" not in message
    for word in words:
        assert word in message, (word, message)


# Findings and run-time errors


def test_an_error_under_an_expected_failure_fails_the_run_and_is_shown_once(pytester: pytest.Pytester, tiny_llama_dir, tmp_path):
    """Only the hypothesis' AssertionError is the finding. A model that cannot load is an error, shown in
    full once; the other checks of that model point at it in one line and do not retry the load."""
    broken = tmp_path / "tiny-llama"
    shutil.copytree(tiny_llama_dir, broken)
    weights = broken / "model.safetensors"  # truncated: it passes the start-up checks and fails to load
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for check in ("test_variance_grows.py", "test_cosine_falls.py", "test_weights_share_directions.py"):
        shutil.copy(ROOT / "checks" / check, pytester.path / check)
    thresholds = tmp_path / "thresholds.toml"
    thresholds.write_text(SHIPPED + '[models.tiny-llama.expected_failures]\n"variance_grows" = "finding: no growth"\n'
                          '"cosine_falls" = "finding: no untangling"\n')
    result = pytester.runpytest("--model", str(broken), "--thresholds", str(thresholds), "--max-prompts", "4",
                                "--geomcheck-cache-dir", str(tmp_path / "cache"), "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("xfailed", 0) == 0 and outcomes.get("passed", 0) == 0
    assert outcomes.get("errors", 0) + outcomes.get("failed", 0) == 7
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    text = result.stdout.str()
    assert len(re.findall(r"^E\s+geomcheck.run.registry.ModelLoadError: ", text, re.M)) == 1  # one traceback
    assert len(re.findall(r"^(same error as \S+|\S+: not run, its run failed in an earlier check)", text, re.M)) == 6  # six one-liners
    assert "tiny-llama: not run, its run failed in an earlier check" in text  # the weights, not retried
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_a_missing_prompt_file_under_an_expected_failure_fails_the_run(pytester: pytest.Pytester, tiny_llama_dir, tmp_path):
    """The issue's probe: a finding entry used to turn this into "2 xfailed", exit 0."""
    shutil.copy(ROOT / "checks" / "test_variance_grows.py", pytester.path)
    thresholds = tmp_path / "thresholds.toml"
    thresholds.write_text(SHIPPED + '[models.tiny-llama.expected_failures]\n"variance_grows[pre]" = "finding"\n"variance_grows[post]" = "finding"\n')
    message = run_bad(pytester, tmp_path, "--thresholds", str(thresholds), "--harmful", "missing.txt", "-k", "pre or post",
                      model=str(tiny_llama_dir))
    assert "--harmful (ini geomcheck_harmful)" in message and "missing.txt" in message


def test_a_capture_that_missed_prompts_is_never_cached():
    from geomcheck.run.activations import Capture, IncompleteCaptureError, check_complete

    empty = np.zeros((0, 2, 3), np.float32)
    capture = Capture({"harmful": {"mid": empty}, "harmless": {"mid": empty}}, 2, 3)
    with pytest.raises(IncompleteCaptureError, match="captured 0 of 5 harmful prompts on stream mid"):
        check_complete(capture, {"harmful": 5, "harmless": 5})


# The cache


def entry():
    return {"a/pre/mean": np.arange(6, dtype=np.float64).reshape(2, 3)}


def test_an_empty_result_is_never_stored(tmp_path):
    cache = ArrayCache(tmp_path / "c")
    for arrays in ({}, {"a/pre/mean": np.zeros((0, 3))}):
        with pytest.raises(CacheError, match="refusing to cache an empty result"):
            cache.get_or_compute("k", lambda arrays=arrays: arrays, {})
    assert not list((tmp_path / "c").iterdir())  # no entry, no lock file, no temporary file


def test_a_valid_entry_is_read_without_a_lock_and_a_read_only_cache_still_computes(tmp_path, monkeypatch):
    cache = ArrayCache(tmp_path)
    cache.store("k", entry(), {})

    def no_lock(path):  # what a read-only folder does to the lock (as root, chmod would not stop us)
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(cache_module, "FileLock", no_lock)
    calls = []
    arrays, _, hit = cache.get_or_compute("k", lambda: calls.append(1) or entry(), {})
    assert hit and not calls
    with pytest.warns(CacheWarning, match="not writable"):
        arrays, _, hit = cache.get_or_compute("other", entry, {})
    assert not hit and not cache.path("other").exists()


def test_lock_files_do_not_pile_up(tmp_path):
    cache = ArrayCache(tmp_path)
    for key in ("a", "b", "c"):
        cache.get_or_compute(key, entry, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors", "c.safetensors"]


def test_a_folder_where_an_entry_belongs_is_a_clear_error(tmp_path):
    cache = ArrayCache(tmp_path)
    cache.path("k").mkdir()
    with pytest.raises(CacheError, match="should be a cache entry but is a folder; remove it"):
        cache.get_or_compute("k", entry, {})


def test_cache_clear_empties_only_geomcheck_folders_and_the_summary_shows_a_large_cache(pytester: pytest.Pytester, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    ArrayCache(root / "activations").store("k", entry(), {})
    (root / "mine.txt").parent.mkdir(exist_ok=True)
    (root / "mine.txt").write_text("not geomcheck's")
    monkeypatch.setattr(cache_module, "LARGE_BYTES", 1)
    pytester.makepyfile(
        "def test_x(geomcheck_record, thresholds):\n"
        "    geomcheck_record('figure')\n"
    )
    result = pytester.runpytest("--geomcheck-cache-dir", str(root), "--geomcheck-cache-clear", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not (root / "activations").exists() and (root / "mine.txt").exists()
    assert f"geomcheck cache: {root} holds 0.0 GiB (empty it with --geomcheck-cache-clear)" in result.stdout.str()


def test_a_killed_conversions_staging_folder_is_removed(tmp_path):
    from geomcheck.run.models import remove_stale_staging

    target = tmp_path / "converted" / "smollm2-135m-0.1.2"
    staging = target.with_name(target.name + ".tmp-4242")
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"half")
    other = tmp_path / "converted" / "other-model.tmp-1"
    other.mkdir()
    assert remove_stale_staging(target) == [staging]
    assert not staging.exists() and other.exists()


def test_junit_xml_gets_the_properties_without_xunit2_warnings(pytester: pytest.Pytester, tmp_path):
    import xml.etree.ElementTree as ET

    pytester.makepyfile("def test_x(geomcheck_record, thresholds):\n    geomcheck_record('key figure')\n")
    result = pytester.runpytest("--junitxml=r.xml", "--geomcheck-cache-dir", str(tmp_path), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    # only pytest's own xunit2 warnings count here (an in-process run may also warn that the already
    # imported geomcheck cannot be assertion-rewritten, depending on how it was installed)
    assert "record_property is incompatible" not in result.stdout.str() and "junit_family" not in result.stdout.str()
    properties = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "r.xml").iter("property")}
    assert properties["geomcheck"] == "key figure"


def test_geomcheck_record_outside_a_model_check_is_a_clear_failure_not_an_internal_error(pytester: pytest.Pytester, tmp_path):
    pytester.makepyfile("def test_x(geomcheck_record):\n    geomcheck_record('key figure')\n")
    result = pytester.runpytest("--geomcheck-cache-dir", str(tmp_path), "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert "INTERNALERROR" not in result.stdout.str()
    assert "the check must use a model fixture" in result.stdout.str()
