"""Sweeps (--geomcheck-sweep): several checkpoints of one model in one session, each its own identity, read
as a trajectory (sweep.png and the sweep table) in the order given, drift measured from the first."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_baseline import ROOT, scaled_copy

SCALES = (1.0, 1.2, 1.5)
ROW = re.compile(r"^(?P<model>\S+)\s+(?P<weights>[0-9a-f]{7}).*?\s(?P<drifted>\d+) of (?P<compared>\d+) values beyond tolerance, mean (?P<mean>\S+)×, worst (?P<worst>\S+)×$")


def sweep_rows(lines: list[str]) -> list[dict[str, str]]:
    start = lines.index("sweep (in the order given; drift in the reference's unpaired tolerances):")
    return [m.groupdict() for line in lines[start + 2:] if (m := ROW.match(line))]


@pytest.fixture
def minimal_check(pytester: pytest.Pytester, opted_in) -> None:
    pytester.makepyfile(test_read="def test_read(geometry, weights):\n    pass\n")


@pytest.mark.slow  # pytester sessions on tiny models: tens of seconds on a loaded 2-core machine
def test_three_checkpoints_scaled_in_one_layer_drift_the_more_the_larger_the_scale(pytester, minimal_check, tiny_llama_dir, tmp_path):
    models = [scaled_copy(tiny_llama_dir, tmp_path / f"tiny-x{scale}", scale) for scale in SCALES]
    args = [a for model in models for a in ("--model", str(model))]
    result = pytester.runpytest(*args, "--geomcheck-sweep", "--max-prompts", "8", "--n-boot", "40",
                                "--geomcheck-cache-dir", str(tmp_path / "cache"), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)  # each checkpoint is a model of its own: its own id and checks
    rows = sweep_rows(result.stdout.lines)
    assert [row["model"] for row in rows] == [f"tiny-x{scale}" for scale in SCALES]  # the order given
    assert len({row["weights"] for row in rows}) == 3  # three identities
    mean, worst, drifted = ([float(row[name]) for row in rows] for name in ("mean", "worst", "drifted"))
    assert mean[0] == worst[0] == drifted[0] == 0  # the reference against itself
    assert 0 < mean[1] < mean[2] and 0 < worst[1] < worst[2] and drifted[1] <= drifted[2]  # more scale, more drift
    figure = pytester.path / "geomcheck-artifacts" / "sweep.png"
    result.stdout.fnmatch_lines([f"sweep: figure {figure}"])
    assert figure.stat().st_size > 10_000


@pytest.mark.slow  # pytester sessions on tiny models: tens of seconds on a loaded 2-core machine
def test_revisions_of_one_hub_id_sweep_against_one_reference_baseline(pytester, opted_in, hub_cache, tmp_path):
    """Revisions share their repository's baseline folder: refused without ``--baseline`` (the message says
    how to sweep), gated against the one reference with it."""
    (pytester.path / "test_gate.py").write_text((ROOT / "geomcheck" / "checks" / "test_baseline.py").read_text())
    common = ("--rootdir", str(pytester.path), "--max-prompts", "4", "--n-boot", "40", "--geomcheck-cache-dir", str(tmp_path / "cache"), "-p", "no:cacheprovider")
    pytester.runpytest("--model", "acme/tiny@main", "--snapshot-update", *common).assert_outcomes(passed=1)
    refused = pytester.runpytest("--model", "acme/tiny@main", "--model", "acme/tiny@v2", "--geomcheck-sweep", *common)
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*two models would share the baselines of 'acme--tiny'*--baseline REF (a sweep: --geomcheck-sweep --baseline acme/tiny*"])
    swept = pytester.runpytest("--model", "acme/tiny@main", "--model", "acme/tiny@v2", "--geomcheck-sweep", "--baseline", "acme/tiny", *common)
    outcomes = swept.parseoutcomes()  # each revision gated against the one baseline: run, not refused
    assert swept.ret != pytest.ExitCode.USAGE_ERROR and outcomes.get("passed", 0) + outcomes.get("failed", 0) == 2
    rows = sweep_rows(swept.stdout.lines)
    assert [row["model"] for row in rows] == ["acme/tiny@main", "acme/tiny@v2"]
    assert float(rows[0]["worst"]) == 0 < float(rows[1]["mean"])  # v2 holds other weights (seed 1): it moved
    assert not list((pytester.path / "baselines").glob("*@*"))  # nothing written per revision
