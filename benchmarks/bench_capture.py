#!/usr/bin/env python
"""Benchmark: how fast is ``geomcheck.capture`` next to the floors and the usual alternatives?

One command times, in ONE process, on the SAME prompts, model and batch size::

    python benchmarks/bench_capture.py                      # smollm2-135m, 64 prompts, batch 16, 3 repeats
    python benchmarks/bench_capture.py --model minilm-l6
    python benchmarks/bench_capture.py --model llama-3.2-3b-random --prompts 8 --batch-size 4 \\
        --repeats 1 --warmup 0                              # ~13 GB of float32 weights on CPU
    python benchmarks/bench_capture.py --model qwen2.5-7b-random --device cuda --dtype bfloat16
    python benchmarks/bench_capture.py ... --json out.json  # everything below, machine-readable

Options: ``--model NAME`` (a registry name, a local ``save_pretrained`` directory, or ``<registry
name>-random``: a random-init base model at the registry's published dimensions, tokenised with the
smollm2-135m tokenizer and chat template), ``--prompts N`` (N/2 harmful + N/2 harmless built-in prompts,
cycled when N/2 exceeds a set), ``--batch-size``, ``--repeats``, ``--warmup`` (untimed passes per method,
default 1), ``--device cpu|cuda``, ``--dtype``, ``--threads`` (torch intra-op threads; default: torch's),
``--methods`` (comma list of ids, default all), ``--wait-idle S`` (see Protocol), ``--memory-prompts 64,1024`` (accumulator-memory test;
``none`` skips it), ``--extra-site DIR`` (see TransformerLens / nnsight below), ``--json PATH``.

Methods (rows of the table; ids in brackets)
-------------------------------------------
* ``tokenize``: ``geomcheck.capture.tokenize`` of both sets (chat template), nothing else. Every other
  floor below starts from these ids; geomcheck's own capture tokenises inside, so its time includes this.
* ``naive``: naive floor. The bare base-model forward, no hooks, over every token, batches built exactly
  as geomcheck builds them (``geomcheck.capture.batches``: per prompt set, length-sorted, right-padded),
  ``model(input_ids, attention_mask, use_cache=False)`` under ``torch.inference_mode()``.
* ``unique``: unique-token floor. The key/value cache of the longest common token prefix of ALL prompts
  (capped at shortest prompt - 1 tokens, so each prompt keeps one token) is computed once
  (``model(prefix, use_cache=True).cache``); each batch gets a ``copy.deepcopy`` of it,
  ``batch_repeat_interleave(B)``, and runs only its suffix tokens (right-padded) with an attention mask
  over prefix + suffix and ``position_ids`` offset by the prefix length. The prefix forward and the cache
  copies are inside the timing. Its last-real-token final hidden state is checked against ``naive``
  (max |diff| <= 1e-4, printed). Impossible for a bidirectional encoder (BERT): N/A there.
* ``geomcheck``: ``geomcheck.capture.capture(model, tokenizer, {"harmful": h, "harmless": n},
  streams=("pre","mid","post"), position="last", batch_size=B, chat_template=<model's>,
  keep_samples=False, progress=False)`` as shipped. If ``capture`` has a ``prefix_reuse`` keyword, both
  ``prefix_reuse=False`` (``geomcheck``) and ``prefix_reuse=True`` (``geomcheck_prefix``) are timed; the
  keyword's default is "as shipped", and is what "geomcheck" means in the ratios.
* ``hf_hidden_base``: the base model with ``output_hidden_states=True``, last token of every layer picked.
  Gives ``pre``/``post`` only (HF has no ``mid``).
* ``hf_hidden_causal``: what users write by hand: ``*ForCausalLM`` with ``output_hidden_states=True``.
  The CausalLM is built on the meta device from the same config and the base model's tensors are
  assigned into ``.model`` (shared, no copy); ``lm_head`` is tied to the input embedding (SmolLM2 and
  Llama-3.2 tie them; for untied models it is the same shape and cost). It computes the vocabulary
  logits of every token. BERT: N/A (the base BertModel row is the comparison).
* ``nnsight``: ``nnsight.LanguageModel(causal_lm, tokenizer=tok)``; one ``.trace`` per batch that
  ``.save()``s the last-token slice of every pre/mid/post site (the same modules geomcheck hooks).
  BERT: ``LanguageModel(BertModel)`` fails (it builds a text-generation pipeline), so the generic
  ``nnsight.NNsight(bert_model)`` is used; BERT's submodules named ``output`` are reached by child name.
* ``tl``: TransformerLens 4.x ``TransformerBridge.boot_transformers(hub_id, hf_model=causal_lm,
  tokenizer=tok)`` (the 3.x ``HookedTransformer`` was removed in 4.0), then ``run_with_cache(ids,
  attention_mask=mask, names_filter=<hook_resid_pre/mid/post>)`` per batch, last tokens picked. The
  bridge switches its model to eager attention; it gets its own CausalLM wrapper (own config, shared
  weight tensors), so the other rows keep SDPA. BERT: the bridge's adapter needs ``BertForMaskedLM``;
  all-MiniLM-L6-v2 has no MLM head, so the wrapper's head is freshly initialised (logits only). Its
  ``hook_resid_mid`` is not geomcheck's BERT ``mid`` (the checks show it); ``pre``/``post`` agree.

nnsight and TransformerLens are not dependencies of geomcheck. Install them into a SEPARATE venv that
sees this one's packages, so pip can never touch torch here, and point ``--extra-site`` at it (its
site-packages are APPENDED to ``sys.path``: this venv's torch/transformers always win)::

    /work/main/.venv/bin/python -m venv /tmp/bench-extra-venv
    echo "import site; site.addsitedir('/work/main/.venv/lib/python3.11/site-packages')" \\
        > /tmp/bench-extra-venv/lib/python3.11/site-packages/zz_main_venv.pth
    /tmp/bench-extra-venv/bin/pip install nnsight transformer-lens     # torch stays 2.13 (pip cap)
    python benchmarks/bench_capture.py --extra-site /tmp/bench-extra-venv/lib/python3.11/site-packages

Where one cannot be imported or cannot wrap the model, the row says why (the exception) instead of a time.

Protocol
--------
Warm-up: ``--warmup`` untimed passes of every method (the first one also collects the readings used for
the correctness checks). Then ``--repeats`` rounds; each round runs every method once, in table order
(interleaved, so slow drift of the machine hits all methods alike). Median, min and max over rounds are
reported, in seconds for the whole prompt set (both sets). ``× naive`` is median / naive median.

Each run also records the process' CPU time (``getrusage``: user + system, all threads) and the share of
the cores that OTHER processes kept busy meanwhile (``psutil.cpu_times`` of the machine minus our own).
On a shared machine wall-clock times are only comparable when that share is ~0%; CPU-time ratios are the
more robust comparison. ``--wait-idle S`` waits up to S seconds before each timed run for the others'
share to fall below 15%. On a busy 2-core machine run with ``--threads 1``: with 2 OpenMP threads and
other processes competing for the cores, every forward stalls at thread barriers (measured here: the
135M model's naive floor took ~6 s with 2 threads vs ~1.7 s with 1 while a test suite ran alongside).

Memory
------
CPU: ``peak RSS Δ MB`` is the largest increase of the process' resident set size over its value at the
start of the run, sampled with ``psutil`` every 2 ms by a background thread (``resource.getrusage``
max RSS is a process-lifetime high-water mark, so deltas of it only show new records; it is printed once
for the whole run). ``gc.collect()`` and glibc ``malloc_trim(0)`` run before each measurement so memory
freed by an earlier method is returned to the OS and not silently reused. The maximum over the timed
rounds is reported. CUDA (``--device cuda``): ``peak GPU MB`` is ``torch.cuda.max_memory_allocated()``
minus ``torch.cuda.memory_allocated()`` at the start (peak stats reset per run); RSS is still shown.

Accumulator memory (``--memory-prompts 64,1024``): geomcheck capture (as shipped) with ``keep_samples=False``
on each number of prompts, cycling the same first ``--prompts``/2 prompts of each set (so every batch has
the same shape and only the count changes), plus the largest number once more cycling the whole built-in
sets (longer prompts, so wider batches); reports time, peak RSS Δ, the accumulator bytes
(``sum(m.mean.nbytes + m.m2.nbytes)``) and the peak of numpy/Python heap allocations seen by
``tracemalloc`` (numpy reports its buffers to tracemalloc; torch's CPU allocator does not), which shows
every numpy buffer ``capture`` allocates, touched or not. Time under tracemalloc is slower; it is shown
for orientation only. Default: ``64,1024`` for the embedded models, skipped for ``*-random`` models.

Reference results (AMD EPYC, 2 cores, torch 2.13 CPU, transformers 5.24; 64 prompts, batch 16, float32)
---------------------------------------------------------------------------------------------------
smollm2-135m, idle machine, 2 threads (``--wait-idle 60``): naive floor 4.16 s, unique-token floor 2.24 s
(24-token shared chat-template prefix, 59% of real tokens), geomcheck as shipped (prefix reuse) 2.37 s =
0.57× naive = 1.06× unique floor; prefix_reuse=False 1.03× naive; CausalLM output_hidden_states 5.36 s
(2.26× geomcheck), nnsight 5.46 s, TransformerLens 5.46 s. minilm-l6 (1 thread): geomcheck 1.05-1.08×
naive (no prefix reuse for an encoder). llama-3.2-3b-random (8 prompts, batch 4, 1 thread): geomcheck
0.67× naive, 1.01× unique floor. Accumulator: 1.66 MB (smollm2) for 64 and 1,024 prompts alike.

Output: machine info, prompt/token statistics, correctness checks, the markdown table, the explicit ratios
(geomcheck / naive floor, geomcheck / unique-token floor, output_hidden_states (CausalLM) / geomcheck),
the accumulator-memory table, and with ``--json`` the same as JSON.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import inspect
import json
import os
import platform
import resource
import site
import statistics
import sys
import threading
import time
import traceback
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import geomcheck.models as gm  # noqa: E402
from geomcheck.capture import batches, capture, tokenize  # noqa: E402
from geomcheck.prompts import builtin_prompts  # noqa: E402
from geomcheck.families import find_sites  # noqa: E402

STREAMS = ("pre", "mid", "post")
METHOD_ORDER = (
    "tokenize",
    "naive",
    "unique",
    "geomcheck",
    "geomcheck_prefix",
    "hf_hidden_base",
    "hf_hidden_causal",
    "nnsight",
    "tl",
)
LABELS = {
    "tokenize": "tokenize only (chat template)",
    "naive": "naive floor: base forward, no hooks",
    "unique": "unique-token floor: shared-prefix KV reuse",
    "geomcheck": "geomcheck capture (as shipped)",
    "geomcheck_prefix": "geomcheck capture prefix_reuse=True",
    "hf_hidden_base": "HF output_hidden_states, base model",
    "hf_hidden_causal": "HF output_hidden_states, CausalLM",
    "nnsight": "nnsight trace + save (last token)",
    "tl": "TransformerLens run_with_cache",
}


# --------------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------------

try:
    import psutil
except ImportError:  # pragma: no cover - the brief installs it
    psutil = None

_LIBC = None
try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:
    pass


def release_memory(device: str) -> None:
    gc.collect()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def rss_bytes() -> int:
    if psutil is not None:
        return psutil.Process().memory_info().rss
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak RSS increase (sampled every `interval` s) and, on CUDA, peak allocated GPU bytes."""

    def __init__(self, device: str, interval: float = 0.002) -> None:
        self.device = device
        self.interval = interval
        self.peak_rss_delta = 0
        self.peak_gpu_delta: int | None = None

    def __enter__(self) -> PeakMemory:
        release_memory(self.device)
        self.start_rss = rss_bytes()
        self.peak = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_gpu = torch.cuda.memory_allocated()
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            value = rss_bytes()
            if value > self.peak:
                self.peak = value
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_gpu_delta = torch.cuda.max_memory_allocated() - self.start_gpu
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.peak_rss_delta = self.peak - self.start_rss


