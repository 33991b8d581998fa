"""Captures on other machines: each model's run as a Ray task, and one GPU per pytest-xdist worker.

geomcheck schedules no GPUs of its own; it plugs into an engine that does. With ``--geomcheck-ray ADDRESS``
(``pip install geomcheck[ray]``) every model of the session is captured as one Ray task
(``ray.remote(num_gpus=N)``, ``--geomcheck-ray-gpus``), all submitted at once when the session first needs a
model; each task runs the model, its statistics and weight overlaps, and sends back the model's record
(:mod:`geomcheck.record`) as bytes through Ray's object store. The session installs each record under
``<artifacts>/records/<model>/`` and runs the checks and the gate on it, as on ``--model record:DIR``.

ADDRESS is ``local`` (start a Ray instance on this machine, without the dashboard), ``auto`` (the cluster this
machine belongs to, as ``ray start`` left it) or a client address ``ray://HEAD:10001``; a Ray already
initialised in this process (``ray.init(...)`` in a conftest) is used as it is. Ray's own scheduling puts each
task on a node with a free GPU and sets its ``CUDA_VISIBLE_DEVICES``, so ``--device cuda`` in the task is the
GPU Ray gave it. The workers need geomcheck and the model (hub access or a shared path); the driver resolves
each ``--model`` at start-up as always.

No torch here: the driver never runs a model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geomcheck.errors import GeomcheckError
from geomcheck.run.pipeline import ModelRun, RunOptions

DEFAULT_GPUS_ON_CUDA = 1.0  # --geomcheck-ray-gpus when not given and --device is a GPU; 0 on the CPU
XDIST_WORKER = re.compile(r"^gw(?P<index>\d+)$")


class RayUnavailableError(GeomcheckError, RuntimeError):
    """``--geomcheck-ray`` without Ray installed, or a cluster that cannot be reached."""


def capture_files(model_arg: str, options: RunOptions, baseline: str) -> dict[str, bytes]:
    """A Ray task's body: ``model_arg`` run where the task landed, returned as its record's files."""
    from geomcheck.run import record

    run = ModelRun(model_arg, options)
    return record.serialize(run, model_arg, baseline)


def connect(address: str) -> Any:
    """The ``ray`` module, initialised on ``address`` (see the module docstring) unless it already is."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailableError("--geomcheck-ray needs Ray: pip install 'geomcheck[ray]' (or pip install 'ray>=2.9')") from exc
    if not ray.is_initialized():
        try:
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayUnavailableError(f"--geomcheck-ray {address}: cannot connect to Ray ({exc}); start it with `ray start --head` "
                                      "or pass local, auto or ray://HEAD:10001") from exc
    return ray


def gpus_per_task(given: float | None, device: str) -> float:
    """``--geomcheck-ray-gpus``, else one GPU per task for a GPU ``--device`` and none for the CPU."""
    if given is not None:
        return given
    return DEFAULT_GPUS_ON_CUDA if device.startswith("cuda") else 0.0


def capture_all(models: Mapping[str, str], options: RunOptions, address: str, gpus: float | None, target: Path) -> dict[str, Path | BaseException]:
    """Every model (as given -> display name) captured as its own Ray task, in parallel; each record installed
    under ``target/<display name>/``. Returns, per model as given, its record's folder, or the error its task
    raised (raised by its checks)."""
    from geomcheck.run import record
    from geomcheck.gate.baseline import baseline_name
    from geomcheck.report.figures import _folder_name

    ray = connect(address)
    task = ray.remote(num_gpus=gpus_per_task(gpus, options.device))(capture_files)
    remote_options = dataclasses.replace(options, progress=False)  # no bars from a remote worker
    pending = {model_arg: task.remote(model_arg, remote_options, baseline_name(model_arg)) for model_arg in models}
    found: dict[str, Path | BaseException] = {}
    for model_arg, ref in pending.items():
        try:
            files: Mapping[str, bytes] = ray.get(ref)
            found[model_arg] = record.install(files, Path(target) / _folder_name(models[model_arg]))
        except Exception as exc:  # the task's own error (Ray wraps it): the model's checks fail with it
            found[model_arg] = exc
    return found


def gpus_option(value: str | None) -> float | None:
    """``--geomcheck-ray-gpus`` as a number of GPUs (a fraction shares one GPU between tasks)."""
    if value is None:
        return None
    try:
        gpus = float(value)
    except ValueError:
        gpus = -1.0
    if not gpus >= 0:
        raise ValueError(f"--geomcheck-ray-gpus = {value!r} is not valid: give the GPUs per Ray task, a number ≥ 0 (0.5 shares a GPU between two tasks)")
    return gpus


def worker_device(device: str, worker: str | None, count: int) -> str:
    """One GPU per pytest-xdist worker: ``--device cuda`` in worker ``gwK`` is ``cuda:K mod count``. An
    explicit index, the CPU, or a plain session keep the device as given."""
    match = XDIST_WORKER.match(worker or "")
    if device != "cuda" or match is None or count < 1:
        return device
    return f"cuda:{int(match['index']) % count}"
