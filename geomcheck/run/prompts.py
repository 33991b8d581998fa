"""Prompt sets: the shipped harmful/harmless sets and loaders for user files.

The geometry checks compare activations on two contrasting prompt sets, so a
bad prompt file silently skews every number downstream.  The loaders here
therefore fail loudly: every :class:`PromptFileError` names the file (and the
line where one is to blame) and says how to fix it.

Only the standard library is used so that loading prompts never depends on the
model stack being importable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

from geomcheck.errors import GeomcheckError
from geomcheck.spelling import flag

__all__ = [
    "BUILTIN_SETS",
    "DEFAULT_FIELD",
    "SUPPORTED_SUFFIXES",
    "PromptFileError",
    "builtin_prompts",
    "load_prompts",
    "prompts_hash",
    "resolve_prompts",
]

BUILTIN_SETS: tuple[str, ...] = ("harmful", "harmless")
"""Names of the prompt sets shipped in ``geomcheck/data/prompts``."""

DEFAULT_FIELD = "prompt"
# Far above any contrast set (the built-in ones are a few KB), far below what would exhaust memory.
MAX_PROMPT_FILE_BYTES = 64 * 2**20
"""Field (JSONL key or CSV column) read when the caller names none."""

SUPPORTED_SUFFIXES: tuple[str, ...] = (".txt", ".jsonl", ".csv")

_DATA_PACKAGE = "geomcheck.data.prompts"
_BOM = b"\xef\xbb\xbf"
_HASH_TAG = b"geomcheck-prompts-v1\n"


class PromptFileError(GeomcheckError, ValueError):
    """A prompt file cannot be used; the message names the file and the fix.

    Subclasses ValueError so callers that already guard against bad
    configuration values catch it without knowing about this module.
    """


# --------------------------------------------------------------------------
# builtin sets
# --------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _builtin_tuple(name: str) -> tuple[str, ...]:
    text = (
        resources.files(_DATA_PACKAGE)
        .joinpath(f"{name}.txt")
        .read_text(encoding="utf-8-sig")
    )
    return tuple(line.strip() for line in text.split("\n") if line.strip())


def builtin_prompts(name: str) -> list[str]:
    """Return a fresh copy of a shipped prompt set.

    The sets ship as package data so checks work offline and reproducibly,
    without the user having to supply any files.
    """
    if name not in BUILTIN_SETS:
        raise ValueError(
            f"unknown builtin prompt set {name!r}; "
            f"valid names are: {', '.join(BUILTIN_SETS)}"
        )
    return list(_builtin_tuple(name))


# --------------------------------------------------------------------------
# user files
# --------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """Read ``path`` as UTF-8 (optional BOM), turning OS/encoding errors into
    PromptFileError so the user learns which file and what to do."""
    if path.exists() and not path.is_dir() and not path.is_file():
        raise PromptFileError(
            f"prompt file {str(path)!r} is not a regular file (it resolves to {str(path.resolve())!r}, a device, "
            "pipe or socket); pass the path of a text file"
        )
    if path.is_file() and path.stat().st_size > MAX_PROMPT_FILE_BYTES:
        raise PromptFileError(
            f"prompt file {str(path)!r} is larger than {MAX_PROMPT_FILE_BYTES // 2**20} MiB, far more than a contrast set "
            f"needs; pass a smaller file (use {flag('max-prompts')} to use fewer prompts of a set)"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptFileError(
            f"prompt file {str(path)!r} does not exist; check the path "
            f"(relative paths are resolved from {os.getcwd()!r})"
        ) from None
    except IsADirectoryError:
        raise PromptFileError(
            f"prompt file {str(path)!r} is a directory; pass the path of a "
            f"{'/'.join(SUPPORTED_SUFFIXES)} file inside it"
        ) from None
    except PermissionError:
        raise PromptFileError(
            f"prompt file {str(path)!r} cannot be read (permission denied); "
            "make it readable, e.g. chmod u+r"
        ) from None
    except OSError as exc:
        raise PromptFileError(
            f"prompt file {str(path)!r} cannot be read: {exc.strerror or exc}; "
            "check that the path points to a readable regular file"
        ) from None

    offset_base = 0
    if data.startswith(_BOM):
        data = data[len(_BOM):]
        offset_base = len(_BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start:exc.end]
        raise PromptFileError(
            f"prompt file {str(path)!r} is not valid UTF-8: byte "
            f"0x{bad[:1].hex()} at byte offset {exc.start + offset_base} "
            f"(line {line}); re-save the file as UTF-8"
        ) from None


def _load_txt(path: Path, text: str) -> list[str]:
    prompts = [line.strip() for line in text.split("\n")]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise PromptFileError(
            f"prompt file {str(path)!r} contains no prompts; "
            "put one prompt per line"
        )
    return prompts


def _load_jsonl(path: Path, text: str, field: str) -> list[str]:
    prompts: list[str] = []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        where = f"prompt file {str(path)!r} line {lineno}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise PromptFileError(
                f"{where} is not valid JSON ({exc.msg} at column {exc.colno}); "
                f'write one JSON object per line, e.g. {{"{field}": "..."}}'
            ) from None
        if not isinstance(obj, dict):
            raise PromptFileError(
                f"{where} is a JSON {type(obj).__name__}, not an object "
                "(keys present: none); "
                f'write one JSON object per line, e.g. {{"{field}": "..."}}'
            )
        keys = ", ".join(repr(k) for k in obj) or "none"
        if field not in obj:
            raise PromptFileError(
                f"{where} has no field {field!r} (keys present: {keys}); "
                "add the field or choose another with 'path.jsonl:fieldname'"
            )
        value = obj[field]
        if not isinstance(value, str) or not value.strip():
            got = (
                "an empty string"
                if isinstance(value, str)
                else f"a JSON {type(value).__name__}"
            )
            raise PromptFileError(
                f"{where}: field {field!r} is {got}, expected a non-empty "
                f"string (keys present: {keys}); put the prompt text in "
                f"{field!r} or choose another field with 'path.jsonl:fieldname'"
            )
        prompts.append(value.strip())
    if not prompts:
        raise PromptFileError(
            f"prompt file {str(path)!r} contains no prompts; put one JSON "
            f'object per line, e.g. {{"{field}": "..."}}'
        )
    return prompts


def _load_csv(path: Path, text: str, field: str) -> list[str]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    prompts: list[str] = []
    try:
        header: list[str] | None = None
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank line (or a row of empty cells)
            header = [cell.strip() for cell in row]
            break
        if header is None:
            raise PromptFileError(
                f"prompt file {str(path)!r} contains no prompts; write a "
                f"header row with a {field!r} column, then one prompt per row"
            )
        if field not in header:
            columns = ", ".join(repr(c) for c in header)
            raise PromptFileError(
                f"prompt file {str(path)!r} has no column {field!r} in its "
                f"header (line {reader.line_num}; columns present: {columns}); "
                "rename the column or choose one with 'path.csv:colname'"
            )
        col = header.index(field)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            cell = row[col].strip() if col < len(row) else ""
            if not cell:
                raise PromptFileError(
                    f"prompt file {str(path)!r} line {reader.line_num}: "
                    f"column {field!r} is empty; fill it in or delete the row"
                )
            prompts.append(cell)
    except csv.Error as exc:
        raise PromptFileError(
            f"prompt file {str(path)!r} line {reader.line_num} is not valid "
            f"CSV ({exc}); check quoting, or save it as .txt/.jsonl instead"
        ) from None
    if not prompts:
        raise PromptFileError(
            f"prompt file {str(path)!r} contains no prompts; put one prompt "
            f"per row under the {field!r} column"
        )
    return prompts


def load_prompts(path: str | os.PathLike[str], field: str | None = None) -> list[str]:
    """Load prompts from a ``.txt``, ``.jsonl`` or ``.csv`` file.

    Lets users swap in their own contrast sets in whatever format their data
    already lives in.  Prompts are stripped of surrounding whitespace and
    blank lines are skipped; anything else malformed raises PromptFileError.
    ``field`` picks the JSONL key / CSV column (default ``"prompt"``).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise PromptFileError(
            f"prompt file {str(p)!r} has unsupported suffix {p.suffix or '(none)'!r}; "
            f"supported suffixes are {', '.join(SUPPORTED_SUFFIXES)} "
            "(.txt: one prompt per line; .jsonl: one JSON object per line; "
            ".csv: header row plus one prompt per row)"
        )
    if suffix == ".txt" and field is not None:
        raise PromptFileError(
            f"prompt file {str(p)!r} is plain text and has no fields, but "
            f"field {field!r} was requested; drop the field or use .jsonl/.csv"
        )
    text = _read_text(p)
    if suffix == ".txt":
        return _load_txt(p, text)
    if suffix == ".jsonl":
        return _load_jsonl(p, text, field or DEFAULT_FIELD)
    return _load_csv(p, text, field or DEFAULT_FIELD)


