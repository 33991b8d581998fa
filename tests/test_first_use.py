"""What a newcomer meets on a first run (issue #26, the items left open): files others can read, a model
folder without weights refused at start-up, a read-only cache that still computes, and a chat template's
absence said aloud."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from matplotlib.figure import Figure

from geomcheck import fingerprint
from geomcheck.cache import ArrayCache
from geomcheck.figures import save_figure
from geomcheck.fingerprint import StatIndex, of_directory

pytestmark = pytest.mark.usefixtures("opted_in")


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
