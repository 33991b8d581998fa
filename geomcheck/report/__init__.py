"""The report layer: numbers → pictures and text. Figures, the across-model comparison, the CI report and
the results JSON. Knows nothing of pytest."""
