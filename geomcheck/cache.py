"""On-disk cache of named arrays (safetensors), so an identical second run skips the model.

Entries are plain tensors plus JSON metadata: nothing is unpickled, so a cache directory shared with
others is safe to read. Each entry carries a sha256 of its tensor bytes; a torn or tampered file is
detected, reported and recomputed. Writes go to a temporary file renamed into place, under a file
lock, so parallel pytest-xdist workers neither tear an entry nor compute it twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from safetensors import safe_open
from safetensors.numpy import save_file

Arrays = dict[str, np.ndarray]


class CacheWarning(UserWarning):
    """A cache entry was unusable and is being recomputed."""


def cache_key(fields: Mapping[str, Any]) -> str:
    """A stable digest of everything that determines the cached arrays."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _checksum(arrays: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class ArrayCache:
    """A directory of ``<key>.safetensors`` entries."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(self, key: str) -> tuple[Arrays, dict[str, Any]] | None:
        """The entry's arrays and metadata; None when absent or corrupt (with a warning)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="numpy") as handle:
                header = handle.metadata() or {}
                arrays = {name: handle.get_tensor(name) for name in handle.keys()}
            if header.get("sha256") != _checksum(arrays):
                raise ValueError("checksum mismatch")
            return arrays, json.loads(header.get("meta", "{}"))
        except Exception as exc:  # any unreadable entry is recomputed, whatever the parser raised
            warnings.warn(
                f"geomcheck cache entry {path} is corrupt ({exc}); it will be recomputed and overwritten.",
                CacheWarning,
                stacklevel=2,
            )
            return None

    def store(self, key: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
        """Write atomically: a reader sees the old entry or the whole new one, never a part."""
        self.root.mkdir(parents=True, exist_ok=True)
        contiguous = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
        header = {"sha256": _checksum(contiguous), "meta": json.dumps(dict(meta), sort_keys=True, default=str)}
        handle, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key}.", suffix=".tmp")
        os.close(handle)
        try:
            save_file(contiguous, tmp, metadata=header)
            os.replace(tmp, self.path(key))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return self.path(key)

    def get_or_compute(
        self, key: str, compute: Callable[[], Arrays], meta: Mapping[str, Any]
    ) -> tuple[Arrays, dict[str, Any], bool]:
        """Cached arrays, or computed once under a lock; the flag says whether it was a hit.

        The lock is taken even to read, so a worker waiting on another's computation reads its result.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path(key)) + ".lock"):
            hit = self.load(key)
            if hit is not None:
                return (*hit, True)
            arrays = compute()
            self.store(key, arrays, meta)
            return arrays, dict(meta), False
