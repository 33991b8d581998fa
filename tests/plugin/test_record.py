"""Records (--geomcheck-record-to, --model record:DIR): capture where the model is, gate where it is not,
without torch; a record that is not what it claims to be is refused, naming the file and the fix."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from geomcheck.run import record
from geomcheck.run.pipeline import ModelRun, RunOptions

ROOT = Path(__file__).resolve().parents[2]
FAST = ("--max-prompts", "8", "--n-boot", "40")
# writes whether torch or transformers were imported by the end of the session (the gate's own process)
IMPORTS_PROBE = """
import json, sys
def pytest_sessionfinish(session):
    with open("imports.json", "w") as out:
        json.dump({name: name in sys.modules for name in ("torch", "transformers")}, out)
"""


def outcomes(junit: Path) -> dict[str, str]:
    """Each test id's outcome from a JUnit XML file, and the gate's key figure under ``gate``."""
    found = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else "skipped" if case.find("skipped") is not None else "passed"
        found[case.get("name")] = outcome
        for prop in case.iter("property"):
            if prop.get("name") == "geomcheck" and case.get("name").startswith("test_matches_baseline"):
                found["gate"] = prop.get("value")
    return found


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project with this repository's checks/ and a probe of what the session imported."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    shutil.copytree(ROOT / "checks", pytester.path / "checks")
    pytester.makeini("[pytest]\naddopts = -p geomcheck.activate\n")
    pytester.makeconftest(IMPORTS_PROBE)
    return pytester


def run_checks(project: pytest.Pytester, model: str, cache: Path, *extra: str) -> pytest.RunResult:
    # a fresh process each time; the limit only catches a hang on a loaded machine
    return project.runpytest_subprocess("checks/", "--model", model, *FAST, "--geomcheck-cache-dir", str(cache), "-p", "no:cacheprovider", *extra, timeout=1800)


@pytest.mark.slow  # pytester sessions on tiny models: tens of seconds on a loaded 2-core machine
def test_a_record_gates_in_a_fresh_process_without_the_checkpoint_or_torch(project, tiny_llama_dir, tmp_path):
    model = Path(shutil.copytree(tiny_llama_dir, tmp_path / "tiny-llama"))
    run_checks(project, str(model), tmp_path / "gpu-cache", "--snapshot-update")  # the committed baseline
    made = run_checks(project, str(model), tmp_path / "gpu-cache", "--geomcheck-record-to", "records", "--junitxml", "gpu.xml")
    folder = project.path / "records" / "tiny-llama"
    made.stdout.fnmatch_lines([f"geomcheck: record of tiny-llama written to {folder}; gate it elsewhere with: pytest checks/ --model record:{folder}"])
    shutil.rmtree(model)  # the CI machine has neither the weights nor their cache

    gated = run_checks(project, f"record:{folder}", tmp_path / "ci-cache", "--junitxml", "ci.xml")
    assert json.loads((project.path / "imports.json").read_text()) == {"torch": False, "transformers": False}
    on_gpu, on_ci = outcomes(project.path / "gpu.xml"), outcomes(project.path / "ci.xml")
    assert on_ci == on_gpu and on_ci["test_matches_baseline[tiny-llama]"] == "passed"  # same ids, same outcomes
    assert "paired on the same prompts" in on_ci["gate"]  # the reference readings came with the record
    assert "checkpoint unchanged (weights " in on_ci["gate"]
    assert gated.ret == made.ret


@pytest.fixture(scope="module")
def written(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One record of the tiny Llama, made through the API (no pytest session)."""
    root = tmp_path_factory.mktemp("record")
    run = ModelRun(str(tiny_llama_dir), RunOptions(cache_dir=root / "cache", max_prompts=4, n_boot=0, progress=False))
    return record.write(run, root / "tiny-llama", str(tiny_llama_dir), "tiny-llama")


def copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "copy"))


def rewrite_manifest(folder: Path, **changes) -> None:
    """Change manifest fields and re-seal it, as another tool or version would write it."""
    path = folder / record.MANIFEST
    manifest = {**json.loads(path.read_text()), **changes}
    manifest["sha256"] = record._manifest_sha256(manifest)
    path.write_text(json.dumps(manifest))


def test_a_record_reads_back_what_was_recorded_and_is_byte_identical_when_written_again(written, tiny_llama_dir, tmp_path):
    run = record.new_run(f"record:{written}", RunOptions(cache_dir=tmp_path, max_prompts=4, n_boot=0, progress=False))
    original = ModelRun(str(tiny_llama_dir), RunOptions(cache_dir=written.parent / "cache", max_prompts=4, n_boot=0, progress=False))
    assert isinstance(run, record.RecordedRun) and run.identity == original.identity and run.meta() == original.meta()
    for prompt_set, streams in original.capture.samples.items():
        for stream, readings in streams.items():
            np.testing.assert_array_equal(run.capture.samples[prompt_set][stream], readings)
    assert run.weights.matrices.keys() == original.weights.matrices.keys() and run.loads == 0
    assert run.geometry.n_boot == 0  # the recorded statistics; another --n-boot recomputes them from the readings
    resampled = record.new_run(f"record:{written}", RunOptions(cache_dir=tmp_path, max_prompts=4, n_boot=40, progress=False))
    assert resampled.geometry.n_boot == 40 and resampled.geometry.intervals and resampled.loads == 0
    again = record.write(original, tmp_path / "again", str(tiny_llama_dir), "tiny-llama")
    assert {p.name: p.read_bytes() for p in again.iterdir()} == {p.name: p.read_bytes() for p in written.iterdir()}


