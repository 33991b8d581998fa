"""Residual-stream capture: forward hooks record ``pre``, ``mid`` and ``post`` at every layer.

Which module each stream is read from is defined per family in :mod:`geomcheck.run.families`; the first batch
of every capture also runs the proof of :mod:`geomcheck.run.proof`, which refuses a site that is not the residual.

Prompts are sorted by length, right-padded, and read at the last real token (or averaged over the
real tokens), so a prompt's activations do not depend on its batch. Only the base model runs.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from geomcheck import POSITIONS, STREAMS
from geomcheck.errors import GeomcheckError, GeomcheckWarning
from geomcheck.run.activations import DTYPE, Capture
from geomcheck.run.families import GENERIC, Family, Layout, Site, base_model, layout
from geomcheck.run.proof import StreamProofError, verify
from geomcheck.spelling import flag


class UnrecordedFamilyWarning(GeomcheckWarning):
    """A model_type without a family record was read with the generic layout, which passed the proof."""


class NonFiniteActivationError(GeomcheckError, FloatingPointError):
    """NaN or Inf in the residual stream; names the layer and stream."""


@dataclass
class Batch:
    """Right-padded token ids of a few prompts, with the index of each one's last real token."""

    indices: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def batches(token_ids: Sequence[Sequence[int]], batch_size: int, pad_id: int) -> Iterator[Batch]:
    """Length-sorted batches, so padding (wasted compute) is small."""
    order = sorted(range(len(token_ids)), key=lambda i: (len(token_ids[i]), i))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(token_ids[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, : len(token_ids[i])] = torch.tensor(token_ids[i], dtype=torch.long)
            mask[row, : len(token_ids[i])] = 1
        yield Batch(chunk, ids, mask)


class _Recorder:
    """Holds the hooks' readings for the batch in flight."""

    def __init__(self, sites: dict[str, list[Site]], position: str) -> None:
        self.sites = sites
        self.position = position
        self.start(None)
        self.readings: dict[str, list[torch.Tensor | None]] = {s: [None] * len(v) for s, v in sites.items()}

    def start(self, mask: torch.Tensor | None) -> None:
        """Set the batch in flight (None: nothing to read) and drop the last batch's gather indices, which
        :meth:`_index` computes once per batch and device, not in each of the 3 × layers hook calls."""
        self.mask: torch.Tensor | None = mask
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _index(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            assert self.mask is not None
            mask = self.mask.to(device)
            self._on_device[device] = (mask.sum(dim=1) - 1, mask)
        return self._on_device[device]

    def reduce(self, hidden: torch.Tensor) -> torch.Tensor:
        last, mask = self._index(hidden.device)
        if self.position == "last":
            picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            weights = mask.to(hidden.dtype).unsqueeze(-1)
            picked = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        return picked.detach().to("cpu", torch.float32)

    def hook(self, stream: str, layer: int, read: str) -> Callable:
        def on_input(module, args, kwargs):
            if self.mask is not None:  # no mask: the shared-prefix pass, which nobody reads
                hidden = args[0] if args else kwargs["hidden_states"]
                self.readings[stream][layer] = self.reduce(hidden)

        def on_output(module, args, output):
            if self.mask is not None:
                hidden = output[0] if isinstance(output, tuple) else output
                self.readings[stream][layer] = self.reduce(hidden)

        return on_input if read == "input" else on_output

    @contextmanager
    def attached(self) -> Iterator[None]:
        handles = []
        for stream, sites in self.sites.items():
            for layer, site in enumerate(sites):
                fn = self.hook(stream, layer, site.read)
                if site.read == "input":
                    handles.append(site.module.register_forward_pre_hook(fn, with_kwargs=True))
                else:
                    handles.append(site.module.register_forward_hook(fn))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def take(self, stream: str) -> torch.Tensor:
        """The batch's readings of one stream, shaped (batch, layers, features)."""
        readings = self.readings[stream]
        missing = [i for i, r in enumerate(readings) if r is None]
        if missing:
            raise RuntimeError(f"stream '{stream}' was not recorded at layers {missing}: the hook never fired")
        stacked = torch.stack(readings, dim=1)  # type: ignore[arg-type]
        self.readings[stream] = [None] * len(readings)
        return stacked


class SharedPrefix:
    """The key/value cache of the token prefix every prompt starts with, computed once.

    With a chat template ~2/3 of a short prompt's tokens are the same system block; running them once
    and each batch from their cache makes the model see only the unique tokens. Exact for causal
    decoders (a token never attends forward); encoders (BERT) and ``position="mean"`` (which needs the
    prefix tokens' own activations) run the full forward instead.
    """

    def __init__(self, model: torch.nn.Module, ids: Sequence[int]) -> None:
        self.length = len(ids)
        device = input_device(model)
        self.cache = model(input_ids=torch.tensor([list(ids)], device=device), use_cache=True).cache

    def inputs(self, batch: Batch, device: torch.device) -> dict[str, object]:
        """Model inputs continuing the prefix for a batch of right-padded suffixes."""
        rows, width = batch.input_ids.shape
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        prefix_mask = torch.ones((rows, self.length), dtype=batch.attention_mask.dtype)
        positions = torch.arange(self.length, self.length + width).expand(rows, width)
        return {
            "input_ids": batch.input_ids.to(device),
            "attention_mask": torch.cat([prefix_mask, batch.attention_mask], dim=1).to(device),
            "position_ids": positions.to(device),
            "cache": cache,
            "use_cache": True,
        }


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the token ids go. A model dispatched by accelerate may keep some weights on ``meta`` (offloaded
    to CPU or disk) and moves each block's inputs itself; its embedding's entry in the device map decides."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        first = next(iter(device_map.values()))
        return torch.device(f"cuda:{first}" if isinstance(first, int) else first if first not in ("disk", "meta") else "cpu")
    return next(model.parameters()).device


def shared_prefix_length(token_ids: Sequence[Sequence[int]]) -> int:
    """Longest common prefix, leaving every prompt at least one token of its own to read."""
    shortest = min(len(ids) for ids in token_ids)
    length = 0
    while length < shortest - 1 and len({ids[length] for ids in token_ids}) == 1:
        length += 1
    return length


def _full_inputs(resolved: Layout, batch: Batch, device: torch.device) -> dict[str, object]:
    inputs: dict[str, object] = {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}
    if resolved.family.causal:
        inputs["use_cache"] = False
    return inputs


def prove(runner: torch.nn.Module, resolved: Layout, inputs: Mapping[str, object], mask: torch.Tensor, position: str) -> None:
    """Run one batch with the proof's extra hooks (every stream, both branches, the final norm) and
    ``output_hidden_states``, then check the identities of :mod:`geomcheck.run.proof`; the hooks are removed after."""
    sites = {**resolved.sites(resolved.streams()), **resolved.branch_sites()}
    if (norm := resolved.final_norm()) is not None:
        sites |= {"final_in": [Site(norm, "input")], "final_out": [Site(norm, "output")]}
    recorder = _Recorder(sites, position)
    recorder.start(mask)
    with recorder.attached():
        hidden_states = getattr(runner(**inputs, output_hidden_states=True), "hidden_states", None)
    if not hidden_states:
        raise StreamProofError(
            f"model_type '{resolved.model_type}' returned no hidden_states for output_hidden_states=True, so the run-time "
            "proof of the streams cannot run and nothing is read from it."
        )
    hidden = torch.stack([recorder.reduce(h) for h in hidden_states], dim=1)
    verify(resolved, {name: recorder.take(name) for name in sites}, hidden, hidden_states[0].dtype)
    if resolved.family is GENERIC:
        warnings.warn(
            f"model_type '{resolved.model_type}' has no family record; it was read with the generic (Llama) layout, "
            "which passed the run-time proof of the streams. Add a family record to make this explicit.",
            UnrecordedFamilyWarning,
            stacklevel=3,
        )


def capture(
    model: torch.nn.Module,
    token_ids: Mapping[str, Sequence[Sequence[int]]],
    *,
    pad_id: int = 0,
    streams: Sequence[str] = STREAMS,
    position: str = "last",
    batch_size: int = 16,
    prefix_reuse: bool = True,
    progress: bool = True,
    family: Family | None = None,
    proof: bool = True,
) -> Capture:
    """Run every set of token ids through the model once, keeping each prompt's reading of every stream
    (float32; what that costs: :mod:`geomcheck.run.activations`).

    ``token_ids`` per set (from :func:`geomcheck.run.rendering.render`, with its ``pad_id``) are fed as given, so a
    caller can fingerprint the exact inputs.
    ``family`` overrides the model's own record (tests); ``proof=False`` skips the run-time proof on the
    first batch, only to measure what it costs (benchmarks/geomcheck_bench/proof_cost.py)."""
    if position not in POSITIONS:
        raise ValueError(f"unknown position '{position}'; choose from {', '.join(POSITIONS)}")
    resolved = layout(model, family)
    sites = resolved.sites(streams)
    runner = base_model(model)
    n_layers = len(next(iter(sites.values())))
    d_model = int(model.config.hidden_size)
    device = input_device(model)
    everything = [ids for ids_of_set in token_ids.values() for ids in ids_of_set]
    reuse = prefix_reuse and position == "last" and resolved.family.prefix_reuse
    prefix_length = shared_prefix_length(everything) if reuse and everything else 0
    recorder = _Recorder(sites, position)
    # One row per tokenized prompt, each written by exactly one batch below.
    samples = {name: {s: np.empty((len(ids), n_layers, d_model), DTYPE) for s in streams} for name, ids in token_ids.items()}
    with recorder.attached(), torch.inference_mode(), tqdm(total=len(everything), desc="geomcheck capture", unit="prompt", disable=not progress) as bar:
        prefix = SharedPrefix(runner, everything[0][:prefix_length]) if prefix_length else None
        unproven = proof
        for name, ids_of_set in token_ids.items():
            suffixes = [ids[prefix_length:] for ids in ids_of_set]
            for batch in batches(suffixes, batch_size, pad_id):
                recorder.start(batch.attention_mask)
                inputs = prefix.inputs(batch, device) if prefix else _full_inputs(resolved, batch, device)
                if unproven:
                    prove(runner, resolved, inputs, batch.attention_mask, position)
                    unproven = False
                else:
                    runner(**inputs)
                recorder.start(None)
                readings = {stream: recorder.take(stream) for stream in streams}
                _check_finite(readings)
                for stream, reading in readings.items():
                    samples[name][stream][batch.indices] = reading.numpy()
                bar.update(len(batch.indices))
    return Capture(samples, n_layers, d_model)


def _check_finite(readings: Mapping[str, torch.Tensor]) -> None:
    """Fail at the earliest layer (and stream, in forward order) where NaN or Inf appears."""
    bad = []
    for order, (stream, reading) in enumerate(readings.items()):
        layers = (~torch.isfinite(reading)).any(dim=2).any(dim=0).nonzero()
        if len(layers):
            bad.append((int(layers[0]), order, stream))
    if bad:
        layer, _, stream = min(bad)
        raise NonFiniteActivationError(
            f"NaN/Inf in stream '{stream}' at layer {layer}. In float16 the largest activations overflow "
            f"(max 65504); re-run with {flag('dtype')} bfloat16 or float32."
        )
