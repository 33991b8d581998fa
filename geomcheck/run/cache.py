"""On-disk cache of named arrays (safetensors), so an identical second run skips the model.

Entries are plain tensors plus JSON metadata: nothing is unpickled, so a cache directory shared with
others is safe to read. Each entry carries a sha256 of its tensor bytes; a torn or tampered file is
detected, reported and recomputed. Writes go to a temporary file renamed into place, under a file
lock, so parallel pytest-xdist workers neither tear an entry nor compute it twice. A valid entry is read
without a lock, so a read-only cache (a CI image, a shared mount) serves its entries; nothing empty or
non-finite is ever stored, so a bad run cannot poison later ones.

Location: ``--geomcheck-cache-dir``, else ``$GEOMCHECK_CACHE``, else ``$XDG_CACHE_HOME/geomcheck``, else
``~/.cache/geomcheck``; one sub-folder per kind (:data:`KINDS`). ``--geomcheck-cache-clear`` empties them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from safetensors import safe_open
from safetensors.numpy import save_file

from geomcheck import atomic
from geomcheck.errors import GeomcheckError, GeomcheckWarning

Arrays = dict[str, np.ndarray]
KINDS = ("activations", "geometry", "weights", "converted", "offload", "fingerprints")  # what --geomcheck-cache-clear removes
LARGE_BYTES = 2**30  # the terminal summary shows the cache's size from this size on


class CacheWarning(GeomcheckWarning):
    """A cache entry was unusable and is being recomputed, or a result could not be stored."""


class CacheError(GeomcheckError, RuntimeError):
    """The cache cannot be used as configured (a file where a folder or an entry belongs, an invalid result)."""


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
        if path.exists() and not path.is_file():
            raise CacheError(f"{path} should be a cache entry but is a {'folder' if path.is_dir() else 'special file'}; remove it")
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
        """Write atomically: a reader sees the old entry or the whole new one, never a part. Only complete,
        non-empty results are stored: an empty one raises instead of poisoning later runs (what a result
        must hold beyond that, its producer checks; see ``pipeline.ModelRun.capture``)."""
        empty = [name for name, a in arrays.items() if a.size == 0]
        if not arrays or empty:
            raise CacheError(f"refusing to cache an empty result under {self.root}: {', '.join(empty) or 'no arrays'}")
        self.root.mkdir(parents=True, exist_ok=True)
        contiguous = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
        header = {"sha256": _checksum(contiguous), "meta": json.dumps(dict(meta), sort_keys=True, default=str)}
        with atomic.replacing(self.path(key)) as tmp:
            save_file(contiguous, tmp, metadata=header)
        return self.path(key)

    def get_or_compute(
        self, key: str, compute: Callable[[], Arrays], meta: Mapping[str, Any]
    ) -> tuple[Arrays, dict[str, Any], bool]:
        """Cached arrays, or computed once under a lock; the flag says whether it was a hit.

        A valid entry is read without a lock. On a miss the lock is taken and the entry looked up again, so
        a worker waiting on another's computation reads its result. Where the cache cannot be written
        (read-only), the result is computed, used and not stored, with a warning. The lock file is removed
        after use: at worst a racing worker computes the same entry twice, and the rename keeps it whole.
        """
        hit = self.load(key)
        if hit is not None:
            return (*hit, True)
        lock_path = str(self.path(key)) + ".lock"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = FileLock(lock_path)
            lock.acquire()
        except OSError as exc:
            if isinstance(exc, FileExistsError) or (self.root.exists() and not self.root.is_dir()):
                raise CacheError(f"cache folder {self.root} is not a folder; remove the file or choose another --geomcheck-cache-dir") from exc
            warn_unwritable(self.root, exc)
            return compute(), dict(meta), False
        try:
            hit = self.load(key)
            if hit is not None:
                return (*hit, True)
            arrays = compute()
            self.store(key, arrays, meta)
            return arrays, dict(meta), False
        finally:
            lock.release()
            with contextlib.suppress(OSError):
                os.unlink(lock_path)


_UNWRITABLE: set[Path] = set()  # cache folders this process has warned about: one warning each


def warn_unwritable(folder: Path, exc: OSError) -> None:
    """One :class:`CacheWarning` per cache folder that cannot be written (a read-only mount, a CI image),
    however many kinds of entry (activations, geometry, weights, the fingerprint index) it skips: the run
    computes what it needs and stores nothing."""
    base = folder.parent if folder.name in KINDS else folder
    if base in _UNWRITABLE:
        return
    _UNWRITABLE.add(base)
    warnings.warn(
        f"geomcheck cache {base} is not writable ({exc}); computing without storing. "
        "Pass a writable --geomcheck-cache-dir to keep the results for the next run.",
        CacheWarning,
        stacklevel=3,
    )


def size_bytes(root: Path) -> int:
    """Bytes held under the cache folder (0 when it does not exist)."""
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink())


def clear(root: Path) -> list[Path]:
    """Remove geomcheck's own sub-folders (:data:`KINDS`) of the cache, nothing else; returns what went."""
    removed = [Path(root) / kind for kind in KINDS if (Path(root) / kind).is_dir()]
    for path in removed:
        shutil.rmtree(path)
    return removed
