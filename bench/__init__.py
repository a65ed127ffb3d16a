"""Benchmarks for Tako VM: `python -m bench [--quick] [--only SUITE ...]` (see docs/performance.md).

Every number that matters is a ratio against a baseline measured side by side, interleaved, in the
same run: these machines are shared and noisy, so absolute times from different runs do not compare.
"""
