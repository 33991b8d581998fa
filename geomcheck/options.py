"""geomcheck's options: their declaration and registration with pytest, how a run's settings are read, and the
validation of their values at start-up, before any model loads.

Each option is a command-line flag and an ini key ``geomcheck_<name>``; the command line wins. An option
that sets a field of :class:`geomcheck.run.pipeline.RunOptions` takes that field's default when it is not
given, so each default is written once, in ``RunOptions``. Validation is torch-free (torch is imported only to
ask whether a requested GPU exists): each problem raises :class:`OptionError`, which names the option, the bad
value and what is accepted, and :func:`validate` turns it into ``pytest.UsageError`` — a bad value fails here,
once, rather than poison the cache, be sliced silently (``--max-prompts -1``) or surface as one traceback per
check. Nothing heavy is imported here: the pipeline loads when a run's options are first built.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from geomcheck import POSITIONS, STREAMS
from geomcheck.errors import OptionError
from geomcheck.run import registry
from geomcheck.run.prompts import PromptFileError, resolve_prompts
from geomcheck.run.registry import WEIGHT_FILES
from geomcheck.spelling import Spelling, current, dest, flag, with_ini
from geomcheck.thresholds import load as load_thresholds, project_file

if TYPE_CHECKING:
    from geomcheck.run.pipeline import RunOptions

__all__ = ["OptionError"]  # raised here; defined with the other errors

# Values

DTYPE_NAMES = ("float32", "bfloat16", "float16")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
DEVICE_PATTERN = re.compile(r"^(cpu|mps|(cuda|xpu|npu)(:\d+)?)$")
MIN_PROMPTS = 2  # a variance needs two samples (the pipeline checks the sets again after cutting)
CONTROLS = ("random-init",)  # --geomcheck-control: untrained twins a run can report beside the checkpoint
# A 95% interval is read at the 2.5% and 97.5% quantiles of the resamples: with fewer than 1/0.025 = 40
# no resample lies in a tail and the "interval" is the range of a handful of draws (one draw: a point).
MIN_N_BOOT = 40
MAX_N_BOOT = 100_000  # 500× the default; each resample keeps every statistic at every layer (see _n_boot)


def _integer(settings: Mapping[str, Any], name: str, minimum: int, accepted: str) -> None:
    value = settings.get(name)
    if value in (None, ""):
        return
    try:
        number = int(str(value).strip())
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise OptionError(f"{with_ini(name)} = {value!r} is not valid: expected {accepted}")


def _n_boot(settings: Mapping[str, Any]) -> None:
    """0 (point values only) or enough resamples for a 95% interval, and not so many that the replicates
    (n_boot × statistics × layers float64, all kept for ``derive``) exhaust memory or the run never ends."""
    value = settings.get("n-boot")
    if value in (None, ""):
        return
    number = int(str(value).strip())  # _integer has checked it
    if 0 < number < MIN_N_BOOT:
        raise OptionError(
            f"{with_ini('n-boot')} = {value!r} is too few resamples for a 95% interval: its ends are the 2.5% and 97.5% "
            f"quantiles of the resamples, so at least {MIN_N_BOOT} are needed (default 200); use 0 for point values only"
        )
    if number > MAX_N_BOOT:
        from geomcheck.stats.vocabulary import STAT_NAMES

        per_layer = len(STAT_NAMES) * len(STREAMS) * 8  # bytes of one resample's values at one layer
        gib = number * per_layer * 30 / 2**30
        raise OptionError(
            f"{with_ini('n-boot')} = {value!r} is refused: every resample is kept ({per_layer} bytes per layer, "
            f"≈ {gib:,.0f} GiB for a 30-layer model) and the bootstrap's time grows with it (≈ {number // 200:,}× the "
            f"default 200). Use at most {MAX_N_BOOT:,}; 1,000–10,000 already pin a 95% interval's ends"
        )


def _choice(settings: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> None:
    value = settings.get(name)
    if value not in (None, "") and value not in choices:
        raise OptionError(f"{with_ini(name)} = {value!r} is not valid: choose one of {', '.join(choices)}")


def streams(value: str) -> tuple[str, ...]:
    """``pre,mid`` → ``("pre", "mid")``; unknown, repeated or no names are refused."""
    names = tuple(s.strip() for s in str(value).split(",") if s.strip())
    unknown = [s for s in names if s not in STREAMS]
    if not names or unknown or len(set(names)) != len(names):
        problem = f"unknown {', '.join(map(repr, unknown))}" if unknown else "empty or repeated names"
        raise OptionError(f"{with_ini('streams')} = {value!r} is not valid ({problem}): give a comma-separated subset of {','.join(STREAMS)}")
    return names


def device(value: str) -> None:
    """Syntax always; whether the GPU exists only for a GPU device (the one case that imports torch here)."""
    if not DEVICE_PATTERN.match(str(value)):
        raise OptionError(f"{with_ini('device')} = {value!r} is not a device: use cpu, cuda, cuda:N or mps")
    kind, _, index = str(value).partition(":")
    if kind not in ("cuda", "mps"):
        return
    import torch

    if kind == "mps":
        available = torch.backends.mps.is_available()
        count = 1 if available else 0
    else:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = int(index) if index else 0
    if wanted >= count:
        where = f"this machine has {count} {kind} device(s)" + ("" if count else f" (torch {torch.__version__})")
        raise OptionError(f"{with_ini('device')} = {value!r} is not available: {where}. Use {flag('device')} cpu or a device listed by torch.")


def _directory(settings: Mapping[str, Any], name: str) -> None:
    value = settings.get(name)
    if value and Path(value).exists() and not Path(value).is_dir():
        raise OptionError(f"{with_ini(name)} = {value!r} is a file, not a directory: give a directory path (it is created if missing)")


def validate_settings(settings: Mapping[str, Any]) -> None:
    """Every run option, as read from the command line or ini (strings), by option name (``batch-size``)."""
    _integer(settings, "batch-size", 1, "a whole number ≥ 1 (prompts per forward pass)")
    _integer(settings, "max-prompts", MIN_PROMPTS, f"a whole number ≥ {MIN_PROMPTS} (prompts used of each set), or nothing for all")
    _integer(settings, "n-boot", 0, "a whole number ≥ 0 (bootstrap resamples; 0 for point values only)")
    _n_boot(settings)
    _integer(settings, "seed", 0, "a whole number ≥ 0")
    _integer(settings, "top-k", 1, "a whole number ≥ 1 (singular vectors per weight matrix)")
    _choice(settings, "position", POSITIONS)
    _choice(settings, "dtype", DTYPE_NAMES)
    _choice(settings, "device-map", DEVICE_MAPS)
    _choice(settings, "geomcheck-control", CONTROLS)
    for name, check in (("streams", streams), ("device", device)):
        if settings.get(name):  # not given: RunOptions' default
            check(settings[name])
    _directory(settings, "geomcheck-cache-dir")
    if not settings.get("geomcheck-cache-dir") and os.environ.get("GEOMCHECK_CACHE"):
        path = Path(os.environ["GEOMCHECK_CACHE"]).expanduser()
        if path.exists() and not path.is_dir():
            raise OptionError(f"$GEOMCHECK_CACHE = {str(path)!r} is a file, not a directory: point it at a directory (it is created if missing), or pass {flag('geomcheck-cache-dir')}")
    _directory(settings, "artifacts-dir")
    if settings.get("geomcheck-json") and Path(settings["geomcheck-json"]).expanduser().is_dir():
        raise OptionError(f"{with_ini('geomcheck-json')} = {settings['geomcheck-json']!r} is a directory: name the results file, e.g. results.json")
    for which in ("harmful", "harmless"):
        try:
            resolve_prompts(settings.get(which) or None, which)
        except (PromptFileError, ValueError, OSError) as exc:
            raise OptionError(f"{with_ini(which)}: {exc}") from exc


# Models


def model_directory(path: Path, trust_remote_code: bool) -> None:
    """A local model directory's config.json parses, weights lie beside it (else a load would fail only
    after the memory estimate, as "needs ~N GiB"), and custom code is refused unless geomcheck's
    ``--trust-remote-code`` is given (transformers would otherwise ask on stdin, and a ``y`` runs it)."""
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OptionError(f"{flag('model')} {path}: {config_file} is not a readable JSON config ({exc}); save the model with save_pretrained") from exc
    if not isinstance(config, dict):
        raise OptionError(f"{flag('model')} {path}: {config_file} must hold a JSON object; got {type(config).__name__}")
    if config.get("auto_map") and not trust_remote_code:
        raise OptionError(
            f"{flag('model')} {path}: its config.json maps to Python code in the directory (auto_map {sorted(config['auto_map'])}); "
            f"geomcheck does not run a model's own code unless you pass {flag('trust-remote-code')} (read the code first)"
        )
    model_type = config.get("model_type")
    known = _known_model_types()
    if not config.get("auto_map") and known is not None and model_type not in known:
        raise OptionError(
            f"{flag('model')} {path}: config.json has model_type {model_type!r}, which this transformers does not know; "
            "upgrade transformers, or fix model_type"
        )
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
        raise OptionError(
            f"{flag('model')} {path}: the directory has a config.json but no weight files ({', '.join(WEIGHT_FILES)}); "
            "save the weights there with model.save_pretrained(path), or pass the directory that holds them"
        )


def _known_model_types() -> set[str] | None:
    """transformers' model types, read from its torch-free table (transformers 5); None where it has none,
    and the loader's own error (wrapped by the pipeline) speaks instead."""
    try:
        from transformers.models.auto.auto_mappings import CONFIG_MAPPING_NAMES
    except ImportError:
        return None
    return set(CONFIG_MAPPING_NAMES)


