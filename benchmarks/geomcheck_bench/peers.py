"""The methods timed side by side: two floors, geomcheck's capture, and what users would write instead.

Every method runs the same prompts through the same base-model tensors in batches built by
``geomcheck.run.capture.batches`` (per prompt set, length-sorted, right-padded) and, on request, returns its
readings at each prompt's last real token: ``set -> key -> (prompts, ...)`` arrays, where a key is a stream
(``pre``/``mid``/``post``, shaped (prompts, layers, d_model)) or ``final`` (the last hidden state).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from geomcheck.run.capture import SharedPrefix, batches, capture, input_device
from geomcheck.run.rendering import render
from geomcheck.run.families import find_sites

from geomcheck_bench.subject import Subject

STREAMS = ("pre", "mid", "post")
Readings = dict[str, dict[str, np.ndarray]]


@dataclass
class Context:
    """The subject, the batch size, and the wrapped models the optional peers need."""

    subject: Subject
    batch_size: int
    causal: torch.nn.Module | None = None
    nn_model: Any = None
    nn_paths: dict[str, list[tuple[str, str]]] | None = None
    tl_bridge: Any = None
    n_layers: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_layers = len(find_sites(self.subject.model, ("pre",))["pre"])

    def each_batch(self, skip: int = 0) -> Iterator[tuple[str, Any, torch.Tensor, torch.Tensor]]:
        """(set, batch, rows, last real index) of every batch, each prompt's first `skip` tokens left out."""
        for name, ids in self.subject.ids.items():
            for b in batches([s[skip:] for s in ids], self.batch_size, self.subject.pad_id):
                yield name, b, torch.arange(len(b.indices)), b.attention_mask.sum(dim=1) - 1


def _store(out: Readings, ctx: Context, set_name: str, key: str, indices: list[int], value: torch.Tensor) -> None:
    arr = out.setdefault(set_name, {}).get(key)
    if arr is None:
        arr = out[set_name][key] = np.zeros((len(ctx.subject.ids[set_name]), *value.shape[1:]), np.float32)
    arr[indices] = value.detach().to("cpu", torch.float32).numpy()


def _forward_inputs(ctx: Context, batch: Any, device: torch.device) -> dict[str, Any]:
    inputs: dict[str, Any] = {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}
    if not ctx.subject.is_encoder:
        inputs["use_cache"] = False
    return inputs


def run_naive(ctx: Context, collect: bool) -> Readings | None:
    """Naive floor: the bare base-model forward over every token, no hooks."""
    model, out = ctx.subject.model, {}
    device = input_device(model)
    with torch.inference_mode():
        for name, b, rows, last in ctx.each_batch():
            o = model(**_forward_inputs(ctx, b, device))
            if collect:
                _store(out, ctx, name, "final", b.indices, o.last_hidden_state[rows, last])
    return out if collect else None


def run_unique(ctx: Context, collect: bool) -> Readings | None:
    """Unique-token floor: geomcheck's shared-prefix cache computed once, each batch runs its suffix, no hooks."""
    model, out = ctx.subject.model, {}
    device, p = input_device(model), ctx.subject.prefix_length
    with torch.inference_mode():
        prefix = SharedPrefix(model, next(iter(ctx.subject.ids.values()))[0][:p])
        for name, b, rows, last in ctx.each_batch(skip=p):
            o = model(**prefix.inputs(b, device))
            if collect:
                _store(out, ctx, name, "final", b.indices, o.last_hidden_state[rows, last])
    return out if collect else None


def _geomcheck(ctx: Context, collect: bool, prefix_reuse: bool) -> Readings | None:
    """geomcheck's capture as the plugin calls it: every stream, last token, samples kept."""
    subject = ctx.subject
    rendered = render(subject.tokenizer, subject.sets, subject.chat_template)  # inside the timing, as before
    cap = capture(
        subject.model, rendered.token_ids, pad_id=rendered.pad_id, streams=STREAMS, position="last", batch_size=ctx.batch_size,
        prefix_reuse=prefix_reuse, progress=False,
    )
    return cap.samples if collect else None


def run_hidden_states(ctx: Context, model: torch.nn.Module, collect: bool) -> Readings | None:
    """What users write by hand: ``output_hidden_states=True``, every layer's last token picked."""
    out: Readings = {}
    device = input_device(model)
    with torch.inference_mode():
        for name, b, rows, last in ctx.each_batch():
            o = model(**_forward_inputs(ctx, b, device), output_hidden_states=True)
            picked = torch.stack([h[rows, last] for h in o.hidden_states], dim=1)
            if collect:  # hidden_states[l] for l < layers is the input of layer l: geomcheck's "pre"
                _store(out, ctx, name, "pre", b.indices, picked[:, : ctx.n_layers])
    return out if collect else None


