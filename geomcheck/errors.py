"""One base for geomcheck's errors and one for its warnings, so a user catches or filters them all at once:
``except geomcheck.GeomcheckError`` or ``filterwarnings = error::geomcheck.GeomcheckWarning``. Each concrete
class keeps the builtin it refines (``ValueError``, ``RuntimeError``, ``UserWarning``) as a second base, so
code that caught the builtin still does."""

from __future__ import annotations


class GeomcheckError(Exception):
    """Base of every error geomcheck raises on purpose; the message names the problem and the fix."""


class GeomcheckWarning(UserWarning):
    """Base of every warning geomcheck emits."""


class OptionError(GeomcheckError, ValueError):
    """An option, ini value or config file that geomcheck cannot use; the message says what to pass."""
