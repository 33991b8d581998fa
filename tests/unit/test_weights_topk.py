"""The weights check: exact top-k subspaces without a full SVD, read from the checkpoint's files without
loading the model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from geomcheck.run.checkpoint import CheckpointError, checkpoint_writers, writer_names
from geomcheck.run.families import BY_MODEL_TYPE, residual_writers
from geomcheck.run.pipeline import ModelRun, RunOptions
from geomcheck.stats.weights import subspace_overlap, top_left_singular_vectors


def full_svd_basis(weight: np.ndarray, k: int) -> np.ndarray:
    """The reference: float64 full SVD, the method the top-k replaces."""
    return np.linalg.svd(np.asarray(weight, np.float64), full_matrices=False)[0][:, :k]


def test_topk_is_an_orthonormal_basis_of_the_top_singular_directions():
    """A matrix built with known top-k left singular vectors: they are recovered, orthonormal, in float64."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    r, _ = np.linalg.qr(rng.standard_normal((96, 64)))
    weight = (q * np.geomspace(10, 0.1, 64)) @ r.T
    basis = top_left_singular_vectors(weight, 8)
    assert basis.shape == (64, 8) and basis.dtype == np.float64
    np.testing.assert_allclose(basis.T @ basis, np.eye(8), atol=1e-5)
    assert subspace_overlap(basis, q[:, :8]) > 0.99999


def test_topk_fails_where_the_top_directions_are_not_the_ones_asked_for():
    """The check it feeds must be able to fail: a basis from another matrix's top directions does not match."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 48, 48)) * np.geomspace(5, 0.1, 48)
    assert subspace_overlap(top_left_singular_vectors(a, 4), full_svd_basis(b, 4)) < 0.5


def test_tiny_matrices_fall_back_to_a_full_svd():
    weight = np.random.default_rng(3).standard_normal((6, 4))
    assert subspace_overlap(top_left_singular_vectors(weight, 4), full_svd_basis(weight, 4)) == pytest.approx(1.0)


@pytest.mark.slow
def test_topk_equals_a_float64_full_svd_on_every_smollm2_layer():
    """Acceptance of issue 22: on SmolLM2's real (de-quantised GGUF) weights, every layer's top-16 subspace
    by svds in float32 overlaps the float64 full SVD's by ≥ 0.9999 (randomized sketches reach 0.5-0.75)."""
    from geomcheck.run import models
    from geomcheck.run import registry

    spec = registry.resolve("smollm2-135m")
    worst = {}
    for layer, kind, weight in checkpoint_writers(models.package_dir(spec) / spec.gguf_file):
        overlap = subspace_overlap(top_left_singular_vectors(weight, 16), full_svd_basis(weight, 16))
        worst[kind] = min(worst.get(kind, 1.0), overlap)
        assert overlap >= 0.9999, f"layer {layer} {kind}: overlap {overlap:.6f}"
    print(f"smallest overlap with a float64 full SVD over 30 layers: {worst}")
    assert set(worst) == {"attn_out", "mlp_out"}


def test_writers_read_from_files_equal_the_loaded_models(tiny_llama_dir):
    """Tensor by tensor from the safetensors file, the same matrices as the loaded model's modules."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_llama_dir)
    loaded = [(layer, kind, weight) for layer, kind, weight in residual_writers(model)]
    read = list(checkpoint_writers(tiny_llama_dir))
    assert [(l, k) for l, k, _ in read] == [(l, k) for l, k, _ in loaded]
    for (_, _, a), (_, _, b) in zip(read, loaded):
        np.testing.assert_array_equal(a, b)


def test_a_sharded_bfloat16_checkpoint_is_read_through_its_index(tmp_path):
    """A shard index is followed, and bf16 (the stored dtype) is read as such and widened, not refused."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = LlamaModel(config).to(torch.bfloat16)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    read = list(checkpoint_writers(tmp_path))
    assert len(read) == 6
    for (layer, kind, weight), (_, _, expected) in zip(read, residual_writers(model)):
        np.testing.assert_array_equal(weight, expected)


def test_a_pytorch_bin_checkpoint_is_read_without_running_pickle_code(tmp_path, tiny_llama_dir):
    from safetensors.torch import load_file

    state = load_file(tiny_llama_dir / "model.safetensors")
    torch.save(state, tmp_path / "pytorch_model.bin")
    shutil.copy(tiny_llama_dir / "config.json", tmp_path / "config.json")
    from_bin = list(checkpoint_writers(tmp_path))
    from_safetensors = list(checkpoint_writers(tiny_llama_dir))
    for (_, _, a), (_, _, b) in zip(from_bin, from_safetensors):
        np.testing.assert_array_equal(a, b)


def test_gpt2_conv1d_writers_are_transposed_to_d_model_rows():
    names = ["transformer.h.0.attn.c_proj.weight", "transformer.h.0.mlp.c_proj.weight", "transformer.h.0.attn.c_attn.weight"]
    assert writer_names(names, BY_MODEL_TYPE["gpt2"]) == {(0, "attn_out"): names[0], (0, "mlp_out"): names[1]}


def test_bert_writer_names_are_not_confused_with_each_other():
    names = ["encoder.layer.0.attention.output.dense.weight", "encoder.layer.0.output.dense.weight"]
    assert writer_names(names, BY_MODEL_TYPE["bert"]) == {(0, "attn_out"): names[0], (0, "mlp_out"): names[1]}


def test_a_checkpoint_without_its_familys_writers_is_refused_by_name(tmp_path, tiny_llama_dir):
    shutil.copytree(tiny_llama_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match=r"h\.<layer>\.attn\.c_proj\.weight"):
        list(checkpoint_writers(tmp_path / "m"))


def test_the_weights_check_of_a_local_checkpoint_never_loads_the_model(tiny_llama_dir, tmp_path, monkeypatch):
    """Acceptance of issue 22: the overlaps come from the files; from_pretrained is never called, and the
    result is the same as from the loaded model's modules."""
    from transformers import AutoModel, PreTrainedModel

    expected_bases = {}
    for _, kind, weight in residual_writers(AutoModel.from_pretrained(tiny_llama_dir)):
        expected_bases.setdefault(kind, []).append(full_svd_basis(weight, 4))

    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the weights check loaded the model")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(spy))
    monkeypatch.setattr(AutoModel, "from_pretrained", spy)
    run = ModelRun(str(tiny_llama_dir), RunOptions(top_k=4, cache_dir=tmp_path / "cache", progress=False))
    weights = run.weights
    assert calls == [] and run.loads == 0 and "loaded" not in run.__dict__
    assert set(weights.matrices) == {"attn_out", "mlp_out"} and (weights.k, weights.d_model) == (4, 32)
    for kind, matrix in weights.matrices.items():
        bases = expected_bases[kind]
        for i in range(len(bases)):
            for j in range(len(bases)):
                assert matrix[i, j] == pytest.approx(subspace_overlap(bases[i], bases[j]), abs=1e-5)
    assert run.phases["weights"] > 0 and run.phases["load/convert"] == 0
