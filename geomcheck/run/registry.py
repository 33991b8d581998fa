"""The model registry: short names, hub ids (``ORG/NAME[@REVISION]``), GGUF files and local directories
resolved to a :class:`ModelSpec`.

Kept free of torch so that the pytest plugin can validate ``--model`` at start-up in milliseconds.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from geomcheck.errors import GeomcheckError
from geomcheck.run.families import family_name, family_named
from geomcheck.spelling import flag

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
# A hub id as transformers users write it, optionally pinned: Qwen/Qwen2.5-7B-Instruct@<branch, tag or commit>
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")

# Chat templates the registry supplies to tokenizers that ship none (``fallback_chat_template`` in models.toml).
CHAT_TEMPLATES = {
    # ChatML, as Qwen 1's chat format: a default system turn, then the messages, then the assistant's header.
    "chatml": (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
}


class UnknownModelError(GeomcheckError, LookupError):
    """A model name that is neither in the registry nor an existing directory."""


class ModelLoadError(GeomcheckError, RuntimeError):
    """The model was found but could not be loaded; the message says how to fix it."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load and run one model, as written in ``data/models.toml``."""

    name: str
    hub_id: str
    revision: str = "main"
    family: str = "llama"
    dtype: str = "float32"
    chat_template: bool = True
    package: str | None = None
    pip: str | None = None
    gguf_file: str | None = None
    subdir: str | None = None
    trust_remote_code: bool = False
    auto_class: str = "AutoModel"
    fallback_chat_template: str | None = None
    license: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    local_path: str | None = None
    snapshot: str | None = None  # hub ids: the cached snapshot folder that holds this revision's weights
    commit: str | None = None  # hub ids: the commit sha the revision resolved to

    @property
    def source(self) -> str:
        """Where the weights come from, for error messages and cache keys."""
        return self.local_path or self.hub_id

    @property
    def post_ln(self) -> bool:
        """Whether the family normalises after each add (BERT): every stream captured is then a LayerNorm
        output, never the raw residual. A fact of the family, so a recorded run knows it too."""
        return family_named(self.family).post_ln


def registry() -> dict[str, ModelSpec]:
    """The shipped registry, name -> spec."""
    text = resources.files("geomcheck.data").joinpath("models.toml").read_text(encoding="utf-8")
    return {name: ModelSpec(name=name, **entry) for name, entry in tomllib.loads(text).items()}


def resolve(name_or_path: str) -> ModelSpec:
    """A registry name, or a local ``from_pretrained`` directory; anything else fails with a hint."""
    known = registry()
    if name_or_path in known:
        return known[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _spec_for_directory(path)
    if path.suffix.lower() == ".gguf":
        return _spec_for_gguf(name_or_path, path)
    if match := HUB_ID.match(name_or_path):
        return _spec_for_hub_id(name_or_path, match["repo"], match["revision"] or "main")
    nearest = difflib.get_close_matches(name_or_path, list(known), n=1, cutoff=0.4)
    hint = f" Did you mean '{nearest[0]}'?" if nearest else ""
    raise UnknownModelError(
        f"unknown model '{name_or_path}'.{hint} Known models: {', '.join(sorted(known))}; "
        "a hub id ORG/NAME or ORG/NAME@REVISION; a .gguf file; the path of a local directory saved with "
        "save_pretrained; or record:DIR, a run recorded with --geomcheck-record-to."
    )


def _spec_for_directory(path: Path) -> ModelSpec:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"'{path}' has no config.json: it is not a from_pretrained directory. "
            "Save the model there with model.save_pretrained(path) and tokenizer.save_pretrained(path)."
        )
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type", "")
    except (ValueError, AttributeError) as exc:  # not JSON, or not an object
        raise ModelLoadError(f"'{config_file}' is not a JSON object ({exc}); save the model with save_pretrained") from exc
    has_template = any((path / f).exists() for f in ("chat_template.jinja", "chat_template.json"))
    if not has_template and (path / "tokenizer_config.json").is_file():
        has_template = "chat_template" in json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    return ModelSpec(
        name=path.name,
        hub_id=str(path.resolve()),
        family=family_name(model_type),
        chat_template=has_template,
        local_path=str(path.resolve()),
    )


