"""Timing, CPU time, the other processes' share of the cores, and memory, for each method run.

Wall-clock time on a shared machine is only comparable while nobody else is busy, so every timed run also
records the process' own CPU time (``getrusage``, all threads) and the share of the cores that OTHER
processes kept busy meanwhile (the machine's busy time from ``psutil.cpu_times`` minus our own).
Memory is the peak rise of the resident set over the run's start, sampled by a background thread after
``gc`` and glibc ``malloc_trim`` returned what earlier runs freed.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import resource
import statistics
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
import torch

from geomcheck.run.capture import capture
from geomcheck.run.rendering import render

from geomcheck_bench.peers import STREAMS, Context, Method, Readings
from geomcheck_bench.subject import Subject, prompt_sets

try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: freed memory may stay with the process, peaks read a little low
    _LIBC = None


def _release_memory() -> None:
    gc.collect()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PeakMemory:
    """Peak rise of the process' resident set (sampled every `interval` s) over the block."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak_delta = 0

    def __enter__(self) -> PeakMemory:
        _release_memory()
        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_delta = max(self.peak, self._process.memory_info().rss) - self.start


def _machine_busy() -> float:
    """CPU-seconds the whole machine spent busy, all cores."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Timing:
    """One method's timed rounds."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)  # NaN where the run was too short to tell
    rss: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    @property
    def others_max(self) -> float | None:
        known = [x for x in self.others if x == x]
        return max(known) if known else None

    @property
    def peak_rss_mb(self) -> float:
        return max(self.rss) / 2**20


def timed(method: Method, ctx: Context, collect: bool) -> tuple[float, float, float, int, Readings | None]:
    """(wall s, own CPU s, others' share of the cores, peak RSS rise in bytes, readings) of one run."""
    with PeakMemory() as mem:
        busy0, own0, t0 = _machine_busy(), _own_cpu(), time.perf_counter()
        got = method.run(ctx, collect)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall, own = time.perf_counter() - t0, _own_cpu() - own0
        # the machine-wide counters tick every 10 ms: a share over a shorter run means nothing
        others = max(0.0, _machine_busy() - busy0 - own) / (wall * (os.cpu_count() or 1)) if wall >= 0.25 else float("nan")
    return wall, own, others, mem.peak_delta, got


def run_methods(
    ctx: Context, methods: list[Method], warmup: int, repeats: int, log: Callable[[str], None]
) -> tuple[dict[str, Timing | str], dict[str, Readings]]:
    """Warm-up passes, then `repeats` rounds, each running every method once in table order (interleaved,
    so a slow drift of the machine hits all methods alike). Readings come from each method's first pass.
    A method that raises gets the error text instead of a Timing."""
    results: dict[str, Timing | str] = {m.id: Timing() for m in methods}
    readings: dict[str, Readings] = {}
    for step in range(warmup + repeats):
        for m in methods:
            timing = results[m.id]
            if isinstance(timing, str):
                continue
            try:
                wall, cpu, others, rss, got = timed(m, ctx, collect=step == 0)
            except Exception as exc:  # the row says why instead of a time
                traceback.print_exc()
                results[m.id] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
                continue
            if got is not None:
                readings[m.id] = got
            phase = "warm-up" if step < warmup else f"round {step - warmup + 1}/{repeats}"
            log(f"  {phase}: {m.id:15s} {wall:8.3f} s  cpu {cpu:8.3f} s  others {others:5.0%}  RSS +{rss / 2**20:.0f} MB")
            if step >= warmup:
                timing.wall.append(wall)
                timing.cpu.append(cpu)
                timing.others.append(others)
                timing.rss.append(rss)
    return results, readings


def samples_memory(subject: Subject, sizes: list[int], batch_size: int, pool: int) -> list[dict[str, Any]]:
    """geomcheck's capture as the plugin runs it (samples kept) on each number of prompts, cycling the same
    `pool` prompts per set so only the count changes: measured bytes of the samples, and RSS rise."""
    rows = []
    for n in sizes:
        sets = prompt_sets(n, pool)
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            rendered = render(subject.tokenizer, sets, subject.chat_template)  # timed with the capture, as before
            cap = capture(
                subject.model, rendered.token_ids, pad_id=rendered.pad_id, streams=STREAMS, position="last", batch_size=batch_size,
                progress=False,
            )
            seconds = time.perf_counter() - t0
        arrays = [a for per in cap.samples.values() for a in per.values()]
        rows.append({
            "prompts": sum(len(p) for p in sets.values()),
            "seconds": seconds,
            "layers": cap.n_layers,
            "d_model": cap.d_model,
            "streams": len(STREAMS),
            "bytes_per_value": arrays[0].itemsize if arrays else 0,
            "samples_bytes": sum(a.nbytes for a in arrays),
            "peak_rss_mb": mem.peak_delta / 2**20,
        })
        del cap, arrays
    return rows


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import importlib.metadata as md

    import transformers

    cpu_model = platform.processor() or None
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu_model)
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }
    for dist in ("nnsight", "transformer-lens"):
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            info[dist] = None
    return info
