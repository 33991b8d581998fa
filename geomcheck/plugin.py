"""The pytest plugin (entry point ``geomcheck.plugin``): its hooks and the fixtures checks ask for.

Thin glue: the options live in :mod:`geomcheck.options`, the session's model runs in
:mod:`geomcheck.session`, the end-of-session report in :mod:`geomcheck.summary`; everything handed to a
check comes from :mod:`geomcheck.run.pipeline`. Each model is loaded and run at most once per session, however
many checks read it.

A check is parametrized over ``model_name``, the model as given to ``--model`` (registry name, hub id or
path); its display name, shown in test ids, thresholds and summaries, is
``geomcheck_session.display_names[model_name]``.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from geomcheck import spelling
from geomcheck.options import add_ini, add_options, run_options, setting, validate
from geomcheck.session import DIGESTS, SESSION_KEY, GeomcheckSession
from geomcheck.spelling import Spelling
from geomcheck.summary import Summary

if TYPE_CHECKING:  # the heavy modules load when a check first needs them, not at pytest start-up
    from geomcheck.gate.drift import DriftMatrix
    from geomcheck.stats.geometry import Geometry
    from geomcheck.run.pipeline import ModelRun, WeightOverlap
    from geomcheck.run.registry import ModelSpec

# every model-parametrized fixture of the plugin requests one of these (geometry, weights and activations ask for
# model_run for this alone): a test that reaches one is a check (is_check)
CHECK_FIXTURES = ("model_run", "thresholds")


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """Always ``--geomcheck-<name>`` (no clash with another project's options); the short ``--<name>``
    spellings only where a project opts in (:mod:`geomcheck.activate`, loaded by ``-p`` before this entry
    point), and there ``--help`` lists each option once, by its short spelling."""
    add_options(parser, short=False, listed=not pluginmanager.has_plugin("geomcheck.activate"))
    add_ini(parser)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under ``--dist loadgroup``, keep each model's checks on one worker, read from the model id in the
    node id (``test_x[smollm2-135m-mid]``): xdist's own grouping by node-id suffix is silently lost with
    pytest ≥ 9.2 (pytest-xdist issue 1386), and a model loaded on every worker costs minutes."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    models = sorted(config.stash[SESSION_KEY].display_names.values(), key=len, reverse=True)

    class ByModel(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            params = nodeid.rpartition("[")[2] if nodeid.endswith("]") else ""
            model = next((m for m in models if params == f"{m}]" or params.startswith(f"{m}-")), None)
            return f"geomcheck-model:{model}" if model else super()._split_scope(nodeid)

    return ByModel(config, log)


SPELLING_KEY = pytest.StashKey[Spelling]()  # the spelling this session replaced, restored at its end


def pytest_configure(config: pytest.Config) -> None:
    # before anything can raise a message that names an option: the project's opt-in state spells them
    config.stash[SPELLING_KEY] = spelling.use(Spelling(short=config.pluginmanager.has_plugin("geomcheck.activate")))
    config.addinivalue_line("markers", "geomcheck_streams(*streams): streams a check is parametrized over")
    config.addinivalue_line("markers", "geomcheck_check: set by geomcheck on the tests it parametrizes over models")
    if not config.pluginmanager.hasplugin("xdist"):  # set on each model's checks; xdist registers it itself
        config.addinivalue_line("markers", "xdist_group(name): pytest-xdist's group of tests that share one worker")
    specs, thresholds = validate(config)
    config.stash[SESSION_KEY] = GeomcheckSession(
        config=config,
        specs=specs,
        thresholds=thresholds,
        artifacts_dir=config.invocation_params.dir / setting(config, "artifacts-dir"),
    )
    if (address := setting(config, "geomcheck-ray")) is not None:
        configure_ray(config, address)
    if config.getoption("geomcheck_cache_clear") and not hasattr(config, "workerinput"):  # once, in the controller
        from geomcheck.run import cache

        cache.clear(run_options(config).cache_dir)
    config.pluginmanager.register(Summary(), "geomcheck-summary")


def configure_ray(config: pytest.Config, address: str) -> None:
    """``--geomcheck-ray``: the session's models are captured as Ray tasks, their records gated here."""
    import functools

    from geomcheck.run import distributed

    if config.getoption("numprocesses", default=None):
        raise pytest.UsageError("--geomcheck-ray runs every model's capture in parallel on Ray already: drop -n")
    try:
        gpus = distributed.gpus_option(setting(config, "geomcheck-ray-gpus"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from exc
    session = config.stash[SESSION_KEY]
    session.remote = functools.partial(
        distributed.capture_all, dict(session.display_names), session.options, address, gpus, session.artifacts_dir / "records"
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if SPELLING_KEY in config.stash:  # an in-process run (pytester) leaves the outer session's spelling as it was
        spelling.use(config.stash[SPELLING_KEY])


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands what it measured to the controller, which draws models.png once; the
    controller writes each model's record (``--geomcheck-record-to``)."""
    if hasattr(session.config, "workeroutput"):
        from geomcheck.report.across_models import to_wire

        session.config.workeroutput[DIGESTS] = [to_wire(d) for d in session.config.stash[SESSION_KEY].digests()]
    elif (target := setting(session.config, "geomcheck-record-to")) is not None:
        from geomcheck.session import write_records

        lines, complete = write_records(session.config.stash[SESSION_KEY], session.config.invocation_params.dir / target)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for line in lines:
            reporter.write_line(line) if reporter is not None else print(line)
        if not complete and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
    session = metafunc.config.stash[SESSION_KEY]
    # the test id is the display name, from which pytest_xdist_make_scheduler groups each model's checks on
    # one worker; xdist_group says the same to xdist's own loadgroup scheduling
    params = [
        pytest.param(model_arg, id=model, marks=[pytest.mark.xdist_group(model), pytest.mark.geomcheck_check])
        for model_arg, model in session.display_names.items()
    ]
    metafunc.definition.add_marker(pytest.mark.parametrize("model_name", params, scope="session"))
    if "stream" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("geomcheck_streams")
        streams = [s for s in session.options.streams if marker is None or s in marker.args]
        metafunc.definition.add_marker(pytest.mark.parametrize("stream", streams, ids=streams))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Name each check for the summary (model, check, stream travel with its reports, also under xdist), and
    mark per-model findings (hypotheses that do not hold) as strict expected failures."""
    session = config.stash[SESSION_KEY]
    for item in items:
        if item.get_closest_marker("geomcheck_check") is None:
            continue
        params = item.callspec.params  # type: ignore[attr-defined]
        model = session.display_names[params["model_name"]]
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


def _computed_and_drawn(
    request: pytest.FixtureRequest,
    session: GeomcheckSession,
    model_arg: str,
    what: str,
    draw: Callable[[str, Any, Path], Path],
    kind: str | None = None,
) -> Any:
    """``run(model_arg).<what>``, computed with its progress shown, and its figure, drawn by
    ``draw(model, value, artifacts_dir)`` and listed as ``kind`` (default: ``what``)."""
    with _live(request.config):
        value = session.computed(model_arg, what)
    with session.run(model_arg).timed("figures"):
        path = draw(session.display_names[model_arg], value, session.artifacts_dir)
    session.add_figure(model_arg, kind or what, path)
    return value


@pytest.fixture(scope="session")
def geomcheck_session(request: pytest.FixtureRequest) -> GeomcheckSession:
    """The session's model runs, options and thresholds; ``display_names[model_name]`` is a model's display name."""
    return request.config.stash[SESSION_KEY]


@pytest.fixture(scope="session")
def model_run(geomcheck_session: GeomcheckSession, model_name: str) -> ModelRun:
    """One model's run (prompts, model, cache), shared by every check of the session."""
    return geomcheck_session.run(model_name)


@pytest.fixture(scope="session")
def model_spec(model_run: ModelRun) -> ModelSpec:
    """What the model was resolved to (registry entry, hub id or directory): its family, e.g. ``post_ln``
    for a family whose streams are all LayerNorm outputs, dtype, revision; the same for a recorded run."""
    return model_run.spec


@pytest.fixture(scope="session")
def model_name() -> str:
    """The model as given to --model (registry name, hub id or directory); each check is parametrized over
    it, with the model's display name as the test id. Only a check (a test that uses a geomcheck model
    fixture) receives it."""
    raise pytest.UsageError("model_name is given only to geomcheck checks: ask for geometry, activations, weights or model_run")


@pytest.fixture
def stream() -> str:
    """The residual stream a check reads (pre, mid or post: --streams, narrowed by
    ``@pytest.mark.geomcheck_streams``); a check that asks for it runs once per stream."""
    raise pytest.UsageError("stream is given only to geomcheck checks: ask for geometry, activations, weights or model_run")


@pytest.fixture(scope="session")
def geometry(request: pytest.FixtureRequest, model_run: ModelRun, model_name: str, geomcheck_session: GeomcheckSession) -> Geometry:
    """Per-layer statistics with 95% bootstrap intervals, parametrized over --model; draws the note's figure.
    Read it with ``value``/``curve("mid", "var_mean/harmful")``, ``interval``, ``describe``, ``growth``,
    ``cosine_trend``, ``separation`` and ``derive`` (a statistic of your own, with its interval)."""
    from geomcheck.report import figures

    return _computed_and_drawn(request, geomcheck_session, model_name, "geometry", figures.write_geometry)


@pytest.fixture(scope="session")
def geomcheck_control(request: pytest.FixtureRequest, model_name: str, geomcheck_session: GeomcheckSession) -> Geometry | None:
    """The untrained twin's per-layer statistics (``--geomcheck-control random-init``: same architecture and
    prompts, fresh seeded weights, cached like any model), or None when the option is not given."""
    with _live(request.config):
        return geomcheck_session.control(model_name, "geometry")


@pytest.fixture(scope="session")
def geomcheck_control_weights(request: pytest.FixtureRequest, model_name: str, geomcheck_session: GeomcheckSession) -> WeightOverlap | None:
    """The untrained twin's weight overlaps (``--geomcheck-control``; its writers are the fresh model's), or
    None when the option is not given."""
    with _live(request.config):
        return geomcheck_session.control(model_name, "weights")


@pytest.fixture(scope="session")
def geomcheck_control_activations(request: pytest.FixtureRequest, model_name: str, geomcheck_session: GeomcheckSession) -> dict[str, dict[str, Any]] | None:
    """The untrained twin's raw last-token activations, shaped as ``activations``, or None when
    ``--geomcheck-control`` is not given."""
    with _live(request.config):
        capture = geomcheck_session.control(model_name, "capture")
    return None if capture is None else capture.samples


@pytest.fixture(scope="session")
def activations(model_run: ModelRun, geomcheck_session: GeomcheckSession, model_name: str) -> dict[str, dict[str, Any]]:
    """Raw last-token activations: {set: {stream: array (prompts, layers, features)}}."""
    return geomcheck_session.computed(model_name, "capture").samples


@pytest.fixture(scope="session")
def weights(request: pytest.FixtureRequest, model_run: ModelRun, model_name: str, geomcheck_session: GeomcheckSession) -> WeightOverlap:
    """Layers × layers overlap of each layer's top-k residual-writing directions; draws the heatmap."""
    from geomcheck.report import figures

    return _computed_and_drawn(request, geomcheck_session, model_name, "weights", figures.write_overlap, "weight-overlap")


@pytest.fixture
def geomcheck_overlay(geometry: Geometry, model_name: str, geomcheck_session: GeomcheckSession):
    """Call with a baseline's Geometry: draws this run's curves over it (``geometry-vs-baseline.png``);
    with the comparison's DriftMatrix also the drift map (``drift-map.png``); listed and attached like the
    other figures."""

    def draw(baseline: Geometry, drift: DriftMatrix | None = None) -> Path:
        from geomcheck.report import figures

        model, out_dir = geomcheck_session.display_names[model_name], geomcheck_session.artifacts_dir
        with geomcheck_session.run(model_name).timed("figures"):
            path = figures.write_geometry(model, geometry, out_dir, baseline=baseline, drift=drift)
            geomcheck_session.add_figure(model_name, "geometry-vs-baseline", path)
            if drift is not None:
                geomcheck_session.add_figure(model_name, "drift-map", figures.write_drift_map(model, drift, out_dir))
        return path

    return draw


@pytest.fixture
def thresholds(request: pytest.FixtureRequest, geomcheck_session: GeomcheckSession, model_name: str) -> dict[str, Any]:
    """This check's thresholds for this model ([<check>] merged with [models.<model>.<check>])."""
    return geomcheck_session.thresholds_for(check_name(request.node), geomcheck_session.display_names[model_name])


@pytest.fixture
def baseline_update_command(request: pytest.FixtureRequest) -> str:
    """The command that rewrites this check's baselines (``NAME`` standing for the model), as the user can
    type it here: the checks' folder as seen from where pytest runs, the package's own checks as
    ``--pyargs geomcheck.checks`` (never their site-packages path), options spelled for the project's opt-in."""
    from geomcheck.gate.extension import SHIPPED_CHECKS

    path = Path(request.path)
    if path.resolve().parent == SHIPPED_CHECKS:
        return f"pytest --pyargs geomcheck.checks {spelling.flag('model')} NAME --snapshot-update"
    try:
        rel = path.parent.relative_to(Path.cwd())
        where = f"{rel}/" if str(rel) != "." else path.name
    except ValueError:
        where = f"{path.parent}/"
    return spelling.current().update_command(where)


@pytest.fixture
def geomcheck_record(request: pytest.FixtureRequest):
    """Call with the check's key figure (a string), and ``control=`` the untrained twin's where one ran;
    they go to the terminal summary (the twin's in a column of its own) and the JUnit XML. A check that
    records nothing is still listed in the summary with its outcome."""
    model_arg = getattr(getattr(request.node, "callspec", None), "params", {}).get("model_name")

    def record(text: str, control: str | None = None) -> None:
        if model_arg is None:
            raise TypeError("geomcheck_record records a figure of a model: the check must use a model fixture "
                            "(geometry, weights, activations or model_name)")
        # Straight onto the item, as record_property does, minus its warning under junit_family xunit2
        # (pytest's default); properties travel with the report, so the summary also works under xdist.
        request.node.user_properties.append(("geomcheck", text))
        if control is not None:
            request.node.user_properties.append(("geomcheck_control", control))

    return record


BASELINE_CHECK = "matches_baseline"  # its call is the "baseline" phase (its figures count under "figures")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Time the baseline gate's comparison as its model's "baseline" phase."""
    session = item.config.stash.get(SESSION_KEY, None)
    model_arg = getattr(getattr(item, "callspec", None), "params", {}).get("model_name")
    if session is None or check_name(item) != BASELINE_CHECK or model_arg not in session.runs or item.get_closest_marker("geomcheck_check") is None:
        return (yield)
    with session.runs[model_arg].timed("baseline"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attach the model's figures, load count and time per phase so far to each check's call report (JUnit properties, summary);
    embed the figures in pytest-html's report, when pytest-html is installed."""
    model_arg = getattr(getattr(item, "callspec", None), "params", {}).get("model_name")
    session = item.config.stash.get(SESSION_KEY, None)
    if call.when == "call" and item.get_closest_marker("geomcheck_check") is not None:
        for kind, path in session.figures.get(model_arg, {}).items():
            item.user_properties.append((f"geomcheck_figure_{kind}", str(path)))
        if model_arg in session.runs:
            item.user_properties.append(("geomcheck_loads", session.runs[model_arg].loads))
            item.user_properties.append(("geomcheck_phases", dict(session.runs[model_arg].phases)))
            item.user_properties.append(("geomcheck_rendering", session.runs[model_arg].rendering))
    report = yield
    if report.failed and call.excinfo is not None and session is not None:
        session.show_once(item.nodeid, call.excinfo.value, report)
    html = item.config.pluginmanager.getplugin("html")
    if html is not None and report.when == "call":
        paths = [v for k, v in item.user_properties if k.startswith("geomcheck_figure_")]
        pngs = (base64.b64encode(Path(p).read_bytes()).decode() for p in paths)
        report.extras = [*getattr(report, "extras", []), *(html.extras.png(png) for png in pngs)]
    return report
