"""Where each family's residual stream is read (capture) and written (weights).

Read sites, in TransformerLens' terms ``blocks.{l}.hook_resid_{pre,mid,post}``:

- ``pre``: the layer's input;
- ``mid``: the residual after attention + skip, before the MLP block. Llama/Qwen2/Qwen3/Mistral: the input
  of ``layers[l].post_attention_layernorm``; GPT-2: the input of ``h[l].ln_2``. BERT is post-LN and
  never holds an un-normalised residual: its ``mid`` is the output of ``encoder.layer[l].attention.output``,
  i.e. ``LayerNorm(attention(x) + x)``, the tensor the feed-forward block reads;
- ``post``: the layer's output.

Write sites (hypothesis 4): the matrices whose output is added to the residual stream, the attention
output projection and the MLP down projection, as (d_model, d_in) arrays.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from geomcheck import STREAMS

PARALLEL_BLOCKS = {"gptj", "gpt_neox", "phi", "falcon", "cohere"}


class StreamUnavailableError(ValueError):
    """The architecture has no such site (e.g. no ``mid`` when attention and MLP run in parallel)."""


@dataclass(frozen=True)
class Site:
    """One place to read: a module, and whether its input or its output is the stream."""

    module: torch.nn.Module
    read: str  # "input" | "output"


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body of a model with or without an LM head."""
    return getattr(model, "base_model", model)


def _layers(body: torch.nn.Module, model_type: str) -> list[torch.nn.Module]:
    """The model's list of blocks, wherever the family keeps it."""
    for path in ("layers", "h", "encoder.layer"):
        holder = body
        for part in path.split("."):
            holder = getattr(holder, part, None)
        if isinstance(holder, torch.nn.ModuleList):
            return list(holder)
    raise StreamUnavailableError(f"architecture '{model_type}' is not supported: no list of layers found")


def find_sites(model: torch.nn.Module, streams: Sequence[str] = STREAMS) -> dict[str, list[Site]]:
    """Per stream, one site per layer, for the supported families."""
    body = base_model(model)
    model_type = getattr(model.config, "model_type", "")
    layers = _layers(body, model_type)
    if model_type == "bert":
        mids = [Site(layer.attention.output, "output") for layer in layers]
    elif model_type == "gpt2":
        mids = [Site(block.ln_2, "input") for block in layers]
    else:
        mids = [Site(layer.post_attention_layernorm, "input") for layer in layers if hasattr(layer, "post_attention_layernorm")]
    parallel = model_type in PARALLEL_BLOCKS and getattr(model.config, "use_parallel_residual", True)
    sites: dict[str, list[Site]] = {}
    for stream in streams:
        if stream == "pre":
            sites[stream] = [Site(layer, "input") for layer in layers]
        elif stream == "post":
            sites[stream] = [Site(layer, "output") for layer in layers]
        elif stream == "mid":
            if parallel or len(mids) != len(layers):
                raise StreamUnavailableError(
                    f"architecture '{model_type}' computes attention and MLP in parallel: there is no residual "
                    "between them, so stream 'mid' does not exist. Use streams 'pre' and 'post'."
                )
            sites[stream] = mids
        else:
            raise StreamUnavailableError(f"unknown stream '{stream}'; choose from {', '.join(STREAMS)}")
    return sites


WRITERS = ("attn_out", "mlp_out")


def residual_writers(model: torch.nn.Module) -> Iterator[tuple[int, str, np.ndarray]]:
    """(layer, kind, weight as d_model × d_in) for each matrix that writes into the residual stream.

    One layer at a time, so a large model's weights are never copied all at once.
    """
    body = base_model(model)
    model_type = getattr(model.config, "model_type", "")
    for layer_index, layer in enumerate(_layers(body, model_type)):
        if model_type == "bert":
            pairs = (layer.attention.output.dense.weight, layer.output.dense.weight)
        elif model_type == "gpt2":  # Conv1D stores (d_in, d_out)
            pairs = (layer.attn.c_proj.weight.T, layer.mlp.c_proj.weight.T)
        else:
            pairs = (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight)
        for kind, weight in zip(WRITERS, pairs):
            yield layer_index, kind, weight.detach().to("cpu", torch.float32).numpy()
