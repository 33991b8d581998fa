"""One record per architecture family: where its residual stream is read, and which matrices write into it.

Read sites, in TransformerLens' terms ``blocks.{l}.hook_resid_{pre,mid,post}``:

- ``pre``: the block's input; ``post``: the block's output;
- ``mid``: the residual after attention and its skip, before the MLP. Where attention and MLP read the same
  input and are added together (parallel blocks: GPT-NeoX, Phi, Falcon, GPT-J) there is no such residual and
  ``mid`` is refused, never approximated.

Each record also names the module whose output is the attention branch *as added* to the residual (after a
sandwich or post norm where the family has one) and the same for the MLP branch: the run-time proof
(:mod:`geomcheck.run.proof`) checks on every capture's first batch that ``mid - pre`` and ``post - mid`` equal
them, so a wrong site stops the run instead of producing numbers.

Write sites (hypothesis 4): the attention output projection and the MLP down projection, returned as
``(d_model, d_in)`` arrays whatever the module stores (GPT-2's ``Conv1D`` keeps ``(d_in, d_out)``).

Adding a family: add one :class:`Family` to :data:`FAMILIES` and its tiny config to ``tests/unit/test_families.py``;
the tests then prove its sites, branches and writers against the model's own computation.

Kept free of a torch import at module level: the registry reads :func:`family_name` at start-up.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from geomcheck import STREAMS
from geomcheck.errors import GeomcheckError

if TYPE_CHECKING:
    import numpy as np
    import torch

WRITERS = ("attn_out", "mlp_out")


class StreamUnavailableError(GeomcheckError, ValueError):
    """The architecture has no such site (e.g. no ``mid`` when attention and MLP run in parallel)."""


class UnknownFamilyError(GeomcheckError, ValueError):
    """A ``model_type`` without a family record whose modules do not follow the generic (Llama) layout."""


@dataclass(frozen=True)
class Site:
    """One place to read: a module, and whether its input or its output is the stream."""

    module: torch.nn.Module
    read: str  # "input" | "output"


@dataclass(frozen=True)
class Read:
    """A module inside a block (dotted path) and which side of it holds the stream."""

    path: str
    read: str = "input"


@dataclass(frozen=True)
class Writer:
    """A matrix inside a block that writes into the residual stream."""

    path: str  # the module; its ``.weight`` is read
    transposed: bool = False  # True where the weight is stored (d_in, d_model), as GPT-2's Conv1D does


@dataclass(frozen=True)
class Family:
    """Everything geomcheck needs to know about one architecture; see the module docstring."""

    name: str
    model_types: tuple[str, ...]
    layers: str  # dotted path of the ModuleList of blocks, inside the base model
    mid: Read | None  # None: the block has no residual between attention and MLP
    attn_branch: str | None  # module whose output is the attention branch as added; None: post-LN (BERT)
    mlp_branch: str | None
    writers: tuple[Writer, Writer]  # attention output projection, MLP down projection
    final_norm: str | None  # applied after the last block; hidden_states[-1] is its output
    causal: bool = True  # decoder: a token never attends forward, so a shared prefix's cache is reusable
    prefix_reuse: bool = True  # the shared-prefix cache was tested equal to the full forward on this family
    parallel_if: tuple[str, ...] = ()  # config flags that make the block parallel (no mid)
    always_parallel: bool = False
    branch_scale: str | None = None  # config attribute each branch is multiplied by before the add
    post_ln: bool = False  # the norm follows each add (BERT): every stream is a LayerNorm output, never the raw residual
    notes: str = ""

    def parallel(self, config: Any) -> bool:
        """Whether this model's blocks add attention and MLP to the same input (no ``mid``)."""
        return self.always_parallel or any(bool(getattr(config, flag, False)) for flag in self.parallel_if)

    def where_mid(self) -> str:
        """``mid``'s site in words, for the README table and error messages."""
        if self.mid is None:
            return "none (parallel attention + MLP)"
        where = f"{self.mid.read} of `{self.mid.path}`"
        return where + (f"; none when `{'` or `'.join(self.parallel_if)}`" if self.parallel_if else "")


LLAMA_WRITERS = (Writer("self_attn.o_proj"), Writer("mlp.down_proj"))


def _llama_like(name: str, *model_types: str, **overrides: Any) -> Family:
    """The pre-norm decoder most families share: norms before each sublayer, branches added as they are."""
    fields: dict[str, Any] = dict(
        layers="layers",
        mid=Read("post_attention_layernorm"),
        attn_branch="self_attn",
        mlp_branch="mlp",
        writers=LLAMA_WRITERS,
        final_norm="norm",
    )
    fields.update(overrides)
    return Family(name, model_types or (name,), **fields)


SANDWICH = dict(
    mid=Read("pre_feedforward_layernorm"),
    attn_branch="post_attention_layernorm",
    mlp_branch="post_feedforward_layernorm",
    notes="sandwich norms: `post_attention_layernorm` normalises the attention output before the add, so it is "
    "not where the residual is; embeddings scaled by sqrt(hidden_size) (pre[0] is after the scaling)",
)

