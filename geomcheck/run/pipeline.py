"""One model's run, start to end: prompts → model → each prompt's activations → geometry.

The model is loaded lazily and at most once; activations and weight overlaps go through the on-disk
cache, so a re-run with identical inputs loads no model at all. "Identical" is decided by content: the
cache keys hold the checkpoint's fingerprint (:mod:`geomcheck.run.fingerprint`), not its name or path.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

import geomcheck
from geomcheck import STREAMS
from geomcheck.errors import GeomcheckWarning
from geomcheck.run import registry
from geomcheck.run import activations
from geomcheck.run.activations import Capture, check_complete
from geomcheck.run.cache import Arrays, ArrayCache, cache_key
from geomcheck.run.fingerprint import Fingerprint, FingerprintError, of_model, short
from geomcheck.stats import vocabulary
from geomcheck.stats.geometry import Geometry, Readings, geometry_from_arrays, geometry_from_samples, geometry_to_arrays
from geomcheck.run.prompts import prompts_hash, resolve_prompts
from geomcheck.run.rendering import TEMPLATE_DATE, render
from geomcheck.stats.weights import TOPK_METHOD, overlap_matrix, top_left_singular_vectors
from geomcheck.spelling import flag

if TYPE_CHECKING:
    from geomcheck.run.models import LoadedModel

MIN_PROMPTS = 2  # a variance needs two samples
GEOMETRY_FORMAT = 8  # layout and interval method of cached geometry entries; bump when either changes
MEASURED = "measured"  # entry array holding, as JSON bytes, what the run that computed it measured
# Code that computes the activations (modeling, tokenization): part of the activations key. torch, the
# attention implementation and the device are not: they change rounding only, which the baseline
# tolerance absorbs, and keying by them would recompute for nothing. They are recorded (ModelRun.measured()).
KEYED_SOFTWARE = ("transformers", "tokenizers")
# Where a model's run spends its time, in the terminal summary's order; "load/convert" includes a GGUF's
# one-time de-quantisation, "baseline" the gate's comparison (its figures count under "figures").
PHASES = ("fingerprint", "load/convert", "capture", "statistics", "weights", "figures", "baseline")


class PromptSetWarning(GeomcheckWarning):
    """The two prompt sets are of very different sizes."""


class ChatTemplateWarning(GeomcheckWarning):
    """A model that looks like an instruct/chat model ships no chat template: its prompts are measured raw."""


# names that instruct/chat fine-tunes carry (Qwen2.5-7B-Instruct, Llama-2-7b-chat, gemma-2-9b-it, ...-sft, ...-dpo)
INSTRUCT_NAME = re.compile(r"instruct|chat|(^|[-_.])(it|sft|dpo|rlhf)($|[-_.])", re.IGNORECASE)


@dataclass(frozen=True)
class RunOptions:
    """How to run a model; every field is a pytest option (see ``pytest --help``)."""

    device: str = "cpu"
    dtype: str | None = None
    batch_size: int = 16
    max_prompts: int | None = None
    harmful: str | None = None
    harmless: str | None = None
    position: str = "last"
    chat_template: bool | None = None
    streams: tuple[str, ...] = STREAMS
    n_boot: int = 200
    seed: int = 0
    top_k: int = 16
    device_map: str | None = None
    trust_remote_code: bool = False
    cache_dir: Path = field(default_factory=registry.default_cache_dir)
    control: str | None = None  # the untrained twin run beside each model (--geomcheck-control), if any
    progress: bool = True


class ModelRun:
    """Lazily computed results for one model under one set of options.

    torch and transformers are imported only when the model must run: a fully cached re-run never needs them.
    """

    def __init__(self, model: registry.ModelSpec | str, options: RunOptions, control: str | None = None, name: str | None = None) -> None:
        """``model``: the spec the session resolved at start-up (or a model as given, resolved here); ``name``:
        the model as given, for messages and the record (default: the spec's name, or ``model`` itself).
        ``control="random-init"``: the model's untrained twin (same architecture and tokenizer, fresh
        weights seeded by ``options.seed``), cached apart from the checkpoint by its :attr:`identity`."""
        self.spec = model if isinstance(model, registry.ModelSpec) else registry.resolve(model)
        self.name = name or (model if isinstance(model, str) else model.name)
        self.options = options
        self.control = control
        self.loads = 0
        self.phases: dict[str, float] = dict.fromkeys(PHASES, 0.0)  # wall seconds, each phase's own (see timed)
        self._timing: list[str] = []  # the phases running now, innermost last
        self._measured: dict[str, Any] | None = None
        self.references: dict[str, Arrays] = {}  # activation-cache key -> another run's readings this run paired with

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the block's wall time to ``phase``, less the time of phases nested inside it (the capture
        that first needs the model does not count the load), so the phases add up to the run's time."""
        if phase not in self.phases:
            raise ValueError(f"unknown phase '{phase}'; phases are {', '.join(PHASES)}")
        outer = self._timing[-1] if self._timing else None
        self._timing.append(phase)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self._timing.pop()
            self.phases[phase] += elapsed
            if outer is not None:
                self.phases[outer] -= elapsed

    @cached_property
    def prompts(self) -> dict[str, list[str]]:
        """Both prompt sets, cut to ``max_prompts`` and checked for size."""
        sets = {
            "harmful": resolve_prompts(self.options.harmful, "harmful"),
            "harmless": resolve_prompts(self.options.harmless, "harmless"),
        }
        if self.options.max_prompts is not None:
            sets = {k: v[: self.options.max_prompts] for k, v in sets.items()}
        sizes = {k: len(v) for k, v in sets.items()}
        for name, size in sizes.items():
            if size < MIN_PROMPTS:
                raise ValueError(
                    f"the {name} set has {size} prompt(s); the statistics need at least {MIN_PROMPTS} per set. "
                    f"Add prompts or raise {flag('max-prompts')}."
                )
        if max(sizes.values()) > 2 * min(sizes.values()):
            warnings.warn(
                f"prompt sets differ in size ({sizes['harmful']} harmful vs {sizes['harmless']} harmless): "
                "the smaller set's variance is noisier; use sets of similar size.",
                PromptSetWarning,
                stacklevel=2,
            )
        return sets

    @cached_property
    def chat_template(self) -> bool:
        """Whether prompts go through the tokenizer's chat template. A model named like an instruct model
        without one is warned about (once): its raw prompt is read at its own last word, a different
        position, with different geometry, from the template's last token that the model is used at."""
        if self.options.chat_template is None and not self.spec.chat_template and INSTRUCT_NAME.search(Path(self.spec.name).name):
            warnings.warn(
                f"{self.spec.name} looks like an instruct/chat model but its tokenizer ships no chat template: its prompts are "
                "measured raw, not as the model is used. Give it its template (tokenizer.chat_template, chat_template.jinja; "
                f"a registry entry: fallback_chat_template in models.toml), or pass {flag('no-chat-template')} to measure raw prompts on purpose.",
                ChatTemplateWarning,
                stacklevel=3,  # past functools' cached_property, at the code that asked
            )
        return self.spec.chat_template if self.options.chat_template is None else self.options.chat_template

    @property
    def rendering(self) -> str:
        """Which input the model saw, for the summary and the record."""
        if self.chat_template:
            return "chat template"
        return "raw prompts (--no-chat-template)" if self.options.chat_template is False else "raw prompts (the tokenizer has no chat template)"

    @property
    def dtype(self) -> str:
        return self.options.dtype or self.spec.dtype

    @cached_property
    def fingerprint(self) -> Fingerprint:
        """What the checkpoint is, by content; computed before any model loads, without torch."""
        with self.timed("fingerprint"):
            return of_model(self.spec, Path(self.options.cache_dir))

    @cached_property
    def loaded(self) -> LoadedModel:
        """The model itself: loaded on first use only, counted so tests can assert it happens once.

        A hub model is loaded at the fingerprinted commit, not at its branch; a checkpoint that changed
        while it was loading is refused, since its activations would be stored under the old fingerprint."""
        expected = self.fingerprint
        with self.timed("load/convert"):
            from geomcheck.run import models

            longest = max(len(p) for prompts in self.prompts.values() for p in prompts) // 2 + 64  # ~tokens incl. template
            o = self.options
            models.check_fits(self.spec, self.name, o.dtype, o.device, o.device_map, o.batch_size, longest, o.trust_remote_code)
            self.loads += 1
            with models.library_bars(self.options.progress):  # transformers' and the hub's bars, as ours
                if self.control is not None:
                    return models.load_random_init(
                        self.spec,
                        seed=self.options.seed,
                        device=self.options.device,
                        dtype=self.options.dtype,
                        trust_remote_code=self.options.trust_remote_code,
                        cache_dir=Path(self.options.cache_dir),
                    )
                loaded = models.load(
                    replace(self.spec, revision=expected.revision) if expected.revision else self.spec,
                    device=self.options.device,
                    dtype=self.options.dtype,
                    device_map=self.options.device_map,
                    trust_remote_code=self.options.trust_remote_code,
                    cache_dir=Path(self.options.cache_dir),
                )
        commit = getattr(loaded.model.config, "_commit_hash", None) if expected.revision else None
        with self.timed("fingerprint"):
            changed = of_model(self.spec, Path(self.options.cache_dir)) != expected
        if (commit and commit != expected.revision) or changed:
            raise FingerprintError(
                f"{self.name} changed while it was loading (fingerprinted {expected.revision or expected.weights}, "
                f"loaded {commit or 'other files'}); re-run once the checkpoint is no longer being written."
            )
        return loaded

    @property
    def identity(self) -> dict[str, Any]:
        """What determines the weights: the checkpoint's content digests (weights, tokenizer), the hub
        commit or package version it came from, the dtype, and our version."""
        fingerprint = self.fingerprint
        return {
            "model": self.name,
            "source": self.spec.source,
            "package": fingerprint.package,
            "revision": fingerprint.revision,
            "weights": fingerprint.weights,
            "tokenizer": fingerprint.tokenizer,
            "dtype": self.dtype,
            "geomcheck": geomcheck.__version__,
            # the twin's weights are the seed's, drawn by the device's generator (CPU and CUDA draw differently)
            **({"control": self.control, "control_seed": self.options.seed, "control_device": self.options.device.split(":")[0]} if self.control else {}),
        }

    @property
    def _run_meta(self) -> dict[str, Any]:
        """What this run asks for: the identity and every option that changes the rendered inputs."""
        return {
            **self.identity,
            "device": self.options.device,
            "position": self.options.position,
            "chat_template": self.chat_template,
            "template_date": TEMPLATE_DATE if self.chat_template else None,
            "prompts_hash": prompts_hash(self.prompts["harmful"], self.prompts["harmless"]),
            "n_prompts": {k: len(v) for k, v in self.prompts.items()},
        }

    def measured(self) -> dict[str, Any]:
        """What the run that computed the activations saw: the digests of the exact token ids and of the
        chat template text (``inputs``), and its ``environment`` (torch and transformers versions, attention
        implementation, device type, dtype). Read from the cache entry: a cached re-run reports the run
        that measured its numbers, not itself. A method, not a property: it runs the statistics stage
        (from the cache where it can) when no stage has read an entry yet."""
        if self._measured is None:
            self.geometry
        assert self._measured is not None
        return self._measured

    def meta(self) -> dict[str, Any]:
        """What produced the activations; stored with baselines. Runs the statistics stage if not yet run
        (see :meth:`measured`)."""
        return {**self._run_meta, "files": self.fingerprint.files, **self.measured()}

    @property
    def _activations_key(self) -> dict[str, Any]:
        return self._activations_key_of(self._run_meta)

    def _activations_key_of(self, run_meta: Mapping[str, Any]) -> dict[str, Any]:
        """What the activations of a run described by ``run_meta`` depend on (see :data:`KEYED_SOFTWARE` for
        what is left out, and why)."""
        fields = {k: v for k, v in run_meta.items() if k != "device"}
        return {**fields, "streams": self.options.streams, "software": self._software(), "format": activations.FORMAT}

    def _software(self) -> dict[str, str]:
        """The versions of :data:`KEYED_SOFTWARE` that compute the activations: this machine's (a record's
        run, :mod:`geomcheck.record`, keeps those of the machine that measured it)."""
        return {name: importlib.metadata.version(name) for name in KEYED_SOFTWARE}

    def readings_against(self, meta: Mapping[str, Any]) -> Readings | None:
        """This run's readings beside those of the run a baseline's ``meta`` describes, when this machine's
        activation cache holds the latter (nothing is computed for them): what a paired comparison needs.
        None where the cache lacks them or the prompts differ (no pairing then)."""
        if meta.get("prompts_hash") != self._run_meta["prompts_hash"]:
            return None
        key = cache_key({"kind": "activations", **self._activations_key_of({name: meta.get(name) for name in self._run_meta})})
        arrays = self.reference_arrays(key)
        if arrays is None:
            return None
        source = f"the activation cache ({meta.get('name') or meta.get('model')}, weights {short(meta.get('weights'))})"
        return Readings(activations.from_arrays(arrays).samples, self.capture.samples, source)

    def reference_arrays(self, key: str) -> Arrays | None:
        """Another run's activations (cache ``key``) from this machine's cache; those found are kept in
        :attr:`references`, so a record of this run (:mod:`geomcheck.record`) carries what its gate paired with."""
        if key not in self.references:
            found = ArrayCache(Path(self.options.cache_dir) / "activations").load(key)
            if found is None:
                return None
            arrays = dict(found[0])
            unpack_measured(arrays)
            self.references[key] = arrays
        return self.references[key]

    def _cached(self, kind: str, key: dict[str, Any], compute: Callable[[], Arrays], meta: dict[str, Any]) -> Arrays:
        """Arrays from ``<cache_dir>/<kind>/``, computed (once, under a lock) when no entry matches ``key``."""
        cache = ArrayCache(Path(self.options.cache_dir) / kind)
        arrays, _, _ = cache.get_or_compute(cache_key({"kind": kind, **key}), compute, meta)
        return arrays

    @cached_property
    def capture(self) -> Capture:
        """Activations of both sets, from the cache when an identical run stored them."""

        def compute() -> Arrays:
            from geomcheck.run.capture import NonFiniteActivationError

            loaded = self.loaded
            try:
                result, measured = self._capture(loaded)
            except NonFiniteActivationError as exc:
                raise NonFiniteActivationError(f"{self.spec.name}: {exc}") from exc
            check_complete(result, {name: len(prompts) for name, prompts in self.prompts.items()})
            return {**activations.to_arrays(result), MEASURED: pack_measured(measured)}

        key, meta = self._activations_key, self._run_meta
        with self.timed("capture"):
            arrays = self._cached("activations", key, compute, meta)
            self._measured = unpack_measured(arrays)
            return activations.from_arrays(arrays)

    def _capture(self, loaded: LoadedModel) -> tuple[Capture, dict[str, Any]]:
        """The capture, and what it measured (see :meth:`measured`)."""
        import torch
        import transformers

        from geomcheck.run.capture import capture

        max_length = getattr(loaded.model.config, "max_position_embeddings", None)
        rendered = render(loaded.tokenizer, self.prompts, self.chat_template, max_length)
        result = capture(
            loaded.model,
            rendered.token_ids,
            pad_id=rendered.pad_id,
            streams=self.options.streams,
            position=self.options.position,
            batch_size=self.options.batch_size,
            progress=self.options.progress,
        )
        measured = {
            "inputs": rendered.inputs,
            "environment": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "attn_implementation": getattr(loaded.model.config, "_attn_implementation", None),
                "device": f"device_map={self.options.device_map}" if self.options.device_map else loaded.device.split(":")[0],
                "dtype": str(loaded.dtype).removeprefix("torch."),
            },
        }
        return result, measured

    @cached_property
    def geometry(self) -> Geometry:
        """Statistics of the captured samples with bootstrap intervals (point values only with ``n_boot=0``),
        cached like the activations: a re-run neither loads the model nor repeats the bootstrap."""

        def compute() -> Arrays:
            geometry = geometry_from_samples(self.capture.samples, n_boot=self.options.n_boot, seed=self.options.seed)
            return {**geometry_to_arrays(geometry), MEASURED: pack_measured(self.measured())}

        key = {
            "format": GEOMETRY_FORMAT, "vocabulary": vocabulary.digest(),  # a new or changed statistic is never served stale
            "activations": self._activations_key, "n_boot": self.options.n_boot, "seed": self.options.seed,
        }
        meta = self._run_meta
        with self.timed("statistics"):
            arrays = self._cached("geometry", key, compute, meta)
            self._measured = unpack_measured(arrays)
            return geometry_from_arrays(arrays)

    @cached_property
    def weights(self) -> WeightOverlap:
        """Layers × layers overlap of the top-k output directions, per kind of writing matrix, read from the
        checkpoint's files tensor by tensor: the model is never loaded for it (:mod:`geomcheck.run.checkpoint`)."""

        def compute() -> Arrays:
            from geomcheck.run.checkpoint import checkpoint_writers
            from geomcheck.run.families import residual_writers

            # the untrained twin has no files: its writers are the freshly initialised model's
            writers = residual_writers(self.loaded.model) if self.control else checkpoint_writers(self.checkpoint_location())
            bases: dict[str, list[np.ndarray]] = {}
            for _, kind, weight in writers:
                bases.setdefault(kind, []).append(top_left_singular_vectors(weight, self.options.top_k))
            arrays = {kind: overlap_matrix(b) for kind, b in bases.items()}
            first = next(iter(bases.values()))[0]
            arrays["shape"] = np.array(first.shape, dtype=np.int64)
            return arrays

        # the stored weights alone decide: no tokenizer (a new chat template changes no weight), no --dtype
        # (the files are read as stored)
        key = {k: v for k, v in self.identity.items() if k not in ("tokenizer", "dtype")}
        key = {**key, "top_k": self.options.top_k, "method": TOPK_METHOD}
        identity = self.identity
        with self.timed("weights"):
            arrays = self._cached("weights", key, compute, identity)
        d_model, k = (int(x) for x in arrays.pop("shape"))
        return WeightOverlap(arrays, k=k, d_model=d_model)

    def checkpoint_location(self) -> Path:
        """The checkpoint's weights as files: its directory, or its GGUF file. A hub model not in the local
        cache has its weight files (not the model) fetched at the fingerprinted commit."""
        from geomcheck.run import models

        spec = self.spec
        if spec.local_path or spec.snapshot:
            return Path(spec.local_path or spec.snapshot)  # type: ignore[arg-type]
        if spec.gguf_file:  # a shipped GGUF, or a user's (hub_id is then its path)
            root = models.package_dir(spec) if spec.package else Path(spec.hub_id).parent
            return root / spec.gguf_file
        if spec.package:
            root = models.package_dir(spec)
            return root / spec.subdir if spec.subdir else root
        from huggingface_hub import snapshot_download

        patterns = ["config.json", "*.safetensors", "*.safetensors.index.json"]
        return Path(snapshot_download(spec.hub_id, revision=self.fingerprint.revision, allow_patterns=patterns, cache_dir=os.environ.get("HF_HUB_CACHE") or None))


@dataclass(frozen=True)
class WeightOverlap:
    """Overlap matrices per writer kind (``attn_out``, ``mlp_out``), with the k and d that set chance."""

    matrices: dict[str, np.ndarray]
    k: int
    d_model: int


def pack_measured(measured: dict[str, Any]) -> np.ndarray:
    """What a run measured, as JSON bytes inside its cache entry: known only after the model ran, and
    checksummed with the arrays it describes."""
    return np.frombuffer(json.dumps(measured, sort_keys=True).encode(), dtype=np.uint8).copy()


def unpack_measured(arrays: Arrays) -> dict[str, Any]:
    """Take :func:`pack_measured`'s entry out of ``arrays`` and decode it."""
    return json.loads(bytes(arrays.pop(MEASURED)).decode())
