"""A portable record of one model's run: capture where the GPU is, gate where CI is.

``pytest checks/ --model M --geomcheck-record-to DIR`` writes, at the end of the session, one folder per
model, ``DIR/<model>/``, holding everything the checks and the gate read from a model:

* ``readings.safetensors``: every prompt's reading, per prompt set and stream (the activations cache's layout);
* ``geometry.safetensors``: the per-layer statistics with their bootstrap intervals and replicates;
* ``weights.safetensors``: the weight-overlap matrices per writer kind (what the weights check reads);
* ``references.safetensors`` (when there were any): the readings of the baseline's reference run that this
  machine's cache held, so the gate pairs on the CPU machine exactly as on the GPU machine;
* ``record.json``: the format, the checkpoint's fingerprint and identity, the spec it was resolved to, the
  options that decide what was measured, what the run measured (token-id and template digests, torch,
  transformers, device, dtype), the sha256 and array list of each file, and a checksum of itself.

``--model record:DIR/<model>`` then stands in for the model on a machine without its weights or a GPU:
its display name, baseline folder, identity and measured inputs are the recorded ones, so the test ids,
the gate's verdict and its identity report are those of the checkpoint the record was made from. Nothing
in that path imports torch or transformers; the files are safetensors and JSON (nothing is unpickled).

A record is refused, with a message naming the file and the fix, when a file is missing or changed (its
sha256), an array is missing, or the format is another version's; one written by another geomcheck
version of the same format is read with a :class:`RecordWarning`. A session whose options would measure
something else (other prompts, position, streams, dtype, top-k, chat template) is refused at start-up.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as safetensors_bytes

import geomcheck
from geomcheck import atomic
from geomcheck.errors import GeomcheckWarning
from geomcheck.run import activations
from geomcheck.run.cache import Arrays
from geomcheck.run.fingerprint import Fingerprint
from geomcheck.stats.geometry import Geometry, geometry_from_arrays, geometry_to_arrays
from geomcheck.run.pipeline import GEOMETRY_FORMAT, ModelRun, RunOptions, WeightOverlap
from geomcheck.run.prompts import prompts_hash
from geomcheck.run.registry import ModelLoadError, ModelSpec
from geomcheck.stats.weights import TOPK_METHOD

if TYPE_CHECKING:
    from geomcheck.run.activations import Capture

FORMAT = "geomcheck-record/1"  # bump when the layout or the meaning of a field changes
PREFIX = "record:"  # --model record:DIR
MANIFEST = "record.json"
READINGS, GEOMETRY, WEIGHTS, REFERENCES = "readings.safetensors", "geometry.safetensors", "weights.safetensors", "references.safetensors"
SHAPE = "shape"  # weights.safetensors: (d_model, k) of the top-k bases the overlaps were computed from
# What a session must ask as the record was made, or it would read numbers of another measurement:
# RunOptions field -> the flag that sets it (for the message that says what to pass).
MEASURING_OPTIONS = {"harmful": "--harmful", "harmless": "--harmless", "max_prompts": "--max-prompts", "position": "--position",
                     "streams": "--streams", "top_k": "--top-k", "dtype": "--dtype", "chat_template": "--no-chat-template"}


class RecordError(ModelLoadError):
    """A record that cannot be read as what it claims to be (missing, changed, another format) or that does
    not fit the session's options; the message names the file and the fix."""


class RecordWarning(GeomcheckWarning):
    """A record written by another geomcheck version (same format): read, but its numbers may differ in
    what that version computed."""


def is_record(model_arg: str) -> bool:
    return model_arg.startswith(PREFIX)


def record_folder(model_arg: str) -> Path:
    return Path(model_arg.removeprefix(PREFIX)).expanduser()


# --------------------------------------------------------------------------------------------------
# Reading


