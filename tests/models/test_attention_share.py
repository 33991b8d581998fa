"""Hypothesis 2 against its depth-aware null: attention's share of each layer's variance step, tested
against what position alone gives (1/2), responds to attention at ``--position mean`` on a tiny random
Llama: as initialised it passes, with attention ×0.01 (o_proj scaled) it fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geomcheck import thresholds
from geomcheck.checks.test_streams_separate import POST_LN
from geomcheck.checks.test_streams_separate import test_streams_separate as check_streams_separate
from geomcheck.run.pipeline import ModelRun, RunOptions
from geomcheck.stats.trends import POSITION_SHARE, attention_shares, pooled_attention_share

from conftest import tiny_tokenizer

SHIPPED = thresholds.shipped()["streams_separate"]


def save_llama(path: Path, attention_scale: float) -> Path:
    """The issue's random-init Llama (8 layers, hidden 64), every o_proj scaled by ``attention_scale``."""
    from transformers import LlamaConfig, LlamaModel

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaModel(config)
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.o_proj.weight.mul_(attention_scale)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llamas(tmp_path_factory) -> dict[float, Path]:
    root = tmp_path_factory.mktemp("attention")
    return {scale: save_llama(root / f"o_proj-{scale}", scale) for scale in (1.0, 0.01)}


def verdict(directory: Path, position: str, cache: Path) -> tuple[str | None, str]:
    run = ModelRun(str(directory), RunOptions(cache_dir=cache, max_prompts=32, n_boot=50, position=position, progress=False))
    recorded: list[str] = []
    try:
        check_streams_separate(run.geometry, SHIPPED, None, run.spec, lambda text, control=None: recorded.append(text))
    except AssertionError as failure:
        return str(failure), ""
    return None, recorded[0]


def test_at_the_mean_position_attention_x001_fails_and_as_initialised_passes(llamas, tmp_path):
    failure, recorded = verdict(llamas[1.0], "mean", tmp_path)
    print("as initialised:", recorded[:200])
    assert failure is None and "attention's share" in recorded
    failure, _ = verdict(llamas[0.01], "mean", tmp_path)
    print("o_proj ×0.01:", failure)
    assert failure is not None and "attention adds no more than position (harmful)" in failure


def test_at_the_last_template_token_attention_x001_still_passes(llamas, tmp_path):
    """What the check cannot tell there: every prompt's variance enters through attention, so even attention
    ×0.01 takes most of each step (0.7–0.9 per layer) and the check passes."""
    failure, recorded = verdict(llamas[0.01], "last", tmp_path)
    print("o_proj ×0.01 at the last token:", recorded[:200])
    assert failure is None


def test_attention_shares_per_layer_and_pooled():
    pre, post = np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 8.0])
    mid = np.sqrt(pre * post)  # half way in log: position alone
    shares = attention_shares(pre, mid, post)
    assert np.isnan(shares[0]) and shares[1:] == pytest.approx([POSITION_SHARE, POSITION_SHARE])
    assert pooled_attention_share(pre, mid, post) == pytest.approx(POSITION_SHARE)
    assert pooled_attention_share(pre, post, post) == pytest.approx(1.0)


def save_bert(path: Path) -> Path:
    """A random-init post-LN BERT (4 layers, hidden 32): every stream it has is a LayerNorm output."""
    from transformers import BertConfig, BertModel

    tokenizer = tiny_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_on_a_post_ln_family_the_check_skips_saying_why_and_a_pre_ln_model_is_unaffected(tmp_path, tiny_llama_dir):
    """BERT's family record says post-LN and the run's spec carries it, also when the run is read back from
    its record: the share computed there is no share of a step, so the check skips with the reason rather
    than pass; the same run of a Llama is checked."""
    from geomcheck.run import record

    options = RunOptions(cache_dir=tmp_path / "cache", max_prompts=8, n_boot=20, progress=False)
    bert = ModelRun(str(save_bert(tmp_path / "bert")), options)
    assert bert.spec.post_ln and {"pre", "mid", "post"} <= set(bert.geometry.streams)
    print("tiny BERT's pooled share (harmful), not a share:", pooled_attention_share(*(bert.geometry.curve(s, "var_mean/harmful") for s in ("pre", "mid", "post"))))
    recorded_bert = record.new_run("record:bert", options, folder=record.write(bert, tmp_path / "record", str(tmp_path / "bert"), "baselines"))
    for run in (bert, recorded_bert):
        recorded: list[str] = []
        with pytest.raises(pytest.skip.Exception, match="post-LN family: every stream is a LayerNorm output"):
            check_streams_separate(run.geometry, SHIPPED, None, run.spec, lambda text, control=None: recorded.append(text))
        assert recorded == [f"skipped: {POST_LN}"]  # the summary shows why
    llama = ModelRun(str(tiny_llama_dir), options)
    recorded.clear()
    assert not llama.spec.post_ln
    check_streams_separate(llama.geometry, SHIPPED, None, llama.spec, lambda text, control=None: recorded.append(text))  # passes (shares ≈ 1.02)
    assert "attention's share" in recorded[0]
