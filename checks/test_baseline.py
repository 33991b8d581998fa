"""This repository's reference run of the shipped check `geomcheck.checks.test_baseline` (the package holds the code)."""

from geomcheck.checks.test_baseline import test_matches_baseline  # noqa: F401
