"""This repository's reference run of the shipped check `geomcheck.checks.test_weights_share_directions` (the package holds the code)."""

from geomcheck.checks.test_weights_share_directions import test_weights_share_directions  # noqa: F401
