"""How prompts become the token ids a model sees: the chat template rendered on a fixed date, and digests.

Llama 3.x templates write today's date into the system block (``strftime_now``), so the same prompt
would give other tokens, and other activations, every day. Templates are therefore rendered with the
clock pinned to :data:`TEMPLATE_DATE`, which is recorded with every cache entry and baseline.

**Why the activations cache is keyed by the rendering's causes, not by the token ids.** A cached re-run
must neither load the model nor import torch, and computing token ids needs the tokenizer (transformers,
~seconds). The token ids are a function of the tokenizer files and chat template (in the weights
fingerprint, :mod:`geomcheck.run.fingerprint`), the prompt text, the rendering options (chat template on or
off, position), this date and the tokenizer code (transformers and tokenizers versions): all in the key.
The digest of the exact ids fed to the model (:func:`token_ids_digest`) and of the template text are
recorded in the entry and the baseline, so a comparison can still show that the inputs changed.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from geomcheck.spelling import flag

TEMPLATE_DATE = "2026-01-01"  # the day every chat template is rendered on; part of every cache key
_PROBE = "{{ strftime_now('%Y-%m-%d') }}"


class _FixedClock(datetime):
    """``datetime`` whose ``now()`` is :data:`TEMPLATE_DATE`: what a template's ``strftime_now`` reads."""

    @classmethod
    def now(cls, tz=None):  # noqa: ANN001, ANN206 (the signature of datetime.now)
        return cls.fromisoformat(TEMPLATE_DATE)


@contextmanager
def fixed_clock() -> Iterator[None]:
    """Render chat templates on :data:`TEMPLATE_DATE`. transformers gives templates ``strftime_now``,
    which reads ``datetime.now()`` of its chat-template module; that clock is pinned here, and a probe
    template proves it, so a transformers release that moved the clock fails loudly instead of
    silently rendering today's date."""
    from transformers.utils import chat_template_utils

    original = chat_template_utils.datetime
    chat_template_utils.datetime = _FixedClock
    try:
        rendered = chat_template_utils.render_jinja_template([[]], chat_template=_PROBE)[0][0]
        if rendered.strip() != TEMPLATE_DATE:
            raise RuntimeError(
                f"could not pin the chat template's clock (a probe rendered {rendered!r}, not {TEMPLATE_DATE}): "
                "this transformers version gives templates their date another way. Pin transformers to a "
                f"version geomcheck supports, or run with {flag('no-chat-template')}."
            )
        yield
    finally:
        chat_template_utils.datetime = original


def token_ids_digest(token_ids: Mapping[str, Sequence[Sequence[int]]]) -> str:
    """sha256 of the exact token ids per prompt set (set and prompt boundaries kept)."""
    canonical = json.dumps({name: [list(map(int, ids)) for ids in sets] for name, sets in token_ids.items()}, sort_keys=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def text_digest(text: str | None) -> str | None:
    """sha256 of a text (the chat template), None when there is none."""
    return None if text is None else "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Rendered:
    """The prompt sets as the model sees them: token ids per set, the id that pads a batch, and the
    digests a cache entry and a baseline record of them (``inputs``: the exact ids, the chat template's text)."""

    token_ids: dict[str, list[list[int]]]
    pad_id: int
    inputs: dict[str, str | None]


def render(tokenizer: Any, prompt_sets: Mapping[str, Sequence[str]], chat_template: bool, max_length: int | None = None) -> Rendered:
    """Render and tokenize every prompt set (see :func:`tokenize`), with the digests of what was fed."""
    token_ids = {name: tokenize(tokenizer, prompts, chat_template, max_length) for name, prompts in prompt_sets.items()}
    template = getattr(tokenizer, "chat_template", None) if chat_template else None
    text = template if template is None or isinstance(template, str) else json.dumps(template, sort_keys=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Rendered(token_ids, pad_id, {"token_ids": token_ids_digest(token_ids), "chat_template": text_digest(text)})


def tokenize(tokenizer, prompts: Sequence[str], chat_template: bool, max_length: int | None = None) -> list[list[int]]:
    """Token ids per prompt; instruct models see their chat template, as in real use, rendered on a fixed
    date (:func:`fixed_clock`) so the ids do not depend on the day."""
    if chat_template:
        with fixed_clock():
            ids = [
                _as_ids(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True))
                for p in prompts
            ]
    else:
        ids = [tokenizer(p)["input_ids"] for p in prompts]
    if max_length is not None and (too_long := sum(len(seq) > max_length for seq in ids)):
        warnings.warn(
            f"{too_long} prompt(s) longer than the model's context of {max_length} tokens were truncated to "
            "their last tokens (the end of a prompt is what the last-token reading sees); shorten them.",
            stacklevel=3,
        )
        ids = [seq[-max_length:] for seq in ids]
    return ids


def _as_ids(encoded) -> list[int]:
    if isinstance(encoded, Mapping) or hasattr(encoded, "input_ids"):
        encoded = encoded["input_ids"]
    return list(encoded)
