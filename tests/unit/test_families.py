"""Every family record, proven on a tiny random-init model built from its transformers config (no download).

The reference runs one prompt alone, unpadded, without prefix reuse and without hooks: ``pre`` and ``post``
are the model's ``output_hidden_states`` (the final norm swapped for an identity so the last entry is the last
block's output), and ``mid[l]`` is the output of block ``l`` with its MLP branch replaced by zeros. The capture
runs the same prompts batched, right-padded, with a shared prefix reused where the family allows it.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel

from geomcheck import STREAMS
from geomcheck.run import families
from geomcheck.run import models
from geomcheck.run.capture import UnrecordedFamilyWarning, capture
from geomcheck.run.rendering import render
from geomcheck.run.families import FAMILIES, Read, StreamUnavailableError, UnknownFamilyError, layout, residual_writers
from geomcheck.run.proof import StreamProofError
from qwen1_standin import QWenConfig, QWenLMHeadModel

VOCAB, D, FF, N_LAYERS = 128, 32, 64, 3
REL = 1e-5
SYSTEM = "System: be careful. User: "
PROMPTS = [SYSTEM + p for p in ("How do I bake bread?", "Hi", "What is 2 + 2?", "Name three long rivers of the world.", "ok")]

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=D,
    intermediate_size=FF,
    num_hidden_layers=N_LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# (model_type, extra config) per test case; a family whose blocks are parallel or sequential by a flag gets both.
CASES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {"head_dim": 8}),
    "mistral": ("mistral", {}),
    "gemma": ("gemma", {"head_dim": 8}),
    "gemma2": ("gemma2", {"head_dim": 8}),
    "gemma3_text": ("gemma3_text", {"head_dim": 8}),
    "phi3": ("phi3", {}),
    "olmo2": ("olmo2", {}),
    "granite": ("granite", {"residual_multiplier": 0.5, "embedding_multiplier": 3.0}),
    "stablelm": ("stablelm", {}),
    "stablelm-parallel": ("stablelm", {"use_parallel_residual": True}),
    "starcoder2": ("starcoder2", {}),
    "gpt_neox": ("gpt_neox", {}),
    "gpt_neox-sequential": ("gpt_neox", {"use_parallel_residual": False}),
    "phi": ("phi", {}),
    "falcon": ("falcon", {}),
    "falcon-sequential": ("falcon", {"parallel_attn": False}),
    "gpt2": ("gpt2", {"n_embd": D, "n_layer": N_LAYERS, "n_head": 4, "n_inner": FF, "n_positions": 128}),
    "bert": ("bert", {}),
    "qwen": ("qwen", {}),  # remote code: the stand-in of tests/qwen1_standin.py
}
PARALLEL = {"stablelm-parallel", "gpt_neox", "phi", "falcon"}


def build(case: str) -> torch.nn.Module:
    model_type, extra = CASES[case]
    torch.manual_seed(0)
    if model_type == "qwen":  # with its LM head, as the registry loads it (AutoModelForCausalLM)
        config = QWenConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=N_LAYERS, num_attention_heads=4, intermediate_size=2 * FF, kv_channels=8)
        return QWenLMHeadModel(config).eval()
    config = AutoConfig.for_model(model_type, **{**COMMON, **extra})
    return AutoModel.from_config(config, dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=list(CASES))
def tiny(request) -> tuple[str, torch.nn.Module]:
    return request.param, build(request.param)


class CharTokenizer:
    """One id per character, never the pad id 0."""

    pad_token_id = 0

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [3 + ord(c) % (VOCAB - 3) for c in text]}


class Zero(torch.nn.Module):
    """Stands in for a branch: adds nothing to the residual."""

    def forward(self, x, *args, **kwargs):
        return torch.zeros_like(x)


@contextmanager
def swapped(root: torch.nn.Module, path: str | None, replacement: torch.nn.Module) -> torch.nn.Module:
    """Temporarily replace the submodule at ``path`` (nothing when ``path`` is None)."""
    if path is None:
        yield
        return
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    original = getattr(parent, name)
    setattr(parent, name, replacement)
    try:
        yield
    finally:
        setattr(parent, name, original)


def hidden_states(model: torch.nn.Module, ids: list[int]) -> list[torch.Tensor]:
    """Every block's input, then the last block's raw output (the final norm made an identity)."""
    body = families.base_model(model)
    with swapped(body, families.family_of(model).final_norm, torch.nn.Identity()):
        return [h[0] for h in body(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states]


def reference(model: torch.nn.Module, ids: list[int]) -> dict[str, torch.Tensor]:
    """pre/mid/post (layers, T, d) of one prompt alone, from the model's own outputs, with no hook."""
    with torch.no_grad():
        hs = hidden_states(model, ids)
        result = {"pre": torch.stack(hs[:-1]), "post": torch.stack(hs[1:])}
        family = families.family_of(model)
        resolved = layout(model)
        if resolved.parallel:
            return result
        mids = []
        for index, block in enumerate(resolved.blocks):
            if family.name == "bert":  # post-LN: mid = LayerNorm(attention(x) + x), computed from the submodules
                mids.append(block.attention.output(block.attention.self(hs[index][None])[0], hs[index][None])[0])
                continue
            with swapped(block, family.mlp_branch, Zero()):
                mids.append(hidden_states(model, ids)[index + 1])
        result["mid"] = torch.stack(mids)
    return result


