"""The pytest plugin: options, session-scoped model runs, fixtures, and the terminal summary.

Thin glue: everything it hands to a check comes from :mod:`geomcheck.pipeline`. Each model is loaded and
run at most once per session, however many checks read it.
"""

from __future__ import annotations

import base64
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from functools import cached_property
from typing import TYPE_CHECKING, Any

import pytest
from _pytest import junitxml

from geomcheck import POSITIONS, STREAMS, options, registry
from geomcheck.thresholds import load as load_thresholds, project_file

if TYPE_CHECKING:  # the heavy modules load when a check first needs them, not at pytest start-up
    from geomcheck.drift import DriftMatrix
    from geomcheck.ci import Failure
    from geomcheck.comparison import ModelDigest
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
    "thresholds": ("TOML file of check thresholds and per-model expected failures, merged over the shipped ones and [tool.geomcheck.thresholds]", "string", None),
    "baseline": ("compare every model against this model's committed baseline (registry name, hub id or baselines/ folder), e.g. a fine-tune against its base", "string", None),
}
RUNS_KEY = pytest.StashKey["GeomcheckSession"]()
DIGESTS = "geomcheck_digests"  # xdist workeroutput key: what each worker measured, for the controller


FLAGS: dict[str, str] = {
    "trust-remote-code": "allow models to run code from their repository (off unless the registry entry says so)",
    "no-chat-template": "feed prompts raw, without the chat template",
    "geomcheck-cache-clear": "empty geomcheck's activation/geometry/weights cache at the start of the run (like --cache-clear)",
}
MODEL_HELP = "model to check: registry name or local directory; repeat for several (default: smollm2-135m)"
CHECK_FIXTURES = ("model_run", "thresholds")  # every model-parametrized fixture of the plugin reads one of these


def pytest_addoption(parser: pytest.Parser) -> None:
    """Always ``--geomcheck-<name>`` (no clash with another project's options); the short ``--<name>``
    spellings only where a project opts in (:mod:`geomcheck.activate`)."""
    add_options(parser, short=False)
    parser.addini("geomcheck_models", "models to check when --model is not given", type="linelist", default=["smollm2-135m"])
    for name, (help_text, kind, default) in OPTIONS.items():
        parser.addini(_dest(name), help_text, type=kind, default=default)


def add_options(parser: pytest.Parser, short: bool) -> None:
    """Register every option once, as ``--geomcheck-<name>`` or (``short``) as ``--<name>``; both spellings
    share the dest ``geomcheck_<name>``, so code reading an option does not depend on its spelling."""
    group = parser.getgroup("geomcheck", "geomcheck: activation-geometry checks")

    def flag(name: str) -> str:
        return "--" + name.removeprefix("geomcheck-") if short else "--geomcheck-" + name.removeprefix("geomcheck-")

    group.addoption(flag("model"), action="append", dest="geomcheck_models", default=None, metavar="NAME", help=MODEL_HELP)
    for name, (help_text, _, _) in OPTIONS.items():
        if short and name.startswith("geomcheck-"):
            continue  # already namespaced: one spelling only
        dest = _dest(name)
        metavar = dest.removeprefix("geomcheck_").upper()
        group.addoption(flag(name), dest=dest, default=None, metavar=metavar, help=f"{help_text} [ini: {dest}]".replace("%", "%%"))
    for name, help_text in FLAGS.items():
        if short and name.startswith("geomcheck-"):
            continue
        group.addoption(flag(name), action="store_true", dest=_dest(name), help=help_text)


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


@dataclass
class Finding:
    """One check's key figure, for the terminal summary."""

    model: str
    check: str
    stream: str | None
    text: str
    outcome: str = "?"


def _failure(report: pytest.TestReport) -> Failure:
    """A failing report as a workflow annotation: the check's file and line, the message's first lines."""
    from geomcheck.ci import Failure

    path, line, _ = report.location
    message = report.longreprtext.strip().splitlines()
    shown = [m for m in message if m.startswith("E ")] or message  # pytest.fail(pytrace=False): the message itself
    text = "\n".join(m.removeprefix("E ").strip() for m in shown[:6])
    return Failure(path, (line or 0) + 1, report.nodeid.rpartition("::")[2], f"{report.when}: {text}" if report.when != "call" else text)


