"""This repository's reference run of the shipped check `geomcheck.checks.test_updates_share_directions` (the package holds the code)."""

from geomcheck.checks.test_updates_share_directions import test_updates_share_directions  # noqa: F401
