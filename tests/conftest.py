"""Shared test fixtures: tiny random-init models saved as local directories, built offline.

torch and matplotlib are imported here, before any in-process pytester run: pytester restores
``sys.modules`` after each inner run, and the plugin imports them lazily, so an inner run would otherwise
import them afresh each time, and objects from the first import break ``isinstance`` checks in the next.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.figure  # noqa: F401
import pytest
import torch

from geomcheck.run.prompts import builtin_prompts

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_tokenizer():
    """A word-level tokenizer over the built-in prompts' words, with a chat template: no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for name in ("harmful", "harmless") for p in builtin_prompts(name) for w in re.findall(r"\w+|[^\w\s]", p)})
    specials = ["[PAD]", "[UNK]", "<|user|>", "<|assistant|>", "<|end|>"]
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_llama(path: Path, seed: int = 0, num_layers: int = 4) -> Path:
    """A random-init Llama (hidden 32) and its tokenizer, saved with save_pretrained."""
    from transformers import LlamaConfig, LlamaModel

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny Llama directory for the session (read-only by convention)."""
    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture
def opted_in(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pytester project opts in as this repository does, with the README's ``addopts = "-p geomcheck.activate"``
    (tests/plugin/test_plugin_inert.py covers a project that does not)."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p geomcheck.activate")  # after pytester, which clears it


ROOT = Path(__file__).resolve().parent.parent
HYPOTHESES_DOC = ROOT / "docs" / "hypotheses.md"  # where the examples a hypothesis author copies live


def write_docs_example(marker: str, folder: Path) -> str:
    """Write the docs' ``<!-- example: marker -->`` code block (docs/hypotheses.md) where its first line
    (``# checks/NAME.py``) says, into ``folder``; returns NAME.py. The examples are run as written, not retyped."""
    readme = HYPOTHESES_DOC.read_text()
    block = re.search(rf"<!-- example: {marker} -->\n```python\n(.*?)```", readme, re.S).group(1)
    filename = re.match(r"# checks/(\S+\.py)", block).group(1)
    folder.joinpath(filename).write_text(block)
    return filename


# A local hub cache of two commits, for the revision tests (models) and the across-model report (plugin).
SHA_A = "a" * 40
SHA_B = "b" * 40


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``models--acme--tiny`` with two commits: main → A (seed 0), tag v2 → B (seed 1); the hub is unreachable."""
    import huggingface_hub.constants

    root = tmp_path / "hub"
    repo = root / "models--acme--tiny"
    for sha, seed in ((SHA_A, 0), (SHA_B, 1)):
        save_tiny_llama(repo / "snapshots" / sha, seed=seed)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA_A)
    (repo / "refs" / "v2").write_text(SHA_B)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    return root


SLOW_KINDS = ("plugin", "models", "release")  # each test there runs pytest in pytest, loads a model or builds a wheel: seconds to minutes


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``make test-fast`` (``-m "not slow"``) leaves out the kinds that are slow by nature, besides the tests
    marked ``slow`` one by one (above ~2 s on a 2-core machine)."""
    tests = Path(__file__).resolve().parent
    for item in items:
        parts = Path(item.path).resolve().relative_to(tests).parts
        if parts and parts[0] in SLOW_KINDS:
            item.add_marker(pytest.mark.slow)
