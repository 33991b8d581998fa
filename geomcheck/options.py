"""Start-up validation of every geomcheck option, ini value and config file, before any model loads.

Pure and torch-free (torch is imported only to ask whether a requested GPU exists): each problem raises
:class:`OptionError`, which names the option or file, the bad value and what is accepted; the plugin turns
it into ``pytest.UsageError``. A bad value must fail here, once, rather than poison the cache, be sliced
silently (``--max-prompts -1``) or surface as one traceback per check.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geomcheck import POSITIONS, STREAMS, thresholds
from geomcheck.prompts import PromptFileError, resolve_prompts
from geomcheck.registry import WEIGHT_FILES

DTYPE_NAMES = ("float32", "bfloat16", "float16")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
DEVICE_PATTERN = re.compile(r"^(cpu|mps|(cuda|xpu|npu)(:\d+)?)$")
MIN_PROMPTS = 2  # a variance needs two samples (the pipeline checks the sets again after cutting)
CONTROLS = ("random-init",)  # --geomcheck-control: untrained twins a run can report beside the checkpoint
EXPECTED_FAILURES = "expected_failures"
# A 95% interval is read at the 2.5% and 97.5% quantiles of the resamples: with fewer than 1/0.025 = 40
# no resample lies in a tail and the "interval" is the range of a handful of draws (one draw: a point).
MIN_N_BOOT = 40
MAX_N_BOOT = 100_000  # 500× the default; each resample keeps every statistic at every layer (see _n_boot)
TYPO_CUTOFF = 0.85  # a table name this close to a shipped check's is a misspelling, not a check of the user's
ENTRY_PATTERN = re.compile(r"^(?P<check>[A-Za-z_][A-Za-z0-9_]*)(\[(?P<stream>[^\]]*)\])?$")


class OptionError(ValueError):
    """An option, ini value or config file that geomcheck cannot use; the message says what to pass."""


def _flag(name: str) -> str:
    dest = "geomcheck_" + name.removeprefix("geomcheck-").replace("-", "_")
    return f"--{name} (ini {dest})"


def _integer(settings: Mapping[str, Any], name: str, minimum: int, accepted: str) -> None:
    value = settings.get(name)
    if value in (None, ""):
        return
    try:
        number = int(str(value).strip())
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise OptionError(f"{_flag(name)} = {value!r} is not valid: expected {accepted}")


def _n_boot(settings: Mapping[str, Any]) -> None:
    """0 (point values only) or enough resamples for a 95% interval, and not so many that the replicates
    (n_boot × statistics × layers float64, all kept for ``derive``) exhaust memory or the run never ends."""
    value = settings.get("n-boot")
    if value in (None, ""):
        return
    number = int(str(value).strip())  # _integer has checked it
    if 0 < number < MIN_N_BOOT:
        raise OptionError(
            f"{_flag('n-boot')} = {value!r} is too few resamples for a 95% interval: its ends are the 2.5% and 97.5% "
            f"quantiles of the resamples, so at least {MIN_N_BOOT} are needed (default 200); use 0 for point values only"
        )
    if number > MAX_N_BOOT:
        from geomcheck.stats import STAT_NAMES

        per_layer = len(STAT_NAMES) * len(STREAMS) * 8  # bytes of one resample's values at one layer
        gib = number * per_layer * 30 / 2**30
        raise OptionError(
            f"{_flag('n-boot')} = {value!r} is refused: every resample is kept ({per_layer} bytes per layer, "
            f"≈ {gib:,.0f} GiB for a 30-layer model) and the bootstrap's time grows with it (≈ {number // 200:,}× the "
            f"default 200). Use at most {MAX_N_BOOT:,}; 1,000–10,000 already pin a 95% interval's ends"
        )


def _choice(settings: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> None:
    value = settings.get(name)
    if value not in (None, "") and value not in choices:
        raise OptionError(f"{_flag(name)} = {value!r} is not valid: choose one of {', '.join(choices)}")


def streams(value: str) -> tuple[str, ...]:
    """``pre,mid`` → ``("pre", "mid")``; unknown, repeated or no names are refused."""
    names = tuple(s.strip() for s in str(value).split(",") if s.strip())
    unknown = [s for s in names if s not in STREAMS]
    if not names or unknown or len(set(names)) != len(names):
        problem = f"unknown {', '.join(map(repr, unknown))}" if unknown else "empty or repeated names"
        raise OptionError(f"{_flag('streams')} = {value!r} is not valid ({problem}): give a comma-separated subset of {','.join(STREAMS)}")
    return names


def device(value: str) -> None:
    """Syntax always; whether the GPU exists only for a GPU device (the one case that imports torch here)."""
    if not DEVICE_PATTERN.match(str(value)):
        raise OptionError(f"{_flag('device')} = {value!r} is not a device: use cpu, cuda, cuda:N or mps")
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
        raise OptionError(f"{_flag('device')} = {value!r} is not available: {where}. Use --device cpu or a device listed by torch.")


def _directory(settings: Mapping[str, Any], name: str) -> None:
    value = settings.get(name)
    if value and Path(value).exists() and not Path(value).is_dir():
        raise OptionError(f"{_flag(name)} = {value!r} is a file, not a directory: give a directory path (it is created if missing)")


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
            raise OptionError(f"$GEOMCHECK_CACHE = {str(path)!r} is a file, not a directory: point it at a directory (it is created if missing), or pass --geomcheck-cache-dir")
    _directory(settings, "artifacts-dir")
    if settings.get("geomcheck-json") and Path(settings["geomcheck-json"]).expanduser().is_dir():
        raise OptionError(f"{_flag('geomcheck-json')} = {settings['geomcheck-json']!r} is a directory: name the results file, e.g. results.json")
    for which in ("harmful", "harmless"):
        try:
            resolve_prompts(settings.get(which) or None, which)
        except (PromptFileError, ValueError, OSError) as exc:
            raise OptionError(f"{_flag(which)}: {exc}") from exc


# Thresholds


def read_thresholds_file(path: str) -> dict[str, Any]:
    """A user's thresholds file (``--thresholds``), parsed; validated once merged (:func:`validate_thresholds`)."""
    where = f"thresholds file {path} ({_flag('thresholds')})"
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OptionError(f"{where} does not exist; give the path of a TOML file laid out like the shipped thresholds.toml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"{where} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise OptionError(f"{where} is not valid TOML: {exc}") from exc


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _misspelled(name: str, known: list[str]) -> str | None:
    """The shipped check a user table's name is a near miss of (``variance_grow`` → ``variance_grows``)."""
    return next(iter(difflib.get_close_matches(name, [k for k in known if k != name], n=1, cutoff=TYPO_CUTOFF)), None)


def validate_thresholds(data: Mapping[str, Any], where: str = "thresholds") -> None:
    """Every shipped check keeps each of its keys as a number; model overrides name known checks and keys;
    expected failures name a known check (and stream) with a non-empty reason. A check of the user's own is
    known once the file declares its table (``[my_check]``, possibly empty)."""
    shipped = thresholds.shipped()
    checks = {name for name, table in shipped.items() if name != "models"} | {name for name, table in data.items() if name != "models"}
    checks.add("matches_baseline")
    _refuse_non_finite(data, where)
    known = [name for name in shipped if name != "models"] + ["matches_baseline", "models", EXPECTED_FAILURES]
    for name, table in data.items():
        if name != "models" and not isinstance(table, dict):
            raise OptionError(f"{where}: '{name}' must be a table [{name}] of thresholds; got {table!r}")
        if name not in known and (near := _misspelled(name, known)):
            raise OptionError(
                f"{where}: [{name}] is not a shipped check; did you mean [{near}]? A check of your own needs a name "
                "that is not a near miss of a shipped one"
            )
    for name, defaults in shipped.items():
        if name == "models":
            continue
        _check_table(data.get(name), defaults, f"{where}: [{name}]", required=True)
    _check_tolerances(data.get("matches_baseline"), f"{where}: [matches_baseline]")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise OptionError(f"{where}: 'models' must hold tables [models.<model>.<check>]; got {models!r}")
    for model, tables in models.items():
        if not isinstance(tables, dict):
            raise OptionError(f"{where}: [models.{model}] must hold tables; got {tables!r}")
        for check, table in tables.items():
            context = f"{where}: [models.{model}.{check}]"
            if check == EXPECTED_FAILURES:
                _check_expected_failures(table, checks, context)
            elif check == "matches_baseline":
                _check_tolerances(table, context)
            elif check not in checks:
                raise OptionError(f"{context}: unknown check '{check}'; known: {', '.join(sorted(checks))} (declare a check of your own with a [{check}] table)")
            else:
                _check_table(table, shipped.get(check, data.get(check, {})), context, required=False)


def _refuse_non_finite(data: Mapping[str, Any], where: str, path: str = "") -> None:
    """No nan or inf anywhere, a user check's own table and tolerances included (TOML allows both): every
    comparison with nan is false, so a nan threshold silently disables its check."""
    for key, value in data.items():
        name = f"{path}.{key}" if path else key
        if isinstance(value, Mapping):
            _refuse_non_finite(value, where, name)
        elif isinstance(value, float) and not math.isfinite(value):
            raise OptionError(f"{where}: {name} = {value!r} must be a finite number: a comparison with {value!r} would disable the check")


def _check_table(table: Any, defaults: Mapping[str, Any], context: str, *, required: bool) -> None:
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise OptionError(f"{context} must be a table; got {table!r}")
    for key, default in defaults.items():
        if key not in table:
            if required and _is_number(default):
                raise OptionError(f"{context} lacks '{key}' (the shipped value is {key} = {default})")
            continue
        if _is_number(default) and not _is_number(table[key]):
            raise OptionError(f"{context}: {key} = {table[key]!r} must be a number (like the shipped {default})")
    if defaults:  # a shipped check: every key must be one it reads
        unknown = sorted(set(table) - set(defaults) - {"tolerance"})
        if unknown:
            raise OptionError(f"{context}: unknown key(s) {', '.join(unknown)}; this check reads {', '.join(defaults)}")


def _check_tolerances(table: Any, context: str) -> None:
    """The baseline check's ``tolerance`` overrides parse (read by :func:`geomcheck.drift.tolerances_from_config`)."""
    if table is None:
        return
    if not isinstance(table, dict) or set(table) - {"tolerance"}:
        raise OptionError(f"{context} holds only a [tolerance] table of per-statistic rel, abs and z; got {table!r}")
    from geomcheck.drift import tolerances_from_config  # numpy, no torch

    try:
        tolerances_from_config(table)
    except (ValueError, TypeError) as exc:
        raise OptionError(f"{context}: {exc}") from exc


def _check_expected_failures(table: Any, checks: set[str], context: str) -> None:
    if not isinstance(table, dict):
        raise OptionError(f"{context} must be a table of \"<check>\" or \"<check>[<stream>]\" = \"reason\"")
    for entry, reason in table.items():
        match = ENTRY_PATTERN.match(entry)
        if not match:
            raise OptionError(f"{context}: '{entry}' is not \"<check>\" or \"<check>[<stream>]\"")
        check, stream = match.group("check"), match.group("stream")
        if check not in checks:
            raise OptionError(f"{context}: '{entry}' names unknown check '{check}'; known: {', '.join(sorted(checks))}")
        if stream is not None and stream not in STREAMS:
            raise OptionError(f"{context}: '{entry}' names unknown stream '{stream}'; streams are {', '.join(STREAMS)}")
        if not isinstance(reason, str) or not reason.strip():
            raise OptionError(f"{context}: '{entry}' needs a reason (a non-empty string saying what was measured); got {reason!r}")


# Models


def model_directory(path: Path, trust_remote_code: bool) -> None:
    """A local model directory's config.json parses, weights lie beside it (else a load would fail only
    after the memory estimate, as "needs ~N GiB"), and custom code is refused unless geomcheck's
    ``--trust-remote-code`` is given (transformers would otherwise ask on stdin, and a ``y`` runs it)."""
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OptionError(f"--model {path}: {config_file} is not a readable JSON config ({exc}); save the model with save_pretrained") from exc
    if not isinstance(config, dict):
        raise OptionError(f"--model {path}: {config_file} must hold a JSON object; got {type(config).__name__}")
    if config.get("auto_map") and not trust_remote_code:
        raise OptionError(
            f"--model {path}: its config.json maps to Python code in the directory (auto_map {sorted(config['auto_map'])}); "
            "geomcheck does not run a model's own code unless you pass --trust-remote-code (read the code first)"
        )
    model_type = config.get("model_type")
    known = _known_model_types()
    if not config.get("auto_map") and known is not None and model_type not in known:
        raise OptionError(
            f"--model {path}: config.json has model_type {model_type!r}, which this transformers does not know; "
            "upgrade transformers, or fix model_type"
        )
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
        raise OptionError(
            f"--model {path}: the directory has a config.json but no weight files ({', '.join(WEIGHT_FILES)}); "
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
