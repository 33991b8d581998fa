"""One spelling of every option, as the project's opt-in state makes it: ``--help``, the start-up errors and the
messages the layers raise name ``--model`` where the project opted in (``-p geomcheck.activate``) and
``--geomcheck-model`` where it did not, never a flag that does not exist."""

from __future__ import annotations

import pytest

from geomcheck import spelling
from geomcheck.errors import OptionError
from geomcheck.spelling import Spelling
from geomcheck.thresholds import read_thresholds_file

STATES = {"opted in": ("-p", "geomcheck.activate"), "not opted in": ()}


@pytest.mark.parametrize("state", STATES)
def test_a_start_up_error_names_the_flag_the_user_can_type(pytester: pytest.Pytester, state):
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess(*STATES[state], "--geomcheck-batch-size" if not STATES[state] else "--batch-size", "0")
    shown, absent = ("--batch-size (ini", "--geomcheck-batch-size") if STATES[state] else ("--geomcheck-batch-size (ini", "--batch-size (ini")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert shown in result.stderr.str() and absent not in result.stderr.str()


@pytest.mark.parametrize("state", STATES)
def test_help_lists_each_option_once_by_the_states_spelling(pytester: pytest.Pytester, state):
    text = pytester.runpytest_subprocess(*STATES[state], "--help").stdout.str()
    assert "--geomcheck-cache-dir" in text  # namespaced in both states
    if STATES[state]:
        assert "--batch-size=BATCH_SIZE" in text and "--geomcheck-batch-size" not in text
    else:
        assert "--geomcheck-batch-size=BATCH_SIZE" in text and "  --batch-size" not in text


@pytest.mark.parametrize("short, model, baseline", [(True, "--model", "--batch-size"), (False, "--geomcheck-model", "--geomcheck-batch-size")])
def test_the_layers_messages_follow_the_spelling_in_use(short, model, baseline, monkeypatch):
    monkeypatch.setattr(spelling, "_current", Spelling(short))
    assert spelling.current().update_command("checks/", "tiny") == f"pytest checks/ {model} tiny --snapshot-update"
    assert spelling.flag("batch-size") == baseline and spelling.flag("geomcheck-cache-dir") == "--geomcheck-cache-dir"
    with pytest.raises(OptionError, match=f"\\({'--' if short else '--geomcheck-'}thresholds \\(ini geomcheck_thresholds\\)\\) does not exist"):
        read_thresholds_file("/nonexistent/thresholds.toml")


def test_a_session_restores_the_spelling_it_found(pytester: pytest.Pytester, opted_in):
    before = spelling.current()
    pytester.makepyfile("from geomcheck import spelling\n\ndef test_short():\n    assert spelling.current().short\n")
    pytester.runpytest_inprocess().assert_outcomes(passed=1)
    assert spelling.current() == before