def _split_field(spec: str) -> tuple[str, str | None]:
    """Split 'file.jsonl:key' / 'file.csv:col' into (path, field)."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail and head.lower().endswith((".jsonl", ".csv")):
        return head, tail
    return spec, None


def resolve_prompts(
    spec: str | None, default: str, field: str | None = None
) -> list[str]:
    """Turn a user-facing prompt spec into prompts.

    One string covers all cases so a single command-line option can name a
    builtin set, a file, or a file plus field: ``None`` -> builtin ``default``;
    a builtin name -> that set; otherwise a path, optionally suffixed
    ``:field`` when it ends in .jsonl or .csv.
    """
    if spec is None:
        return builtin_prompts(default)
    if spec in BUILTIN_SETS:
        return builtin_prompts(spec)
    if not spec.strip():
        raise PromptFileError(
            "empty prompt spec; give a builtin set name "
            f"({', '.join(BUILTIN_SETS)}) or a path to a "
            f"{'/'.join(SUPPORTED_SUFFIXES)} file"
        )
    if Path(spec).is_file():  # a file whose name really contains a colon
        return load_prompts(spec, field)
    path, spec_field = _split_field(spec)
    if spec_field is not None and field is not None and spec_field != field:
        raise PromptFileError(
            f"prompt spec {spec!r} names field {spec_field!r} but field "
            f"{field!r} was also given; use only one of them"
        )
    return load_prompts(path, spec_field if spec_field is not None else field)


# --------------------------------------------------------------------------
# hashing
# --------------------------------------------------------------------------


def prompts_hash(*prompt_sets: Sequence[str]) -> str:
    """Short stable digest of prompt sets, for cache keys and reports.

    Results computed on different prompts must never be confused, so the
    encoding is unambiguous: JSON arrays keep set and prompt boundaries
    (["ab"],["c"] and ["a"],["bc"] hash differently).
    """
    for s in prompt_sets:
        if isinstance(s, (str, bytes)):
            raise TypeError(
                "prompts_hash takes sequences of prompts, not a bare string; "
                "wrap it in a list: prompts_hash([prompt])"
            )
    payload = json.dumps(
        [list(s) for s in prompt_sets], ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")
    return hashlib.sha256(_HASH_TAG + payload).hexdigest()[:16]
