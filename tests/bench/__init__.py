"""Benchmarks of issue 5: tiercache_mw against the raw app and the Python caches people use.

Run with `python -m tests.bench` (full, writes docs/benchmarks.md and docs/benchmarks.png) or
`python -m tests.bench --smoke` (a few hundred iterations, seconds; run by test_smoke.py).
"""
