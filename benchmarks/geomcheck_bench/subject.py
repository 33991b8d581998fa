"""The model under test and the prompts every method sees."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from geomcheck.run.capture import batches, shared_prefix_length
from geomcheck.run.rendering import tokenize
from geomcheck.run.families import family_of
from geomcheck.run.models import load, parse_dtype
from geomcheck.run.prompts import builtin_prompts
from geomcheck.run.registry import resolve

RANDOM_SUFFIX = "-random"


@dataclass
class Subject:
    """A loaded base model with its tokenizer and the prompts, tokenised once as geomcheck does."""

    name: str
    model: torch.nn.Module
    tokenizer: Any
    chat_template: bool
    hub_id: str
    sets: dict[str, list[str]] = field(default_factory=dict)
    ids: dict[str, list[list[int]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def is_encoder(self) -> bool:
        return not family_of(self.model).causal

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @property
    def prefix_length(self) -> int:
        """Tokens of the shared prefix a causal decoder computes once (0 for an encoder)."""
        return 0 if self.is_encoder else shared_prefix_length([s for v in self.ids.values() for s in v])

    def use_prompts(self, n: int) -> None:
        self.sets = prompt_sets(n)
        self.ids = {name: tokenize(self.tokenizer, p, self.chat_template) for name, p in self.sets.items()}
        top = max(max(s) for v in self.ids.values() for s in v)
        if top >= self.model.config.vocab_size:
            raise SystemExit(f"token id {top} >= vocab {self.model.config.vocab_size}: the tokenizer does not fit the model")

    def token_stats(self, batch_size: int) -> dict[str, Any]:
        """Real and padded token counts, with and without the shared prefix."""
        lengths = [len(s) for v in self.ids.values() for s in v]
        p = self.prefix_length

        def padded(skip: int) -> int:
            return sum(
                b.input_ids.numel() for v in self.ids.values() for b in batches([s[skip:] for s in v], batch_size, self.pad_id)
            )

        return {
            "prompts": len(lengths),
            "min_len": min(lengths),
            "max_len": max(lengths),
            "mean_len": sum(lengths) / len(lengths),
            "shared_prefix_len": p,
            "real_tokens": sum(lengths),
            "real_tokens_unique": sum(lengths) - (len(lengths) - 1) * p,
            "padded_tokens": padded(0),
            "padded_tokens_unique": p + padded(p),
        }


def prompt_sets(n: int, pool_size: int | None = None) -> dict[str, list[str]]:
    """n/2 harmful + n/2 harmless built-in prompts, cycling the first `pool_size` of each (default: all)."""
    out = {}
    for name in ("harmful", "harmless"):
        pool = builtin_prompts(name)[:pool_size]
        out[name] = [pool[i % len(pool)] for i in range(n // 2)]
    return out


def load_subject(name: str, device: str, dtype: str | None) -> Subject:
    """A registry name or a local save_pretrained directory, loaded as the plugin loads it; or
    ``<registry name>-random``: random weights at the registry's published dimensions."""
    if name.endswith(RANDOM_SUFFIX):
        return _random_subject(name, device, dtype)
    spec = resolve(name)
    loaded = load(spec, device=device, dtype=dtype)
    return Subject(name, loaded.model, loaded.tokenizer, spec.chat_template, spec.hub_id)


def _random_subject(name: str, device: str, dtype: str | None) -> Subject:
    """Random-init base model of a big registry entry, tokenised with smollm2-135m's tokenizer and template."""
    from transformers import AutoConfig, AutoModel

    spec = resolve(name[: -len(RANDOM_SUFFIX)])
    if not spec.config:
        raise SystemExit(f"registry entry '{spec.name}' has no published dimensions ([config] table)")
    torch_dtype = parse_dtype(dtype or "float32", spec)
    values = dict(spec.config)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=torch_dtype).eval()
    tokenizer = load(resolve("smollm2-135m")).tokenizer
    n_params = sum(p.numel() for p in model.parameters())
    note = (f"random init (seed 0) at {spec.hub_id}'s dimensions, {n_params / 1e9:.2f} B parameters; "
            "token ids from the smollm2-135m tokenizer and chat template")
    return Subject(name, model, tokenizer, True, spec.hub_id, notes=[note])