# --------------------------------------------------------------------------------------------------
# model and prompts
# --------------------------------------------------------------------------------------------------


@dataclass
class Subject:
    name: str
    model: torch.nn.Module
    tokenizer: Any
    chat_template: bool
    hub_id: str
    is_encoder: bool
    notes: list[str] = field(default_factory=list)


def load_subject(name: str, device: str, dtype: str | None) -> Subject:
    if name.endswith("-random"):
        return random_subject(name, device, dtype)
    spec = gm.resolve(name)
    loaded = gm.load(spec, device=device, dtype=dtype)
    model_type = getattr(loaded.model.config, "model_type", "")
    return Subject(name, loaded.model, loaded.tokenizer, spec.chat_template, spec.hub_id, model_type == "bert")


def random_subject(name: str, device: str, dtype: str | None) -> Subject:
    """Random-init base model at a registry entry's published dimensions; smollm2 tokenizer + template."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    spec = gm.resolve(name[: -len("-random")])
    if not spec.config:
        raise SystemExit(f"registry entry '{spec.name}' has no published dimensions ([config] table)")
    torch_dtype = gm.parse_dtype(dtype, spec) if dtype else torch.float32
    values = dict(spec.config)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=torch_dtype)
    model.eval()
    build_s = time.perf_counter() - t0
    tok_spec = gm.resolve("smollm2-135m")
    tok_dir = gm.converted_copy(tok_spec, gm.package_dir(tok_spec), gm.default_cache_dir())
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    n_params = sum(p.numel() for p in model.parameters())
    notes = [
        f"random init (seed 0) of {spec.hub_id} dimensions: {n_params / 1e9:.2f} B parameters, "
        f"{n_params * torch.empty((), dtype=torch_dtype).element_size() / 2**30:.1f} GiB in {torch_dtype}, "
        f"built in {build_s:.0f} s",
        f"token ids from the smollm2-135m tokenizer and chat template (vocab {len(tokenizer)} < "
        f"{config.vocab_size}, so no id needs clipping; checked)",
    ]
    return Subject(name, model, tokenizer, True, spec.hub_id, False, notes)


def prompt_sets(n: int, pool_size: int | None = None) -> dict[str, list[str]]:
    """n/2 harmful + n/2 harmless built-in prompts, cycling through the first `pool_size` of each set
    (default: the whole set)."""
    half = n // 2
    out = {}
    for name in ("harmful", "harmless"):
        pool = builtin_prompts(name)[:pool_size]
        out[name] = [pool[i % len(pool)] for i in range(half)]
    return out


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def last_index(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum(dim=1) - 1


# --------------------------------------------------------------------------------------------------
# the methods
# --------------------------------------------------------------------------------------------------


@dataclass
class Context:
    subject: Subject
    sets: dict[str, list[str]]
    ids: dict[str, list[list[int]]]
    batch_size: int
    device: str
    prefix: list[int]
    n_layers: int
    d_model: int
    causal: torch.nn.Module | None = None
    nn_model: Any = None
    nn_paths: dict[str, list[tuple[str, str]]] | None = None
    tl_bridge: Any = None
    geomcheck_has_prefix_reuse: bool = False


Readings = dict[str, dict[str, np.ndarray]]  # set -> key -> (prompts, ...) array


def _store(out: dict, set_name: str, key: str, n: int, idx: list[int], value: torch.Tensor) -> None:
    arr = out.setdefault(set_name, {}).get(key)
    if arr is None:
        arr = np.zeros((n, *value.shape[1:]), np.float32)
        out[set_name][key] = arr
    arr[idx] = value.detach().to("cpu", torch.float32).numpy()


def run_tokenize(ctx: Context, collect: bool) -> Readings | None:
    for prompts in ctx.sets.values():
        tokenize(ctx.subject.tokenizer, prompts, ctx.subject.chat_template)
    return None


def run_naive(ctx: Context, collect: bool) -> Readings | None:
    model = ctx.subject.model
    dev = model_device(model)
    extra = {} if ctx.subject.is_encoder else {"use_cache": False}
    out: Readings = {}
    with torch.inference_mode():
        for name, ids in ctx.ids.items():
            for b in batches(ids, ctx.batch_size, pad_id(ctx.subject.tokenizer)):
                mask = b.attention_mask.to(dev)
                o = model(input_ids=b.input_ids.to(dev), attention_mask=mask, **extra)
                if collect:
                    rows = torch.arange(len(b.indices), device=dev)
                    _store(out, name, "final", len(ids), b.indices, o.last_hidden_state[rows, last_index(mask)])
    sync(ctx.device)
    return out if collect else None


def _cache_kwarg(model: torch.nn.Module) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def run_unique(ctx: Context, collect: bool) -> Readings | None:
    model = ctx.subject.model
    dev = model_device(model)
    p = len(ctx.prefix)
    kw = _cache_kwarg(model)
    out: Readings = {}
    with torch.inference_mode():
        first = model(input_ids=torch.tensor([ctx.prefix], device=dev), use_cache=True)
        prefix_cache = getattr(first, "cache", None) or getattr(first, "past_key_values", None)
        for name, ids in ctx.ids.items():
            for b in batches(ids, ctx.batch_size, pad_id(ctx.subject.tokenizer)):
                n = len(b.indices)
                suffix = b.input_ids[:, p:].to(dev)
                suffix_mask = b.attention_mask[:, p:].to(dev)
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(n)
                mask = torch.cat([torch.ones((n, p), dtype=suffix_mask.dtype, device=dev), suffix_mask], dim=1)
                positions = torch.arange(p, p + suffix.shape[1], device=dev).unsqueeze(0).expand(n, -1)
                o = model(input_ids=suffix, attention_mask=mask, position_ids=positions, use_cache=True, **{kw: cache})
                if collect:
                    rows = torch.arange(n, device=dev)
                    _store(out, name, "final", len(ids), b.indices, o.last_hidden_state[rows, last_index(suffix_mask)])
    sync(ctx.device)
    return out if collect else None


def _geomcheck(ctx: Context, collect: bool, **kw) -> Readings | None:
    cap = capture(
        ctx.subject.model,
        ctx.subject.tokenizer,
        ctx.sets,
        streams=STREAMS,
        position="last",
        batch_size=ctx.batch_size,
        chat_template=ctx.subject.chat_template,
        keep_samples=False,
        progress=False,
        **kw,
    )
    sync(ctx.device)
    if not collect:
        return None
    return {name: {f"mean:{s}": m.mean.astype(np.float32) for s, m in per.items()} for name, per in cap.moments.items()}


def run_geomcheck(ctx: Context, collect: bool) -> Readings | None:
    if ctx.geomcheck_has_prefix_reuse:
        return _geomcheck(ctx, collect, prefix_reuse=False)
    return _geomcheck(ctx, collect)


def run_geomcheck_prefix(ctx: Context, collect: bool) -> Readings | None:
    return _geomcheck(ctx, collect, prefix_reuse=True)


def _hidden_states(ctx: Context, model: torch.nn.Module, collect: bool, extra: dict) -> Readings | None:
    dev = model_device(model)
    out: Readings = {}
    with torch.inference_mode():
        for name, ids in ctx.ids.items():
            for b in batches(ids, ctx.batch_size, pad_id(ctx.subject.tokenizer)):
                mask = b.attention_mask.to(dev)
                o = model(input_ids=b.input_ids.to(dev), attention_mask=mask, output_hidden_states=True, **extra)
                rows = torch.arange(len(b.indices), device=dev)
                last = last_index(mask)
                # what users write: every layer's hidden state at the last real token
                picked = torch.stack([h[rows, last] for h in o.hidden_states], dim=1)
                if collect:
                    _store(out, name, "hidden", len(ids), b.indices, picked)
    sync(ctx.device)
    return out if collect else None


def run_hf_hidden_base(ctx: Context, collect: bool) -> Readings | None:
    extra = {} if ctx.subject.is_encoder else {"use_cache": False}
    return _hidden_states(ctx, ctx.subject.model, collect, extra)


def run_hf_hidden_causal(ctx: Context, collect: bool) -> Readings | None:
    assert ctx.causal is not None
    return _hidden_states(ctx, ctx.causal, collect, {"use_cache": False})


def _envoy(root: Any, path: str) -> Any:
    """The nnsight envoy of a dotted module path. By child name, not attribute: BERT's submodules named
    ``output`` clash with nnsight's ``.output`` (nnsight renames them ``.E_output``)."""
    env = root
    for part in path.split("."):
        children = dict(env._named_children())
        env = children[part] if part in children else (env[int(part)] if part.isdigit() else getattr(env, part))
    return env


