"""What a capture records, and how it is stored: every prompt's reading, per prompt set and stream.

One statistics path: the readings are always kept, because the bootstrap intervals, the shuffled-label
null and a user's own statistics (the ``activations`` fixture) all resample the prompts; the point values
are computed from the same readings (:func:`geomcheck.stats.geometry.geometry_from_samples`). They cost
prompts × layers × d_model × streams × 4 bytes (float32), in memory and in the activations cache: ~1.1 GB
for the 275 built-in prompts on a 64-layer, 5120-wide model (Qwen2.5-32B).

No torch here, so a cached re-run reads its activations without importing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from geomcheck import STREAMS
from geomcheck.errors import GeomcheckError

FORMAT = 2  # layout of cached activations entries (to_arrays); bump when it changes
DTYPE = np.float32


@dataclass(frozen=True)
class Capture:
    """``samples[prompt_set][stream]``: each prompt's reading, shaped (prompts, layers, d_model), float32."""

    samples: dict[str, dict[str, np.ndarray]]
    n_layers: int
    d_model: int


class IncompleteCaptureError(GeomcheckError, RuntimeError):
    """A capture did not see every prompt of every set and stream: it must not be used, nor cached."""


def check_complete(result: Capture, sizes: Mapping[str, int]) -> None:
    """Every stream of every set holds one reading per prompt; anything else would be cached as a truth."""
    for prompt_set, size in sizes.items():
        by_stream = result.samples.get(prompt_set, {})
        if not by_stream:
            raise IncompleteCaptureError(f"captured no stream of the {prompt_set} set; nothing was cached")
        for stream, readings in by_stream.items():
            if len(readings) != size:
                raise IncompleteCaptureError(
                    f"captured {len(readings)} of {size} {prompt_set} prompts on stream {stream}; nothing was cached"
                )


def to_arrays(result: Capture) -> dict[str, np.ndarray]:
    """Flatten a capture into named arrays for the cache: ``<set>/<stream>/samples``."""
    return {
        f"{prompt_set}/{stream}/samples": readings
        for prompt_set, by_stream in result.samples.items()
        for stream, readings in by_stream.items()
    }


def from_arrays(arrays: Mapping[str, np.ndarray]) -> Capture:
    """Inverse of :func:`to_arrays`."""
    samples: dict[str, dict[str, np.ndarray]] = {}
    for key, readings in arrays.items():
        prompt_set, stream, _ = key.split("/")
        samples.setdefault(prompt_set, {})[stream] = readings
    samples = {prompt_set: _forward_order(by_stream) for prompt_set, by_stream in samples.items()}
    _, n_layers, d_model = next(iter(next(iter(samples.values())).values())).shape
    return Capture(samples, n_layers, d_model)


def _forward_order(by_stream: dict[str, Any]) -> dict[str, Any]:
    """The cache returns names sorted; streams go back to forward order (pre, mid, post) for figures and reports."""
    rank = {stream: i for i, stream in enumerate(STREAMS)}
    return dict(sorted(by_stream.items(), key=lambda item: rank.get(item[0], len(rank))))
