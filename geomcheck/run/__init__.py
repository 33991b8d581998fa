"""The run layer: prompts → model → samples. Resolves a model, renders and tokenizes the prompts, captures the
residual streams with verified hooks, and keeps the results in the on-disk cache. Knows nothing of pytest."""
