"""Opt-in for a project whose suite is geomcheck's checks: the short option spellings and ``-n`` grouping.

Installed, the plugin loads into every pytest run of the environment, so by itself it changes nothing a
foreign suite relies on: its options are spelled ``--geomcheck-<name>``, it parametrizes only tests that ask
for its fixtures, and it leaves xdist's distribution mode alone. A project opts in with one line of pytest
configuration (``-p`` loads the module before the command line is parsed, whatever paths it names; a
conftest's ``pytest_plugins`` would miss ``pytest --model ./dir`` without a test path)::

    addopts = "-p geomcheck.activate"

which adds ``--model``, ``--device``, ``--dtype``, ... (same dests and ini keys) and makes ``-n N`` mean
``--dist loadgroup``, so each model's checks share one worker, which loads it once.
"""

from __future__ import annotations

import pytest

from geomcheck.options import add_options


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser, short=True)


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config: pytest.Config):
    """``-n N`` alone means ``--dist loadgroup`` here: each model's checks stay on one worker, which loads the
    model once (xdist would otherwise pick ``load`` and spread them). An explicit ``--dist`` wins. A wrapper,
    so it runs before xdist's own hook turns ``-n`` alone into ``load``, whatever order the plugins loaded in."""
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", None) == "no":
        config.option.dist = "loadgroup"
    return (yield)

