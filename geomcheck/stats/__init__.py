"""The statistics layer: samples → numbers. Pure functions over arrays — estimators, resampling intervals,
trends with depth, a model's per-layer geometry, weight and update overlaps — and the vocabulary, one record
per statistic. Knows nothing of pytest, torch or models."""