def _envoy(root: Any, path: str) -> Any:
    """The nnsight envoy of a dotted module path, by child name: BERT's submodules named ``output`` clash
    with nnsight's ``.output``."""
    env = root
    for part in path.split("."):
        children = dict(env._named_children())
        env = children[part] if part in children else (env[int(part)] if part.isdigit() else getattr(env, part))
    return env


def run_nnsight(ctx: Context, collect: bool) -> Readings | None:
    """One nnsight trace per batch that saves the last-token slice of every site geomcheck hooks."""
    out: Readings = {}
    device = input_device(ctx.subject.model)
    for name, b, rows, last in ctx.each_batch():
        ids, mask = b.input_ids.to(device), b.attention_mask.to(device)
        if ctx.subject.is_encoder:  # generic NNsight: the arguments go to forward as they are
            tracer = ctx.nn_model.trace(ids, attention_mask=mask)
        else:  # LanguageModel: a pre-tokenised batch as a dict
            tracer = ctx.nn_model.trace({"input_ids": ids, "attention_mask": mask})
        saved: dict[str, list] = {s: [] for s in STREAMS}
        with torch.inference_mode(), tracer:
            for layer in range(ctx.n_layers):  # execution order: pre, mid, post of each layer
                for stream in STREAMS:
                    path, read = ctx.nn_paths[stream][layer]
                    env = _envoy(ctx.nn_model, path)
                    value = env.input if read == "input" else env.output
                    value = value[0] if isinstance(value, tuple) else value
                    saved[stream].append(value[rows, last].save())
        if collect:
            for stream in STREAMS:
                _store(out, ctx, name, stream, b.indices, torch.stack(list(saved[stream]), dim=1))
    return out if collect else None


def run_tl(ctx: Context, collect: bool) -> Readings | None:
    """TransformerLens 4.x ``run_with_cache`` filtered to ``hook_resid_{pre,mid,post}``."""
    out: Readings = {}
    device = input_device(ctx.subject.model)
    names = tuple(f"hook_resid_{s}" for s in STREAMS)
    with torch.inference_mode():
        for name, b, rows, last in ctx.each_batch():
            ids, mask = b.input_ids.to(device), b.attention_mask.to(device)
            _, cache = ctx.tl_bridge.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n.endswith(names))
            for s in STREAMS:
                picked = torch.stack([cache[f"blocks.{l}.hook_resid_{s}"][rows, last] for l in range(ctx.n_layers)], dim=1)
                if collect:
                    _store(out, ctx, name, s, b.indices, picked)
    return out if collect else None