def run_nnsight(ctx: Context, collect: bool) -> Readings | None:
    assert ctx.nn_model is not None and ctx.nn_paths is not None
    out: Readings = {}
    dev = model_device(ctx.subject.model)
    for name, ids in ctx.ids.items():
        for b in batches(ids, ctx.batch_size, pad_id(ctx.subject.tokenizer)):
            input_ids, mask = b.input_ids.to(dev), b.attention_mask.to(dev)
            rows = torch.arange(len(b.indices), device=dev)
            last = last_index(mask)
            saved: dict[str, list] = {s: [] for s in STREAMS}
            if ctx.subject.is_encoder:  # generic NNsight: arguments go to forward as they are
                tracer = ctx.nn_model.trace(input_ids, attention_mask=mask)
            else:  # LanguageModel: pre-tokenised batch as a dict
                tracer = ctx.nn_model.trace({"input_ids": input_ids, "attention_mask": mask})
            with torch.inference_mode(), tracer:
                for layer in range(ctx.n_layers):  # execution order: pre, mid, post of each layer
                    for stream in STREAMS:
                        path, read = ctx.nn_paths[stream][layer]
                        env = _envoy(ctx.nn_model, path)
                        value = env.input if read == "input" else env.output
                        if isinstance(value, tuple):
                            value = value[0]
                        saved[stream].append(value[rows, last].save())
            if collect:
                for stream in STREAMS:
                    _store(out, name, stream, len(ids), b.indices, torch.stack(list(saved[stream]), dim=1))
    sync(ctx.device)
    return out if collect else None


