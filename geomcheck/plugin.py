"""The pytest plugin: options, session-scoped model runs, fixtures, and the terminal summary.

Thin glue: everything it hands to a check comes from :mod:`geomcheck.pipeline`. Each model is loaded and
run at most once per session, however many checks read it.
"""

from __future__ import annotations

import base64
import contextlib
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from functools import cached_property
from typing import TYPE_CHECKING, Any

import pytest

from geomcheck import POSITIONS, STREAMS, registry

if TYPE_CHECKING:  # the heavy modules load when a check first needs them, not at pytest start-up
    from geomcheck.geometry import Geometry
    from geomcheck.pipeline import ModelRun, RunOptions, WeightOverlap

# name -> (help, type for the ini value, default). Each is a command-line option --<name> and an ini key
# geomcheck_<name with underscores>; the command line wins.
OPTIONS: dict[str, tuple[str, str, Any]] = {
    "device": ("torch device to run on (cpu, cuda, cuda:1, mps)", "string", "cpu"),
    "dtype": ("dtype for the model: float32, bfloat16 or float16 (default: the registry's)", "string", None),
    "batch-size": ("prompts per forward pass", "string", "16"),
    "max-prompts": ("use at most this many prompts of each set", "string", None),
    "harmful": ("harmful prompt set: built-in name or a .txt/.jsonl/.csv file (file.csv:column)", "string", None),
    "harmless": ("harmless prompt set: built-in name or a .txt/.jsonl/.csv file (file.jsonl:field)", "string", None),
    "position": (f"token position to read: {' or '.join(POSITIONS)} (over real tokens)", "string", "last"),
    "streams": ("comma-separated residual streams to check (pre,mid,post)", "string", ",".join(STREAMS)),
    "n-boot": ("bootstrap resamples for the 95% intervals (0: point values only)", "string", "200"),
    "seed": ("seed of the bootstrap", "string", "0"),
    "top-k": ("singular vectors per weight matrix for the shared-directions check", "string", "16"),
    "device-map": ("accelerate device map for models larger than one device, e.g. auto", "string", None),
    "geomcheck-cache-dir": ("activation cache directory (default: $GEOMCHECK_CACHE or ~/.cache/geomcheck)", "string", None),
    "artifacts-dir": ("where figures are written", "string", "geomcheck-artifacts"),
    "thresholds": ("TOML file of check thresholds and per-model expected failures (default: shipped)", "string", None),
    "baseline": ("compare every model against this model's committed baseline (registry name, hub id or baselines/ folder), e.g. a fine-tune against its base", "string", None),
}
RUNS_KEY = pytest.StashKey["GeomcheckSession"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("geomcheck", "geomcheck: activation-geometry checks")
    group.addoption(
        "--model",
        action="append",
        dest="geomcheck_models",
        default=None,
        metavar="NAME",
        help="model to check: registry name or local directory; repeat for several (default: smollm2-135m)",
    )
    parser.addini("geomcheck_models", "models to check when --model is not given", type="linelist", default=["smollm2-135m"])
    for name, (help_text, kind, default) in OPTIONS.items():
        dest = _dest(name)
        metavar = dest.removeprefix("geomcheck_").upper()
        group.addoption(f"--{name}", dest=dest, default=None, metavar=metavar, help=f"{help_text} [ini: {dest}]".replace("%", "%%"))
        parser.addini(dest, help_text, type=kind, default=default)
    group.addoption(
        "--trust-remote-code",
        action="store_true",
        dest="geomcheck_trust_remote_code",
        help="allow models to run code from their repository (off unless the registry entry says so)",
    )
    group.addoption("--no-chat-template", action="store_true", dest="geomcheck_no_chat_template", help="feed prompts raw, without the chat template")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """``-n N`` alone means ``--dist loadgroup`` here: each model's checks stay on one worker, which loads
    the model once (xdist would otherwise pick ``load`` and spread them). An explicit ``--dist`` wins."""
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", None) == "no":
        config.option.dist = "loadgroup"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under ``--dist loadgroup``, keep each model's checks on one worker, read from the model id in the
    node id (``test_x[smollm2-135m-mid]``): xdist's own grouping by node-id suffix is silently lost with
    pytest ≥ 9.2 (pytest-xdist issue 1386), and a model loaded on every worker costs minutes."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    names = sorted(config.stash[RUNS_KEY].models.values(), key=len, reverse=True)

    class ByModel(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            params = nodeid.rpartition("[")[2] if nodeid.endswith("]") else ""
            model = next((n for n in names if params == f"{n}]" or params.startswith(f"{n}-")), None)
            return f"geomcheck-model:{model}" if model else super()._split_scope(nodeid)

    return ByModel(config, log)


def _dest(name: str) -> str:
    """Option ``--batch-size`` (or ``--geomcheck-cache-dir``) → dest and ini key ``geomcheck_batch_size``."""
    return "geomcheck_" + name.removeprefix("geomcheck-").replace("-", "_")


def _setting(config: pytest.Config, name: str) -> Any:
    dest = _dest(name)
    value = config.getoption(dest)
    return value if value is not None else config.getini(dest)


def _optional_int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def run_options(config: pytest.Config) -> RunOptions:
    """The session's RunOptions from command line and ini."""
    from geomcheck.pipeline import RunOptions

    cache_dir = _setting(config, "geomcheck-cache-dir")
    return RunOptions(
        device=_setting(config, "device"),
        dtype=_setting(config, "dtype") or None,
        batch_size=int(_setting(config, "batch-size")),
        max_prompts=_optional_int(_setting(config, "max-prompts")),
        harmful=_setting(config, "harmful") or None,
        harmless=_setting(config, "harmless") or None,
        position=_setting(config, "position"),
        chat_template=False if config.getoption("geomcheck_no_chat_template") else None,
        streams=streams_setting(config),
        n_boot=int(_setting(config, "n-boot")),
        seed=int(_setting(config, "seed")),
        top_k=int(_setting(config, "top-k")),
        device_map=_setting(config, "device-map") or None,
        trust_remote_code=bool(config.getoption("geomcheck_trust_remote_code")),
        cache_dir=Path(cache_dir) if cache_dir else registry.default_cache_dir(),
        progress=config.getoption("verbose") >= 0,
    )


def streams_setting(config: pytest.Config) -> tuple[str, ...]:
    return tuple(s.strip() for s in _setting(config, "streams").split(",") if s.strip())


def load_thresholds(path: str | None) -> dict[str, Any]:
    """The shipped thresholds, or a user's file with the same layout."""
    if path:
        text = Path(path).read_text(encoding="utf-8")
    else:
        text = resources.files("geomcheck.data").joinpath("thresholds.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


@dataclass
class Finding:
    """One check's key figure, for the terminal summary."""

    model: str
    check: str
    stream: str | None
    text: str
    outcome: str = "?"


@dataclass
class GeomcheckSession:
    """Per pytest session (per worker under xdist): the model runs, one per model, and their figures."""

    config: pytest.Config
    models: dict[str, str]  # as given (name or path) -> display name used in ids, thresholds and summaries
    thresholds: dict[str, Any]
    artifacts_dir: Path
    runs: dict[str, ModelRun] = field(default_factory=dict)
    figures: dict[str, dict[str, Path]] = field(default_factory=dict)  # model -> figure kind -> file

    def add_figure(self, model: str, kind: str, path: Path) -> None:
        self.figures.setdefault(model, {})[kind] = path

    @cached_property
    def options(self) -> RunOptions:
        return run_options(self.config)

    def run(self, model: str) -> ModelRun:
        from geomcheck.pipeline import ModelRun

        if model not in self.runs:
            self.runs[model] = ModelRun(model, self.options)
        return self.runs[model]

    def thresholds_for(self, check: str, model: str) -> dict[str, Any]:
        merged = dict(self.thresholds.get(check, {}))
        merged.update(self.thresholds.get("models", {}).get(model, {}).get(check, {}))
        return merged

    def expected_failure(self, check: str, model: str, stream: str | None) -> str | None:
        table = self.thresholds.get("models", {}).get(model, {}).get("expected_failures", {})
        return table.get(f"{check}[{stream}]") or table.get(check)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "geomcheck_streams(*streams): streams a check is parametrized over")
    names = config.getoption("geomcheck_models") or config.getini("geomcheck_models")
    try:
        display = {name: registry.resolve(name).name for name in names}
    except (registry.UnknownModelError, registry.ModelLoadError) as exc:
        raise pytest.UsageError(str(exc)) from exc
    check_baseline_folders(config, names)
    config.stash[RUNS_KEY] = GeomcheckSession(
        config=config,
        models=display,
        thresholds=load_thresholds(_setting(config, "thresholds")),
        artifacts_dir=config.invocation_params.dir / _setting(config, "artifacts-dir"),
    )
    config.pluginmanager.register(Summary(), "geomcheck-summary")


def check_baseline_folders(config: pytest.Config, names: list[str]) -> None:
    """Refuse, before any model loads, two models that would share one baseline folder, and a
    ``--baseline`` that does not exist or that ``--snapshot-update`` would overwrite."""
    from geomcheck.baseline import baseline_name, baseline_override, baselines_root

    folders: dict[str, str] = {}
    for name in names:
        folder, source = baseline_name(name), registry.resolve(name).source
        if folders.setdefault(folder, source) != source:
            raise pytest.UsageError(
                f"two models would share the baselines of '{folder}': {folders[folder]} and {source}. "
                "Give the checkpoint folders distinct names, or check them in separate sessions with --baseline."
            )
    override = baseline_override(config)
    if override is None:
        return
    if config.getoption("update_snapshots", default=False):
        raise pytest.UsageError(
            f"--baseline {override} with --snapshot-update would overwrite {override}'s baseline with another model's "
            f"numbers. Update it from its own model: pytest checks/ --model {override} --snapshot-update"
        )
    folder = baselines_root(config) / baseline_name(override)
    if not folder.is_dir():
        raise pytest.UsageError(
            f"--baseline {override}: no baselines in {folder}. Create them with: pytest checks/ --model {override} --snapshot-update"
        )


def check_name(item: pytest.Item | pytest.Function) -> str:
    """A check's name in thresholds and summaries: its function name without ``test_``."""
    return getattr(item, "originalname", item.name).removeprefix("test_")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize checks over models (``[model]``) and, if they ask for ``stream``, streams (``[model-mid]``)."""
    session = metafunc.config.stash[RUNS_KEY]
    if "model_name" in metafunc.fixturenames:
        # xdist_group: under `-n N` (--dist loadgroup) each model's checks share one worker, which loads it once
        params = [pytest.param(m, id=name, marks=pytest.mark.xdist_group(name)) for m, name in session.models.items()]
        metafunc.parametrize("model_name", params, scope="session")
    if "stream" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("geomcheck_streams")
        streams = [s for s in streams_setting(metafunc.config) if marker is None or s in marker.args]
        metafunc.parametrize("stream", streams, ids=streams)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark per-model findings (hypotheses that do not hold) as strict expected failures."""
    session = config.stash[RUNS_KEY]
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "model_name" not in params:
            continue
        reason = session.expected_failure(check_name(item), session.models[params["model_name"]], params.get("stream"))
        if reason:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))