@dataclass
class GeomcheckSession:
    """Per pytest session (per worker under xdist): the model runs, one per model, and their figures."""

    config: pytest.Config
    models: dict[str, str]  # as given (name or path) -> display name used in ids, thresholds and summaries
    thresholds: dict[str, Any]
    artifacts_dir: Path
    runs: dict[str, ModelRun] = field(default_factory=dict)
    failures: dict[str, BaseException] = field(default_factory=dict)  # model -> the error its run raised
    shown: dict[int, tuple[BaseException, str]] = field(default_factory=dict)  # id(error) -> (error, first node id)
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

    def computed(self, model: str, what: str) -> Any:
        """``run(model).<what>``; a model whose run failed once is not retried (no second load, no second
        traceback): later checks fail with a one-line reference to the first error."""
        if model in self.failures:
            exc = self.failures[model]
            first_line = (str(exc).splitlines() or [""])[0]
            raise ModelRunFailed(f"{self.models[model]}: not run, its run failed in an earlier check (shown in full above): {type(exc).__name__}: {first_line}")
        try:
            return getattr(self.run(model), what)
        except Exception as exc:
            self.failures[model] = exc
            raise

    def digests(self) -> list[ModelDigest]:
        """What this process measured, per model: only what the checks computed; nothing runs for it."""
        from geomcheck.comparison import ModelDigest, overlap_ratios

        digests = []
        for model, run in self.runs.items():
            geometry, weights = run.__dict__.get("geometry"), run.__dict__.get("weights")  # computed ones only
            if geometry is None and weights is None:
                continue
            ratios = overlap_ratios(weights.matrices, weights.k, weights.d_model) if weights is not None else {}
            digests.append(ModelDigest(self.models[model], geometry, ratios, run.identity))
        return digests

    def thresholds_for(self, check: str, model: str) -> dict[str, Any]:
        merged = dict(self.thresholds.get(check, {}))
        merged.update(self.thresholds.get("models", {}).get(model, {}).get(check, {}))
        return merged

    def expected_failure(self, check: str, model: str, stream: str | None) -> str | None:
        table = self.thresholds.get("models", {}).get(model, {}).get("expected_failures", {})
        return table.get(f"{check}[{stream}]") or table.get(check)


class ModelRunFailed(RuntimeError):
    """A model's run failed in an earlier check of this session; the first failure shows the error."""