def head_wrapper(model: torch.nn.Module, masked_lm: bool = False) -> torch.nn.Module:
    """A *ForCausalLM (or *ForMaskedLM) of the same config whose body IS the base model's tensors.

    Built on the meta device, the base model's tensors assigned (not copied). It gets its own config, so
    switching its attention implementation (TransformerLens does) leaves the base model's alone. A causal
    ``lm_head`` is tied to the input embedding; other head-only tensors (BERT's MLM transform) are freshly
    initialised: they change the logits, never the residual stream.
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    dtype, device = next(model.parameters()).dtype, next(model.parameters()).device
    with torch.device("meta"):
        wrapper = (AutoModelForMaskedLM if masked_lm else AutoModelForCausalLM).from_config(copy.deepcopy(model.config), dtype=dtype)
    body = wrapper.base_model_prefix
    state = {f"{body}.{k}": v for k, v in model.state_dict().items()}
    if not masked_lm:
        state["lm_head.weight"] = state[f"{body}.embed_tokens.weight"]
    _, unexpected = wrapper.load_state_dict(state, strict=False, assign=True)
    unexpected = [k for k in unexpected if not k.startswith(f"{body}.pooler.")]  # the MLM model has no pooler
    if unexpected:
        raise RuntimeError(f"head wrapper: unexpected tensors {unexpected[:5]}")
    base_buffers, base_modules = dict(model.named_buffers()), dict(model.named_modules())
    for mod_name, mod in wrapper.named_modules():
        inner = mod_name.split(".", 1)[1] if "." in mod_name else ""
        for leaf, buf in list(mod._buffers.items()):
            if buf is not None and buf.is_meta:  # buffers outside the state dict (rotary inv_freq, position_ids)
                mod._buffers[leaf] = base_buffers[f"{inner}.{leaf}" if inner else leaf]
        value = getattr(mod, "original_inv_freq", None)
        if isinstance(value, torch.Tensor) and value.is_meta:
            mod.original_inv_freq = base_modules[inner].original_inv_freq
        for leaf, param in list(mod._parameters.items()):
            if param is not None and param.is_meta:  # head-only tensors
                if leaf == "bias":
                    fresh = torch.zeros(param.shape, dtype=dtype, device=device)
                elif "norm" in mod_name.lower():
                    fresh = torch.ones(param.shape, dtype=dtype, device=device)
                else:
                    fresh = torch.randn(param.shape, dtype=dtype, device=device) * 0.02
                mod._parameters[leaf] = torch.nn.Parameter(fresh, requires_grad=False)
    if masked_lm:
        wrapper.tie_weights()
    tensors = list(wrapper.named_parameters(remove_duplicate=False)) + list(wrapper.named_buffers(remove_duplicate=False))
    if leftover := [n for n, t in tensors if t.is_meta]:
        raise RuntimeError(f"head wrapper incomplete: meta tensors {leftover[:5]}")
    return wrapper.eval()


def setup_causal(ctx: Context) -> None:
    if ctx.subject.is_encoder:
        raise NotApplicable("an encoder has no CausalLM; the base-model output_hidden_states row is the comparison")
    ctx.causal = head_wrapper(ctx.subject.model)


def setup_nnsight(ctx: Context) -> None:
    from nnsight import LanguageModel, NNsight

    model = ctx.subject.model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if ctx.subject.is_encoder:  # LanguageModel(BertModel) builds a text-generation pipeline and fails
            ctx.nn_model, prefix = NNsight(model), ""
        else:
            target = head_wrapper(model)
            ctx.nn_model, prefix = LanguageModel(target, tokenizer=ctx.subject.tokenizer), f"{target.base_model_prefix}."
    names = {id(m): n for n, m in model.named_modules()}
    ctx.nn_paths = {s: [(prefix + names[id(site.module)], site.read) for site in v] for s, v in find_sites(model, STREAMS).items()}


def setup_tl(ctx: Context) -> None:
    """TransformerLens' bridge on its own wrapper; its BERT adapter wants BertForMaskedLM."""
    from transformer_lens.model_bridge import TransformerBridge

    model = ctx.subject.model
    before = model.config._attn_implementation
    ctx.tl_bridge = TransformerBridge.boot_transformers(
        ctx.subject.hub_id, hf_model=head_wrapper(model, masked_lm=ctx.subject.is_encoder), tokenizer=ctx.subject.tokenizer,
        device=str(input_device(model)), dtype=next(model.parameters()).dtype,
    )
    if model.config._attn_implementation != before:
        raise RuntimeError(f"TransformerLens switched the shared base model from {before} to {model.config._attn_implementation}")


def setup_unique(ctx: Context) -> None:
    if ctx.subject.is_encoder:
        raise NotApplicable("bidirectional encoder: a shared prefix's keys/values depend on the suffix")
    if not ctx.subject.prefix_length:
        raise NotApplicable("the prompts share no token prefix")


class NotApplicable(Exception):
    """The method cannot exist for this model (not a failure); the message says why."""


@dataclass(frozen=True)
class Method:
    id: str
    label: str
    run: Callable[[Context, bool], Readings | None]
    setup: Callable[[Context], None] | None = None


METHODS = (
    Method("naive", "naive floor: base forward, no hooks", run_naive),
    Method("unique", "unique-token floor: shared prefix once, no hooks", run_unique, setup_unique),
    Method("geomcheck", "**geomcheck capture, as the plugin runs it**", lambda c, k: _geomcheck(c, k, prefix_reuse=True)),
    Method("geomcheck_full", "geomcheck capture, `prefix_reuse=False`", lambda c, k: _geomcheck(c, k, prefix_reuse=False)),
    Method("hf_base", "HF `output_hidden_states`, base model", lambda c, k: run_hidden_states(c, c.subject.model, k)),
    Method("hf_causal", "HF `output_hidden_states`, CausalLM", lambda c, k: run_hidden_states(c, c.causal, k), setup_causal),
    Method("nnsight", "nnsight trace + save", run_nnsight, setup_nnsight),
    Method("tl", "TransformerLens `run_with_cache`", run_tl, setup_tl),
)
BY_ID = {m.id: m for m in METHODS}