def _live(config: pytest.Config):
    """Let progress bars and the memory estimate reach the terminal while a model runs."""
    capture_manager = config.pluginmanager.getplugin("capturemanager")
    return capture_manager.global_and_fixture_disabled() if capture_manager else contextlib.nullcontext()


@pytest.fixture(scope="session")
def geomcheck_session(request: pytest.FixtureRequest) -> GeomcheckSession:
    """The session's model runs, options and thresholds."""
    return request.config.stash[RUNS_KEY]


@pytest.fixture(scope="session")
def model_run(geomcheck_session: GeomcheckSession, model_name: str) -> ModelRun:
    """One model's run (prompts, model, cache), shared by every check of the session."""
    return geomcheck_session.run(model_name)


@pytest.fixture(scope="session")
def geometry(request: pytest.FixtureRequest, model_run: ModelRun, model_name: str, geomcheck_session: GeomcheckSession) -> Geometry:
    """Per-layer statistics with 95% bootstrap intervals, parametrized over --model; draws the note's figure."""
    from geomcheck import figures

    name = geomcheck_session.models[model_name]
    with _live(request.config):
        model_run.geometry
    path = figures.write_geometry(name, model_run.geometry, geomcheck_session.artifacts_dir)
    geomcheck_session.add_figure(model_name, "geometry", path)
    return model_run.geometry