def assert_rel_close(actual, expected, rel: float, what: str) -> None:
    """Per vector: max |actual - expected| <= rel * max |expected|."""
    actual, expected = (torch.as_tensor(np.asarray(x), dtype=torch.float64) for x in (actual, expected))
    err = (actual - expected).abs().amax(dim=-1)
    scale = expected.abs().amax(dim=-1)
    assert bool((err <= rel * scale).all()), f"{what}: worst relative error {float((err / scale).max()):.3g} > {rel:g}"


def run(model: torch.nn.Module, prompts: list[str], **kwargs) -> object:
    rendered = render(CharTokenizer(), {"set": prompts}, chat_template=False)
    defaults = dict(progress=False, batch_size=3, pad_id=rendered.pad_id)
    return capture(model, rendered.token_ids, **{**defaults, **kwargs})


# ---------------------------------------------------------------------------------------------------------


def test_every_family_has_a_tiny_model_case():
    tested = {families.family_name(model_type) for model_type, _ in CASES.values()}
    assert {f.name for f in FAMILIES} == tested


def test_capture_equals_the_independent_computation(tiny):
    case, model = tiny
    streams = tuple(s for s in STREAMS if s != "mid" or case not in PARALLEL)
    result = run(model, PROMPTS, streams=streams)  # batched, padded, prefix reused where the family allows, proven
    for i, prompt in enumerate(PROMPTS):
        expected = reference(model, CharTokenizer()(prompt)["input_ids"])
        for stream in streams:
            assert_rel_close(result.samples["set"][stream][i], expected[stream][:, -1], REL, f"{case} {stream} prompt {i}")
    s = result.samples["set"]
    assert not np.allclose(s["pre"], s["post"]) and ("mid" not in s or not np.allclose(s["pre"], s["mid"]))


def test_mean_position_is_proven_too(tiny):
    case, model = tiny
    streams = tuple(s for s in STREAMS if s != "mid" or case not in PARALLEL)
    result = run(model, PROMPTS[:2], streams=streams, position="mean", batch_size=2)
    expected = reference(model, CharTokenizer()(PROMPTS[1])["input_ids"])
    for stream in streams:
        assert_rel_close(result.samples["set"][stream][1], expected[stream].mean(dim=1), 1e-4, f"{case} {stream} mean")


def test_parallel_blocks_have_no_mid_and_say_so(tiny):
    case, model = tiny
    if case not in PARALLEL:
        assert "mid" in layout(model).streams()
        return
    with pytest.raises(StreamUnavailableError, match="parallel") as info:
        run(model, PROMPTS[:2])
    assert "'mid' does not exist" in str(info.value) and model.config.model_type in str(info.value)


def test_residual_writers_are_the_matrices_added_to_the_stream(tiny):
    case, model = tiny
    family = families.family_of(model)
    seen = []
    for layer, kind, weight in residual_writers(model):
        assert weight.dtype == np.float32 and weight.shape[0] == D, (case, kind, weight.shape)
        module = layout(model).blocks[layer].get_submodule(family.writers[("attn_out", "mlp_out").index(kind)].path)
        x = torch.randn(weight.shape[1])
        with torch.no_grad():
            y = module(x[None])[0] - (module.bias if getattr(module, "bias", None) is not None else 0)
        np.testing.assert_allclose(weight @ x.numpy(), y.numpy(), rtol=1e-4, atol=1e-5)
        seen.append((layer, kind))
    assert seen == [(layer, kind) for layer in range(N_LAYERS) for kind in ("attn_out", "mlp_out")]


