"""geomcheck: a pytest plugin that checks hypotheses about the geometry of a
transformer's residual stream (variance growth with depth, separation of the
``pre`` and ``mid`` streams, falling harmful/harmless cosine, shared weight
directions across layers)."""

__version__ = "0.1.0"  # the one source of the version (pyproject.toml reads it; CHANGELOG.md names it)

STREAMS = ("pre", "mid", "post")  # residual stream before attention, after attention + skip, after the layer
POSITIONS = ("last", "mean")  # the last real token, or the mean over real tokens
