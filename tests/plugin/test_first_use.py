"""What a newcomer meets on a first run (issue #26, the items left open): files others can read, a model
folder without weights refused at start-up, a read-only cache that still computes, and a chat template's
absence said aloud."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from geomcheck.run import fingerprint
from geomcheck.run.cache import ArrayCache
from geomcheck.report.figures import save_figure
from geomcheck.run.fingerprint import StatIndex, of_directory

pytestmark = pytest.mark.usefixtures("opted_in")
CHECKS = Path(__file__).resolve().parents[2] / "geomcheck" / "checks"


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_figures_cache_entries_and_the_fingerprint_index_are_readable_by_others(tmp_path, tiny_llama_dir, monkeypatch):
    """mkstemp's 0600 hid figures in a served artifact folder and cache entries on a shared runner."""
    figure = Figure()
    figure.add_subplot().plot([0, 1])
    assert _mode(save_figure(figure, tmp_path / "figures" / "geometry.png")) == 0o644
    assert _mode(ArrayCache(tmp_path / "cache").store("k", {"a": np.ones(3)}, {})) == 0o644
    monkeypatch.setattr(fingerprint, "RACY_NS", -1)
    (tmp_path / "fingerprints").mkdir()
    index = StatIndex(tmp_path / "fingerprints" / "index.json")
    of_directory(tiny_llama_dir, index)
    index.save()
    assert _mode(index.path) == 0o644 and json.loads(index.path.read_text())
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []  # no temp file left behind


def test_a_model_folder_with_a_config_and_no_weights_is_a_usage_error_at_start_up(pytester: pytest.Pytester, tiny_llama_dir, tmp_path):
    """It used to pass start-up and fail 51 s later as "needs ~24.9 GiB"; now nothing runs and the folder is named."""
    empty = tmp_path / "no-weights"
    empty.mkdir()
    shutil.copy(tiny_llama_dir / "config.json", empty / "config.json")
    pytester.makepyfile("def test_x(geometry): pass")
    result = pytester.runpytest("--model", str(empty), "--geomcheck-cache-dir", str(tmp_path / "cache"), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    message = result.stderr.str()
    assert f"--model {empty}: the directory has a config.json but no weight files" in message and "save_pretrained" in message, message
    assert not (tmp_path / "cache").exists()


def test_a_read_only_empty_cache_computes_without_storing_with_one_warning(pytester: pytest.Pytester, tiny_llama_dir, tmp_path, monkeypatch):
    """What a read-only mount does to every write under the cache (as root, chmod would not stop the
    writes, so the file system's refusal is imitated): the run computes, stores nothing, warns once."""
    import errno
    import os

    cache = tmp_path / "read-only"
    cache.mkdir()
    real_mkdir, real_open = Path.mkdir, os.open

    def refused(path) -> None:
        if Path(path).is_relative_to(cache):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: refused(self) or real_mkdir(self, *a, **k))
    monkeypatch.setattr(os, "open", lambda path, *a, **k: refused(path) or real_open(path, *a, **k))
    shutil.copy(CHECKS / "test_variance_grows.py", pytester.path)
    result = pytester.runpytest("--model", str(tiny_llama_dir), "--max-prompts", "6", "--n-boot", "40", "--geomcheck-cache-dir",
                                str(cache), "-p", "no:cacheprovider", "-W", "always::geomcheck.run.cache.CacheWarning")
    outcomes = result.parseoutcomes()
    assert "errors" not in outcomes and outcomes.get("passed", 0) + outcomes.get("failed", 0) == 3, result.stdout.str()
    text = result.stdout.str()
    assert text.count(f"geomcheck cache {cache} is not writable") == 1 and "computing without storing" in text, text
    assert text.count("CacheWarning:") == 1, text  # one cache warning (pytest's own, e.g. assertion rewriting, may join it)
    assert list(cache.iterdir()) == []


@pytest.fixture
def instruct_without_template(tiny_llama_dir, tmp_path) -> Path:
    """The tiny Llama under an instruct model's name, its tokenizer's chat template removed (as a GGUF
    file without ``tokenizer.chat_template`` arrives)."""
    model = shutil.copytree(tiny_llama_dir, tmp_path / "tiny-llama-Instruct")
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    return model


def _run(pytester: pytest.Pytester, model: Path, tmp_path: Path, *extra: str) -> pytest.RunResult:
    shutil.copy(CHECKS / "test_streams_separate.py", pytester.path)
    return pytester.runpytest("--model", str(model), "--max-prompts", "6", "--n-boot", "0", "--geomcheck-cache-dir",
                              str(tmp_path / "cache"), "-p", "no:cacheprovider", *extra)


def test_an_instruct_model_without_a_chat_template_is_warned_about_and_the_summary_says_raw(pytester, instruct_without_template, tmp_path):
    text = _run(pytester, instruct_without_template, tmp_path).stdout.str()
    assert text.count("ChatTemplateWarning: tiny-llama-Instruct looks like an instruct/chat model but its tokenizer ships no chat template") == 1, text
    assert "--no-chat-template" in text and "fallback_chat_template" in text
    assert "tiny-llama-Instruct: prompts fed as raw prompts (the tokenizer has no chat template)" in text


def test_raw_prompts_asked_for_are_not_warned_about_and_a_template_is_named(pytester, instruct_without_template, tiny_llama_dir, tmp_path):
    raw = _run(pytester, instruct_without_template, tmp_path, "--no-chat-template").stdout.str()
    assert "ChatTemplateWarning" not in raw and "tiny-llama-Instruct: prompts fed as raw prompts (--no-chat-template)" in raw
    templated = _run(pytester, tiny_llama_dir, tmp_path).stdout.str()
    assert "ChatTemplateWarning" not in templated and "tiny-llama: prompts rendered with chat template" in templated


def test_geomcheck_json_writes_the_runs_verdicts_statistics_and_identity(pytester: pytest.Pytester, tiny_llama_dir, tmp_path):
    target = tmp_path / "out" / "results.json"
    shutil.copy(CHECKS / "test_variance_grows.py", pytester.path)
    result = pytester.runpytest("--model", str(tiny_llama_dir), "--max-prompts", "6", "--n-boot", "40", "--geomcheck-cache-dir",
                                str(tmp_path / "cache"), "-p", "no:cacheprovider", f"--geomcheck-json={target}")
    outcomes = result.parseoutcomes()
    written = json.loads(target.read_text())  # strict JSON: json.loads would take NaN, so check there is none
    assert "NaN" not in target.read_text() and _mode(target) == 0o644
    checks = {c["id"].rpartition("::")[2]: c for c in written["checks"]}
    assert set(checks) == {f"test_variance_grows[tiny-llama-{s}]" for s in ("pre", "mid", "post")}
    assert sorted(c["outcome"] for c in checks.values()).count("failed") == outcomes.get("failed", 0)
    assert all(c["model"] == "tiny-llama" and c["check"] == "variance_grows" and "exponential" in c["text"] for c in checks.values())
    model = written["models"]["tiny-llama"]
    assert model["identity"]["weights"] and model["identity"]["n_boot"] == 40 and model["rendering"] == "chat template"
    rows = model["statistics"]["mid/var_mean/harmful"]
    assert len(rows) == 4 and all(row["low"] <= row["value"] <= row["high"] for row in rows)


def test_geomcheck_json_naming_a_directory_is_a_usage_error(pytester: pytest.Pytester, tmp_path):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(f"--geomcheck-json={tmp_path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--geomcheck-json*is a directory*results.json*"])
