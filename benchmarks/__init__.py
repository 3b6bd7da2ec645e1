"""Benchmarks: each comparison measured in the same run, on the same machine, as ratios.

Not part of the pass/fail tests. Run them all with ``./benchmarks/run`` (or
``python -m benchmarks`` in the project's environment); see docs/benchmarks.md.
"""
