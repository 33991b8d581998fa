"""The run-time proof that the captured streams are the residual stream, checked on each capture's first batch.

Four identities of a (pre-norm, sandwich-norm or post-norm) residual block, read by extra hooks that are
removed afterwards:

1. ``post[l] == pre[l+1]``: a block's output is the next block's input;
2. ``mid[l] - pre[l]`` equals the attention branch as added to the residual (after any sandwich or post norm,
   times any residual multiplier);
3. ``post[l] - mid[l]`` equals the MLP branch as added; for parallel blocks ``post[l] - pre[l]`` equals the
   sum of both branches;
4. ``pre``/``post`` equal the model's own ``output_hidden_states``, the last one through the final norm where
   the model applies one.

Differences are relative to the largest magnitude among the compared vectors (per prompt and layer). The
tolerance depends on the dtype the model computes in: the identities are exact up to the rounding of one
addition and of the position reduction (a mean over tokens in the model's dtype), so float32 is held to
1e-4, float16 to 1e-2 and bfloat16 (8 bits of mantissa) to 5e-2. A wrong site differs by the size of the
values themselves (~1).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from geomcheck.errors import GeomcheckError
from geomcheck.run.families import GENERIC, HOW_TO_ADD, Layout

TOLERANCES = {torch.float32: 1e-4, torch.float64: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


class StreamProofError(GeomcheckError, RuntimeError):
    """A stream is not what its family record says it is; names the family, layer, stream and difference."""


def tolerance(dtype: torch.dtype) -> float:
    return TOLERANCES.get(dtype, TOLERANCES[torch.bfloat16])


def _relative(actual: torch.Tensor, expected: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
    """Per layer, the worst over prompts of max |actual - expected| / the largest magnitude involved.

    Inputs are (batch, layers, d); the result is (layers,)."""
    scale = torch.stack([t.abs().amax(dim=-1) for t in (actual, expected, *others)]).amax(dim=0)
    err = (actual.double() - expected.double()).abs().amax(dim=-1)
    return (err / scale.double().clamp_min(torch.finfo(torch.float32).tiny)).amax(dim=0)


def checks(layout: Layout, readings: Mapping[str, torch.Tensor], hidden: torch.Tensor) -> list[tuple[str, str, int, torch.Tensor]]:
    """(stream, what is compared, first layer, per-layer relative difference) for every identity that applies."""
    pre, post = readings["pre"], readings["post"]
    n = pre.shape[1]
    found = [
        ("post", "post[l] vs the next layer's input pre[l+1]", 0, _relative(post[:, :-1], pre[:, 1:])),
        ("pre", "pre vs output_hidden_states", 0, _relative(pre, hidden[:, :n])),
    ]
    if "final_in" in readings:
        found.append(("post", "the last post vs the final norm's input", n - 1, _relative(post[:, -1:], readings["final_in"])))
        found.append(("post", "the final norm's output vs output_hidden_states[-1]", n - 1, _relative(readings["final_out"], hidden[:, n:])))
    else:
        found.append(("post", "the last post vs output_hidden_states[-1]", n - 1, _relative(post[:, -1:], hidden[:, n:])))
    if "attn" in readings:
        scale = layout.branch_scale()
        attn, mlp = readings["attn"] * scale, readings["mlp"] * scale
        if "mid" in readings:
            mid = readings["mid"]
            found.append(("mid", "mid - pre vs the attention branch as added", 0, _relative(mid - pre, attn, mid, pre)))
            found.append(("post", "post - mid vs the MLP branch as added", 0, _relative(post - mid, mlp, post, mid)))
        else:
            found.append(("post", "post - pre vs attention + MLP branches as added", 0, _relative(post - pre, attn + mlp, post, pre)))
    return found


def verify(layout: Layout, readings: Mapping[str, torch.Tensor], hidden: torch.Tensor, dtype: torch.dtype) -> None:
    """Raise :class:`StreamProofError` at the first (layer, identity) that does not hold within the dtype's tolerance."""
    if hidden.shape[1] != readings["pre"].shape[1] + 1:
        raise StreamProofError(
            f"family '{layout.family.name}' (model_type '{layout.model_type}'): output_hidden_states holds {hidden.shape[1]} "
            f"entries for {readings['pre'].shape[1]} blocks (expected one more: the embeddings, then each block's output), "
            "so the streams cannot be proven; the model's code differs from its family record in geomcheck/run/families.py."
        )
    limit = tolerance(dtype)
    failures = []
    for order, (stream, what, first, per_layer) in enumerate(checks(layout, readings, hidden)):
        bad = (per_layer > limit).nonzero()
        if len(bad):
            layer = int(bad[0])
            failures.append((first + layer, order, stream, what, float(per_layer[layer])))
    if not failures:
        return
    layer, _, stream, what, size = min(failures)
    family = layout.family
    message = (
        f"family '{family.name}' (model_type '{layout.model_type}'): the run-time proof of the streams failed at layer "
        f"{layer}, stream '{stream}': {what} differ by {size:.3g} (relative; tolerance {limit:g} for {dtype}). "
        "The sites geomcheck would read are not this model's residual stream, so no numbers are reported."
    )
    if family is GENERIC:
        message += f" This model_type has no family record and the generic (Llama) layout does not fit it: {HOW_TO_ADD}."
    else:
        message += " The model's code differs from its family record in geomcheck/run/families.py; fix the record."
    raise StreamProofError(message)