# Registration and reading

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
    "streams": ("comma-separated residual streams to check (pre,mid,post)", streams),
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
    from geomcheck.run.pipeline import RunOptions

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

    spell = Spelling(short).flag

    def shown(name: str, text: str) -> str:
        # the namespaced options have no short twin, so they are always listed
        return text if listed or name.startswith("geomcheck-") else argparse.SUPPRESS

    group.addoption(spell("model"), action="append", dest="geomcheck_models", default=None, metavar="NAME", help=shown("model", MODEL_HELP))
    for name, (help_text, _) in OPTIONS.items():
        if short and name.startswith("geomcheck-"):
            continue  # already namespaced: one spelling only
        option_dest = dest(name)
        metavar = option_dest.removeprefix("geomcheck_").upper()
        text = f"{with_default(name, help_text)} [ini: {option_dest}]".replace("%", "%%")
        group.addoption(spell(name), dest=option_dest, default=None, metavar=metavar, help=shown(name, text))
    for name, help_text in FLAGS.items():
        if short and name.startswith("geomcheck-"):
            continue
        group.addoption(spell(name), action="store_true", dest=dest(name), help=shown(name, help_text))


def setting(config: pytest.Config, name: str) -> Any:
    """An option's text from the command line, else the ini file (an ``int`` key: its number); None where
    neither gives one."""
    value = config.getoption(dest(name))
    if value is None:
        try:
            value = config.getini(dest(name))
        except (TypeError, ValueError, pytest.UsageError) as exc:  # pytest's conversion of an int key, unnamed
            raise OptionError(f"ini {dest(name)} is not valid: {exc}; expected a whole number, e.g. {dest(name)} = 4") from exc
    return value if value not in (None, "") else None