@dataclasses.dataclass(frozen=True, eq=False)
class Record:
    """A verified record: its manifest and its arrays, by file."""

    folder: Path
    manifest: dict[str, Any]
    arrays: dict[str, Arrays]  # file name -> array name -> array

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(**self.manifest["spec"])

    @property
    def model(self) -> str:
        """The model as given when the record was made (a registry name, hub id or directory)."""
        return str(self.manifest["model"])

    @property
    def baseline(self) -> str:
        """The baseline folder of the recorded model (``baselines/<this>/``)."""
        return str(self.manifest["baseline"])


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _manifest_sha256(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _rewrite_hint(manifest: Mapping[str, Any] | None, folder: Path) -> str:
    model = manifest.get("model", "MODEL") if isinstance(manifest, Mapping) else "MODEL"
    return f"write it again on the machine with the model: pytest checks/ --model {model} --geomcheck-record-to {folder.parent}"


def read(folder: Path | str) -> Record:
    """The record in ``folder``, every file checked against the manifest's sha256 and array list; read
    again only when a file in it changed (a session asks for it at start-up and at each run)."""
    folder = Path(folder).expanduser().resolve()
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        what = "does not exist" if not folder.exists() else f"holds no {MANIFEST}"
        raise RecordError(f"record {folder} {what}: it is not a geomcheck record. Write one on the machine with the model: "
                          f"pytest checks/ --model MODEL --geomcheck-record-to {folder.parent}")
    stamp = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))
    return _read(folder, stamp)


@functools.lru_cache(maxsize=16)
def _read(folder: Path, stamp: tuple[tuple[str, int, int], ...]) -> Record:
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RecordError(f"{manifest_path} is not readable JSON ({exc}); {_rewrite_hint(None, folder)}") from None
    if not isinstance(manifest, dict) or "format" not in manifest:
        raise RecordError(f"{manifest_path} is not a geomcheck record manifest (no 'format'); {_rewrite_hint(None, folder)}")
    if manifest["format"] != FORMAT:
        made_by = manifest.get("geomcheck", "another version")
        raise RecordError(
            f"{manifest_path} is a {manifest['format']!r} record (written by geomcheck {made_by}); this geomcheck "
            f"({geomcheck.__version__}) reads {FORMAT!r} only. Install geomcheck {made_by} to read it, or {_rewrite_hint(manifest, folder)}"
        )
    if manifest.get("sha256") != _manifest_sha256(manifest):
        raise RecordError(f"{manifest_path} was changed after it was written (its checksum does not match); {_rewrite_hint(manifest, folder)}")
    arrays: dict[str, Arrays] = {}
    for name, listed in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise RecordError(f"record file {path} is missing (listed in {MANIFEST}); copy the whole record folder, or {_rewrite_hint(manifest, folder)}")
        if _file_sha256(path) != listed["sha256"]:
            raise RecordError(f"record file {path} was changed after it was written (sha256 differs from {MANIFEST}); {_rewrite_hint(manifest, folder)}")
        with safe_open(str(path), framework="numpy") as handle:
            arrays[name] = {key: handle.get_tensor(key) for key in handle.keys()}
        for key, (dtype, shape) in listed["arrays"].items():
            found = arrays[name].get(key)
            if found is None or found.dtype.str != dtype or list(found.shape) != shape:
                problem = "lacks" if found is None else f"has another dtype or shape ({found.dtype.str} {list(found.shape)}) of"
                raise RecordError(f"record file {path} {problem} the array '{key}' listed in {MANIFEST} ({dtype} {shape}); {_rewrite_hint(manifest, folder)}")
    if manifest.get("geomcheck") != geomcheck.__version__:
        warnings.warn(
            f"{manifest_path} was written by geomcheck {manifest.get('geomcheck')}, this is {geomcheck.__version__}: it is read "
            f"(same format {FORMAT}), but the gate compares numbers that version computed. {_rewrite_hint(manifest, folder)} to be sure.",
            RecordWarning,
            stacklevel=3,
        )
    return Record(folder, manifest, arrays)


# --------------------------------------------------------------------------------------------------
# A record as a model


