"""The GPU script (``python -m geomcheck_bench.seeds``) at tiny dimensions on the CPU: the same path as at
real size (random weights from each seed's config, save_pretrained, ``pytest checks/`` cold and cached),
so that the day a GPU is lent the script runs as it is. No timing is asserted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
PHASES = ("fingerprint", "load/convert", "capture", "statistics", "weights", "figures", "baseline")


@pytest.fixture
def seeds(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import geomcheck_bench.seeds

    return geomcheck_bench.seeds


def test_every_seed_architecture_runs_through_the_checks_cold_and_cached(seeds, tmp_path, capsys):
    names = seeds.seed_names()
    assert {"llama-3.2-3b", "qwen2.5-7b", "qwen3-8b", "mistral-nemo-12b", "qwen2.5-32b"} <= set(names)
    status = seeds.main(["--tiny", "--device", "cpu", "--prompts", "6", "--work", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0, out
    cold, cached = out.split("## cold run")[1].split("## cached run")
    for name in names:
        for run in (cold, cached):
            line = next((l for l in run.splitlines() if l.startswith(f"{name}-random: time ")), None)
            assert line is not None, f"no per-phase line for {name}:\n{run}"
            assert [p for p in PHASES if f" {p} " in line] == list(PHASES), line
        cached_line = next(l for l in cached.splitlines() if l.startswith(f"{name}-random: time "))
        assert re.search(r"load/convert 0\.0 s · capture \d+\.\d s", cached_line), "the cached run loaded a model"
    assert (tmp_path / "project" / "baselines").is_dir()  # the cold run wrote its baselines in the scratch project


def test_a_tiny_seed_keeps_its_architecture(seeds, tmp_path):
    import json

    folder = seeds.save_random("qwen3-8b", tmp_path / "q", "cpu", "bfloat16", tiny=True)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["hidden_size"] == 64 and config["num_hidden_layers"] == 3
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
