"""Per-layer running moments, so memory stays flat however many prompts go through the model.

Welford's update with Chan et al.'s pairwise merge, in float64: the "massive activations" of
mid/late layers are orders of magnitude above the rest, and a naive sum of squares in float32 loses
the small features' variance to cancellation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Moments:
    """count, mean and sum of squared deviations (M2) of samples shaped (layers, features)."""

    shape: tuple[int, ...]
    count: int = 0
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.mean = np.zeros(self.shape, dtype=np.float64)
        self.m2 = np.zeros(self.shape, dtype=np.float64)

    @classmethod
    def from_state(cls, count: int, mean: np.ndarray, m2: np.ndarray) -> Moments:
        """Rebuild from stored arrays (the activation cache)."""
        moments = cls(tuple(mean.shape))
        moments.count, moments.mean, moments.m2 = int(count), np.asarray(mean, np.float64), np.asarray(m2, np.float64)
        return moments

    def update(self, batch: np.ndarray) -> None:
        """Fold in a batch shaped (samples, *shape)."""
        batch = np.asarray(batch, dtype=np.float64)
        if batch.shape[1:] != self.shape:
            raise ValueError(f"batch of shape {batch.shape[1:]} does not match accumulator shape {self.shape}")
        if len(batch) == 0:
            return
        batch_mean = batch.mean(axis=0)
        batch_m2 = ((batch - batch_mean) ** 2).sum(axis=0)
        self._merge(len(batch), batch_mean, batch_m2)

    def merge(self, other: Moments) -> None:
        """Fold in another accumulator (e.g. one per worker or per shard)."""
        if other.shape != self.shape:
            raise ValueError(f"cannot merge moments of shape {other.shape} into {self.shape}")
        self._merge(other.count, other.mean, other.m2)

    def _merge(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        if n_b == 0:
            return
        n_a = self.count
        total = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / total)
        self.m2 = self.m2 + m2_b + delta**2 * (n_a * n_b / total)
        self.count = total

    def variance(self, ddof: int = 1) -> np.ndarray:
        """Per-feature variance; needs more than `ddof` samples."""
        if self.count <= ddof:
            raise ValueError(f"variance needs at least {ddof + 1} samples, got {self.count}")
        return self.m2 / (self.count - ddof)


@dataclass
class Capture:
    """Per prompt set and stream: running moments, and the raw samples if they were asked for."""

    moments: dict[str, dict[str, Moments]]
    samples: dict[str, dict[str, np.ndarray]] | None
    n_layers: int
    d_model: int