def validate(config: pytest.Config) -> tuple[dict[str, str], dict[str, Any]]:
    """Every option, ini value, model directory and the thresholds file, checked once before any model
    loads; returns the models' display names and the thresholds. Problems are usage errors."""
    names = config.getoption("geomcheck_models") or config.getini("geomcheck_models")
    trust = bool(config.getoption("geomcheck_trust_remote_code"))
    try:
        options.validate_settings({name: _setting(config, name) for name in OPTIONS})
        for name in names:
            if name not in registry.registry() and Path(name).expanduser().is_dir() and (Path(name).expanduser() / "config.json").exists():
                options.model_directory(Path(name).expanduser(), trust)
        display = {name: registry.resolve(name).name for name in names}
        thresholds = load_thresholds(_project_pyproject(config), _setting(config, "thresholds"))
        streams = options.streams(_setting(config, "streams"))
        if getattr(config.option, "update_snapshots", False) and set(streams) != set(STREAMS):
            raise options.OptionError(
                f"--snapshot-update with --streams {','.join(streams)} would drop the other streams from the committed "
                f"baselines; update with every stream (--streams {','.join(STREAMS)})"
            )
    except (options.OptionError, registry.UnknownModelError, registry.ModelLoadError) as exc:
        raise pytest.UsageError(str(exc)) from exc
    check_baseline_folders(config, names)
    return display, thresholds


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "geomcheck_streams(*streams): streams a check is parametrized over")
    config.addinivalue_line("markers", "geomcheck_check: set by geomcheck on the tests it parametrizes over models")
    display, thresholds = validate(config)
    config.stash[RUNS_KEY] = GeomcheckSession(
        config=config,
        models=display,
        thresholds=thresholds,
        artifacts_dir=config.invocation_params.dir / _setting(config, "artifacts-dir"),
    )
    if config.getoption("geomcheck_cache_clear") and not hasattr(config, "workerinput"):  # once, in the controller
        from geomcheck import cache

        cache.clear(run_options(config).cache_dir)
    config.pluginmanager.register(Summary(), "geomcheck-summary")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands what it measured to the controller, which draws models.png once."""
    if hasattr(session.config, "workeroutput"):
        from geomcheck.comparison import to_wire

        session.config.workeroutput[DIGESTS] = [to_wire(d) for d in session.config.stash[RUNS_KEY].digests()]


def _project_pyproject(config: pytest.Config) -> Path | None:
    """The project's ``pyproject.toml``: beside pytest's ini file, else in the rootdir, else where pytest
    started (a path-valued option such as ``--model ./dir`` can move the rootdir above the project)."""
    folders = [config.inipath.parent] if config.inipath else []
    return project_file(*folders, config.rootpath, config.invocation_params.dir)


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


def is_check(metafunc: pytest.Metafunc) -> bool:
    """A geomcheck check asks, directly or through a fixture, for one of the plugin's model fixtures; a
    foreign test with its own ``stream`` or ``model_name`` is none of geomcheck's business."""
    for name in CHECK_FIXTURES:
        defs = metafunc._arg2fixturedefs.get(name)
        if defs and defs[-1].func.__module__ == __name__:
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize checks over models (``[model]``) and, if they ask for ``stream``, streams (``[model-mid]``).

    As ``parametrize`` marks, added before pytest reads them: a mark takes precedence over a project's own
    (even parametrized) ``stream`` or ``model_name`` fixture, which a check must not silently receive."""
    if not is_check(metafunc):
        return
    session = metafunc.config.stash[RUNS_KEY]
    # xdist_group: under `-n N` (--dist loadgroup) each model's checks share one worker, which loads it once
    params = [
        pytest.param(m, id=name, marks=[pytest.mark.xdist_group(name), pytest.mark.geomcheck_check])
        for m, name in session.models.items()
    ]
    metafunc.definition.add_marker(pytest.mark.parametrize("model_name", params, scope="session"))
    if "stream" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("geomcheck_streams")
        streams = [s for s in streams_setting(metafunc.config) if marker is None or s in marker.args]
        metafunc.definition.add_marker(pytest.mark.parametrize("stream", streams, ids=streams))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Name each check for the summary (model, check, stream travel with its reports, also under xdist), and
    mark per-model findings (hypotheses that do not hold) as strict expected failures."""
    session = config.stash[RUNS_KEY]
    for item in items:
        if item.get_closest_marker("geomcheck_check") is None:
            continue
        params = item.callspec.params  # type: ignore[attr-defined]
        model = session.models[params["model_name"]]
        item.user_properties.append(("geomcheck_id", [model, check_name(item), params.get("stream")]))
        reason = session.expected_failure(check_name(item), model, params.get("stream"))
        if reason:
            # only the hypothesis' own failed assertion is the finding: an error in loading, prompts or
            # options is no finding, and fails the run
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True, raises=AssertionError))


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
        geomcheck_session.computed(model_name, "geometry")
    path = figures.write_geometry(name, model_run.geometry, geomcheck_session.artifacts_dir)
    geomcheck_session.add_figure(model_name, "geometry", path)
    return model_run.geometry


@pytest.fixture(scope="session")
def activations(geomcheck_session: GeomcheckSession, model_name: str) -> dict[str, dict[str, Any]]:
    """Raw last-token activations: {set: {stream: array (prompts, layers, features)}}."""
    samples = geomcheck_session.computed(model_name, "capture").samples
    assert samples is not None, "activations were captured without samples"
    return samples