@pytest.fixture(scope="session")
def activations(model_run: ModelRun) -> dict[str, dict[str, Any]]:
    """Raw last-token activations: {set: {stream: array (prompts, layers, features)}}."""
    samples = model_run.capture.samples
    assert samples is not None, "activations were captured without samples"
    return samples


@pytest.fixture(scope="session")
def weights(request: pytest.FixtureRequest, model_run: ModelRun, model_name: str, geomcheck_session: GeomcheckSession) -> WeightOverlap:
    """Layers × layers overlap of each layer's top-k residual-writing directions; draws the heatmap."""
    from geomcheck import figures

    with _live(request.config):
        model_run.weights
    path = figures.write_overlap(geomcheck_session.models[model_name], model_run.weights, geomcheck_session.artifacts_dir)
    geomcheck_session.add_figure(model_name, "weight-overlap", path)
    return model_run.weights


@pytest.fixture
def geomcheck_overlay(geometry: Geometry, model_name: str, geomcheck_session: GeomcheckSession):
    """Call with a baseline's Geometry: draws this run's curves over it (``geometry-vs-baseline.png``),
    listed and attached like the other figures."""

    def draw(baseline: Geometry) -> Path:
        from geomcheck import figures

        path = figures.write_geometry(geomcheck_session.models[model_name], geometry, geomcheck_session.artifacts_dir, baseline=baseline)
        geomcheck_session.add_figure(model_name, "geometry-vs-baseline", path)
        return path

    return draw