TL_NAMES = tuple(f"hook_resid_{s}" for s in STREAMS)


def run_tl(ctx: Context, collect: bool) -> Readings | None:
    bridge = ctx.tl_bridge
    out: Readings = {}
    dev = model_device(ctx.subject.model)
    with torch.inference_mode():
        for name, ids in ctx.ids.items():
            for b in batches(ids, ctx.batch_size, pad_id(ctx.subject.tokenizer)):
                input_ids, mask = b.input_ids.to(dev), b.attention_mask.to(dev)
                _, cache = bridge.run_with_cache(input_ids, attention_mask=mask, names_filter=lambda n: n.endswith(TL_NAMES))
                rows = torch.arange(len(b.indices), device=dev)
                last = last_index(mask)
                picked = {
                    s: torch.stack([cache[f"blocks.{l}.hook_resid_{s}"][rows, last] for l in range(ctx.n_layers)], dim=1)
                    for s in STREAMS
                }
                del cache
                if collect:
                    for s in STREAMS:
                        _store(out, name, s, len(ids), b.indices, picked[s])
    sync(ctx.device)
    return out if collect else None


RUNNERS: dict[str, Callable[[Context, bool], Readings | None]] = {
    "tokenize": run_tokenize,
    "naive": run_naive,
    "unique": run_unique,
    "geomcheck": run_geomcheck,
    "geomcheck_prefix": run_geomcheck_prefix,
    "hf_hidden_base": run_hf_hidden_base,
    "hf_hidden_causal": run_hf_hidden_causal,
    "nnsight": run_nnsight,
    "tl": run_tl,
}


# --------------------------------------------------------------------------------------------------
# set-up of the optional methods
# --------------------------------------------------------------------------------------------------


def head_wrapper(model: torch.nn.Module, masked_lm: bool = False) -> torch.nn.Module:
    """A *ForCausalLM (or *ForMaskedLM) of the same config whose body IS the base model's tensors.

    Built on the meta device; the base model's parameters and buffers are assigned (not copied) into its
    body. Its own config object (deep copy), so switching its attention implementation (TransformerLens
    does) does not switch the base model's. A causal ``lm_head`` is tied to the input embedding; any
    other head tensor the base model lacks (BERT's MLM transform) is freshly initialised: it only
    affects the logits, never the residual stream.
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if masked_lm else AutoModelForCausalLM
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    with torch.device("meta"):
        wrapper = auto.from_config(copy.deepcopy(model.config), dtype=dtype)
    body = wrapper.base_model_prefix
    state = {f"{body}.{k}": v for k, v in model.state_dict().items()}
    if not masked_lm:
        state["lm_head.weight"] = state[f"{body}.embed_tokens.weight"]
    _, unexpected = wrapper.load_state_dict(state, strict=False, assign=True)
    unexpected = [k for k in unexpected if not k.startswith(f"{body}.pooler.")]  # BERT's MLM model has no pooler
    if unexpected:
        raise RuntimeError(f"head wrapper: unexpected tensors {unexpected[:5]}")
    base_buffers = dict(model.named_buffers())
    base_modules = dict(model.named_modules())
    for mod_name, mod in wrapper.named_modules():
        for leaf, buf in list(mod._buffers.items()):
            if buf is not None and buf.is_meta:  # buffers outside the state dict (rotary inv_freq, position_ids)
                mod._buffers[leaf] = base_buffers[f"{mod_name}.{leaf}".split(".", 1)[1]]
        for attr in ("original_inv_freq",):
            value = getattr(mod, attr, None)
            if isinstance(value, torch.Tensor) and value.is_meta:
                setattr(mod, attr, getattr(base_modules[mod_name.split(".", 1)[1]], attr))
        for leaf, param in list(mod._parameters.items()):
            if param is not None and param.is_meta:  # head-only tensors: fresh init
                if leaf == "bias":
                    value = torch.zeros(param.shape, dtype=dtype, device=device)
                elif "norm" in mod_name.lower():
                    value = torch.ones(param.shape, dtype=dtype, device=device)
                else:
                    value = torch.randn(param.shape, dtype=dtype, device=device) * 0.02
                mod._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
    if masked_lm:  # re-tie shared head tensors (decoder.bias is predictions.bias)
        wrapper.tie_weights() if hasattr(wrapper, "tie_weights") else None
    leftover = [n for n, t in list(wrapper.named_parameters(remove_duplicate=False)) + list(wrapper.named_buffers(remove_duplicate=False)) if t.is_meta]
    if leftover:
        raise RuntimeError(f"head wrapper incomplete: meta tensors {leftover[:5]}")
    wrapper.eval()
    return wrapper


def site_paths(model: torch.nn.Module, root: Any, prefix: str) -> dict[str, list[tuple[str, str]]]:
    """geomcheck's read sites as dotted module paths, `prefix` + the path inside the base model."""
    names = {id(m): n for n, m in model.named_modules()}
    sites = find_sites(model, STREAMS)
    return {s: [(f"{prefix}{names[id(site.module)]}", site.read) for site in v] for s, v in sites.items()}