class RecordedRun(ModelRun):
    """A :class:`ModelRun` whose readings, statistics and weight overlaps come from a record: nothing is
    loaded or fingerprinted, and its identity is the recorded checkpoint's."""

    def __init__(self, name: str, options: RunOptions, folder: Path, control: str | None = None) -> None:
        self.record = read(folder)
        if control is not None:
            raise RecordError(f"--geomcheck-control {control} needs the model itself (its architecture and tokenizer); "
                              f"the record {self.record.folder} holds none. Run the control where the model is.")
        super().__init__(self.record.spec, options, name=name)
        self._measured = self.record.manifest["measured"]
        self.check_options()

    def check_options(self) -> None:
        """Refuse a session whose options would measure something other than the record holds."""
        recorded, meta = self.record.manifest["options"], self.record.manifest["run_meta"]
        asked = {"streams": list(self.options.streams), "top_k": self.options.top_k, "position": self.options.position,
                 "dtype": self.dtype, "chat_template": self.chat_template}
        differ = [f"{name} {asked[name]!r} (record: {recorded[name]!r})" for name in asked if asked[name] != recorded[name]]
        if prompts_hash(self.prompts["harmful"], self.prompts["harmless"]) != meta["prompts_hash"]:
            sizes = {k: len(v) for k, v in self.prompts.items()}
            differ.append(f"prompts {sizes} (record: {meta['n_prompts']}, other prompts or another --max-prompts)")
        if differ:
            raise RecordError(
                f"record {self.record.folder} was measured with other options than this session's: {'; '.join(differ)}. "
                f"Pass the options it was made with ({recorded_flags(recorded) or 'the defaults'}), or record again with these."
            )

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self.record.manifest["identity"])

    @cached_property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(**self.record.manifest["fingerprint"])

    @property
    def _run_meta(self) -> dict[str, Any]:
        return dict(self.record.manifest["run_meta"])

    @property
    def _activations_key(self) -> dict[str, Any]:
        return dict(self.record.manifest["activations_key"])

    def _software(self) -> dict[str, str]:
        return dict(self.record.manifest["activations_key"]["software"])

    @cached_property
    def loaded(self) -> Any:
        raise RecordError(f"{self.record.folder} is a record: it holds readings and statistics, not the model. "
                          "A check that needs the model itself runs where the model is.")

    @cached_property
    def capture(self) -> Capture:
        with self.timed("capture"):
            return activations.from_arrays(self.record.arrays[READINGS])

    @cached_property
    def geometry(self) -> Geometry:
        """The recorded statistics where this session asks the same bootstrap, else recomputed from the
        recorded readings (and cached as any run's)."""
        if self.record.manifest["geometry"] == geometry_settings(self.options):
            with self.timed("statistics"):
                return geometry_from_arrays(self.record.arrays[GEOMETRY])
        return ModelRun.geometry.func(self)  # type: ignore[attr-defined]

    @cached_property
    def weights(self) -> WeightOverlap:
        stored = dict(self.record.arrays[WEIGHTS])
        d_model, k = (int(x) for x in stored.pop(SHAPE))
        return WeightOverlap(stored, k=k, d_model=d_model)

    def reference_arrays(self, key: str) -> Arrays | None:
        """The reference readings the record carries, else this machine's cache."""
        prefix = f"{key}/"
        carried = {name.removeprefix(prefix): a for name, a in self.record.arrays.get(REFERENCES, {}).items() if name.startswith(prefix)}
        return carried or super().reference_arrays(key)

    def checkpoint_location(self) -> Path:
        raise RecordError(f"{self.record.folder} is a record of {self.record.model}: its weights are not here")


def recorded_flags(options: Mapping[str, Any]) -> str:
    """The command-line options that reproduce a record's measuring options."""
    flags = []
    for name, flag in MEASURING_OPTIONS.items():
        value = options.get(name)
        if name == "chat_template":
            flags += [flag] if value is False else []
        elif name == "streams":
            flags += [f"{flag} {','.join(value)}"]
        elif value is not None:
            flags += [f"{flag} {value}"]
    return " ".join(flags)


def geometry_settings(options: RunOptions) -> dict[str, Any]:
    return {"n_boot": options.n_boot, "seed": options.seed, "format": GEOMETRY_FORMAT}


def new_run(model_arg: str, options: RunOptions, spec: ModelSpec | None = None, control: str | None = None, folder: Path | None = None) -> ModelRun:
    """The run of a model as given (resolved to ``spec`` where the session did already): from its record
    (``record:DIR``, or ``folder`` where the session holds one, e.g. a capture that ran elsewhere), else the
    model itself."""
    if folder is not None or is_record(model_arg):
        return RecordedRun(model_arg, options, folder or record_folder(model_arg), control)
    return ModelRun(spec or model_arg, options, control=control, name=model_arg)


