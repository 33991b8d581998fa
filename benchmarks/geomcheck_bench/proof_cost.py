"""What the run-time proof of the streams costs: capture time with it over capture time without it.

    PYTHONPATH=benchmarks python -m geomcheck_bench.proof_cost [--model smollm2-135m] [--prompts 64] [--repeats 5]

Both sets of built-in prompts (cut to --prompts each) as the checks run them (chat template, batch 16, last
token, shared prefix reused); runs alternate with and without the proof (in
alternating order), and the medians are compared, in wall time and in this process's CPU time (the steadier of the two on a machine shared with other work).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from geomcheck.run import models
from geomcheck.run.capture import capture
from geomcheck.run.rendering import render
from geomcheck.run.prompts import builtin_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    loaded = models.load(models.resolve(args.model))
    sets = {name: builtin_prompts(name)[: args.prompts] for name in ("harmful", "harmless")}
    times: dict[tuple[str, bool], list[float]] = {(clock, p): [] for clock in ("wall", "cpu") for p in (True, False)}
    for round_ in range(args.repeats + 1):  # the first round warms up and is not counted
        for proof in (True, False) if round_ % 2 else (False, True):  # alternating order: no second-run bias
            wall, cpu = time.perf_counter(), time.process_time()
            rendered = render(loaded.tokenizer, sets, loaded.spec.chat_template)  # timed with the capture, as before
            capture(loaded.model, rendered.token_ids, pad_id=rendered.pad_id, batch_size=args.batch_size, progress=False, proof=proof)
            times["wall", proof].append(time.perf_counter() - wall)
            times["cpu", proof].append(time.process_time() - cpu)
    print(f"{args.model}: {sum(map(len, sets.values()))} prompts, batch {args.batch_size}, {torch.get_num_threads()} threads")
    for clock in ("wall", "cpu"):
        with_proof, without = (statistics.median(times[clock, p][1:]) for p in (True, False))
        print(f"{clock}: capture with proof {with_proof:.3f} s, without {without:.3f} s: ratio {with_proof / without:.3f}")


if __name__ == "__main__":
    main()
