"""Files written whole or not at all, and readable by others: a temp file beside the target, then ``os.replace``.

``tempfile.mkstemp`` creates its file 0600, right for a temp file but wrong for what it becomes: a figure in
a served artifact folder, a cache entry on a shared runner, a baseline in a CI artifact. The finished file
gets 0644 (anyone reads, the owner writes), what a plain ``open`` gives under the usual umask 022.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

READABLE = 0o644


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp file beside ``path`` to write; on leaving the block it becomes ``path`` (mode 0644), or, on an
    exception, is removed: a reader, or a run killed halfway, sees the old file or the whole new one."""
    target = Path(path)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(tmp)
        os.chmod(tmp, READABLE)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """``text`` into ``path`` via :func:`replacing`, flushed to disk before the rename."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