def _spec_for_gguf(name: str, path: Path) -> ModelSpec:
    """A GGUF checkpoint: family and chat template from its metadata; de-quantised once when loaded."""
    from gguf import GGUFReader

    if not path.is_file():
        raise UnknownModelError(f"GGUF file '{path}' does not exist; pass the path of a .gguf checkpoint.")
    try:
        fields = GGUFReader(path).fields
    except (ValueError, OSError) as exc:
        raise ModelLoadError(f"'{path}' is not a readable GGUF file ({exc}).") from exc
    if "general.architecture" not in fields:
        raise ModelLoadError(f"'{path}' has no general.architecture in its GGUF metadata: cannot tell its family.")
    architecture = str(fields["general.architecture"].contents())
    return ModelSpec(
        name=name,
        hub_id=str(path.resolve()),
        family=family_name(architecture),
        chat_template="tokenizer.chat_template" in fields,
        gguf_file=path.name,
    )


def _spec_for_hub_id(name: str, repo: str, revision: str) -> ModelSpec:
    """A hub id: from the local Hugging Face cache, offline, when it holds this revision with weights;
    else from the hub, pinned to the commit the revision resolves to now."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.constants import is_offline_mode
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, HfHubHTTPError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:  # the hub's own rules (no '--' or '..', length, ends), before any request is made
        validate_repo_id(repo)
    except HFValidationError as exc:
        raise UnknownModelError(
            f"{flag('model')} {name}: '{repo}' is not a valid hub id ({exc}). Give a registry name, a hub id ORG/NAME, "
            "a .gguf file or an existing local directory"
        ) from None
    cache_dir = os.environ.get("HF_HUB_CACHE") or None  # read now, not at import, so a test can point it elsewhere
    try:
        snapshot = Path(snapshot_download(repo, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, EntryNotFoundError, OSError):
        snapshot = None
    if snapshot is not None and (snapshot / "config.json").is_file() and _has_weights(snapshot):
        spec = _spec_for_directory(snapshot)
        return replace(spec, name=name, hub_id=repo, revision=revision, local_path=None, snapshot=str(snapshot), commit=snapshot.name)
    if snapshot is not None and is_offline_mode():
        raise _offline_error(repo, revision, cache_dir, "has this revision but without weights")
    try:
        config_file = Path(hf_hub_download(repo, "config.json", revision=revision, cache_dir=cache_dir))
    except LocalEntryNotFoundError as exc:
        raise _offline_error(repo, revision, cache_dir, "does not hold it") from exc
    except HfHubHTTPError as exc:
        raise ModelLoadError(f"the hub has no model '{repo}' at revision '{revision}' (or it is gated): {exc}") from exc
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type", "")

    def fetched(filename: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo, filename, revision=config_file.parent.name, cache_dir=cache_dir))
        except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError):
            return None

    tokenizer_config = fetched("tokenizer_config.json")
    has_template = fetched("chat_template.jinja") is not None or (
        tokenizer_config is not None and "chat_template" in json.loads(tokenizer_config.read_text(encoding="utf-8"))
    )
    return ModelSpec(
        name=name,
        hub_id=repo,
        revision=revision,
        family=family_name(model_type),
        chat_template=has_template,
        commit=config_file.parent.name,
    )


def _offline_error(repo: str, revision: str, cache_dir: str | None, found: str) -> ModelLoadError:
    where = cache_dir or "the default Hugging Face cache (HF_HUB_CACHE / HF_HOME)"
    return ModelLoadError(
        f"cannot load '{repo}' at revision '{revision}' offline: the local Hugging Face cache ({where}) {found}, "
        f"and the hub cannot be reached (no network, or HF_HUB_OFFLINE is set). On a machine with access run "
        f"`hf download {repo} --revision {revision}` and copy its cache here (or point HF_HUB_CACHE at it), "
        "or pass a local directory saved with save_pretrained."
    )


def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(pattern)) for pattern in WEIGHT_FILES)


def default_cache_dir() -> Path:
    """``$GEOMCHECK_CACHE``, else ``$XDG_CACHE_HOME/geomcheck``, else ``~/.cache/geomcheck``."""
    if env := os.environ.get("GEOMCHECK_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "geomcheck"
