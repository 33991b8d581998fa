"""How a message spells an option or a command: one helper, so every error and every suggested command names
a flag the user can type.

A project that opted in (``-p geomcheck.activate``) has ``--model``, ``--batch-size``, ...; any other project
has only ``--geomcheck-model``, ``--geomcheck-batch-size``, ... (options already namespaced, such as
``--geomcheck-cache-dir``, are spelled so in both). The plugin states which at start-up (:func:`use`); the
layers that raise the messages ask :func:`flag` and know nothing of pytest.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass


def dest(name: str) -> str:
    """Option ``--batch-size`` (or ``--geomcheck-cache-dir``) → dest and ini key ``geomcheck_batch_size``."""
    return "geomcheck_" + name.removeprefix("geomcheck-").replace("-", "_")


@dataclass(frozen=True)
class Spelling:
    """The spellings of one opt-in state: ``short`` where the project opted in."""

    short: bool = False

    def flag(self, name: str) -> str:
        """``batch-size`` → ``--batch-size`` (opted in) or ``--geomcheck-batch-size``."""
        bare = name.removeprefix("geomcheck-")
        return f"--{bare}" if self.short and not name.startswith("geomcheck-") else f"--geomcheck-{bare}"

    def with_ini(self, name: str) -> str:
        """``--batch-size (ini geomcheck_batch_size)``: the flag and the ini key that both set an option."""
        return f"{self.flag(name)} (ini {dest(name)})"

    def update_command(self, where: str = "checks/", model: str = "NAME") -> str:
        """The command that writes a model's baselines, run from the checks' folder ``where``."""
        return f"pytest {where} {self.flag('model')} {shlex.quote(model)} --snapshot-update"


_current = Spelling()  # a project that has not opted in, until the plugin says otherwise


def use(spelling: Spelling) -> Spelling:
    """Make ``spelling`` the one messages use; returns the one it replaces (the plugin restores it at the end)."""
    global _current
    previous, _current = _current, spelling
    return previous


def current() -> Spelling:
    return _current


def flag(name: str) -> str:
    """The flag of option ``name`` as this run spells it."""
    return _current.flag(name)


def with_ini(name: str) -> str:
    """The flag of option ``name`` as this run spells it, with its ini key."""
    return _current.with_ini(name)