@pytest.fixture
def thresholds(request: pytest.FixtureRequest, geomcheck_session: GeomcheckSession, model_name: str) -> dict[str, Any]:
    """This check's thresholds for this model ([<check>] merged with [models.<model>.<check>])."""
    return geomcheck_session.thresholds_for(check_name(request.node), geomcheck_session.models[model_name])


@pytest.fixture
def geomcheck_record(request: pytest.FixtureRequest, geomcheck_session: GeomcheckSession, record_property):
    """Call with the check's key figure (a string); it goes to the terminal summary and the JUnit XML,
    with the paths of the model's figures."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    model = params.get("model_name")

    def record(text: str) -> None:
        # Properties travel with the report, so the summary also works under pytest-xdist.
        record_property("geomcheck", text)
        record_property("geomcheck_id", [geomcheck_session.models.get(model, "?"), check_name(request.node), params.get("stream")])
        for kind, path in geomcheck_session.figures.get(model, {}).items():
            record_property(f"geomcheck_figure_{kind}", str(path))
        record_property("geomcheck_loads", geomcheck_session.run(model).loads)

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Embed the check's figures in pytest-html's report, when pytest-html is installed."""
    report = yield
    html = item.config.pluginmanager.getplugin("html")
    if html is not None and report.when == "call":
        paths = [v for k, v in item.user_properties if k.startswith("geomcheck_figure_")]
        pngs = (base64.b64encode(Path(p).read_bytes()).decode() for p in paths)
        report.extras = [*getattr(report, "extras", []), *(html.extras.png(png) for png in pngs)]
    return report


class Summary:
    """Collects each check's key figure and outcome from the reports (in the controller under xdist)."""

    def __init__(self) -> None:
        self.findings: dict[str, Finding] = {}
        self.figures: dict[str, dict[str, Path]] = {}
        self.loads: dict[str, int] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        properties = dict(report.user_properties)
        if report.when != "call" or "geomcheck" not in properties:
            return
        model, check, stream = properties["geomcheck_id"]
        outcome = "xfail" if hasattr(report, "wasxfail") else report.outcome
        self.findings[report.nodeid] = Finding(model, check, stream, properties["geomcheck"], outcome)
        for key, value in properties.items():
            if key.startswith("geomcheck_figure_"):
                self.figures.setdefault(model, {})[key.removeprefix("geomcheck_figure_")] = Path(value)
        self.loads[model] = properties["geomcheck_loads"]

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.findings:
            return
        terminalreporter.section("geomcheck")
        grouped: dict[tuple[str, str], list[Finding]] = {}
        for finding in self.findings.values():
            grouped.setdefault((finding.model, finding.check), []).append(finding)
        for (model, check), findings in grouped.items():
            parts = [f"{f.stream + ': ' if f.stream else ''}{f.text} [{f.outcome}]" for f in findings]
            terminalreporter.write_line(f"{model:<18} {check:<26} " + " | ".join(parts))
        for model, paths in self.figures.items():
            for path in paths.values():
                terminalreporter.write_line(f"{model}: figure {path}")
        for model, loads in self.loads.items():
            terminalreporter.write_line(f"{model}: model loaded {loads}×" + (" (all from cache)" if loads == 0 else ""))
