"""This repository's reference run of the shipped check `geomcheck.checks.test_cosine_falls` (the package holds the code)."""

from geomcheck.checks.test_cosine_falls import test_cosine_falls  # noqa: F401
