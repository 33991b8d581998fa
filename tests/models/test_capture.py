"""Residual-stream capture against independent computations.

The tiny models are random-init, built from a config here (nothing is downloaded). Each captured stream is
compared with ``output_hidden_states`` (``pre``/``post``) or with the layer's submodules called by hand
(``mid``, and the last layer's ``post``, which ``hidden_states[-1]`` does not hold when a final norm follows).
The references always run one prompt alone, unpadded; capture runs prompts in right-padded batches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    AutoModel,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from geomcheck.run import models
from geomcheck import STREAMS
from geomcheck.run.capture import capture, shared_prefix_length
from geomcheck.run.rendering import render, tokenize
from geomcheck.run.families import BY_MODEL_TYPE, StreamUnavailableError, find_sites

VOCAB = 256
D_MODEL = 64
N_LAYERS = 3
REL = 1e-5

PROMPTS = [
    "How do I bake bread?",
    "Hi",
    "Explain the geometry of the residual stream in a transformer, briefly.",
    "What is 2 + 2?",
    "Tell me a short story about a cat and a lighthouse keeper.",
    "ok",
    "Name three rivers.",
]

DECODER_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=D_MODEL,
    intermediate_size=128,
    num_hidden_layers=N_LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
CONFIGS = {
    "llama": lambda: LlamaConfig(**DECODER_COMMON),
    "qwen2": lambda: Qwen2Config(**DECODER_COMMON),
    "qwen3": lambda: Qwen3Config(**DECODER_COMMON, head_dim=16),
    "mistral": lambda: MistralConfig(**DECODER_COMMON),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=4, n_inner=128, n_positions=128, bos_token_id=1, eos_token_id=2),
    "bert": lambda: BertConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
    ),
}
FAMILIES = list(CONFIGS)


class CharTokenizer:
    """A stand-in for a tokenizer: one id per character, never the pad id 0."""

    pad_token_id = 0

    def __init__(self, vocab_size: int = VOCAB) -> None:
        self.vocab_size = vocab_size

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [1 + ord(c) % (self.vocab_size - 1) for c in text]}


def build(config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModel.from_config(config, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request) -> tuple[str, torch.nn.Module]:
    return request.param, build(CONFIGS[request.param]())


# ---------------------------------------------------------------------------------------------------------
# Independent reference: one unpadded prompt through the layers' submodules.


def assert_rel_close(actual, expected, rel: float = REL, what: str = "") -> None:
    """Per vector (last axis): max |actual - expected| <= rel * max |expected|."""
    actual = torch.as_tensor(np.asarray(actual), dtype=torch.float64)
    expected = torch.as_tensor(np.asarray(expected), dtype=torch.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    err = (actual - expected).abs().amax(dim=-1)
    scale = expected.abs().amax(dim=-1)
    worst = float((err / scale).max())
    assert bool((err <= rel * scale).all()), f"{what}: worst relative max-norm error {worst:.3g} > {rel:g}"


def causal_mask(length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive (1, 1, T, T) mask: 0 on and below the diagonal, the dtype's minimum above."""
    blocked = torch.ones(length, length, dtype=torch.bool).triu(1)
    return torch.zeros(length, length, dtype=dtype).masked_fill(blocked, torch.finfo(dtype).min)[None, None]


def layers_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    kind = model.config.model_type
    if kind == "bert":
        return list(model.encoder.layer)
    if kind == "gpt2":
        return list(model.h)
    return list(model.layers)


def final_norm(model: torch.nn.Module):
    kind = model.config.model_type
    if kind == "bert":
        return None
    return model.ln_f if kind == "gpt2" else model.norm