def run_options(config: pytest.Config) -> RunOptions:
    """The session's RunOptions from command line and ini; an option not given keeps the field's default."""
    from geomcheck.run.pipeline import RunOptions

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

        from geomcheck.run.distributed import worker_device

        return dataclasses.replace(options, device=worker_device(options.device, worker, torch.cuda.device_count()))
    return options


def _on_terminal(config: pytest.Config) -> bool:
    """Whether pytest writes to a terminal (checked by pytest before its capture replaces stdout): progress
    bars only there, never in a CI log or a pipe."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return reporter is not None and bool(reporter.isatty())


def validate(config: pytest.Config) -> tuple[dict[str, registry.ModelSpec], dict[str, Any]]:
    """Every option, ini value, model directory and the thresholds file, checked once before any model
    loads; returns each model resolved, by the model as given (the session keeps these specs: a model is
    resolved once, and a hub id asks the hub once), and the thresholds. Problems are usage errors."""
    model_args = config.getoption("geomcheck_models") or config.getini("geomcheck_models")
    trust = bool(config.getoption("geomcheck_trust_remote_code"))
    try:
        validate_settings({name: setting(config, name) for name in OPTIONS})
        for model_arg in model_args:
            path = Path(model_arg).expanduser()
            if model_arg not in registry.registry() and path.is_dir() and (path / "config.json").exists():
                model_directory(path, trust)
        specs = {model_arg: registry.resolve(model_arg) for model_arg in model_args if not model_arg.startswith("record:")}  # once: a hub id may ask the hub
        for model_arg in model_args:
            if model_arg.startswith("record:"):  # a run recorded elsewhere: its spec is the record's, its options are checked now
                from geomcheck.run.record import new_run

                options_now = run_options(config)
                specs[model_arg] = new_run(model_arg, options_now, control=options_now.control).spec
        specs = {model_arg: specs[model_arg] for model_arg in model_args}  # in the order given
        thresholds = load_thresholds(_project_pyproject(config), setting(config, "thresholds"))
        given = setting(config, "streams")
        if given and getattr(config.option, "update_snapshots", False) and set(streams(given)) != set(STREAMS):
            raise OptionError(
                f"--snapshot-update with {flag('streams')} {','.join(streams(given))} would drop the other streams from the committed "
                f"baselines; update with every stream ({flag('streams')} {','.join(STREAMS)})"
            )
    except (OptionError, registry.UnknownModelError, registry.ModelLoadError) as exc:
        raise pytest.UsageError(str(exc)) from exc
    check_baseline_folders(config, specs)
    return specs, thresholds


def _project_pyproject(config: pytest.Config) -> Path | None:
    """The project's ``pyproject.toml``: beside pytest's ini file, else in the rootdir, else where pytest
    started (a path-valued option such as ``--model ./dir`` can move the rootdir above the project)."""
    folders = [config.inipath.parent] if config.inipath else []
    return project_file(*folders, config.rootpath, config.invocation_params.dir)


def check_baseline_folders(config: pytest.Config, specs: dict[str, registry.ModelSpec]) -> None:
    """Refuse, before any model loads, two models that would share one baseline folder, and a
    ``--baseline`` that does not exist or that ``--snapshot-update`` would overwrite."""
    from geomcheck.gate.baseline import baseline_name, baseline_override, baselines_root

    override = baseline_override(config)
    folders: dict[str, tuple[str, str]] = {}
    for model_arg, spec in specs.items():
        folder, checkpoint = baseline_name(model_arg), (spec.source, spec.revision)  # revisions share a folder
        # under --baseline every model reads the override's baselines only: a shared folder is never written
        if folders.setdefault(folder, checkpoint) != checkpoint and override is None:
            first, second = (source if revision == "main" else f"{source}@{revision}" for source, revision in (folders[folder], checkpoint))
            raise pytest.UsageError(
                f"two models would share the baselines of '{folder}': {first} and {second}. "
                f"Give the checkpoint folders distinct names, or gate them all against one reference's baseline with "
                f"{flag('baseline')} REF (a sweep: --geomcheck-sweep {flag('baseline')} {first})."
            )
    if override is None:
        return
    if config.getoption("update_snapshots", default=False):
        raise pytest.UsageError(
            f"{flag('baseline')} {override} with --snapshot-update would overwrite {override}'s baseline with another model's "
            f"numbers. Update it from its own model: {current().update_command(model=override)}"
        )
    folder = baselines_root(config) / baseline_name(override)
    if not folder.is_dir():
        raise pytest.UsageError(
            f"{flag('baseline')} {override}: no baselines in {folder}. Create them with: {current().update_command(model=override)}"
        )
