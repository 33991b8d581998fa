"""The model registry: short names, hub ids and local directories resolved to a :class:`ModelSpec`.

Kept free of torch so that the pytest plugin can validate ``--model`` at start-up in milliseconds.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from geomcheck.families import family_name

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


class UnknownModelError(LookupError):
    """A model name that is neither in the registry nor an existing directory."""


class ModelLoadError(RuntimeError):
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

    @property
    def source(self) -> str:
        """Where the weights come from, for error messages and cache keys."""
        return self.local_path or self.hub_id


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
    nearest = difflib.get_close_matches(name_or_path, list(known), n=1, cutoff=0.4)
    hint = f" Did you mean '{nearest[0]}'?" if nearest else ""
    raise UnknownModelError(
        f"unknown model '{name_or_path}'.{hint} Known models: {', '.join(sorted(known))}; "
        "or pass the path of a local directory saved with save_pretrained."
    )


def _spec_for_directory(path: Path) -> ModelSpec:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"'{path}' has no config.json: it is not a from_pretrained directory. "
            "Save the model there with model.save_pretrained(path) and tokenizer.save_pretrained(path)."
        )
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type", "")
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


def default_cache_dir() -> Path:
    """``$GEOMCHECK_CACHE``, else ``$XDG_CACHE_HOME/geomcheck``, else ``~/.cache/geomcheck``."""
    if env := os.environ.get("GEOMCHECK_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "geomcheck"