def setup_nnsight(ctx: Context) -> None:
    import warnings

    from nnsight import LanguageModel, NNsight

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if ctx.subject.is_encoder:
            # LanguageModel(BertModel) fails (it builds a text-generation pipeline); the generic NNsight wraps it
            ctx.nn_model = NNsight(ctx.subject.model)
            prefix = ""
        else:
            target = head_wrapper(ctx.subject.model)
            ctx.nn_model = LanguageModel(target, tokenizer=ctx.subject.tokenizer)
            prefix = f"{target.base_model_prefix}."
    ctx.nn_paths = site_paths(ctx.subject.model, None, prefix)


def setup_tl(ctx: Context) -> None:
    from transformer_lens.model_bridge import TransformerBridge

    before = ctx.subject.model.config._attn_implementation
    # TransformerLens' BERT adapter wants BertForMaskedLM (it looks for `.bert`); all-MiniLM-L6-v2 ships no
    # MLM head, so the wrapper's head is freshly initialised (it changes only the logits).
    target = head_wrapper(ctx.subject.model, masked_lm=ctx.subject.is_encoder)
    dtype = next(ctx.subject.model.parameters()).dtype
    ctx.tl_bridge = TransformerBridge.boot_transformers(
        ctx.subject.hub_id, hf_model=target, tokenizer=ctx.subject.tokenizer, device=ctx.device, dtype=dtype
    )
    after = ctx.subject.model.config._attn_implementation
    if after != before:
        raise RuntimeError(f"TransformerLens switched the shared base model from {before} to {after}")


# --------------------------------------------------------------------------------------------------
# correctness checks (warm-up readings)
# --------------------------------------------------------------------------------------------------


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def checks(ctx: Context, got: dict[str, Readings]) -> dict[str, Any]:
    """Each method against the others, on the warm-up readings."""
    result: dict[str, Any] = {}
    tol = 1e-4 if next(ctx.subject.model.parameters()).dtype == torch.float32 else 2e-2
    naive, unique = got.get("naive"), got.get("unique")
    if naive and unique:
        diff = max(max_diff(naive[s]["final"], unique[s]["final"]) for s in naive)
        scale = max(float(np.abs(naive[s]["final"]).max()) for s in naive)
        result["unique_vs_naive_final_last_token_max_abs_diff"] = diff
        result["unique_vs_naive_max_abs_value"] = scale
        result["unique_vs_naive_max_rel_diff"] = diff / max(scale, 1e-12)
        # float32 on CPU: absolute 1e-4 (the brief); half precision: relative 2e-2 of the largest value
        result["unique_vs_naive_ok"] = diff <= tol if tol == 1e-4 else diff / max(scale, 1e-12) <= tol
        result["tolerance"] = f"{tol:g} {'absolute' if tol == 1e-4 else 'relative'}"
    ref = got.get("geomcheck")
    if ref:
        for method in ("geomcheck_prefix", "nnsight", "tl"):
            other = got.get(method)
            if not other:
                continue
            for s in STREAMS:
                diffs = []
                for name in ref:
                    if method == "geomcheck_prefix":
                        o = other[name][f"mean:{s}"]
                    else:
                        o = other[name][s].astype(np.float64).mean(axis=0)
                    diffs.append(max_diff(ref[name][f"mean:{s}"], o) / max(1e-12, float(np.abs(ref[name][f"mean:{s}"]).max())))
                result[f"{method}_vs_geomcheck_{s}_mean_max_rel_diff"] = max(diffs)
        for method in ("hf_hidden_base", "hf_hidden_causal"):
            other = got.get(method)
            if not other:
                continue
            # hidden_states[l] (l < n_layers) is the input of layer l, i.e. geomcheck's "pre"
            diffs = []
            for name in ref:
                o = other[name]["hidden"][:, : ctx.n_layers].astype(np.float64).mean(axis=0)
                diffs.append(max_diff(ref[name]["mean:pre"], o) / max(1e-12, float(np.abs(ref[name]["mean:pre"]).max())))
            result[f"{method}_vs_geomcheck_pre_mean_max_rel_diff"] = max(diffs)
    return result


# --------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------


def common_prefix(seqs: list[list[int]]) -> list[int]:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    k = 0
    while k < n and all(s[k] == first[k] for s in seqs):
        k += 1
    return first[:k]


def token_stats(ctx: Context) -> dict[str, Any]:
    pad = pad_id(ctx.subject.tokenizer)
    real = sum(len(s) for ids in ctx.ids.values() for s in ids)
    padded = sum(b.input_ids.numel() for ids in ctx.ids.values() for b in batches(ids, ctx.batch_size, pad))
    n = sum(len(ids) for ids in ctx.ids.values())
    lengths = [len(s) for ids in ctx.ids.values() for s in ids]
    p = len(ctx.prefix)
    out = {
        "prompts": n,
        "min_len": min(lengths),
        "max_len": max(lengths),
        "mean_len": real / n,
        "real_tokens": real,
        "padded_tokens_naive": padded,
        "shared_prefix_len": p,
    }
    if p:
        unique_real = real - (n - 1) * p
        unique_padded = p + padded - sum(
            len(b.indices) * p for ids in ctx.ids.values() for b in batches(ids, ctx.batch_size, pad)
        )
        out.update(
            real_tokens_unique=unique_real,
            padded_tokens_unique=unique_padded,
            real_token_fraction_saved=1 - unique_real / real,
            padded_token_fraction_saved=1 - unique_padded / padded,
        )
    return out