FAMILIES: tuple[Family, ...] = (
    _llama_like("llama"),
    _llama_like("qwen2"),
    _llama_like("qwen3"),
    _llama_like("mistral"),
    _llama_like("gemma", notes="embeddings scaled by sqrt(hidden_size) (pre[0] is after the scaling)"),
    _llama_like("gemma2", **SANDWICH),
    _llama_like("gemma3_text", **SANDWICH),
    _llama_like("phi3", attn_branch="resid_attn_dropout", mlp_branch="resid_mlp_dropout"),
    _llama_like(
        "olmo2",
        mid=Read("mlp"),
        attn_branch="post_attention_layernorm",
        mlp_branch="post_feedforward_layernorm",
        notes="norms after the sublayers: `post_attention_layernorm` is part of the attention branch; the MLP reads the raw residual",
    ),
    _llama_like(
        "granite",
        branch_scale="residual_multiplier",
        notes="each branch is multiplied by `residual_multiplier` before the add; embeddings by `embedding_multiplier`",
    ),
    _llama_like("stablelm", parallel_if=("use_parallel_residual",)),
    _llama_like("starcoder2", writers=(Writer("self_attn.o_proj"), Writer("mlp.c_proj"))),
    _llama_like(
        "gpt_neox",
        attn_branch="attention",
        writers=(Writer("attention.dense"), Writer("mlp.dense_4h_to_h")),
        final_norm="final_layer_norm",
        parallel_if=("use_parallel_residual",),
        notes="GPT-NeoX and Pythia are parallel by default (`use_parallel_residual`)",
    ),
    _llama_like(
        "phi",
        mid=None,
        writers=(Writer("self_attn.dense"), Writer("mlp.fc2")),
        final_norm="final_layernorm",
        always_parallel=True,
    ),
    _llama_like(
        "falcon",
        layers="h",
        attn_branch="self_attention",
        writers=(Writer("self_attention.dense"), Writer("mlp.dense_4h_to_h")),
        final_norm="ln_f",
        parallel_if=("parallel_attn", "new_decoder_architecture"),
    ),
    Family(
        "gpt2",
        ("gpt2",),
        layers="h",
        mid=Read("ln_2"),
        attn_branch="attn",
        mlp_branch="mlp",
        writers=(Writer("attn.c_proj", transposed=True), Writer("mlp.c_proj", transposed=True)),
        final_norm="ln_f",
    ),
    Family(
        "qwen",
        ("qwen",),
        layers="h",
        mid=Read("ln_2"),
        attn_branch="attn",
        mlp_branch="mlp",
        writers=(Writer("attn.c_proj"), Writer("mlp.c_proj")),
        final_norm="ln_f",
        prefix_reuse=False,
        notes="Qwen 1 (remote code, `QWenLMHeadModel`); its own cache format, so no shared-prefix reuse",
    ),
    Family(
        "bert",
        ("bert",),
        layers="encoder.layer",
        mid=Read("attention.output", "output"),
        attn_branch=None,
        mlp_branch=None,
        writers=(Writer("attention.output.dense"), Writer("output.dense")),
        final_norm=None,
        causal=False,
        prefix_reuse=False,
        post_ln=True,
        notes="post-LN, never holds an un-normalised residual: mid is LayerNorm(attention(x) + x), the tensor the "
        "feed-forward block reads; the branch checks do not apply, pre/post are proven against hidden_states",
    ),
)

# What an unknown model_type is tried as: the Llama layout, accepted only if the run-time proof passes.
GENERIC = _llama_like("generic", prefix_reuse=False)

BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}
BY_NAME = {family.name: family for family in FAMILIES}

HOW_TO_ADD = (
    "add a Family record for it to geomcheck/run/families.py (where its layers live, which module's input is `mid`, "
    "which modules' outputs are the attention and MLP branches as added, its two writer matrices) and its tiny "
    "config to tests/unit/test_families.py; see the README, 'Add a family'"
)


def family_name(model_type: str) -> str:
    """The family a config's ``model_type`` belongs to; the model_type itself when none is recorded."""
    family = BY_MODEL_TYPE.get(model_type)
    return family.name if family else model_type


def family_named(name: str) -> Family:
    """The record a registry spec's ``family`` names (:func:`family_name`'s result), or :data:`GENERIC`."""
    return BY_NAME.get(name, GENERIC)