@pytest.fixture(scope="session")
def weights(request: pytest.FixtureRequest, model_run: ModelRun, model_name: str, geomcheck_session: GeomcheckSession) -> WeightOverlap:
    """Layers × layers overlap of each layer's top-k residual-writing directions; draws the heatmap."""
    from geomcheck import figures

    with _live(request.config):
        geomcheck_session.computed(model_name, "weights")
    path = figures.write_overlap(geomcheck_session.models[model_name], model_run.weights, geomcheck_session.artifacts_dir)
    geomcheck_session.add_figure(model_name, "weight-overlap", path)
    return model_run.weights


@pytest.fixture
def geomcheck_overlay(geometry: Geometry, model_name: str, geomcheck_session: GeomcheckSession):
    """Call with a baseline's Geometry: draws this run's curves over it (``geometry-vs-baseline.png``);
    with the comparison's DriftMatrix also the drift map (``drift-map.png``); listed and attached like the
    other figures."""

    def draw(baseline: Geometry, drift: DriftMatrix | None = None) -> Path:
        from geomcheck import figures

        name, out_dir = geomcheck_session.models[model_name], geomcheck_session.artifacts_dir
        path = figures.write_geometry(name, geometry, out_dir, baseline=baseline, drift=drift)
        geomcheck_session.add_figure(model_name, "geometry-vs-baseline", path)
        if drift is not None:
            geomcheck_session.add_figure(model_name, "drift-map", figures.write_drift_map(name, drift, out_dir))
        return path

    return draw


@pytest.fixture
def thresholds(request: pytest.FixtureRequest, geomcheck_session: GeomcheckSession, model_name: str) -> dict[str, Any]:
    """This check's thresholds for this model ([<check>] merged with [models.<model>.<check>])."""
    return geomcheck_session.thresholds_for(check_name(request.node), geomcheck_session.models[model_name])


@pytest.fixture
def geomcheck_record(request: pytest.FixtureRequest):
    """Call with the check's key figure (a string); it goes to the terminal summary and the JUnit XML.
    A check that records nothing is still listed in the summary with its outcome."""
    model = getattr(getattr(request.node, "callspec", None), "params", {}).get("model_name")

    def record(text: str) -> None:
        if model is None:
            raise TypeError("geomcheck_record records a figure of a model: the check must use a model fixture "
                            "(geometry, weights, activations or model_name)")
        # Straight onto the item, as record_property does, minus its warning under junit_family xunit2
        # (pytest's default); properties travel with the report, so the summary also works under xdist.
        request.node.user_properties.append(("geomcheck", text))

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attach the model's figures and load count to each check's call report (JUnit properties, summary);
    embed the figures in pytest-html's report, when pytest-html is installed."""
    model = getattr(getattr(item, "callspec", None), "params", {}).get("model_name")
    if call.when == "call" and item.get_closest_marker("geomcheck_check") is not None:
        session = item.config.stash[RUNS_KEY]
        for kind, path in session.figures.get(model, {}).items():
            item.user_properties.append((f"geomcheck_figure_{kind}", str(path)))
        if model in session.runs:
            item.user_properties.append(("geomcheck_loads", session.runs[model].loads))
    report = yield
    if report.failed and call.excinfo is not None:
        _show_once(item, call.excinfo.value, report)
    html = item.config.pluginmanager.getplugin("html")
    if html is not None and report.when == "call":
        paths = [v for k, v in item.user_properties if k.startswith("geomcheck_figure_")]
        pngs = (base64.b64encode(Path(p).read_bytes()).decode() for p in paths)
        report.extras = [*getattr(report, "extras", []), *(html.extras.png(png) for png in pngs)]
    return report


def _show_once(item: pytest.Item, exc: BaseException, report: pytest.TestReport) -> None:
    """A session fixture's error is re-raised, as the same object, in every check that uses it: show its
    traceback with the first check only, and a one-line reference with the others (they still fail)."""
    session = item.config.stash.get(RUNS_KEY, None)
    if session is None:
        return
    if isinstance(exc, ModelRunFailed):
        report.longrepr = str(exc)
    elif id(exc) in session.shown:
        first = session.shown[id(exc)][1]
        report.longrepr = f"same error as {first}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    else:
        session.shown[id(exc)] = (exc, item.nodeid)  # the object is kept, so its id is not reused


