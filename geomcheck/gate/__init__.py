"""The gate layer: numbers ↔ a committed baseline. The baseline file, the drift comparison with its
tolerances, and the syrupy extension that reads and writes it. Knows nothing of pytest beyond syrupy's
extension interface."""
