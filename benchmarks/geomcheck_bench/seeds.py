"""The five seed architectures at their published dimensions, random weights, through ``pytest checks/``.

``python -m geomcheck_bench.seeds`` builds each seed model of the registry (Llama-3.2-3B, Qwen2.5-7B,
Qwen3-8B, Mistral-Nemo-12B, Qwen2.5-32B: the entries with a ``[config]`` table of published dimensions and
no remote code) from its config with random weights, in bf16 on CUDA by default, saves it with
``save_pretrained`` (the weights check reads the files), and runs the shipped checks on it twice in a
scratch project: cold (writing the baselines there) and fully cached. It prints each run's per-phase line
from the terminal summary. The weights are random, so hypotheses may fail: the point is where the time
goes at real size, not the verdicts; an error (not a failed hypothesis) fails the script.

``--tiny`` shrinks every dimension (hidden 64, 3 layers) so ``make test`` runs the same path on a CPU in
seconds (``tests/release/test_seeds_script.py``). The tokenizer is the one MiniLM ships (offline everywhere the
embedded models are): token ids below its vocabulary size are valid for every seed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub

ROOT = Path(__file__).resolve().parents[2]
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512}


def seed_names() -> list[str]:
    """Registry entries with published dimensions that run without remote code."""
    from geomcheck.run import registry

    return [name for name, spec in registry.registry().items() if spec.config and not spec.trust_remote_code]


def tokenizer():
    from transformers import AutoTokenizer

    from geomcheck.run import models
    from geomcheck.run import registry

    spec = registry.resolve("minilm-l6")
    root = models.package_dir(spec)
    return AutoTokenizer.from_pretrained(root / spec.subdir if spec.subdir else root)


def save_random(name: str, folder: Path, device: str, dtype: str, tiny: bool) -> Path:
    """The seed's config (shrunk with ``tiny``) with random weights, built on ``device``, saved to ``folder``."""
    import torch
    from transformers import AutoConfig, AutoModel

    from geomcheck.run import registry
    from geomcheck.run.models import DTYPES

    values = dict(registry.resolve(name).config)
    tok = tokenizer()
    if tiny:
        values.update(TINY, vocab_size=len(tok))
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=DTYPES[dtype])
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return folder


def run_checks(project: Path, folders: list[Path], args: argparse.Namespace, update: bool) -> tuple[int, list[str]]:
    """``pytest checks/`` in the scratch project; its exit status and its per-phase lines."""
    command = [sys.executable, "-m", "pytest", "checks", "-p", "no:cacheprovider", "-q", "--no-header",
               "--geomcheck-device", args.device, "--geomcheck-dtype", args.dtype, "--geomcheck-max-prompts", str(args.prompts),
               "--geomcheck-cache-dir", str(project / "cache")]
    for folder in folders:
        command += ["--geomcheck-model", str(folder)]
    if update:
        command.append("--snapshot-update")
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    lines = [line for line in result.stdout.splitlines() if ": time " in line]
    if result.returncode not in (0, 1) or len(lines) != len(folders):  # 1: a hypothesis failed on random weights
        sys.stderr.write(result.stdout[-6000:] + result.stderr[-3000:])
    return result.returncode, lines


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m geomcheck_bench.seeds", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma list of registry seed names (default: every seed)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompts", type=int, default=139, help="--max-prompts per set (default 139: every built-in prompt)")
    ap.add_argument("--tiny", action="store_true", help="shrink every dimension: the same path on a CPU in seconds")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed after)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    names = args.models.split(",") if args.models else seed_names()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="geomcheck-seeds-"))
    try:
        project = work / "project"
        shutil.copytree(ROOT / "checks", project / "checks", dirs_exist_ok=True)
        (project / "pytest.ini").write_text("[pytest]\naddopts = -p geomcheck.activate\n")
        folders = []
        for name in names:
            print(f"building {name}{' (tiny)' if args.tiny else ''} with random weights on {args.device} in {args.dtype}", flush=True)
            folders.append(save_random(name, work / "models" / f"{name}-random", args.device, args.dtype, args.tiny))
        status = 0
        for label, update in (("cold", True), ("cached", False)):
            code, lines = run_checks(project, folders, args, update)
            print(f"## {label} run (pytest exit status {code})")
            print("\n".join(lines), flush=True)
            if code not in (0, 1) or len(lines) != len(folders):
                status = 1
        return status
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
