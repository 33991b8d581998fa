"""geomcheck's options: their registration, how a run's settings are read, and their validation at start-up.

Each option is a command-line flag and an ini key ``geomcheck_<name>``; the command line wins. An option
that sets a field of :class:`geomcheck.pipeline.RunOptions` takes that field's default when it is not
given, so each default is written once, in ``RunOptions``. Nothing heavy is imported here: the pipeline
loads when a run's options are first built.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from geomcheck import POSITIONS, STREAMS, options, registry
from geomcheck.thresholds import load as load_thresholds, project_file

if TYPE_CHECKING:
    from geomcheck.pipeline import RunOptions

ARTIFACTS_DIR = "geomcheck-artifacts"  # the one default that is no RunOptions field (figures are no run's business)
# name -> (help, how its text becomes the RunOptions field of the same name, or None for an option that is
# no field of RunOptions). Each is an option --<name> and an ini key geomcheck_<name with underscores>.
OPTIONS: dict[str, tuple[str, Callable[[str], Any] | None]] = {
    "device": ("torch device to run on (cpu, cuda, cuda:1, mps)", str),
    "dtype": ("dtype for the model: float32, bfloat16 or float16 (default: the registry's)", str),
    "batch-size": ("prompts per forward pass", int),
    "max-prompts": ("use at most this many prompts of each set", int),
    "harmful": ("harmful prompt set: built-in name or a .txt/.jsonl/.csv file (file.csv:column)", str),
    "harmless": ("harmless prompt set: built-in name or a .txt/.jsonl/.csv file (file.jsonl:field)", str),
    "position": (f"token position to read: {' or '.join(POSITIONS)} (over real tokens)", str),
    "streams": ("comma-separated residual streams to check (pre,mid,post)", options.streams),
    "n-boot": ("bootstrap resamples for the 95% intervals (0: point values only)", int),
    "seed": ("seed of the bootstrap", int),
    "top-k": ("singular vectors per weight matrix for the shared-directions check", int),
    "device-map": ("accelerate device map for models larger than one device, e.g. auto", str),
    "geomcheck-cache-dir": ("activation cache directory (default: $GEOMCHECK_CACHE or ~/.cache/geomcheck)", Path),
    "artifacts-dir": (f"where figures are written (default: {ARTIFACTS_DIR})", None),
    "thresholds": ("TOML file of check thresholds and per-model expected failures, merged over the shipped ones and [tool.geomcheck.thresholds]", None),
    "geomcheck-control": ("also run an untrained twin of each model and report it beside the checkpoint: random-init (same architecture, fresh weights seeded by --seed, built from the config; off when not given)", str),
    "geomcheck-json": ("write the run's results (each check's verdict and figure, each model's identity and statistics) to this JSON file", None),
    "geomcheck-record-to": ("at the end of the session, write each model's record (readings, statistics, weight overlaps, identity) to DIR/<model>/; gate it where the model is not, with --model record:DIR/<model>", None),
    "geomcheck-ray": ("capture each model as a Ray task and gate the records here: local (a Ray instance on this machine), auto (this machine's cluster) or ray://HEAD:10001; needs pip install geomcheck[ray]", None),
    "geomcheck-ray-gpus": ("GPUs per Ray task (default: 1 with a cuda --device, else 0)", None),
    "baseline": ("compare every model against this model's committed baseline (registry name, hub id or baselines/ folder), e.g. a fine-tune against its base", None),
}
FLAGS: dict[str, str] = {
    "trust-remote-code": "allow models to run code from their repository (off unless the registry entry says so)",
    "no-chat-template": "feed prompts raw, without the chat template",
    "geomcheck-sweep": "the models are checkpoints of one model, in order: draw sweep.png (key figures and drift from the first checkpoint against the checkpoint) and print the sweep table",
    "geomcheck-cache-clear": "empty geomcheck's activation/geometry/weights cache at the start of the run (like --cache-clear)",
}
MODEL_HELP = "model to check: registry name, hub id ORG/NAME[@REV], local directory or record:DIR (a run recorded with --geomcheck-record-to); repeat for several (default: smollm2-135m)"


def add_ini(parser: pytest.Parser) -> None:
    """Every option's ini key, and ``geomcheck_models``; integer options are typed ``int``, so a TOML file
    writes ``geomcheck_n_boot = 400`` without quotes."""
    parser.addini("geomcheck_models", "models to check when --model is not given", type="linelist", default=["smollm2-135m"])
    for name, (help_text, parse) in OPTIONS.items():
        parser.addini(dest(name), with_default(name, help_text), type="int" if parse is int else "string",
                      default=ARTIFACTS_DIR if name == "artifacts-dir" else None)


def with_default(name: str, help_text: str) -> str:
    """The help text with the default it takes when not given (RunOptions' field), as ``--help`` shows it."""
    from geomcheck.pipeline import RunOptions

    field = next((f for f in dataclasses.fields(RunOptions) if f.name == dest(name).removeprefix("geomcheck_")), None)
    if field is None or field.default in (None, dataclasses.MISSING) or "default:" in help_text:
        return help_text
    shown = ",".join(field.default) if isinstance(field.default, tuple) else field.default
    return f"{help_text} (default: {shown})"


def add_options(parser: pytest.Parser, short: bool, listed: bool = True) -> None:
    """Register every option once, as ``--geomcheck-<name>`` or (``short``) as ``--<name>``; both spellings
    share the dest ``geomcheck_<name>``, so code reading an option does not depend on its spelling. Not
    ``listed``, an option works but stays out of ``--help`` (where the short spelling already lists it)."""
    group = parser.getgroup("geomcheck", "geomcheck: activation-geometry checks")

    def flag(name: str) -> str:
        return "--" + name.removeprefix("geomcheck-") if short else "--geomcheck-" + name.removeprefix("geomcheck-")

    def shown(name: str, text: str) -> str:
        # the namespaced options have no short twin, so they are always listed
        return text if listed or name.startswith("geomcheck-") else argparse.SUPPRESS

    group.addoption(flag("model"), action="append", dest="geomcheck_models", default=None, metavar="NAME", help=shown("model", MODEL_HELP))
    for name, (help_text, _) in OPTIONS.items():
        if short and name.startswith("geomcheck-"):
            continue  # already namespaced: one spelling only
        option_dest = dest(name)
        metavar = option_dest.removeprefix("geomcheck_").upper()
        text = f"{with_default(name, help_text)} [ini: {option_dest}]".replace("%", "%%")
        group.addoption(flag(name), dest=option_dest, default=None, metavar=metavar, help=shown(name, text))
    for name, help_text in FLAGS.items():
        if short and name.startswith("geomcheck-"):
            continue
        group.addoption(flag(name), action="store_true", dest=dest(name), help=shown(name, help_text))


def dest(name: str) -> str:
    """Option ``--batch-size`` (or ``--geomcheck-cache-dir``) → dest and ini key ``geomcheck_batch_size``."""
    return "geomcheck_" + name.removeprefix("geomcheck-").replace("-", "_")


def setting(config: pytest.Config, name: str) -> Any:
    """An option's text from the command line, else the ini file (an ``int`` key: its number); None where
    neither gives one."""
    value = config.getoption(dest(name))
    if value is None:
        try:
            value = config.getini(dest(name))
        except (TypeError, ValueError, pytest.UsageError) as exc:  # pytest's conversion of an int key, unnamed
            raise options.OptionError(f"ini {dest(name)} is not valid: {exc}; expected a whole number, e.g. {dest(name)} = 4") from exc
    return value if value not in (None, "") else None


def run_options(config: pytest.Config) -> RunOptions:
    """The session's RunOptions from command line and ini; an option not given keeps the field's default."""
    from geomcheck.pipeline import RunOptions

    given = {
        dest(name).removeprefix("geomcheck_"): parse(value)
        for name, (_, parse) in OPTIONS.items()
        if parse is not None and (value := setting(config, name)) is not None
    }
    options = RunOptions(
        **given,
        chat_template=False if config.getoption("geomcheck_no_chat_template") else None,
        trust_remote_code=bool(config.getoption("geomcheck_trust_remote_code")),
        progress=config.getoption("verbose") >= 0 and _on_terminal(config),
    )
    worker = getattr(config, "workerinput", {}).get("workerid")
    if options.device == "cuda" and worker is not None:  # -n N: each xdist worker its own GPU
        import torch

        from geomcheck.distributed import worker_device

        return dataclasses.replace(options, device=worker_device(options.device, worker, torch.cuda.device_count()))
    return options


def _on_terminal(config: pytest.Config) -> bool:
    """Whether pytest writes to a terminal (checked by pytest before its capture replaces stdout): progress
    bars only there, never in a CI log or a pipe."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return reporter is not None and bool(reporter.isatty())


def validate(config: pytest.Config) -> tuple[dict[str, str], dict[str, Any]]:
    """Every option, ini value, model directory and the thresholds file, checked once before any model
    loads; returns the models' display names (by the model as given) and the thresholds. Problems are
    usage errors."""
    model_args = config.getoption("geomcheck_models") or config.getini("geomcheck_models")
    trust = bool(config.getoption("geomcheck_trust_remote_code"))
    try:
        options.validate_settings({name: setting(config, name) for name in OPTIONS})
        for model_arg in model_args:
            path = Path(model_arg).expanduser()
            if model_arg not in registry.registry() and path.is_dir() and (path / "config.json").exists():
                options.model_directory(path, trust)
        specs = {model_arg: registry.resolve(model_arg) for model_arg in model_args}  # once: a hub id may ask the hub
        for model_arg in model_args:
            if model_arg.startswith("record:"):  # a record measured with other options is refused now, not per check
                from geomcheck.record import new_run

                options_now = run_options(config)
                new_run(model_arg, options_now, control=options_now.control)
        thresholds = load_thresholds(_project_pyproject(config), setting(config, "thresholds"))
        streams = setting(config, "streams")
        if streams and getattr(config.option, "update_snapshots", False) and set(options.streams(streams)) != set(STREAMS):
            raise options.OptionError(
                f"--snapshot-update with --streams {','.join(options.streams(streams))} would drop the other streams from the committed "
                f"baselines; update with every stream (--streams {','.join(STREAMS)})"
            )
    except (options.OptionError, registry.UnknownModelError, registry.ModelLoadError) as exc:
        raise pytest.UsageError(str(exc)) from exc
    check_baseline_folders(config, specs)
    return {model_arg: spec.name for model_arg, spec in specs.items()}, thresholds


def _project_pyproject(config: pytest.Config) -> Path | None:
    """The project's ``pyproject.toml``: beside pytest's ini file, else in the rootdir, else where pytest
    started (a path-valued option such as ``--model ./dir`` can move the rootdir above the project)."""
    folders = [config.inipath.parent] if config.inipath else []
    return project_file(*folders, config.rootpath, config.invocation_params.dir)


def check_baseline_folders(config: pytest.Config, specs: dict[str, registry.ModelSpec]) -> None:
    """Refuse, before any model loads, two models that would share one baseline folder, and a
    ``--baseline`` that does not exist or that ``--snapshot-update`` would overwrite."""
    from geomcheck.baseline import baseline_name, baseline_override, baselines_root

    override = baseline_override(config)
    folders: dict[str, tuple[str, str]] = {}
    for model_arg, spec in specs.items():
        folder, checkpoint = baseline_name(model_arg), (spec.source, spec.revision)  # revisions share a folder
        # under --baseline every model reads the override's baselines only: a shared folder is never written
        if folders.setdefault(folder, checkpoint) != checkpoint and override is None:
            first, second = (source if revision == "main" else f"{source}@{revision}" for source, revision in (folders[folder], checkpoint))
            raise pytest.UsageError(
                f"two models would share the baselines of '{folder}': {first} and {second}. "
                "Give the checkpoint folders distinct names, or gate them all against one reference's baseline with "
                f"--baseline REF (a sweep: --geomcheck-sweep --baseline {first})."
            )
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
