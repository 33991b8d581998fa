"""Command line: load each model, run every method on the same prompts, print the tables, and with
``--write-readme`` put the README block in place (only when every correctness check passed)."""

from __future__ import annotations

import argparse
import os
import site
import sys
from datetime import datetime, timezone

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from geomcheck_bench import agree, measure, report, topk  # noqa: E402
from geomcheck_bench.peers import METHODS, Context, NotApplicable  # noqa: E402
from geomcheck_bench.subject import RANDOM_SUFFIX, load_subject  # noqa: E402


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    import geomcheck_bench

    ap = argparse.ArgumentParser(prog="python -m geomcheck_bench", description=geomcheck_bench.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="registry name, local save_pretrained directory, or "
                    f"<registry name>{RANDOM_SUFFIX} (random weights at its published size); repeat for several "
                    "(default: smollm2-135m)")
    ap.add_argument("--prompts", type=int, default=64, help="total prompts, half harmful and half harmless (default 64)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed passes per method first (default 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the registry's)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads; use 1 on a shared machine")
    ap.add_argument("--methods", default=",".join(m.id for m in METHODS), help="comma list (default: all)")
    ap.add_argument("--memory-prompts", default="64,1024",
                    help="prompt counts for the samples-memory runs, or 'none' (always none for *-random models)")
    ap.add_argument("--extra-site", action="append", default=[], metavar="DIR",
                    help="site-packages appended to sys.path, for nnsight and transformer-lens installed apart")
    ap.add_argument("--topk", default="none", metavar="MODELS",
                    help="comma list of registry models whose writer shapes get the top-k vs full SVD table, or 'none'")
    ap.add_argument("--topk-reference", default="3072x3072", metavar="MxN",
                    help="shape where the float64 full SVD is measured (scaled by flops elsewhere); default 3072x3072")
    ap.add_argument("--write-readme", type=Path, default=None, metavar="README.md",
                    help="replace the block between the bench markers in this file")
    return ap


def command_line(argv: list[str]) -> str:
    """The command as run, without the machine's paths and without the README switch."""
    shown, args = ["python -m geomcheck_bench"], iter(argv)
    for arg in args:
        if arg in ("--extra-site", "--write-readme"):
            next(args, None)
            shown += ["--extra-site", "DIR"] if arg == "--extra-site" else []
        elif arg.startswith(("--extra-site=", "--write-readme=")):
            shown += ["--extra-site=DIR"] if arg.startswith("--extra-site") else []
        else:
            shown.append(arg)
    return " ".join(shown)


def bench_model(name: str, args: argparse.Namespace) -> report.ModelResult:
    subject = load_subject(name, args.device, args.dtype)
    subject.use_prompts(args.prompts)
    model = subject.model
    ctx = Context(subject, args.batch_size)
    wanted = [m for m in METHODS if m.id in args.methods.split(",")]
    timings: dict[str, measure.Timing | str] = {}
    runnable = []
    for method in wanted:
        try:
            if method.setup:
                method.setup(ctx)
            runnable.append(method)
        except NotApplicable as exc:
            timings[method.id] = str(exc)
        except ImportError as exc:
            timings[method.id] = f"not installed ({exc}); see --extra-site"
        except Exception as exc:  # a peer that cannot wrap this model says why in its row
            timings[method.id] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
    log(f"{name}: running {[m.id for m in runnable]}, {args.warmup} warm-up + {args.repeats} rounds")
    measured, readings = measure.run_methods(ctx, runnable, args.warmup, args.repeats, log)
    timings.update(measured)
    dtype = next(model.parameters()).dtype
    memory = []
    if args.memory_prompts != "none" and not name.endswith(RANDOM_SUFFIX):
        sizes = [int(x) for x in args.memory_prompts.split(",")]
        memory = measure.samples_memory(subject, sizes, args.batch_size, pool=max(1, args.prompts // 2))
    return report.ModelResult(
        name=Path(name).name,  # a local directory by its folder name, not the machine's path
        model={"class": type(model).__name__, "layers": ctx.n_layers, "d_model": int(model.config.hidden_size),
               "dtype": str(dtype).removeprefix("torch."), "attention": model.config._attn_implementation,
               "notes": subject.notes},
        tokens=subject.token_stats(args.batch_size),
        timings={m.id: timings[m.id] for m in wanted},
        checks=agree.agreement(readings, half_precision=dtype != torch.float32),
        memory=memory,
    )


def run(argv: list[str]) -> tuple[list[report.ModelResult], str]:
    """Every model's results and the README block."""
    args = parser().parse_args(argv)
    for d in args.extra_site:
        site.addsitedir(d)  # appends: this interpreter's own torch and transformers keep precedence
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for name in args.model or ["smollm2-135m"]:
        results.append(bench_model(name, args))
        print(report.detail(results[-1]), end="\n\n", flush=True)
    setup = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(argv),
        "prompts": args.prompts // 2 * 2,
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }
    block = report.readme_block(results, measure.machine_info(), setup)
    if args.topk != "none":
        reference = tuple(int(x) for x in args.topk_reference.lower().split("x"))
        rows, overlap = topk.measure({name: topk.writer_shapes(name) for name in args.topk.split(",")}, reference, log)
        block += "\n\n" + topk.table(rows, overlap, reference)
    print("## README block\n")
    print(block)
    if args.write_readme:
        if all(r.checks.get("unique_vs_naive_ok", True) for r in results):
            report.write_readme(args.write_readme, block)
            log(f"wrote the block into {args.write_readme}")
    return results, block


def main(argv: list[str] | None = None) -> int:
    """Exit status 1 when a correctness check failed: the numbers would compare different work."""
    results, _ = run(sys.argv[1:] if argv is None else argv)
    failed = [r.name for r in results if not r.checks.get("unique_vs_naive_ok", True)]
    if failed:
        log(f"the unique-token floor disagrees with the naive floor on {failed}: not writing any README block")
    return 1 if failed else 0
