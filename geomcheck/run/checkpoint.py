"""The residual-stream writer matrices (hypothesis 4), read straight from a checkpoint's files.

Loading a model to read two matrices per layer costs the whole model's memory and load time (61 GiB and
minutes for Qwen2.5-32B in bf16), so the weights check reads each writer tensor by tensor, in the dtype it
is stored in: safetensors through ``safe_open`` (one file or a sharded index), PyTorch ``.bin`` files
through ``torch.load(mmap=True, weights_only=True)`` (no pickle code runs), GGUF through the ``gguf``
package, de-quantising only the tensor asked for. Which tensors are the writers comes from the family
record (:mod:`geomcheck.run.families`): the block list's path, a layer number, the writer's path.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from geomcheck.errors import GeomcheckError
from geomcheck.run.families import BY_MODEL_TYPE, GENERIC, WRITERS, Family


# What transformers' classes put before the block list in tensor names, as the gguf package's table spells them.
HF_PREFIXES = ("", "model.", "transformer.")


class CheckpointError(GeomcheckError, ValueError):
    """The checkpoint's files do not hold the writer matrices its family names."""


def family_for(model_type: str) -> Family:
    """The family of a ``model_type``, or the generic (Llama) layout, as the loader's :func:`family_of`."""
    return BY_MODEL_TYPE.get(model_type, GENERIC)


def writer_names(names: list[str], family: Family) -> dict[tuple[int, str], str]:
    """(layer, writer kind) → tensor name, for every tensor named ``…<layers>.<layer>.<writer path>.weight``.

    Whatever prefix the saved model put in front (``model.``, ``bert.``, none): the block list's path and
    the writer's path inside a block pin a tensor down."""
    found: dict[tuple[int, str], str] = {}
    for kind, writer in zip(WRITERS, family.writers):
        pattern = re.compile(rf"(?:^|\.){re.escape(family.layers)}\.(\d+)\.{re.escape(writer.path)}\.weight$")
        for name in names:
            if match := pattern.search(name):
                key = (int(match.group(1)), kind)
                if key in found:
                    raise CheckpointError(f"two tensors for layer {key[0]}'s {kind}: {found[key]} and {name}")
                found[key] = name
    if not found:
        raise CheckpointError(
            f"no tensor named like '{family.layers}.<layer>.{family.writers[0].path}.weight' in the checkpoint "
            f"(family '{family.name}'); is this a {family.name} checkpoint?"
        )
    return found


def _ordered(found: dict[tuple[int, str], str]) -> list[tuple[int, str, str]]:
    """Layer by layer, each layer's writers in :data:`WRITERS` order; a missing one is refused by name."""
    layers = sorted({layer for layer, _ in found})
    missing = [f"layer {layer} {kind}" for layer in range(layers[-1] + 1) for kind in WRITERS if (layer, kind) not in found]
    if missing:
        raise CheckpointError(f"the checkpoint lacks writer matrices: {', '.join(missing[:6])}")
    return [(layer, kind, found[layer, kind]) for layer in layers for kind in WRITERS]


def _as_matrix(weight: np.ndarray, transposed: bool) -> np.ndarray:
    """The writer as float32 ``(d_model, d_in)``: the precision the top-k needs (float64 agrees to 6 digits)."""
    weight = np.asarray(weight, dtype=np.float32)
    return weight.T if transposed else weight


def directory_writers(directory: Path) -> Iterator[tuple[int, str, np.ndarray]]:
    """(layer, kind, ``(d_model, d_in)`` float32 matrix) from a saved model's directory, one tensor at a time."""
    directory = Path(directory)
    config = directory / "config.json"
    if not config.is_file():
        raise CheckpointError(f"'{directory}' has no config.json; save the model there with save_pretrained(path)")
    family = family_for(json.loads(config.read_text()).get("model_type", ""))
    transposed = {kind: writer.transposed for kind, writer in zip(WRITERS, family.writers)}
    with contextlib.ExitStack() as stack:
        files = {path: _open(path, stack) for path in _weight_files(directory)}
        where = {name: handle for handle in files.values() for name in handle.keys()}
        for layer, kind, name in _ordered(writer_names(list(where), family)):
            yield layer, kind, _as_matrix(_numpy(where[name], name), transposed[kind])


def _weight_files(directory: Path) -> list[Path]:
    """The checkpoint's weight files: a shard index's, else every file of the kind (safetensors preferred,
    as transformers does)."""
    for suffix in (".safetensors", ".bin"):
        index = next(iter(sorted(directory.glob(f"*{suffix}.index.json"))), None)
        if index is not None:
            return [directory / file for file in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        paths = sorted(p for p in directory.glob(f"*{suffix}") if p.name != "training_args.bin")
        if paths:
            return paths
    raise CheckpointError(f"'{directory}' holds no weights (*.safetensors, *.bin or a shard index); save them with save_pretrained(path)")


def _open(path: Path, stack: contextlib.ExitStack) -> Any:
    """A mapping-like handle whose tensors are read when asked for: safetensors' ``safe_open``, or a ``.bin``
    state dict memory-mapped by ``torch.load`` (``weights_only``: no pickle code runs)."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        return stack.enter_context(safe_open(str(path), framework="pt"))
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def _numpy(handle: Any, name: str) -> np.ndarray:
    """One tensor, read in its stored dtype and handed over as float32 (numpy has no bfloat16)."""
    import torch

    tensor = handle.get_tensor(name) if hasattr(handle, "get_tensor") else handle[name]
    return tensor.to(torch.float32).numpy()


def gguf_writers(path: Path) -> Iterator[tuple[int, str, np.ndarray]]:
    """(layer, kind, ``(d_model, d_in)`` float32 matrix) from a GGUF file, de-quantising only the writers.

    The transformers names of the family record are mapped to GGUF's (``blk.N.attn_output``) by the
    ``gguf`` package's own table, the one llama.cpp's converter writes them with."""
    import gguf

    reader = gguf.GGUFReader(path)
    arch_name = str(reader.fields["general.architecture"].contents())
    arch = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}.get(arch_name)
    if arch is None:
        raise CheckpointError(f"GGUF architecture '{arch_name}' of {path} is unknown to the gguf package; upgrade gguf")
    n_blocks = int(reader.fields[f"{arch_name}.block_count"].contents())
    table = gguf.get_tensor_name_map(arch, n_blocks)
    family = family_for(arch_name)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    for layer in range(n_blocks):
        for kind, writer in zip(WRITERS, family.writers):
            hf_name = f"{family.layers}.{layer}.{writer.path}.weight"
            names = (table.get_name(prefix + hf_name, try_suffixes=(".weight",)) for prefix in HF_PREFIXES)
            name = next((n for n in names if n in tensors), None)
            if name is None:
                raise CheckpointError(f"{path} has no GGUF tensor for {hf_name}; is it a {family.name} model?")
            tensor = tensors[name]
            # GGUF stores every linear layer as (d_out, d_in), GPT-2's Conv1D too (llama.cpp's converter turns it)
            yield layer, kind, _as_matrix(gguf.quants.dequantize(tensor.data, tensor.tensor_type), transposed=False)


def checkpoint_writers(location: Path) -> Iterator[tuple[int, str, np.ndarray]]:
    """The writers of a checkpoint directory or GGUF file (see :func:`directory_writers`, :func:`gguf_writers`)."""
    location = Path(location)
    return gguf_writers(location) if location.suffix.lower() == ".gguf" else directory_writers(location)
