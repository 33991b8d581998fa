"""This repository's reference run of the shipped check `geomcheck.checks.test_variance_grows` (the package holds the code)."""

from geomcheck.checks.test_variance_grows import test_variance_grows  # noqa: F401