def machine_info(device: str) -> dict[str, Any]:
    import transformers

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count_os": os.cpu_count(),
        "cpu_count_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1) if psutil else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    for mod in ("nnsight", "transformer_lens"):
        try:
            import importlib.metadata as md

            info[mod] = md.version(mod.replace("_", "-"))
        except Exception:
            info[mod] = None
    return info


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def fmt_err(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:400]


def _system_busy() -> float:
    """CPU-seconds the whole machine spent busy (all cores)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def others_share(window: float = 0.5) -> float:
    """Share of the usable cores that OTHER processes kept busy over `window` seconds."""
    b0, o0, t0 = _system_busy(), _own_cpu(), time.perf_counter()
    time.sleep(window)
    b1, o1, t1 = _system_busy(), _own_cpu(), time.perf_counter()
    return max(0.0, (b1 - b0) - (o1 - o0)) / ((t1 - t0) * (os.cpu_count() or 1))


def wait_idle(limit_s: float, threshold: float = 0.15) -> float:
    """Wait (at most `limit_s`) until other processes use < `threshold` of the cores; returns seconds waited."""
    start = time.perf_counter()
    while limit_s > 0 and time.perf_counter() - start < limit_s:
        if others_share() < threshold:
            break
    return time.perf_counter() - start


def run_methods(ctx: Context, methods: list[str], warmup: int, repeats: int, idle_wait: float = 0.0) -> tuple[dict, dict]:
    results: dict[str, dict[str, Any]] = {
        m: {"times": [], "cpu_times": [], "others_cpu_share": [], "rss": [], "gpu": []} for m in methods
    }
    collected: dict[str, Readings] = {}
    for w in range(warmup):
        for m in methods:
            if "error" in results[m]:
                continue
            try:
                got = RUNNERS[m](ctx, w == 0)
                if w == 0 and got is not None:
                    collected[m] = got
            except Exception as exc:  # a method that cannot run says why
                results[m]["error"] = fmt_err(exc)
                traceback.print_exc()
            print(f"  warm-up {w + 1}/{warmup}: {m} done", file=sys.stderr, flush=True)
    for r in range(repeats):
        for m in methods:
            if "error" in results[m]:
                continue
            collect = warmup == 0 and r == 0
            if idle_wait > 0:
                wait_idle(idle_wait)
            try:
                with PeakMemory(ctx.device) as mem:
                    b0, c0, t0 = _system_busy(), _own_cpu(), time.perf_counter()
                    got = RUNNERS[m](ctx, collect)
                    elapsed = time.perf_counter() - t0
                    own = _own_cpu() - c0
                    # psutil's machine-wide CPU times tick at 10 ms: meaningless for very short runs
                    others = (max(0.0, (_system_busy() - b0) - own) / (elapsed * (os.cpu_count() or 1))
                              if elapsed >= 0.25 else float("nan"))
            except Exception as exc:
                results[m]["error"] = fmt_err(exc)
                traceback.print_exc()
                continue
            if collect and got is not None:
                collected[m] = got
            results[m]["times"].append(elapsed)
            results[m]["cpu_times"].append(own)
            results[m]["others_cpu_share"].append(others)
            results[m]["rss"].append(mem.peak_rss_delta)
            if mem.peak_gpu_delta is not None:
                results[m]["gpu"].append(mem.peak_gpu_delta)
            print(f"  round {r + 1}/{repeats}: {m:18s} {elapsed:8.3f} s  cpu {own:8.3f} s  others {others:5.0%}  "
                  f"peak RSS Δ {mem.peak_rss_delta / 2**20:8.1f} MB", file=sys.stderr, flush=True)
    for m, res in results.items():
        if res["times"]:
            res["median_s"] = statistics.median(res["times"])
            res["min_s"] = min(res["times"])
            res["max_s"] = max(res["times"])
            res["cpu_median_s"] = statistics.median(res["cpu_times"])
            shares = [x for x in res["others_cpu_share"] if x == x]
            res["others_cpu_share_max"] = max(shares) if shares else None
            res["peak_rss_delta_mb"] = max(res["rss"]) / 2**20
            if res["gpu"]:
                res["peak_gpu_delta_mb"] = max(res["gpu"]) / 2**20
    return results, collected


def memory_test(subject: Subject, sizes: list[int], batch_size: int, device: str, pool: int) -> list[dict[str, Any]]:
    """Each size cycles the same `pool` prompts per set (same batch shapes, only the count changes); the
    largest size is also run cycling the whole built-in sets (longer prompts, so larger batches)."""
    rows = []
    plan = [(n, pool) for n in sizes] + [(max(sizes), None)]
    for n, pool_size in plan:
        sets = prompt_sets(n, pool_size)
        release_memory(device)
        tracemalloc.start()
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            cap = capture(
                subject.model, subject.tokenizer, sets, streams=STREAMS, position="last", batch_size=batch_size,
                chat_template=subject.chat_template, keep_samples=False, progress=False,
            )
            elapsed = time.perf_counter() - t0
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        acc = sum(m.mean.nbytes + m.m2.nbytes for per in cap.moments.values() for m in per.values())
        shape = (cap.n_layers, cap.d_model)
        # size of a raw-samples buffer (what linear growth would cost; geomcheck at the time of writing
        # np.empty-allocates it even with keep_samples=False, untouched, so tracemalloc sees it, RSS not)
        samples_buffer = sum(len(p) for p in sets.values()) * len(STREAMS) * int(np.prod(shape)) * 4
        pooled = min(pool_size or 10**9, min(len(builtin_prompts(x)) for x in sets))
        row = {
            "prompts": n,
            "cycled_pool_per_set": pooled if pool_size else "all built-in",
            "seconds_under_tracemalloc": elapsed,
            "peak_rss_delta_mb": mem.peak_rss_delta / 2**20,
            "accumulator_bytes": acc,
            "tracemalloc_peak_mb": traced_peak / 2**20,
            "samples_buffer_mb": samples_buffer / 2**20,
        }
        if mem.peak_gpu_delta is not None:
            row["peak_gpu_delta_mb"] = mem.peak_gpu_delta / 2**20
        rows.append(row)
        print(f"  memory test {n} prompts: {elapsed:.1f} s, peak RSS Δ {row['peak_rss_delta_mb']:.1f} MB, "
              f"tracemalloc peak {row['tracemalloc_peak_mb']:.1f} MB", file=sys.stderr, flush=True)
        del cap
    return rows


def markdown_table(results: dict, methods: list[str], device: str, n_prompts: int) -> str:
    naive = results.get("naive", {}).get("median_s")
    gpu = device.startswith("cuda")
    naive_cpu = results.get("naive", {}).get("cpu_median_s")
    head = ("| method | median s | min s | max s | × naive floor | peak RSS Δ MB |" + (" peak GPU MB |" if gpu else "")
            + " CPU s (median) | × naive (CPU s) | others' CPU share (max) |")
    sep = "|---|---:|---:|---:|---:|---:|" + ("---:|" if gpu else "") + "---:|---:|---:|"
    lines = [head, sep]
    for m in methods:
        res = results[m]
        label = f"{LABELS[m]} [`{m}`]"
        if "median_s" not in res:
            why = res.get("error", "not run")
            lines.append(f"| {label} | n/a: {why} | | | | |" + (" |" if gpu else "") + " | | |")
            continue
        ratio = f"{res['median_s'] / naive:.2f}×" if naive else "–"
        line = (f"| {label} | {res['median_s']:.3f} | {res['min_s']:.3f} | {res['max_s']:.3f} | {ratio} | "
                f"{res['peak_rss_delta_mb']:.0f} |")
        if gpu:
            line += f" {res.get('peak_gpu_delta_mb', float('nan')):.0f} |"
        cpu_ratio = f"{res['cpu_median_s'] / naive_cpu:.2f}×" if naive_cpu else "–"
        share = res["others_cpu_share_max"]
        line += f" {res['cpu_median_s']:.3f} | {cpu_ratio} | {'–' if share is None else f'{share:.0%}'} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=64, help="total prompts, half harmful and half harmless")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: registry's, float32 for *-random on CPU)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--methods", default=",".join(METHOD_ORDER))
    ap.add_argument("--memory-prompts", default=None, help="e.g. 64,1024; 'none' skips (default: 64,1024, none for *-random)")
    ap.add_argument("--extra-site", action="append", default=[], help="site-packages appended to sys.path (nnsight, transformer-lens)")
    ap.add_argument("--wait-idle", type=float, default=0.0,
                    help="before each timed run, wait up to this many seconds for other processes to use < 15%% of the cores")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    for d in args.extra_site:
        before = list(sys.path)
        site.addsitedir(d)  # appends: this interpreter's own packages keep precedence
        assert sys.path[: len(before)] == before
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    dtype = args.dtype
    if args.model.endswith("-random") and dtype is None:
        dtype = "float32"
    t0 = time.perf_counter()
    subject = load_subject(args.model, args.device, dtype)
    load_s = time.perf_counter() - t0
    model = subject.model
    param_dtype = next(model.parameters()).dtype
    print(f"loaded {args.model} ({type(model).__name__}, {param_dtype}, attn={model.config._attn_implementation}) "
          f"in {load_s:.1f} s", file=sys.stderr, flush=True)

    sets = prompt_sets(args.prompts)
    ids = {name: tokenize(subject.tokenizer, prompts, subject.chat_template) for name, prompts in sets.items()}
    vocab = model.config.vocab_size
    top = max(max(s) for v in ids.values() for s in v)
    if top >= vocab:
        raise SystemExit(f"token id {top} >= vocab {vocab}: the tokenizer does not fit the model")
    all_ids = [s for v in ids.values() for s in v]
    prefix = [] if subject.is_encoder else common_prefix(all_ids)[: min(len(s) for s in all_ids) - 1]
    sites = find_sites(model, STREAMS)
    LABELS["tokenize"] = f"tokenize only (chat template {'on' if subject.chat_template else 'off'})"
    ctx = Context(subject, sets, ids, args.batch_size, args.device, prefix, len(sites["pre"]), int(model.config.hidden_size))
    cap_params = inspect.signature(capture).parameters
    ctx.geomcheck_has_prefix_reuse = "prefix_reuse" in cap_params
    if ctx.geomcheck_has_prefix_reuse:
        default = cap_params["prefix_reuse"].default
        LABELS["geomcheck"] = "geomcheck capture prefix_reuse=False" + (" (default)" if default is False else "")
        LABELS["geomcheck_prefix"] = "geomcheck capture prefix_reuse=True" + (" (default, as shipped)" if default is True else "")

    requested = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(requested) - set(METHOD_ORDER)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHOD_ORDER)}")
    methods = [m for m in METHOD_ORDER if m in requested]
    na: dict[str, str] = {}
    if subject.is_encoder:
        na["unique"] = ("N/A: BERT is a bidirectional encoder, every token attends to every other, so the keys/values "
                        "of a shared prefix depend on the suffix and cannot be reused")
        na["hf_hidden_causal"] = "N/A: an encoder has no CausalLM; see the base-model output_hidden_states row"
    elif not prefix:
        na["unique"] = "N/A: the prompts share no token prefix"
    if not ctx.geomcheck_has_prefix_reuse:
        na["geomcheck_prefix"] = "N/A: geomcheck.capture.capture has no prefix_reuse keyword in this checkout"

    setup_errors: dict[str, str] = {}
    if "hf_hidden_causal" in methods and "hf_hidden_causal" not in na:
        try:
            ctx.causal = head_wrapper(model)
        except Exception as exc:
            setup_errors["hf_hidden_causal"] = fmt_err(exc)
    for m, fn in (("nnsight", setup_nnsight), ("tl", setup_tl)):
        if m not in methods:
            continue
        try:
            rss0 = rss_bytes()
            fn(ctx)
            print(f"set up {m}: RSS +{(rss_bytes() - rss0) / 2**20:.0f} MB", file=sys.stderr, flush=True)
        except Exception as exc:
            traceback.print_exc()
            setup_errors[m] = fmt_err(exc)
    runnable = [m for m in methods if m not in na and m not in setup_errors]

    info = machine_info(args.device)
    stats = token_stats(ctx)
    print(f"running {runnable} on {stats['prompts']} prompts, batch {args.batch_size}, "
          f"{args.warmup} warm-up + {args.repeats} repeats", file=sys.stderr, flush=True)
    load_before = os.getloadavg()
    results, collected = run_methods(ctx, runnable, args.warmup, args.repeats, args.wait_idle)
    info["loadavg_before"] = [round(x, 2) for x in load_before]
    info["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    for m in methods:
        if m in na:
            results[m] = {"error": na[m]}
        elif m in setup_errors:
            results[m] = {"error": setup_errors[m]}
    verification = checks(ctx, collected)

    def median(m: str) -> float | None:
        return results.get(m, {}).get("median_s")

    def cpu_median(m: str) -> float | None:
        return results.get(m, {}).get("cpu_median_s")

    # "geomcheck" in a ratio's name: the capture as shipped (its default prefix_reuse)
    shipped = "geomcheck_prefix" if ctx.geomcheck_has_prefix_reuse and cap_params["prefix_reuse"].default else "geomcheck"
    other = "geomcheck" if shipped == "geomcheck_prefix" else ("geomcheck_prefix" if ctx.geomcheck_has_prefix_reuse else None)
    pairs = [
        ("geomcheck / naive floor", shipped, "naive"),
        ("geomcheck / unique-token floor", shipped, "unique"),
        ("output_hidden_states (CausalLM) / geomcheck", "hf_hidden_causal", shipped),
        ("output_hidden_states (base model) / geomcheck", "hf_hidden_base", shipped),
        ("nnsight / geomcheck", "nnsight", shipped),
        ("TransformerLens / geomcheck", "tl", shipped),
        ("unique-token floor / naive floor", "unique", "naive"),
        ("tokenize / geomcheck", "tokenize", shipped),
    ]
    if other:
        flag = "prefix_reuse=False" if other == "geomcheck" else "prefix_reuse=True"
        pairs += [
            (f"geomcheck {flag} / naive floor", other, "naive"),
            (f"geomcheck {flag} / unique-token floor", other, "unique"),
            (f"output_hidden_states (CausalLM) / geomcheck {flag}", "hf_hidden_causal", other),
        ]
    ratios: dict[str, dict[str, float]] = {}
    for key, a, b in pairs:
        if median(a) and median(b):
            ratios[key] = {"wall": median(a) / median(b), "cpu": (cpu_median(a) or 0) / (cpu_median(b) or 1)}

    if args.memory_prompts is None:
        args.memory_prompts = "none" if args.model.endswith("-random") else "64,1024"
    memory_rows = []
    if args.memory_prompts.lower() != "none":
        sizes = [int(x) for x in args.memory_prompts.split(",") if x.strip()]
        memory_rows = memory_test(subject, sizes, args.batch_size, args.device, max(1, args.prompts // 2))

    # ---------------------------------------------------------------- report
    print()
    print(f"## geomcheck capture benchmark: {args.model}")
    print()
    print(f"- machine: {info['cpu_model']}, {info['cpu_count_affinity']} CPU cores usable, {info['ram_gib']} GiB RAM; "
          f"device {args.device}" + (f" ({info.get('gpu')})" if args.device.startswith("cuda") else ""))
    print(f"- python {info['python']}, torch {info['torch']} (torch threads: {info['torch_threads']}), transformers "
          f"{info['transformers']}, numpy {info['numpy']}, nnsight {info['nnsight']}, transformer-lens {info['transformer_lens']}")
    print(f"- machine load (1/5/15-min load average) before the timed runs {info['loadavg_before']}, after "
          f"{info['loadavg_after']}; other processes' share of the cores during each run is in the last column")
    print(f"- model: {type(model).__name__}, {ctx.n_layers} layers, d_model {ctx.d_model}, {param_dtype}, "
          f"attention {model.config._attn_implementation}; loaded in {load_s:.1f} s")
    for note in subject.notes:
        print(f"- {note}")
    print(f"- prompts: {stats['prompts']} ({len(sets['harmful'])} harmful + {len(sets['harmless'])} harmless built-in), "
          f"chat template {'on' if subject.chat_template else 'off'}, batch size {args.batch_size}, "
          f"{stats['min_len']}–{stats['max_len']} tokens (mean {stats['mean_len']:.1f}); {stats['real_tokens']} real tokens, "
          f"{stats['padded_tokens_naive']} with padding")
    if prefix:
        print(f"- shared token prefix: {len(prefix)} tokens ({subject.tokenizer.decode(prefix)!r}); the unique-token "
              f"floor computes {stats['real_tokens_unique']} real tokens instead of {stats['real_tokens']} "
              f"({stats['real_token_fraction_saved']:.1%} saved), {stats['padded_tokens_unique']} instead of "
              f"{stats['padded_tokens_naive']} with padding ({stats['padded_token_fraction_saved']:.1%} saved)")
    print(f"- protocol: {args.warmup} warm-up pass(es) per method, then {args.repeats} interleaved round(s); times are "
          "seconds for all prompts; peak RSS Δ = max increase of resident memory over the run's start (psutil, "
          "sampled every 2 ms, after gc + malloc_trim)" + ("; peak GPU = max_memory_allocated − allocated at start"
                                                            if args.device.startswith("cuda") else ""))
    print()
    print(markdown_table(results, methods, args.device, stats["prompts"]))
    print()
    if ratios:
        print(f"Ratios of medians (\"geomcheck\" = the capture as shipped, `{shipped}`; wall-clock, and process CPU time):")
        for k, v in ratios.items():
            print(f"- {k}: {v['wall']:.2f}× wall, {v['cpu']:.2f}× CPU")
        print()
    if verification:
        print("Checks (readings of each method's first pass; geomcheck = reference):")
        for k, v in verification.items():
            print(f"- {k}: {v:.3g}" if isinstance(v, float) else f"- {k}: {v}")
        print()
    if memory_rows:
        print("Accumulator memory, geomcheck capture keep_samples=False (one run each, under tracemalloc):")
        print()
        print("| prompts | cycled from (per set) | seconds | peak RSS Δ MB | accumulator bytes | tracemalloc peak MB | "
              "raw samples would take MB (n × streams × layers × d × 4 B) |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for row in memory_rows:
            pool_text = row["cycled_pool_per_set"] if isinstance(row["cycled_pool_per_set"], str) else f"first {row['cycled_pool_per_set']}"
            print(f"| {row['prompts']} | {pool_text} | {row['seconds_under_tracemalloc']:.1f} | {row['peak_rss_delta_mb']:.1f} | "
                  f"{row['accumulator_bytes']:,} | {row['tracemalloc_peak_mb']:.1f} | "
                  f"{row['samples_buffer_mb']:.1f} |")
        print()
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"- process max RSS over the whole run (getrusage): {max_rss:.0f} MB")

    if args.json:
        payload = {
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "args": vars(args),
            "machine": info,
            "model": {"name": args.model, "class": type(model).__name__, "layers": ctx.n_layers, "d_model": ctx.d_model,
                      "dtype": str(param_dtype), "attention": model.config._attn_implementation, "load_s": load_s,
                      "notes": subject.notes},
            "tokens": stats,
            "shared_prefix_text": subject.tokenizer.decode(prefix) if prefix else "",
            "results": {m: {k: v for k, v in results[m].items()} | {"label": LABELS[m]} for m in methods},
            "ratios": ratios,
            "checks": verification,
            "memory_test": memory_rows,
            "process_max_rss_mb": max_rss,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, default=str)
        print(f"- JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