def test_a_changed_byte_a_missing_file_or_array_and_another_format_are_refused_naming_the_file_and_the_fix(written, tmp_path):
    fix = "write it again on the machine with the model: pytest checks/ --model "
    changed = copy(written, tmp_path / "byte")
    data = bytearray((changed / record.READINGS).read_bytes())
    data[-1] ^= 1
    (changed / record.READINGS).write_bytes(bytes(data))
    with pytest.raises(record.RecordError, match="was changed after it was written") as caught:
        record.read(changed)
    assert str(changed / record.READINGS) in str(caught.value) and fix in str(caught.value)

    missing_file = copy(written, tmp_path / "file")
    (missing_file / record.WEIGHTS).unlink()
    with pytest.raises(record.RecordError, match=f"record file {missing_file / record.WEIGHTS} is missing"):
        record.read(missing_file)

    missing_array = copy(written, tmp_path / "array")  # a file re-sealed without one of its arrays
    from safetensors.numpy import load_file

    arrays = load_file(str(missing_array / record.WEIGHTS))
    del arrays["mlp_out"]
    save_file(arrays, str(missing_array / record.WEIGHTS))
    manifest = json.loads((missing_array / record.MANIFEST).read_text())
    manifest["files"][record.WEIGHTS]["sha256"] = record._file_sha256(missing_array / record.WEIGHTS)
    rewrite_manifest(missing_array, files=manifest["files"])
    with pytest.raises(record.RecordError, match="lacks the array 'mlp_out' listed in record.json") as caught:
        record.read(missing_array)
    assert str(missing_array / record.WEIGHTS) in str(caught.value) and fix in str(caught.value)

    future = copy(written, tmp_path / "format")
    rewrite_manifest(future, format="geomcheck-record/2", geomcheck="9.0.0")
    with pytest.raises(record.RecordError, match="is a 'geomcheck-record/2' record .* reads 'geomcheck-record/1' only. Install geomcheck 9.0.0"):
        record.read(future)

    edited = copy(written, tmp_path / "manifest")
    text = (edited / record.MANIFEST).read_text()
    (edited / record.MANIFEST).write_text(text.replace('"position": "last"', '"position": "mean"', 1))
    with pytest.raises(record.RecordError, match=f"{edited / record.MANIFEST} was changed after it was written"):
        record.read(edited)

    older = copy(written, tmp_path / "version")  # same format, another version: read, with a warning
    rewrite_manifest(older, geomcheck="0.0.1")
    with pytest.warns(record.RecordWarning, match="written by geomcheck 0.0.1"):
        assert record.read(older).model == record.read(written).model


@pytest.mark.slow  # pytester sessions on tiny models: tens of seconds on a loaded 2-core machine
def test_a_session_asking_other_measurements_than_the_record_is_refused_at_start_up(pytester, written, monkeypatch):
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p geomcheck.activate")
    pytester.makepyfile(test_x="def test_x(geometry):\n    pass\n")
    result = pytester.runpytest_subprocess("--model", f"record:{written}", "--max-prompts", "8", "--streams", "mid", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        f"record {written} was measured with other options than this session's: streams ['mid'] (record: ['pre', 'mid', 'post']); "
        "prompts {'harmful': 8, 'harmless': 8} (record: {'harmful': 4, 'harmless': 4}, other prompts or another --max-prompts). "
        "Pass the options it was made with (--max-prompts 4 --position last --streams pre,mid,post --top-k 16 --dtype float32), "
        "or record again with these."
    ) in result.stderr.str()
    broken = pytester.runpytest_subprocess("--model", f"record:{written.parent / 'nowhere'}", "-p", "no:cacheprovider")
    assert broken.ret == pytest.ExitCode.USAGE_ERROR
    broken.stderr.fnmatch_lines(["*record */nowhere does not exist: it is not a geomcheck record. Write one on the machine with the model: *--geomcheck-record-to*"])


def test_the_example_workflow_gates_in_its_cpu_job_the_record_its_gpu_job_uploads():
    yaml = pytest.importorskip("yaml")  # PyYAML comes with the test tools; the workflow itself is checked as data
    from geomcheck.report.figures import _folder_name

    workflow = yaml.safe_load((ROOT / "examples" / "geomcheck-record-gate.yml").read_text())
    capture, gate = workflow["jobs"]["capture"], workflow["jobs"]["gate"]
    uploaded = next(s["with"] for s in capture["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    downloaded = next(s["with"] for s in gate["steps"] if s.get("uses", "").startswith("actions/download-artifact"))
    recorded = next(s["run"] for s in capture["steps"] if "--geomcheck-record-to" in s.get("run", ""))
    gated = next(s["run"] for s in gate["steps"] if "record:" in s.get("run", ""))
    assert gate["needs"] == "capture" and uploaded["name"] == downloaded["name"] and uploaded["path"] == downloaded["path"] == "records/"
    assert "--geomcheck-record-to records" in recorded and '--model "record:records/$RECORD"' in gated
    default_model = workflow["env"]["MODEL"].split("'")[1]
    assert workflow["env"]["RECORD"] == _folder_name(default_model)  # the folder the capture writes
    assert "--dtype bfloat16" in recorded and "--dtype bfloat16" in gated  # the same measuring options
