"""How a message spells an option: one helper, so every error and suggested command names the flag the user
can type."""

from __future__ import annotations


def dest(name: str) -> str:
    """Option ``--batch-size`` (or ``--geomcheck-cache-dir``) → dest and ini key ``geomcheck_batch_size``."""
    return "geomcheck_" + name.removeprefix("geomcheck-").replace("-", "_")


def with_ini(name: str) -> str:
    """``--batch-size (ini geomcheck_batch_size)``: the flag and the ini key that both set an option."""
    return f"--{name} (ini {dest(name)})"