def family_of(model: torch.nn.Module) -> Family:
    """The model's family record, or :data:`GENERIC` for a model_type without one (the proof decides)."""
    return BY_MODEL_TYPE.get(getattr(model.config, "model_type", ""), GENERIC)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body of a model with or without an LM head."""
    return getattr(model, "base_model", model)


def _module(root: torch.nn.Module, path: str, family: Family, model_type: str) -> torch.nn.Module:
    holder: Any = root
    for part in path.split("."):
        holder = getattr(holder, part, None)
        if holder is None:
            if family is GENERIC:
                raise UnknownFamilyError(f"model_type '{model_type}' has no family record and no module '{path}' of the generic layout: {HOW_TO_ADD}")
            raise UnknownFamilyError(f"family '{family.name}' expects a module '{path}', which this '{model_type}' model lacks: {HOW_TO_ADD}")
    return holder


@dataclass(frozen=True)
class Layout:
    """A family's record resolved on one model: its blocks, and whether they are parallel."""

    family: Family
    model: torch.nn.Module
    blocks: tuple[Any, ...]
    parallel: bool

    @property
    def model_type(self) -> str:
        return getattr(self.model.config, "model_type", "")

    def module(self, block: torch.nn.Module, path: str) -> torch.nn.Module:
        return _module(block, path, self.family, self.model_type)

    def streams(self) -> tuple[str, ...]:
        """The streams this model has."""
        return tuple(s for s in STREAMS if s != "mid" or not self.parallel)

    def sites(self, streams: Sequence[str] = STREAMS) -> dict[str, list[Site]]:
        """Per stream, one site per layer."""
        sites: dict[str, list[Site]] = {}
        for stream in streams:
            if stream not in STREAMS:
                raise StreamUnavailableError(f"unknown stream '{stream}'; choose from {', '.join(STREAMS)}")
            if stream == "mid" and self.parallel:
                raise StreamUnavailableError(
                    f"architecture '{self.model_type}' computes attention and MLP in parallel: there is no residual "
                    "between them, so stream 'mid' does not exist. Use streams 'pre' and 'post'."
                )
            if stream == "mid":
                assert self.family.mid is not None
                mid = self.family.mid
                sites[stream] = [Site(self.module(b, mid.path), mid.read) for b in self.blocks]
            else:
                sites[stream] = [Site(b, "input" if stream == "pre" else "output") for b in self.blocks]
        return sites

    def branch_sites(self) -> dict[str, list[Site]]:
        """The attention and MLP branches as added (empty for post-LN families), read at their output."""
        paths = {"attn": self.family.attn_branch, "mlp": self.family.mlp_branch}
        return {k: [Site(self.module(b, p), "output") for b in self.blocks] for k, p in paths.items() if p is not None}

    def final_norm(self) -> torch.nn.Module | None:
        path = self.family.final_norm
        return None if path is None else _module(base_model(self.model), path, self.family, self.model_type)

    def branch_scale(self) -> float:
        scale = self.family.branch_scale
        return 1.0 if scale is None else float(getattr(self.model.config, scale))


def layout(model: torch.nn.Module, family: Family | None = None) -> Layout:
    """Resolve ``family`` (default: the model's own) on ``model``; a missing module is refused by name."""
    import torch

    family = family or family_of(model)
    model_type = getattr(model.config, "model_type", "")
    blocks = _module(base_model(model), family.layers, family, model_type)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise UnknownFamilyError(f"'{family.layers}' of this '{model_type}' model is not a list of blocks: {HOW_TO_ADD}")
    return Layout(family, model, tuple(blocks), family.parallel(model.config))


def find_sites(model: torch.nn.Module, streams: Sequence[str] = STREAMS, family: Family | None = None) -> dict[str, list[Site]]:
    """Per stream, one site per layer (see :class:`Layout`)."""
    return layout(model, family).sites(streams)


def residual_writers(model: torch.nn.Module, family: Family | None = None) -> Iterator[tuple[int, str, np.ndarray]]:
    """(layer, kind, weight as d_model × d_in) for each matrix that writes into the residual stream.

    One layer at a time, so a large model's weights are never copied all at once.
    """
    import torch

    resolved = layout(model, family)
    for layer_index, block in enumerate(resolved.blocks):
        for kind, writer in zip(WRITERS, resolved.family.writers):
            weight = resolved.module(block, writer.path).weight
            weight = weight.T if writer.transposed else weight
            yield layer_index, kind, weight.detach().to("cpu", torch.float32).numpy()


def streams_table() -> str:
    """The README's table of where each family's streams are read, generated from the records."""
    rows = [
        "| family (`model_type`) | blocks | `mid` | attention / MLP branch as added | writers (hyp. 4) | notes |",
        "|---|---|---|---|---|---|",
    ]
    for f in FAMILIES:
        branches = f"`{f.attn_branch}` / `{f.mlp_branch}`" if f.attn_branch else "— (post-LN)"
        if f.branch_scale:
            branches += f" × `{f.branch_scale}`"
        writers = ", ".join(f"`{w.path}`" + ("ᵀ" if w.transposed else "") for w in f.writers)
        rows.append(f"| {', '.join(f.model_types)} | `{f.layers}` | {f.where_mid()} | {branches} | {writers} | {f.notes} |")
    return "\n".join(rows)
