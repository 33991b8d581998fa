"""The benchmark driver on a tiny random model: its table's shape, its correctness check, its README block.

No timing is asserted: timings belong to the benchmark's own output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
METHODS = "naive,unique,geomcheck,geomcheck_full,hf_base,hf_causal"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import geomcheck_bench.driver

    return geomcheck_bench.driver


def test_driver_table_and_unique_floor_check(bench, tiny_llama_dir: Path, tmp_path: Path, capsys) -> None:
    readme = tmp_path / "README.md"
    from geomcheck_bench.report import BEGIN, END

    readme.write_text(f"# title\n\n{BEGIN}\nold numbers\n{END}\n\n## next\n", encoding="utf-8")
    argv = ["--model", str(tiny_llama_dir), "--prompts", "8", "--batch-size", "4", "--repeats", "1", "--warmup", "0",
            "--threads", "1", "--methods", METHODS, "--memory-prompts", "4,8", "--write-readme", str(readme)]
    results, block = bench.run(argv)
    out = capsys.readouterr().out

    (result,) = results
    assert result.checks["unique_vs_naive_ok"] is True
    assert result.checks["unique_vs_naive_max_abs_diff"] <= 1e-4
    for key, value in result.checks.items():  # every peer reads what geomcheck reads
        if key.endswith("_max_rel_diff"):
            assert value < 1e-5, key
    assert result.tokens["shared_prefix_len"] > 0  # the chat template's prefix is there to reuse

    lines = block.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| method |"))
    assert lines[header] == "| method | tiny-llama | × naive | × naive (CPU) |"
    assert lines[header + 1] == "|---|---:|---:|---:|"
    rows = lines[header + 2 : header + 2 + len(METHODS.split(","))]
    assert [r.count("|") for r in rows] == [5] * len(rows)
    assert rows[0].startswith("| naive floor") and rows[0].split("|")[3].strip() == "1.00"
    assert "Measured on " in block and "Command: `python -m geomcheck_bench --model" in block
    assert str(tmp_path) not in block  # no machine paths: the README switch is left out of the command
    assert block in out  # the README's numbers are the printed ones

    memory = result.memory
    assert [row["prompts"] for row in memory] == [4, 8]
    assert all(row["samples_bytes"] == row["prompts"] * 4 * 32 * 3 * 4 for row in memory)  # 4 layers, d 32, 3 streams

    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# title\n\n") and text.endswith(f"{END}\n\n## next\n")
    assert f"{BEGIN}\n{block}\n{END}" in text and "old numbers" not in text


def test_agreement_flags_a_wrong_unique_floor(bench) -> None:
    from geomcheck_bench.agree import agreement

    final = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    naive = {"harmful": {"final": final}}
    assert agreement({"naive": naive, "unique": {"harmful": {"final": final + 1e-6}}}, half_precision=False)["unique_vs_naive_ok"]
    wrong = {"harmful": {"final": final + 1e-2}}
    assert not agreement({"naive": naive, "unique": wrong}, half_precision=False)["unique_vs_naive_ok"]


def test_command_line_hides_machine_paths(bench) -> None:
    shown = bench.command_line(["--model", "m", "--extra-site", "/some/venv/site-packages", "--write-readme", "README.md"])
    assert shown == "python -m geomcheck_bench --model m --extra-site DIR"
