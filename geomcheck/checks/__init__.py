"""The shipped checks, the reference suite: the four hypotheses of the research note and the baseline gate.

Run them from an installed package with ``pytest --pyargs geomcheck.checks --geomcheck-model NAME`` (or,
in a project that opted in with ``pytest_plugins = ["geomcheck.activate"]``, ``--model NAME``). Baselines
are read from and written to ``<rootdir>/baselines``, i.e. the project pytest runs in, never the package.
"""