# --------------------------------------------------------------------------------------------------
# Writing


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def serialize(run: ModelRun, model_arg: str, baseline: str, baselines: Iterable[Mapping[str, Any]] = ()) -> dict[str, bytes]:
    """``run``'s record as its files' bytes (what a Ray task sends back, :mod:`geomcheck.distributed`); the
    readings of the reference runs of ``baselines`` (their metas) are carried where the cache holds them.
    Deterministic: the same run gives the same bytes (no time stamps)."""
    for meta in baselines:
        run.readings_against(meta)
    weights = run.weights
    arrays: dict[str, Arrays] = {
        READINGS: activations.to_arrays(run.capture),
        GEOMETRY: geometry_to_arrays(as_computed(run.geometry)),
        WEIGHTS: {**weights.matrices, SHAPE: np.array([weights.d_model, weights.k], dtype=np.int64)},
        REFERENCES: {f"{key}/{name}": a for key, found in run.references.items() for name, a in found.items()},
    }
    arrays = {name: {k: np.ascontiguousarray(a) for k, a in found.items()} for name, found in arrays.items() if found}
    files = {name: safetensors_bytes(found) for name, found in arrays.items()}
    options = {name: getattr(run.options, name) for name in MEASURING_OPTIONS if name not in ("dtype", "chat_template")}
    manifest: dict[str, Any] = _plain({
        "format": FORMAT,
        "geomcheck": geomcheck.__version__,
        "model": model_arg,
        "baseline": baseline,
        "spec": dataclasses.asdict(run.spec),
        "fingerprint": dataclasses.asdict(run.fingerprint),
        "identity": run.identity,
        "run_meta": run._run_meta,
        "measured": run.measured(),
        "activations_key": run._activations_key,
        "options": {**options, "streams": list(run.options.streams), "dtype": run.dtype, "chat_template": run.chat_template},
        "geometry": {"n_boot": run.geometry.n_boot, "seed": run.geometry.seed, "format": GEOMETRY_FORMAT},
        "weights": {"k": weights.k, "d_model": weights.d_model, "method": TOPK_METHOD},
        "files": {name: {"sha256": hashlib.sha256(files[name]).hexdigest(), "arrays": {k: [a.dtype.str, list(a.shape)] for k, a in found.items()}}
                  for name, found in arrays.items()},
    })
    manifest["sha256"] = _manifest_sha256(manifest)
    return {**files, MANIFEST: (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()}


def install(files: Mapping[str, bytes], folder: Path) -> Path:
    """Write a record's files to ``folder`` whole or not at all: a temp folder beside it, renamed into place
    (the old record out first, so a reader sees one whole record or, briefly, none)."""
    folder = Path(folder)
    if folder.exists() and not (folder / MANIFEST).is_file():
        raise RecordError(f"{folder} exists and is not a geomcheck record: refusing to replace it. Choose another --geomcheck-record-to.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        for name, data in files.items():
            with open(staging / name, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(staging / name, atomic.READABLE)
        os.chmod(staging, 0o755)
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
            os.replace(folder, old / folder.name)
            os.replace(staging, folder)
            shutil.rmtree(old)
        else:
            os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return folder


def write(run: ModelRun, folder: Path, model_arg: str, baseline: str, baselines: Iterable[Mapping[str, Any]] = ()) -> Path:
    """Write ``run``'s record (:func:`serialize`) to ``folder`` (:func:`install`)."""
    return install(serialize(run, model_arg, baseline, baselines), folder)


def as_computed(geometry: Geometry) -> Geometry:
    """The geometry as computed, without the statistics checks derived on it since (``derive``): read back,
    those would pass for built-in ones and a second ``derive`` of the same name would be refused."""
    kept = geometry.builtin
    return Geometry(geometry.streams, {k: v for k, v in geometry.values.items() if k in kept},
                    {k: v for k, v in geometry.intervals.items() if k in kept}, geometry.n_boot, geometry.seed,
                    geometry.replicates, geometry.centers)
