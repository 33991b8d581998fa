"""This repository's reference run of the shipped check `geomcheck.checks.test_streams_separate` (the package holds the code)."""

from geomcheck.checks.test_streams_separate import test_streams_separate  # noqa: F401
