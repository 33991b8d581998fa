"""Qwen-1_8B-Chat (``qwen-1.8b``), the second reading of the note's "Qwen 1 8B": registry entry, published
dimensions, ChatML for its template-less tokenizer, and loading through the entry's Auto class.

Its modelling code is remote and the hub is unreachable here, so the checks run on the stand-in of
``tests/qwen1_standin.py``, which follows the published module names (the capture and the run-time proof on
it are in tests/unit/test_families.py, case "qwen").
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import tiny_tokenizer
from geomcheck import STREAMS
from geomcheck.run import models
from geomcheck.run.capture import capture
from geomcheck.run.rendering import render
from geomcheck.run.families import find_sites, layout
from qwen1_standin import QWenConfig, QWenLMHeadModel

CHATML = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nHow do I bake bread?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def spec() -> models.ModelSpec:
    return models.resolve("qwen-1.8b")


def test_registry_entry_is_qwen_1_8b_chat_with_remote_code():
    entry = spec()
    assert (entry.hub_id, entry.family, entry.auto_class) == ("Qwen/Qwen-1_8B-Chat", "qwen", "AutoModelForCausalLM")
    assert entry.trust_remote_code and entry.chat_template and entry.fallback_chat_template == "chatml"
    assert models.resolve("qwen3-8b").hub_id == "Qwen/Qwen3-8B"  # the other reading stays
    assert models.estimate_memory(entry, torch.bfloat16, 16, 64) is None  # no remote code runs to count parameters


def test_published_dimensions_on_meta_with_the_standin():
    """The entry's [config] builds the stand-in at full size on `meta`: 24 blocks of width 2048, 16 heads of
    128, MLP inner width 11008 // 2, vocab 151936, and ~1.84 B parameters with the untied LM head (published:
    1.8 B)."""
    values = {k: v for k, v in spec().config.items() if k != "model_type"}
    assert spec().config["model_type"] == QWenConfig.model_type
    with torch.device("meta"):
        model = QWenLMHeadModel(QWenConfig(**values))
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.vocab_size) == (24, 2048, 16, 151936)
    assert config.kv_channels * config.num_attention_heads == config.hidden_size
    sites = find_sites(model)
    assert all(len(sites[s]) == 24 for s in STREAMS)
    assert tuple(model.transformer.wte.weight.shape) == (151936, 2048)
    family = layout(model).family
    for block in layout(model).blocks:  # residual_writers copies to numpy, impossible on meta: the shapes it reads
        attn_out, mlp_out = (block.get_submodule(w.path).weight for w in family.writers)
        assert tuple(attn_out.shape) == (2048, 2048) and tuple(mlp_out.shape) == (2048, 5504)
    count = sum(p.numel() for p in model.parameters())
    assert count / 1e9 == pytest.approx(1.8, rel=0.03), count


def test_chatml_is_supplied_to_a_tokenizer_without_a_template():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    models.supply_chat_template(tokenizer, spec())
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "How do I bake bread?"}], add_generation_prompt=True, tokenize=False)
    assert rendered == CHATML


def test_a_tokenizers_own_template_wins():
    tokenizer = tiny_tokenizer()
    own = tokenizer.chat_template
    models.supply_chat_template(tokenizer, spec())
    assert tokenizer.chat_template == own


def test_loads_through_the_entrys_auto_class_and_passes_the_proof(tmp_path):
    """The load path of the entry (AutoModelForCausalLM, supplied ChatML), with the stand-in registered as
    the 'qwen' model type in place of the remote code; the capture reads the base model and is proven."""
    AutoConfig.register("qwen", QWenConfig, exist_ok=True)
    AutoModelForCausalLM.register(QWenConfig, QWenLMHeadModel, exist_ok=True)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    torch.manual_seed(0)
    QWenLMHeadModel(QWenConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, kv_channels=8)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = models.load(dataclasses.replace(spec(), local_path=str(tmp_path)), dtype="float32")
    assert type(loaded.model).__name__ == "QWenLMHeadModel" and loaded.tokenizer.chat_template
    rendered = render(loaded.tokenizer, {"set": ["How do I bake bread?", "Name three rivers."]}, chat_template=True)
    result = capture(loaded.model, rendered.token_ids, pad_id=rendered.pad_id, progress=False)
    assert result.n_layers == 2 and result.samples["set"]["mid"].shape == (2, 2, 32)