class Summary:
    """Collects each check's key figure and outcome from the reports (in the controller under xdist)."""

    def __init__(self) -> None:
        self.findings: dict[str, Finding] = {}
        self.figures: dict[str, dict[str, Path]] = {}
        self.loads: dict[str, int] = {}
        self.digests: dict[str, ModelDigest] = {}  # model -> what was measured (from every worker)
        self.failures: list[Failure] = []
        self.models_figure: Path | None = None
        self.comparison: list[str] = []

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        from geomcheck.comparison import from_wire

        for wire in getattr(node, "workeroutput", {}).get(DIGESTS, []):
            self.digests.setdefault(wire["model"], from_wire(wire))

    @pytest.hookimpl(tryfirst=True)  # before the JUnit XML is written, so models.png is listed in it
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """In the controller: models.png across models, the per-model table, and the CI job summary."""
        from geomcheck import ci, comparison, figures

        if hasattr(session.config, "workeroutput"):
            return
        geomcheck_session = session.config.stash[RUNS_KEY]
        for digest in geomcheck_session.digests():
            self.digests.setdefault(digest.model, digest)
        order = list(geomcheck_session.models.values())
        digests = sorted(self.digests.values(), key=lambda d: order.index(d.model) if d.model in order else len(order))
        if not digests:
            return
        self.comparison = comparison.table_lines(digests)
        geometries = {d.model: d.geometry for d in digests if d.geometry is not None}
        if len(geometries) > 1:
            self.models_figure = figures.write_models(geometries, geomcheck_session.artifacts_dir)
            xml = session.config.stash.get(junitxml.xml_key, None)
            if xml is not None:
                xml.add_global_property("geomcheck_figure_models", str(self.models_figure))
        if (path := ci.step_summary_path()) is not None:
            text = ci.markdown_summary(list(self.findings.values()), digests, self.figures, self.models_figure, self.failures)
            ci.append_step_summary(path, text)

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session) -> None:
        """pytest-html: models.png embedded above the results, as each check's figures are in its row."""
        if self.models_figure is not None:
            png = base64.b64encode(self.models_figure.read_bytes()).decode()
            prefix.append(f'<p>geomcheck: all models</p><img src="data:image/png;base64,{png}" alt="models.png" style="max-width:100%">')

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Every check once: its call, or the setup that failed or skipped before it could run."""
        if report.failed:
            self.failures.append(_failure(report))
        properties = dict(report.user_properties)
        if "geomcheck_id" not in properties or not (report.when == "call" or (report.when == "setup" and not report.passed)):
            return
        model, check, stream = properties["geomcheck_id"]
        outcome = "xfail" if hasattr(report, "wasxfail") else "error" if report.failed and report.when == "setup" else report.outcome
        self.findings[report.nodeid] = Finding(model, check, stream, properties.get("geomcheck", "no figure recorded"), outcome)
        for key, value in properties.items():
            if key.startswith("geomcheck_figure_"):
                self.figures.setdefault(model, {})[key.removeprefix("geomcheck_figure_")] = Path(value)
        if "geomcheck_loads" in properties:
            self.loads[model] = properties["geomcheck_loads"]

    def pytest_terminal_summary(self, terminalreporter) -> None:
        from geomcheck import ci

        if ci.step_summary_path() is not None:  # GitHub Actions reads these lines from the log
            for line in ci.annotations(self.failures):
                terminalreporter.write_line(line)
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
        for line in self.comparison:
            terminalreporter.write_line(line)
        if self.models_figure is not None:
            terminalreporter.write_line(f"all models: figure {self.models_figure}")
        cache_line(terminalreporter)


def cache_line(terminalreporter) -> None:
    """The cache's place and size, once it is large, with how to empty it."""
    from geomcheck import cache

    root = run_options(terminalreporter.config).cache_dir
    size = cache.size_bytes(root)
    if size >= cache.LARGE_BYTES:
        terminalreporter.write_line(f"geomcheck cache: {root} holds {size / 2**30:.1f} GiB (empty it with --geomcheck-cache-clear)")
