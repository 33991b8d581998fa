"""The run of one model: cache hits skip the model; prompt-set checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomcheck.run.pipeline import ModelRun, PromptSetWarning, RunOptions


def options(tmp_path, **overrides) -> RunOptions:
    fields = {"cache_dir": tmp_path / "cache", "max_prompts": 6, "n_boot": 10, "progress": False, **overrides}
    return RunOptions(**fields)


def test_second_identical_run_does_not_load_the_model(tmp_path, tiny_llama_dir):
    first = ModelRun(str(tiny_llama_dir), options(tmp_path))
    first_values = first.geometry.values
    second = ModelRun(str(tiny_llama_dir), options(tmp_path))
    second_values = second.geometry.values
    assert (first.loads, second.loads) == (1, 0)
    for key, value in first_values.items():
        np.testing.assert_array_equal(value, second_values[key])


def test_weights_are_cached_apart_from_the_prompts(tmp_path, tiny_llama_dir):
    ModelRun(str(tiny_llama_dir), options(tmp_path)).weights
    other_prompts = ModelRun(str(tiny_llama_dir), options(tmp_path, harmless="harmful"))
    overlap = other_prompts.weights
    assert other_prompts.loads == 0
    assert set(overlap.matrices) == {"attn_out", "mlp_out"} and overlap.k == 16 and overlap.d_model == 32


def test_a_changed_option_misses_the_cache(tmp_path, tiny_llama_dir):
    ModelRun(str(tiny_llama_dir), options(tmp_path)).capture
    mean_run = ModelRun(str(tiny_llama_dir), options(tmp_path, position="mean"))
    mean_run.capture
    assert mean_run.loads == 1


def test_too_few_prompts_names_the_minimum(tmp_path, tiny_llama_dir):
    run = ModelRun(str(tiny_llama_dir), RunOptions(cache_dir=tmp_path, max_prompts=1))
    with pytest.raises(ValueError, match="at least 2 per set"):
        run.prompts


def test_very_different_set_sizes_warn(tmp_path, tiny_llama_dir):
    small = tmp_path / "small.txt"
    small.write_text("Write a poem\nName a colour\n")
    run = ModelRun(str(tiny_llama_dir), RunOptions(cache_dir=tmp_path, harmless=str(small)))
    with pytest.warns(PromptSetWarning, match="differ in size"):
        run.prompts


def test_geometry_without_bootstrap_has_point_values_of_the_samples(tmp_path, tiny_llama_dir):
    run = ModelRun(str(tiny_llama_dir), options(tmp_path, n_boot=0))
    assert run.geometry.intervals == {}
    samples = run.capture.samples["harmful"]["mid"].astype(np.float64)
    np.testing.assert_allclose(run.geometry.curve("mid", "var_mean/harmful"), samples.var(0, ddof=1).mean(-1), rtol=1e-9)


def test_a_model_too_large_for_the_device_is_refused_before_loading(tmp_path, tiny_llama_dir, monkeypatch):
    from geomcheck.run import models

    monkeypatch.setattr(models, "available_memory", lambda device: 1024)
    run = ModelRun(str(tiny_llama_dir), options(tmp_path))
    with pytest.raises(models.ModelLoadError, match="--device-map auto"):
        run.capture
    assert run.loads == 0


def test_nan_activations_fail_naming_model_layer_stream_and_the_fp16_hint(tmp_path, tiny_llama_dir):
    from geomcheck.run.capture import NonFiniteActivationError

    run = ModelRun(str(tiny_llama_dir), options(tmp_path))
    with torch.no_grad():
        run.loaded.model.layers[2].mlp.down_proj.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteActivationError, match=r"tiny-llama: NaN/Inf in stream 'post' at layer 2.*bfloat16"):
        run.capture
    assert not list((tmp_path / "cache" / "activations").glob("*.safetensors"))  # nothing cached


def test_device_map_auto_loads_through_accelerate_and_captures_the_same(tmp_path, tiny_llama_dir):
    plain = ModelRun(str(tiny_llama_dir), options(tmp_path / "a"))
    mapped = ModelRun(str(tiny_llama_dir), options(tmp_path / "b", device_map="auto"))
    for stream in ("pre", "mid", "post"):
        np.testing.assert_allclose(mapped.capture.samples["harmful"][stream], plain.capture.samples["harmful"][stream], rtol=1e-5, atol=1e-6)


def test_cached_geometry_equals_the_computed_one_and_skips_the_activations(tmp_path, tiny_llama_dir, monkeypatch):
    first = ModelRun(str(tiny_llama_dir), options(tmp_path)).geometry
    second_run = ModelRun(str(tiny_llama_dir), options(tmp_path))
    monkeypatch.setattr(ModelRun, "capture", property(lambda self: pytest.fail("activations were read")))
    second = second_run.geometry
    assert second.streams == first.streams and second.n_boot == first.n_boot
    assert second.values.keys() == first.values.keys() and second.intervals.keys() == first.intervals.keys()
    for key, value in first.values.items():
        assert np.shape(second.values[key]) == np.shape(value), key  # scalars come back as scalars
        np.testing.assert_array_equal(second.values[key], value)
        np.testing.assert_array_equal(second.interval(key).low, first.interval(key).low)
        np.testing.assert_array_equal(second.interval(key).high, first.interval(key).high)
    assert second.describe("mid/growth_rate/harmful") == first.describe("mid/growth_rate/harmful")


def test_capture_hooks_work_on_a_model_sharded_by_accelerate_with_layers_offloaded(tmp_path, tiny_llama_dir):
    from geomcheck.run import models
    from geomcheck.run.capture import capture
    from geomcheck.run.rendering import render

    spec = models.resolve(str(tiny_llama_dir))
    split = {"embed_tokens": "cpu", "layers.0": "cpu", "layers.1": "cpu", "layers.2": "disk", "layers.3": "disk", "norm": "cpu", "rotary_emb": "cpu"}
    sharded = models.load(spec, device_map=split, cache_dir=tmp_path)
    assert sharded.model.layers[3].mlp.down_proj.weight.device.type == "meta"  # really offloaded
    plain = models.load(spec)
    prompts = {"set": ["Write a poem about the sea", "Explain gravity to a child", "Name three rivers"]}
    rendered = render(plain.tokenizer, prompts, chat_template=True)
    expected = capture(plain.model, rendered.token_ids, pad_id=rendered.pad_id, progress=False)
    actual = capture(sharded.model, rendered.token_ids, pad_id=rendered.pad_id, progress=False)
    for stream in ("pre", "mid", "post"):
        np.testing.assert_allclose(actual.samples["set"][stream], expected.samples["set"][stream], rtol=1e-6, atol=1e-7)


def test_streams_come_back_from_the_cache_in_forward_order(tmp_path, tiny_llama_dir):
    ModelRun(str(tiny_llama_dir), options(tmp_path)).capture
    cached = ModelRun(str(tiny_llama_dir), options(tmp_path))
    assert list(cached.capture.samples["harmful"]) == ["pre", "mid", "post"]
    assert cached.geometry.streams == ("pre", "mid", "post") and cached.loads == 0


def test_phases_count_their_own_time_not_the_phases_nested_inside(tmp_path):
    """A capture that first needs the model does not count the load: the phases add up to the wall time."""
    import time

    from geomcheck.run.pipeline import PHASES, ModelRun, RunOptions

    run = ModelRun("smollm2-135m", RunOptions(cache_dir=tmp_path))
    start = time.perf_counter()
    with run.timed("capture"):
        time.sleep(0.02)
        with run.timed("load/convert"):
            time.sleep(0.05)
    wall = time.perf_counter() - start
    assert tuple(run.phases) == PHASES
    assert run.phases["load/convert"] >= 0.05 and 0.02 <= run.phases["capture"] < 0.05
    assert sum(run.phases.values()) == pytest.approx(wall, abs=0.005)
    with pytest.raises(ValueError, match="unknown phase 'loading'"):
        with run.timed("loading"):
            pass