def hand_mid_post(model: torch.nn.Module, layer_index: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mid, post) of one layer from its input ``h`` (1, T, d), written out from the submodules."""
    kind = model.config.model_type
    layer = layers_of(model)[layer_index]
    length = h.shape[1]
    if kind == "bert":  # post-LN: mid = LayerNorm(attention(x) + x), the feed-forward block's input
        attn = layer.attention.self(h, attention_mask=None)[0]
        mid = layer.attention.output(attn, h)
        post = layer.output(layer.intermediate(mid), mid)
        return mid, post
    mask = causal_mask(length, h.dtype)
    if kind == "gpt2":
        mid = h + layer.attn(layer.ln_1(h), attention_mask=mask)[0]
        post = mid + layer.mlp(layer.ln_2(mid))
        return mid, post
    position_ids = torch.arange(length)[None]
    rotary = model.rotary_emb(h, position_ids)
    attn = layer.self_attn(
        hidden_states=layer.input_layernorm(h), position_embeddings=rotary, attention_mask=mask, position_ids=position_ids
    )[0]
    mid = h + attn
    post = mid + layer.mlp(layer.post_attention_layernorm(mid))
    return mid, post


def reference(model: torch.nn.Module, ids: list[int]) -> dict[str, torch.Tensor]:
    """Full-sequence pre/mid/post, each (layers, T, d), for one prompt, plus the model's hidden_states."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        hs = out.hidden_states
        n_layers = len(layers_of(model))
        assert len(hs) == n_layers + 1
        pre = torch.stack([hs[layer][0] for layer in range(n_layers)])
        mids, posts = [], []
        for layer in range(n_layers):
            mid, post = hand_mid_post(model, layer, hs[layer])
            mids.append(mid[0])
            posts.append(post[0])
        mid = torch.stack(mids)
        hand_post = torch.stack(posts)
        # Layers l < L-1: post[l] is the next layer's input, the model's own hidden_states[l+1].
        assert_rel_close(hand_post[:-1], torch.stack([hs[layer + 1][0] for layer in range(n_layers - 1)]), what="hand post vs hidden_states")
        # The last entry of hidden_states: after the final norm where there is one (Llama-style, GPT-2), else the
        # last layer's output (BERT). Checked, not assumed.
        norm = final_norm(model)
        last = hs[n_layers][0]
        if norm is None:
            assert_rel_close(hand_post[-1], last, what="BERT hidden_states[-1] is the last layer's output")
        else:
            assert_rel_close(norm(hand_post[-1]), last, what="hidden_states[-1] is after the final norm")
            assert not torch.allclose(hand_post[-1], last, rtol=1e-3, atol=1e-3), "hidden_states[-1] should be normed"
            assert_rel_close(last, out.last_hidden_state[0], what="last_hidden_state")
        post = torch.cat([torch.stack([hs[layer + 1][0] for layer in range(n_layers - 1)]), hand_post[-1:]])
    return {"pre": pre, "mid": mid, "post": post}


def reduce(full: torch.Tensor, position: str) -> torch.Tensor:
    """(layers, T, d) -> (layers, d)."""
    return full[:, -1] if position == "last" else full.mean(dim=1)


# ---------------------------------------------------------------------------------------------------------
# 1. Captured streams equal the independent computation.


def test_streams_match_hand_computation(tiny):
    check_against_reference(*tiny, position="last")


@pytest.mark.parametrize("family", ["llama", "bert"])  # one causal, one bidirectional family
def test_mean_position_matches_hand_computation(family):
    check_against_reference(family, build(CONFIGS[family]()), position="mean")


