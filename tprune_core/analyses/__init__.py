"""Layer 4, analyses: cached evaluation grids, the numbers and verdicts the chapters report, stored tables, plots,
benchmarks."""
