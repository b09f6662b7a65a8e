"""Benchmarks: ratios measured side by side on one machine in one run."""