def check_against_reference(family: str, model: torch.nn.Module, position: str) -> None:
    tokenizer = CharTokenizer()
    prompts = PROMPTS[:3]
    result = capture(model, render(tokenizer, {"set": prompts}, False).token_ids, position=position, batch_size=1, progress=False)
    assert result.n_layers == N_LAYERS and result.d_model == D_MODEL
    for i, prompt in enumerate(prompts):
        expected = reference(model, tokenizer(prompt)["input_ids"])
        for stream in STREAMS:
            got = result.samples["set"][stream][i]
            assert got.shape == (N_LAYERS, D_MODEL) and got.dtype == np.float32
            assert_rel_close(got, reduce(expected[stream], position), what=f"{family} {stream} {position} prompt {i}")
    # The three streams really are different tensors (the hooks are not all reading the same module).
    s = result.samples["set"]
    assert not np.allclose(s["pre"], s["mid"]) and not np.allclose(s["mid"], s["post"])
    assert np.allclose(s["post"][:, :-1], s["pre"][:, 1:], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# 2. A prompt's activations do not depend on its batch.


def test_batch_invariance(tiny):
    family, model = tiny
    tokenizer = CharTokenizer()
    lengths = {len(p) for p in PROMPTS}
    assert len(lengths) > 3  # padding is really exercised
    together = capture(model, render(tokenizer, {"set": PROMPTS}, False).token_ids, batch_size=64, progress=False)
    for i, prompt in enumerate(PROMPTS):
        alone = capture(model, render(tokenizer, {"set": [prompt]}, False).token_ids, batch_size=1, progress=False)
        for stream in STREAMS:
            diff = np.abs(together.samples["set"][stream][i] - alone.samples["set"][stream][0]).max()
            assert diff <= 1e-4, f"{family} {stream} prompt {i}: batched vs alone differ by {diff:.3g}"


# ---------------------------------------------------------------------------------------------------------
# 3. Each set keeps one float32 reading per prompt and asked-for stream (the statistics' only input).


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_each_set_keeps_one_reading_per_prompt(family):
    model = build(CONFIGS[family]())
    sets = {"a": PROMPTS, "b": PROMPTS[::-1][:5]}
    result = capture(model, render(CharTokenizer(), sets, False).token_ids, batch_size=2, progress=False)
    for name, prompts in sets.items():
        for stream in STREAMS:
            readings = result.samples[name][stream]
            assert readings.shape == (len(prompts), result.n_layers, result.d_model) and readings.dtype == np.float32
            assert readings.astype(np.float64).var(axis=0, ddof=1).min() > 0


def test_only_the_asked_streams_are_kept():
    model = build(CONFIGS["llama"]())
    result = capture(model, render(CharTokenizer(), {"set": PROMPTS[:3]}, False).token_ids, streams=("mid",), progress=False)
    assert set(result.samples["set"]) == {"mid"} and len(result.samples["set"]["mid"]) == 3


# ---------------------------------------------------------------------------------------------------------
# 4. Streams that do not exist (parallel blocks: tests/unit/test_families.py).


def test_unknown_stream_is_refused():
    with pytest.raises(StreamUnavailableError, match="unknown stream"):
        find_sites(build(CONFIGS["llama"]()), ("resid",))


# ---------------------------------------------------------------------------------------------------------
# 5. The registry's real-size configs, on the meta device.

# Published parameter counts, which include the LM head; the base model (AutoModel) has none, so an untied
# head's vocab x hidden is added back. Published figures are rounded to 0.1B.
PUBLISHED = {
    "llama-3.2-3b": 3.2e9,
    "qwen3-8b": 8.2e9,
    "qwen2.5-7b": 7.6e9,
    "qwen2.5-32b": 32.8e9,
    "mistral-nemo-12b": 12.2e9,
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_registry_config_on_meta(name):
    spec = models.resolve(name)
    model = models.meta_model(spec)
    config = model.config
    assert config.model_type == spec.family
    assert all(p.device.type == "meta" for p in model.parameters())

    sites = find_sites(model)
    for stream in STREAMS:
        assert len(sites[stream]) == config.num_hidden_layers == spec.config["num_hidden_layers"]

    n_params = sum(p.numel() for p in model.parameters())
    with_head = n_params + (0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size)
    assert abs(with_head - PUBLISHED[name]) <= 0.02 * PUBLISHED[name], f"{name}: {with_head / 1e9:.3f}B"

    # residual_writers copies weights to numpy, impossible on meta: check the shapes of the matrices it reads.
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for layer in model.layers:
        assert tuple(layer.self_attn.o_proj.weight.shape) == (config.hidden_size, config.num_attention_heads * head_dim)
        assert tuple(layer.mlp.down_proj.weight.shape) == (config.hidden_size, config.intermediate_size)


# ---------------------------------------------------------------------------------------------------------
# 6. Real pretrained models.

REAL_PROMPTS = ["What is the capital of France?", "Write a haiku about autumn leaves falling."]


@pytest.fixture(scope="module")
def smollm2():
    return models.load(models.resolve("smollm2-135m"), cache_dir=models.default_cache_dir())


@pytest.fixture(scope="module")
def minilm():
    return models.load(models.resolve("minilm-l6"), cache_dir=models.default_cache_dir())


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smollm2", "minilm"])
def test_real_model_streams_match_hand_computation(which, request):
    loaded = request.getfixturevalue(which)
    model, tokenizer = loaded.model, loaded.tokenizer
    chat = loaded.spec.chat_template
    assert chat is (which == "smollm2")
    assert model.dtype == torch.float32
    if chat:
        # Token ids, derived here without rendering.tokenize: the rendered template, then the tokenizer.
        rendered = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in REAL_PROMPTS
        ]
        ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
        assert all(p in text for p, text in zip(REAL_PROMPTS, rendered))
    else:
        ids = [tokenizer(p)["input_ids"] for p in REAL_PROMPTS]
    assert tokenize(tokenizer, REAL_PROMPTS, chat) == ids
    assert len(ids[0]) != len(ids[1])  # the batch is padded

    result = capture(model, {"set": ids}, pad_id=tokenizer.pad_token_id or 0, progress=False)
    n_layers = model.config.num_hidden_layers
    assert result.n_layers == n_layers and result.d_model == model.config.hidden_size
    for i, prompt_ids in enumerate(ids):
        expected = reference(model, prompt_ids)
        for stream in STREAMS:
            assert_rel_close(result.samples["set"][stream][i], reduce(expected[stream], "last"), what=f"{which} {stream} prompt {i}")


# ---------------------------------------------------------------------------------------------------------
# Shared-prefix reuse: the prefix's key/value cache computed once must not change any activation.

SYSTEM = "System: you are a careful assistant. User: "


@pytest.mark.parametrize("family", sorted(f for f in FAMILIES if BY_MODEL_TYPE[f].prefix_reuse))
def test_prefix_reuse_equals_full_forward(family):
    model = build(CONFIGS[family]())
    prompts = {"a": [SYSTEM + p for p in PROMPTS[:4]], "b": [SYSTEM + p for p in PROMPTS[4:]]}
    token_ids = render(CharTokenizer(), prompts, False).token_ids
    assert shared_prefix_length([ids for of_set in token_ids.values() for ids in of_set]) >= len(SYSTEM)  # the reuse really happens
    kwargs = dict(progress=False, batch_size=3)
    full = capture(model, token_ids, prefix_reuse=False, **kwargs)
    reused = capture(model, token_ids, prefix_reuse=True, **kwargs)
    for name in prompts:
        for stream in STREAMS:
            assert_rel_close(reused.samples[name][stream], full.samples[name][stream], rel=1e-4, what=f"{family} {stream}")


def test_shared_prefix_leaves_each_prompt_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert shared_prefix_length([[5, 1], [6, 1]]) == 0


@pytest.mark.slow
def test_prefix_reuse_equals_full_forward_on_smollm2(smollm2):
    rendered = render(smollm2.tokenizer, {"set": REAL_PROMPTS}, chat_template=True)
    kwargs = dict(pad_id=rendered.pad_id, progress=False)
    full = capture(smollm2.model, rendered.token_ids, prefix_reuse=False, **kwargs)
    reused = capture(smollm2.model, rendered.token_ids, prefix_reuse=True, **kwargs)
    for stream in STREAMS:
        assert_rel_close(reused.samples["set"][stream], full.samples["set"][stream], rel=1e-4, what=stream)


def test_prompts_longer_than_the_context_are_truncated_with_a_warning():
    with pytest.warns(UserWarning, match=r"1 prompt\(s\) longer than the model's context of 5 tokens"):
        ids = tokenize(CharTokenizer(), ["abcdefgh", "abc"], False, max_length=5)
    assert [len(x) for x in ids] == [5, 3] and ids[0] == CharTokenizer()("defgh")["input_ids"]