# ---------------------------------------------------------------------------------------------------------
# The proof refuses what is not the residual stream.


def test_gemma2_read_at_post_attention_layernorm_is_caught():
    model = build("gemma2")
    wrong = dataclasses.replace(families.BY_MODEL_TYPE["gemma2"], mid=Read("post_attention_layernorm"))
    with pytest.raises(StreamProofError) as info:
        run(model, PROMPTS[:2], family=wrong)
    message = str(info.value)
    assert "family 'gemma2'" in message and "layer 0, stream 'mid'" in message and "attention branch" in message
    size = float(message.split("differ by ")[1].split(" ")[0])
    assert size > 0.1  # the wrong site is off by the size of the values, far beyond float32's tolerance


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_proof_holds_in_half_precision_and_still_catches_the_wrong_site(dtype):
    model = build("gemma2").to(dtype)
    for position in ("last", "mean"):
        run(model, PROMPTS, position=position)  # the right sites pass within the dtype's tolerance
    wrong = dataclasses.replace(families.BY_MODEL_TYPE["gemma2"], mid=Read("post_attention_layernorm"))
    with pytest.raises(StreamProofError, match="layer 0, stream 'mid'"):
        run(model, PROMPTS, family=wrong)


def test_a_wrong_mlp_branch_is_caught_at_post():
    model = build("olmo2")
    wrong = dataclasses.replace(families.BY_MODEL_TYPE["olmo2"], mlp_branch="mlp")  # before its post norm
    with pytest.raises(StreamProofError, match=r"family 'olmo2'.*stream 'post': post - mid vs the MLP branch"):
        run(model, PROMPTS[:2], family=wrong)


def test_proof_off_reads_the_wrong_site_silently():
    """What the proof guards against: without it the wrong site gives numbers."""
    model = build("gemma2")
    wrong = dataclasses.replace(families.BY_MODEL_TYPE["gemma2"], mid=Read("post_attention_layernorm"))
    wrong_mid = run(model, PROMPTS[:2], family=wrong, proof=False).samples["set"]["mid"]
    right_mid = run(model, PROMPTS[:2]).samples["set"]["mid"]
    assert np.abs(wrong_mid - right_mid).max() > 0.1 * np.abs(right_mid).max()


def rename(model: torch.nn.Module, model_type: str) -> torch.nn.Module:
    model.config.model_type = model_type
    return model


def test_unknown_model_type_with_the_llama_layout_passes_the_proof_with_a_warning():
    model = rename(build("llama"), "my_llama")
    with pytest.warns(UnrecordedFamilyWarning, match="'my_llama' has no family record"):
        result = run(model, PROMPTS[:2])
    assert result.n_layers == N_LAYERS


def test_unknown_model_type_that_only_looks_like_llama_is_refused_by_the_proof():
    model = rename(build("gemma2"), "my_gemma")  # Llama's module names, sandwich norms
    with pytest.raises(StreamProofError, match="no family record.*Add a family"):
        run(model, PROMPTS[:2])


def test_unknown_model_type_of_another_layout_is_refused_with_how_to_add():
    model = rename(build("gpt2"), "my_gpt")
    with pytest.raises(UnknownFamilyError, match="'my_gpt' has no family record.*geomcheck/run/families.py"):
        run(model, PROMPTS[:2])


# ---------------------------------------------------------------------------------------------------------


def test_a_model_that_returns_no_hidden_states_cannot_be_proven():
    model = build("llama")
    model.forward = lambda **kwargs: type(model).forward(model, **{**kwargs, "output_hidden_states": False})
    with pytest.raises(StreamProofError, match="returned no hidden_states"):
        run(model, PROMPTS[:2])


def test_registry_entries_name_their_configs_family():
    for name, spec in models.registry().items():
        assert spec.family in {f.name for f in FAMILIES}, name
        if spec.config:
            assert families.family_name(spec.config["model_type"]) == spec.family, name


def test_the_docs_table_is_generated_from_the_records():
    readme = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text(encoding="utf-8")
    assert families.streams_table() in readme, "regenerate: python -c 'from geomcheck.run.families import streams_table; print(streams_table())'"


def test_family_names_resolve_without_torch_objects():
    assert families.family_name("gemma3_text") == "gemma3_text" and families.family_name("unknown") == "unknown"
    assert all(f.model_types for f in FAMILIES) and len(families.BY_MODEL_TYPE) == sum(len(f.model_types) for f in FAMILIES)

